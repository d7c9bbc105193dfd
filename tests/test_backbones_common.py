"""Backbones in general: registry, checkpoint-loading errors, channels_last, torch.compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gmmseg.backbones import (
    Backbone,
    ResNet,
    SwinConfig,
    SwinTransformer,
    TimmBackbone,
    build_backbone,
    list_backbones,
    load_pretrained,
    mit_b0,
    read_state_dict,
    resnet50_v1c,
)

TINY_SWIN = SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)


def small_backbones() -> list[Backbone]:
    return [mit_b0(), resnet50_v1c(output_stride=8), SwinTransformer(TINY_SWIN)]


def test_registry() -> None:
    names = list_backbones()
    expected = {f"mit_b{i}" for i in range(6)} | {"resnet50_v1c", "resnet101_v1c", "swin_tiny"}
    assert expected <= set(names) and names == sorted(names)
    with torch.device("meta"):
        net = build_backbone("resnet50_v1c", output_stride=16)
        swin = build_backbone("swin_base", window_size=12)
    assert net.strides == (4, 8, 16, 16)
    assert swin.config.window_size == 12  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"unknown backbone name 'vgg16'; expected one of"):
        build_backbone("vgg16")


@pytest.mark.parametrize("net", small_backbones(), ids=["mit", "resnet", "swin"])
def test_input_validation(net: Backbone) -> None:
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\), got \(1, 1, 32, 32\)"):
        net(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="floating-point"):
        net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("net", small_backbones(), ids=["mit", "resnet", "swin"])
def test_channels_last(net: Backbone) -> None:
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        out = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    for a, b in zip(out, ref, strict=True):
        # different convolution kernels: compare relative to the feature scale
        scale = max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("net", small_backbones(), ids=["mit", "resnet", "swin"])
def test_output_memory_format_is_documented(net: Backbone) -> None:
    """MiT/Swin return channels-last views; the CNNs follow the input's format (Backbone doc)."""
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = net.eval()(x)
    transformer = not isinstance(net, ResNet)
    for t in out:
        assert t.is_contiguous(memory_format=torch.channels_last) == transformer
        assert t.is_contiguous() == (not transformer)
        torch.testing.assert_close(t.contiguous().view(t.shape), t)  # the documented remedy


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_pretrained(mit_b0(), tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        read_state_dict(tmp_path / "nope.safetensors")


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not contain a state dict"):
        load_pretrained(mit_b0(), tmp_path / "list.pth")


def test_unknown_source_and_layout() -> None:
    net = mit_b0()
    with pytest.raises(ValueError, match=r"source must be one of .* got 'caffe'"):
        load_pretrained(net, net.state_dict(), source="caffe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="could not recognise the key layout of this MiT"):
        load_pretrained(net, {"foo.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="for a MiT backbone, got 'torchvision'"):
        load_pretrained(net, net.state_dict(), source="torchvision")


def test_shape_mismatch_names_the_key() -> None:
    from gmmseg.backbones import mit_b1

    with pytest.raises(
        ValueError,
        match=r"'stages\.0\.patch_embed\.proj\.weight' has shape \(64, 3, 7, 7\).*\(32, 3, 7, 7\)",
    ):
        load_pretrained(mit_b0(), mit_b1().state_dict())


def test_strict_reports_missing_and_unexpected() -> None:
    src = mit_b0()
    sd = dict(src.state_dict())
    del sd["stages.3.norm.weight"]
    sd["stages.9.extra.weight"] = torch.zeros(1)
    net = mit_b0()
    with pytest.raises(
        ValueError,
        match=r"missing keys \(1\): stages\.3\.norm\.weight.*"
        r"unexpected keys \(1\): stages\.9\.extra\.weight",
    ):
        load_pretrained(net, sd)
    report = load_pretrained(net, sd, strict=False)
    assert report.missing_keys == ["stages.3.norm.weight"]
    assert report.unexpected_keys == ["stages.9.extra.weight"]
    assert torch.equal(net.stages[0].patch_embed.proj.weight, src.stages[0].patch_embed.proj.weight)


def test_gmmseg_source_for_any_module() -> None:
    a, b = nn.Linear(2, 3), nn.Linear(2, 3)
    report = load_pretrained(b, a.state_dict(), source="gmmseg")
    assert report.missing_keys == [] and torch.equal(a.weight, b.weight)
    with pytest.raises(ValueError, match="only defined for gmmseg's MiT, Swin and ResNet"):
        load_pretrained(b, a.state_dict(), source="hf")


def test_timm_adapter_without_timm_is_a_clear_error() -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="TimmBackbone needs timm"):
            TimmBackbone("resnet50c")
    else:  # the vision session: covered by test_backbones_vision.py
        assert TimmBackbone("resnet18", out_indices=(4,)).out_channels == (512,)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mit", "resnet", "swin"])
def test_torch_compile_matches_eager(name: str) -> None:
    import shutil

    net = dict(zip(["mit", "resnet", "swin"], small_backbones(), strict=True))[name].eval()
    backend = "inductor" if shutil.which("cc") or shutil.which("gcc") else "aot_eager"
    compiled = torch.compile(net, backend=backend, fullgraph=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        out = compiled(x)
    for a, b in zip(out, ref, strict=True):
        scale = max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= 1e-4 * scale
