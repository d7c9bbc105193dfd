"""SMIYC component metrics: hand cases of spec §4 and a set-based per-component reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from gmmseg.metrics import TAUS, AnomalyMetrics, ComponentMetrics, UndefinedMetricWarning


def metric(**kwargs) -> ComponentMetrics:
    kwargs.setdefault("threshold", 0.5)
    kwargs.setdefault("min_pred_size", 1)
    kwargs.setdefault("min_gt_size", 1)
    return ComponentMetrics(**kwargs)


def quiet(m: ComponentMetrics) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return dict(m.compute())


def frame(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((h, w)), np.zeros((h, w), dtype=np.int64)


def test_tau_grid() -> None:
    assert len(TAUS) == 11 and TAUS[0] == 0.25 and TAUS[-1] == 0.75
    assert TAUS[7] == 0.6000000000000001


def test_spec_worked_example_prediction_straddles_two_gt_blobs() -> None:
    s, y = frame(2, 18)
    y[0, 0:10] = 1  # k1, 10 px
    y[0, 11:17] = 1  # k2, 6 px
    s[0, 2:15] = 1.0  # 8 px of k1, column 10, 4 px of k2
    s[1, 10:12] = 1.0  # 2 more background pixels → k̂ has 15 px
    m = metric()
    m.update(s, y)
    res = m.compute()
    assert res["num_gt_components"] == 2 and res["num_pred_components"] == 1
    assert res["sIoU"] == pytest.approx((8 / 13 + 4 / 9) / 2)
    assert res["PPV"] == pytest.approx(0.8)
    expected = [1.0] * 4 + [2 / 3] * 4 + [0.0] * 3
    np.testing.assert_allclose(res["F1"].numpy(), expected)
    assert res["mean_F1"] == pytest.approx(20 / 33)
    assert res["fp"].tolist() == [0] * 11  # PPV 0.8 ≥ every τ
    assert res["F1_25"] == 1 and res["F1_50"] == pytest.approx(2 / 3) and res["F1_75"] == 0


def test_gt_blob_split_across_two_predictions() -> None:
    s, y = frame(2, 10)
    y[0, :] = 1
    s[0, 0:4] = s[1, 0:2] = 1.0  # prediction A: 4 px on the blob + 2 background
    s[0, 6:10] = s[1, 8:10] = 1.0  # prediction B, not connected to A
    m = metric()
    m.update(s, y)
    res = m.compute()
    assert res["num_pred_components"] == 2
    assert res["sIoU"] == pytest.approx(8 / (12 + 10 - 8))
    assert res["PPV"] == pytest.approx(4 / 6)


def test_eight_connectivity_merges_a_diagonal_touch() -> None:
    s, y = frame(2, 2)
    y[0, 0] = y[1, 1] = 1
    s[0, 0] = 1.0
    m = metric()
    m.update(s, y)
    res = m.compute()
    assert res["num_gt_components"] == 1  # 4-connectivity would give two
    assert res["sIoU"] == 0.5


@pytest.mark.parametrize(("size", "kept"), [(49, 0), (50, 1)])
def test_pred_size_filter_limit_obstacle(size: int, kept: int) -> None:
    s, y = frame(1, 60)
    s[0, :size] = 1.0
    m = ComponentMetrics("obstacle", threshold=0.5)
    m.update(s, y)
    assert quiet(m)["num_pred_components"] == kept


@pytest.mark.parametrize(("size", "kept"), [(9, 0), (10, 1)])
def test_gt_size_filter_limit_obstacle(size: int, kept: int) -> None:
    s, y = frame(1, 20)
    y[0, :size] = 1
    m = ComponentMetrics("obstacle", threshold=0.5)
    m.update(s, y)
    assert quiet(m)["num_gt_components"] == kept


def test_anomaly_track_defaults() -> None:
    m = ComponentMetrics("anomaly", threshold=0.0)
    assert (m.min_pred_size, m.min_gt_size) == (500, 100)


def test_prediction_inside_void_disappears_and_void_is_removed_before_labelling() -> None:
    s, y = frame(1, 11)
    s[0, :] = 1.0
    y[0, 5] = 255  # the void pixel splits the prediction into two components
    m = metric()
    m.update(s, y)
    assert quiet(m)["num_pred_components"] == 2
    s, y = frame(1, 5)
    s[0, :] = 1.0
    y[0, :] = 255
    m = metric()
    m.update(s, y)
    assert quiet(m)["num_pred_components"] == 0


def test_prediction_loses_pixels_on_a_voided_small_gt_component() -> None:
    s, y = frame(3, 40)
    y[0, 0:9] = 1  # 9 px: below min_gt_size 10 → void
    y[0, 20:32] = 1  # 12 px: kept
    s[1, 0:40] = 1.0  # 40 background px, connecting...
    s[0, 4:9] = 1.0  # ...5 px on the small blob...
    s[0, 22:32] = 1.0  # ...and 10 px on the kept blob: one predicted component of 55 px
    m = metric(min_gt_size=10)
    m.update(s, y)
    res = m.compute()
    assert res["num_gt_components"] == 1 and res["num_pred_components"] == 1
    assert res["PPV"] == pytest.approx(10 / 50)  # 55 px minus the 5 now-void pixels
    assert res["sIoU"] == pytest.approx(10 / (50 + 12 - 10))


def test_anomaly_free_frame_predictions_are_false_positives() -> None:
    s, y = frame(2, 4)
    s[0, :2] = 1.0
    m = metric()
    m.update(s, y)
    with pytest.warns(UndefinedMetricWarning, match="sIoU"):
        res = m.compute()
    assert math.isnan(res["sIoU"]) and res["PPV"] == 0
    assert res["fp"].tolist() == [1] * 11 and res["F1"].tolist() == [0.0] * 11


def test_tau_06_boundary() -> None:
    s, y = frame(1, 6)
    y[0, :5] = 1
    s[0, :3] = 1.0  # sIoU = 3/(3 + 5 - 3) = 3/5 exactly
    m = metric()
    m.update(s, y)
    res = m.compute()
    assert res["sIoU"] == 0.6
    assert res["tp"].tolist() == [1] * 7 + [0] * 4  # 0.6 < 0.6000000000000001
    assert res["fn"].tolist() == [0] * 7 + [1] * 4


def test_threshold_is_strict() -> None:
    s, y = frame(1, 3)
    y[0, :2] = 1
    s[0, :2] = 0.5
    m = metric(threshold=0.5)
    m.update(s, y)
    with pytest.warns(UndefinedMetricWarning, match="PPV"):
        res = m.compute()
    assert res["num_pred_components"] == 0 and res["sIoU"] == 0 and res["F1"][0] == 0


def test_neither_component_gives_nan_f1() -> None:
    m = metric()
    m.update(*frame(2, 2))
    with pytest.warns(UndefinedMetricWarning) as record:
        res = m.compute()
    assert len(record) == 1
    assert bool(torch.isnan(res["F1"]).all()) and math.isnan(res["mean_F1"])


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"threshold .* not available"):
        ComponentMetrics().update(*frame(2, 2))
    with pytest.raises(ValueError, match="track must be one of"):
        ComponentMetrics("road")  # type: ignore[arg-type]
    m = metric()
    with pytest.raises(ValueError, match=r"labels of frame 0.*\{0, 1, 255\}"):
        m.update(np.zeros((2, 2)), np.full((2, 2), 3))
    with pytest.raises(ValueError, match="finite"):
        m.update(np.full((2, 2), np.nan), np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="labels are required"):
        m.update(np.zeros((2, 2)), None)  # type: ignore[arg-type]


def test_threshold_from_smiyc_pixel_result() -> None:
    s = np.array([[0.9, 0.8, 0.1, 0.2]])
    y = np.array([[1, 1, 0, 0]])
    pixel = AnomalyMetrics(mode="smiyc_binned")
    pixel.update(s, y)
    m = ComponentMetrics.from_pixel_result(
        pixel.compute(), "obstacle", min_pred_size=1, min_gt_size=1
    )
    assert m.threshold == 0.8 and m.threshold_source == "smiyc_binned best F1"
    m.update(s, y)
    res = m.compute()
    assert res["threshold_source"] == "smiyc_binned best F1" and res["sIoU"] == 0.5


# ------------------------------------------------------------------- reference


def reference_frame(s, y, delta, min_pred, min_gt):
    """The spec's set definitions, one component at a time."""
    eight = np.ones((3, 3))
    void = y == 255
    gl, ng = ndimage.label(y == 1, eight)
    pl, npr = ndimage.label((s > delta) & ~void, eight)

    def pixels(lab, j):
        return {tuple(p) for p in np.argwhere(lab == j)}

    preds = [pixels(pl, j) for j in range(1, npr + 1)]
    preds = [p for p in preds if len(p) >= min_pred]
    gts = [pixels(gl, k) for k in range(1, ng + 1)]
    voided = set().union(*[g for g in gts if len(g) < min_gt])
    roi = {tuple(p) for p in np.argwhere(~void)} - voided
    preds = [p & roi for p in preds if p & roi]
    gts = [g & roi for g in gts if len(g) >= min_gt]
    g_all = set().union(*gts)
    siou = []
    for g in gts:
        khat = set().union(*[p for p in preds if p & g])
        a = khat & (g_all - g)
        siou.append(len(g & khat) / len((g | khat) - a))
    ppv = [len(p & g_all) / len(p) for p in preds]
    return siou, ppv


@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
    st.integers(1, 4),
    st.floats(0.0, 0.3),
)
def test_matches_set_reference_and_streams(seed: int, min_pred: int, min_gt: int, void: float):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(3):
        y = (ndimage.uniform_filter(rng.random((9, 11)), 3) > 0.55).astype(np.int64)
        s = ndimage.uniform_filter(rng.random((9, 11)), 2) + 0.2 * y
        y[rng.random((9, 11)) < void] = 255
        frames.append((s, y))
    sious, ppvs = [], []
    tp, fp = np.zeros(11, dtype=np.int64), np.zeros(11, dtype=np.int64)
    for s, y in frames:
        si, pp = reference_frame(s, y, 0.6, min_pred, min_gt)
        sious += si
        ppvs += pp
        tp += np.array([sum(v >= t for v in si) for t in TAUS])
        fp += np.array([sum(v < t for v in pp) for t in TAUS])
    m = metric(threshold=0.6, min_pred_size=min_pred, min_gt_size=min_gt)
    m.update(np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames]))
    res = quiet(m)
    assert res["num_gt_components"] == len(sious) and res["num_pred_components"] == len(ppvs)
    if sious:
        assert res["sIoU"] == pytest.approx(sum(sious) / len(sious), rel=1e-12)
    if ppvs:
        assert res["PPV"] == pytest.approx(sum(ppvs) / len(ppvs), rel=1e-12)
    assert res["tp"].tolist() == tp.tolist() and res["fp"].tolist() == fp.tolist()
    assert res["fn"].tolist() == (len(sious) - tp).tolist()
    one, two = (metric(threshold=0.6, min_pred_size=min_pred, min_gt_size=min_gt) for _ in range(2))
    one.update(*frames[0])
    for f in frames[1:]:
        two.update(*f)
    one.merge(two)
    assert torch.equal(one.tp, m.tp) and torch.equal(one.fp, m.fp) and one.num_frames == 3


# ---------------------------------------------------- float16 server emulation


def test_score_dtype_float16_thresholds_the_rounded_maps() -> None:
    # 0.50001 rounds to 0.5 in float16, which is not > δ = 0.5: the server (which stores
    # float16) does not predict those pixels, float32 thresholding does.
    s = np.zeros((1, 6, 6), dtype=np.float32)
    s[0, :3, :3] = 0.50001
    s[0, 4:, 4:] = 0.9
    y = np.zeros((1, 6, 6), dtype=np.int64)
    y[0, :3, :3] = 1
    emulated = metric(score_dtype=torch.float16)
    emulated.update(s, y)
    rounded = metric()
    rounded.update(s.astype(np.float16), y)  # the reference: threshold the float16 maps
    plain = metric()
    plain.update(s, y)
    e, r, p = quiet(emulated), quiet(rounded), quiet(plain)
    for key in ("sIoU", "PPV", "mean_F1", "num_pred_components"):
        assert e[key] == r[key] or (math.isnan(e[key]) and math.isnan(r[key])), key
    assert e["sIoU"] == 0.0 and p["sIoU"] == 1.0


def test_float16_threshold_is_compared_exactly() -> None:
    # δ = 0.30004 is not a float16 value and rounds up to the score 0.300048828125: comparing in
    # float16 would drop the pixel (s > float16(δ) is false), the exact comparison keeps it.
    s16 = np.float16(0.30004)
    assert float(s16) > 0.30004
    s = np.full((1, 2, 2), float(s16), dtype=np.float32)
    y = np.ones((1, 2, 2), dtype=np.int64)
    m = metric(threshold=0.30004, score_dtype=torch.float16)
    m.update(s, y)
    assert quiet(m)["num_pred_components"] == 1


def test_score_dtype_float16_overflow_and_bad_dtype() -> None:
    m = metric(score_dtype=torch.float16)
    with pytest.raises(ValueError, match=r"frame 0 .*overflow float16"):
        m.update(np.array([[7e4, 0.0]], dtype=np.float32), np.array([[1, 0]]))
    with pytest.raises(ValueError, match=r"score_dtype must be None or torch\.float16"):
        metric(score_dtype=torch.float32)


def test_from_pixel_result_float16_pipeline_matches_rounded_maps() -> None:
    rng = np.random.default_rng(3)
    s = rng.random((2, 40, 40)).astype(np.float32)
    y = (rng.random((2, 40, 40)) < 0.3).astype(np.int64)
    s[y == 1] += 0.3
    pix = AnomalyMetrics(mode="smiyc_binned", score_dtype=torch.float16)
    pix.update(s, y)
    res = pix.compute()
    a = ComponentMetrics.from_pixel_result(
        res, "obstacle", min_pred_size=1, min_gt_size=1, score_dtype=torch.float16
    )
    a.update(s, y)
    b = ComponentMetrics("obstacle", res["best_f1_threshold"], min_pred_size=1, min_gt_size=1)
    b.update(s.astype(np.float16), y)
    assert quiet(a)["sIoU"] == quiet(b)["sIoU"] and quiet(a)["PPV"] == quiet(b)["PPV"]
    assert torch.equal(a.tp, b.tp) and torch.equal(a.fp, b.fp)


class LegacyPromotion(np.ndarray):
    """Scores under NumPy 1.x promotion: a float scalar operand takes the array's dtype.

    NumPy >= 2 compares a float16 array with a NumPy float64 scalar in float64; NumPy 1.x
    (value-based casting, as under the SMIYC toolkit's pinned NumPy 1.23) first rounds the
    scalar to float16. gmmseg supports numpy >= 1.24, so its comparison must not rely on it.
    """

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        args = [np.asarray(x) for x in inputs]
        dtype = next(a.dtype for a in args if a.ndim)
        args = [
            a.astype(dtype) if a.ndim == 0 and a.dtype.kind == dtype.kind == "f" else a
            for a in args
        ]
        return getattr(ufunc, method)(*args, **kwargs)


def test_float16_threshold_is_exact_without_numpy2_promotion() -> None:
    from gmmseg.metrics.component import frame_components

    s = np.full((2, 2), np.float16(0.30004)).view(LegacyPromotion)
    assert not (s > np.float64(0.30004)).any()  # the emulated NumPy 1.x comparison rounds δ
    _, ppv = frame_components(s, np.ones((2, 2), np.int64), 0.30004, 1, 1)
    assert ppv.size == 1  # compared in float64: 0.300048828125 > 0.30004
