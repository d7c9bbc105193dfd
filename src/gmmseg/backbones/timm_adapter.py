"""An optional adapter over timm's ``features_only`` models (timm is imported lazily)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from gmmseg.backbones._common import Backbone, check_image

__all__ = ["TimmBackbone"]


class TimmBackbone(Backbone):
    """Any timm model as a gmmseg backbone, via ``timm.create_model(features_only=True)``.

    timm (and the torchvision it imports) is needed only when this class is instantiated. No
    weights are downloaded: pass ``pretrained_path`` to load a local timm checkpoint.

    Args:
        name: a timm model name, e.g. ``"resnet50c"`` or ``"convnext_tiny"``.
        pretrained_path: optional path to a timm checkpoint (``.pth``/``.bin``/``.safetensors``)
            loaded through timm's ``pretrained_cfg_overlay=dict(file=...)``.
        out_indices: which feature levels to return (timm's indices; level 0 is often stride 2).
        **kwargs: passed to ``timm.create_model`` (e.g. ``output_stride=8``).

    Attributes:
        out_channels: channels of each returned level (timm's ``feature_info.channels()``).
        strides: strides of each returned level (``feature_info.reduction()``).

    Raises:
        ImportError: if timm is not installed.
        FileNotFoundError: if ``pretrained_path`` does not exist.
    """

    def __init__(
        self,
        name: str,
        pretrained_path: str | os.PathLike[str] | None = None,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        in_channels: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        try:
            timm = importlib.import_module("timm")
        except ImportError as err:
            raise ImportError(
                "TimmBackbone needs timm: pip install 'gmmseg[timm]' (timm imports torchvision, "
                "which must match your torch build)"
            ) from err
        extra: dict[str, Any] = {}
        if pretrained_path is not None:
            if not os.path.isfile(pretrained_path):
                raise FileNotFoundError(f"pretrained_path not found: {str(pretrained_path)!r}")
            extra = {
                "pretrained": True,
                "pretrained_cfg_overlay": {"file": os.fspath(pretrained_path)},
            }
        self.name = name
        self.in_channels = in_channels
        self.model: nn.Module = timm.create_model(
            name,
            features_only=True,
            out_indices=tuple(out_indices),
            in_chans=in_channels,
            **extra,
            **kwargs,
        )
        info = self.model.feature_info
        self.out_channels = tuple(int(c) for c in info.channels())
        self.strides = tuple(int(r) for r in info.reduction())

    def forward(self, x: Tensor) -> list[Tensor]:
        """Compute the selected feature levels.

        Args:
            x: (B, C_in, H, W) float images.

        Returns:
            One (B, C_i, H/s_i, W/s_i) tensor per entry of ``out_channels``.
        """
        check_image(x, self.in_channels)
        return list(self.model(x))
