"""Backbones by name: a plain ``name -> constructor`` dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gmmseg.backbones._common import Backbone
from gmmseg.backbones.convnet import convnet_small
from gmmseg.backbones.mit import mit_b0, mit_b1, mit_b2, mit_b3, mit_b4, mit_b5
from gmmseg.backbones.resnet import resnet50_v1b, resnet50_v1c, resnet101_v1b, resnet101_v1c
from gmmseg.backbones.swin import swin_base, swin_small, swin_tiny

__all__ = ["BACKBONES", "build_backbone", "list_backbones"]

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "convnet_small": convnet_small,
    "mit_b0": mit_b0,
    "mit_b1": mit_b1,
    "mit_b2": mit_b2,
    "mit_b3": mit_b3,
    "mit_b4": mit_b4,
    "mit_b5": mit_b5,
    "resnet50_v1b": resnet50_v1b,
    "resnet50_v1c": resnet50_v1c,
    "resnet101_v1b": resnet101_v1b,
    "resnet101_v1c": resnet101_v1c,
    "swin_base": swin_base,
    "swin_small": swin_small,
    "swin_tiny": swin_tiny,
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`, sorted."""
    return sorted(BACKBONES)


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a backbone by name.

    Args:
        name: one of :func:`list_backbones` (``"mit_b0"``, ``"resnet50_v1c"``, ``"swin_tiny"``, …).
        **kwargs: passed to the constructor (e.g. ``output_stride=16``, ``window_size=12``,
            ``drop_path_rate=0.2``).

    Returns:
        The backbone, with ``out_channels`` and ``strides``.

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> net = build_backbone("resnet50_v1c", output_stride=16)
        >>> net.strides
        (4, 8, 16, 16)
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone name {name!r}; expected one of {list_backbones()}")
    return BACKBONES[name](**kwargs)
