"""Full-size model-zoo files (MiT-B0…B5, ResNet-V1c-50/101, Swin-T/S/B with windows 7 and 12):
the backbone variant, the Swin window and the decoder width are read from the file, and a recipe
that builds another backbone is refused with the ``--set`` that fixes it.

The files hold only shapes: the backbones are built on the meta device (transformers' MiT and Swin,
and ResNet-V1c shapes written from mmsegmentation's architecture), so no weights are allocated,
and such a file is read, converted and refused exactly as a real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gmmseg.heads import DeepLabV3PlusDecoder, SegFormerDecoder, UPerNetDecoder
from gmmseg.interop import convert_checkpoint
from gmmseg.recipes import apply_overrides, get_recipe, load_trained
from gmmseg.recipes._foreign import fit_recipe
from interop_helpers import add_prefix, gmmseg_decoder_to_mmseg, hf_mit_config, hf_mit_to_mmseg

transformers = pytest.importorskip("transformers")

from test_interop_mmseg import hf_swin_to_mmseg  # noqa: E402

Sd = dict[str, torch.Tensor]
META = torch.device("meta")


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, device=META, dtype=dtype)


def resnet_v1c_shapes(blocks: tuple[int, ...]) -> Sd:
    """mmsegmentation ResNetV1c (deep stem 32-32-64, bottlenecks of width 64·2^i, expansion 4)."""
    sd: Sd = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        sd[f"{name}.weight"] = meta(out, inp, k, k)

    def bn(name: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{name}.{p}"] = meta(c)
        sd[f"{name}.num_batches_tracked"] = meta(dtype=torch.int64)

    for conv_i, bn_i, out, inp in ((0, 1, 32, 3), (3, 4, 32, 32), (6, 7, 64, 32)):
        conv(f"stem.{conv_i}", out, inp, 3)
        bn(f"stem.{bn_i}", out)
    inp = 64
    for i, n in enumerate(blocks):
        planes = 64 * 2**i
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            conv(f"{p}.conv1", planes, inp, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            if j == 0:
                conv(f"{p}.downsample.0", planes * 4, inp, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inp = planes * 4
    return sd


def mmseg_shapes(backbone: Sd, kind: str, decoder: torch.nn.Module, classes: int = 19) -> Sd:
    """An mmsegmentation file's state dict: backbone + decode head (+ conv_seg)."""
    sd = add_prefix(backbone, "backbone.")
    sd.update(add_prefix(gmmseg_decoder_to_mmseg(kind, decoder.state_dict()), "decode_head."))
    width = int(decoder.out_channels)  # type: ignore[arg-type]
    sd["decode_head.conv_seg.weight"] = meta(classes, width, 1, 1)
    sd["decode_head.conv_seg.bias"] = meta(classes)
    return sd


def save(path: Path, sd: Sd) -> Path:
    torch.save({"meta": {"CLASSES": tuple(range(19))}, "state_dict": sd}, path)
    return path


# ---------------------------------------------------------------------------------- ResNet-V1c


def deeplab_file(blocks: tuple[int, ...]) -> Sd:
    with META:
        decoder = DeepLabV3PlusDecoder((256, 512, 1024, 2048), (4, 8, 8, 8), channels=512)
    return mmseg_shapes(resnet_v1c_shapes(blocks), "deeplabv3plus", decoder)


@pytest.mark.parametrize(
    ("blocks", "name"), [((3, 4, 6, 3), "resnet50_v1c"), ((3, 4, 23, 3), "resnet101_v1c")]
)
def test_resnet_variant_and_decoder_width_are_read(blocks: tuple[int, ...], name: str) -> None:
    model = convert_checkpoint(deeplab_file(blocks)).model
    assert (model.layout, model.backbone, model.backbone_family) == ("mmseg", name, "resnet")
    assert (model.decoder, model.decoder_channels, model.head) == ("deeplabv3plus", 512, "linear")
    assert model.num_classes == 19 and model.window_size is None
    recipe = apply_overrides(
        get_recipe("deeplabv3plus_r101_cityscapes_softmax"), [f"model.backbone={name}"]
    )
    fitted, settings = fit_recipe(recipe, model)
    assert fitted.model.backbone == name and settings == {}


def test_resnet50_file_into_the_r101_recipe_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path / "deeplabv3plus_r50-d8.pth", deeplab_file((3, 4, 6, 3)))
    with pytest.raises(
        ValueError,
        match=r"the checkpoint holds a resnet50_v1c backbone \(ResNet blocks \(3, 4, 6, 3\), "
        r"base width 64, deep stem\), recipe 'deeplabv3plus_r101_cityscapes_softmax' builds "
        r"resnet101_v1c: use --set model.backbone=resnet50_v1c$",
    ):
        load_trained(path, get_recipe("deeplabv3plus_r101_cityscapes_softmax"))


# ---------------------------------------------------------------------------------------- Swin

SWIN = {
    "swin_tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}


def upernet_swin_file(name: str, window: int) -> Sd:
    dim, depths, heads = SWIN[name]
    cfg = transformers.SwinConfig(
        embed_dim=dim,
        depths=list(depths),
        num_heads=list(heads),
        window_size=window,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    with META:
        backbone = hf_swin_to_mmseg(transformers.SwinBackbone(cfg).state_dict())
        decoder = UPerNetDecoder([dim * 2**i for i in range(4)], (4, 8, 16, 32), channels=512)
    return mmseg_shapes(backbone, "upernet", decoder)


@pytest.mark.parametrize(
    ("name", "window"),
    [("swin_tiny", 7), ("swin_small", 7), ("swin_small", 12), ("swin_base", 7), ("swin_base", 12)],
)
def test_swin_variant_window_and_decoder_width_are_read(name: str, window: int) -> None:
    model = convert_checkpoint(upernet_swin_file(name, window)).model
    assert (model.backbone, model.backbone_family, model.window_size) == (name, "swin", window)
    assert (model.decoder, model.decoder_channels) == ("upernet", 512)
    recipe = apply_overrides(
        get_recipe("upernet_swin_b_cityscapes_softmax"), [f"model.backbone={name}"]
    )
    fitted, settings = fit_recipe(recipe, model)
    assert fitted.model.window_size == window  # the recipe's is 12
    assert settings == ({} if window == 12 else {"model.window_size": window})


def test_swin_tiny_file_into_the_swin_base_recipe_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path / "upernet_swin_tiny.pth", upernet_swin_file("swin_tiny", 7))
    with pytest.raises(
        ValueError,
        match=r"the checkpoint holds a swin_tiny backbone \(Swin width 96, depths \(2, 2, 6, 2\), "
        r"window 7\), recipe 'upernet_swin_b_cityscapes_softmax' builds swin_base: use --set "
        r"model.backbone=swin_tiny$",
    ):
        load_trained(path, get_recipe("upernet_swin_b_cityscapes_softmax"))


# ----------------------------------------------------------------------------------------- MiT

# SegFormer's published MiT-B0…B5: widths, depths; heads (1, 2, 5, 8) throughout; mmsegmentation's
# SegformerHead has 256 channels for B0/B1 and 768 for B2…B5.
MIT = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3), 768),
}


def segformer_file(name: str) -> Sd:
    widths, depths, channels = MIT[name]
    with META:
        hf = transformers.SegformerModel(hf_mit_config(transformers, widths, depths, (1, 2, 5, 8)))
        decoder = SegFormerDecoder(widths, (4, 8, 16, 32), channels=channels)
    return mmseg_shapes(hf_mit_to_mmseg(hf.state_dict()), "segformer", decoder)


@pytest.mark.parametrize("name", sorted(MIT))
def test_mit_variant_and_decoder_width_are_read(name: str) -> None:
    model = convert_checkpoint(segformer_file(name)).model
    assert (model.backbone, model.backbone_family, model.mit_norm) == (name, "mit", "mmseg")
    assert (model.decoder, model.decoder_channels) == ("segformer", MIT[name][2])
    recipe = get_recipe("segformer_b5_cityscapes_softmax")
    if name != "mit_b5":
        with pytest.raises(ValueError, match=rf"builds mit_b5: use --set model.backbone={name}$"):
            fit_recipe(recipe, model)
        recipe = apply_overrides(recipe, [f"model.backbone={name}"])
    fitted, settings = fit_recipe(recipe, model)
    assert fitted.model.decoder_channels == MIT[name][2]
    assert settings.get("model.decoder_channels") == (256 if MIT[name][2] == 256 else None)


def test_mit_b2_file_into_the_b5_recipe_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path / "segformer_mit-b2.pth", segformer_file("mit_b2"))
    with pytest.raises(
        ValueError,
        match=r"the checkpoint holds a mit_b2 backbone \(MiT widths \(64, 128, 320, 512\), "
        r"depths \(3, 4, 6, 3\)\), recipe 'segformer_b5_cityscapes_softmax' builds mit_b5: use "
        r"--set model.backbone=mit_b2$",
    ):
        load_trained(path, get_recipe("segformer_b5_cityscapes_softmax"))


# ------------------------------------------------------ load_converted names the fixing setting


def meta_model(recipe_name: str, overrides: list[str], classes: int = 19) -> torch.nn.Module:
    from gmmseg.recipes import build_model

    recipe = apply_overrides(get_recipe(recipe_name), overrides)
    with META:
        return build_model(recipe.model, classes)


@pytest.mark.parametrize(
    ("file", "recipe_name", "overrides", "classes", "message"),
    [
        (
            lambda: segformer_file("mit_b0"),
            "segformer_b5_cityscapes_softmax",
            ["model.backbone=mit_b0", "model.mit_norm=mmseg"],
            19,
            r"checkpoint tensor 'decode_head\.convs\.0\.conv\.weight' has shape \(256, 32, 1, 1\), "
            r"the model's 'decoder\.projections\.0\.0\.weight' has \(768, 32, 1, 1\): the file's "
            r"decoder width is 256: use --set model.decoder_channels=256$",
        ),
        (
            lambda: segformer_file("mit_b0"),
            "segformer_b5_cityscapes_softmax",
            ["model.mit_norm=mmseg"],
            19,
            r"has shape \(32, 3, 7, 7\), the model's 'backbone\.stages\.0\.patch_embed\.proj\."
            r"weight' has \(64, 3, 7, 7\): the file holds a mit_b0 backbone \(MiT widths "
            r"\(32, 64, 160, 256\), depths \(2, 2, 2, 2\)\): use --set model.backbone=mit_b0$",
        ),
        (
            lambda: upernet_swin_file("swin_base", 7),
            "upernet_swin_b_cityscapes_softmax",
            [],
            19,
            r"has shape \(169, 4\), the model's '.*relative_position_bias_table' has \(529, 4\): "
            r"the file's Swin window is 7: use --set model.window_size=7$",
        ),
        (
            lambda: deeplab_file((3, 4, 23, 3)),
            "deeplabv3plus_r101_ade20k_softmax",
            [],
            150,
            r"checkpoint tensor 'decode_head\.conv_seg\.weight' has shape \(19, 512, 1, 1\), the "
            r"model's 'classifier\.classifier\.weight' has \(150, 512, 1, 1\): the file has 19 "
            r"classes: use --set data.dataset=cityscapes$",
        ),
    ],
    ids=["decoder_width", "backbone", "swin_window", "classes"],
)
def test_a_shape_mismatch_names_the_setting(file, recipe_name, overrides, classes, message) -> None:
    from gmmseg.interop import load_converted

    model = meta_model(recipe_name, overrides, classes)
    with pytest.raises(ValueError, match=message):
        load_converted(model, convert_checkpoint(file()))
