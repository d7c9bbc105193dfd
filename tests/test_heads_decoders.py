"""Feature decoders: shapes, strides, gradients, SyncBatchNorm conversion, align_corners against
hand-written forwards, and the linear SegFormer variant against transformers' decode head."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gmmseg.heads import DeepLabV3PlusDecoder, FCNDecoder, SegFormerDecoder, UPerNetDecoder

CHANNELS = [8, 16, 24, 32]
STRIDES = [4, 8, 16, 32]


def pyramid(b: int = 2, size: int = 64) -> list[torch.Tensor]:
    return [torch.randn(b, c, size // s, size // s) for c, s in zip(CHANNELS, STRIDES, strict=True)]


@pytest.mark.parametrize(
    ("decoder", "stride"),
    [
        (FCNDecoder(CHANNELS, STRIDES, channels=12), 32),
        (FCNDecoder(CHANNELS, STRIDES, channels=12, in_index=1, concat_input=False), 8),
        (DeepLabV3PlusDecoder(CHANNELS, STRIDES, channels=12, dilations=(1, 2, 3)), 4),
        (SegFormerDecoder(CHANNELS, STRIDES, channels=12), 4),
        (SegFormerDecoder(CHANNELS, STRIDES, channels=12, projection="linear"), 4),
        (UPerNetDecoder(CHANNELS, STRIDES, channels=12), 4),
    ],
)
def test_output_shape_stride_and_gradients(decoder: nn.Module, stride: int) -> None:
    feats = [f.requires_grad_(True) for f in pyramid()]
    out = decoder(feats)
    assert decoder.stride == stride
    assert out.shape == (2, decoder.out_channels, 64 // stride, 64 // stride)
    out.sum().backward()
    used = [f.grad is not None and f.grad.abs().sum() > 0 for f in feats]
    assert any(used)
    for name, p in decoder.named_parameters():
        assert p.grad is not None, name


def test_decoders_use_every_level_they_should() -> None:
    for dec in (
        SegFormerDecoder(CHANNELS, STRIDES, channels=6),
        SegFormerDecoder(CHANNELS, STRIDES, channels=6, projection="linear"),
        UPerNetDecoder(CHANNELS, STRIDES, channels=6),
    ):
        feats = [f.requires_grad_(True) for f in pyramid()]
        dec(feats).sum().backward()
        assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_sync_batchnorm_conversion() -> None:
    dec = UPerNetDecoder(CHANNELS, STRIDES, channels=6)
    conv = nn.SyncBatchNorm.convert_sync_batchnorm(dec)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in conv.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in conv.modules())


def test_decoder_errors() -> None:
    dec = SegFormerDecoder(CHANNELS, STRIDES, channels=6)
    with pytest.raises(ValueError, match="expected 4 feature maps"):
        dec(pyramid()[:3])
    bad = pyramid()
    bad[2] = torch.randn(2, 5, 4, 4)
    with pytest.raises(ValueError, match=r"features\[2\] must have shape \(B, 24, H, W\)"):
        dec(bad)
    with pytest.raises(ValueError, match="equal length"):
        SegFormerDecoder([8, 16], [4])
    with pytest.raises(ValueError, match="projection must be 'conv' or 'linear', got 'mlp'"):
        SegFormerDecoder(CHANNELS, STRIDES, projection="mlp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="align_corners must be a bool, got 'yes'"):
        UPerNetDecoder(CHANNELS, STRIDES, align_corners="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------ align_corners


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so that no part of a forward can hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g, dtype=t.dtype)
            if name.endswith("running_var"):
                t.copy_(0.5 + noise.abs())
            elif t.dim() == 1 and name.endswith("weight"):
                t.copy_(1.0 + 0.1 * noise)
            else:
                t.copy_(0.2 * noise)
    return module.eval()


def odd_pyramid(dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Features of a 50×70 image (odd sizes: every resize interpolates)."""
    g = torch.Generator().manual_seed(5)
    sizes = [(13, 18), (7, 9), (4, 5), (2, 3)]
    return [
        torch.randn(2, c, *hw, generator=g, dtype=dtype)
        for c, hw in zip(CHANNELS, sizes, strict=True)
    ]


def up(x: torch.Tensor, size: torch.Size, align_corners: bool) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def ref_segformer(dec: SegFormerDecoder, feats: list[torch.Tensor], ac: bool) -> torch.Tensor:
    size = feats[0].shape[-2:]
    outs = [up(p(f), size, ac) for p, f in zip(dec.projections, feats, strict=True)]
    if dec.projection == "linear":
        outs = outs[::-1]
    out: torch.Tensor = dec.fuse(torch.cat(outs, 1))
    return out


def ref_deeplab(dec: DeepLabV3PlusDecoder, feats: list[torch.Tensor], ac: bool) -> torch.Tensor:
    x = feats[-1]
    pooled = dec.image_pool(x).expand(-1, -1, *x.shape[-2:])  # a 1×1 map resizes to a constant
    deep = dec.bottleneck(torch.cat([pooled, *(b(x) for b in dec.aspp)], 1))
    low = dec.skip(feats[0])
    out: torch.Tensor = dec.fuse(torch.cat([up(deep, low.shape[-2:], ac), low], 1))
    return out


def ref_upernet(dec: UPerNetDecoder, feats: list[torch.Tensor], ac: bool) -> torch.Tensor:
    x = feats[-1]
    top = dec.ppm_bottleneck(torch.cat([x] + [up(p(x), x.shape[-2:], ac) for p in dec.ppm], 1))
    lats = [lat(f) for lat, f in zip(dec.laterals, feats, strict=False)] + [top]
    for i in (3, 2, 1):
        lats[i - 1] = lats[i - 1] + up(lats[i], lats[i - 1].shape[-2:], ac)
    outs = [conv(lat) for conv, lat in zip(dec.fpn_convs, lats, strict=False)] + [lats[3]]
    size = outs[0].shape[-2:]
    out: torch.Tensor = dec.fpn_bottleneck(torch.cat([up(o, size, ac) for o in outs], 1))
    return out


@pytest.mark.parametrize(
    ("make", "reference"),
    [
        (
            lambda ac: SegFormerDecoder(CHANNELS, STRIDES, channels=6, align_corners=ac),
            ref_segformer,
        ),
        (
            lambda ac: SegFormerDecoder(
                CHANNELS, STRIDES, channels=6, projection="linear", align_corners=ac
            ),
            ref_segformer,
        ),
        (
            lambda ac: DeepLabV3PlusDecoder(
                CHANNELS, STRIDES, channels=6, dilations=(1, 2), align_corners=ac
            ),
            ref_deeplab,
        ),
        (lambda ac: UPerNetDecoder(CHANNELS, STRIDES, channels=6, align_corners=ac), ref_upernet),
    ],
)
def test_align_corners_is_used_by_every_internal_resize(make, reference) -> None:  # type: ignore[no-untyped-def]
    feats = odd_pyramid()
    outs = {}
    for ac in (False, True):
        dec = randomise(make(ac).double())
        assert dec.align_corners is ac
        with torch.no_grad():
            outs[ac] = dec(feats)
            expected = reference(dec, feats, ac)
        torch.testing.assert_close(outs[ac], expected, rtol=0, atol=1e-12)
    assert float((outs[True] - outs[False]).abs().max()) > 1e-3


def test_fcn_takes_align_corners() -> None:
    feats = odd_pyramid()
    a = randomise(FCNDecoder(CHANNELS, STRIDES, channels=6, align_corners=True).double())
    b = FCNDecoder(CHANNELS, STRIDES, channels=6).double().eval()
    b.load_state_dict(a.state_dict())
    assert a.align_corners and not b.align_corners
    with torch.no_grad():
        assert torch.equal(a(feats), b(feats))  # nothing is resized inside FCN


# ------------------------------------------------------------------ Hugging Face decode head


def hf_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``SegformerDecodeHead`` keys (published ``linear_c.{i}`` or in-memory
    ``linear_projections.{i}``) to ``SegFormerDecoder(projection="linear")`` keys."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("classifier."):
            continue
        k = re.sub(r"^(linear_c|linear_projections)\.(\d+)\.", r"projections.\2.", k)
        k = k.replace("linear_fuse.", "fuse.0.").replace("batch_norm.", "fuse.1.")
        out[k] = v
    return out


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 2e-5), (torch.float64, 1e-10)])
def test_linear_variant_equals_hf_segformer_decode_head(dtype: torch.dtype, tol: float) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(
        hidden_sizes=CHANNELS,
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=12,
        num_labels=5,
    )
    torch.manual_seed(0)
    hf = randomise(transformers.SegformerForSemanticSegmentation(config)).to(dtype)
    ours = SegFormerDecoder(CHANNELS, STRIDES, channels=12, projection="linear").to(dtype).eval()
    head_sd = {
        k.removeprefix("decode_head."): v
        for k, v in hf.state_dict().items()
        if k.startswith("decode_head.")
    }
    ours.load_state_dict(hf_to_ours(head_sd), strict=True)

    def classify(f: torch.Tensor) -> torch.Tensor:
        w, b = hf.decode_head.classifier.weight, hf.decode_head.classifier.bias
        return F.conv2d(f, w, b)

    # the decode head alone, on odd-sized features
    feats = odd_pyramid(dtype)
    with torch.no_grad():
        expected = hf.decode_head(feats)
        got = classify(ours(feats))
    err = float((got - expected).abs().max() / expected.abs().max())
    assert err <= tol, err
    # the whole model: transformers' encoder output through both decode heads
    x = torch.randn(1, 3, 50, 70, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with torch.no_grad():
        out = hf(pixel_values=x, output_hidden_states=True)
        got = classify(ours(list(out.hidden_states)))
    err = float((got - out.logits).abs().max() / out.logits.abs().max())
    assert err <= tol, err
    # the order matters: the same weights on c1..c4 (mmsegmentation's order) give other logits
    with torch.no_grad():
        size = feats[0].shape[-2:]
        first_to_last = [
            up(p(f), size, False) for p, f in zip(ours.projections, feats, strict=True)
        ]
        wrong = classify(ours.fuse(torch.cat(first_to_last, 1)))
    assert float((wrong - expected).abs().max() / expected.abs().max()) > 1e-2
