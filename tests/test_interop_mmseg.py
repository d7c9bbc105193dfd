"""mmsegmentation model-zoo checkpoints (softmax models) through ``load_trained``: DeepLabV3+ and
FCN on ResNet-V1c, UPerNet on Swin, SegFormer on MiT; each against a reference forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gmmseg.backbones.swin import relative_position_index
from gmmseg.interop import read_checkpoint
from gmmseg.recipes import apply_overrides, build_model, get_recipe, load_trained
from interop_helpers import (
    add_prefix,
    conv_seg,
    deeplabv3plus_head,
    fcn_head,
    gmmseg_decoder_to_mmseg,
    gmmseg_resnet_to_mmseg,
    hf_features,
    hf_mit_config,
    hf_mit_to_mmseg,
    max_rel,
    randomise_module,
    randomise_state,
    resnet_v1c,
    segformer_head,
    set_mit_eps,
    strip,
    uper_head,
)

transformers = pytest.importorskip("transformers")

CITYSCAPES = tuple(f"class{i}" for i in range(19))


def mmcv_meta(num_classes: int = 19) -> dict[str, object]:
    """What mmcv 1.x / mmseg 0.x writes: versions, config text, classes, palette, counters."""
    rng = np.random.default_rng(0)
    return {
        "mmcv_version": "1.3.16",
        "config": "norm_cfg = dict(type='SyncBN', requires_grad=True)\nmodel = dict(...)\n",
        "CLASSES": tuple(f"class{i}" for i in range(num_classes)),
        "PALETTE": [[int(v) for v in row] for row in rng.integers(0, 255, (num_classes, 3))],
        "epoch": 1,
        "iter": 80000,
        "seed": np.int64(0),
        "palette_array": rng.integers(0, 255, (num_classes, 3)),
        "lr": np.float64(6e-5),
        "dtype": np.dtype("float32"),
        "hook_msgs": {"best_score": 0.5},
    }


def aux_head(num_classes: int) -> dict[str, torch.Tensor]:
    return {
        "auxiliary_head.convs.0.conv.weight": torch.randn(8, 16, 3, 3),
        "auxiliary_head.convs.0.bn.weight": torch.ones(8),
        "auxiliary_head.conv_seg.weight": torch.randn(num_classes, 8, 1, 1),
        "auxiliary_head.conv_seg.bias": torch.zeros(num_classes),
    }


def mmseg_file(
    path: Path, backbone: dict[str, torch.Tensor], kind: str, sd: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Write an mmseg checkpoint: given backbone tensors (mmseg names) + the decoder/classifier
    of a gmmseg state dict renamed to mmseg's head; returns the file's state dict."""
    file_sd = add_prefix(backbone, "backbone.")
    file_sd.update(add_prefix(gmmseg_decoder_to_mmseg(kind, strip(sd, "decoder.")), "decode_head."))
    file_sd["decode_head.conv_seg.weight"] = sd["classifier.classifier.weight"]
    file_sd["decode_head.conv_seg.bias"] = sd["classifier.classifier.bias"]
    c = sd["classifier.classifier.bias"].shape[0]
    file_sd.update(aux_head(c))
    optimizer = {"state": {}, "param_groups": [{"lr": 6e-5, "params": [0, 1]}]}
    torch.save({"meta": mmcv_meta(c), "state_dict": file_sd, "optimizer": optimizer}, path)
    return file_sd


def tiny_state(recipe_name: str, overrides: tuple[str, ...] = (), seed: int = 0):
    recipe = apply_overrides(get_recipe(recipe_name), list(overrides))
    model = build_model(recipe.model, 19, tiny=True)
    return recipe, randomise_state(model.state_dict(), seed)


def compare(model: torch.nn.Module, ref, x: torch.Tensor) -> tuple[float, float]:
    """Largest relative logit difference in float32 and float64."""
    with torch.no_grad():
        err32 = max_rel(model(x).logits, ref(x, torch.float32))
        err64 = max_rel(model.double()(x.double()).logits, ref(x.double(), torch.float64))
    return err32, err64


def cast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


@pytest.mark.parametrize("decoder", ["deeplabv3plus", "fcn"])
def test_resnet_v1c_models_match_reference(tmp_path: Path, decoder: str) -> None:
    overrides = () if decoder == "deeplabv3plus" else ("model.decoder=fcn",)
    recipe, sd = tiny_state("deeplabv3plus_r101_cityscapes_softmax", overrides)
    path = tmp_path / f"{decoder}_r101-d8.pth"
    backbone = gmmseg_resnet_to_mmseg(strip(sd, "backbone."))
    file_sd = mmseg_file(path, backbone, decoder, sd)
    model, fitted = load_trained(path, recipe, tiny=True)
    head = deeplabv3plus_head if decoder == "deeplabv3plus" else fcn_head

    def ref(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        w = cast(file_sd, dtype)
        return conv_seg(w, head(w, resnet_v1c(w, x, (3, 4, 23, 3))))

    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    err32, err64 = compare(model, ref, x)
    assert err32 <= 2e-5, err32
    assert err64 <= 1e-10, err64
    assert fitted.model.decoder == decoder


TINY_MIT = ((8, 16, 24, 32), (1, 1, 1, 1), (1, 1, 1, 1))


def hf_mit(seed: int, norm_eps: float, embed_eps: float) -> torch.nn.Module:
    """transformers' SegformerModel of the miniature MiT, in a given epsilon convention."""
    torch.manual_seed(seed)
    model = transformers.SegformerModel(hf_mit_config(transformers, *TINY_MIT))
    set_mit_eps(model, norm_eps, embed_eps)
    return randomise_module(model, seed).eval()


def test_mit_segformer_matches_reference(tmp_path: Path) -> None:
    """mmseg's MiT uses eps 1e-6 in every LayerNorm; the loader picks that convention."""
    recipe, sd = tiny_state("segformer_b5_cityscapes_softmax")
    hf = hf_mit(4, 1e-6, 1e-6)
    backbone = hf_mit_to_mmseg(hf.state_dict())
    path = tmp_path / "segformer_mit-b0.pth"
    file_sd = mmseg_file(path, backbone, "segformer", sd)
    model, fitted = load_trained(path, recipe, tiny=True)
    assert fitted.model.mit_norm == "mmseg"
    assert fitted.model.segformer_projection == "conv"

    def ref(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        w = cast(file_sd, dtype)
        return conv_seg(w, segformer_head(w, hf_features(hf.to(dtype), x)))

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    err32, err64 = compare(model, ref, x)
    assert err32 <= 2e-5, err32
    assert err64 <= 1e-10, err64


def hf_swin_to_mmseg(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers SwinBackbone (5.x in-memory names) → mmseg SwinTransformer names."""
    import re

    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        m = re.fullmatch(r"hidden_states_norms\.stage(\d)\.(.*)", key)
        if m:
            out[f"norm{int(m.group(1)) - 1}.{m.group(2)}"] = v
            continue
        k = key.removeprefix("swin.") if key.startswith("swin.") else key
        if k.startswith("layernorm.") or "k_proj" in k or "v_proj" in k:
            continue
        if "relative_position_index" in k:
            continue
        if "q_proj" in k:
            v = torch.cat(
                [v, sd[key.replace("q_proj", "k_proj")], sd[key.replace("q_proj", "v_proj")]]
            )
            k = k.replace("attention.q_proj", "attn.w_msa.qkv")
        if "downsample.reduction" in k or "downsample.norm" in k:
            # HF/official merge order (x0, x1, x2, x3) = (0,0), (1,0), (0,1), (1,1) → nn.Unfold's
            # (channel, row, col) order that mmseg's PatchMerging uses.
            c4 = v.shape[-1]
            lead = v.shape[:-1]
            v = v.reshape(*lead, 4, c4 // 4)[..., [0, 2, 1, 3], :].transpose(-1, -2)
            v = v.reshape(*lead, c4)
        for old, new in [
            ("embeddings.patch_embeddings.projection.", "patch_embed.projection."),
            ("embeddings.norm.", "patch_embed.norm."),
            ("encoder.layers.", "stages."),
            ("layernorm_before.", "norm1."),
            ("layernorm_after.", "norm2."),
            ("attention.o_proj.", "attn.w_msa.proj."),
            (
                "attention.relative_position_bias.relative_position_bias_table",
                "attn.w_msa.relative_position_bias_table",
            ),
            ("mlp.fc1.", "ffn.layers.0.0."),
            ("mlp.fc2.", "ffn.layers.1."),
        ]:
            k = k.replace(old, new)
        out[k] = v
        if k.endswith("relative_position_bias_table"):
            w = (round(v.shape[0] ** 0.5) + 1) // 2
            out[k.replace("bias_table", "index")] = relative_position_index(w)
    return out


def test_swin_upernet_matches_reference(tmp_path: Path) -> None:
    recipe, sd = tiny_state("upernet_swin_b_cityscapes_softmax")
    cfg = transformers.SwinConfig(
        embed_dim=8,
        depths=[2, 2, 2, 2],
        num_heads=[1, 1, 1, 1],
        window_size=12,
        drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    torch.manual_seed(0)
    hf = randomise_module(transformers.SwinBackbone(cfg), seed=3).eval()
    backbone = hf_swin_to_mmseg(hf.state_dict())
    path = tmp_path / "upernet_swin.pth"
    file_sd = mmseg_file(path, backbone, "upernet", sd)
    model, _ = load_trained(path, recipe, tiny=True)

    def ref(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        w = cast(file_sd, dtype)
        with torch.no_grad():
            feats = list(hf.to(dtype)(pixel_values=x).feature_maps)
        return conv_seg(w, uper_head(w, feats))

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    err32, err64 = compare(model, ref, x)
    assert err32 <= 2e-5, err32
    assert err64 <= 1e-10, err64


# ------------------------------------------------------------------------------------ refusals


@pytest.fixture(scope="module")
def deeplab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, sd = tiny_state("deeplabv3plus_r101_cityscapes_softmax")
    path = tmp_path_factory.mktemp("zoo") / "deeplabv3plus.pth"
    mmseg_file(path, gmmseg_resnet_to_mmseg(strip(sd, "backbone.")), "deeplabv3plus", sd)
    return path


def test_report_lists_dropped_tensors(deeplab_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    recipe = get_recipe("deeplabv3plus_r101_cityscapes_softmax")
    with caplog.at_level("INFO", logger="gmmseg"):
        load_trained(deeplab_file, recipe, tiny=True)
    text = caplog.text
    assert "layout 'mmseg'" in text
    assert "auxiliary_head.conv_seg.weight" in text and "auxiliary" in text


@pytest.mark.parametrize(
    ("recipe_name", "overrides", "message"),
    [
        (
            "deeplabv3plus_r101_ade20k_softmax",
            (),
            "19 classes in the checkpoint, recipe 'deeplabv3plus_r101_ade20k_softmax' has 150 "
            "(dataset ade20k): use --set data.dataset=cityscapes",
        ),
        ("deeplabv3plus_r101_cityscapes_gmm", (), "--set model.head=linear"),
        ("deeplabv3plus_r101_cityscapes_softmax", ("model.decoder=upernet",), "decoder"),
        ("upernet_swin_b_cityscapes_softmax", (), "--set model.backbone="),
        ("segformer_b5_cityscapes_softmax", (), "--set model.backbone="),
    ],
)
def test_refuses_a_recipe_that_does_not_fit(
    deeplab_file: Path, recipe_name: str, overrides: tuple[str, ...], message: str
) -> None:
    recipe = apply_overrides(get_recipe(recipe_name), list(overrides))
    with pytest.raises(ValueError, match="checkpoint") as info:
        load_trained(deeplab_file, recipe, tiny=True)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_full_size_backbone_is_named(deeplab_file: Path) -> None:
    """A file whose widths match no gmmseg variant (the miniature) is refused without tiny."""
    recipe = get_recipe("deeplabv3plus_r101_cityscapes_softmax")
    with pytest.raises(ValueError, match=r"none of gmmseg's backbones"):
        load_trained(deeplab_file, recipe)


def test_refuses_a_mismatched_tensor_naming_both_shapes(tmp_path: Path) -> None:
    recipe, sd = tiny_state("deeplabv3plus_r101_cityscapes_softmax")
    sd["decoder.skip.0.weight"] = torch.randn(40, 32, 1, 1)  # 40 skip channels, gmmseg has 48
    path = tmp_path / "odd.pth"
    mmseg_file(path, gmmseg_resnet_to_mmseg(strip(sd, "backbone.")), "deeplabv3plus", sd)
    with pytest.raises(ValueError, match=r"decode_head\.c1_bottleneck") as info:
        load_trained(path, recipe, tiny=True)
    text = str(info.value)
    assert "decode_head.c1_bottleneck.conv.weight" in text
    assert "(40, 32, 1, 1)" in text and "(48, 32, 1, 1)" in text
    assert text.endswith(
        "the model's architecture differs from the file's, and no recipe setting changes this"
    )


def test_refuses_unknown_and_missing_tensors(tmp_path: Path) -> None:
    recipe, sd = tiny_state("deeplabv3plus_r101_cityscapes_softmax")
    backbone = gmmseg_resnet_to_mmseg(strip(sd, "backbone."))
    path = tmp_path / "extra.pth"
    file_sd = mmseg_file(path, backbone, "deeplabv3plus", sd)
    extra = dict(file_sd, **{"decode_head.mystery.weight": torch.zeros(3)})
    torch.save({"state_dict": extra}, path)
    with pytest.raises(ValueError, match=r"no place in a gmmseg model: decode_head.mystery"):
        load_trained(path, recipe, tiny=True)
    lacking = {k: v for k, v in file_sd.items() if k != "decode_head.bottleneck.bn.weight"}
    torch.save({"state_dict": lacking}, path)
    with pytest.raises(
        ValueError, match=r"does not fill 1 tensors.*decoder\.bottleneck\.1\.weight"
    ):
        load_trained(path, recipe, tiny=True)


def test_a_segformer_head_without_its_fusion_conv_is_called_damaged(tmp_path: Path) -> None:
    # Before: classified as an FCN head (it has convs.0), with advice to switch decoders.
    recipe, sd = tiny_state("segformer_b5_cityscapes_softmax")
    path = tmp_path / "segformer.pth"
    file_sd = mmseg_file(path, hf_mit_to_mmseg(hf_mit(4, 1e-6, 1e-6).state_dict()), "segformer", sd)
    cut = {k: v for k, v in file_sd.items() if ".fusion_conv." not in k}
    assert len(cut) < len(file_sd)
    torch.save({"state_dict": cut}, path)
    with pytest.raises(ValueError, match=r"SegFormer's per-stage projections .* no fusion_conv"):
        load_trained(path, recipe, tiny=True)


def test_a_torchvision_segmentation_file_is_not_called_a_gmmseg_state_dict(
    tmp_path: Path,
) -> None:
    # torchvision's deeplabv3_resnet50 (aux_loss off): backbone.* and classifier.* only.
    path = tmp_path / "deeplabv3_resnet50.pth"
    keys = ["backbone.conv1.weight", "backbone.bn1.weight", "classifier.0.convs.0.0.weight"]
    torch.save({k: torch.zeros(2) for k in [*keys, "classifier.4.weight"]}, path)
    recipe = get_recipe("deeplabv3plus_r101_cityscapes_softmax")
    with pytest.raises(ValueError, match=r"^unknown checkpoint layout \(first keys"):
        load_trained(path, recipe, tiny=True)


def test_refuses_an_unknown_layout(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"encoder.conv.weight": torch.zeros(2, 3, 3, 3)}}, path)
    recipe = get_recipe("deeplabv3plus_r101_cityscapes_softmax")
    with pytest.raises(ValueError, match=r"unknown checkpoint layout \(first keys"):
        load_trained(path, recipe, tiny=True)
    with pytest.raises(ValueError, match=r"layout must be 'auto' or one of"):
        load_trained(path, recipe, layout="caffe", tiny=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", ["auto", "official", "mmseg", "hf", "nvlabs"])
def test_a_gmmseg_state_dict_is_named_as_such(tmp_path: Path, layout: str) -> None:
    """Model.state_dict() saved alone (no gmmseg checkpoint around it), detected or with a layout
    named: before, a named layout got that layout's message ("decode head (modules [])...")."""
    recipe, sd = tiny_state("deeplabv3plus_r101_cityscapes_softmax")
    path = tmp_path / "state_dict.pth"
    torch.save(sd, path)
    with pytest.raises(
        ValueError,
        match=r"^these tensors are a gmmseg state dict, not a whole checkpoint written by gmmseg "
        r"\(gmmseg train writes iter_\*\.pt files, .*Segmentor\.load_state_dict on a model built "
        r"from the recipe$",
    ):
        load_trained(path, recipe, tiny=True, layout=layout)  # type: ignore[arg-type]


def test_refuses_a_backbone_gmmseg_does_not_have(deeplab_file: Path, tmp_path: Path) -> None:
    """mmsegmentation's MobileNetV2 under a DeepLabV3+ head."""
    sd = dict(read_checkpoint(deeplab_file).tensors)
    sd = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    sd["backbone.conv1.conv.weight"] = torch.zeros(32, 3, 3, 3)
    sd["backbone.layer1.0.conv.0.conv.weight"] = torch.zeros(32, 1, 3, 3)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save({"state_dict": sd}, path)
    recipe = get_recipe("deeplabv3plus_r101_cityscapes_softmax")
    with pytest.raises(
        ValueError,
        match=r"^the checkpoint's backbone \(backbone\.\*, first keys \['conv1\.conv\.weight', "
        r"'layer1\.0\.conv\.0\.conv\.weight'\]\) is not a MiT, Swin or ResNet in a layout "
        r"gmmseg reads$",
    ):
        load_trained(path, recipe, tiny=True)


def test_refuses_a_decoder_gmmseg_does_not_have(deeplab_file: Path, tmp_path: Path) -> None:
    """mmsegmentation's DeepLabV3 (ASPPHead: DeepLabV3+ without c1_bottleneck/sep_bottleneck)."""
    sd = dict(read_checkpoint(deeplab_file).tensors)
    plus = ("decode_head.c1_bottleneck.", "decode_head.sep_bottleneck.")
    sd = {k: v for k, v in sd.items() if not k.startswith(plus)}
    path = tmp_path / "deeplabv3.pth"
    torch.save({"state_dict": sd}, path)
    recipe = get_recipe("deeplabv3plus_r101_cityscapes_softmax")
    with pytest.raises(
        ValueError,
        match=r"^the checkpoint's decode head \(modules \['aspp_modules', 'bottleneck', "
        r"'conv_seg', 'image_pool'\]\) is none of the decoders gmmseg has \(SegFormer, "
        r"DeepLabV3\+, UPerNet, FCN\)$",
    ):
        load_trained(path, recipe, tiny=True)


def test_a_foreign_file_needs_a_recipe(deeplab_file: Path) -> None:
    with pytest.raises(ValueError, match=r"'mmseg' file, which holds no gmmseg recipe: name one"):
        load_trained(deeplab_file)
