"""Build models and datasets from recipes; miniature dry-run variants of any recipe."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from gmmseg.backbones import (
    ConvNet,
    MiTConfig,
    MixVisionTransformer,
    ResNet,
    SwinConfig,
    SwinTransformer,
    build_backbone,
    load_pretrained,
)
from gmmseg.backbones._common import Backbone
from gmmseg.backbones.mit import MIT_NORM_EPS
from gmmseg.data import (
    ADE20K,
    Cityscapes,
    COCOStuff,
    DemoScenes,
    FishyscapesLostAndFound,
    FishyscapesStatic,
    FolderAnomaly,
    FolderDataset,
    RoadAnomaly,
    Sample,
    SMIYCAnomalyTrack,
    SMIYCObstacleTrack,
)
from gmmseg.data import transforms as T
from gmmseg.data.folder import ClassList, read_class_file
from gmmseg.heads import (
    DeepLabV3PlusDecoder,
    FCNDecoder,
    GMMClassifier,
    LinearClassifier,
    SegFormerDecoder,
    UPerNetDecoder,
)
from gmmseg.recipes.schema import DataConfig, ModelConfig, Recipe
from gmmseg.segmentor import Segmentor

__all__ = [
    "InMemory",
    "build_anomaly_datasets",
    "build_backbone_from_config",
    "build_model",
    "build_train_data",
    "build_val_dataset",
    "dry_run_recipe",
    "folder_classes",
    "num_classes_of",
    "resolve_folder_classes",
]

_NUM_CLASSES = {
    "cityscapes": 19,
    "ade20k": 150,
    "coco_stuff10k": 171,
    "coco_stuff164k": 171,
    "demo": len(DemoScenes.semantic_classes),
}


def num_classes_of(data: DataConfig) -> int:
    """C of the recipe's dataset (``folder``: the length of its class list)."""
    if data.dataset == "folder":
        return len(folder_classes(data).names)
    return _NUM_CLASSES[data.dataset]


def _triples(values: tuple[int, ...], key: str) -> tuple[tuple[int, int, int], ...]:
    if len(values) % 3:
        raise ValueError(
            f"data.{key}: expected R, G, B values, three per colour, got {len(values)} values"
        )
    return tuple((values[i], values[i + 1], values[i + 2]) for i in range(0, len(values), 3))


def folder_classes(data: DataConfig) -> ClassList:
    """The class list of a ``data.dataset=folder`` recipe.

    ``data.classes`` names the classes (with ``data.palette`` and ``data.void_colors``); or
    ``data.class_file`` is a JSON class file (:func:`~gmmseg.data.read_class_file`): a relative
    path is looked up from the current folder first, then inside ``data.root``.

    Raises:
        ValueError: neither or both are set, or a bad class list.
        FileNotFoundError: the class file does not exist.
    """
    if data.classes and data.class_file:
        raise ValueError("data.classes and data.class_file are both set: give the classes one way")
    if data.classes:
        return ClassList(
            tuple(data.classes),
            _triples(data.palette, "palette"),
            _triples(data.void_colors, "void_colors"),
        )
    if data.palette or data.void_colors:
        raise ValueError(
            "data.palette / data.void_colors are set without data.classes: give the colours "
            "in the class file (or name the classes with data.classes)"
        )
    if not data.class_file:
        raise ValueError(
            "data.dataset=folder needs its classes: pass --set data.classes=road,car,sky or "
            "data.class_file=classes.json"
        )
    path = Path(data.class_file)
    if not path.is_absolute() and not path.is_file() and data.root:
        inside = Path(data.root) / path
        if inside.is_file():
            path = inside
    if not path.is_file():
        where = f" (nor inside data.root {data.root!r})" if data.root else ""
        raise FileNotFoundError(f"data.class_file: {str(path)!r} does not exist{where}")
    return read_class_file(path)


def resolve_folder_classes(recipe: Recipe) -> Recipe:
    """The recipe with a folder dataset's class file read into it.

    ``data.class_file`` is replaced by its content (``data.classes``, ``data.palette``,
    ``data.void_colors``), so that the recipe saved with a checkpoint needs no file to rebuild
    the model. Other recipes are returned unchanged.

    Raises:
        ValueError: a bad class list (:func:`folder_classes`).
        FileNotFoundError: the class file does not exist.
    """
    data = recipe.data
    if data.dataset != "folder" or not data.class_file:
        return recipe
    classes = folder_classes(data)
    resolved = dataclasses.replace(
        data,
        classes=classes.names,
        palette=tuple(v for c in classes.palette for v in c),
        void_colors=tuple(v for c in classes.void_colors for v in c),
        class_file="",
    )
    return dataclasses.replace(recipe, data=resolved)


def _mit_norm_eps(cfg: ModelConfig) -> tuple[float, float]:
    """``(norm_eps, embed_norm_eps)`` of ``cfg.mit_norm``."""
    if cfg.mit_norm not in MIT_NORM_EPS:
        raise ValueError(
            f"model.mit_norm must be one of {sorted(MIT_NORM_EPS)}, got {cfg.mit_norm!r}"
        )
    return MIT_NORM_EPS[cfg.mit_norm]


def _tiny_backbone(cfg: ModelConfig) -> Backbone:
    name = cfg.backbone
    if name.startswith("mit_"):
        norm_eps, embed_norm_eps = _mit_norm_eps(cfg)
        return MixVisionTransformer(
            MiTConfig(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
            drop_path_rate=cfg.drop_path_rate or 0.0,
            norm_eps=norm_eps,
            embed_norm_eps=embed_norm_eps,
        )
    if name.startswith("swin_"):
        return SwinTransformer(
            SwinConfig(8, (2, 2, 2, 2), (1, 1, 1, 1), window_size=cfg.window_size or 7),
            drop_path_rate=cfg.drop_path_rate or 0.0,
        )
    if name.startswith("resnet"):
        depth = 101 if "101" in name else 50
        stem: Literal["deep", "plain"] = "plain" if name.endswith("v1b") else "deep"
        return ResNet(depth, stem, output_stride=cfg.output_stride or 8, base_width=8)
    if name.startswith("convnet"):
        return ConvNet(widths=(8, 16, 32), depths=(1, 1, 1))
    raise ValueError(f"no miniature variant of backbone {name!r}")


def build_backbone_from_config(cfg: ModelConfig, tiny: bool = False) -> Backbone:
    """The recipe's backbone (``tiny``: a narrow, shallow network of the same family).

    Loads ``cfg.pretrained`` (strict) when set and not ``tiny``. MiT backbones (tiny ones too)
    get the LayerNorm epsilons of ``cfg.mit_norm``; other backbones ignore it.

    Raises:
        ValueError: an unknown backbone, an unknown ``mit_norm``, or an option the backbone
            does not take.
        FileNotFoundError: a missing pretrained checkpoint.
    """
    if tiny:
        return _tiny_backbone(cfg)
    kwargs: dict[str, Any] = {}
    for key in ("output_stride", "window_size", "drop_path_rate"):
        value = getattr(cfg, key)
        if value is not None:
            kwargs[key] = value
    if cfg.backbone.startswith("mit_"):
        kwargs["norm_eps"], kwargs["embed_norm_eps"] = _mit_norm_eps(cfg)
    try:
        net = build_backbone(cfg.backbone, **kwargs)
    except TypeError as e:
        raise ValueError(f"backbone {cfg.backbone!r} does not take {sorted(kwargs)}: {e}") from e
    if cfg.pretrained:
        load_pretrained(net, cfg.pretrained, source=cfg.pretrained_source)  # type: ignore[arg-type]
    return net


def _decoder(cfg: ModelConfig, backbone: Backbone, channels: int) -> nn.Module:
    chans, strides = backbone.out_channels, backbone.strides
    corners = cfg.align_corners
    if cfg.segformer_projection not in ("conv", "linear"):
        raise ValueError(
            f"model.segformer_projection must be 'conv' or 'linear', got "
            f"{cfg.segformer_projection!r}"
        )
    if cfg.decoder == "segformer":
        return SegFormerDecoder(
            chans,
            strides,
            channels=channels,
            projection=cfg.segformer_projection,
            align_corners=corners,
        )
    if cfg.decoder == "deeplabv3plus":
        return DeepLabV3PlusDecoder(chans, strides, channels=channels, align_corners=corners)
    if cfg.decoder == "upernet":
        return UPerNetDecoder(chans, strides, channels=channels, align_corners=corners)
    if cfg.decoder == "fcn":
        return FCNDecoder(chans, strides, channels=channels, align_corners=corners)
    raise ValueError(f"unknown decoder {cfg.decoder!r}")


def build_model(
    cfg: ModelConfig,
    num_classes: int,
    *,
    tiny: bool = False,
    generator: torch.Generator | None = None,
) -> Segmentor:
    """Backbone + decoder + classifier of a recipe.

    Args:
        cfg: the model section.
        num_classes: C.
        tiny: miniature widths for dry runs (decoder 16 channels, embedding 8).
        generator: seeds the GMM's initial means and memory.

    Returns:
        The :class:`~gmmseg.segmentor.Segmentor`. ``cfg.align_corners`` reaches the decoder,
        the classifier and the segmentor.

    Raises:
        ValueError: an invalid model field, named by its ``--set`` name where the recipe
            checks it (``model.mit_norm``, ``model.segformer_projection``,
            ``model.gmm.dropout``).
    """
    backbone = build_backbone_from_config(cfg, tiny)
    decoder = _decoder(cfg, backbone, 16 if tiny else cfg.decoder_channels)
    channels = int(decoder.out_channels)  # type: ignore[arg-type]
    classifier: GMMClassifier | LinearClassifier
    if cfg.head == "gmm":
        g = cfg.gmm
        if isinstance(g.dropout, bool) or not (
            isinstance(g.dropout, (int, float)) and 0.0 <= g.dropout < 1.0
        ):
            raise ValueError(f"model.gmm.dropout must be a float in [0, 1), got {g.dropout!r}")
        if tiny:
            g = dataclasses.replace(g, embed_dim=8, memory_size=min(64, g.memory_size))
        # the recipe's section is a GMMHeadConfig (its init_* keys are read by the trainer)
        classifier = GMMClassifier(
            num_classes, channels, g, align_corners=cfg.align_corners, generator=generator
        )
    elif cfg.head == "linear":
        classifier = LinearClassifier(
            num_classes, channels, dropout=cfg.dropout, align_corners=cfg.align_corners
        )
    else:
        raise ValueError(f"model.head must be 'gmm' or 'linear', got {cfg.head!r}")
    return Segmentor(backbone, decoder, classifier, align_corners=cfg.align_corners)


class InMemory(Dataset[Sample]):
    """Every sample of ``dataset`` materialised once (for the small demo splits).

    Args:
        dataset: the source.
        transform: applied on access (called with a generator when the caller passes one).
    """

    def __init__(self, dataset: Dataset[Sample], transform: T.JointTransform | None = None):
        self.samples = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        sample = self.samples[index]
        return self.transform(sample) if self.transform is not None else sample

    def load_label(self, index: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """The (H, W) label of frame ``index`` as uint8 (for class-balanced sampling)."""
        label = self.samples[index]["label"]
        assert label is not None
        return label.numpy().astype(np.uint8)


def _closed_set(data: DataConfig, split: str) -> Dataset[Sample]:
    if data.dataset == "demo":
        n = data.demo_train_images if split == "train" else data.demo_val_images
        return InMemory(DemoScenes(split, num_images=n, size=data.demo_size))  # type: ignore[arg-type]
    if not data.root:
        raise ValueError(
            f"data.root is not set: pass --set data.root=/path/to/{data.dataset} "
            "(the folder in the dataset's official layout)"
        )
    if data.dataset == "folder":
        return FolderDataset(
            data.root,
            split,
            folder_classes(data),
            image_dir=data.image_dir,
            label_dir=data.label_dir,
            image_suffix=data.image_suffix,
            label_suffix=data.label_suffix,
            reduce_zero_label=data.reduce_zero_label,
        )
    if data.dataset == "cityscapes":
        return Cityscapes(data.root, split)
    if data.dataset == "ade20k":
        return ADE20K(data.root, split)
    version: Literal["10k", "164k"] = "10k" if data.dataset == "coco_stuff10k" else "164k"
    return COCOStuff(data.root, split, version=version)


def build_train_data(data: DataConfig) -> tuple[Dataset[Sample], T.JointTransform]:
    """The training set (without transform) and its random training transform.

    The demo uses flips only (its scenes are already at training size); the real datasets use
    the paper's pipeline (:func:`~gmmseg.data.transforms.train_pipeline`).
    """
    dataset = _closed_set(data, data.train_split)
    if data.dataset == "demo":
        return dataset, T.Compose([T.RandomFlip(0.5), T.Normalize()])
    pipeline = T.train_pipeline(
        scale=data.scale,
        crop_size=data.crop_size,
        ratio_range=data.ratio_range,
        cat_max_ratio=data.cat_max_ratio,
    )
    return dataset, pipeline


def _eval_transform(data: DataConfig) -> T.JointTransform:
    if data.test_scale is None:
        return T.Normalize()
    return T.eval_pipeline(scale=data.test_scale)


def build_val_dataset(data: DataConfig) -> Dataset[Sample]:
    """The validation set with the test-time transform."""
    dataset = _closed_set(data, data.val_split)
    dataset.transform = _eval_transform(data)  # type: ignore[attr-defined]
    return dataset


def build_anomaly_datasets(
    recipe: Recipe, names: Sequence[str] | None = None
) -> dict[str, Dataset[Sample]]:
    """The recipe's anomaly benchmarks (or ``names`` of them), with the test-time transform.

    Raises:
        ValueError: the recipe has no anomaly section, an unknown name, or a missing root.
    """
    cfg = recipe.anomaly
    if cfg is None:
        raise ValueError(f"recipe {recipe.name!r} has no anomaly section")
    chosen = list(cfg.datasets if names is None else names)
    transform = _eval_transform(recipe.data)

    def need(value: str, key: str) -> str:
        if not value:
            raise ValueError(f"anomaly.{key} is not set: pass --set anomaly.{key}=/path")
        return value

    out: dict[str, Dataset[Sample]] = {}
    for name in chosen:
        ds: Any
        if name == "fishyscapes_lostandfound":
            ds = FishyscapesLostAndFound(
                need(cfg.fs_laf_root, "fs_laf_root"), need(cfg.laf_root, "laf_root")
            )
        elif name == "fishyscapes_static":
            ds = FishyscapesStatic(
                need(cfg.fs_static_root, "fs_static_root"),
                need(cfg.fs_static_cityscapes_root, "fs_static_cityscapes_root"),
                version=cfg.fs_static_version,
            )
        elif name == "road_anomaly":
            ds = RoadAnomaly(need(cfg.road_anomaly_root, "road_anomaly_root"))
        elif name == "smiyc_anomaly_track":
            ds = SMIYCAnomalyTrack(need(cfg.smiyc_anomaly_root, "smiyc_anomaly_root"))
        elif name == "smiyc_obstacle_track":
            ds = SMIYCObstacleTrack(need(cfg.smiyc_obstacle_root, "smiyc_obstacle_root"))
        elif name == "folder":
            ds = FolderAnomaly(
                need(cfg.folder_root, "folder_root"),
                image_dir=cfg.folder_image_dir,
                label_dir=cfg.folder_label_dir,
                image_suffix=cfg.folder_image_suffix,
                label_suffix=cfg.folder_label_suffix,
                label_map=cfg.folder_label_map or None,
            )
        elif name in ("demo_ood", "demo_ood_near"):
            split = name.removeprefix("demo_")
            ds = InMemory(
                DemoScenes(split, num_images=cfg.demo_images, size=recipe.data.demo_size)  # type: ignore[arg-type]
            )
        else:
            raise ValueError(
                f"unknown anomaly dataset {name!r}; expected one of "
                "fishyscapes_lostandfound, fishyscapes_static, road_anomaly, "
                "smiyc_anomaly_track, smiyc_obstacle_track, demo_ood, demo_ood_near, folder"
            )
        ds.transform = transform
        out[name] = ds
    return out


_FIXTURE_SIZE = (64, 128)


def dry_run_recipe(recipe: Recipe, root: Path | str, iters: int = 2) -> Recipe:
    """A miniature copy of ``recipe`` on :func:`~gmmseg.testing.write_fixture` data.

    Same architecture family, pipeline, optimiser and inference mode; fixtures written under
    ``root``; images of 64×128 (demo: 64×64), batch 2, ``iters`` iterations, checkpoints and
    evaluation at the end. Build the model with ``tiny=True``.

    Returns:
        The modified recipe.
    """
    # the fixture writers are test tooling: only a dry run loads them
    from gmmseg.testing import write_anomaly_folder_fixture, write_fixture, write_folder_fixture

    root = Path(root)
    data = recipe.data
    if data.dataset == "demo":
        data = dataclasses.replace(
            data, demo_train_images=8, demo_val_images=2, batch_size=2, num_workers=0
        )
    else:
        if data.dataset == "folder":
            names = folder_classes(data).names
            fixture = write_folder_fixture(
                root / "folder",
                names,
                # one folder when both splits are the same (or none: data.train_split=)
                splits=((data.train_split, 4),)
                if data.train_split == data.val_split
                else ((data.train_split, 4), (data.val_split, 2)),
                size=_FIXTURE_SIZE,
            )
            data = dataclasses.replace(
                data,
                classes=names,
                class_file="",
                palette=(),
                void_colors=(),
                image_dir="images",
                label_dir="labels",
                image_suffix="",
                label_suffix=".png",
                reduce_zero_label=False,
            )
        else:
            fixture = write_fixture(data.dataset, root, size=_FIXTURE_SIZE)
        h, w = _FIXTURE_SIZE
        data = dataclasses.replace(
            data,
            root=str(fixture),
            scale=(w, h),
            crop_size=(32, 32),
            test_scale=(w, h),
            batch_size=2,
            num_workers=0,
        )
    evaluation = recipe.eval
    if evaluation.mode == "slide":
        evaluation = dataclasses.replace(evaluation, crop_size=(32, 32), stride=(24, 24))
    anomaly = recipe.anomaly
    if anomaly is not None:
        roots: dict[str, Any] = {"demo_images": 3}
        for name in anomaly.datasets:
            if name.startswith("demo_"):
                continue
            if name == "folder":
                path = write_anomaly_folder_fixture(root / "anomaly_folder", size=_FIXTURE_SIZE)
                roots.update(
                    folder_root=str(path),
                    folder_image_dir="images",
                    folder_label_dir="labels",
                    folder_image_suffix="",
                    folder_label_suffix=".png",
                    folder_label_map=(),
                )
                continue
            path = write_fixture(name, root, size=_FIXTURE_SIZE)
            if name == "fishyscapes_lostandfound":
                roots["fs_laf_root"] = str(path / "fishyscapes_lostandfound")
                roots["laf_root"] = str(path / "LostAndFound")
            elif name == "fishyscapes_static":
                roots["fs_static_root"] = str(path)
                roots["fs_static_cityscapes_root"] = str(path / "cityscapes")
            elif name == "road_anomaly":
                roots["road_anomaly_root"] = str(path)
            elif name == "smiyc_anomaly_track":
                roots["smiyc_anomaly_root"] = str(path)
            else:
                roots["smiyc_obstacle_root"] = str(path)
        anomaly = dataclasses.replace(anomaly, **roots)
    train = dataclasses.replace(
        recipe.train,
        iters=iters,
        eval_interval=0,
        checkpoint_interval=0,
        log_interval=1,
    )
    optim = dataclasses.replace(recipe.optim, warmup_iters=min(recipe.optim.warmup_iters, 1))
    return dataclasses.replace(
        recipe, data=data, eval=evaluation, anomaly=anomaly, train=train, optim=optim
    )
