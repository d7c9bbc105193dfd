"""Expected calibration error (ECE) and reliability-diagram data of a pixel classifier.

Confidence is the maximum class probability, the prediction its argmax (first maximum). The
confidences of the valid pixels (label ≠ ignore) fall into ``num_bins`` equal-width bins
(i/M, (i+1)/M] with edges i/M computed in float64 (the first bin also takes 0), and

    ECE = Σ_b (n_b / N) · |acc_b − conf_b| = (1/N) Σ_b |Σ_{p∈b} 1[ŷ_p = y_p] − Σ_{p∈b} conf_p|.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from gmmseg.metrics._validation import (
    ArrayLike,
    check_floating,
    check_integer,
    check_positive_int,
    describe_values,
    to_tensor,
)

__all__ = ["ReliabilityDiagram", "expected_calibration_error", "reliability_diagram"]

_SUM_TOL = 1e-3


class ReliabilityDiagram(NamedTuple):
    """Per-bin statistics of a reliability diagram.

    Attributes:
        ece: expected calibration error, a fraction in [0, 1].
        bin_edges: (M + 1,) float64, i/M.
        confidence: (M,) float64 mean confidence per bin (NaN for an empty bin).
        accuracy: (M,) float64 accuracy per bin (NaN for an empty bin).
        counts: (M,) int64 number of valid pixels per bin.
    """

    ece: float
    bin_edges: Tensor
    confidence: Tensor
    accuracy: Tensor
    counts: Tensor


def reliability_diagram(
    probs: ArrayLike, labels: ArrayLike, num_bins: int = 15, ignore_index: int = 255
) -> ReliabilityDiagram:
    """Reliability-diagram data and ECE of class probabilities against labels.

    Args:
        probs: (N, C) or (B, C, H, W) float class probabilities (each pixel's entries in [0, 1]
            summing to 1 within 1e-3; pass softmax outputs, not logits).
        labels: (N,) or (B, H, W) integer labels in [0, C) ∪ {ignore_index}.
        num_bins: M, the number of equal-width confidence bins.
        ignore_index: label of void pixels, which are left out.

    Returns:
        :class:`ReliabilityDiagram` (float64 / int64 tensors on the CPU).

    Raises:
        ValueError: on mismatched shapes, wrong dtypes, NaN/inf or non-normalised
            probabilities, labels outside [0, C) ∪ {ignore_index}, or no valid pixel.
    """
    check_positive_int("num_bins", num_bins)
    p = to_tensor("probs", probs)
    y = to_tensor("labels", labels)
    if p.ndim not in (2, 4) or y.shape != p.shape[:1] + p.shape[2:]:
        raise ValueError(
            "probs must be (N, C) or (B, C, H, W) and labels (N,) or (B, H, W) with matching "
            f"sizes, got probs {tuple(p.shape)} and labels {tuple(y.shape)}"
        )
    check_floating("probs", p)
    check_integer("labels", y)
    c = p.shape[1]
    p = p.movedim(1, -1).reshape(-1, c)
    y = y.reshape(-1)
    bad_y = ((y < 0) | (y >= c)) & (y != ignore_index)
    if bool(bad_y.any()):
        raise ValueError(
            f"labels must be in [0, {c}) ∪ {{{ignore_index}}}, got {describe_values(y[bad_y])}"
        )
    valid = y != ignore_index
    if not bool(valid.any()):
        raise ValueError(f"no valid pixel: every label equals ignore_index={ignore_index}")
    p = p[valid].double()
    y = y[valid]
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"probs must be finite, got {describe_values(p[~torch.isfinite(p)])}")
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError(
            f"probs must lie in [0, 1], got {describe_values(p[(p < 0) | (p > 1)])}; "
            "pass softmax probabilities, not logits"
        )
    sums = p.sum(dim=1)
    off = (sums - 1).abs() > _SUM_TOL
    if bool(off.any()):
        raise ValueError(
            f"probs must sum to 1 over the C={c} classes (tolerance {_SUM_TOL}), got sums "
            f"{describe_values(sums[off])}; pass softmax probabilities"
        )
    conf, pred = p.max(dim=1)
    correct = (pred == y).double()
    edges = torch.arange(num_bins + 1, dtype=torch.float64) / num_bins
    idx = torch.bucketize(conf.cpu(), edges[1:-1], right=False)
    counts = torch.bincount(idx, minlength=num_bins)
    conf_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, idx, conf.cpu())
    acc_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, idx, correct.cpu())
    n = float(counts.sum())
    ece = float((acc_sum - conf_sum).abs().sum()) / n
    denom = counts.double()
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return ReliabilityDiagram(
        ece=ece,
        bin_edges=edges,
        confidence=torch.where(counts > 0, conf_sum / denom.clamp_min(1), nan),
        accuracy=torch.where(counts > 0, acc_sum / denom.clamp_min(1), nan),
        counts=counts,
    )


def expected_calibration_error(
    probs: ArrayLike, labels: ArrayLike, num_bins: int = 15, ignore_index: int = 255
) -> float:
    """Expected calibration error with ``num_bins`` equal-width bins (see the module docs).

    Args:
        probs: (N, C) or (B, C, H, W) float class probabilities.
        labels: (N,) or (B, H, W) integer labels in [0, C) ∪ {ignore_index}.
        num_bins: M, the number of confidence bins.
        ignore_index: label of void pixels, which are left out.

    Returns:
        ECE as a fraction in [0, 1].

    Raises:
        ValueError: see :func:`reliability_diagram`.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
        >>> round(expected_calibration_error(probs, torch.tensor([0, 1]), num_bins=10), 6)
        0.35
    """
    return reliability_diagram(probs, labels, num_bins, ignore_index).ece
