"""Every script in examples/ runs to completion (exit code 0) as a user would run it.

Scripts that take a dataset or a checkpoint get miniature ones, written here: folders by
:func:`~gmmseg.testing.write_folder_fixture`, foreign checkpoints in their exact published
layouts by the writers of the interop tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gmmseg.testing import write_anomaly_folder_fixture, write_folder_fixture

pytestmark = pytest.mark.cpu_only("runs the example scripts as subprocesses")


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))

# Miniature settings: a few steps on 48×64 images, no test-time resize.
QUICK = [
    "train.iters=3",
    "data.crop_size=32,32",
    "data.scale=64,48",
    "data.test_scale=none",
    "data.batch_size=2",
    "data.num_workers=0",
    "optim.warmup_iters=1",
    "train.device=cpu",
]


def _train_on_folder(tmp: Path) -> list[str]:
    root = write_folder_fixture(tmp / "mine", ("road", "car", "sky"))
    args = ["--root", str(root), "--class-file", "classes.json", "--tiny"]
    return [*args, "--work-dir", str(tmp / "work"), "--set", *QUICK]


def _anomaly_foreign_checkpoint(tmp: Path) -> list[str]:
    pytest.importorskip("transformers")
    from test_interop_cli import B0
    from test_interop_official import official_file

    checkpoint = tmp / "gmmseg_segformer_cocostuff10k.pth"
    # the official release's layout (171 classes, M = 5), with a MiT-B0 backbone
    official_file(checkpoint, d=64, width=256, k=4, mit=B0)
    ano = write_anomaly_folder_fixture(tmp / "anomalies", anomaly_value=2)
    return [
        "--checkpoint",
        str(checkpoint),
        "--recipe",
        "segformer_b5_cocostuff10k_gmm",
        "--anomaly-root",
        str(ano),
        "--label-map",
        "0:0,2:1,255:255",
        "--out",
        str(tmp / "results"),
        "--set",
        "model.backbone=mit_b0",
        "data.test_scale=none",
    ]


def _posthoc_mmseg(tmp: Path) -> list[str]:
    pytest.importorskip("transformers")
    from test_interop_cli import mmseg_b0

    checkpoint = tmp / "segformer_mit-b0_cityscapes.pth"
    mmseg_b0(checkpoint)  # mmsegmentation's layout, 19 classes, softmax classifier
    classes = ",".join(f"c{i}" for i in range(19))
    train = write_folder_fixture(tmp / "train", tuple(f"c{i}" for i in range(19)))
    ano = write_anomaly_folder_fixture(tmp / "anomalies", num_classes=19)
    return [
        "--checkpoint",
        str(checkpoint),
        "--train-root",
        str(train),
        "--classes",
        classes,
        "--anomaly-root",
        str(ano),
        "--out",
        str(tmp / "mixtures.posthoc.pt"),
        "--set",
        "model.backbone=mit_b0",
        "data.test_scale=none",
    ]


ARGUMENTS: dict[str, Callable[[Path], list[str]]] = {
    "train_on_folder.py": _train_on_folder,
    "anomaly_foreign_checkpoint.py": _anomaly_foreign_checkpoint,
    "posthoc_mmseg.py": _posthoc_mmseg,
}


def test_examples_exist():
    assert EXAMPLES, "examples/ holds no script"
    assert set(ARGUMENTS) <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args = ARGUMENTS[script.name](inputs) if script.name in ARGUMENTS else []
    run = tmp_path / "run"
    run.mkdir()
    # Run from an empty folder so that an example cannot depend on (or litter) the checkout.
    # One thread: the examples use tiny tensors, for which extra threads only add contention
    # (several times slower on a busy 2-core machine).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{script.name} exited with {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    assert proc.stdout.strip(), f"{script.name} printed nothing"
    assert not any(run.iterdir()), f"{script.name} wrote into the current folder"


def test_foreign_checkpoint_example_writes_the_classifiers_own_score(tmp_path):
    """The maps written are the classifier's own score, by its ``anomaly_name``."""
    script = next(p for p in EXAMPLES if p.name == "anomaly_foreign_checkpoint.py")
    args = _anomaly_foreign_checkpoint(tmp_path)
    # a GMM classifier whose own score has another name: the example must follow the name
    code = (
        "import runpy, sys\n"
        "from gmmseg.heads import GMMClassifier\n"
        "GMMClassifier.anomaly_name = 'nll'\n"
        f"sys.argv[0] = {str(script)!r}\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert re.search(r"^wrote 3 nll maps to ", proc.stdout, re.MULTILINE), proc.stdout


def test_docs_snippets_name_existing_example_sections() -> None:
    """Every ``--8<--`` include in the docs names a file and a section that exist (a formatter
    that rewrites the marker, or a renamed section, would silently empty the page's code)."""
    root = Path(__file__).resolve().parents[1]
    includes = []
    for page in sorted((root / "docs").rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert "--8 <" not in text, f"{page.name}: a mangled snippet marker"
        includes += [(page.name, m) for m in re.findall(r'^--8<-- "([^"]+)"$', text, re.M)]
    assert includes, "no snippet includes found"
    for page, include in includes:
        path, _, section = include.partition(":")
        source = (root / path).read_text(encoding="utf-8")
        if section:
            assert f"# --8<-- [start:{section}]" in source, f"{page}: no section {include}"
            assert f"# --8<-- [end:{section}]" in source, f"{page}: no section end {include}"
