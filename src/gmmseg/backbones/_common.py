"""Shared pieces of the backbones: the base class, stochastic depth, input validation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Backbone", "DropPath", "check_image"]


class Backbone(nn.Module):
    """Base class of gmmseg's backbones: an image in, a list of multi-scale feature maps out.

    Subclasses set ``out_channels`` and ``strides`` (one entry per returned feature map, in the
    order of ``forward``'s list) so that decoders can be built from them without a dummy forward.

    The maps' memory format is the one the network computes in: the transformers (MiT, Swin)
    return channels-last maps (views of their token sequences, no copy), the CNNs follow their
    input's format. Convolutions, interpolation and ``reshape`` accept either; code that calls
    ``.view`` on a map should call ``.contiguous()`` first.

    Attributes:
        out_channels: channels C_i of each returned feature map.
        strides: stride s_i of each returned feature map with respect to the input image.
        in_channels: channels of the input image (3).
    """

    out_channels: tuple[int, ...]
    strides: tuple[int, ...]
    in_channels: int

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        """Compute the feature pyramid.

        Args:
            x: (B, 3, H, W) float images.

        Returns:
            One (B, C_i, ⌈H/s_i⌉, ⌈W/s_i⌉) float tensor per entry of ``out_channels``.
        """
        raise NotImplementedError


def check_image(x: Tensor, in_channels: int) -> None:
    """Validate a backbone input.

    Args:
        x: the tensor passed to ``forward``.
        in_channels: expected number of channels.

    Raises:
        ValueError: if ``x`` is not a 4-D floating-point (B, in_channels, H, W) tensor.
    """
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"x must have shape (B, {in_channels}, H, W), got {tuple(x.shape)}",
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample with probability ``p`` in training.

    The kept samples are scaled by 1 / (1 - p) so that the expectation is unchanged; in eval
    mode, or with ``p == 0``, the module is the identity.

    Args:
        p: drop probability in [0, 1).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """Apply stochastic depth.

        Args:
            x: (B, ...) residual-branch output.

        Returns:
            Tensor of the same shape.
        """
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        mask.bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(rate: float, depths: tuple[int, ...]) -> list[list[float]]:
    """Linearly increasing stochastic-depth rates over all blocks, split per stage.

    Args:
        rate: rate of the last block.
        depths: number of blocks of each stage.

    Returns:
        One list of rates per stage (0 for the first block, ``rate`` for the last).
    """
    total = sum(depths)
    flat = [rate * i / max(total - 1, 1) for i in range(total)]
    out: list[list[float]] = []
    start = 0
    for d in depths:
        out.append(flat[start : start + d])
        start += d
    return out
