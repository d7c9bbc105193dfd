"""check_recipe: every field a run needs is checked before anything runs, one line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from gmmseg.cli import main
from gmmseg.recipes import RECIPES, apply_overrides, check_recipe, get_recipe


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_valid(name: str) -> None:
    check_recipe(RECIPES[name], training=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.batch_size=0"], "data.batch_size must be > 0, got 0"),
        (["data.crop_size=0,0"], r"data.crop_size must be two integers > 0, got \(0, 0\)"),
        (["model.gmm.embed_dim=0"], "model: embed_dim must be a positive int, got 0"),
        (["model.decoder_channels=0"], "model:"),
        (["train.iters=0"], "train.iters must be > 0"),
        (["optim.lr=0"], "optim.lr must be > 0"),
        (["optim.grad_clip=-1"], "optim.grad_clip must be > 0"),
        (["data.ratio_range=2,1"], "data.ratio_range must be"),
        (["eval.mode=slide"], "eval.mode=slide needs eval.crop_size and eval.stride"),
        (["eval.mode=slide", "eval.crop_size=64,64"], "needs eval.crop_size and eval.stride"),
        (["eval.scales=0.5,-1"], "eval.scales must be"),
        (["name=../.."], "name must be letters"),
        (["name=a/b"], "name must be letters"),
        (["model.dropout=1.0"], r"model.dropout must be in \[0, 1\)"),
    ],
)
def test_invalid_fields_are_named(overrides: list[str], message: str) -> None:
    recipe = apply_overrides(get_recipe("demo"), overrides)
    with pytest.raises(ValueError, match=message):
        check_recipe(recipe)


def test_a_missing_pretrained_file_is_refused_for_training_only(tmp_path: Path) -> None:
    recipe = apply_overrides(
        get_recipe("segformer_b5_cityscapes_gmm"), [f"model.pretrained={tmp_path}/mit_b5.pth"]
    )
    check_recipe(recipe)  # evaluation does not need it
    with pytest.raises(FileNotFoundError, match=r"model.pretrained: .*mit_b5.pth' does not exist"):
        check_recipe(recipe, training=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.batch_size=0"], "data.batch_size must be > 0"),
        (["data.crop_size=0,0"], "data.crop_size must be two integers > 0"),
        (["model.gmm.embed_dim=0"], "embed_dim"),
        (["eval.mode=slide"], "eval.mode=slide needs"),
        (["model.pretrained=/nowhere/mit_b5.pth"], "/nowhere/mit_b5.pth' does not exist"),
    ],
)
def test_dry_runs_check_the_real_configuration(
    overrides: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: --dry-run substituted its own crop, stride, batch and widths, so all of these
    # "passed" and then failed for real.
    code = main(
        [
            "train",
            "demo",
            "--dry-run",
            "--no-progress",
            "--work-dir",
            str(tmp_path / "w"),
            "--set",
            *overrides,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()


def test_a_name_cannot_write_outside_the_work_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: --set name=../.. made the default work folder work_dirs/../.. (the parent).
    monkeypatch.chdir(tmp_path)
    code = main(["train", "demo", "--dry-run", "--no-progress", "--set", "name=../.."])
    assert code == 2 and "name must be" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
