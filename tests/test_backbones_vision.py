"""Tests that need timm (and so torchvision): run by ``nox -s tests_vision`` (``-m vision``).

timm's ``resnet50c`` is ResNet-50 with the deep stem (3×3 convs of widths 32, 32, 64) and plain
1×1-stride downsampling shortcuts: exactly mmsegmentation's ResNetV1c (``resnet50d`` adds the
average-pool shortcut of V1d, which is a different network). Its ``output_stride`` dilates the
last stages with the first block of each dilated stage at the previous dilation, which is
DeepLab's ``contract_dilation``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gmmseg.backbones import TimmBackbone, load_pretrained, resnet50_v1c

pytestmark = pytest.mark.vision


def randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point() or t.dim() != 1:
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + 0.5 * noise.abs())
            elif name.endswith("weight"):
                t.copy_(1.0 + 0.1 * noise)
            else:
                t.copy_(0.1 * noise)
    return module


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_resnet50_v1c_matches_timm_resnet50c(output_stride: int) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("resnet50c", pretrained=False, output_stride=output_stride)
    randomise_bn(ref).eval()
    feats = timm.create_model(
        "resnet50c",
        pretrained=False,
        output_stride=output_stride,
        features_only=True,
        out_indices=(1, 2, 3, 4),
    ).eval()
    feats.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    ours = resnet50_v1c(output_stride=output_stride).eval()
    report = load_pretrained(ours, ref.state_dict(), source="timm")
    assert report.missing_keys == [] and report.unexpected_keys == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), feats(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_timm_backbone_adapter(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    src = randomise_bn(timm.create_model("resnet50c", pretrained=False)).eval()
    path = tmp_path / "resnet50c.pth"
    torch.save(src.state_dict(), path)
    net = TimmBackbone("resnet50c", pretrained_path=path, out_indices=(1, 2, 3, 4)).eval()
    assert net.out_channels == (256, 512, 1024, 2048)
    assert net.strides == (4, 8, 16, 32)
    ours = resnet50_v1c(output_stride=32).eval()
    load_pretrained(ours, path, source="timm")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        for f, c, s in zip(out, net.out_channels, net.strides, strict=True):
            assert f.shape == (1, c, 64 // s, 64 // s)
        for a, b in zip(out, ours(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="pretrained_path"):
        TimmBackbone("resnet50c", pretrained_path=tmp_path / "missing.pth")
