"""Fault injection: a real training process killed (SIGKILL) while it writes a checkpoint and
while it evaluates, then resumed, ends with exactly the tensors of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from gmmseg.engine.checkpoint import CheckpointManifest, latest_checkpoint, load_checkpoint

pytestmark = [
    pytest.mark.cpu_only("kills and resumes training subprocesses"),
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"),
]

# The child trains the tiny demo for 6 steps with checkpoints and evaluations every 2 steps.
# KILL=save:N kills it halfway through writing the checkpoint of step N (half the bytes are in
# the temporary file); KILL=eval:N kills it inside the evaluation of step N (its checkpoint is
# already on disk).
CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import gmmseg.engine.checkpoint as ckpt
    import gmmseg.recipes.run as run
    from gmmseg.recipes import apply_overrides, dry_run_recipe, get_recipe, train_recipe

    work, fixtures, resume = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "resume"
    kind, _, at = os.environ.get("KILL", "").partition(":")

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), 9)

    if kind == "save":
        real_save = torch.save
        def save(obj, f, *a, **k):
            if str(f).endswith(".tmp") and f".iter_{int(at):08d}.pt." in str(f):
                real_save(obj, f, *a, **k)
                data = Path(f).read_bytes()
                Path(f).write_bytes(data[: len(data) // 2])
                die()
            return real_save(obj, f, *a, **k)
        torch.save = save
    if kind == "eval":
        real_eval = run.evaluate_segmentation
        calls = []
        def evaluate(*a, **k):
            calls.append(1)
            if len(calls) == int(at) // 2:
                die()
            return real_eval(*a, **k)
        run.evaluate_segmentation = evaluate

    recipe = apply_overrides(
        dry_run_recipe(get_recipe("demo"), fixtures),
        ["train.iters=6", "train.checkpoint_interval=2", "train.eval_interval=2",
         "train.deterministic=true", "data.demo_train_images=12", "data.demo_val_images=3",
         "data.batch_size=2"],
    )
    train_recipe(recipe, work, resume="auto" if resume else None, tiny=True, progress=False)
    print("finished")
    """
)


def _child(tmp: Path, work: Path, mode: str, kill: str = "") -> subprocess.CompletedProcess[str]:
    script = tmp / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "KILL": kill}
    return subprocess.run(
        [sys.executable, str(script), str(work), str(tmp / "fixtures"), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("straight")
    proc = _child(tmp, tmp / "w", "fresh")
    assert proc.returncode == 0, proc.stderr
    return tmp / "w"


@pytest.mark.parametrize("kill", ["save:4", "eval:4"])
def test_killed_run_resumes_to_the_same_tensors(kill: str, straight: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    proc = _child(tmp_path, work, "fresh", kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    if kill.startswith("save"):
        # the half-written file is a temporary; the last good checkpoint is untouched
        assert list(work.glob(".iter_00000004.pt.*.tmp"))
        assert latest_checkpoint(work) == work / "iter_00000002.pt"
    else:
        assert latest_checkpoint(work) == work / "iter_00000004.pt"
    proc = _child(tmp_path, work, "resume")
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr
    assert not list(work.glob(".*.tmp"))  # the killed write's leftover is cleaned up
    resumed = load_checkpoint(work / "iter_00000006.pt")
    uninterrupted = load_checkpoint(straight / "iter_00000006.pt")
    # every tensor, the RNG states included (all of torch's, numpy's and Python's)
    want, got = _tensors(uninterrupted), _tensors(resumed)
    assert want.keys() == got.keys()
    assert {"/rng/torch", "/rng/numpy/1"} <= got.keys()
    assert resumed["rng"]["python"] == uninterrupted["rng"]["python"]
    assert resumed["rng"]["numpy"][2:] == uninterrupted["rng"]["numpy"][2:]
    assert any("memory.bank" in k for k in got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    # Every evaluation happened once, with the same numbers: those before step 6 are in the
    # checkpoint's history, step 6's (run after its checkpoint) in the manifest and metrics.
    assert _evals(resumed) == _evals(uninterrupted) and [i for i, _ in _evals(resumed)] == [2, 4]
    final = CheckpointManifest(work).eval_of(6)
    assert final is not None and final == CheckpointManifest(straight).eval_of(6)
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["eval"] == json.loads((straight / "metrics.json").read_text())["eval"]
    assert metrics["eval"]["mIoU"] == final["mIoU"]


def _evals(state: dict[str, Any]) -> list[tuple[int, float]]:
    return [(r["iter"], r["mIoU"]) for r in state["history"] if r["mode"] == "eval"]
