"""ResNet-V1c (deep 3-conv stem) and ResNet-V1b (7×7 stem) with dilated output strides.

The bottleneck puts its stride on the 3×3 convolution ("pytorch" style, as torchvision, timm and
mmsegmentation do). ``output_stride`` 16 or 8 replaces the strides of the last one or two stages
by dilation (2, or 2 and 4); with ``contract_dilation`` the first block of a dilated stage uses
half its dilation (DeepLab, mmsegmentation's ``contract_dilation=True``). The four stage outputs
have 256, 512, 1024 and 2048 channels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from gmmseg.backbones._common import Backbone, check_image

__all__ = [
    "FrozenBatchNorm2d",
    "ResNet",
    "resnet50_v1b",
    "resnet50_v1c",
    "resnet101_v1b",
    "resnet101_v1c",
]

NormName = Literal["bn", "syncbn", "frozen_bn", "gn"]
NormLayer = NormName | Callable[[int], nn.Module]

RESNET_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, no gradients).

    Args:
        num_features: channels C.
        eps: added to the running variance.
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None].to(x.dtype) + shift[None, :, None, None].to(x.dtype)

    def extra_repr(self) -> str:
        """Channels and epsilon, for ``repr``."""
        return f"{self.num_features}, eps={self.eps}"


def make_norm(norm_layer: NormLayer, channels: int) -> nn.Module:
    """Build a 2-d normalisation layer from a name or a ``channels -> module`` callable.

    Args:
        norm_layer: "bn" (BatchNorm2d), "syncbn" (SyncBatchNorm), "frozen_bn"
            (:class:`FrozenBatchNorm2d`), "gn" (GroupNorm with 32 groups) or a callable.
        channels: number of channels.

    Returns:
        The normalisation module.

    Raises:
        ValueError: for an unknown name.
    """
    if callable(norm_layer):
        return norm_layer(channels)
    if norm_layer == "bn":
        return nn.BatchNorm2d(channels)
    if norm_layer == "syncbn":
        return nn.SyncBatchNorm(channels)
    if norm_layer == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if norm_layer == "gn":
        return nn.GroupNorm(32, channels)
    raise ValueError(
        f"norm_layer must be 'bn', 'syncbn', 'frozen_bn', 'gn' or a callable, got {norm_layer!r}"
    )


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride, dilation) → 1×1 (×4 channels) with an identity or projection shortcut."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int,
        dilation: int,
        norm_layer: NormLayer,
        downsample: nn.Module | None,
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = make_norm(norm_layer, planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = make_norm(norm_layer, planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = make_norm(norm_layer, out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) → (B, 4·planes, H/stride, W/stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        out: Tensor = self.relu(y + identity)
        return out


class DeepStem(nn.Sequential):
    """Three 3×3 conv-norm-ReLU (stride 2, 1, 1; widths w, w, 2w) then a 3×3 stride-2 max pool."""

    def __init__(self, in_channels: int, width: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = make_norm(norm_layer, width)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm_layer, width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = make_norm(norm_layer, 2 * width)
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)


class PlainStem(nn.Sequential):
    """7×7 stride-2 conv-norm-ReLU (``width`` channels, 64 by default) then a 3×3 max pool."""

    def __init__(self, in_channels: int, norm_layer: NormLayer, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm_layer, width)
        self.relu1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)


def stage_strides_dilations(
    output_stride: int,
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Strides and dilations of the four stages for an output stride of 8, 16 or 32.

    Raises:
        ValueError: if ``output_stride`` is not 8, 16 or 32.
    """
    table = {
        32: ((1, 2, 2, 2), (1, 1, 1, 1)),
        16: ((1, 2, 2, 1), (1, 1, 1, 2)),
        8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    }
    if output_stride not in table:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return table[output_stride]


class ResNet(Backbone):
    """Bottleneck ResNet returning the outputs of its four stages.

    Args:
        depth: 50, 101 or 152.
        stem: "deep" (V1c: three 3×3 convs, widths 32, 32, 64) or "plain" (V1b: one 7×7 conv).
        output_stride: 8, 16 or 32; the strides of the last stages become dilations.
        contract_dilation: halve the dilation of the first block of each dilated stage.
        norm_layer: "bn", "syncbn", "frozen_bn", "gn" or a ``channels -> module`` callable.
        frozen_stages: -1 trains everything; 0 freezes the stem; k ≥ 1 also freezes stages 1…k
            (parameters get ``requires_grad=False``, their norms stay in eval mode).
        norm_eval: keep every BatchNorm in eval mode during training (frozen statistics).
        in_channels: channels of the input image.
        base_width: width of the first stage's bottleneck (64 in every published ResNet; smaller
            values give the narrow networks of recipe dry runs). Stage i has
            ``base_width · 2^i`` planes and ``4 · base_width · 2^i`` output channels.

    Attributes:
        out_channels: (256, 512, 1024, 2048) for ``base_width=64``.
        strides: (4, 8, 16, 32), (4, 8, 16, 16) or (4, 8, 8, 8) for output stride 32, 16, 8.
        dilations: dilation of the 3×3 convolutions of each stage after its first block.

    Example:
        ```python
        net = resnet50_v1c(output_stride=8).eval()
        feats = net(torch.zeros(1, 3, 64, 64))
        # shapes (1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 8, 8), (1, 2048, 8, 8)
        ```
    """

    def __init__(
        self,
        depth: int = 50,
        stem: Literal["deep", "plain"] = "deep",
        output_stride: int = 8,
        contract_dilation: bool = True,
        norm_layer: NormLayer = "bn",
        frozen_stages: int = -1,
        norm_eval: bool = False,
        in_channels: int = 3,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if base_width < 2 or base_width % 2:
            raise ValueError(f"base_width must be an even number >= 2, got {base_width}")
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        if stem not in ("deep", "plain"):
            raise ValueError(f"stem must be 'deep' or 'plain', got {stem!r}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        strides, dilations = stage_strides_dilations(output_stride)
        self.in_channels = in_channels
        self.depth = depth
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.stem: nn.Sequential = (
            DeepStem(in_channels, base_width // 2, norm_layer)
            if stem == "deep"
            else PlainStem(in_channels, norm_layer, base_width)
        )
        channels = base_width
        layers: list[nn.Sequential] = []
        for i, blocks in enumerate(RESNET_DEPTHS[depth]):
            planes = base_width * 2**i
            contract = contract_dilation and dilations[i] > 1
            first_dilation = dilations[i] // 2 if contract else dilations[i]
            downsample: nn.Module | None = None
            if strides[i] != 1 or channels != planes * Bottleneck.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(channels, planes * 4, 1, stride=strides[i], bias=False),
                    make_norm(norm_layer, planes * 4),
                )
            mods = [
                Bottleneck(
                    channels,
                    planes,
                    strides[i],
                    first_dilation,
                    norm_layer,
                    downsample,
                )
            ]
            channels = planes * Bottleneck.expansion
            mods += [
                Bottleneck(channels, planes, 1, dilations[i], norm_layer, None)
                for _ in range(1, blocks)
            ]
            layers.append(nn.Sequential(*mods))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = tuple(base_width * 4 * 2**i for i in range(4))
        stride = 4
        out_strides = []
        for s in strides:
            stride *= s
            out_strides.append(stride)
        self.strides = tuple(out_strides)
        self.dilations = dilations
        self._init_weights()
        self._freeze()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.SyncBatchNorm | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _frozen_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = []
        if self.frozen_stages >= 0:
            mods.append(self.stem)
        mods += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        return mods

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        """Set training mode, keeping frozen stages (and all norms with ``norm_eval``) in eval."""
        super().train(mode)
        if mode:
            for m in self._frozen_modules():
                m.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """Compute the four stage outputs.

        Args:
            x: (B, 3, H, W) float images.

        Returns:
            Four tensors (B, C_i, ⌈H/s_i⌉, ⌈W/s_i⌉) with C_i = ``out_channels[i]`` and
            s_i = ``strides[i]``.
        """
        check_image(x, self.in_channels)
        y: Tensor = self.stem(x)
        feats: list[Tensor] = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            y = layer(y)
            feats.append(y)
        return feats


def resnet50_v1c(
    output_stride: int = 8,
    contract_dilation: bool = True,
    norm_layer: NormLayer = "bn",
    frozen_stages: int = -1,
    norm_eval: bool = False,
    in_channels: int = 3,
) -> ResNet:
    """ResNet-50-V1c (deep stem), output stride 8 by default; 23.5M parameters."""
    return ResNet(
        50,
        "deep",
        output_stride,
        contract_dilation,
        norm_layer,
        frozen_stages,
        norm_eval,
        in_channels,
    )


def resnet101_v1c(
    output_stride: int = 8,
    contract_dilation: bool = True,
    norm_layer: NormLayer = "bn",
    frozen_stages: int = -1,
    norm_eval: bool = False,
    in_channels: int = 3,
) -> ResNet:
    """ResNet-101-V1c (deep stem), output stride 8 by default; 42.5M parameters."""
    return ResNet(
        101,
        "deep",
        output_stride,
        contract_dilation,
        norm_layer,
        frozen_stages,
        norm_eval,
        in_channels,
    )


def resnet50_v1b(
    output_stride: int = 8,
    contract_dilation: bool = True,
    norm_layer: NormLayer = "bn",
    frozen_stages: int = -1,
    norm_eval: bool = False,
    in_channels: int = 3,
) -> ResNet:
    """ResNet-50-V1b (torchvision's 7×7 stem): the variant torchvision checkpoints fit."""
    return ResNet(
        50,
        "plain",
        output_stride,
        contract_dilation,
        norm_layer,
        frozen_stages,
        norm_eval,
        in_channels,
    )


def resnet101_v1b(
    output_stride: int = 8,
    contract_dilation: bool = True,
    norm_layer: NormLayer = "bn",
    frozen_stages: int = -1,
    norm_eval: bool = False,
    in_channels: int = 3,
) -> ResNet:
    """ResNet-101-V1b (torchvision's 7×7 stem): the variant torchvision checkpoints fit."""
    return ResNet(
        101,
        "plain",
        output_stride,
        contract_dilation,
        norm_layer,
        frozen_stages,
        norm_eval,
        in_channels,
    )
