"""Hugging Face SegformerForSemanticSegmentation (save_pretrained folder, .safetensors, .bin) and
NVlabs SegFormer files through ``load_trained``, against transformers' model itself."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

from gmmseg.recipes import get_recipe, load_trained
from interop_helpers import hf_mit_config, hf_mit_to_nvlabs, max_rel, randomise_module, set_mit_eps

transformers = pytest.importorskip("transformers")

RECIPE = "segformer_b5_cityscapes_softmax"
TINY_MIT = ((8, 16, 24, 32), (1, 1, 1, 1), (1, 1, 1, 1))


def hf_segformer(seed: int = 0, width: int = 16, mit: tuple = TINY_MIT) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = hf_mit_config(transformers, *mit, decoder_hidden_size=width, num_labels=19)
    model = transformers.SegformerForSemanticSegmentation(cfg)
    return randomise_module(model, seed).eval()


def hf_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).logits


def compare(model: torch.nn.Module, hf: torch.nn.Module) -> tuple[float, float]:
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        err32 = max_rel(model(x).logits, hf_logits(hf, x))
        hf64 = copy.deepcopy(hf).double()
        err64 = max_rel(model.double()(x.double()).logits, hf_logits(hf64, x.double()))
    return err32, err64


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    hf = hf_segformer()
    st = tmp_path_factory.mktemp("hf_st")
    hf.save_pretrained(st)
    binary = tmp_path_factory.mktemp("hf_bin")
    hf.save_pretrained(binary, safe_serialization=False)
    if not (binary / "pytorch_model.bin").is_file():
        # transformers 5 writes safetensors only; 4.x wrote the same tensors, same names, with
        # torch.save (the published .bin files)
        from safetensors.torch import load_file

        (binary / "model.safetensors").unlink()
        torch.save(load_file(str(st / "model.safetensors")), binary / "pytorch_model.bin")
    return st, binary, hf


@pytest.mark.parametrize("form", ["folder", "safetensors", "bin"])
def test_hugging_face_files_match_transformers(
    saved: tuple[Path, Path, torch.nn.Module], form: str
) -> None:
    st, binary, hf = saved
    path = {"folder": st, "safetensors": st / "model.safetensors"}.get(
        form, binary / "pytorch_model.bin"
    )
    model, recipe = load_trained(path, get_recipe(RECIPE), tiny=True)
    assert recipe.model.mit_norm == "hf"
    assert recipe.model.segformer_projection == "linear"
    err32, err64 = compare(model, hf)
    assert err32 <= 2e-5, err32
    assert err64 <= 1e-10, err64


def nvlabs_state(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """NVlabs SegFormer's segmentation layout, from a transformers model's weights."""
    sd = hf.state_dict()
    out = {
        f"backbone.{k}": v
        for k, v in hf_mit_to_nvlabs(
            {k.removeprefix("segformer."): v for k, v in sd.items() if k.startswith("segformer.")}
        ).items()
    }
    for k, v in sd.items():
        if not k.startswith("decode_head."):
            continue
        rest = k.removeprefix("decode_head.")
        m = re.fullmatch(r"linear_(?:c|projections)\.(\d)\.proj\.(.*)", rest)
        if m:
            out[f"decode_head.linear_c{int(m.group(1)) + 1}.proj.{m.group(2)}"] = v
        elif rest == "linear_fuse.weight":
            out["decode_head.linear_fuse.conv.weight"] = v
        elif rest.startswith("batch_norm."):
            out["decode_head.linear_fuse.bn." + rest.removeprefix("batch_norm.")] = v
        elif rest.startswith("classifier."):
            out["decode_head.linear_pred." + rest.removeprefix("classifier.")] = v
        else:
            raise AssertionError(k)
    # mmseg 0.x's BaseDecodeHead creates conv_seg (channels=128 in NVlabs' configs); unused
    out["decode_head.conv_seg.weight"] = torch.randn(19, 128, 1, 1)
    out["decode_head.conv_seg.bias"] = torch.zeros(19)
    return out


def test_nvlabs_file_matches_its_forward(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hf = hf_segformer(seed=1)
    set_mit_eps(hf, 1e-6, 1e-5)  # NVlabs: 1e-6 in blocks/stage norms, 1e-5 in embeddings/sr
    path = tmp_path / "segformer.b0.512x1024.city.160k.pth"
    torch.save(
        {"meta": {"CLASSES": tuple(range(19)), "iter": 160000}, "state_dict": nvlabs_state(hf)},
        path,
    )
    with caplog.at_level("INFO", logger="gmmseg"):
        model, recipe = load_trained(path, get_recipe(RECIPE), tiny=True)
    assert "layout 'nvlabs'" in caplog.text and "decode_head.conv_seg.weight" in caplog.text
    assert recipe.model.mit_norm == "nvlabs"
    assert recipe.model.segformer_projection == "linear"
    err32, err64 = compare(model, hf)
    assert err32 <= 2e-5, err32
    assert err64 <= 1e-10, err64


def test_layout_can_be_named(saved: tuple[Path, Path, torch.nn.Module]) -> None:
    st, _, _ = saved
    load_trained(st, get_recipe(RECIPE), tiny=True, layout="hf")
    with pytest.raises(
        ValueError,
        match=r"^the checkpoint has no backbone tensors under 'backbone\.': it is not a 'nvlabs' "
        r"file \(its keys look like the 'hf' layout\)$",
    ):
        load_trained(st, get_recipe(RECIPE), tiny=True, layout="nvlabs")


def test_full_size_b0_detects_backbone_and_decoder_width(tmp_path: Path) -> None:
    """A real MiT-B0 file (decoder 256) into the B5 recipe: refused naming the backbone; with
    model.backbone=mit_b0 the decoder width is taken from the file."""
    from gmmseg.recipes import apply_overrides

    b0 = ((32, 64, 160, 256), (2, 2, 2, 2), (1, 2, 5, 8))
    hf = hf_segformer(seed=2, width=256, mit=b0)
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"mit_b0 backbone .* use --set model.backbone=mit_b0"):
        load_trained(tmp_path, get_recipe(RECIPE))
    recipe = apply_overrides(get_recipe(RECIPE), ["model.backbone=mit_b0"])
    model, fitted = load_trained(tmp_path, recipe)
    assert fitted.model.decoder_channels == 256
    err32, _ = compare(model, hf)
    assert err32 <= 2e-5, err32


@pytest.mark.parametrize(
    ("layout", "backbone", "found"),
    [
        # transformers' Swin names under segformer.
        ("hf", {"segformer.embeddings.patch_embeddings.projection.weight": (8, 3, 4, 4)}, "Swin"),
        # mmsegmentation's ResNet-V1c under backbone. (before: the converter's internal
        # "source must be 'torchvision', 'timm', 'mmseg' or 'gmmseg' ..., got 'official'")
        ("nvlabs", {"backbone.stem.0.weight": (32, 3, 3, 3)}, "ResNet"),
    ],
)
def test_a_segformer_file_without_a_mit_is_refused(
    saved: tuple[Path, Path, torch.nn.Module],
    tmp_path: Path,
    layout: str,
    backbone: dict[str, tuple[int, ...]],
    found: str,
) -> None:
    _, _, hf = saved
    head = nvlabs_state(hf) if layout == "nvlabs" else hf.state_dict()
    sd = {k: v for k, v in head.items() if k.startswith("decode_head.")}
    sd.update({k: torch.zeros(shape) for k, shape in backbone.items()})
    path = tmp_path / "other_backbone.pth"
    torch.save({"state_dict": sd}, path)
    for named in ("auto", layout):
        with pytest.raises(
            ValueError,
            match=rf"^a '{layout}' SegFormer file must hold a MiT backbone, found a {found}$",
        ):
            load_trained(path, get_recipe(RECIPE), tiny=True, layout=named)  # type: ignore[arg-type]


def test_an_image_classification_model_is_not_called_a_gmmseg_state_dict(
    saved: tuple[Path, Path, torch.nn.Module], tmp_path: Path
) -> None:
    """SegformerForImageClassification (Hugging Face's ImageNet MiT files: segformer.* and a
    top-level classifier.*); before, detection called it a gmmseg state dict."""
    _, _, hf = saved
    transformers.SegformerForImageClassification(hf.config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"^unknown checkpoint layout \(first keys") as info:
        load_trained(tmp_path, get_recipe(RECIPE), tiny=True)
    assert "\n" not in str(info.value)
    with pytest.raises(
        ValueError,
        match=r"^the checkpoint lacks decode_head\.classifier\.weight, which every 'hf' file holds",
    ):
        load_trained(tmp_path, get_recipe(RECIPE), tiny=True, layout="hf")


@pytest.mark.parametrize("index", ["model.safetensors.index.json", "pytorch_model.bin.index.json"])
def test_sharded_folders_read_as_one_file(
    saved: tuple[Path, Path, torch.nn.Module], tmp_path: Path, index: str
) -> None:
    """save_pretrained(max_shard_size=...): an index naming each tensor's shard."""
    import json

    from gmmseg.interop import read_checkpoint

    st, _, hf = saved
    whole = read_checkpoint(st).tensors
    folder = tmp_path / "sharded"
    if index.startswith("model."):
        hf.save_pretrained(folder, max_shard_size="20KB")  # transformers' own sharding
    else:  # transformers 4.x's torch.save shards (5.x writes safetensors only)
        folder.mkdir()
        (folder / "config.json").write_text((st / "config.json").read_text())
        names = sorted(whole)
        parts = [names[: len(names) // 2], names[len(names) // 2 :]]
        weight_map = {}
        for i, part in enumerate(parts, 1):
            shard = f"pytorch_model-{i:05d}-of-00002.bin"
            torch.save({k: whole[k] for k in part}, folder / shard)
            weight_map.update(dict.fromkeys(part, shard))
        (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shards = set(json.loads((folder / index).read_text())["weight_map"].values())
    assert len(shards) > 1
    got = read_checkpoint(folder)
    assert got.meta["model_type"] == "segformer"
    assert got.mapped == index.startswith("pytorch_model")  # torch.save shards are mapped
    assert sorted(got.tensors) == sorted(whole)
    for k, v in whole.items():
        assert torch.equal(got.tensors[k], v), k
    model, _ = load_trained(folder, get_recipe(RECIPE), tiny=True)
    err32, _ = compare(model, hf)
    assert err32 <= 2e-5, err32
    (folder / sorted(shards)[-1]).unlink()
    with pytest.raises(FileNotFoundError, match=sorted(shards)[-1]):
        read_checkpoint(folder)
