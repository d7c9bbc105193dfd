"""Validation and loss helpers shared by the classifiers."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossAverage = Literal["all", "valid"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of densities, logits and losses: the wider of float32 and ``dtype``.

    float32 under autocast (bf16/fp16 activations) and for half models; float64 for float64 ones.
    """
    return torch.promote_types(dtype, torch.float32)


def check_features(features: Tensor, in_channels: int, *, values: bool = True) -> None:
    """Raise unless ``features`` is a finite (B, in_channels, H, W) float tensor.

    ``values=False`` checks only the type and shape: the scan for NaN/Inf reads its result on the
    host, a device synchronisation on an accelerator (see the classifiers' ``validate``).
    """
    if not isinstance(features, Tensor) or not features.is_floating_point():
        raise ValueError(
            f"features must be a floating-point tensor, got {type(features).__name__}"
            + (f" of dtype {features.dtype}" if isinstance(features, Tensor) else "")
        )
    if features.ndim != 4 or features.shape[1] != in_channels:
        raise ValueError(
            f"features must have shape (B, {in_channels}, H, W), got {tuple(features.shape)}"
        )
    if values and not bool(torch.isfinite(features).all()):
        raise ValueError("features must be finite, got NaN/Inf values")


def check_target(
    target: Tensor, num_classes: int, ignore_index: int, *, values: bool = True
) -> None:
    """Raise unless ``target`` is (B, H, W) integer with values in [0, C) ∪ {ignore_index}.

    ``values=False`` checks only the type and shape: the range test reads its result on the host,
    a device synchronisation on an accelerator (see the classifiers' ``validate``).
    """
    if not isinstance(target, Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(
            "target must be an integer tensor of class ids, got "
            + (f"dtype {target.dtype}" if isinstance(target, Tensor) else type(target).__name__)
        )
    if target.ndim != 3:
        raise ValueError(f"target must have shape (B, H, W), got {tuple(target.shape)}")
    if not values:
        return
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):
        found = torch.unique(target[bad])[:10].tolist()
        raise ValueError(
            f"target values must be in [0, {num_classes}) or ignore_index={ignore_index}, "
            f"got {found} ({int(bad.sum())} pixels)"
        )


def resize_target(target: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of (B, H', W') labels to (B, H, W), as the original release does."""
    if tuple(target.shape[-2:]) == size:
        return target
    resized = F.interpolate(target[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].to(target.dtype)


def segmentation_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    average: LossAverage,
    align_corners: bool = False,
) -> Tensor:
    """Cross-entropy of (B, C, H, W) logits upsampled bilinearly to the (B, H', W') target.

    Computed in float32, or float64 for float64 logits.

    ``average="all"`` divides the summed loss by every label pixel, ignored ones included (the
    original release's mmsegmentation default); ``"valid"`` divides by the non-ignored pixels.
    """
    if tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
        logits = F.interpolate(
            logits, size=target.shape[-2:], mode="bilinear", align_corners=align_corners
        )
    per_pixel = F.cross_entropy(
        logits.to(compute_dtype(logits.dtype)),
        target.long(),
        ignore_index=ignore_index,
        reduction="none",
    )
    if average == "all":
        return per_pixel.mean()
    valid = (target != ignore_index).sum()
    return per_pixel.sum() / valid.clamp_min(1)
