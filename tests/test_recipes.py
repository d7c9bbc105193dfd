"""Recipes: the paper's settings, overrides with type checking, serialisation, dry runs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from gmmseg.recipes import (
    RECIPES,
    OverrideError,
    Recipe,
    apply_overrides,
    build_model,
    from_dict,
    get_recipe,
    list_recipes,
)
from gmmseg.recipes.build import build_anomaly_datasets, build_train_data, num_classes_of
from gmmseg.recipes.overrides import parse_value

pytest.importorskip("skimage")


def test_catalogue_holds_the_paper_configurations() -> None:
    names = list_recipes()
    for required in (
        "segformer_b5_cityscapes_gmm",
        "segformer_b5_ade20k_gmm",
        "segformer_b5_cocostuff10k_gmm",
        "deeplabv3plus_r101_cityscapes_gmm",
        "upernet_swin_b_ade20k_gmm",
        "anomaly_segformer_b5_cityscapes",
        "demo",
    ):
        assert required in names
    city = get_recipe("segformer_b5_cityscapes_gmm")
    assert (city.data.crop_size, city.train.iters, city.data.batch_size) == ((768, 768), 80000, 16)
    assert (city.eval.mode, city.eval.crop_size, city.eval.stride) == (
        "slide",
        (768, 768),
        (512, 512),
    )
    ade = get_recipe("segformer_b5_ade20k_gmm")
    assert (ade.data.crop_size, ade.train.iters, ade.model.gmm.num_components) == (
        (512, 512),
        160000,
        8,
    )
    coco = get_recipe("segformer_b5_cocostuff10k_gmm")
    assert (coco.data.dataset, coco.train.iters, coco.model.gmm.num_components) == (
        "coco_stuff10k",
        80000,
        5,
    )
    assert coco.paper_result == "44.81 mIoU"
    assert city.model.gmm.mean_momentum == 0.999 and city.model.gmm.update_interval == 5
    anomaly = get_recipe("anomaly_segformer_b5_cityscapes").anomaly
    assert anomaly is not None and anomaly.fs_static_version == 3
    assert set(anomaly.datasets) == {
        "fishyscapes_lostandfound",
        "fishyscapes_static",
        "road_anomaly",
        "smiyc_anomaly_track",
        "smiyc_obstacle_track",
    }


@pytest.mark.parametrize("name", [n for n in RECIPES if RECIPES[n].twin])
def test_twins_differ_only_in_the_classifier(name: str) -> None:
    a = get_recipe(name)
    b = get_recipe(a.twin)
    assert b.twin == name or a.name.startswith("anomaly_")
    assert {a.model.head, b.model.head} == {"gmm", "linear"}
    strip = {"name": "", "description": "", "paper_result": "", "twin": "", "anomaly": None}
    same_model = dataclasses.replace(b.model, head=a.model.head, gmm=a.model.gmm)
    assert dataclasses.replace(a, **strip) == dataclasses.replace(b, model=same_model, **strip)


@pytest.mark.parametrize("name", list(RECIPES))
def test_models_build_with_the_right_classes(name: str) -> None:
    recipe = get_recipe(name)
    with torch.device("meta"):
        model = build_model(recipe.model, num_classes_of(recipe.data))
    assert (
        model.num_classes
        == {"cityscapes": 19, "ade20k": 150, "coco_stuff10k": 171, "demo": 12}[recipe.data.dataset]
    )


@pytest.mark.parametrize("name", list(RECIPES))
def test_serialisation_round_trip(name: str) -> None:
    recipe = get_recipe(name)
    data = json.loads(json.dumps(recipe.to_dict()))
    assert from_dict(Recipe, data) == recipe


def test_overrides() -> None:
    r = apply_overrides(
        get_recipe("segformer_b5_cityscapes_gmm"),
        [
            "optim.lr=1e-4",
            "data.root=/data/cityscapes",
            "data.crop_size=512,1024",
            "eval.scales=0.5,1.0,1.5",
            "eval.flip=yes",
            "model.gmm.num_components=3",
            "optim.grad_clip=none",
            "train.amp=bf16",
            "model.output_stride=16",
        ],
    )
    assert r.optim.lr == 1e-4 and isinstance(r.optim.lr, float)
    assert r.data.root == "/data/cityscapes"
    assert r.data.crop_size == (512, 1024)
    assert r.eval.scales == (0.5, 1.0, 1.5) and r.eval.flip is True
    assert r.model.gmm.num_components == 3 and r.optim.grad_clip is None
    assert r.train.amp == "bf16" and r.model.output_stride == 16
    # the original is frozen and unchanged
    assert get_recipe("segformer_b5_cityscapes_gmm").optim.lr == 6e-5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", r"unknown key 'lrr'; expected one of \['name', 'lr'"),
        ("nope.lr=1", "unknown key 'nope'"),
        ("optim.lr=fast", "expected a number, got 'fast'"),
        ("train.iters=1.5", "expected an integer"),
        ("train.amp=fp8", "expected one of 'none' | 'bf16' | 'fp16'"),
        ("data.crop_size=512", "expected 2 comma-separated values"),
        ("eval.flip=maybe", "expected a boolean"),
        ("model.gmm=3", "is a section"),
        ("optim.lr", "expected key=value"),
        ("optim.lr.x=1", "is not a section"),
    ],
)
def test_override_errors(override: str, message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        apply_overrides(get_recipe("demo"), [override])


def test_parse_value_optional_and_nested() -> None:
    assert parse_value("none", int | None) is None
    assert parse_value("3", int | None) == 3
    assert parse_value("1,2", tuple[int, ...]) == (1, 2)
    assert parse_value("", tuple[int, ...]) == ()


def test_anomaly_section_can_be_set_on_a_recipe_without_one() -> None:
    r = apply_overrides(get_recipe("segformer_b5_cityscapes_gmm"), ["anomaly.road_anomaly_root=/x"])
    assert r.anomaly is not None and r.anomaly.road_anomaly_root == "/x"


def test_missing_roots_are_named() -> None:
    with pytest.raises(ValueError, match=r"data.root is not set: pass --set data.root="):
        build_train_data(get_recipe("segformer_b5_cityscapes_gmm").data)
    with pytest.raises(ValueError, match=r"anomaly\.fs_laf_root is not set"):
        build_anomaly_datasets(get_recipe("anomaly_segformer_b5_cityscapes"))
    with pytest.raises(ValueError, match="has no anomaly section"):
        build_anomaly_datasets(get_recipe("segformer_b5_ade20k_gmm"))


def test_unknown_recipe() -> None:
    with pytest.raises(ValueError, match=r"unknown recipe 'segformer'; expected one of"):
        get_recipe("segformer")


def test_dry_run_keeps_the_structure(tmp_path: Path) -> None:
    from gmmseg.recipes import dry_run_recipe

    recipe = get_recipe("segformer_b5_cityscapes_gmm")
    dry = dry_run_recipe(recipe, tmp_path)
    assert dry.model == recipe.model and dry.optim.name == recipe.optim.name
    assert dry.eval.mode == "slide" and dry.train.iters == 2
    assert Path(dry.data.root, "leftImg8bit").is_dir()


def _generated_table(path: Path) -> str:
    text = path.read_text()
    start = text.index("<!-- recipes-table")
    start = text.index("\n", start) + 1
    end = text.index("<!-- /recipes-table -->")
    return text[start:end].strip()


@pytest.mark.parametrize("doc", ["docs/recipes.md", "README.md"])
def test_recipe_tables_in_the_docs_are_current(doc: str) -> None:
    from gmmseg.recipes.catalog import recipes_markdown

    root = Path(__file__).resolve().parents[1]
    assert _generated_table(root / doc) == recipes_markdown()


def test_train_loader_batches_do_not_depend_on_workers(tmp_path: Path) -> None:
    """The stream with 2 workers gives the batches of the in-process one."""
    from gmmseg.engine.stream import TrainStream
    from gmmseg.recipes import dry_run_recipe
    from gmmseg.recipes.run import _train_loader

    recipe = dry_run_recipe(get_recipe("segformer_b5_ade20k_gmm"), tmp_path)
    train_set, transform = build_train_data(recipe.data)

    def batches(workers: int) -> list[dict[str, object]]:
        stream = TrainStream(train_set, seed=5, order="shuffle", num_classes=150)
        loader = _train_loader(train_set, transform, stream, 2, workers, False, seed=5)
        it = iter(loader)
        return [next(it) for _ in range(3)]

    for got, want in zip(batches(2), batches(0), strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert isinstance(got[key], torch.Tensor) and got[key].dtype == value.dtype
                assert torch.equal(got[key], value), key  # type: ignore[arg-type]
            else:
                assert got[key] == value, key


# ------------------------------------------------------------------ faithful architecture options


def test_paper_gmm_recipes_use_the_official_dropout_and_the_demo_does_not() -> None:
    gmm_recipes = [r for r in RECIPES.values() if r.model.head == "gmm"]
    assert len(gmm_recipes) >= 8
    for r in gmm_recipes:
        assert r.model.gmm.dropout == (0.0 if r.name == "demo" else 0.1), r.name
    with torch.device("meta"):
        city = build_model(get_recipe("segformer_b5_cityscapes_gmm").model, 19)
        demo = build_model(get_recipe("demo").model, 12)
    assert city.classifier.dropout.p == 0.1 and demo.classifier.dropout.p == 0.0


@pytest.mark.parametrize(
    ("mit_norm", "eps"), [("nvlabs", (1e-6, 1e-5)), ("mmseg", (1e-6, 1e-6)), ("hf", (1e-5, 1e-5))]
)
@pytest.mark.parametrize("tiny", [False, True])
def test_mit_norm_sets_both_epsilons(mit_norm: str, eps: tuple[float, float], tiny: bool) -> None:
    from torch import nn

    r = apply_overrides(get_recipe("segformer_b5_cityscapes_gmm"), [f"model.mit_norm={mit_norm}"])
    with torch.device("meta"):
        model = build_model(r.model, 19, tiny=tiny)
    norms = {n: m.eps for n, m in model.backbone.named_modules() if isinstance(m, nn.LayerNorm)}
    embed = {e for n, e in norms.items() if n.endswith(("patch_embed.norm", "sr_norm"))}
    other = {e for n, e in norms.items() if not n.endswith(("patch_embed.norm", "sr_norm"))}
    assert (other, embed) == ({eps[0]}, {eps[1]})


def test_mit_norm_is_ignored_by_other_backbones() -> None:
    r = apply_overrides(get_recipe("deeplabv3plus_r101_cityscapes_gmm"), ["model.mit_norm=hf"])
    with torch.device("meta"):
        build_model(r.model, 19)
    build_model(r.model, 19, tiny=True)


def test_segformer_projection_and_align_corners_reach_the_decoder() -> None:
    from gmmseg.heads.decoders import LinearProjection

    r = apply_overrides(
        get_recipe("segformer_b5_cityscapes_gmm"),
        ["model.segformer_projection=linear", "model.align_corners=true"],
    )
    model = build_model(r.model, 19, tiny=True)
    assert all(isinstance(p, LinearProjection) for p in model.decoder.projections)  # type: ignore[union-attr]
    assert model.decoder.align_corners is True
    assert model.classifier.align_corners is True and model.align_corners is True
    default = build_model(get_recipe("segformer_b5_cityscapes_gmm").model, 19, tiny=True)
    assert default.decoder.projection == "conv" and default.decoder.align_corners is False
    for name in ("upernet_swin_b_ade20k_gmm", "deeplabv3plus_r101_ade20k_gmm"):
        r = apply_overrides(get_recipe(name), ["model.align_corners=true"])
        assert build_model(r.model, 150, tiny=True).decoder.align_corners is True


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "mit_norm",
            "timm",
            r"model\.mit_norm must be one of \['hf', 'mmseg', 'nvlabs'\], got 'timm'",
        ),
        (
            "segformer_projection",
            "mlp",
            r"model\.segformer_projection must be 'conv' or 'linear', got 'mlp'",
        ),
        ("gmm", 1.0, r"model\.gmm\.dropout must be a float in \[0, 1\), got 1\.0"),
    ],
)
def test_bad_architecture_options_are_named(field: str, value: object, message: str) -> None:
    model = get_recipe("segformer_b5_cityscapes_gmm").model
    if field == "gmm":
        model = dataclasses.replace(model, gmm=dataclasses.replace(model.gmm, dropout=value))
    else:
        model = dataclasses.replace(model, **{field: value})
    with pytest.raises(ValueError, match=message):
        build_model(model, 19, tiny=True)
    if field != "gmm":  # the command line refuses unknown names before anything is built
        with pytest.raises(OverrideError, match="expected one of"):
            apply_overrides(get_recipe("demo"), [f"model.{field}={value}"])


# ------------------------------------------------------------------ the GMM section = head config


def test_the_gmm_section_is_the_heads_config_passed_as_is() -> None:
    from gmmseg.engine import InferenceSettings
    from gmmseg.heads import GMMClassifier, GMMHeadConfig, ReleaseFixes
    from gmmseg.recipes import EvalConfig, GMMConfig

    assert EvalConfig is InferenceSettings
    assert issubclass(GMMConfig, GMMHeadConfig)
    head_fields = {f.name for f in dataclasses.fields(GMMHeadConfig)}
    recipe_fields = {f.name for f in dataclasses.fields(GMMConfig)}
    assert recipe_fields - head_fields == {"init_means", "init_iter", "init_batches"}
    recipe = get_recipe("demo")
    assert recipe.model.gmm.fixes == dataclasses.replace(ReleaseFixes.all(), persist_memory=True)
    model = build_model(recipe.model, num_classes_of(recipe.data))
    assert isinstance(model.classifier, GMMClassifier)
    assert model.classifier.config == recipe.model.gmm
    assert model.classifier.count_only_filled and model.classifier.memory.persistent  # type: ignore[union-attr]
    tiny = build_model(recipe.model, num_classes_of(recipe.data), tiny=True).classifier
    assert tiny.config == dataclasses.replace(recipe.model.gmm, embed_dim=8, memory_size=64)  # type: ignore[union-attr]


def test_fixes_are_set_by_their_own_keys() -> None:
    r = apply_overrides(
        get_recipe("segformer_b5_cityscapes_gmm"),
        ["model.gmm.fixes.count_only_filled=true", "model.gmm.fixes.loss_average=valid"],
    )
    fixes = r.model.gmm.fixes
    assert (fixes.count_only_filled, fixes.loss_average) == (True, "valid")
    assert (fixes.separate_component_ignore, fixes.persist_memory) == (False, True)
    data = json.loads(json.dumps(r.to_dict()))
    assert data["model"]["gmm"]["fixes"]["loss_average"] == "valid"
    assert from_dict(Recipe, data) == r


def test_keys_of_earlier_versions_still_work_with_a_deprecation_warning() -> None:
    from gmmseg.heads import ReleaseFixes

    base = get_recipe("segformer_b5_cityscapes_gmm")
    with pytest.warns(DeprecationWarning, match="model.gmm.faithful is deprecated"):
        r = apply_overrides(base, ["model.gmm.faithful=false"])
    assert r.model.gmm.fixes == ReleaseFixes.all()
    with pytest.warns(DeprecationWarning, match="use model.gmm.fixes.persist_memory"):
        r = apply_overrides(r, ["model.gmm.persist_memory=true"])
    assert r.model.gmm.fixes == dataclasses.replace(ReleaseFixes.all(), persist_memory=True)
    with pytest.raises(OverrideError, match="expected a boolean"):
        apply_overrides(base, ["model.gmm.faithful=maybe"])
    # a recipe file written before the fixes were grouped (as the demo's metrics.json holds)
    old = json.loads(json.dumps(base.to_dict()))
    del old["model"]["gmm"]["fixes"]
    old["model"]["gmm"].update(persist_memory=True, faithful=False)  # persist_memory comes first
    with pytest.warns(DeprecationWarning, match="model.gmm.faithful is deprecated"):
        loaded = from_dict(Recipe, old)
    assert loaded.model.gmm.fixes == dataclasses.replace(ReleaseFixes.all(), persist_memory=True)
    old["model"]["gmm"].update(persist_memory=None, faithful=True)
    with pytest.warns(DeprecationWarning, match="model.gmm.faithful is deprecated"):
        assert from_dict(Recipe, old) == base


@pytest.mark.parametrize("reverse", [False, True])
def test_an_explicit_fix_wins_over_faithful_whatever_the_order(reverse: bool) -> None:
    """``faithful`` is a preset applied first; fixes given alongside it (new or old keys) win."""
    from gmmseg.heads import ReleaseFixes

    base = get_recipe("segformer_b5_cityscapes_gmm")
    sets = ["model.gmm.fixes.persist_memory=false", "model.gmm.faithful=true"]
    with pytest.warns(DeprecationWarning, match="model.gmm.faithful is deprecated"):
        r = apply_overrides(base, sets[::-1] if reverse else sets)
    assert r.model.gmm.fixes == ReleaseFixes(persist_memory=False)
    sets = ["model.gmm.persist_memory=true", "model.gmm.faithful=false"]
    with (
        pytest.warns(DeprecationWarning, match="model.gmm.faithful is deprecated"),
        pytest.warns(DeprecationWarning, match="use model.gmm.fixes.persist_memory"),
    ):
        r = apply_overrides(base, sets[::-1] if reverse else sets)
    assert r.model.gmm.fixes == dataclasses.replace(ReleaseFixes.all(), persist_memory=True)
    # a recipe dict holding both: the preset, then the old persist_memory, then ``fixes``
    data = json.loads(json.dumps(base.to_dict()))
    gmm = data["model"]["gmm"]
    gmm["fixes"] = {"persist_memory": False}
    items = [("faithful", True), ("persist_memory", True)]
    gmm.update(items[::-1] if reverse else items)

    def both() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(pytest.warns(DeprecationWarning, match="faithful is deprecated"))
        stack.enter_context(pytest.warns(DeprecationWarning, match="use model.gmm.fixes.persist"))
        return stack

    with both():
        assert from_dict(Recipe, data).model.gmm.fixes == ReleaseFixes(persist_memory=False)
    del gmm["fixes"]
    with both():
        assert from_dict(Recipe, data).model.gmm.fixes == ReleaseFixes()
    del gmm["persist_memory"]
    gmm["faithful"] = False
    gmm["fixes"] = dataclasses.asdict(ReleaseFixes(count_only_filled=True))  # a full section
    with pytest.warns(DeprecationWarning, match="model.gmm.faithful is deprecated"):
        loaded = from_dict(Recipe, data)
    assert loaded.model.gmm.fixes == ReleaseFixes(count_only_filled=True)
    assert loaded.model.gmm.num_components == base.model.gmm.num_components


def test_a_fix_is_a_bool_on_the_command_line_and_in_a_recipe_file() -> None:
    from gmmseg.heads import ReleaseFixes

    base = get_recipe("segformer_b5_cityscapes_gmm")
    r = apply_overrides(base, ["model.gmm.fixes.persist_memory=false"])
    assert r.model.gmm.fixes == ReleaseFixes(persist_memory=False)
    data = json.loads(json.dumps(r.to_dict()))
    assert from_dict(Recipe, data) == r
    with pytest.raises(OverrideError, match="persist_memory=none: expected a boolean"):
        apply_overrides(base, ["model.gmm.fixes.persist_memory=none"])
    data["model"]["gmm"]["fixes"]["persist_memory"] = None
    with pytest.raises(ValueError, match="persist_memory: expected True or False, received None"):
        from_dict(Recipe, data)


def test_resuming_a_run_whose_recipe_has_the_old_gmm_keys_changes_nothing() -> None:
    from gmmseg.recipes.run import _changed_settings

    demo = get_recipe("demo")
    old = json.loads(json.dumps(demo.to_dict()))  # as a checkpoint of an earlier version holds it
    del old["model"]["gmm"]["fixes"]
    old["model"]["gmm"].update(faithful=False, persist_memory=True)
    with pytest.warns(DeprecationWarning, match="model.gmm.faithful is deprecated"):
        assert _changed_settings({"recipe": old}, demo, tiny=False, allow=False) == {}
    old["model"]["gmm"]["persist_memory"] = False
    with (
        pytest.warns(DeprecationWarning, match="model.gmm.faithful is deprecated"),
        pytest.raises(ValueError, match=r"model\.gmm\.fixes\.persist_memory: False -> True"),
    ):
        _changed_settings({"recipe": old}, demo, tiny=False, allow=False)
