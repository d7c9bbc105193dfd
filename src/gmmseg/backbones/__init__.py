"""Backbones returning multi-scale feature pyramids, checkpoint converters, and a timm adapter.

Every backbone maps (B, 3, H, W) images to a ``list[Tensor]`` of feature maps and publishes
``out_channels`` and ``strides`` (one entry per map) for building decoders:

- :func:`mit_b0` … :func:`mit_b5`: SegFormer's Mix Transformer (strides 4, 8, 16, 32).
- :func:`resnet50_v1c`, :func:`resnet101_v1c`: deep-stem ResNets with output stride 8/16/32
  (and the 7×7-stem :func:`resnet50_v1b`, :func:`resnet101_v1b` that torchvision weights fit).
- :func:`convnet_small`: a small plain CNN that trains from scratch in minutes (the demo).
- :func:`swin_tiny`, :func:`swin_small`, :func:`swin_base`: Swin Transformer, window 7 or 12.

:func:`load_pretrained` loads official, mmsegmentation/mmpretrain, Hugging Face, torchvision and
timm checkpoints from a local file. :class:`TimmBackbone` wraps any timm model (timm optional).
"""

from gmmseg.backbones._common import Backbone, DropPath
from gmmseg.backbones.checkpoint import LoadReport, Source, load_pretrained, read_state_dict
from gmmseg.backbones.convnet import ConvNet, convnet_small
from gmmseg.backbones.mit import (
    MiTConfig,
    MixVisionTransformer,
    mit_b0,
    mit_b1,
    mit_b2,
    mit_b3,
    mit_b4,
    mit_b5,
)
from gmmseg.backbones.registry import build_backbone, list_backbones
from gmmseg.backbones.resnet import (
    FrozenBatchNorm2d,
    ResNet,
    resnet50_v1b,
    resnet50_v1c,
    resnet101_v1b,
    resnet101_v1c,
)
from gmmseg.backbones.swin import SwinConfig, SwinTransformer, swin_base, swin_small, swin_tiny
from gmmseg.backbones.timm_adapter import TimmBackbone

__all__ = [
    "Backbone",
    "ConvNet",
    "DropPath",
    "FrozenBatchNorm2d",
    "LoadReport",
    "MiTConfig",
    "MixVisionTransformer",
    "ResNet",
    "Source",
    "SwinConfig",
    "SwinTransformer",
    "TimmBackbone",
    "build_backbone",
    "convnet_small",
    "list_backbones",
    "load_pretrained",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "mit_b3",
    "mit_b4",
    "mit_b5",
    "read_state_dict",
    "resnet50_v1b",
    "resnet50_v1c",
    "resnet101_v1b",
    "resnet101_v1c",
    "swin_base",
    "swin_small",
    "swin_tiny",
]
