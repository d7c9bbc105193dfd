"""Feature decoders: a backbone's multi-scale features → one feature map for a classifier.

Each decoder takes the list of backbone features (strides and channels given at construction) and
returns a single (B, ``out_channels``, H, W) map at the stride of ``stride``: 4 (the first
level) for DeepLabV3+, SegFormer and UPerNet, the stride of the chosen level for FCN (8 on a dilated
ResNet). Configurations follow mmsegmentation's standard ones. Convolutions are followed by
BatchNorm and ReLU; in distributed runs convert them with
``torch.nn.SyncBatchNorm.convert_sync_batchnorm``. Dropout before the classifier belongs to the
classifier (:class:`~gmmseg.heads.LinearClassifier` has ``dropout=0.1``,
:class:`~gmmseg.heads.GMMClassifier` a ``dropout`` option).

Every decoder takes ``align_corners`` (default False) for its internal bilinear resizes, as
mmsegmentation's decode heads use their ``align_corners`` setting; models trained with
``align_corners=True`` need it set here as well as in the classifier and the
:class:`~gmmseg.segmentor.Segmentor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DeepLabV3PlusDecoder",
    "FCNDecoder",
    "LinearProjection",
    "SegFormerDecoder",
    "UPerNetDecoder",
]


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConv(nn.Sequential):
    """Depthwise 3×3 ConvNormAct followed by a pointwise 1×1 ConvNormAct."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            ConvNormAct(in_channels, in_channels, 3, dilation=dilation, groups=in_channels),
            ConvNormAct(in_channels, out_channels, 1),
        )


class LinearProjection(nn.Module):
    """A ``Linear`` applied to the channels of every pixel (no norm, no activation).

    The per-stage projection of the Hugging Face and NVlabs SegFormer decoders, named ``proj``
    as there.

    Args:
        in_channels: C_in.
        out_channels: C_out.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) → (B, C_out, H, W)."""
        out: Tensor = self.proj(x.movedim(1, -1)).movedim(-1, 1)
        return out


def _resize(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class _Decoder(nn.Module):
    """Shared validation of the feature list and of ``align_corners``."""

    def __init__(
        self, in_channels: Sequence[int], in_strides: Sequence[int], align_corners: bool
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides) or not in_channels:
            raise ValueError(
                f"in_channels and in_strides must be non-empty and of equal length, got "
                f"{list(in_channels)} and {list(in_strides)}"
            )
        if not isinstance(align_corners, bool):
            raise ValueError(f"align_corners must be a bool, got {align_corners!r}")
        self.in_channels = list(in_channels)
        self.in_strides = list(in_strides)
        self.align_corners = align_corners
        self.out_channels = 0
        self.stride = 0

    def _resize(self, x: Tensor, size: Sequence[int]) -> Tensor:
        """Bilinear resize of (B, C, h, w) to ``size`` with the decoder's ``align_corners``."""
        return _resize(x, size, self.align_corners)

    def _check(self, features: Sequence[Tensor]) -> None:
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(features)}")
        for i, (f, c) in enumerate(zip(features, self.in_channels, strict=True)):
            if f.ndim != 4 or f.shape[1] != c:
                raise ValueError(
                    f"features[{i}] must have shape (B, {c}, H, W), got {tuple(f.shape)}"
                )


class FCNDecoder(_Decoder):
    """FCN head (mmsegmentation ``FCNHead``): convolutions on one level, optional input concat.

    Args:
        in_channels: channels of every backbone level.
        in_strides: stride of every backbone level.
        in_index: which level to decode (default the last).
        channels: output width (512 in the standard config).
        num_convs: 3×3 convolutions (2).
        concat_input: concatenate the input with the conv output, then fuse by a 3×3 conv.
        dilation: of the 3×3 convolutions.
        align_corners: kept for a uniform interface: FCN resizes nothing internally.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        *,
        in_index: int = -1,
        channels: int = 512,
        num_convs: int = 2,
        concat_input: bool = True,
        dilation: int = 1,
        align_corners: bool = False,
    ) -> None:
        super().__init__(in_channels, in_strides, align_corners)
        self.in_index = in_index % len(self.in_channels)
        c_in = self.in_channels[self.in_index]
        layers = [
            ConvNormAct(c_in if i == 0 else channels, channels, 3, dilation)
            for i in range(num_convs)
        ]
        self.convs = nn.Sequential(*layers) if layers else nn.Identity()
        self.conv_cat = ConvNormAct(c_in + channels, channels, 3) if concat_input else None
        self.out_channels = channels if num_convs or concat_input else c_in
        self.stride = self.in_strides[self.in_index]

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Decode.

        Args:
            features: per level (B, in_channels[i], H_i, W_i).

        Returns:
            (B, channels, H, W) at the stride of level ``in_index``.
        """
        self._check(features)
        x = features[self.in_index]
        out: Tensor = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return out


class _ASPPPooling(nn.Sequential):
    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), ConvNormAct(in_channels, channels, 1))


class DeepLabV3PlusDecoder(_Decoder):
    """DeepLabV3+ (mmsegmentation ``DepthwiseSeparableASPPHead``).

    Image pooling + ASPP with depthwise-separable atrous convolutions on the deepest level, a
    3×3 bottleneck, then fusion with a 48-channel projection of the low-level (stride 4)
    features and two separable 3×3 convolutions.

    Args:
        in_channels: channels of every backbone level.
        in_strides: stride of every backbone level.
        in_index: the deep level (default the last).
        low_level_index: the skip level (default the first).
        channels: width (512).
        low_level_channels: width of the skip projection (48).
        dilations: ASPP dilations (1, 12, 24, 36) for output stride 8; use (1, 6, 12, 18) at 16.
        align_corners: of the resizes of the image pooling and of the ASPP output to the
            low-level features.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        *,
        in_index: int = -1,
        low_level_index: int = 0,
        channels: int = 512,
        low_level_channels: int = 48,
        dilations: Sequence[int] = (1, 12, 24, 36),
        align_corners: bool = False,
    ) -> None:
        super().__init__(in_channels, in_strides, align_corners)
        self.in_index = in_index % len(self.in_channels)
        self.low_level_index = low_level_index % len(self.in_channels)
        c_in = self.in_channels[self.in_index]
        self.image_pool = _ASPPPooling(c_in, channels)
        self.aspp = nn.ModuleList(
            ConvNormAct(c_in, channels, 1) if d == 1 else SeparableConv(c_in, channels, d)
            for d in dilations
        )
        self.bottleneck = ConvNormAct((len(dilations) + 1) * channels, channels, 3)
        self.skip = ConvNormAct(self.in_channels[self.low_level_index], low_level_channels, 1)
        self.fuse = nn.Sequential(
            SeparableConv(channels + low_level_channels, channels),
            SeparableConv(channels, channels),
        )
        self.out_channels = channels
        self.stride = self.in_strides[self.low_level_index]

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Decode.

        Args:
            features: per level (B, in_channels[i], H_i, W_i).

        Returns:
            (B, channels, H, W) at the stride of the low-level features.
        """
        self._check(features)
        x = features[self.in_index]
        pooled = self._resize(self.image_pool(x), x.shape[-2:])
        aspp = torch.cat([pooled, *(branch(x) for branch in self.aspp)], dim=1)
        deep: Tensor = self.bottleneck(aspp)
        low: Tensor = self.skip(features[self.low_level_index])
        deep = self._resize(deep, low.shape[-2:])
        out: Tensor = self.fuse(torch.cat([deep, low], dim=1))
        return out


class SegFormerDecoder(_Decoder):
    """SegFormer's all-MLP decoder, in mmsegmentation's or Hugging Face's / NVlabs' form.

    Every level is projected to ``channels``, upsampled to the first level, the levels are
    concatenated and fused by a 1×1 convolution + BatchNorm + ReLU. The two published forms
    differ in the projection and in the concatenation order:

    * ``projection="conv"`` (mmsegmentation ``SegformerHead``, the GMMSeg release): a 1×1 conv
      + BatchNorm + ReLU per level, concatenated first level first (c1, c2, c3, c4).
    * ``projection="linear"`` (Hugging Face ``SegformerDecodeHead``, NVlabs SegFormer): a
      ``Linear`` with bias per level, no norm or activation, concatenated deepest level first
      (c4, c3, c2, c1).

    Module names, for renaming a state dict (i is the level, 0 = stride 4):

    | gmmseg | mmsegmentation | Hugging Face | NVlabs |
    |---|---|---|---|
    | ``projections.{i}.0`` (conv), ``.1`` (BN) | ``convs.{i}.conv``, ``.bn`` | – | – |
    | ``projections.{i}.proj`` (Linear) | – | ``linear_c.{i}.proj`` | ``linear_c{i+1}.proj`` |
    | ``fuse.0`` (conv, no bias) | ``fusion_conv.conv`` | ``linear_fuse`` | ``linear_fuse.conv`` |
    | ``fuse.1`` (BatchNorm) | ``fusion_conv.bn`` | ``batch_norm`` | ``linear_fuse.bn`` |

    The fusion weight is used as published in both forms (its input channels follow the
    form's concatenation order).

    Args:
        in_channels: channels of every backbone level.
        in_strides: stride of every backbone level.
        channels: width (256 in mmsegmentation's configs; 768 in the paper's B5 configs).
        projection: ``"conv"`` or ``"linear"`` (see above).
        align_corners: of the upsampling of every level to the first.

    Raises:
        ValueError: an unknown ``projection``.
    """

    projections: nn.ModuleList

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        *,
        channels: int = 256,
        projection: Literal["conv", "linear"] = "conv",
        align_corners: bool = False,
    ) -> None:
        super().__init__(in_channels, in_strides, align_corners)
        if projection == "conv":
            self.projections = nn.ModuleList(ConvNormAct(c, channels, 1) for c in self.in_channels)
        elif projection == "linear":
            self.projections = nn.ModuleList(
                LinearProjection(c, channels) for c in self.in_channels
            )
        else:
            raise ValueError(f"projection must be 'conv' or 'linear', got {projection!r}")
        self.projection: Literal["conv", "linear"] = projection
        self.fuse = ConvNormAct(len(self.in_channels) * channels, channels, 1)
        self.out_channels = channels
        self.stride = self.in_strides[0]

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Decode.

        Args:
            features: per level (B, in_channels[i], H_i, W_i).

        Returns:
            (B, channels, H_0, W_0).
        """
        self._check(features)
        size = features[0].shape[-2:]
        outs = [
            self._resize(proj(f), size) for proj, f in zip(self.projections, features, strict=True)
        ]
        if self.projection == "linear":
            outs = outs[::-1]
        fused: Tensor = self.fuse(torch.cat(outs, dim=1))
        return fused


class UPerNetDecoder(_Decoder):
    """UPerNet (mmsegmentation ``UPerHead``): pyramid pooling on the deepest level + FPN.

    Args:
        in_channels: channels of every backbone level.
        in_strides: stride of every backbone level.
        channels: width (512).
        pool_scales: pyramid pooling bins (1, 2, 3, 6).
        align_corners: of the pyramid-pooling, top-down and final resizes.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        *,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        align_corners: bool = False,
    ) -> None:
        super().__init__(in_channels, in_strides, align_corners)
        c_last = self.in_channels[-1]
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(c_last, channels, 1))
            for s in pool_scales
        )
        self.ppm_bottleneck = ConvNormAct(c_last + len(pool_scales) * channels, channels, 3)
        self.laterals = nn.ModuleList(ConvNormAct(c, channels, 1) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(channels, channels, 3) for _ in self.in_channels[:-1]
        )
        self.fpn_bottleneck = ConvNormAct(len(self.in_channels) * channels, channels, 3)
        self.out_channels = channels
        self.stride = self.in_strides[0]

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Decode.

        Args:
            features: per level (B, in_channels[i], H_i, W_i).

        Returns:
            (B, channels, H_0, W_0).
        """
        self._check(features)
        x = features[-1]
        pyramid = [x] + [self._resize(p(x), x.shape[-2:]) for p in self.ppm]
        top: Tensor = self.ppm_bottleneck(torch.cat(pyramid, dim=1))
        laterals: list[Tensor] = [lat(f) for lat, f in zip(self.laterals, features, strict=False)]
        laterals.append(top)
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._resize(
                laterals[i], laterals[i - 1].shape[-2:]
            )
        outs: list[Tensor] = [
            conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=False)
        ]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        fused: Tensor = self.fpn_bottleneck(torch.cat([self._resize(o, size) for o in outs], dim=1))
        return fused
