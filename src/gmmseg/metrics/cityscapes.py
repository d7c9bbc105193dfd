"""The official Cityscapes pixel-level scores: class and category IoU, instance-weighted iIoU.

The Cityscapes benchmark reports, besides the class IoU (= :class:`SegmentationMetrics`' IoU on
train ids), the IoU of the 7 categories (flat, construction, object, nature, sky, human,
vehicle) and an instance-weighted IoU (iIoU) for the 8 classes with instances and the 2
categories made only of such classes (human, vehicle). iIoU weights each ground-truth
instance's true positives and false negatives by ``average instance size of its class /
instance size``, so large and small objects count alike; false positives are not weighted:

    iIoU_c = Σ_k w_k·TP_k / (Σ_k w_k·TP_k + FP_c + Σ_k w_k·FN_k),  w_k = avg_size(c) / |k|,

over the instances k of class c (of all frames), with FP_c = P_c − I_c the class's false
positives on valid pixels. The average sizes are the benchmark's fixed table
(:data:`CITYSCAPES_AVERAGE_INSTANCE_SIZE`). Instances come from ``*_gtFine_instanceIds.png``
(value = label id · 1000 + instance number for objects, the plain label id elsewhere).

Everything is counted in train-id space: a prediction that the official script would read as a
label id ignored in evaluation (train id 255) is a miss (``void_predictions="miss"``). This
module restates the benchmark's tables; it depends on nothing else in gmmseg.
"""

from __future__ import annotations

import math
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from gmmseg.metrics._validation import (
    ArrayLike,
    check_frames,
    check_integer,
    describe_values,
    frame_label,
    host_array,
    to_tensor,
)
from gmmseg.metrics.segmentation import (
    SegmentationMetrics,
    VoidPredictions,
    segmentation_compute,
)

__all__ = [
    "CITYSCAPES_AVERAGE_INSTANCE_SIZE",
    "CITYSCAPES_CATEGORIES",
    "CityscapesMetrics",
    "CityscapesResult",
]

#: The 7 evaluated Cityscapes categories, in the benchmark's order ("void" has no evaluated
#: class and is left out).
CITYSCAPES_CATEGORIES: tuple[str, ...] = (
    "flat",
    "construction",
    "object",
    "nature",
    "sky",
    "human",
    "vehicle",
)
# Category index of each train id 0–18 (road, sidewalk | building, wall, fence | pole, traffic
# light, traffic sign | vegetation, terrain | sky | person, rider | car … bicycle).
_TRAIN_ID_CATEGORY = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6])
_NUM_CLASSES = 19
_NUM_CATEGORIES = len(CITYSCAPES_CATEGORIES)

#: Average instance size (pixels) per train id of the classes with instances: the fixed weights
#: of the benchmark's iIoU (person 11, rider 12, car 13, truck 14, bus 15, train 16,
#: motorcycle 17, bicycle 18).
CITYSCAPES_AVERAGE_INSTANCE_SIZE: dict[int, float] = {
    11: 3462.4756337644,
    12: 3930.4788056518,
    13: 12794.0202738185,
    14: 27855.1264367816,
    15: 35732.1511111111,
    16: 67583.7075812274,
    17: 6298.7200839748,
    18: 4672.3249222261,
}
# Label id → train id of the label ids that can carry instances (24 person … 33 bicycle);
# caravan (29) and trailer (30) have instances but are ignored in evaluation (255).
_INSTANCE_LABEL_TO_TRAIN = np.full(34, 255, dtype=np.int64)
for _label_id, _train_id in zip(
    (24, 25, 26, 27, 28, 31, 32, 33), (11, 12, 13, 14, 15, 16, 17, 18), strict=True
):
    _INSTANCE_LABEL_TO_TRAIN[_label_id] = _train_id
_AVG_SIZE = np.zeros(_NUM_CLASSES, dtype=np.float64)
for _train_id, _size in CITYSCAPES_AVERAGE_INSTANCE_SIZE.items():
    _AVG_SIZE[_train_id] = _size
# Categories whose every class has instances: human (5) and vehicle (6).
_INSTANCE_CATEGORIES = (5, 6)


class CityscapesResult(TypedDict):
    """Output of :meth:`CityscapesMetrics.compute`; ratios are fractions in [0, 1] or NaN.

    Keys:
        IoU: (19,) float64 class IoU (NaN where the class is neither labelled nor predicted).
        mIoU: NaN-skipping mean of ``IoU`` (the benchmark's "IoU class").
        iIoU: (19,) float64 instance-weighted IoU; NaN for the 11 classes without instances,
            and for all classes when no instance ids were given.
        mean_iIoU: NaN-skipping mean of ``iIoU`` ("iIoU class").
        category_IoU: (7,) float64 IoU of :data:`CITYSCAPES_CATEGORIES`.
        mean_category_IoU: NaN-skipping mean of ``category_IoU`` ("IoU category").
        category_iIoU: (7,) float64; only human and vehicle are defined, NaN elsewhere.
        mean_category_iIoU: NaN-skipping mean of ``category_iIoU`` ("iIoU category").
        aAcc: overall pixel accuracy over valid pixels (not a benchmark column).
        has_instances: whether instance ids were given (iIoU is NaN otherwise).
    """

    IoU: Tensor
    mIoU: float
    iIoU: Tensor
    mean_iIoU: float
    category_IoU: Tensor
    mean_category_IoU: float
    category_iIoU: Tensor
    mean_category_iIoU: float
    aAcc: float
    has_instances: bool


def _nanmean(x: npt.NDArray[np.float64]) -> float:
    keep = ~np.isnan(x)
    return float(x[keep].mean()) if keep.any() else math.nan


def _ratio(num: npt.NDArray[np.float64], den: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out = np.full(num.shape, math.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


class CityscapesMetrics:
    """Streaming Cityscapes benchmark scores over train ids (IoU, iIoU, category IoU / iIoU).

    State: the class areas and the category areas (two :class:`SegmentationMetrics`), and per
    class / category the weighted instance true positives and false negatives (float64).

    Args:
        void_predictions: ``"error"`` (default) refuses a predicted 255; ``"miss"`` counts it
            as a miss, as the official script counts predicted label ids that are ignored in
            evaluation (use it for saved outputs converted from label ids).

    Example:
        >>> m = CityscapesMetrics()
        >>> m.update(torch.tensor([[0, 11]]), torch.tensor([[0, 12]]))
        >>> human = m.compute()["category_IoU"]
        >>> float(human[5])  # person predicted on a rider: the category is right
        1.0
    """

    def __init__(self, void_predictions: VoidPredictions = "error") -> None:
        self.classes = SegmentationMetrics(_NUM_CLASSES, 255, void_predictions)
        self.categories = SegmentationMetrics(_NUM_CATEGORIES, 255, void_predictions)
        self.void_predictions: VoidPredictions = void_predictions
        self.reset()

    def reset(self) -> None:
        """Forget every frame."""
        self.classes.reset()
        self.categories.reset()
        self.instance_tp = np.zeros(_NUM_CLASSES, dtype=np.float64)
        self.instance_fn = np.zeros(_NUM_CLASSES, dtype=np.float64)
        self.category_instance_tp = np.zeros(_NUM_CATEGORIES, dtype=np.float64)
        self.category_instance_fn = np.zeros(_NUM_CATEGORIES, dtype=np.float64)
        self.num_frames = 0
        self.frames_with_instances = 0

    def update(
        self, preds: ArrayLike, labels: ArrayLike, instance_ids: ArrayLike | None = None
    ) -> None:
        """Add one frame (H, W) or a batch (B, H, W).

        Args:
            preds: (H, W) or (B, H, W) integer predicted train ids in [0, 19) (and 255 with
                ``void_predictions="miss"``).
            labels: same shape, integer train ids in [0, 19) ∪ {255}.
            instance_ids: same shape, integer ``*_gtFine_instanceIds.png`` values (label id ·
                1000 + k for objects), or None. Give them for every frame or for none.

        Raises:
            ValueError: see :func:`~gmmseg.metrics.segmentation_update`; instance ids of another
                shape, a float dtype, negative, of a label id above 33, or given for some
                frames only.
        """
        p = to_tensor("preds", preds)
        y = to_tensor("labels", labels)
        p3, y3 = check_frames("preds", p, "labels", y)
        inst: npt.NDArray[Any] | None = None
        if instance_ids is not None:
            i_t = to_tensor("instance_ids", instance_ids)
            i3, _ = check_frames("instance_ids", i_t, "labels", y)
            check_integer("instance_ids", i3)
            inst = host_array(i3).astype(np.int64)
            if (inst < 0).any():
                raise ValueError(
                    f"instance_ids must be >= 0 (label id * 1000 + k, or a label id), got "
                    f"minimum {int(inst.min())}"
                )
            label_ids = np.where(inst < 1000, inst, inst // 1000)
            bad = label_ids >= _INSTANCE_LABEL_TO_TRAIN.size
            if bad.any():
                b = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
                raise ValueError(
                    f"instance_ids of {frame_label(self.num_frames + b, b)} hold label ids "
                    f"above 33 (value // 1000 for values >= 1000): "
                    f"{describe_values(torch.from_numpy(inst[b][bad[b]]))}; expected "
                    "*_gtFine_instanceIds.png values (label id * 1000 + k, or a label id 0-33)"
                )
        given = inst is not None
        if self.num_frames and given != (self.frames_with_instances > 0):
            raise ValueError(
                "instance_ids must be given for every frame or for none: "
                f"{self.frames_with_instances} of the first {self.num_frames} frames had them, "
                f"this batch {'has' if given else 'has none'}"
            )
        # Category ids: the same checks and void handling run on the class ids first.
        before = self.classes.num_frames
        self.classes.update(p3, y3)
        cat = torch.as_tensor(_TRAIN_ID_CATEGORY, device=p3.device)
        pc = torch.where((p3 >= 0) & (p3 < _NUM_CLASSES), cat[p3.long().clamp(0, 18)], 255)
        yc = torch.where(y3 != 255, cat[y3.long().clamp(0, 18)], 255)
        self.categories.update(pc, yc)
        assert self.classes.num_frames == before + p3.shape[0]
        if inst is not None:
            self._add_instances(host_array(p3).astype(np.int64), inst)
            self.frames_with_instances += p3.shape[0]
        self.num_frames += p3.shape[0]

    def _add_instances(self, preds: npt.NDArray[np.int64], inst: npt.NDArray[np.int64]) -> None:
        """Weighted instance TP / FN of (B, H, W) train-id predictions and instance ids."""
        for b in range(preds.shape[0]):
            ids = inst[b]
            obj = ids > 1000  # the benchmark's test: object instances have id > 1000
            label_id = ids[obj] // 1000
            train = _INSTANCE_LABEL_TO_TRAIN[label_id]  # label ids < 34: checked in update()
            keep = train != 255  # instances of classes ignored in evaluation do not count
            if not keep.any():
                continue
            values, index, size = np.unique(ids[obj][keep], return_inverse=True, return_counts=True)
            pred = preds[b][obj][keep]
            cls = train[keep]
            tp = np.bincount(index, weights=(pred == cls), minlength=values.size)
            in_cat = (pred >= 0) & (pred < _NUM_CLASSES)
            pred_cat = np.where(in_cat, _TRAIN_ID_CATEGORY[np.clip(pred, 0, 18)], -1)
            cat_tp = np.bincount(
                index, weights=(pred_cat == _TRAIN_ID_CATEGORY[cls]), minlength=values.size
            )
            inst_cls = _INSTANCE_LABEL_TO_TRAIN[values // 1000]
            weight = _AVG_SIZE[inst_cls] / size
            self.instance_tp += np.bincount(inst_cls, tp * weight, minlength=_NUM_CLASSES)
            self.instance_fn += np.bincount(inst_cls, (size - tp) * weight, _NUM_CLASSES)
            inst_cat = _TRAIN_ID_CATEGORY[inst_cls]
            self.category_instance_tp += np.bincount(inst_cat, cat_tp * weight, _NUM_CATEGORIES)
            self.category_instance_fn += np.bincount(
                inst_cat, (size - cat_tp) * weight, _NUM_CATEGORIES
            )

    def compute(self) -> CityscapesResult:
        """The benchmark's scores of the accumulated frames.

        Raises:
            ValueError: if no valid pixel was seen.
        """
        cls = segmentation_compute(self.classes.areas)
        cat = segmentation_compute(self.categories.areas)
        has_inst = self.frames_with_instances > 0
        iiou = np.full(_NUM_CLASSES, math.nan)
        cat_iiou = np.full(_NUM_CATEGORIES, math.nan)
        if has_inst:
            a = self.classes.areas
            fp = (a.pred_area - a.intersection).cpu().numpy().astype(np.float64)
            with_inst = _AVG_SIZE > 0
            tp, fn = self.instance_tp, self.instance_fn
            iiou[with_inst] = _ratio(tp, tp + fp + fn)[with_inst]
            ca = self.categories.areas
            cfp = (ca.pred_area - ca.intersection).cpu().numpy().astype(np.float64)
            ctp, cfn = self.category_instance_tp, self.category_instance_fn
            sel = list(_INSTANCE_CATEGORIES)
            cat_iiou[sel] = _ratio(ctp, ctp + cfp + cfn)[sel]
        return CityscapesResult(
            IoU=cls["IoU"],
            mIoU=cls["mIoU"],
            iIoU=torch.from_numpy(iiou),
            mean_iIoU=_nanmean(iiou),
            category_IoU=cat["IoU"],
            mean_category_IoU=cat["mIoU"],
            category_iIoU=torch.from_numpy(cat_iiou),
            mean_category_iIoU=_nanmean(cat_iiou),
            aAcc=cls["aAcc"],
            has_instances=has_inst,
        )
