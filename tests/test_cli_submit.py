"""gmmseg predict --write (benchmark files at full resolution) and gmmseg score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gmmseg.cli import main
from gmmseg.data import SMIYCObstacleTrack, write_fixture
from gmmseg.metrics import AnomalyMetrics, ComponentMetrics
from gmmseg.submit import SubmissionWriter, read_smiyc

pytestmark = pytest.mark.filterwarnings("ignore::gmmseg.metrics.UndefinedMetricWarning")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ckpt") / "w"
    assert main(["train", "demo", "--dry-run", "--no-progress", "--work-dir", str(work)]) == 0
    return work / "iter_00000002.pt"


def test_predict_write_smiyc_and_fishyscapes(
    demo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_fixture("smiyc_anomaly_track", tmp_path, size=(40, 56))
    images = sorted((root / "dataset_AnomalyTrack" / "images").glob("validation*.jpg"))[:2]
    out = tmp_path / "sub"
    code, _, err = run(
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
    folder = out / "anomaly_p" / "demo-gmm" / "AnomalyTrack-validation"
    assert sorted(p.name for p in folder.glob("*.hdf5")) == [f"{p.stem}.hdf5" for p in images]
    assert read_smiyc(folder / f"{images[0].stem}.hdf5").shape == (40, 56)  # full resolution
    fs_out = tmp_path / "fs"
    code, _, err = run(
        capsys, "predict", "--checkpoint", str(demo_checkpoint), str(images[0]),
        "--out", str(fs_out), "--write", "fishyscapes",
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
