"""Benchmark writers (round trips, names, layout, ownership) and scoring of saved results."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import gmmseg.data as D
from gmmseg.data.meta import CITYSCAPES_LABELS
from gmmseg.metrics import (
    AnomalyMetrics,
    CityscapesMetrics,
    ComponentMetrics,
)
from gmmseg.submit import MANIFEST_NAME, SubmissionWriter, read_smiyc, score_submission
from gmmseg.testing import write_fixture

# Tiny fixtures leave classes and components absent: their NaN warnings are expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore::gmmseg.metrics.UndefinedMetricWarning"),
    pytest.mark.cpu_only("benchmark file formats"),
]


def dataset(tmp_path: Path, name: str, split: str, **fixture_kwargs):
    root = write_fixture(name, tmp_path, **fixture_kwargs)
    spec = json.loads((tmp_path / f"{name}.json").read_text())
    kwargs = dict(spec["splits"][split]["kwargs"])
    for key in ("root", "laf_root", "cityscapes_root"):
        if key in kwargs:
            kwargs[key] = root / kwargs[key]
    return getattr(D, spec["loader"])(**kwargs)


def anomaly_scores(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    s = rng.normal(0, 1, label.shape).astype(np.float32)
    s[label == 1] += 1.5
    return np.round(s, 2)  # ties, as in real float16 maps


# ----------------------------------------------------------------- round trips and layout


def test_smiyc_file_format_and_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=(12, 20)).astype(np.float32) * 100
    w = SubmissionWriter(tmp_path, "smiyc", method="m1", dataset="AnomalyTrack-all")
    (path,) = w.write("validation0003", anomaly=torch.from_numpy(s))
    assert path == tmp_path / "anomaly_p" / "m1" / "AnomalyTrack-all" / "validation0003.hdf5"
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == ["value"]
        v = f["value"]
        assert v.dtype == np.float16 and v.shape == (12, 20)
        assert v.compression == "gzip" and v.compression_opts == 9
        assert np.array_equal(v[()], s.astype(np.float16))
    assert np.array_equal(read_smiyc(path), s.astype(np.float16))
    # The toolkit keeps the ObstacleTrack validation frames and the LostAndFound subsets in
    # the folders of their full sets.
    for name, folder in (
        ("ObstacleTrack-validation", "ObstacleTrack-all"),
        ("AnomalyTrack-validation", "AnomalyTrack-validation"),
    ):
        w2 = SubmissionWriter(tmp_path, "smiyc", method="m1", dataset=name)
        assert w2.files("x") == [tmp_path / "anomaly_p" / "m1" / folder / "x.hdf5"]


@pytest.mark.parametrize(
    "dataset", ["LostAndFound-test", "LostAndFound-testValid", "LostAndFound-testNoKnown"]
)
def test_smiyc_lostandfound_files_are_named_by_the_toolkits_frame_id(tmp_path, dataset) -> None:
    # The toolkit finds <fid>_leftImg8bit.<ext> images and reads anomaly_p/<method>/
    # LostAndFound-test/<fid>.hdf5 for all LostAndFound test subsets.
    w = SubmissionWriter(tmp_path, "smiyc", method="m", dataset=dataset)
    want = [tmp_path / "anomaly_p/m/LostAndFound-test/04_Maurener_Weg_8_000002_000140.hdf5"]
    assert w.files("04_Maurener_Weg_8_000002_000140_leftImg8bit") == want
    assert w.files("04_Maurener_Weg_8_000002_000140") == want  # the frame id itself
    with pytest.raises(ValueError, match="would both write"):
        w.prepare(
            ["04_Maurener_Weg_8_000002_000140_leftImg8bit", "04_Maurener_Weg_8_000002_000140"]
        )
    with pytest.raises(ValueError, match="is not a LostAndFound frame"):
        w.files("validation0001")
    with pytest.raises(ValueError, match="dataset must be one of"):
        SubmissionWriter(tmp_path, "smiyc", dataset="LostAndFound-noKnown")  # not a toolkit name


def test_fishyscapes_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    s = rng.normal(size=(8, 16))  # float64 in, float32 stored (the metric casts to float32)
    seg = rng.integers(0, 19, (8, 16))
    files = SubmissionWriter(tmp_path, "fishyscapes").write("img_01", anomaly=s, segmentation=seg)
    assert [f.name for f in files] == ["img_01_anomaly.npy", "img_01_segmentation.npy"]
    a, b = np.load(files[0]), np.load(files[1])
    assert a.dtype == np.float32 and np.array_equal(a, s.astype(np.float32))
    assert b.dtype == np.uint8 and np.array_equal(b, seg)


def test_cityscapes_png_holds_label_ids(tmp_path: Path) -> None:
    train_ids = np.arange(19).repeat(2).reshape(2, 19)
    (path,) = SubmissionWriter(tmp_path, "cityscapes").write(
        "frankfurt_000000_000294_leftImg8bit", segmentation=train_ids
    )
    assert path.name == "frankfurt_000000_000294.png"
    with Image.open(path) as img:
        assert img.mode == "L"
        got = np.array(img)
    table = {lab.train_id: lab.id for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 19}
    want = np.vectorize(table.__getitem__)(train_ids)
    assert np.array_equal(got, want) and got.dtype == np.uint8
    with pytest.raises(ValueError, match="is not a Cityscapes frame"):
        SubmissionWriter(tmp_path, "cityscapes").files("image_7")


def test_ade20k_png_holds_index_plus_one(tmp_path: Path) -> None:
    ids = np.array([[0, 149], [7, 42]])
    (path,) = SubmissionWriter(tmp_path, "ade20k").write("ADE_test_00000001", segmentation=ids)
    assert path.name == "ADE_test_00000001.png"
    with Image.open(path) as img:
        assert img.mode == "L" and np.array(img).tolist() == [[1, 150], [8, 43]]


# --------------------------------------------------------------------- bad input, ownership


@pytest.mark.parametrize(
    ("fmt", "kwargs", "message"),
    [
        ("smiyc", {"anomaly": np.full((2, 2), np.nan, np.float32)}, "must be finite"),
        ("smiyc", {"anomaly": np.full((2, 2), 7e4, np.float32)}, r"within ±65504"),
        ("smiyc", {"anomaly": np.zeros((1, 2, 2), np.float32)}, r"one \(H, W\) map"),
        ("smiyc", {"anomaly": np.zeros((2, 2), np.int64)}, "float scores"),
        ("ade20k", {"segmentation": np.full((2, 2), 150)}, r"train ids in \[0, 150\)"),
        ("cityscapes", {"segmentation": np.full((2, 2), 255)}, r"in \[0, 19\)"),
        ("fishyscapes", {"anomaly": np.zeros((2, 2))}, "needs segmentation"),
        (
            "fishyscapes",
            {"anomaly": np.zeros((2, 2)), "segmentation": np.zeros((2, 3), np.int64)},
            "must have one shape",
        ),
    ],
)
def test_bad_arrays_are_refused_before_writing(tmp_path, fmt, kwargs, message) -> None:
    dataset_name = "AnomalyTrack-all" if fmt == "smiyc" else None
    w = SubmissionWriter(tmp_path / "out", fmt, dataset=dataset_name)
    with pytest.raises(ValueError, match=message):
        w.write("frankfurt_000000_000001", **kwargs)
    assert not (tmp_path / "out").exists()


def test_another_methods_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    seg = np.zeros((2, 2), np.int64)
    SubmissionWriter(tmp_path, "ade20k", method="A").write("x", segmentation=seg)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=rf"{tmp_path} already holds ade20k files of method 'A'"):
        SubmissionWriter(tmp_path, "ade20k", method="B").prepare(["y"])
    with pytest.raises(ValueError, match="already holds ade20k files of method 'A'"):
        SubmissionWriter(tmp_path, "ade20k", method="B", overwrite=True).prepare(["y"])
    with pytest.raises(ValueError, match="already holds ade20k files of method 'A'"):
        SubmissionWriter(tmp_path, "cityscapes", method="A").prepare(["a_000000_000000"])
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # The same method may write again (a rerun) and add frames.
    SubmissionWriter(tmp_path, "ade20k", method="A").write("x", segmentation=seg + 1)
    SubmissionWriter(tmp_path, "ade20k", method="A").write("z", segmentation=seg)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["files"] == ["x.png", "z.png"] and manifest["method"] == "A"


def test_prepare_only_checks_and_the_first_write_records(tmp_path: Path) -> None:
    # A run refused or failed after prepare (e.g. the model does not load) leaves nothing
    # behind, so another method may use the folder.
    out = tmp_path / "sub"
    SubmissionWriter(out, "smiyc", method="A", dataset="AnomalyTrack-all").prepare(["a", "b"])
    assert not out.exists()
    w = SubmissionWriter(out, "smiyc", method="B", dataset="AnomalyTrack-all")
    w.prepare(["a", "b"])
    w.write("a", anomaly=np.zeros((2, 2), np.float32))
    manifest = json.loads((w.folder / MANIFEST_NAME).read_text())
    assert manifest["method"] == "B" and manifest["files"] == ["a.hdf5", "b.hdf5"]
    w.write("c", anomaly=np.zeros((2, 2), np.float32))  # not prepared: checked, then recorded
    manifest = json.loads((w.folder / MANIFEST_NAME).read_text())
    assert manifest["files"] == ["a.hdf5", "b.hdf5", "c.hdf5"]
    # A folder taken between prepare and the first write is still refused.
    late = SubmissionWriter(tmp_path / "late", "ade20k", method="A")
    late.prepare(["x"])
    SubmissionWriter(tmp_path / "late", "ade20k", method="B").write(
        "y", segmentation=np.zeros((2, 2), np.int64)
    )
    with pytest.raises(ValueError, match="already holds ade20k files of method 'B'"):
        late.write("x", segmentation=np.zeros((2, 2), np.int64))


def test_files_gmmseg_did_not_write_need_overwrite(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "theirs.png")
    w = SubmissionWriter(tmp_path, "ade20k")
    with pytest.raises(ValueError, match=r"holds 1 ade20k file\(s\) that gmmseg did not write"):
        w.prepare(["theirs"])
    assert not (tmp_path / MANIFEST_NAME).exists()
    seg = np.ones((2, 2), np.int64)
    SubmissionWriter(tmp_path, "ade20k", overwrite=True).write("theirs", segmentation=seg)
    assert np.array(Image.open(tmp_path / "theirs.png")).tolist() == [[2, 2], [2, 2]]


def test_two_frames_writing_one_file_are_refused(tmp_path: Path) -> None:
    w = SubmissionWriter(tmp_path, "cityscapes")
    with pytest.raises(ValueError, match="would both write"):
        w.prepare(["aachen_000000_000019_leftImg8bit", "aachen_000000_000019"])


# ------------------------------------------------------ scoring equals scoring in memory


@pytest.mark.parametrize("fixture", ["smiyc_anomaly_track", "smiyc_obstacle_track"])
def test_score_smiyc_equals_in_memory(tmp_path: Path, fixture: str) -> None:
    # 120 x 160: the anomaly track's objects (824 px) pass its 500 px component filter.
    ds = dataset(tmp_path, fixture, "validation", num_images=4, size=(120, 160))
    obstacle = fixture == "smiyc_obstacle_track"
    name = "ObstacleTrack-validation" if obstacle else "AnomalyTrack-validation"
    rng = np.random.default_rng(2)
    out = tmp_path / "results"
    w = SubmissionWriter(out, "smiyc", method="mine", dataset=name)
    w.prepare(ds.names)
    maps = []
    for i, n in enumerate(ds.names):
        label = ds.load_label(i)
        s = anomaly_scores(rng, label) * 0.3 + 2.0 * (label == 1)  # objects mostly found
        maps.append((s.astype(np.float32), label))
        w.write(n, anomaly=maps[-1][0])
    got = score_submission(out, "smiyc", ds)
    pix = AnomalyMetrics(mode="smiyc_binned", score_dtype=torch.float16)
    for s, y in maps:
        pix.update(s, y)
    want = pix.compute()
    comp = ComponentMetrics.from_pixel_result(
        want, "obstacle" if obstacle else "anomaly", score_dtype=torch.float16
    )
    for s, y in maps:
        comp.update(s, y)
    want_c = comp.compute()
    assert got["method"] == "mine" and got["frames"] == len(ds)
    for key in ("ap", "auroc", "fpr95", "best_f1", "best_f1_threshold"):
        assert got["pixel"][key] == want[key], key
    assert want_c["num_gt_components"] > 0 and want_c["num_pred_components"] > 0
    assert want_c["sIoU"] > 0.0 and want_c["tp"].sum() > 0
    for key in ("sIoU", "PPV", "mean_F1", "threshold", "num_gt_components", "num_pred_components"):
        a, b = got["component"][key], want_c[key]
        assert a == b or (np.isnan(a) and np.isnan(b)), key
    for key in ("tp", "fn", "fp"):
        assert torch.equal(got["component"][key], want_c[key]), key


def test_score_fishyscapes_equals_in_memory(tmp_path: Path) -> None:
    ds = dataset(tmp_path, "fishyscapes_lostandfound", "val")
    rng = np.random.default_rng(3)
    out = tmp_path / "output"
    w = SubmissionWriter(out, "fishyscapes")
    m = AnomalyMetrics()
    for i, n in enumerate(ds.names):
        label = ds.load_label(i)
        s = anomaly_scores(rng, label).astype(np.float64) + 1e-9  # float32 cast matters
        w.write(n, anomaly=s, segmentation=np.zeros(label.shape, np.int64))
        m.update(s.astype(np.float32), label)
    got, want = score_submission(out, "fishyscapes", ds)["pixel"], m.compute()
    for key in ("ap", "auroc", "fpr95"):
        assert got[key] == want[key], key


@pytest.mark.parametrize("naming", ["frame id", "index", "container"])
def test_score_fishyscapes_matches_outputs_by_leading_index(tmp_path: Path, naming: str) -> None:
    # The Fishyscapes evaluation pairs outputs and labels NNNN_<frame>_labels.png by the leading
    # integer: NNNN_anomaly.npy, or <input stem>_anomaly.npy for /input/NNNN_<frame>_rgb.png as
    # gmmseg's own container writes them (gmmseg predict --write fishyscapes /input/*.png).
    ds = dataset(tmp_path, "fishyscapes_lostandfound", "val")
    rng = np.random.default_rng(6)
    out = tmp_path / "output"
    w = SubmissionWriter(out, "fishyscapes")
    m = AnomalyMetrics()
    for i, n in enumerate(ds.names):
        label = ds.load_label(i)
        s = anomaly_scores(rng, label)
        name = {"frame id": n, "index": n.split("_")[0], "container": f"{n}_rgb"}[naming]
        w.write(name, anomaly=s, segmentation=np.zeros(label.shape, np.int64))
        m.update(s, label)
    got, want = score_submission(out, "fishyscapes", ds)["pixel"], m.compute()
    assert (got["ap"], got["auroc"], got["fpr95"]) == (want["ap"], want["auroc"], want["fpr95"])
    # Two outputs of one index are refused, naming both.
    first = ds.names[0]
    other = f"{first.split('_')[0]}_copy" if naming != "index" else f"{first}_rgb"
    label = ds.load_label(0)
    w.write(other, anomaly=np.zeros(label.shape), segmentation=np.zeros(label.shape, np.int64))
    with pytest.raises(ValueError, match=rf"holds 2 _anomaly\.npy results for frame {first}"):
        score_submission(out, "fishyscapes", ds)


def test_score_fishyscapes_refuses_bad_files(tmp_path: Path) -> None:
    ds = dataset(tmp_path, "fishyscapes_lostandfound", "val")
    out = tmp_path / "output"
    out.mkdir()
    for i, n in enumerate(ds.names):
        shape = ds.load_label(i).shape
        np.save(out / f"{n}_anomaly.npy", np.zeros(shape, np.float32))
        seg = np.zeros(shape, np.int64)
        seg[0, :3] = [19, 255, 19]  # out of range: the message lists these, not all values
        np.save(out / f"{n}_segmentation.npy", seg)
    with pytest.raises(ValueError, match=r"expected train ids 0–18, got \[19, 255\]$"):
        score_submission(out, "fishyscapes", ds)
    for n in ds.names:
        (out / f"{n}_segmentation.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks the _segmentation\.npy of 3 of 3"):
        score_submission(out, "fishyscapes", ds)


def test_score_smiyc_without_anomaly_p_names_the_folder(tmp_path: Path) -> None:
    ds = dataset(tmp_path, "smiyc_obstacle_track", "validation", num_images=3)
    (tmp_path / "results").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'results' / 'anomaly_p'} not found"):
        score_submission(tmp_path / "results", "smiyc", ds)


def test_score_cityscapes_equals_in_memory_with_instances(tmp_path: Path) -> None:
    ds = dataset(tmp_path, "cityscapes", "val", num_images=3)
    rng = np.random.default_rng(4)
    out = tmp_path / "cs"
    w = SubmissionWriter(out, "cityscapes")
    m = CityscapesMetrics()
    for i, f in enumerate(ds.frames):
        label = ds.load_label(i).astype(np.int64)
        pred = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, 19, label.shape))
        pred = np.where(pred == 255, 0, pred)
        w.write(f.name, segmentation=pred)
        inst_path = f.label_path.with_name(f.name + "_gtFine_instanceIds.png")
        m.update(pred, label, np.array(Image.open(inst_path)).astype(np.int64))
    got, want = score_submission(out, "cityscapes", ds)["cityscapes"], m.compute()
    assert got["has_instances"]
    for key in ("IoU", "iIoU", "category_IoU", "category_iIoU"):
        assert torch.equal(got[key].nan_to_num(-1), want[key].nan_to_num(-1)), key


def test_score_cityscapes_counts_ignored_label_ids_as_misses(tmp_path: Path) -> None:
    ds = dataset(tmp_path, "cityscapes", "val", num_images=2)
    out = tmp_path / "cs"
    out.mkdir()
    m = CityscapesMetrics(void_predictions="miss")
    for i, f in enumerate(ds.frames):
        label = ds.load_label(i).astype(np.int64)
        pred_ids = np.full(label.shape, 7, np.uint8)  # road everywhere ...
        pred_ids[:, :5] = 4  # ... but "static" (ignored in evaluation) on the left
        Image.fromarray(pred_ids).save(out / f"{f.name}_pred.png")
        m.update(np.where(pred_ids == 4, 255, 0), label)
    got = score_submission(out, "cityscapes", ds)["cityscapes"]
    assert got["IoU"][0] == m.compute()["IoU"][0]


def test_score_ade20k_counts_other_as_a_miss(tmp_path: Path) -> None:
    # Files of another tool may hold 0 ("other"): a miss on every labelled pixel it covers.
    ds = dataset(tmp_path, "ade20k", "validation")
    rng = np.random.default_rng(5)
    out = tmp_path / "ade"
    out.mkdir()
    inter, pred_area, label_area = np.zeros(150), np.zeros(150), np.zeros(150)
    for i, n in enumerate(ds.names):
        label = ds.load_label(i).astype(np.int64)  # 0–149, 255 = "other" in the label
        values = np.where(
            rng.random(label.shape) < 0.5, label + 1, rng.integers(0, 151, label.shape)
        )
        values = np.where(label == 255, rng.integers(0, 151, label.shape), values)
        values[0, :4] = 0
        assert (values[label != 255] == 0).any()
        Image.fromarray(values.astype(np.uint8)).save(out / f"{n}.png")
        valid = label != 255
        for c in range(150):  # a plain count per class, over labelled pixels only
            p, y = values[valid] == c + 1, label[valid] == c
            inter[c] += (p & y).sum()
            pred_area[c] += p.sum()
            label_area[c] += y.sum()
    got = score_submission(out, "ade20k", ds)["segmentation"]
    union = pred_area + label_area - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / union, inter / label_area
    assert got["aAcc"] == pytest.approx(inter.sum() / label_area.sum(), rel=1e-15)
    assert got["mIoU"] == pytest.approx(np.nanmean(iou), rel=1e-14)
    assert got["mAcc"] == pytest.approx(np.nanmean(acc), rel=1e-14)
    np.testing.assert_allclose(got["IoU"].numpy(), iou, rtol=1e-15)
    np.testing.assert_allclose(got["Acc"].numpy(), acc, rtol=1e-15)


def test_missing_and_extra_files_are_listed(tmp_path: Path) -> None:
    ds = dataset(tmp_path, "ade20k", "validation")
    out = tmp_path / "ade"
    w = SubmissionWriter(out, "ade20k")
    for i, n in enumerate(ds.names[1:], start=1):
        w.write(n, segmentation=np.zeros(ds.load_label(i).shape, np.int64))
    missing = rf"lacks the \.png of 1 of 2 frames: {ds.names[0]}"
    with pytest.raises(FileNotFoundError, match=missing):
        score_submission(out, "ade20k", ds)
    w.write(ds.names[0], segmentation=np.zeros(ds.load_label(0).shape, np.int64))
    w.write("stray", segmentation=np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match=r"1 \.png file\(s\) of no frame of the split: stray\.png"):
        score_submission(out, "ade20k", ds)
    assert score_submission(out, "ade20k", ds, allow_extra=True)["frames"] == 2
    with pytest.raises(ValueError, match="dataset must be Cityscapes"):
        score_submission(out, "cityscapes", ds)
