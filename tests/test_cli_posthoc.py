"""``gmmseg fit-posthoc`` on a dry-run checkpoint, and ``gmmseg anomaly`` scoring with its file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gmmseg.cli import main
from gmmseg.heads import PosthocMixtures
from gmmseg.recipes import apply_overrides, get_recipe, load_trained
from gmmseg.recipes.posthoc import default_posthoc_path, fit_recipe_posthoc

pytest.importorskip("skimage")

pytestmark = pytest.mark.cpu_only("end-to-end command-line runs choose their own device (--device)")


SMALL = ["--set", "data.demo_train_images=6", "data.demo_val_images=3", "anomaly.demo_images=3"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ckpt") / "w"
    assert main(["train", "demo", "--dry-run", "--no-progress", "--work-dir", str(work)]) == 0
    return work / "iter_00000002.pt"


def test_default_path_is_beside_the_checkpoint(tmp_path: Path) -> None:
    assert default_posthoc_path("w/iter_00000002.pt") == Path("w/iter_00000002.posthoc.pt")
    (tmp_path / "hf").mkdir()
    assert default_posthoc_path(tmp_path / "hf") == tmp_path / "hf.posthoc.pt"


def test_fit_posthoc_then_anomaly_reports_its_scores(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code, out, err = run(
        capsys, "fit-posthoc", "demo", "--checkpoint", str(checkpoint), "--components", "1", *SMALL
    )
    assert code == 0, err
    summary = json.loads(out)
    path = checkpoint.parent / "iter_00000002.posthoc.pt"
    assert summary["out"] == str(path) and path.is_file()
    assert summary["space"] == "embedding"  # auto: a GMM model's embeddings
    assert summary["images"] == 6 and sum(summary["pixels_per_class"]) > 0
    assert summary["file_bytes"] == path.stat().st_size
    state = torch.load(path, weights_only=True)
    assert state["info"]["recipe"] == "demo" and state["info"]["checkpoint"] == path.name.replace(
        ".posthoc", ""
    )
    base = ["anomaly", "demo", "--checkpoint", str(checkpoint), "--datasets", "demo_ood", *SMALL]
    code, out, err = run(capsys, *base)
    assert code == 0, err
    scores = json.loads(out)["demo_ood"]
    assert {"likelihood", "msp", "posthoc_likelihood", "posthoc_marginal"} <= set(scores)
    assert "scoring with the post-hoc mixtures" in err
    code, out, _ = run(capsys, *base, "--no-posthoc")
    assert code == 0 and "posthoc_likelihood" not in json.loads(out)["demo_ood"]


def test_fit_posthoc_decoder_space_to_a_named_file(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "decoder.pt"
    code, out, err = run(
        capsys,
        "fit-posthoc",
        "demo",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(target),
        "--space",
        "decoder",
        "--components",
        "2",
        "--projection",
        "pca",
        "--projection-dim",
        "4",
        "--normalize",
        *SMALL,
    )
    assert code == 0, err
    head = PosthocMixtures.load(target)
    assert head.info["space"] == "decoder" and head.means.shape[-1] == 4
    assert head.settings.normalize and head.settings.num_components == 2
    # The same as the library call on the loaded model.
    recipe = apply_overrides(get_recipe("demo"), SMALL[1:])
    model, recipe = load_trained(checkpoint, recipe)
    again, written = fit_recipe_posthoc(
        recipe, model=model, space="decoder", settings=head.settings
    )
    assert written is None and torch.equal(again.means, head.means)
    code, out, err = run(
        capsys,
        "anomaly",
        "demo",
        "--checkpoint",
        str(checkpoint),
        "--datasets",
        "demo_ood",
        "--posthoc",
        str(target),
        *SMALL,
    )
    assert code == 0, err
    assert "posthoc_marginal" in json.loads(out)["demo_ood"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--projection", "pca"], "projection_dim must be an int >= 1"),
        (["--components", "0"], "num_components must be an int >= 1"),
    ],
)
def test_fit_posthoc_errors_exit_2(
    checkpoint: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "fit-posthoc", "demo", "--checkpoint", str(checkpoint), *extra, *SMALL
    )
    assert code == 2 and message in err and "Traceback" not in err


def test_anomaly_with_a_missing_posthoc_file_exits_2(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "anomaly", "demo", "--checkpoint", str(checkpoint), "--posthoc", "/no/file.pt"
    )
    assert code == 2 and "post-hoc mixtures file '/no/file.pt' does not exist" in err
