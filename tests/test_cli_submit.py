"""gmmseg predict --write (benchmark files at full resolution) and gmmseg score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gmmseg.cli import main
from gmmseg.data import SMIYCObstacleTrack
from gmmseg.metrics import AnomalyMetrics, ComponentMetrics
from gmmseg.submit import SubmissionWriter, read_smiyc
from gmmseg.testing import write_fixture

pytestmark = [
    pytest.mark.filterwarnings("ignore::gmmseg.metrics.UndefinedMetricWarning"),
    pytest.mark.cpu_only("end-to-end command-line runs choose their own device (--device)"),
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-class model (the demo scenes): fits SMIYC only."""
    work = tmp_path_factory.mktemp("ckpt") / "w"
    assert main(["train", "demo", "--dry-run", "--no-progress", "--work-dir", str(work)]) == 0
    return work / "iter_00000002.pt"


@pytest.fixture(scope="module")
def cityscapes_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 19-class model (a Cityscapes recipe's dry run)."""
    work = tmp_path_factory.mktemp("ckpt19") / "w"
    argv = ["train", "segformer_b5_cityscapes_gmm", "--dry-run", "--no-progress"]
    assert main([*argv, "--work-dir", str(work)]) == 0
    return work / "iter_00000002.pt"


def image(path: Path, size: tuple[int, int] = (40, 56)) -> Path:
    rgb = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def test_predict_write_smiyc_and_fishyscapes(
    demo_checkpoint: Path,
    cityscapes_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = write_fixture("smiyc_anomaly_track", tmp_path, size=(40, 56))
    images = sorted((root / "dataset_AnomalyTrack" / "images").glob("validation*.jpg"))[:2]
    out = tmp_path / "sub"
    code, out_text, err = run(
        capsys,
        "predict",
        "--checkpoint",
        str(demo_checkpoint),
        *map(str, images),
        "--out",
        str(out),
        "--write",
        "smiyc",
        "--method",
        "demo-gmm",
        "--smiyc-dataset",
        "AnomalyTrack-validation",
    )
    assert code == 0, err
    assert out_text.startswith("anomaly score: likelihood\n")  # which score was written
    folder = out / "anomaly_p" / "demo-gmm" / "AnomalyTrack-validation"
    assert sorted(p.name for p in folder.glob("*.hdf5")) == [f"{p.stem}.hdf5" for p in images]
    assert read_smiyc(folder / f"{images[0].stem}.hdf5").shape == (40, 56)  # full resolution
    fs_out = tmp_path / "fs"
    code, _, err = run(
        capsys, "predict", "--checkpoint", str(cityscapes_checkpoint), str(images[0]),
        "--out", str(fs_out), "--write", "fishyscapes", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    seg = np.load(fs_out / f"{images[0].stem}_segmentation.npy")
    assert seg.shape == (40, 56) and seg.dtype == np.uint8
    # Another method's folder is refused before the checkpoint is even opened.
    code, _, err = run(
        capsys, "predict", "--checkpoint", "/missing.pt", str(images[0]),
        "--out", str(fs_out), "--write", "fishyscapes", "--method", "other",
    )  # fmt: skip
    assert code == 2 and "already holds fishyscapes files of method 'gmmseg'" in err
    assert "missing.pt" not in err


def test_score_command_reproduces_in_memory_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_fixture("smiyc_obstacle_track", tmp_path, num_images=4, size=(48, 64))
    ds = SMIYCObstacleTrack(root, "validation")
    rng = np.random.default_rng(0)
    writer = SubmissionWriter(tmp_path / "r", "smiyc", method="m", dataset="ObstacleTrack-all")
    pixel = AnomalyMetrics(mode="smiyc_binned", score_dtype=torch.float16)
    maps = []
    for i, n in enumerate(ds.names):
        label = ds.load_label(i)
        s = rng.normal(size=label.shape).astype(np.float32) + 2.0 * (label == 1)
        writer.write(n, anomaly=s)
        pixel.update(s, label)
        maps.append((s, label))
    want = pixel.compute()
    comp = ComponentMetrics.from_pixel_result(want, "obstacle", score_dtype=torch.float16)
    for s, y in maps:
        comp.update(s, y)
    want_c = comp.compute()
    code, out, err = run(
        capsys, "score", "smiyc", str(tmp_path / "r"), "--data", str(root), "--track", "obstacle"
    )
    assert code == 0, err
    got = json.loads(out)
    for key in ("ap", "auroc", "fpr95", "best_f1_threshold"):
        assert got["pixel"][key] == want[key], key
    assert got["component"]["sIoU"] == want_c["sIoU"]
    assert got["component"]["F1"] == want_c["F1"].tolist()
    # A missing frame is an error naming it.
    (writer.folder / f"{ds.names[0]}.hdf5").unlink()
    code, _, err = run(
        capsys, "score", "smiyc", str(tmp_path / "r"), "--data", str(root), "--track", "obstacle"
    )
    assert code == 2 and ds.names[0] in err and "lacks the .hdf5 of 1 of" in err


def test_predict_write_smiyc_lostandfound_uses_the_toolkits_frame_id(
    demo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = image(tmp_path / "04_Maurener_Weg_8_000002_000140_leftImg8bit.png")
    code, _, err = run(
        capsys, "predict", "--checkpoint", str(demo_checkpoint), str(img), "--out",
        str(tmp_path / "r"), "--write", "smiyc", "--smiyc-dataset", "LostAndFound-testNoKnown",
    )  # fmt: skip
    assert code == 0, err
    folder = tmp_path / "r" / "anomaly_p" / "gmmseg" / "LostAndFound-test"
    assert [p.name for p in folder.glob("*.hdf5")] == ["04_Maurener_Weg_8_000002_000140.hdf5"]


@pytest.mark.parametrize(
    ("fmt", "classes"), [("cityscapes", 19), ("fishyscapes", 19), ("ade20k", 150)]
)
def test_predict_write_checks_the_model_classes_before_any_work(
    demo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt, classes
) -> None:
    img = image(tmp_path / "frankfurt_000000_000294_leftImg8bit.png")
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "predict", "--checkpoint", str(demo_checkpoint), str(img), "--out", str(out),
        "--write", fmt,
    )  # fmt: skip
    assert code == 2
    assert f"--write {fmt} takes the {classes} classes" in err and "has 12 classes" in err
    assert not out.exists()


def test_a_failed_load_leaves_nothing_and_unknown_scores_are_refused_first(
    demo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = image(tmp_path / "validation0000.jpg")
    out = tmp_path / "out"
    smiyc = ["--write", "smiyc", "--smiyc-dataset", "AnomalyTrack-all", "--out", str(out)]
    code, _, err = run(capsys, "predict", "--checkpoint", "/missing.pt", str(img), *smiyc)
    assert code == 2 and "missing.pt" in err
    assert not out.exists()
    code, _, err = run(
        capsys, "predict", "--checkpoint", "/missing.pt", str(img), *smiyc, "--score", "bogus"
    )
    assert code == 2 and "--score 'bogus' is not one of" in err and "missing.pt" not in err
    # The folder is free: another method writes there.
    code, _, err = run(
        capsys, "predict", "--checkpoint", str(demo_checkpoint), str(img), *smiyc,
        "--method", "other", "--score", "energy",
    )  # fmt: skip
    assert code == 0, err
    assert (out / "anomaly_p" / "other" / "AnomalyTrack-all" / "validation0000.hdf5").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "--method", "m"], "--method is only used with --write FORMAT"),
        (["predict", "--smiyc-dataset", "AnomalyTrack-all"], "--smiyc-dataset is only used"),
        (["predict", "--score", "energy"], "--score is only used with --write FORMAT"),
        (
            ["predict", "--write", "fishyscapes", "--smiyc-dataset", "AnomalyTrack-all"],
            "--smiyc-dataset is only used with --write smiyc, not fishyscapes",
        ),
        (["predict", "--write", "ade20k", "--score", "energy"], "--score is only used with"),
        (["predict", "--device", "gpu0"], "device 'gpu0'"),
        (["predict", "--write", "ade20k", "--device", "gpu0"], "device 'gpu0'"),
        (
            ["score", "ade20k", "x", "--method", "m"],
            "--method is only used by 'gmmseg score smiyc'",
        ),
        (["score", "cityscapes", "x", "--smiyc-dataset", "A"], "--smiyc-dataset is only used"),
        (["score", "fishyscapes", "x", "--track", "obstacle"], "--track is only used"),
        (["score", "smiyc", "x", "--fs", "static"], "--fs is only used by 'gmmseg score fish"),
    ],
)
def test_flags_of_another_mode_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    img = image(tmp_path / "frankfurt_000000_000294_leftImg8bit.png")
    if argv[0] == "predict":
        argv = [*argv, "--checkpoint", "/missing.pt", str(img), "--out", str(tmp_path / "o")]
    else:
        argv = [*argv, "--data", str(tmp_path)]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err, err
    assert "missing.pt" not in err and not (tmp_path / "o").exists()


def test_predict_says_posthoc_mixtures_beside_the_checkpoint_are_not_used(
    demo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gmmseg.recipes.posthoc import default_posthoc_path

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(demo_checkpoint.read_bytes())
    default_posthoc_path(ckpt).write_bytes(b"")
    img = image(tmp_path / "validation0000.jpg")
    code, out, err = run(
        capsys, "predict", "--checkpoint", str(ckpt), str(img), "--out", str(tmp_path / "r"),
        "--write", "smiyc", "--smiyc-dataset", "AnomalyTrack-all", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "anomaly score: likelihood"
    assert lines[1] == (
        f"note: predict --write does not use the post-hoc mixtures {default_posthoc_path(ckpt)}"
    )


def test_predict_overlays_take_a_device(
    demo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = image(tmp_path / "x.png")
    code, _, err = run(
        capsys, "predict", "--checkpoint", str(demo_checkpoint), str(img), "--out",
        str(tmp_path / "o"), "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "o" / "x_seg.png").is_file()


@pytest.mark.parametrize(
    ("fixture", "recipe", "loader", "split"),
    [
        ("cityscapes", "segformer_b5_cityscapes_gmm", "Cityscapes", "val"),
        ("ade20k", "segformer_b5_ade20k_gmm", "ADE20K", "validation"),
    ],
)
def test_predict_write_then_score_equals_scoring_in_memory(
    fixture: str,
    recipe: str,
    loader: str,
    split: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`predict --write cityscapes|ade20k` over a split's images, then `gmmseg score` on the
    folder: full-resolution files named for the split, and the command's numbers equal a plain
    per-class count over the files read back beside the split's labels."""
    from gmmseg import data
    from gmmseg.submit import read_ade20k, read_cityscapes

    root = write_fixture(fixture, tmp_path, num_images=2, size=(48, 64))
    dataset = getattr(data, loader)(root, split)
    work = tmp_path / "w"
    argv = ["train", recipe, "--dry-run", "--no-progress", "--work-dir", str(work)]
    assert main(argv) == 0
    images = [f.image_path for f in dataset.frames]
    out = tmp_path / "sub"
    code, _, err = run(
        capsys, "predict", "--checkpoint", str(work / "iter_00000002.pt"), *map(str, images),
        "--out", str(out), "--write", fixture, "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    code, printed, err = run(capsys, "score", fixture, str(out), "--data", str(root))
    assert code == 0, err
    got = json.loads(printed)["cityscapes" if fixture == "cityscapes" else "segmentation"]
    files = sorted(p for p in out.rglob("*.png"))
    assert len(files) == len(dataset)
    num_classes = 19 if fixture == "cityscapes" else 150
    inter, pred_area, label_area = (np.zeros(num_classes) for _ in range(3))
    for i, frame in enumerate(dataset.frames):
        (path,) = [p for p in files if p.name.startswith(frame.name)]
        pred = (read_cityscapes if fixture == "cityscapes" else read_ade20k)(path)
        label = dataset.load_label(i).astype(np.int64)
        assert pred.shape == label.shape  # full resolution
        valid = label != 255
        for c in range(num_classes):
            p, y = pred[valid] == c, label[valid] == c
            inter[c] += (p & y).sum()
            pred_area[c] += p.sum()
            label_area[c] += y.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (pred_area + label_area - inter)
    np.testing.assert_allclose(np.array(got["IoU"], dtype=float), iou, rtol=1e-12)
