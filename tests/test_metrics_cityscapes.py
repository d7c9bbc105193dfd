"""Cityscapes benchmark scores against the official script's computation, restated plainly.

The reference below builds the official 34 × 34 confusion matrix over *label ids* (ground-truth
rows, predicted columns) and evaluates its class / category IoU and instance-weighted iIoU
formulas with plain loops, as cityscapesscripts' evalPixelLevelSemanticLabeling does; gmmseg
works in train-id space (predicted ignored ids become void misses).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from gmmseg.data.converters import cityscapes_label_ids_to_train_ids
from gmmseg.metrics import CITYSCAPES_CATEGORIES, CityscapesMetrics, SegmentationMetrics
from gmmseg.submit import read_cityscapes


class Label(NamedTuple):
    id: int
    name: str
    train_id: int
    category: str
    ignore_in_eval: bool


# cityscapesscripts' label table (helpers/labels.py), restated here rather than taken from
# gmmseg.data.meta, so that an error in gmmseg's table cannot cancel out in the comparison.
LABELS = [
    Label(*row)
    for row in (
        (0, "unlabeled", 255, "void", True),
        (1, "ego vehicle", 255, "void", True),
        (2, "rectification border", 255, "void", True),
        (3, "out of roi", 255, "void", True),
        (4, "static", 255, "void", True),
        (5, "dynamic", 255, "void", True),
        (6, "ground", 255, "void", True),
        (7, "road", 0, "flat", False),
        (8, "sidewalk", 1, "flat", False),
        (9, "parking", 255, "flat", True),
        (10, "rail track", 255, "flat", True),
        (11, "building", 2, "construction", False),
        (12, "wall", 3, "construction", False),
        (13, "fence", 4, "construction", False),
        (14, "guard rail", 255, "construction", True),
        (15, "bridge", 255, "construction", True),
        (16, "tunnel", 255, "construction", True),
        (17, "pole", 5, "object", False),
        (18, "polegroup", 255, "object", True),
        (19, "traffic light", 6, "object", False),
        (20, "traffic sign", 7, "object", False),
        (21, "vegetation", 8, "nature", False),
        (22, "terrain", 9, "nature", False),
        (23, "sky", 10, "sky", False),
        (24, "person", 11, "human", False),
        (25, "rider", 12, "human", False),
        (26, "car", 13, "vehicle", False),
        (27, "truck", 14, "vehicle", False),
        (28, "bus", 15, "vehicle", False),
        (29, "caravan", 255, "vehicle", True),
        (30, "trailer", 255, "vehicle", True),
        (31, "train", 16, "vehicle", False),
        (32, "motorcycle", 17, "vehicle", False),
        (33, "bicycle", 18, "vehicle", False),
    )
]
BY_ID = {lab.id: lab for lab in LABELS}
# The official table "hasInstances" (person … bicycle, caravan and trailer included).
HAS_INSTANCES = {24, 25, 26, 27, 28, 29, 30, 31, 32, 33}
AVG_CLASS_SIZE = {  # evalPixelLevelSemanticLabeling's args.avgClassSize, by label name
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}


def ignored(label_id: int) -> bool:
    return BY_ID[label_id].ignore_in_eval


def official_reference(preds, gts, insts):
    """Class/category IoU and iIoU as the official script computes them (label ids)."""
    conf = np.zeros((34, 34), dtype=np.int64)
    tp_w: dict[str, float] = {}
    fn_w: dict[str, float] = {}
    cats = [c for c in dict.fromkeys(lab.category for lab in LABELS)]
    inst_cats = {}
    for c in cats:
        ids = [lab.id for lab in LABELS if lab.category == c]
        if all(i in HAS_INSTANCES for i in ids):
            inst_cats[c] = ids
    ctp_w = dict.fromkeys(inst_cats, 0.0)
    cfn_w = dict.fromkeys(inst_cats, 0.0)
    for p, g, inst in zip(preds, gts, insts, strict=True):
        for pv, gv in zip(p.ravel().tolist(), g.ravel().tolist(), strict=True):
            conf[gv, pv] += 1
        for inst_id in np.unique(inst[inst > 1000]).tolist():
            lab = BY_ID[inst_id // 1000]
            if ignored(lab.id):
                continue
            mask = inst == inst_id
            size = int(mask.sum())
            tp = int((p[mask] == lab.id).sum())
            w = AVG_CLASS_SIZE[lab.name] / float(size)
            tp_w[lab.name] = tp_w.get(lab.name, 0.0) + tp * w
            fn_w[lab.name] = fn_w.get(lab.name, 0.0) + (size - tp) * w
            if lab.category in inst_cats:
                cat_tp = int(np.isin(p[mask], inst_cats[lab.category]).sum())
                ctp_w[lab.category] += cat_tp * w
                cfn_w[lab.category] += (size - cat_tp) * w
    eval_ids = [lab.id for lab in LABELS]
    iou, iiou = {}, {}
    for lab in LABELS:
        if ignored(lab.id):
            continue
        tp = conf[lab.id, lab.id]
        fn = conf[lab.id, :].sum() - tp
        fp = sum(conf[r, lab.id] for r in eval_ids if not ignored(r) and r != lab.id)
        iou[lab.train_id] = tp / (tp + fp + fn) if tp + fp + fn else math.nan
        if lab.id in HAS_INSTANCES:
            t, f = tp_w.get(lab.name, 0.0), fn_w.get(lab.name, 0.0)
            iiou[lab.train_id] = t / (t + fp + f) if t + fp + f else math.nan
    cat_iou, cat_iiou = {}, {}
    for c in cats:
        ids = [lab.id for lab in LABELS if lab.category == c and not ignored(lab.id)]
        if not ids:
            continue
        tp = conf[np.ix_(ids, ids)].sum()
        fn = conf[ids, :].sum() - tp
        others = [r for r in eval_ids if not ignored(r) and BY_ID[r].category != c]
        fp = conf[np.ix_(others, ids)].sum()
        cat_iou[c] = tp / (tp + fp + fn) if tp + fp + fn else math.nan
        if c in inst_cats:
            fp_i = conf[np.ix_(others, inst_cats[c])].sum()
            t, f = ctp_w[c], cfn_w[c]
            cat_iiou[c] = t / (t + fp_i + f) if t + fp_i + f else math.nan
    return iou, iiou, cat_iou, cat_iiou


def nanmean(values) -> float:
    v = [x for x in values if not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


def random_frame(rng: np.random.Generator, h: int = 24, w: int = 32):
    """Label ids with blocks of instances, and label-id predictions (no caravan/trailer)."""
    gt = rng.choice([0, 4, 7, 8, 9, 11, 17, 21, 23, 24, 26], size=(h, w))
    inst = gt.copy()
    for k in range(6):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        lab = int(rng.choice([24, 25, 26, 27, 28, 31, 32, 33, 29]))
        dy, dx = rng.integers(1, 5, size=2)
        gt[y0 : y0 + dy, x0 : x0 + dx] = lab
        inst[y0 : y0 + dy, x0 : x0 + dx] = lab * 1000 + k
    pred_ids = [i for i in range(34) if i not in (29, 30)]
    pred = np.where(rng.random((h, w)) < 0.6, gt, rng.choice(pred_ids, size=(h, w)))
    pred = np.where(np.isin(pred, (29, 30)), 26, pred)
    return pred, gt, inst


def gmmseg_scores(preds, gts, insts, with_instances=True):
    m = CityscapesMetrics(void_predictions="miss")
    for p, g, i in zip(preds, gts, insts, strict=True):
        m.update(
            cityscapes_label_ids_to_train_ids(p).astype(np.int64),
            cityscapes_label_ids_to_train_ids(g).astype(np.int64),
            i if with_instances else None,
        )
    return m.compute()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_official_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frames = [random_frame(rng) for _ in range(3)]
    preds, gts, insts = (list(x) for x in zip(*frames, strict=True))
    iou, iiou, cat_iou, cat_iiou = official_reference(preds, gts, insts)
    res = gmmseg_scores(preds, gts, insts)
    for t in range(19):
        got = float(res["IoU"][t])
        assert got == pytest.approx(iou[t], rel=1e-15, nan_ok=True), t
        if t in iiou:
            assert float(res["iIoU"][t]) == pytest.approx(iiou[t], rel=1e-13, nan_ok=True), t
        else:
            assert math.isnan(float(res["iIoU"][t]))
    assert res["mIoU"] == pytest.approx(nanmean(iou.values()), rel=1e-14)
    assert res["mean_iIoU"] == pytest.approx(nanmean(iiou.values()), rel=1e-13)
    for k, c in enumerate(CITYSCAPES_CATEGORIES):
        assert float(res["category_IoU"][k]) == pytest.approx(cat_iou[c], rel=1e-15, nan_ok=True)
        want = cat_iiou.get(c, math.nan)
        assert float(res["category_iIoU"][k]) == pytest.approx(want, rel=1e-13, nan_ok=True)
    assert res["mean_category_IoU"] == pytest.approx(nanmean(cat_iou.values()), rel=1e-14)
    assert res["mean_category_iIoU"] == pytest.approx(nanmean(cat_iiou.values()), rel=1e-13)
    assert set(cat_iiou) == {"human", "vehicle"}


def test_without_instance_ids_iiou_is_nan_and_iou_unchanged() -> None:
    rng = np.random.default_rng(4)
    preds, gts, insts = (list(x) for x in zip(*[random_frame(rng)], strict=True))
    a, b = gmmseg_scores(preds, gts, insts), gmmseg_scores(preds, gts, insts, False)
    assert torch.equal(a["IoU"], b["IoU"]) and not b["has_instances"]
    assert torch.isnan(b["iIoU"]).all() and math.isnan(b["mean_category_iIoU"])


def test_void_prediction_is_a_miss_only_on_request() -> None:
    y = torch.tensor([[0, 0, 1, 255]])
    p = torch.tensor([[0, 255, 1, 1]])
    with pytest.raises(ValueError, match=r"preds of frame 0 .* must be in \[0, 19\)"):
        CityscapesMetrics().update(p, y)
    m = SegmentationMetrics(19, void_predictions="miss")
    m.update(p, y)
    # class 0: I = 1, P = 1, L = 2 (the void prediction is a miss); class 1: I = P = L = 1
    assert m.intersection[:2].tolist() == [1, 1] and m.pred_area[:2].tolist() == [1, 1]
    assert m.label_area[:2].tolist() == [2, 1]
    with pytest.raises(ValueError, match=r"must be in \[0, 19\) ∪ \{255\}"):
        m.update(torch.tensor([[19]]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="void_predictions must be one of"):
        SegmentationMetrics(19, void_predictions="drop")  # type: ignore[arg-type]


def test_instance_ids_for_some_frames_only_is_an_error() -> None:
    m = CityscapesMetrics()
    m.update(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64), np.full((2, 2), 7))
    with pytest.raises(ValueError, match="instance_ids must be given for every frame or for none"):
        m.update(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="instance_ids and labels must have identical shapes"):
        m.update(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64), np.zeros((3, 2), np.int64))


def test_hand_example_iiou_weights() -> None:
    # One car (id 26001) of 4 px, 3 predicted car; a second car (26002) of 2 px, none right;
    # 1 px of road predicted car (an unweighted FP). w1 = avg/4, w2 = avg/2.
    y = np.array([[13, 13, 13, 13, 13, 13, 0]])
    inst = np.array([[26001, 26001, 26001, 26001, 26002, 26002, 7]])
    p = np.array([[13, 13, 13, 0, 0, 0, 13]])
    m = CityscapesMetrics()
    m.update(p, y, inst)
    avg = AVG_CLASS_SIZE["car"]
    tp = 3 * avg / 4
    fn = 1 * avg / 4 + 2 * avg / 2
    assert float(m.compute()["iIoU"][13]) == pytest.approx(tp / (tp + 1 + fn), rel=1e-15)


@pytest.mark.parametrize("label_id", [29, 30])
def test_predicted_caravan_or_trailer_is_a_miss_in_vehicle_iiou(tmp_path, label_id) -> None:
    # The documented difference from the official script: it counts a predicted caravan (29) or
    # trailer (30) on a car as "vehicle" in the category iIoU; gmmseg reads those label ids as
    # ignored train ids (255) and counts them as misses.
    gt = np.array([[26, 26, 26, 7]])
    inst = np.array([[26001, 26001, 26001, 7]])
    Image.fromarray(np.array([[label_id, label_id, 26, 7]], np.uint8)).save(tmp_path / "p.png")
    pred = read_cityscapes(tmp_path / "p.png")
    assert pred.tolist() == [[255, 255, 13, 0]]
    m = CityscapesMetrics(void_predictions="miss")
    m.update(pred, cityscapes_label_ids_to_train_ids(gt).astype(np.int64), inst)
    vehicle = CITYSCAPES_CATEGORIES.index("vehicle")
    got = float(m.compute()["category_iIoU"][vehicle])
    w = AVG_CLASS_SIZE["car"] / 3
    assert got == pytest.approx(1 * w / (1 * w + 2 * w), rel=1e-15)  # gmmseg: 1 of 3 px
    _, _, _, official = official_reference([np.array([[label_id, label_id, 26, 7]])], [gt], [inst])
    assert official["vehicle"] == 1.0  # the official script: all 3 px are "vehicle"


@pytest.mark.parametrize("bad", [34, 999, 34001, 40007])
def test_instance_ids_of_unknown_label_ids_are_an_error(bad: int) -> None:
    y = np.zeros((1, 2, 2), np.int64)
    inst = np.array([[[7, 7], [26001, bad]]])
    m = CityscapesMetrics()
    m.update(y, y, np.full((1, 2, 2), 7))
    with pytest.raises(
        ValueError, match=rf"instance_ids of frame 1 \(batch index 0\).*{bad} \(1 px\)"
    ):
        m.update(y, y, inst)
    assert m.num_frames == 1
