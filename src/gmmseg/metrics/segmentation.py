"""Closed-set segmentation metrics: aAcc, IoU, Acc, mIoU, mAcc.

Dataset-level accumulation of four int64 area vectors of length C (mmsegmentation's definition):
intersection I, predicted area P, label area L and union U = P + L − I, counted over valid pixels
(label ≠ ignore). Per-frame IoUs are never averaged. The functional core is
:func:`segmentation_update` (one batch → areas) and :func:`segmentation_compute` (areas → scores);
:class:`SegmentationMetrics` only holds the sum-reducible state.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, TypedDict, get_args

import torch
from torch import Tensor

from gmmseg._distributed import all_reduce_
from gmmseg.metrics._validation import (
    ArrayLike,
    check_frames,
    check_integer,
    check_positive_int,
    describe_values,
    first_bad_frame,
    frame_label,
    to_tensor,
    warn_undefined,
)

__all__ = [
    "SegmentationAreas",
    "SegmentationMetrics",
    "SegmentationResult",
    "VoidPredictions",
    "segmentation_compute",
    "segmentation_update",
]


VoidPredictions = Literal["error", "miss"]
"""What a prediction equal to ``ignore_index`` means: an error (default) or a miss."""
_VOID_PREDICTIONS: tuple[str, ...] = get_args(VoidPredictions)


class SegmentationAreas(NamedTuple):
    """Sufficient statistics of the closed-set metrics; each field is (C,) int64.

    Attributes:
        intersection: I_c, valid pixels predicted c and labelled c.
        pred_area: P_c, valid pixels predicted c (predictions on ignored pixels do not count).
        label_area: L_c, valid pixels labelled c.
        union: U_c = P_c + L_c − I_c.
    """

    intersection: Tensor
    pred_area: Tensor
    label_area: Tensor
    union: Tensor


class SegmentationResult(TypedDict):
    """Output of :meth:`SegmentationMetrics.compute`; ratios are fractions in [0, 1] or NaN.

    Keys:
        aAcc: overall pixel accuracy Σ I / Σ L.
        mIoU: NaN-skipping mean of ``IoU``.
        mAcc: NaN-skipping mean of ``Acc``.
        IoU: (C,) float64, I_c / U_c (NaN when U_c = 0).
        Acc: (C,) float64, I_c / L_c (NaN when L_c = 0).
    """

    aAcc: float
    mIoU: float
    mAcc: float
    IoU: Tensor
    Acc: Tensor


def _check_config(num_classes: int, ignore_index: int, void_predictions: str = "error") -> None:
    check_positive_int("num_classes", num_classes)
    if void_predictions not in _VOID_PREDICTIONS:
        raise ValueError(
            f"void_predictions must be one of {_VOID_PREDICTIONS}, got {void_predictions!r}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index must not be a valid class id in [0, {num_classes}), got {ignore_index}"
        )


def segmentation_update(
    preds: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    ignore_index: int = 255,
    *,
    first_frame: int = 0,
    void_predictions: VoidPredictions = "error",
) -> SegmentationAreas:
    """Areas I, P, L, U of one frame or a batch of frames.

    Args:
        preds: (H, W) or (B, H, W) integer predicted train ids in [0, C).
        labels: same shape, integer label train ids in [0, C) ∪ {ignore_index}.
        num_classes: C.
        ignore_index: label value of void pixels (never a valid class).
        first_frame: index of the first frame of this batch in the split, used in error messages.
        void_predictions: ``"error"`` (default) refuses a prediction equal to ``ignore_index``;
            ``"miss"`` counts it as a wrong prediction on a valid pixel (it adds to the label
            area L_c only, never to any predicted area), as the official Cityscapes script
            does with predicted label ids that are ignored in evaluation. Use it to score saved
            outputs of other tools; the default catches bugs in one's own pipeline.

    Returns:
        :class:`SegmentationAreas` of (C,) int64 tensors on the inputs' device.

    Raises:
        ValueError: on different shapes, a floating/bool dtype, a label outside
            [0, C) ∪ {ignore_index} or a prediction outside [0, C); the message names the frame
            and lists the offending values with pixel counts.

    Example:
        >>> y = torch.tensor([[0, 0, 0, 1, 1, 255, 255, 1]])
        >>> p = torch.tensor([[0, 0, 1, 1, 3, 2, 0, 1]])
        >>> segmentation_update(p, y, num_classes=4).union
        tensor([3, 4, 0, 1])
    """
    _check_config(num_classes, ignore_index, void_predictions)
    p = to_tensor("preds", preds)
    y = to_tensor("labels", labels)
    p, y = check_frames("preds", p, "labels", y)
    check_integer("preds", p)
    check_integer("labels", y)
    if p.device != y.device:
        raise ValueError(f"preds and labels must be on one device, got {p.device} and {y.device}")
    c = num_classes
    bad_y = ((y < 0) | (y >= c)) & (y != ignore_index)
    if bool(bad_y.any()):
        b = first_bad_frame(bad_y)
        vals = y[b][bad_y[b]]
        hint = "; pass train ids in [0, C) or the ignore value"
        if c == 19 and bool(((vals >= 19) & (vals <= 33)).any()):
            hint = "; labelIds instead of labelTrainIds?"
        raise ValueError(
            f"labels of {frame_label(first_frame + b, b)} must be in [0, {c}) ∪ "
            f"{{{ignore_index}}} (num_classes={c}, ignore_index={ignore_index}), "
            f"got {describe_values(vals)}{hint}"
        )
    bad_p = (p < 0) | (p >= c)
    if void_predictions == "miss":
        bad_p &= p != ignore_index
    if bool(bad_p.any()):
        b = first_bad_frame(bad_p)
        allowed = f"[0, {c})" + (f" ∪ {{{ignore_index}}}" if void_predictions == "miss" else "")
        raise ValueError(
            f"preds of {frame_label(first_frame + b, b)} must be in {allowed} "
            f"(num_classes={c}, void_predictions={void_predictions!r}), got "
            f"{describe_values(p[b][bad_p[b]])}; predictions are argmax ids over the C classes"
        )
    valid = y != ignore_index
    pv = p[valid].long()
    yv = y[valid].long()
    intersection = torch.bincount(yv[pv == yv], minlength=c)
    # A void prediction (void_predictions="miss") is in no predicted area: a miss of L_c.
    pred_area = torch.bincount(pv[pv != ignore_index], minlength=c)
    label_area = torch.bincount(yv, minlength=c)
    return SegmentationAreas(
        intersection, pred_area, label_area, pred_area + label_area - intersection
    )


def _nanmean(x: Tensor) -> float:
    keep = ~torch.isnan(x)
    if not bool(keep.any()):
        return float("nan")
    return float(x[keep].mean())


def segmentation_compute(areas: SegmentationAreas) -> SegmentationResult:
    """aAcc, mIoU, mAcc and per-class IoU/Acc from dataset totals.

    A 0/0 ratio is NaN (one :class:`UndefinedMetricWarning` per call lists the classes); the
    means skip NaN entries and are NaN only if every entry is NaN.

    Args:
        areas: dataset totals, each (C,) int64.

    Returns:
        :class:`SegmentationResult`; ``IoU`` and ``Acc`` are (C,) float64 on the areas' device.

    Raises:
        ValueError: if Σ L = 0 (no valid pixel in the whole split).
    """
    inter = areas.intersection.double()
    union = areas.union.double()
    label = areas.label_area.double()
    total = float(label.sum())
    if total == 0:
        raise ValueError(
            "no valid pixel in the whole split (sum of label areas is 0): every label equals "
            "ignore_index; check the ignore value or the split"
        )
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=inter.device)
    iou = torch.where(union > 0, inter / union.clamp_min(1), nan)
    acc = torch.where(label > 0, inter / label.clamp_min(1), nan)
    nan_iou = torch.nonzero(torch.isnan(iou)).flatten().tolist()
    nan_acc = torch.nonzero(torch.isnan(acc)).flatten().tolist()
    if nan_iou or nan_acc:
        warn_undefined(
            f"classes absent from the labels have NaN Acc {nan_acc[:20]} and, if never predicted "
            f"on valid pixels, NaN IoU {nan_iou[:20]}; they are skipped by mAcc/mIoU"
        )
    return SegmentationResult(
        aAcc=float(inter.sum()) / total,
        mIoU=_nanmean(iou),
        mAcc=_nanmean(acc),
        IoU=iou,
        Acc=acc,
    )


class SegmentationMetrics:
    """Streaming closed-set metrics over a split (aAcc, mIoU, mAcc, per-class IoU and Acc).

    State: four (C,) int64 vectors (I, P, L, U), on the device of the first batch. They add up
    across batches, workers (:meth:`merge`) and ranks (:meth:`all_reduce`).

    Args:
        num_classes: C; valid train ids are 0 … C−1.
        ignore_index: label value of void pixels; must not be in [0, C).
        void_predictions: ``"error"`` (default) or ``"miss"``: a prediction equal to
            ``ignore_index`` counts as a miss (see :func:`segmentation_update`).

    Example:
        >>> m = SegmentationMetrics(num_classes=4)
        >>> m.update(torch.tensor([[0, 0, 1, 1, 3, 2, 0, 1]]),
        ...          torch.tensor([[0, 0, 0, 1, 1, 255, 255, 1]]))
        >>> round(m.compute()["mIoU"], 5)  # doctest: +SKIP
        0.38889
    """

    intersection: Tensor
    pred_area: Tensor
    label_area: Tensor
    union: Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        void_predictions: VoidPredictions = "error",
    ) -> None:
        _check_config(num_classes, ignore_index, void_predictions)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.void_predictions: VoidPredictions = void_predictions
        self.reset()

    def reset(self) -> None:
        """Zero the state (keeps its device)."""
        device = self.intersection.device if hasattr(self, "intersection") else None
        zeros = torch.zeros(self.num_classes, dtype=torch.int64, device=device)
        self.intersection = zeros.clone()
        self.pred_area = zeros.clone()
        self.label_area = zeros.clone()
        self.union = zeros.clone()
        self.num_frames = 0

    @property
    def areas(self) -> SegmentationAreas:
        """The accumulated totals as :class:`SegmentationAreas`."""
        return SegmentationAreas(self.intersection, self.pred_area, self.label_area, self.union)

    def update(self, preds: ArrayLike, labels: ArrayLike) -> None:
        """Add one frame (H, W) or a batch (B, H, W) of integer predictions and labels.

        Args:
            preds: (H, W) or (B, H, W) integer predicted train ids in [0, C) (and
                ``ignore_index`` with ``void_predictions="miss"``).
            labels: same shape, integer train ids in [0, C) ∪ {ignore_index}.

        Raises:
            ValueError: see :func:`segmentation_update`; the state is unchanged on error.
        """
        areas = segmentation_update(
            preds,
            labels,
            self.num_classes,
            self.ignore_index,
            first_frame=self.num_frames,
            void_predictions=self.void_predictions,
        )
        if self.num_frames == 0 and self.intersection.device != areas.intersection.device:
            self.intersection = self.intersection.to(areas.intersection.device)
            self.pred_area = self.pred_area.to(areas.intersection.device)
            self.label_area = self.label_area.to(areas.intersection.device)
            self.union = self.union.to(areas.intersection.device)
        self.intersection += areas.intersection.to(self.intersection.device)
        self.pred_area += areas.pred_area.to(self.intersection.device)
        self.label_area += areas.label_area.to(self.intersection.device)
        self.union += areas.union.to(self.intersection.device)
        p = preds.shape
        self.num_frames += 1 if len(p) == 2 else int(p[0])

    def merge(self, other: SegmentationMetrics) -> None:
        """Add the state of another instance (same C and ignore_index) into this one."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                "other must have the same (num_classes, ignore_index) = "
                f"{(self.num_classes, self.ignore_index)}, got "
                f"{(other.num_classes, other.ignore_index)}"
            )
        dev = self.intersection.device
        self.intersection += other.intersection.to(dev)
        self.pred_area += other.pred_area.to(dev)
        self.label_area += other.label_area.to(dev)
        self.union += other.union.to(dev)
        self.num_frames += other.num_frames

    def all_reduce(self) -> None:
        """Sum the state over all ranks in place; a no-op unless torch.distributed is initialised.

        Call it on every rank (it is a collective) once, after the last :meth:`update` and
        before :meth:`compute`; a second call would add the totals again.
        """
        frames = torch.tensor([self.num_frames], dtype=torch.int64, device=self.union.device)
        all_reduce_([self.intersection, self.pred_area, self.label_area, self.union, frames])
        self.num_frames = int(frames.item())

    def compute(self) -> SegmentationResult:
        """Scores of the accumulated split, see :func:`segmentation_compute`."""
        return segmentation_compute(self.areas)
