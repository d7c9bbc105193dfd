"""Pixel-level anomaly metrics: AP, AUROC, FPR95, best F1 and curves (``docs/anomaly.md``).

Valid pixels (label 0 or 1; void removed before any ranking) of all frames are pooled and the
metrics are computed once on that pool. Scores are used as given (higher = more anomalous): they
are never squashed, rescaled or down-cast. Three modes:

- ``"exact"``: the state is the valid scores (host memory); equals scikit-learn's AP/AUROC.
- ``"binned"``: the state is 2 × ``num_bins`` int64 counts; AP/AUROC within reported bounds.
- ``"smiyc_binned"``: ≤ 768 (edge, #pos, #neg) triples per frame; the SMIYC toolkit's binning.

**Exact** keeps the valid scores split by label and sorts them once in ``compute()`` (SIMD sorts
of each class, then a linear merge of the two sorted runs), which equals a single global sort.

**Binned** counts scores in a dyadic grid: bin k holds the scores in [k·2^e, (k+1)·2^e), i.e. the
metrics are those of the scores floored to the grid. The exponent e is the smallest one for which
the scores seen so far fit in ``num_bins`` bins; when new scores fall outside, adjacent bins merge
pairwise (e grows by one), which is exact, so the state is independent of the batch order only
up to the final grid. Instances and ranks merge on the coarser common grid. Binning never
reorders two scores, it only ties scores inside one bin, so ``compute()`` reports rigorous bounds
``auroc_error_bound`` and ``ap_error_bound`` on the distance to the exact values; with the
default 65 536 bins they are far below 1e-3 unless the score range is dominated by a few extreme
outliers (check the bounds). FPR95 in binned mode has no bound; it is the rule applied to the
binned curve.

**SMIYC binned** reproduces the toolkit's metric "PixBinaryClass" (revision of Aug 2023 or later):
per frame, each valid score is replaced by the lower edge of its bin, the edges being the
``num_bins`` (default 384) linearly interpolated quantiles of the frame's positive and of its
negative scores; FPR95 uses ``first_ge``. ``score_dtype=torch.float16`` rounds scores to float16
first, as the evaluation server stores submissions.
"""

from __future__ import annotations

import math
from typing import Literal, TypedDict, get_args

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from gmmseg._distributed import all_gather_rows, all_reduce_, is_distributed
from gmmseg.metrics._curve import (
    AnomalyCurve,
    FloatArray,
    FPR95Rule,
    IntArray,
    auroc,
    average_precision,
    best_f1,
    binning_error_bounds,
    check_rule,
    fpr_at_95,
    merge_sorted,
    merge_triples,
)
from gmmseg.metrics._validation import (
    ArrayLike,
    check_binary_labels_np,
    check_finite_np,
    check_floating,
    check_frames,
    check_integer,
    check_positive_int,
    describe_values,
    first_bad_frame,
    frame_label,
    host_array,
    to_tensor,
)

__all__ = ["AnomalyCurve", "AnomalyMetrics", "AnomalyMode", "AnomalyResult", "FPR95Rule"]

AnomalyMode = Literal["exact", "binned", "smiyc_binned"]
"""How :class:`AnomalyMetrics` ranks scores: exactly, in a dyadic histogram, or SMIYC's binning."""
_MODES: tuple[str, ...] = get_args(AnomalyMode)
_DEFAULT_BINS = {"exact": 0, "binned": 1 << 16, "smiyc_binned": 384}
_CHUNK = 1 << 18
_SENTINEL = 1 << 62
_MIN_EXP = -1000  # 2.0**1000 is still a finite float64 scale


class AnomalyResult(TypedDict):
    """Output of :meth:`AnomalyMetrics.compute`.

    Keys:
        auroc: area under the ROC curve (trapezoid).
        ap: average precision (step sum).
        fpr95: false positive rate at 95 % TPR by ``fpr95_rule``.
        fpr95_rule: the rule used.
        best_f1: max over operating points of 2TP/(2TP + FP + FN) (first maximum).
        best_f1_threshold: its threshold (δ of the SMIYC component metrics).
        num_positives: N⁺, pooled valid anomaly pixels.
        num_negatives: N⁻, pooled valid in-distribution pixels.
        mode: ``"exact"``, ``"binned"`` or ``"smiyc_binned"``.
        auroc_error_bound: bound on |auroc − exact auroc| (0 in exact mode, NaN for SMIYC).
        ap_error_bound: bound on |ap − exact ap| (0 in exact mode, NaN for SMIYC).
        curve: the full operating-point curve (:class:`AnomalyCurve`).
    """

    auroc: float
    ap: float
    fpr95: float
    fpr95_rule: str
    best_f1: float
    best_f1_threshold: float
    num_positives: int
    num_negatives: int
    mode: str
    auroc_error_bound: float
    ap_error_bound: float
    curve: AnomalyCurve


def _quantiles(values: npt.NDArray[np.floating], levels: int) -> FloatArray:
    """The SMIYC bin edges of one class of one frame (``num_bins`` levels).

    Exactly ``np.quantile(x, np.linspace(0, 1, k))`` with k = min(levels, n) and numpy's
    default linear interpolation, on the scores in their own dtype, as the toolkit calls it on
    the array it reads (float16 from a submission file). The levels must be linspace's own
    floats: i/(k − 1) differs from them in the last bit for some i, which moves a tied pixel
    into another bin when the class has fewer than ``levels`` pixels in the frame. The dtype
    matters too: numpy interpolates x_i + γ·(x_{i+1} − x_i) with the difference computed in the
    scores' dtype, so for float16 scores the edge (a threshold of the curve) is not the one of a
    float64 copy (``np.quantile(float16([0.001, 1000]), [0.3])`` is 300.0010004, on a float64
    copy 300.00070028).

    Args:
        values: (n,) float scores of one class, n ≥ 1.
        levels: the maximum number of quantile levels (384 in the toolkit).

    Returns:
        (k,) float64 edges (NaN or ±inf where a float16 difference overflows).
    """
    k = min(levels, values.size)
    out: FloatArray = np.asarray(np.quantile(values, np.linspace(0.0, 1.0, k)), dtype=np.float64)
    return out


class AnomalyMetrics:
    """Streaming pixel-level anomaly metrics over a split (AP, AUROC, FPR95, best F1, curves).

    Args:
        ignore_index: label value of void pixels (removed before ranking).
        mode: ``"exact"`` (default), ``"binned"`` or ``"smiyc_binned"``; see the module docs.
        num_bins: histogram size in ``"binned"`` mode (default 65 536, ≥ 2); quantile levels per
            class and frame in ``"smiyc_binned"`` mode (default 384); unused in exact mode.
        fpr95_rule: ``"first_ge"`` (default; Fishyscapes and SMIYC), ``"nearest"`` (PEBAL),
            ``"first_gt"`` (RbA) or ``"interp"`` (Mask2Anomaly); ``"smiyc_binned"`` requires
            ``"first_ge"``.
        skip_frames_without_anomaly: drop frames without any valid anomaly pixel (Mask2Anomaly's
            protocol); off by default, such frames add negatives.
        score_dtype: ``torch.float16`` to round scores to float16 first (SMIYC server
            emulation; only in ``"smiyc_binned"`` mode) or None.

    Example:
        >>> m = AnomalyMetrics()
        >>> m.update(torch.tensor([[0.9, 0.8, 0.1, 0.3]]), torch.tensor([[1, 0, 0, 255]]))
        >>> m.compute()["auroc"]
        1.0
    """

    def __init__(
        self,
        ignore_index: int = 255,
        mode: AnomalyMode = "exact",
        num_bins: int | None = None,
        fpr95_rule: FPR95Rule = "first_ge",
        skip_frames_without_anomaly: bool = False,
        score_dtype: torch.dtype | None = None,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        check_rule(fpr95_rule)
        if mode == "smiyc_binned" and fpr95_rule != "first_ge":
            raise ValueError(
                f"mode='smiyc_binned' computes FPR95 with fpr95_rule='first_ge' (the toolkit's "
                f"rule), got fpr95_rule={fpr95_rule!r}"
            )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
        if ignore_index in (0, 1):
            raise ValueError(
                f"ignore_index must differ from the labels 0 and 1, got {ignore_index}"
            )
        if num_bins is None:
            num_bins = _DEFAULT_BINS[mode]
        elif mode == "exact":
            raise ValueError(f"num_bins is not used in mode='exact', got num_bins={num_bins!r}")
        else:
            check_positive_int("num_bins", num_bins, minimum=2)
        if score_dtype is not None and (mode != "smiyc_binned" or score_dtype != torch.float16):
            raise ValueError(
                "score_dtype must be None, or torch.float16 with mode='smiyc_binned' "
                f"(server emulation), got score_dtype={score_dtype} with mode={mode!r}"
            )
        self.ignore_index = ignore_index
        self.mode: AnomalyMode = mode
        self.num_bins = num_bins
        self.fpr95_rule: FPR95Rule = fpr95_rule
        self.skip_frames_without_anomaly = skip_frames_without_anomaly
        self.score_dtype = score_dtype
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget every frame."""
        self.num_frames = 0
        # exact: valid scores per class; smiyc: per-frame (edge, #pos, #neg) triples.
        self._pos: list[npt.NDArray[np.floating]] = []
        self._neg: list[npt.NDArray[np.floating]] = []
        self._edges: list[FloatArray] = []
        self._edge_pos: list[IntArray] = []
        self._edge_neg: list[IntArray] = []
        # binned: hist[0] negatives, hist[1] positives; bin i holds [(k0+i)·2^e, (k0+i+1)·2^e).
        self._hist: Tensor | None = None
        self._exp = 0
        self._k0 = 0
        self._kmin = 0
        self._kmax = 0

    def update(self, scores: ArrayLike, labels: ArrayLike) -> None:
        """Add one frame (H, W) or a batch of frames (B, H, W).

        Args:
            scores: (H, W) or (B, H, W) float anomaly scores (higher = more anomalous), finite
                on valid pixels; any magnitude (e.g. raw negative log-likelihoods).
            labels: same shape, integer, 0 = in-distribution, 1 = anomaly, ``ignore_index`` = void.

        Raises:
            ValueError: on different shapes, a non-float score or non-integer label dtype,
                label values outside {0, 1, ignore_index}, NaN/inf scores on valid pixels, or
                (``score_dtype=float16``) scores beyond the float16 range. The message names the
                frame; the state is unchanged on error.
        """
        s_t = to_tensor("scores", scores)
        y_t = to_tensor("labels", labels)
        s_t, y_t = check_frames("scores", s_t, "labels", y_t)
        check_floating("scores", s_t)
        check_integer("labels", y_t)
        # The state lives in host memory and the counting runs in NumPy (much faster on CPU
        # than the equivalent torch kernels); accelerator inputs are copied once here.
        s, y = host_array(s_t), host_array(y_t)
        check_binary_labels_np(y, self.ignore_index, self.num_frames)
        check_finite_np(s, y, self.ignore_index, self.num_frames)
        if self.score_dtype is not None:
            with np.errstate(over="ignore"):
                s16 = s.astype(np.float16)
            if not np.isfinite(s16[y != self.ignore_index]).all():
                bad = torch.from_numpy((y != self.ignore_index) & ~np.isfinite(s16))
                b = first_bad_frame(bad)
                raise ValueError(
                    f"scores of {frame_label(self.num_frames + b, b)} overflow float16 "
                    f"(|s| > 65504) under score_dtype=float16: "
                    f"{describe_values(torch.from_numpy(s[b][bad[b].numpy()]))}; "
                    "rescale the scores as for the server submission"
                )
            s = s16
        first, frames = self.num_frames, np.arange(s.shape[0])
        self.num_frames += int(s.shape[0])
        if self.skip_frames_without_anomaly:
            keep = (y == 1).reshape(y.shape[0], -1).any(axis=1)
            s, y, frames = s[keep], y[keep], frames[keep]
        if self.mode == "smiyc_binned":
            try:
                triples = [
                    self._smiyc_frame(
                        s[b][y[b] != self.ignore_index],
                        y[b][y[b] != self.ignore_index] == 1,
                        frame_label(first + int(frames[b]), int(frames[b])),
                    )
                    for b in range(s.shape[0])
                ]
            except ValueError:
                self.num_frames = first  # the state is unchanged on error
                raise
            for edges, n_pos, n_neg in triples:
                if edges.size == 0:
                    continue
                self._edges.append(edges)
                self._edge_pos.append(n_pos)
                self._edge_neg.append(n_neg)
            return
        pos, neg = s[y == 1], s[y == 0]
        if self.mode == "exact":
            self._pos.append(pos)
            self._neg.append(neg)
        else:
            self._binned_update(pos, neg)

    # --------------------------------------------------------------- binned

    def _min_exp(self, magnitude: float) -> int:
        """Smallest exponent keeping every bin index within int64 for |s| ≤ magnitude."""
        if magnitude == 0.0:
            return _MIN_EXP
        return max(math.frexp(magnitude)[1] - 60, _MIN_EXP)

    def _binned_update(self, pos: npt.NDArray[np.floating], neg: npt.NDArray[np.floating]) -> None:
        if pos.size + neg.size == 0:
            return
        lo = min(float(x.min()) for x in (pos, neg) if x.size)
        hi = max(float(x.max()) for x in (pos, neg) if x.size)
        nb = self.num_bins
        floor_exp = self._min_exp(max(abs(lo), abs(hi)))
        if self._hist is None:
            span = hi - lo
            exp = math.ceil(math.log2(span / max(nb - 2, 1))) if span > 0 else floor_exp
            exp = max(exp, floor_exp, _MIN_EXP)
            while math.floor(hi * 2.0**-exp) - math.floor(lo * 2.0**-exp) + 1 > nb:
                exp += 1
            self._exp = exp
            self._k0 = self._kmin = math.floor(lo * 2.0**-exp)
            self._kmax = math.floor(hi * 2.0**-exp)
            self._hist = torch.zeros(2, nb, dtype=torch.int64)
        else:
            exp = max(self._exp, floor_exp)
            self._fit(exp, math.floor(lo * 2.0**-exp), math.floor(hi * 2.0**-exp))
        hist = self._hist.numpy()
        # Bin k = ⌊s · 2^−e⌋. Scaling by a power of two and floor are exact in float64; in
        # float32 too when 2^−e ≥ 1 (no product can underflow to ±0) and 2^−e is representable.
        fast32 = pos.dtype == np.float32 and -126 <= self._exp <= 0
        dtype = np.float32 if fast32 else np.float64
        scale = dtype(2.0**-self._exp)
        for row, x in ((0, neg), (1, pos)):
            for start in range(0, x.size, _CHUNK):
                k = x[start : start + _CHUNK].astype(dtype, copy=False) * scale
                np.floor(k, out=k)
                idx = k.astype(np.int64)
                idx -= self._k0
                hist[row] += np.bincount(idx, minlength=nb)

    def _fit(self, exp: int, k_lo: int, k_hi: int) -> None:
        """Regrid so that bins [k_lo, k_hi] at exponent ``exp`` and the occupied range fit."""
        d_old = exp - self._exp
        new_min = min(self._kmin >> d_old, k_lo)
        new_max = max(self._kmax >> d_old, k_hi)
        d = 0
        while (new_max >> d) - (new_min >> d) + 1 > self.num_bins:
            d += 1
        new_exp, lo, hi = exp + d, new_min >> d, new_max >> d
        if new_exp != self._exp or lo < self._k0 or hi >= self._k0 + self.num_bins:
            self._regrid(new_exp, lo)
        self._kmin, self._kmax = lo, hi

    def _regrid(self, new_exp: int, new_k0: int) -> None:
        """Move the histogram to exponent ``new_exp`` ≥ the current one, first bin ``new_k0``."""
        hist = self._hist
        assert hist is not None
        shift = new_exp - self._exp
        k = torch.arange(self.num_bins, dtype=torch.int64, device=hist.device) + self._k0
        idx = torch.bitwise_right_shift(k, shift) - new_k0
        used = (hist != 0).any(dim=0)
        if bool(((idx < 0) | (idx >= self.num_bins))[used].any()):  # pragma: no cover
            raise RuntimeError("internal error: histogram regrid out of range")
        idx = idx.clamp(0, self.num_bins - 1)  # only empty bins can be out of range here
        out = torch.zeros_like(hist)
        out.index_add_(1, idx, hist)
        self._hist, self._exp, self._k0 = out, new_exp, new_k0

    def _grid_range(self) -> tuple[int, int, int]:
        """(exp, kmin, kmax) of the occupied bins, or sentinels when empty."""
        if self._hist is None:
            return -_SENTINEL, _SENTINEL, -_SENTINEL
        return self._exp, self._kmin, self._kmax

    def _align_to(self, exp: int, kmin: int, kmax: int) -> None:
        """Regrid a non-empty histogram onto the common grid (exp, first bin kmin)."""
        if self._hist is None:
            return
        self._regrid(exp, kmin)
        self._kmin, self._kmax = kmin, kmax

    def _common_grid(self, ranges: list[tuple[int, int, int]]) -> tuple[int, int, int] | None:
        live = [r for r in ranges if r[0] != -_SENTINEL]
        if not live:
            return None
        exp = max(r[0] for r in live)
        kmin = min(r[1] >> (exp - r[0]) for r in live)
        kmax = max(r[2] >> (exp - r[0]) for r in live)
        while kmax - kmin + 1 > self.num_bins:
            exp, kmin, kmax = exp + 1, kmin >> 1, kmax >> 1
        return exp, kmin, kmax

    # ---------------------------------------------------------------- smiyc

    def _smiyc_frame(
        self, s: npt.NDArray[np.floating], p: npt.NDArray[np.bool_], frame: str
    ) -> tuple[FloatArray, IntArray, IntArray]:
        """(edge, #pos, #neg) of the used bins of one frame's valid scores ``s``, labels ``p``.

        A frame without valid pixels contributes nothing (empty arrays).
        """
        if s.size == 0:
            return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        # The edges are quantiles of the scores in their own dtype (float16 for a submission),
        # as in the toolkit; the binning compares them with the scores exactly, in float64.
        parts = [_quantiles(x, self.num_bins) for x in (s[p], s[~p]) if x.size]
        edges = np.unique(np.concatenate(parts))
        if not np.isfinite(edges).all():
            raise ValueError(
                f"scores of {frame}: a SMIYC bin edge is not finite because two "
                f"consecutive {s.dtype} scores of one class differ by more than the dtype's "
                f"range (scores {float(s.min()):g} to {float(s.max()):g}); numpy's quantile "
                "overflows there, in the toolkit too: rescale the scores"
            )
        v = s.astype(np.float64)
        idx = np.searchsorted(edges, v, side="right") - 1
        m = edges.size
        n_pos = np.bincount(idx[p], minlength=m).astype(np.int64)
        n_neg = np.bincount(idx[~p], minlength=m).astype(np.int64)
        used = (n_pos + n_neg) > 0
        return edges[used], n_pos[used], n_neg[used]

    # ------------------------------------------------------------- combine

    def _check_compatible(self, other: AnomalyMetrics) -> None:
        mine = (self.mode, self.num_bins, self.ignore_index, self.score_dtype)
        theirs = (other.mode, other.num_bins, other.ignore_index, other.score_dtype)
        if mine != theirs:
            raise ValueError(
                "other must have the same (mode, num_bins, ignore_index, score_dtype) = "
                f"{mine}, got {theirs}"
            )
        if self.skip_frames_without_anomaly != other.skip_frames_without_anomaly:
            raise ValueError("other must use the same skip_frames_without_anomaly")

    def merge(self, other: AnomalyMetrics) -> None:
        """Add the frames of another instance with the same configuration into this one."""
        self._check_compatible(other)
        self.num_frames += other.num_frames
        if self.mode == "exact":
            self._pos.extend(other._pos)
            self._neg.extend(other._neg)
        elif self.mode == "smiyc_binned":
            self._edges.extend(other._edges)
            self._edge_pos.extend(other._edge_pos)
            self._edge_neg.extend(other._edge_neg)
        elif other._hist is not None:
            if self._hist is None:
                self._hist = other._hist.clone()
                self._exp, self._k0 = other._exp, other._k0
                self._kmin, self._kmax = other._kmin, other._kmax
                return
            grid = self._common_grid([self._grid_range(), other._grid_range()])
            assert grid is not None
            theirs = AnomalyMetrics(self.ignore_index, "binned", self.num_bins)
            theirs._hist = other._hist.clone()
            theirs._exp, theirs._k0 = other._exp, other._k0
            theirs._kmin, theirs._kmax = other._kmin, other._kmax
            self._align_to(*grid)
            theirs._align_to(*grid)
            assert self._hist is not None and theirs._hist is not None
            self._hist += theirs._hist.to(self._hist.device)

    def all_reduce(self) -> None:
        """Combine the state of all ranks in place; a no-op unless torch.distributed is initialised.

        A collective: call it on every rank once, after the last :meth:`update` and before
        :meth:`compute` (a second call would count every frame again). Binned histograms are
        regridded to a common grid and summed; exact and SMIYC states are all-gathered (every
        rank then holds all valid scores, resp. all triples).
        """
        if not is_distributed():
            return
        frames = torch.tensor([self.num_frames], dtype=torch.int64)
        all_reduce_([frames])
        self.num_frames = int(frames.item())
        if self.mode == "exact":
            self._pos = [self._gather_host(self._pos)]
            self._neg = [self._gather_host(self._neg)]
        elif self.mode == "smiyc_binned":
            for name in ("_edges", "_edge_pos", "_edge_neg"):
                parts: list[npt.NDArray[np.generic]] = getattr(self, name)
                dtype = np.float64 if name == "_edges" else np.int64
                local = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
                setattr(self, name, [all_gather_rows(torch.from_numpy(local)).numpy()])
        else:
            self._binned_all_reduce()

    def _gather_host(self, parts: list[npt.NDArray[np.floating]]) -> npt.NDArray[np.floating]:
        local = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
        if local.dtype == np.float16:
            local = local.astype(np.float32)  # exact; float16 support of collectives varies
        gathered: npt.NDArray[np.floating] = all_gather_rows(torch.from_numpy(local)).numpy()
        return gathered

    def _binned_all_reduce(self) -> None:
        exp, kmin, kmax = self._grid_range()
        e_t = torch.tensor([exp], dtype=torch.int64)
        all_reduce_([e_t], op="max")
        common = int(e_t.item())
        if common == -_SENTINEL:
            return  # every rank is empty
        if self._hist is None:
            lo, hi = _SENTINEL, -_SENTINEL
        else:
            lo, hi = kmin >> (common - exp), kmax >> (common - exp)
        lo_t = torch.tensor([lo], dtype=torch.int64)
        hi_t = torch.tensor([hi], dtype=torch.int64)
        all_reduce_([lo_t], op="min")
        all_reduce_([hi_t], op="max")
        lo, hi = int(lo_t.item()), int(hi_t.item())
        while hi - lo + 1 > self.num_bins:
            common, lo, hi = common + 1, lo >> 1, hi >> 1
        if self._hist is None:
            self._hist = torch.zeros(2, self.num_bins, dtype=torch.int64)
            self._exp, self._k0 = common, lo
        else:
            self._regrid(common, lo)
        self._kmin, self._kmax = lo, hi
        all_reduce_([self._hist])

    # -------------------------------------------------------------- compute

    def _curve_increments(self) -> tuple[FloatArray, IntArray, IntArray]:
        """(thresholds decreasing, #pos, #neg) at each distinct threshold of the pool."""
        if self.mode == "exact":
            pos = np.concatenate(self._pos) if self._pos else np.zeros(0)
            neg = np.concatenate(self._neg) if self._neg else np.zeros(0)
            if pos.dtype != neg.dtype:  # frames given in different precisions: promote exactly
                common = np.promote_types(pos.dtype, neg.dtype)
                pos, neg = pos.astype(common), neg.astype(common)
            self._check_counts(pos.size, neg.size)
            pos.sort()
            neg.sort()
            return merge_sorted(pos, neg)
        if self.mode == "smiyc_binned":
            if not self._edges:
                self._check_counts(0, 0)
            thr, pi, ni = merge_triples(
                np.concatenate(self._edges),
                np.concatenate(self._edge_pos),
                np.concatenate(self._edge_neg),
            )
            self._check_counts(int(pi.sum()), int(ni.sum()))
            return thr, pi, ni
        if self._hist is None:
            self._check_counts(0, 0)
        assert self._hist is not None
        hist = self._hist.cpu().numpy()
        self._check_counts(int(hist[1].sum()), int(hist[0].sum()))
        used = np.flatnonzero(hist.any(axis=0))[::-1]
        thresholds = (used + self._k0).astype(np.float64) * 2.0**self._exp
        return thresholds, hist[1, used].copy(), hist[0, used].copy()

    @staticmethod
    def _check_counts(n_pos: int, n_neg: int) -> None:
        if n_pos == 0 or n_neg == 0:
            raise ValueError(
                "AP, AUROC and FPR95 need both classes among the pooled valid pixels, got "
                f"N+ = {n_pos} anomaly and N- = {n_neg} in-distribution pixels"
            )

    def compute(self) -> AnomalyResult:
        """Metrics of the pooled valid pixels of every frame seen.

        Returns:
            :class:`AnomalyResult`.

        Raises:
            ValueError: if there is no valid anomaly pixel or no valid in-distribution pixel.
        """
        thresholds, pos_inc, neg_inc = self._curve_increments()
        tp = np.cumsum(pos_inc)
        fp = np.cumsum(neg_inc)
        f1, f1_thr = best_f1(tp, fp, thresholds)
        if self.mode == "exact":
            bounds = (0.0, 0.0)
        elif self.mode == "binned":
            bounds = binning_error_bounds(pos_inc, neg_inc, tp, fp)
        else:
            bounds = (math.nan, math.nan)
        return AnomalyResult(
            auroc=auroc(tp, fp),
            ap=average_precision(tp, fp),
            fpr95=fpr_at_95(tp, fp, self.fpr95_rule),
            fpr95_rule=self.fpr95_rule,
            best_f1=f1,
            best_f1_threshold=f1_thr,
            num_positives=int(tp[-1]),
            num_negatives=int(fp[-1]),
            mode=self.mode,
            auroc_error_bound=bounds[0],
            ap_error_bound=bounds[1],
            curve=AnomalyCurve(
                torch.from_numpy(thresholds), torch.from_numpy(tp), torch.from_numpy(fp)
            ),
        )
