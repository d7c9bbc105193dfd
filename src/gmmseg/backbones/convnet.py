"""A small plain convolutional backbone for from-scratch training (the demo, dry runs, tests)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from gmmseg.backbones._common import Backbone, check_image

__all__ = ["ConvNet", "convnet_small"]


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ConvNet(Backbone):
    """Stages of 3×3 conv-BN-ReLU blocks, each starting with a stride-2 convolution.

    Not a paper architecture: a fast network that trains from random weights in minutes on a
    CPU, used by ``gmmseg demo`` and by recipe dry runs.

    Args:
        widths: channels of each stage.
        depths: blocks per stage (the first one has stride 2).
        in_channels: channels of the input image.

    Attributes:
        out_channels: ``widths``.
        strides: (2, 4, 8, …), one per stage.

    Example:
        ```python
        net = ConvNet(widths=(16, 32, 64), depths=(1, 1, 2))
        feats = net(torch.zeros(1, 3, 64, 64))
        # shapes (1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8)
        ```
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        depths: Sequence[int] = (2, 2, 3),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if not widths or len(widths) != len(depths):
            raise ValueError(
                f"widths and depths must be non-empty and of equal length, got {list(widths)} "
                f"and {list(depths)}"
            )
        if any(w < 1 for w in widths) or any(d < 1 for d in depths):
            raise ValueError(f"widths and depths must be >= 1, got {list(widths)}, {list(depths)}")
        self.in_channels = in_channels
        stages = []
        c = in_channels
        for w, d in zip(widths, depths, strict=True):
            blocks = [_conv_bn_relu(c, w, 2)] + [_conv_bn_relu(w, w, 1) for _ in range(d - 1)]
            stages.append(nn.Sequential(*blocks))
            c = w
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(int(w) for w in widths)
        self.strides = tuple(2 ** (i + 1) for i in range(len(widths)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> list[Tensor]:
        """Compute the stage outputs.

        Args:
            x: (B, 3, H, W) float images.

        Returns:
            One (B, widths[i], ⌈H/2^(i+1)⌉, ⌈W/2^(i+1)⌉) tensor per stage.
        """
        check_image(x, self.in_channels)
        feats: list[Tensor] = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def convnet_small(
    widths: Sequence[int] = (32, 64, 128), depths: Sequence[int] = (2, 2, 3), in_channels: int = 3
) -> ConvNet:
    """The demo's backbone: widths (32, 64, 128), depths (2, 2, 3), strides (2, 4, 8)."""
    return ConvNet(widths, depths, in_channels)
