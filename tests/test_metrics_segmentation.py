"""Closed-set metrics against the spec's worked example and a plain NumPy confusion matrix."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gmmseg.metrics import (
    SegmentationMetrics,
    UndefinedMetricWarning,
    segmentation_compute,
    segmentation_update,
)

Y = torch.tensor([[0, 0, 0, 1, 1, 255, 255, 1]])
P = torch.tensor([[0, 0, 1, 1, 3, 2, 0, 1]])


def reference(preds: np.ndarray, labels: np.ndarray, c: int, ignore: int = 255) -> dict:
    """Plain loop over pixels into a C×C confusion matrix, then the §1.3 table."""
    cm = np.zeros((c, c), dtype=np.int64)
    for p, y in zip(preds.ravel().tolist(), labels.ravel().tolist(), strict=True):
        if y != ignore:
            cm[y, p] += 1
    iou, acc = [], []
    for k in range(c):
        inter = cm[k, k]
        union = cm[k, :].sum() + cm[:, k].sum() - inter
        lab = cm[k, :].sum()
        iou.append(inter / union if union else math.nan)
        acc.append(inter / lab if lab else math.nan)
    kept_iou = [v for v in iou if not math.isnan(v)]
    kept_acc = [v for v in acc if not math.isnan(v)]
    return {
        "aAcc": np.trace(cm) / cm.sum(),
        "mIoU": sum(kept_iou) / len(kept_iou) if kept_iou else math.nan,
        "mAcc": sum(kept_acc) / len(kept_acc) if kept_acc else math.nan,
        "IoU": np.array(iou),
        "Acc": np.array(acc),
    }


def assert_matches(got: dict, ref: dict) -> None:
    for key in ("aAcc", "mIoU", "mAcc"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-15, nan_ok=True), key
    for key in ("IoU", "Acc"):
        np.testing.assert_allclose(got[key].numpy(), ref[key], rtol=1e-12, equal_nan=True)


def compute_quiet(m: SegmentationMetrics) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return dict(m.compute())


def test_spec_worked_example() -> None:
    areas = segmentation_update(P, Y, num_classes=4)
    assert areas.intersection.tolist() == [2, 2, 0, 0]
    assert areas.pred_area.tolist() == [2, 3, 0, 1]
    assert areas.label_area.tolist() == [3, 3, 0, 0]
    assert areas.union.tolist() == [3, 4, 0, 1]
    with pytest.warns(UndefinedMetricWarning) as record:
        res = segmentation_compute(areas)
    assert len(record) == 1  # one summary warning, not one per class
    assert res["mIoU"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert round(100 * res["mIoU"], 2) == 38.89
    assert res["mAcc"] == pytest.approx(2 / 3)
    assert res["aAcc"] == pytest.approx(4 / 6)
    iou = res["IoU"].tolist()
    assert iou[0] == pytest.approx(2 / 3) and iou[1] == 0.5 and math.isnan(iou[2]) and iou[3] == 0
    acc = res["Acc"].tolist()
    assert acc[:2] == pytest.approx([2 / 3, 2 / 3]) and math.isnan(acc[2]) and math.isnan(acc[3])
    assert set(res) == {"aAcc", "mIoU", "mAcc", "IoU", "Acc"}


def test_label_19_raises_and_labelids_hint() -> None:
    y = Y.clone()
    y[0, 7] = 19
    with pytest.raises(ValueError, match=r"frame 0.*19 \(1 px\)"):
        segmentation_update(P, y, num_classes=4)
    with pytest.raises(ValueError, match="labelIds instead of labelTrainIds"):
        segmentation_update(torch.zeros(1, 8, dtype=torch.long), y + 7 * (y == 19), 19)


@pytest.mark.parametrize(
    ("preds", "labels", "match"),
    [
        (P[:, :7], Y, r"identical shapes.*\(1, 7\).*\(1, 8\)"),
        (P.float(), Y, "preds must be an integer tensor"),
        (P, Y.float(), "labels must be an integer tensor"),
        (P.bool(), Y, "preds must be an integer"),
        (P + 4 * (P == 3), Y, r"preds of frame 0.*must be in \[0, 4\).*7 \(1 px\)"),
        (P, Y - 2 * (Y == 1), r"labels of frame 0.*-1 \(3 px\)"),
        (P.reshape(1, 1, 1, 8), Y.reshape(1, 1, 1, 8), "4-D"),
    ],
)
def test_input_errors(preds: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    m = SegmentationMetrics(num_classes=4)
    with pytest.raises(ValueError, match=match):
        m.update(preds, labels)
    assert m.union.sum() == 0  # state unchanged


def test_error_names_the_frame_in_the_split() -> None:
    m = SegmentationMetrics(num_classes=4)
    m.update(P, Y)
    bad = torch.stack([Y, Y.clone().fill_(9)])  # (2, 1, 8): a batch of two frames
    with pytest.raises(ValueError, match=r"frame 2 \(batch index 1\).*9 \(8 px\)"):
        m.update(torch.stack([P, P]), bad)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="ignore_index must not be a valid class"):
        SegmentationMetrics(num_classes=4, ignore_index=3)
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetrics(num_classes=0)


def test_all_ignore_split_raises() -> None:
    m = SegmentationMetrics(num_classes=3)
    m.update(torch.zeros(2, 4, dtype=torch.long), torch.full((2, 4), 255))
    with pytest.raises(ValueError, match="no valid pixel"):
        m.compute()


def test_absent_class_table() -> None:
    # class 0 present; class 1 absent but predicted on a valid pixel; class 2 never predicted.
    m = SegmentationMetrics(num_classes=3)
    m.update(torch.tensor([[0, 1, 0]]), torch.tensor([[0, 0, 0]]))
    res = compute_quiet(m)
    assert res["IoU"][1] == 0 and math.isnan(res["Acc"][1])
    assert math.isnan(res["IoU"][2]) and math.isnan(res["Acc"][2])
    assert res["mIoU"] == pytest.approx((2 / 3 + 0) / 2)
    assert res["mAcc"] == pytest.approx(2 / 3)


def test_no_warning_when_every_class_is_defined() -> None:
    m = SegmentationMetrics(num_classes=2)
    m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.compute()["mIoU"] == 1.0


frames = st.integers(1, 4).flatmap(
    lambda b: st.tuples(
        st.just(b),
        st.integers(1, 6),
        st.integers(1, 6),
        st.integers(1, 5),
        st.integers(0, 2**31 - 1),
    )
)


@given(frames, st.floats(0.0, 1.0))
def test_matches_numpy_confusion_matrix_and_streams(
    case: tuple[int, int, int, int, int], void_frac: float
) -> None:
    b, h, w, c, seed = case
    rng = np.random.default_rng(seed)
    # classes drawn from a subset so that some classes are absent from the labels
    labels = rng.integers(0, max(1, c - 1), size=(b, h, w))
    labels[rng.random((b, h, w)) < void_frac] = 255
    preds = rng.integers(0, c, size=(b, h, w))
    if (labels != 255).sum() == 0:
        labels[0, 0, 0] = 0
    ref = reference(preds, labels, c)
    whole = SegmentationMetrics(c)
    whole.update(torch.from_numpy(preds), torch.from_numpy(labels))
    assert_matches(compute_quiet(whole), ref)
    streamed = SegmentationMetrics(c)
    for i in range(b):
        streamed.update(preds[i], labels[i])  # NumPy frames, one by one
    assert torch.equal(streamed.union, whole.union)
    assert torch.equal(streamed.intersection, whole.intersection)
    left, right = SegmentationMetrics(c), SegmentationMetrics(c)
    left.update(torch.from_numpy(preds[:1]), torch.from_numpy(labels[:1]))
    right.update(torch.from_numpy(preds[1:]), torch.from_numpy(labels[1:]))
    left.merge(right)
    assert torch.equal(left.label_area, whole.label_area)
    assert torch.equal(left.pred_area, whole.pred_area)
    assert left.num_frames == b


def test_merge_rejects_other_config() -> None:
    with pytest.raises(ValueError, match="num_classes, ignore_index"):
        SegmentationMetrics(3).merge(SegmentationMetrics(4))


def test_all_reduce_is_noop_without_process_group() -> None:
    m = SegmentationMetrics(4)
    m.update(P, Y)
    before = m.union.clone()
    m.all_reduce()
    assert torch.equal(m.union, before)


def test_reset() -> None:
    m = SegmentationMetrics(4)
    m.update(P, Y)
    m.reset()
    assert m.union.sum() == 0 and m.num_frames == 0
