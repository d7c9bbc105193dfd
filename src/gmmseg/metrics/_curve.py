"""Functional core of the pixel anomaly metrics: tied-score curve → AP, AUROC, FPR95, best F1.

All functions work on a curve given as distinct thresholds in decreasing order with the number
of positive and negative pixels at each threshold (``docs/anomaly.md``, "Pixel metrics"). Counts
are int64 NumPy arrays, ratios float64.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

FPR95Rule = Literal["first_ge", "nearest", "first_gt", "interp"]
"""FPR-at-95 %-TPR rule (``docs/anomaly.md``); ``"first_ge"`` is the default."""
FPR95_RULES: tuple[str, ...] = get_args(FPR95Rule)
_TARGET = 0.95

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class AnomalyCurve(NamedTuple):
    """The full (unreduced) operating-point curve over distinct thresholds.

    Point j (0-based) thresholds at ``thresholds[j]`` and counts the pixels with score ≥ it.

    Attributes:
        thresholds: (m,) distinct thresholds in decreasing order (float64; the scores' own
            values in exact mode, bin lower edges in the binned modes).
        tp: (m,) int64 cumulative true positives TP_j.
        fp: (m,) int64 cumulative false positives FP_j.
    """

    thresholds: Tensor
    tp: Tensor
    fp: Tensor

    def roc(self) -> tuple[Tensor, Tensor]:
        """ROC curve with the origin prepended.

        Returns:
            ``(fpr, tpr)``, each (m + 1,) float64, starting at (0, 0) and ending at (1, 1).
        """
        zero = torch.zeros(1, dtype=torch.int64)
        tp = torch.cat([zero, self.tp])
        fp = torch.cat([zero, self.fp])
        return fp.double() / float(self.fp[-1]), tp.double() / float(self.tp[-1])

    def pr(self) -> tuple[Tensor, Tensor]:
        """Precision–recall points (no origin; AP is the step sum over them).

        Returns:
            ``(precision, recall)``, each (m,) float64, recall increasing.
        """
        tp = self.tp.double()
        return tp / (tp + self.fp.double()), tp / float(self.tp[-1])


def check_rule(rule: str) -> None:
    """Raise unless ``rule`` is one of the four FPR95 rules."""
    if rule not in FPR95_RULES:
        raise ValueError(f"fpr95_rule must be one of {FPR95_RULES}, got {rule!r}")


def distinct_counts(sorted_values: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], IntArray]:
    """Distinct values of an ascending array and their multiplicities, (m,) and (m,) int64."""
    n = sorted_values.size
    if n == 0:
        return sorted_values[:0], np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1
    starts = np.concatenate((np.zeros(1, dtype=starts.dtype), starts))
    counts = np.diff(np.append(starts, n)).astype(np.int64, copy=False)
    return sorted_values[starts], counts


def merge_sorted(
    pos_sorted: npt.NDArray[Any], neg_sorted: npt.NDArray[Any]
) -> tuple[FloatArray, IntArray, IntArray]:
    """Tied-score curve increments from ascending positive and negative scores.

    Args:
        pos_sorted: (N⁺,) scores of the positives, ascending.
        neg_sorted: (N⁻,) scores of the negatives, ascending (same dtype).

    Returns:
        ``(thresholds, pos_inc, neg_inc)``: (m,) distinct thresholds in decreasing order (float64,
        exact for float16/32/64 inputs) and the (m,) int64 numbers of positives and negatives
        whose score equals each threshold.
    """
    vals = np.concatenate((pos_sorted, neg_sorted))
    # Two ascending runs: the stable sort (timsort) merges them in linear time.
    order = np.argsort(vals, kind="stable")
    v = vals[order]
    is_pos = order < pos_sorted.size
    del order
    n = v.size
    starts = np.flatnonzero(v[1:] != v[:-1]) + 1
    starts = np.concatenate((np.zeros(1, dtype=starts.dtype), starts))
    pos_inc = np.add.reduceat(is_pos, starts, dtype=np.int64)
    sizes = np.diff(np.append(starts, n)).astype(np.int64, copy=False)
    thresholds = v[starts].astype(np.float64)
    return thresholds[::-1].copy(), pos_inc[::-1].copy(), (sizes - pos_inc)[::-1].copy()


def merge_triples(
    thresholds: FloatArray, pos_inc: IntArray, neg_inc: IntArray
) -> tuple[FloatArray, IntArray, IntArray]:
    """Combine (threshold, #pos, #neg) triples with equal thresholds; output decreasing."""
    order = np.argsort(-thresholds, kind="stable")
    t = thresholds[order]
    if t.size == 0:
        return t, pos_inc[:0], neg_inc[:0]
    starts = np.flatnonzero(t[1:] != t[:-1]) + 1
    starts = np.concatenate((np.zeros(1, dtype=starts.dtype), starts))
    return (
        t[starts],
        np.add.reduceat(pos_inc[order], starts, dtype=np.int64),
        np.add.reduceat(neg_inc[order], starts, dtype=np.int64),
    )


def _reduced(tp: IntArray, fp: IntArray) -> tuple[IntArray, IntArray]:
    """scikit-learn's reduced ROC curve (collinear interior points removed)."""
    if tp.size > 2:
        keep = np.concatenate(([True], (np.diff(tp, 2) != 0) | (np.diff(fp, 2) != 0), [True]))
        tp, fp = tp[keep], fp[keep]
    zero = np.zeros(1, dtype=np.int64)
    return np.concatenate((zero, tp)), np.concatenate((zero, fp))


def fpr_at_95(tp: IntArray, fp: IntArray, rule: str) -> float:
    """FPR at 95 % TPR by one of the four rules of ``docs/anomaly.md``.

    Args:
        tp: (m,) int64 cumulative true positives, last entry N⁺ > 0.
        fp: (m,) int64 cumulative false positives, last entry N⁻ > 0.
        rule: ``"first_ge"``, ``"nearest"``, ``"first_gt"`` or ``"interp"``.

    Returns:
        The false positive rate (float64).
    """
    check_rule(rule)
    n_pos, n_neg = float(tp[-1]), float(fp[-1])
    tpr = tp / n_pos
    if rule == "first_ge":
        j = int(np.argmax(tpr >= _TARGET))
        return float(fp[j] / n_neg)
    if rule == "nearest":
        last = int(np.argmax(tp == tp[-1]))
        d = np.abs(tpr[: last + 1] - _TARGET)
        j = int(np.flatnonzero(d == d.min())[-1])
        return float(fp[j] / n_neg)
    rtp, rfp = _reduced(tp, fp)
    rtpr = rtp / n_pos
    rfpr = rfp / n_neg
    if rule == "first_gt":
        return float(rfpr[int(np.argmax(rtpr > _TARGET))])
    a = int(np.flatnonzero(rtpr <= _TARGET)[-1])
    if rtpr[a] == _TARGET:
        return float(rfpr[a])
    slope = (rfpr[a + 1] - rfpr[a]) / (rtpr[a + 1] - rtpr[a])
    return float(rfpr[a] + (_TARGET - rtpr[a]) * slope)


def average_precision(tp: IntArray, fp: IntArray) -> float:
    """AP = Σ_j (R_j − R_{j−1}) · Prec_j, a step sum (no interpolation)."""
    n_pos = float(tp[-1])
    d_tp = np.diff(tp, prepend=0)
    return float(np.sum(d_tp / n_pos * (tp / (tp + fp))))


def auroc(tp: IntArray, fp: IntArray) -> float:
    """Trapezoidal AUROC, computed as an exact integer ratio and rounded once."""
    n_pos, n_neg = int(tp[-1]), int(fp[-1])
    d_fp = np.diff(fp, prepend=0)
    tp_sum = tp + np.concatenate(([0], tp[:-1]))
    if 2 * n_pos * n_neg < 2**62:
        num = int(np.sum(d_fp * tp_sum))
        return num / (2 * n_pos * n_neg)
    return float(np.sum(d_fp.astype(np.float64) * tp_sum) / (2.0 * n_pos * n_neg))


def best_f1(tp: IntArray, fp: IntArray, thresholds: FloatArray) -> tuple[float, float]:
    """Max F1 = 2TP/(2TP + FP + FN) over the points and the threshold of its first maximum."""
    f1 = 2.0 * tp / (tp + fp + tp[-1])
    j = int(np.argmax(f1))
    return float(f1[j]), float(thresholds[j])


def binning_error_bounds(
    pos_inc: IntArray, neg_inc: IntArray, tp: IntArray, fp: IntArray
) -> tuple[float, float]:
    """Upper bounds on |AUROC − exact AUROC| and |AP − exact AP| caused by binning.

    Binning only merges scores inside one bin into a tie; it never reorders scores in different
    bins. Within bin j, at most pos_j · neg_j pairs change from a strict order to a tie, each by
    ½ in the pairwise AUROC sum; the exact precision at any point inside the bin lies between
    (TP_{j−1} + 1)/(TP_{j−1} + 1 + FP_j) and TP_j/(TP_j + FP_{j−1}), as does the binned one.

    Returns:
        ``(auroc_bound, ap_bound)``.
    """
    n_pos, n_neg = int(tp[-1]), int(fp[-1])
    auroc_bound = float(np.sum(pos_inc.astype(np.float64) * neg_inc)) / (2.0 * n_pos * n_neg)
    tp_prev = tp - pos_inc
    fp_prev = fp - neg_inc
    has = pos_inc > 0
    lo = (tp_prev[has] + 1) / (tp_prev[has] + 1 + fp[has])
    hi = tp[has] / (tp[has] + fp_prev[has])
    ap_bound = float(np.sum(pos_inc[has] / n_pos * (hi - lo)))
    return auroc_bound, ap_bound
