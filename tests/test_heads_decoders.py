"""Feature decoders: shapes, strides, gradients, SyncBatchNorm conversion."""

from __future__ import annotations

import pytest
import torch
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
