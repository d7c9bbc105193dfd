"""ConvNet: shapes, strides, a plain-loop reference forward, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gmmseg.backbones import ConvNet, build_backbone, convnet_small


def test_shapes_and_registry() -> None:
    net = build_backbone("convnet_small")
    assert isinstance(net, ConvNet)
    assert net.out_channels == (32, 64, 128) and net.strides == (2, 4, 8)
    feats = net(torch.randn(2, 3, 64, 48))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 32, 24), (2, 64, 16, 12), (2, 128, 8, 6)]
    odd = convnet_small(widths=(4, 8), depths=(1, 1))(torch.randn(1, 3, 33, 31))
    assert [tuple(f.shape[-2:]) for f in odd] == [(17, 16), (9, 8)]


def test_matches_functional_reference() -> None:
    torch.manual_seed(0)
    net = ConvNet(widths=(4, 6), depths=(2, 1)).eval()
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 16, 16)
    y = x
    expected = []
    for stage in net.stages:
        for i, block in enumerate(stage):
            conv, bn = block[0], block[1]
            y = F.conv2d(y, conv.weight, stride=2 if i == 0 else 1, padding=1)
            y = (y - bn.running_mean[:, None, None]) / torch.sqrt(
                bn.running_var[:, None, None] + bn.eps
            ) * bn.weight[:, None, None] + bn.bias[:, None, None]
            y = y.clamp_min(0)
        expected.append(y)
    with torch.no_grad():
        out = net(x)
    for a, b in zip(out, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_validation() -> None:
    with pytest.raises(ValueError, match="equal length"):
        ConvNet(widths=(4, 8), depths=(1,))
    with pytest.raises(ValueError, match=">= 1"):
        ConvNet(widths=(0,), depths=(1,))
    with pytest.raises(ValueError, match=r"x must have shape"):
        ConvNet()(torch.zeros(1, 1, 8, 8))


def test_resnet_base_width() -> None:
    from gmmseg.backbones import ResNet

    net = ResNet(depth=50, base_width=8, output_stride=8)
    assert net.out_channels == (32, 64, 128, 256)
    feats = net(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == list(net.out_channels)
    v1b = ResNet(depth=50, stem="plain", base_width=8)
    assert v1b.stem.conv1.out_channels == 8 and v1b.stem.bn1.num_features == 8  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="base_width"):
        ResNet(base_width=7)
