"""The gmmseg command line: every recipe dry-runs, eval/anomaly/predict on a checkpoint, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gmmseg.cli import main
from gmmseg.recipes import RECIPES

pytest.importorskip("skimage")


pytestmark = pytest.mark.cpu_only("end-to-end command-line runs choose their own device (--device)")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_recipes_lists_every_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "recipes")
    assert code == 0
    for name in RECIPES:
        assert name in out
    code, out, _ = run(capsys, "recipes", "--json")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == list(RECIPES)
    coco = next(r for r in rows if r["name"] == "segformer_b5_cocostuff10k_gmm")
    assert coco["paper"] == "44.81 mIoU" and coco["crop"] == "512x512" and coco["iters"] == 80000


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_dry_runs(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "train", name, "--dry-run", "--no-progress", "--work-dir", str(tmp_path / "w")
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["iteration"] == 2
    assert 0.0 <= summary["eval"]["mIoU"] <= 1.0
    assert (tmp_path / "w" / "iter_00000002.pt").is_file()
    assert json.loads((tmp_path / "w" / "recipe.json").read_text())["name"] == name
    if RECIPES[name].anomaly is not None:
        for per_score in summary["anomaly"].values():
            for m in per_score.values():
                assert 0.0 <= m["ap"] <= 1.0 and 0.0 <= m["auroc"] <= 1.0


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ckpt") / "w"
    assert main(["train", "demo", "--dry-run", "--no-progress", "--work-dir", str(work)]) == 0
    return work / "iter_00000002.pt"


def test_eval_anomaly_predict_on_a_checkpoint(
    demo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    small = ["--set", "data.demo_val_images=3", "anomaly.demo_images=3"]
    code, out, err = run(capsys, "eval", "demo", "--checkpoint", str(demo_checkpoint), *small)
    assert code == 0, err
    assert set(json.loads(out)) == {"mIoU", "mAcc", "aAcc", "IoU"}
    code, out, err = run(
        capsys,
        "anomaly",
        "demo",
        "--checkpoint",
        str(demo_checkpoint),
        "--datasets",
        "demo_ood",
        *small,
    )
    assert code == 0, err
    result = json.loads(out)
    assert list(result) == ["demo_ood"] and "likelihood" in result["demo_ood"]
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
        image
    )
    out_dir = tmp_path / "pred"
    code, out, err = run(
        capsys, "predict", "--checkpoint", str(demo_checkpoint), str(image), "--out", str(out_dir)
    )
    assert code == 0, err
    seg = Image.open(out_dir / "scene_seg.png")
    heat = Image.open(out_dir / "scene_anomaly.png")
    assert seg.size == heat.size == (56, 40) and seg.mode == heat.mode == "RGB"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "nope"], "unknown recipe 'nope'"),
        (["train", "demo", "--set", "optim.lrr=1"], "unknown key 'lrr'"),
        (["train", "demo", "--set", "optim.lr=fast"], "expected a number"),
        (["eval", "demo", "--checkpoint", "/missing.pt"], "/missing.pt' does not exist"),
        (["train", "segformer_b5_cityscapes_gmm"], "data.root is not set"),
        (["predict", "--checkpoint", "/missing.pt", "x.png"], "does not exist"),
    ],
)
def test_user_errors_exit_2_without_traceback(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.startswith(f"gmmseg {argv[0]}: error:")


def test_predict_missing_image(demo_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "predict", "--checkpoint", str(demo_checkpoint), "/no/img.png")
    assert code == 2 and "image '/no/img.png' does not exist" in err


def test_repeated_set_options_accumulate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        "train",
        "demo",
        "--dry-run",
        "--no-progress",
        "--work-dir",
        str(tmp_path),
        "--set",
        "train.seed=3",
        "--set",
        "optim.lr=0.01",
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "recipe.json").read_text())
    assert saved["train"]["seed"] == 3 and saved["optim"]["lr"] == 0.01


def test_convert_delegates_to_the_converters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gmmseg.testing import write_fixture

    root = write_fixture("cityscapes", tmp_path)
    for p in root.rglob("*_labelTrainIds.png"):
        p.unlink()
    code, out, err = run(capsys, "convert", "cityscapes", str(root))
    assert code == 0, err
    assert "wrote" in out and any(root.rglob("*_labelTrainIds.png"))


def test_console_script_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gmmseg.cli", "recipes"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "demo" in proc.stdout


@pytest.mark.slow
def test_demo_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code, stdout, err = run(capsys, "demo", "--quick", "--out", str(out), "--no-progress")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    g, s = metrics["gmmseg"], metrics["softmax"]
    values = [g["mIoU"], g["ap"], g["auroc"], g["fpr95"], *g["near"].values(), s["mIoU"]]
    for score in ("msp", "max_logit", "energy"):
        values += [*s[score].values(), *s["near"][score].values()]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert set(g["near"]) == {"ap", "auroc", "fpr95"}
    for key in ("softmax_posthoc", "gmmseg_posthoc"):
        p = metrics[key]
        for score in ("posthoc_likelihood", "posthoc_marginal"):
            assert all(0.0 <= v <= 1.0 for v in [*p[score].values(), *p["near"][score].values()])
        assert p["fit"]["seconds"] > 0 and Path(p["fit"]["file"]).is_file()
    assert metrics["seconds"] > 0
    for name in ("report.md", "figure.png", "curves_ood.png", "curves_ood_near.png"):
        assert (out / name).stat().st_size > 0
    assert "| GMMSeg |" in (out / "report.md").read_text() and "| GMMSeg |" in stdout
    assert "| softmax + post-hoc mixtures |" in stdout


@pytest.mark.slow
def test_demo_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    from gmmseg.demo import run_demo

    # two processes at once, then one after the other in this process: the same numbers
    a = run_demo(tmp_path / "a", quick=True, seed=1, progress=False, figures=False)
    c = run_demo(tmp_path / "c", quick=True, seed=1, progress=False, figures=False, parallel=False)
    assert c["gmmseg"] == a["gmmseg"] and c["softmax"] == a["softmax"]


def test_demo_results_table_in_the_docs_is_current() -> None:
    from gmmseg.demo import results_table

    root = Path(__file__).resolve().parents[1]
    metrics = json.loads((root / "docs" / "assets" / "demo" / "metrics.json").read_text())
    table = results_table(metrics)
    for doc in ("README.md", "docs/demo.md"):
        text = (root / doc).read_text()
        start = text.index("<!-- demo-table -->") + len("<!-- demo-table -->")
        end = text.index("<!-- /demo-table -->")
        assert text[start:end].strip() == table, doc


# --------------------------------------------------------------------------- never lose work


def _png(path: Path, shape: tuple[int, ...] = (24, 32, 3), dtype: type = np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)).save(path)
    return path


def test_predict_refuses_two_inputs_with_one_name(
    demo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: the second image silently overwrote the first one's outputs.
    a, b = _png(tmp_path / "a" / "frame.png"), _png(tmp_path / "b" / "frame.png")
    out = tmp_path / "pred"
    code, _, err = run(
        capsys, "predict", "--checkpoint", str(demo_checkpoint), str(a), str(b), "--out", str(out)
    )
    assert code == 2 and "share the name 'frame'" in err and str(a) in err and str(b) in err
    assert not out.exists()  # refused before any work


def test_predict_does_not_overwrite_existing_files_unless_told(
    demo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _png(tmp_path / "scene.png")
    out = tmp_path / "pred"
    out.mkdir()
    (out / "scene_seg.png").write_bytes(b"my own figure")
    code, _, err = run(
        capsys, "predict", "--checkpoint", str(demo_checkpoint), str(image), "--out", str(out)
    )
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert (out / "scene_seg.png").read_bytes() == b"my own figure"
    code, _, err = run(
        capsys,
        "predict",
        "--checkpoint",
        str(demo_checkpoint),
        str(image),
        "--out",
        str(out),
        "--overwrite",
    )
    assert code == 0, err
    assert Image.open(out / "scene_seg.png").size == (32, 24)


def test_predict_reads_16_bit_images_without_clipping(
    demo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: a 16-bit PNG was clipped to 0/255 by Pillow's convert("RGB").
    from gmmseg.data._io import read_image

    grey = np.random.default_rng(1).integers(0, 65536, (24, 32), dtype=np.uint16)
    wide = tmp_path / "wide.png"
    Image.fromarray(grey).save(wide)
    expected = np.round(grey.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(read_image(wide), np.repeat(expected[..., None], 3, axis=2))
    code, _, err = run(
        capsys,
        "predict",
        "--checkpoint",
        str(demo_checkpoint),
        str(wide),
        "--out",
        str(tmp_path / "p"),
    )
    assert code == 0, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "demo", "--dry-run", "--device", "gpu0"], "device"),
        (["train", "demo", "--dry-run", "--device", "mps"], "device 'mps' is not supported"),
        (["eval", "demo", "--checkpoint", "{ckpt}", "--device", "meta"], "'meta' is not supported"),
        (["anomaly", "demo", "--checkpoint", "{ckpt}", "--device", "xpu"], "'xpu' is not"),
        (["eval", "demo", "--checkpoint", "{bad}"], "truncated"),
        (["eval", "demo", "--checkpoint", "{empty}"], "0 bytes"),
        (
            ["predict", "--checkpoint", "{ckpt}", "{corrupt_image}", "--out", "{out}"],
            "cannot decode image",
        ),
        (
            ["predict", "--checkpoint", "{ckpt}", "{float_image}", "--out", "{out}"],
            "32-bit integer or float",
        ),
        (["predict", "--checkpoint", "{ckpt}", "{image}", "--out", "{a_file}/sub"], "a_file"),
    ],
)
def test_expected_failures_are_one_line(
    argv: list[str],
    message: str,
    demo_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: tracebacks (RuntimeError, EOFError, OSError, PermissionError).
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "empty.pt").write_bytes(b"")
    corrupt = _png(tmp_path / "corrupt.png")
    corrupt.write_bytes(corrupt.read_bytes()[:60])
    Image.fromarray(np.ones((8, 8), dtype=np.float32)).save(tmp_path / "float.tiff")
    (tmp_path / "a_file").write_text("an output folder cannot be made inside a file")
    names = {
        "bad": tmp_path / "bad.pt",
        "empty": tmp_path / "empty.pt",
        "ckpt": demo_checkpoint,
        "corrupt_image": corrupt,
        "float_image": tmp_path / "float.tiff",
        "image": _png(tmp_path / "ok.png"),
        "out": tmp_path / "out",
        "a_file": tmp_path / "a_file",
    }
    code, _, err = run(capsys, *[a.format(**names) for a in argv])
    assert code == 2, err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileNotFoundError):
        main(["--debug", "eval", "demo", "--checkpoint", "/missing.pt"])


def test_debug_works_after_the_command_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileNotFoundError):
        main(["eval", "demo", "--checkpoint", "/missing.pt", "--debug"])


def test_predict_set_needs_a_recipe(
    demo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found in review: --set without --recipe was silently ignored.
    image = _png(tmp_path / "scene.png")
    code, _, err = run(
        capsys,
        "predict",
        "--checkpoint",
        str(demo_checkpoint),
        str(image),
        "--out",
        str(tmp_path / "p"),
        "--set",
        "eval.flip=true",
    )
    assert code == 2 and "--set needs --recipe" in err
    assert not (tmp_path / "p").exists()
