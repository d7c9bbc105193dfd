"""Datasets in their real on-disk layouts, joint transforms and samplers.

Miniature copies of the layouts, for tests, are written by :mod:`gmmseg.testing`.

Closed-set loaders yield train ids with ignore 255; anomaly loaders yield the canonical anomaly
label (0 in-distribution, 1 anomaly, 255 void). Every item is a `Sample` dict with
``image`` (3, H, W) uint8, ``label`` (H, W) int64 and ``name``. Loaders are strict: a missing
partner file, a label of the wrong mode or with values outside the dataset's set raises an error
naming the file and what was expected. ``gmmseg.data`` depends on nothing else in gmmseg.
"""

from gmmseg.data.anomaly import (
    FishyscapesLostAndFound,
    FishyscapesStatic,
    RoadAnomaly,
    SMIYCAnomalyTrack,
    SMIYCObstacleTrack,
)
from gmmseg.data.base import Frame, Sample, SegmentationDataset, Transform
from gmmseg.data.closed_set import ADE20K, Cityscapes, COCOStuff
from gmmseg.data.converters import (
    cityscapes_label_ids_to_train_ids,
    cityscapes_train_ids_to_label_ids,
    coco_stuff_raw_to_train_ids,
    convert_cityscapes,
    convert_coco_stuff,
    rasterize_cityscapes_polygons,
)
from gmmseg.data.demo import DemoScenes
from gmmseg.data.folder import ClassList, FolderAnomaly, FolderDataset, read_class_file
from gmmseg.data.samplers import (
    ClassBalancedSampler,
    DistributedClassBalancedSampler,
    build_dataloader,
)

__all__ = [
    "ADE20K",
    "COCOStuff",
    "Cityscapes",
    "ClassBalancedSampler",
    "ClassList",
    "DemoScenes",
    "DistributedClassBalancedSampler",
    "FishyscapesLostAndFound",
    "FishyscapesStatic",
    "FolderAnomaly",
    "FolderDataset",
    "Frame",
    "RoadAnomaly",
    "SMIYCAnomalyTrack",
    "SMIYCObstacleTrack",
    "Sample",
    "SegmentationDataset",
    "Transform",
    "build_dataloader",
    "cityscapes_label_ids_to_train_ids",
    "cityscapes_train_ids_to_label_ids",
    "coco_stuff_raw_to_train_ids",
    "convert_cityscapes",
    "convert_coco_stuff",
    "rasterize_cityscapes_polygons",
    "read_class_file",
]
