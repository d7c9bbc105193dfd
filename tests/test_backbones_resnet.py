"""ResNet-V1c/V1b backbones: parameter counts, output strides and dilations, a plain reference
forward, checkpoint layouts (mmsegmentation, mmpretrain, torchvision, timm), freezing."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmmseg.backbones import (
    FrozenBatchNorm2d,
    ResNet,
    load_pretrained,
    resnet50_v1b,
    resnet50_v1c,
    resnet101_v1c,
)

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
# mmsegmentation's configurations: strides and dilations of the four stages per output stride.
OS_TABLE = {
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
}


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + 0.5 * noise.abs())
            elif name.endswith("running_mean") or (t.dim() == 1 and name.endswith("bias")):
                t.copy_(0.1 * noise)
            elif t.dim() == 1:
                t.copy_(1.0 + 0.1 * noise)
            else:  # conv weights, He-scaled so activations stay O(1)
                fan_in = t[0].numel()
                t.copy_(noise * (1.0 / fan_in) ** 0.5)
    return module


def to_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """gmmseg names → mmsegmentation ResNetV1c names (stem.0 conv, stem.1 bn, 3, 4, 6, 7)."""
    stem = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4, "conv3": 6, "bn3": 7}
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"stem\.(\w+?)\.(.*)", k)
        out[f"stem.{stem[m.group(1)]}.{m.group(2)}" if m else k] = v
    return out


def reference_forward(
    sd: dict[str, Tensor], x: Tensor, depth: int, output_stride: int
) -> list[Tensor]:
    """A plain ResNet-V1c forward on mmsegmentation-named weights (contract_dilation=True)."""

    def bn(t: Tensor, p: str) -> Tensor:
        return F.batch_norm(
            t,
            sd[p + ".running_mean"],
            sd[p + ".running_var"],
            sd[p + ".weight"],
            sd[p + ".bias"],
            False,
            0.0,
            1e-5,
        )

    def conv(t: Tensor, p: str, stride: int = 1, pad: int = 0, dil: int = 1) -> Tensor:
        return F.conv2d(t, sd[p + ".weight"], None, stride, pad, dil)

    y = F.relu(bn(conv(x, "stem.0", 2, 1), "stem.1"))
    y = F.relu(bn(conv(y, "stem.3", 1, 1), "stem.4"))
    y = F.relu(bn(conv(y, "stem.6", 1, 1), "stem.7"))
    y = F.max_pool2d(y, 3, 2, 1)
    strides, dilations = OS_TABLE[output_stride]
    feats = []
    for i, n in enumerate(BLOCKS[depth]):
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            s = strides[i] if b == 0 else 1
            d = dilations[i] // 2 if b == 0 and dilations[i] > 1 else dilations[i]
            out = F.relu(bn(conv(y, p + ".conv1"), p + ".bn1"))
            out = F.relu(bn(conv(out, p + ".conv2", s, d, d), p + ".bn2"))
            out = bn(conv(out, p + ".conv3"), p + ".bn3")
            idn = bn(conv(y, p + ".downsample.0", s), p + ".downsample.1") if b == 0 else y
            y = F.relu(out + idn)
        feats.append(y)
    return feats


@pytest.mark.parametrize(
    ("fn", "published"),
    [
        # mmpretrain model zoo (ResNetV1c-50: 25.58M, ResNetV1c-101: 44.57M, with the 1000-class
        # fc head) and torchvision's resnet50 (25,557,032 with the fc head) for the V1b stem.
        (resnet50_v1c, 25_576_264),
        (resnet101_v1c, 44_568_392),
        (resnet50_v1b, 25_557_032),
    ],
)
def test_parameter_counts(fn: object, published: int) -> None:
    with torch.device("meta"):
        net = fn()  # type: ignore[operator]
    n = sum(p.numel() for p in net.parameters()) + 2048 * 1000 + 1000
    assert n == published


@pytest.mark.parametrize(
    ("output_stride", "strides"), [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))]
)
def test_strides_channels_dilations(output_stride: int, strides: tuple[int, ...]) -> None:
    net = resnet50_v1c(output_stride=output_stride).eval()
    assert net.strides == strides
    assert net.out_channels == (256, 512, 1024, 2048)
    dil = OS_TABLE[output_stride][1]
    assert net.dilations == dil
    for i, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
        first = dil[i] // 2 if dil[i] > 1 else 1
        assert layer[0].conv2.dilation == (first, first)
        assert layer[0].conv2.padding == (first, first)
        assert all(blk.conv2.dilation == (dil[i], dil[i]) for blk in layer[1:])
    feats = net(torch.randn(1, 3, 64, 64))
    for f, c, s in zip(feats, net.out_channels, strides, strict=True):
        assert f.shape == (1, c, 64 // s, 64 // s)


def test_no_contract_dilation() -> None:
    net = resnet50_v1c(output_stride=8, contract_dilation=False)
    assert net.layer3[0].conv2.dilation == (2, 2)
    assert net.layer4[0].conv2.dilation == (4, 4)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_matches_reference_forward_via_mmseg_layout(output_stride: int) -> None:
    src = randomise(resnet50_v1c(output_stride=output_stride)).eval()
    mm = {"backbone." + k: v for k, v in to_mmseg(src.state_dict()).items()}
    mm["decode_head.conv_seg.weight"] = torch.zeros(19, 512, 1, 1)
    net = resnet50_v1c(output_stride=output_stride).eval()
    report = load_pretrained(net, {"state_dict": mm})
    assert report.source == "mmseg" and report.missing_keys == [] and report.unexpected_keys == []
    x = torch.randn(1, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    sd = {k.removeprefix("backbone."): v for k, v in mm.items()}
    with torch.no_grad():
        ours, ref = net(x), reference_forward(sd, x, 50, output_stride)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mmpretrain_and_timm_layouts() -> None:
    src = randomise(resnet50_v1c(output_stride=32)).eval()
    sd = src.state_dict()
    names = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
    mmpre, tm = {}, {}
    for k, v in sd.items():
        m = re.fullmatch(r"stem\.(\w+?)\.(.*)", k)
        if m:
            i = names.index(m.group(1))
            mmpre[f"stem.{i // 2}.{'conv' if i % 2 == 0 else 'bn'}.{m.group(2)}"] = v
            tm[
                {0: "conv1.0", 1: "conv1.1", 2: "conv1.3", 3: "conv1.4", 4: "conv1.6", 5: "bn1"}[i]
                + "."
                + m.group(2)
            ] = v
        else:
            mmpre[k] = tm[k] = v
    mmpre = {"backbone." + k: v for k, v in mmpre.items()} | {
        "head.fc.weight": torch.zeros(1000, 2048)
    }
    tm["fc.weight"], tm["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = src(x)
    for ckpt, source in ((mmpre, "mmseg"), (tm, "timm")):
        net = resnet50_v1c(output_stride=32).eval()
        report = load_pretrained(net, ckpt)
        assert report.source == source
        with torch.no_grad():
            for a, b in zip(net(x), expected, strict=True):
                assert torch.equal(a, b)


def test_torchvision_layout_fits_v1b_only() -> None:
    src = randomise(resnet50_v1b(output_stride=32)).eval()
    tv = {re.sub(r"^stem\.", "", k): v for k, v in src.state_dict().items()}
    tv = {
        k: v for k, v in tv.items() if not k.endswith("num_batches_tracked")
    }  # old torchvision files
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    net = resnet50_v1b(output_stride=32).eval()
    report = load_pretrained(net, tv)
    assert report.source == "torchvision" and report.missing_keys == []
    assert set(report.ignored_keys) == {"fc.weight", "fc.bias"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net(x), src(x), strict=True))
    with pytest.raises(ValueError, match=r"7×7 stem.*resnet50_v1b"):
        load_pretrained(resnet50_v1c(), tv, source="torchvision")


def test_frozen_bn_norm_layer_matches_eval_bn() -> None:
    src = randomise(resnet50_v1c(output_stride=16)).eval()
    frozen = resnet50_v1c(output_stride=16, norm_layer="frozen_bn")
    assert isinstance(frozen.layer1[0].bn1, FrozenBatchNorm2d)
    load_pretrained(frozen, src.state_dict())  # BN num_batches_tracked: not required
    assert not list(frozen.layer1[0].bn1.parameters())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(frozen.train()(x), src(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_frozen_stages_and_norm_eval() -> None:
    net = resnet50_v1c(frozen_stages=1, norm_eval=False).train()
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert not any(p.requires_grad for p in net.layer1.parameters())
    assert all(p.requires_grad for p in net.layer2.parameters())
    assert not net.stem.bn1.training and not net.layer1[0].bn1.training
    assert net.layer2[0].bn1.training
    net = resnet50_v1c(norm_eval=True).train()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert net.training
    out = net(torch.randn(2, 3, 32, 32))
    sum(o.sum() for o in out).backward()
    assert net.layer4[0].conv1.weight.grad is not None


def test_group_norm_and_callable_norm_layers() -> None:
    gn = resnet50_v1c(norm_layer="gn", output_stride=32)
    assert isinstance(gn.layer1[0].bn1, nn.GroupNorm)
    custom = ResNet(50, norm_layer=lambda c: nn.BatchNorm2d(c, eps=1e-3), output_stride=32)
    assert custom.layer1[0].bn1.eps == 1e-3
    assert [f.shape[1] for f in gn(torch.randn(1, 3, 32, 32))] == [256, 512, 1024, 2048]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_stride": 4}, "output_stride must be 8, 16 or 32, got 4"),
        ({"depth": 34}, "depth must be one of"),
        ({"stem": "wide"}, "stem must be 'deep' or 'plain'"),
        ({"frozen_stages": 5}, "frozen_stages must be in"),
        ({"norm_layer": "ln"}, "norm_layer must be"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ResNet(**kwargs)  # type: ignore[arg-type]
