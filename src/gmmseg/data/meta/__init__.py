"""Class names, palettes and id tables of the supported datasets.

Every table is indexed by train id: ``CITYSCAPES_CLASSES[k]`` is the name of train id ``k`` and
``CITYSCAPES_PALETTE[k]`` its RGB colour. The anomaly datasets share `ANOMALY_CLASSES`. The long
tables live in one module per dataset (``cityscapes``, ``ade20k``, ``coco_stuff``); import them
from here.
"""

from __future__ import annotations

from gmmseg.data.meta.ade20k import ADE20K_CLASSES, ADE20K_PALETTE
from gmmseg.data.meta.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELS,
    CITYSCAPES_PALETTE,
    CityscapesLabel,
)
from gmmseg.data.meta.coco_stuff import (
    COCO_STUFF_CLASSES,
    COCO_STUFF_DROPPED_IDS,
    COCO_STUFF_PALETTE,
)

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "ANOMALY_CLASSES",
    "ANOMALY_PALETTE",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_PALETTE",
    "COCO_STUFF_CLASSES",
    "COCO_STUFF_DROPPED_IDS",
    "COCO_STUFF_PALETTE",
    "IGNORE_INDEX",
    "CityscapesLabel",
]

#: The ignore value of every label map in gmmseg.
IGNORE_INDEX = 255

#: Canonical anomaly label names: 0 in-distribution, 1 anomaly (255 is void).
ANOMALY_CLASSES: tuple[str, ...] = ("in-distribution", "anomaly")
#: Colours of the canonical anomaly labels.
ANOMALY_PALETTE: tuple[tuple[int, int, int], ...] = ((128, 128, 128), (255, 102, 0))
