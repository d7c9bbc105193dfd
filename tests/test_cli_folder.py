"""Your own data from the command line: folder datasets by ``--set`` overrides only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gmmseg.cli import main
from gmmseg.data import FolderAnomaly
from gmmseg.metrics import AnomalyMetrics
from gmmseg.recipes import apply_overrides, check_recipe, get_recipe, load_trained
from gmmseg.recipes.build import (
    build_anomaly_datasets,
    build_val_dataset,
    dry_run_recipe,
    folder_classes,
    num_classes_of,
)
from gmmseg.submit import read_smiyc
from gmmseg.testing import write_anomaly_folder_fixture, write_folder_fixture

pytestmark = pytest.mark.cpu_only("runs the command line and reads files")

TINY = [
    "train.iters=3",
    "data.crop_size=32,32",
    "data.scale=64,48",
    "data.test_scale=none",
    "data.batch_size=2",
    "data.num_workers=0",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("own")
    return {
        "closed": write_folder_fixture(base / "mine", ("road", "car", "sky")),
        "anomaly": write_anomaly_folder_fixture(base / "ano"),
        "anomaly02": write_anomaly_folder_fixture(base / "ano02", anomaly_value=2),
    }


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --- recipe fields -------------------------------------------------------------------------


def test_classes_by_override_and_by_class_file(folders: dict[str, Path]) -> None:
    root = folders["closed"]
    by_names = apply_overrides(get_recipe("demo"), ["data.dataset=folder", "data.classes=a,b"])
    assert by_names.data.classes == ("a", "b")
    assert num_classes_of(by_names.data) == 2
    coloured = apply_overrides(by_names, ["data.palette=1,2,3,4,5,6", "data.void_colors=0,0,0"])
    info = folder_classes(coloured.data)
    assert info.palette == ((1, 2, 3), (4, 5, 6)) and info.void_colors == ((0, 0, 0),)
    # a relative class file is found inside data.root
    by_file = apply_overrides(
        get_recipe("demo"),
        ["data.dataset=folder", f"data.root={root}", "data.class_file=classes.json"],
    )
    info = folder_classes(by_file.data)
    assert info.names == ("road", "car", "sky") and len(info.palette) == 3
    assert num_classes_of(by_file.data) == 3


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ([], ValueError, "data.dataset=folder needs its classes"),
        (["data.classes=a", "data.class_file=x.json"], ValueError, "both set"),
        (["data.class_file=nope.json"], FileNotFoundError, "data.class_file: 'nope.json'"),
        (["data.classes=a,a"], ValueError, "repeated"),
        (["data.classes=a", "data.palette=1,2"], ValueError, "three per colour, got 2"),
        (["data.classes=a,b", "data.palette=1,2,3"], ValueError, "one colour per class"),
        (["data.class_file=x.json", "data.palette=1,2,3"], ValueError, "without data.classes"),
    ],
)
def test_recipe_class_errors(overrides: list[str], error: type, match: str) -> None:
    recipe = apply_overrides(get_recipe("demo"), ["data.dataset=folder", *overrides])
    with pytest.raises(error, match=match):
        check_recipe(recipe)


def test_val_and_anomaly_sets_built_from_overrides(folders: dict[str, Path]) -> None:
    recipe = apply_overrides(
        get_recipe("demo"),
        [
            "data.dataset=folder",
            f"data.root={folders['closed']}",
            "data.class_file=classes.json",
            "data.test_scale=none",
            "anomaly.datasets=folder",
            f"anomaly.folder_root={folders['anomaly02']}",
            "anomaly.folder_label_map=0:0,2:1,255:255",
        ],
    )
    val = build_val_dataset(recipe.data)
    assert len(val) == 2 and val[0]["image"].dtype.is_floating_point  # normalised
    ano = build_anomaly_datasets(recipe)["folder"]
    assert isinstance(ano, FolderAnomaly)
    assert set(ano[0]["label"].unique().tolist()) == {0, 1, 255}


def test_dry_run_of_a_folder_recipe_writes_its_own_miniature(tmp_path: Path) -> None:
    recipe = apply_overrides(
        get_recipe("demo"),
        ["data.dataset=folder", "data.classes=a,b,c,d", "anomaly.datasets=folder"],
    )
    dry = dry_run_recipe(recipe, tmp_path)
    assert Path(dry.data.root).is_relative_to(tmp_path)
    assert dry.data.classes == ("a", "b", "c", "d")
    assert len(build_val_dataset(dry.data)) == 2
    assert len(build_anomaly_datasets(dry)["folder"]) == 3


# --- the command line ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("work")
    argv = ["train", "demo", "--work-dir", str(work), "--no-progress", "--set"]
    argv += ["data.dataset=folder", f"data.root={folders['closed']}"]
    argv += ["data.class_file=classes.json", *TINY]
    assert main(argv) == 0
    return next(work.glob("iter_*.pt"))


def test_train_eval_anomaly_on_folders(
    folders: dict[str, Path], trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    sets = ["data.dataset=folder", f"data.root={folders['closed']}", "data.test_scale=none"]
    sets.append("data.class_file=classes.json")
    code, out, err = _run(["eval", "demo", "--checkpoint", str(trained), "--set", *sets], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert len(result["IoU"]) == 3
    code, out, err = _run(
        [
            "anomaly",
            "demo",
            "--checkpoint",
            str(trained),
            "--datasets",
            "folder",
            "--set",
            *sets,
            f"anomaly.folder_root={folders['anomaly02']}",
            "anomaly.folder_label_map=0:0,2:1,255:255",
        ],
        capsys,
    )
    assert code == 0, err
    scores = json.loads(out)["folder"]
    assert {"likelihood", "max_logit"} <= set(scores)
    assert 0.0 <= scores["likelihood"]["auroc"] <= 1.0


def test_bad_label_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_folder_fixture(tmp_path / "bad", ("a", "b", "c"), splits=(("train", 2),))
    target = root / "labels" / "train" / "0001.png"
    label = np.asarray(Image.open(target)).copy()
    label[3, 3] = 9
    Image.fromarray(label).save(target)
    argv = ["train", "demo", "--work-dir", str(tmp_path / "w"), "--no-progress", "--set"]
    argv += ["data.dataset=folder", f"data.root={root}", "data.classes=a,b,c"]
    argv += ["data.val_split=train", *TINY]
    code, _, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(target) in lines[0] and "9 (1 px)" in lines[0] and "{0, …, 2} ∪ {255}" in lines[0]


def test_predict_smiyc_then_score_a_folder(
    folders: dict[str, Path], trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ano = folders["anomaly"]
    out = tmp_path / "results"
    images = sorted(str(p) for p in (ano / "images").glob("*.jpg"))
    argv = ["predict", "--checkpoint", str(trained), *images, "--write", "smiyc"]
    argv += ["--smiyc-dataset", "AnomalyTrack-all", "--out", str(out)]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    code, text, err = _run(
        [
            "score",
            "smiyc",
            str(out),
            "--data",
            str(ano),
            "--data-layout",
            "folder",
            "--smiyc-dataset",
            "AnomalyTrack-all",
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(text)
    assert result["frames"] == 3
    # independent: the pixel metrics of the saved files against the masks as stored
    ref = AnomalyMetrics(mode="exact")
    for i, path in enumerate(
        sorted((out / "anomaly_p" / "gmmseg" / "AnomalyTrack-all").glob("*.hdf5"))
    ):
        mask = np.array(Image.open(ano / "labels" / f"{path.stem}.png"))
        assert path.stem == f"{i:04d}"
        ref.update(read_smiyc(path), mask)
    assert result["pixel"]["auroc"] == pytest.approx(float(ref.compute()["auroc"]), abs=2e-3)
    # images named {stem}_left.jpg pair with {stem}.png masks through --image-suffix
    renamed = tmp_path / "renamed"
    shutil.copytree(ano, renamed)
    for image in (renamed / "images").glob("*.jpg"):
        image.rename(image.with_name(f"{image.stem}_left.jpg"))
    argv = ["score", "smiyc", str(out), "--data", str(renamed), "--data-layout", "folder"]
    argv += ["--smiyc-dataset", "AnomalyTrack-all"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "0000_left.png" in err  # without it the stem keeps "_left"
    code, text, err = _run([*argv, "--image-suffix", "_left.jpg"], capsys)
    assert code == 0, err
    assert json.loads(text) == result


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--label-map", "0:0"], "--label-map is only used with --data-layout folder"),
        (["--image-suffix", ".jpg"], "--image-suffix is only used with --data-layout folder"),
        (["--data-layout", "folder"], "needs --smiyc-dataset"),
        (
            [
                "--data-layout",
                "folder",
                "--smiyc-dataset",
                "AnomalyTrack-all",
                "--track",
                "anomaly",
            ],
            "--track is not used",
        ),
    ],
)
def test_score_folder_flag_refusals(
    folders: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    match: str,
) -> None:
    argv = ["score", "smiyc", str(tmp_path), "--data", str(folders["anomaly"]), *extra]
    code, _, err = _run(argv, capsys)
    assert code == 2 and match in err


def test_score_folder_only_in_smiyc_format(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["score", "ade20k", str(tmp_path), "--data", str(folders["anomaly"])]
    code, _, err = _run([*argv, "--data-layout", "folder"], capsys)
    assert code == 2 and "smiyc format" in err


# --- the documentation page ----------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"


def test_every_field_the_page_names_exists() -> None:
    import dataclasses
    import re

    from gmmseg.recipes.schema import AnomalyConfig, DataConfig

    text = DOC.read_text()
    fields = {
        "data": {f.name for f in dataclasses.fields(DataConfig)},
        "anomaly": {f.name for f in dataclasses.fields(AnomalyConfig)},
    }
    named = set(re.findall(r"(?<![/\w.])(data|anomaly)\.([a-z_]+)\b(?!\.md)", text))
    assert len(named) >= 15
    for section, key in named:
        assert key in fields[section], f"docs/own-data.md names {section}.{key}"


def test_the_pages_python_block_runs(tmp_path: Path) -> None:
    block = DOC.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    code = block.replace('"/tmp/mine"', repr(str(tmp_path / "mine")))
    namespace: dict[str, object] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    assert namespace["sample"]["label"].dtype.is_floating_point is False  # type: ignore[index]


def test_predict_with_a_folder_checkpoint_uses_its_palette(
    folders: dict[str, Path], trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = next((folders["closed"] / "images" / "val").glob("*.jpg"))
    out = tmp_path / "pred"
    code, _, err = _run(
        ["predict", "--checkpoint", str(trained), str(image), "--out", str(out)], capsys
    )
    assert code == 0, err
    seg = np.array(Image.open(out / f"{image.stem}_seg.png"), dtype=np.int64)
    rgb = np.array(Image.open(image), dtype=np.int64)
    palette = np.array(json.loads((folders["closed"] / "classes.json").read_text())["palette"])
    # the overlay is half image, half class colour: every pixel's colour part is a palette entry
    part = 2 * seg - rgb
    distance = np.abs(part[:, :, None, :] - palette[None, None]).max(-1).min(-1)
    assert np.median(distance) <= 2


# --- a checkpoint carries its class list ---------------------------------------------------


def test_a_folder_checkpoint_needs_no_class_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_folder_fixture(tmp_path / "mine", ("road", "car", "sky"))
    classes = json.loads((root / "classes.json").read_text())
    work = tmp_path / "work"
    monkeypatch.chdir(tmp_path)  # the relative class file is found inside data.root
    argv = ["train", "demo", "--work-dir", str(work), "--no-progress", "--set"]
    argv += ["data.dataset=folder", f"data.root={root}", "data.class_file=classes.json", *TINY]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    saved = json.loads((work / "recipe.json").read_text())["data"]
    assert saved["class_file"] == "" and saved["classes"] == classes["classes"]
    assert saved["palette"] == [v for c in classes["palette"] for v in c]
    assert saved["void_colors"] == [v for c in classes["void_colors"] for v in c]
    checkpoint = next(work.glob("iter_*.pt"))
    # the file gone: the checkpoint alone rebuilds the model and predicts in class colours
    (root / "classes.json").rename(tmp_path / "elsewhere.json")
    model, recipe = load_trained(checkpoint)
    assert model.classifier.num_classes == 3
    assert folder_classes(recipe.data).palette == tuple(map(tuple, classes["palette"]))
    image = next((root / "images" / "val").glob("*.jpg"))
    code, _, err = _run(
        ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "p")],
        capsys,
    )
    assert code == 0, err
    # the same class file again: a resume is not "changed settings"
    (tmp_path / "elsewhere.json").rename(root / "classes.json")
    resume = [*argv[:2], "--resume", "auto", *argv[2:]]
    code, _, err = _run(resume, capsys)
    assert code == 0, err
    # an edited class file is named as the changed setting, not a state-dict mismatch
    classes["classes"][2] = "tree"
    (root / "classes.json").write_text(json.dumps(classes))
    code, _, err = _run(resume, capsys)
    assert code == 2 and "data.classes" in err and "'tree'" in err, err


def test_train_recipe_gives_the_model_back_with_its_own_checks(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gmmseg.recipes.run as run

    built = run.build_model
    during: list[bool] = []

    def build_unchecked(*args: Any, **kwargs: Any) -> Any:
        model = built(*args, **kwargs)
        model.classifier.validate = False
        # what the classifier checks while training (on this CPU: on)
        model.register_forward_pre_hook(lambda m, a: during.append(m.classifier.validate))
        return model

    monkeypatch.setattr(run, "build_model", build_unchecked)
    recipe = apply_overrides(
        get_recipe("demo"),
        ["data.dataset=folder", f"data.root={folders['closed']}", "data.classes=a,b,c", *TINY],
    )
    model, _ = run.train_recipe(recipe, None, progress=False, tiny=True)
    assert during and all(during)
    assert model.classifier.validate is False
