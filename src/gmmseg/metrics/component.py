"""SMIYC component-level metrics: sIoU, PPV, F1(τ) and mean F1 (``docs/anomaly.md``).

Per frame: the ground-truth anomaly G = {label = 1} and the prediction {score > δ} minus void
(strictly greater than the pixel threshold δ) are split into **8-connected** components
(3 × 3 neighbourhood, ``scipy.ndimage.label``); predicted components smaller than
``min_pred_size`` are removed, ground-truth components smaller than ``min_gt_size`` become
void, and from then on every set is restricted to the region of interest (non-void pixels).
The dataset scores pool components over all frames.

| ``track``     | ``min_pred_size`` | ``min_gt_size`` |
| ------------- | ----------------- | --------------- |
| ``"anomaly"`` (RA21, toolkit default) | 500 | 100 |
| ``"obstacle"`` (RO21)                 | 50  | 10  |

δ is the best-F1 threshold of the SMIYC binned pixel metrics on the same method and split
(``AnomalyMetrics(mode="smiyc_binned").compute()["best_f1_threshold"]``, see
:meth:`ComponentMetrics.from_pixel_result`) or an explicit value.
"""

from __future__ import annotations

import math
from typing import Literal, TypedDict, get_args

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage
from torch import Tensor

from gmmseg._distributed import all_reduce_
from gmmseg.metrics._validation import (
    ArrayLike,
    check_binary_labels,
    check_finite_on,
    check_floating,
    check_frames,
    check_integer,
    describe_values,
    to_tensor,
    warn_undefined,
)
from gmmseg.metrics.anomaly import AnomalyResult

__all__ = ["TAUS", "ComponentMetrics", "ComponentResult", "Track"]

Track = Literal["anomaly", "obstacle"]
"""SMIYC track: ``"anomaly"`` (RA21) or ``"obstacle"`` (RO21)."""
_TRACKS: tuple[str, ...] = get_args(Track)
_SIZES = {"anomaly": (500, 100), "obstacle": (50, 10)}
_EIGHT = np.ones((3, 3), dtype=bool)


def _tau_grid() -> npt.NDArray[np.float64]:
    taus = 0.25 + np.arange(11, dtype=np.float64) * 0.05
    taus[-1] = 0.75
    return taus


TAUS: npt.NDArray[np.float64] = _tau_grid()
"""(11,) float64 sIoU/PPV thresholds τ: 0.25 + i·0.05 in float64, the last set to 0.75 exactly."""


class ComponentResult(TypedDict):
    """Output of :meth:`ComponentMetrics.compute`.

    Keys:
        sIoU: mean sIoU over all ground-truth components of all frames (NaN if none).
        PPV: mean PPV over all predicted components of all frames (NaN if none).
        F1: (11,) float64 tensor, F1(τ) for τ in :data:`TAUS` (NaN where 2TP + FN + FP = 0).
        mean_F1: mean of ``F1`` over the 11 τ.
        F1_25: F1 at τ = 0.25.
        F1_50: F1 at τ = 0.50.
        F1_75: F1 at τ = 0.75.
        tp: (11,) int64 TP_τ; fn: (11,) int64 FN_τ; fp: (11,) int64 FP_τ.
        num_gt_components: number of ground-truth components (after the size filter).
        num_pred_components: number of predicted components (after filters and the ROI).
        threshold: the pixel threshold δ used.
        threshold_source: where δ came from (e.g. ``"given"``).
        track: ``"anomaly"`` or ``"obstacle"``.
    """

    sIoU: float
    PPV: float
    F1: Tensor
    mean_F1: float
    F1_25: float
    F1_50: float
    F1_75: float
    tp: Tensor
    fn: Tensor
    fp: Tensor
    num_gt_components: int
    num_pred_components: int
    threshold: float
    threshold_source: str
    track: str


def frame_components(
    scores: npt.NDArray[np.floating],
    labels: npt.NDArray[np.integer],
    threshold: float,
    min_pred_size: int,
    min_gt_size: int,
    ignore_index: int = 255,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-component sIoU (ground truth) and PPV of every predicted component of one frame.

    Args:
        scores: (H, W) float anomaly scores.
        labels: (H, W) integer labels in {0, 1, ignore_index}.
        threshold: δ; a pixel is predicted anomalous if its score is strictly greater.
        min_pred_size: predicted components with fewer pixels are removed.
        min_gt_size: ground-truth components with fewer pixels become void.
        ignore_index: void label.

    Returns:
        ``(siou, ppv)``: (K,) float64 per ground-truth component and (K̂,) float64 per
        predicted component that keeps at least one ROI pixel.
    """
    void = labels == ignore_index
    gt = labels == 1
    # Compared in float64, so float16 / float32 scores are thresholded at δ itself, not at δ
    # rounded to their dtype (δ, a SMIYC bin edge, is a float64 value). The toolkit writes
    # `anomaly_p > thresh_p` with its float16 map and a float64 δ: exact under NumPy >= 2, but
    # under the NumPy 1.x value-based casting (its requirements pin 1.23) δ is rounded to
    # float16 first. The explicit cast keeps gmmseg exact under every supported NumPy.
    pred = (scores.astype(np.float64, copy=False) > float(threshold)) & ~void
    gt_lab, n_gt = ndimage.label(gt, structure=_EIGHT)
    pr_lab, n_pr = ndimage.label(pred, structure=_EIGHT)
    pr_size = np.bincount(pr_lab.ravel(), minlength=n_pr + 1)
    small_pr = pr_size < min_pred_size
    small_pr[0] = True
    pr_lab[small_pr[pr_lab]] = 0
    gt_size = np.bincount(gt_lab.ravel(), minlength=n_gt + 1)
    small_gt = gt_size < min_gt_size
    small_gt[0] = False
    roi = ~(void | small_gt[gt_lab])
    gt_lab = np.where(roi, gt_lab, 0)
    pr_lab = np.where(roi, pr_lab, 0)
    gt_roi = gt_lab > 0
    # ROI sizes of predicted components and their overlap with any GT component.
    pr_area = np.bincount(pr_lab.ravel(), minlength=n_pr + 1)
    pr_on_gt = np.bincount(pr_lab[gt_roi], minlength=n_pr + 1)
    pr_ids = np.flatnonzero(pr_area[1:] > 0) + 1
    ppv = pr_on_gt[pr_ids] / pr_area[pr_ids]
    gt_ids = np.flatnonzero(np.bincount(gt_lab.ravel(), minlength=n_gt + 1)[1:] > 0) + 1
    gt_area = np.bincount(gt_lab.ravel(), minlength=n_gt + 1)
    # Pixel counts of each (GT component, predicted component) intersection.
    both = gt_roi & (pr_lab > 0)
    pair = gt_lab[both].astype(np.int64) * (n_pr + 1) + pr_lab[both]
    pairs, inter = np.unique(pair, return_counts=True)
    g, p = pairs // (n_pr + 1), pairs % (n_pr + 1)
    # For GT k: |k ∩ K̂| = Σ_p |k ∩ p|; |K̂| = Σ_p |p|; |K̂ ∩ G_ROI| = Σ_p |p ∩ G|; A = the rest.
    k_and_pred = np.bincount(g, weights=inter, minlength=n_gt + 1)
    pred_union = np.bincount(g, weights=pr_area[p], minlength=n_gt + 1)
    pred_on_gt = np.bincount(g, weights=pr_on_gt[p], minlength=n_gt + 1)
    other = pred_on_gt - k_and_pred
    denom = pred_union + gt_area - k_and_pred - other
    siou = k_and_pred[gt_ids] / denom[gt_ids]
    return siou.astype(np.float64), ppv.astype(np.float64)


class ComponentMetrics:
    """Streaming SMIYC component-level metrics (sIoU, PPV, F1 per τ, mean F1).

    State (sum-reducible): Σ sIoU, #GT components, Σ PPV, #predicted components and the
    (11,) int64 counts TP_τ, FN_τ, FP_τ.

    Args:
        track: ``"anomaly"`` (size filters 500 / 100) or ``"obstacle"`` (50 / 10).
        threshold: δ, the pixel threshold (score > δ is predicted anomalous); required before
            :meth:`update` (see :meth:`from_pixel_result`).
        threshold_source: recorded in the result, e.g. ``"smiyc_binned best F1"``.
        ignore_index: void label.
        min_pred_size: override of the track's minimum predicted component size (1 disables).
        min_gt_size: override of the track's minimum ground-truth component size (1 disables).
        score_dtype: ``torch.float16`` to round scores to float16 before thresholding, as the
            SMIYC server does with the float16 maps it stores (use it together with
            ``AnomalyMetrics(mode="smiyc_binned", score_dtype=torch.float16)``, whose δ is a
            float16 value), or None to threshold the scores as given.

    Example:
        >>> m = ComponentMetrics("obstacle", threshold=0.5, min_pred_size=1, min_gt_size=1)
        >>> m.update(torch.tensor([[0.9, 0.1]]), torch.tensor([[1, 0]]))
        >>> m.compute()["mean_F1"]
        1.0
    """

    siou_sum: Tensor
    ppv_sum: Tensor
    counts: Tensor
    tp: Tensor
    fn: Tensor
    fp: Tensor

    def __init__(
        self,
        track: Track = "anomaly",
        threshold: float | None = None,
        threshold_source: str = "given",
        ignore_index: int = 255,
        min_pred_size: int | None = None,
        min_gt_size: int | None = None,
        score_dtype: torch.dtype | None = None,
    ) -> None:
        if track not in _TRACKS:
            raise ValueError(f"track must be one of {_TRACKS}, got {track!r}")
        if threshold is not None and not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite float or None, got {threshold!r}")
        if score_dtype is not None and score_dtype != torch.float16:
            raise ValueError(
                "score_dtype must be None or torch.float16 (SMIYC server emulation), "
                f"got {score_dtype}"
            )
        pred_default, gt_default = _SIZES[track]
        self.score_dtype = score_dtype
        self.track: Track = track
        self.threshold = threshold
        self.threshold_source = threshold_source
        self.ignore_index = ignore_index
        self.min_pred_size = pred_default if min_pred_size is None else min_pred_size
        self.min_gt_size = gt_default if min_gt_size is None else min_gt_size
        for name, v in (("min_pred_size", self.min_pred_size), ("min_gt_size", self.min_gt_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        self.reset()

    @classmethod
    def from_pixel_result(
        cls,
        result: AnomalyResult,
        track: Track = "anomaly",
        ignore_index: int = 255,
        min_pred_size: int | None = None,
        min_gt_size: int | None = None,
        score_dtype: torch.dtype | None = None,
    ) -> ComponentMetrics:
        """Use the best-F1 threshold of a pixel-level result as δ (``docs/anomaly.md``).

        Args:
            result: output of :meth:`AnomalyMetrics.compute` for the same method and split;
                the SMIYC protocol uses ``mode="smiyc_binned"``.
            track: ``"anomaly"`` or ``"obstacle"``.
            ignore_index: void label.
            min_pred_size: override of the track's minimum predicted component size.
            min_gt_size: override of the track's minimum ground-truth component size.
            score_dtype: ``torch.float16`` when the pixel metrics used it (server emulation).

        Returns:
            A new :class:`ComponentMetrics` whose ``threshold_source`` names the pixel mode.
        """
        return cls(
            track,
            threshold=result["best_f1_threshold"],
            threshold_source=f"{result['mode']} best F1",
            ignore_index=ignore_index,
            min_pred_size=min_pred_size,
            min_gt_size=min_gt_size,
            score_dtype=score_dtype,
        )

    def reset(self) -> None:
        """Forget every frame."""
        self.siou_sum = torch.zeros((), dtype=torch.float64)
        self.ppv_sum = torch.zeros((), dtype=torch.float64)
        self.counts = torch.zeros(2, dtype=torch.int64)  # GT components, predicted components
        self.tp = torch.zeros(len(TAUS), dtype=torch.int64)
        self.fn = torch.zeros(len(TAUS), dtype=torch.int64)
        self.fp = torch.zeros(len(TAUS), dtype=torch.int64)
        self.num_frames = 0

    def update(self, scores: ArrayLike, labels: ArrayLike) -> None:
        """Add one frame (H, W) or a batch (B, H, W) of anomaly scores and labels.

        Args:
            scores: (H, W) or (B, H, W) float anomaly scores, finite on valid pixels.
            labels: same shape, integer, 0 = in-distribution, 1 = anomaly, ignore_index = void.

        Raises:
            ValueError: if δ is not set, on shape/dtype/label-value errors, NaN/inf scores
                on valid pixels or (``score_dtype=float16``) scores beyond the float16 range
                on valid pixels (the message names the frame).
        """
        if self.threshold is None:
            raise ValueError(
                "threshold (δ) is not available: pass threshold=... or build the metric with "
                "ComponentMetrics.from_pixel_result(AnomalyMetrics(mode='smiyc_binned') result)"
            )
        if labels is None:
            raise ValueError(
                "labels are required: a frame without labels (test split) is never scored"
            )
        s = to_tensor("scores", scores)
        y = to_tensor("labels", labels)
        s, y = check_frames("scores", s, "labels", y)
        check_floating("scores", s)
        check_integer("labels", y)
        check_binary_labels(y, self.ignore_index, self.num_frames)
        check_finite_on(s, y != self.ignore_index, self.num_frames)
        s_np = (
            s.detach().cpu().float().numpy()
            if s.dtype == torch.bfloat16
            else s.detach().cpu().numpy()
        )
        y_np = y.detach().cpu().numpy()
        if self.score_dtype is not None:
            s_np = self._to_float16(s_np, y_np)
        taus = TAUS
        for b in range(s_np.shape[0]):
            siou, ppv = frame_components(
                s_np[b],
                y_np[b],
                self.threshold,
                self.min_pred_size,
                self.min_gt_size,
                self.ignore_index,
            )
            self.siou_sum += float(siou.sum())
            self.ppv_sum += float(ppv.sum())
            self.counts += torch.tensor([siou.size, ppv.size])
            tp = (siou[None, :] >= taus[:, None]).sum(axis=1)
            self.tp += torch.from_numpy(tp.astype(np.int64))
            self.fn += torch.from_numpy((siou.size - tp).astype(np.int64))
            self.fp += torch.from_numpy((ppv[None, :] < taus[:, None]).sum(axis=1).astype(np.int64))
        self.num_frames += s_np.shape[0]

    def _to_float16(
        self, s: npt.NDArray[np.floating], y: npt.NDArray[np.integer]
    ) -> npt.NDArray[np.floating]:
        """Round (B, H, W) scores to float16; a valid score beyond ±65504 is an error."""
        with np.errstate(over="ignore"):
            s16 = s.astype(np.float16)
        bad = (y != self.ignore_index) & ~np.isfinite(s16)
        if bad.any():
            b = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
            raise ValueError(
                f"scores of frame {self.num_frames + b} (batch index {b}) overflow float16 "
                f"(|s| > 65504) under score_dtype=float16: "
                f"{describe_values(torch.from_numpy(s[b][bad[b]]))}; "
                "rescale the scores as for the server submission"
            )
        return s16

    def merge(self, other: ComponentMetrics) -> None:
        """Add the state of another instance (same track, sizes, δ and score dtype) into it."""
        mine = (
            self.threshold,
            self.min_pred_size,
            self.min_gt_size,
            self.ignore_index,
            self.score_dtype,
        )
        theirs = (
            other.threshold,
            other.min_pred_size,
            other.min_gt_size,
            other.ignore_index,
            other.score_dtype,
        )
        if mine != theirs:
            raise ValueError(
                "other must have the same (threshold, min_pred_size, min_gt_size, ignore_index, "
                f"score_dtype) = {mine}, got {theirs}"
            )
        self.siou_sum += other.siou_sum
        self.ppv_sum += other.ppv_sum
        self.counts += other.counts
        self.tp += other.tp
        self.fn += other.fn
        self.fp += other.fp
        self.num_frames += other.num_frames

    def all_reduce(self) -> None:
        """Sum the state over all ranks; a no-op unless torch.distributed is initialised.

        A collective: call it on every rank once, after the last :meth:`update`.
        """
        frames = torch.tensor([self.num_frames], dtype=torch.int64)
        all_reduce_([self.siou_sum, self.ppv_sum, self.counts, self.tp, self.fn, self.fp, frames])
        self.num_frames = int(frames.item())

    def compute(self) -> ComponentResult:
        """Dataset scores, pooled over the components of all frames; NaN cases emit one warning."""
        n_gt, n_pred = int(self.counts[0]), int(self.counts[1])
        siou = float(self.siou_sum) / n_gt if n_gt else math.nan
        ppv = float(self.ppv_sum) / n_pred if n_pred else math.nan
        undefined = [name for name, n in (("sIoU", n_gt), ("PPV", n_pred)) if n == 0]
        if undefined:
            warn_undefined(
                f"{' and '.join(undefined)} undefined (NaN): {n_gt} ground-truth and {n_pred} "
                "predicted components in the split"
            )
        denom = (2 * self.tp + self.fn + self.fp).double()
        f1 = torch.where(denom > 0, 2 * self.tp.double() / denom.clamp_min(1), math.nan)
        return ComponentResult(
            sIoU=siou,
            PPV=ppv,
            F1=f1,
            mean_F1=float(f1.mean()),
            F1_25=float(f1[0]),
            F1_50=float(f1[5]),
            F1_75=float(f1[10]),
            tp=self.tp.clone(),
            fn=self.fn.clone(),
            fp=self.fp.clone(),
            num_gt_components=n_gt,
            num_pred_components=n_pred,
            threshold=math.nan if self.threshold is None else float(self.threshold),
            threshold_source=self.threshold_source,
            track=self.track,
        )
