"""Typed, frozen recipe dataclasses: everything a training or evaluation run is made of."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from gmmseg.engine.evaluate import InferenceSettings
from gmmseg.heads.gmm_config import GMMHeadConfig, ReleaseFixes

__all__ = [
    "AnomalyConfig",
    "DataConfig",
    "EvalConfig",
    "GMMConfig",
    "ModelConfig",
    "OptimConfig",
    "Recipe",
    "TrainConfig",
]

DatasetName = Literal["cityscapes", "ade20k", "coco_stuff10k", "coco_stuff164k", "demo", "folder"]
AnomalySetName = Literal[
    "fishyscapes_lostandfound",
    "fishyscapes_static",
    "road_anomaly",
    "smiyc_anomaly_track",
    "smiyc_obstacle_track",
    "demo_ood",
    "demo_ood_near",
    "folder",
]


@dataclass(frozen=True)
class GMMConfig(GMMHeadConfig):
    """The GMM head's hyperparameters (:class:`~gmmseg.heads.GMMHeadConfig`), plus mean init.

    Every field of :class:`~gmmseg.heads.GMMHeadConfig` is a key of this section
    (``model.gmm.num_components``, ``model.gmm.fixes.count_only_filled``, ...); the recipe
    passes the section to :class:`~gmmseg.heads.GMMClassifier` as it is.

    Two keys of earlier versions are still read, with a ``DeprecationWarning``:
    ``model.gmm.faithful`` (``false`` turns on every fix: ``fixes`` becomes
    :meth:`ReleaseFixes.all() <gmmseg.heads.ReleaseFixes.all>`; ``true`` the release's
    behaviour) and ``model.gmm.persist_memory`` (now ``model.gmm.fixes.persist_memory``).
    ``faithful`` is a preset: it is applied first, then ``persist_memory``, then the fixes
    named under ``model.gmm.fixes``, whatever their order on the command line or in a file.

    Attributes:
        init_means: ``"random"`` (the paper: random unit directions) or ``"kmeans"``: at
            iteration ``init_iter`` the means and scales of every class are fitted with a batched
            diagonal EM (:meth:`~gmmseg.em.GaussianMixture.fit_grouped`) on the embeddings of
            ``init_batches`` training batches (see the demo's measured effect in the docs).
        init_iter: iteration of the data-driven initialisation.
        init_batches: batches whose embeddings the initialisation fits.
    """

    init_means: Literal["random", "kmeans"] = "random"
    init_iter: int = 0
    init_batches: int = 4

    #: Keys of earlier versions and the type of their values (see :meth:`with_legacy_key`).
    legacy_keys: ClassVar[dict[str, Any]] = {"faithful": bool, "persist_memory": bool | None}

    def with_legacy_key(self, key: str, value: Any) -> GMMConfig:
        """Apply a key of an earlier recipe version (``faithful``, ``persist_memory``).

        Warns:
            DeprecationWarning: naming the key that replaces it.

        Raises:
            KeyError: ``key`` is not one of :attr:`legacy_keys`.
        """
        if key == "faithful":
            warnings.warn(
                "model.gmm.faithful is deprecated: set the fixes one by one "
                "(model.gmm.fixes.separate_component_ignore, .count_only_filled, "
                ".persist_memory, .loss_average); faithful=false turned all four on",
                DeprecationWarning,
                stacklevel=3,
            )
            return dataclasses.replace(self, fixes=ReleaseFixes.preset(bool(value)))
        if key == "persist_memory":
            warnings.warn(
                "model.gmm.persist_memory is deprecated: use model.gmm.fixes.persist_memory",
                DeprecationWarning,
                stacklevel=3,
            )
            if value is None:  # the old "default": keep the fixes as they are
                return self
            fixes = dataclasses.replace(self.fixes, persist_memory=bool(value))
            return dataclasses.replace(self, fixes=fixes)
        raise KeyError(key)


@dataclass(frozen=True)
class ModelConfig:
    """Backbone, decoder and classifier.

    Attributes:
        backbone: a :func:`~gmmseg.backbones.list_backbones` name.
        output_stride: ResNet output stride (8, 16, 32); None for other backbones.
        window_size: Swin window (7 or 12); None for other backbones.
        drop_path_rate: stochastic depth of MiT/Swin (None: the constructor's default).
        pretrained: path of an ImageNet checkpoint to load into the backbone ("" = none).
        pretrained_source: its key layout (see :func:`~gmmseg.backbones.load_pretrained`).
        decoder: ``"fcn"``, ``"deeplabv3plus"``, ``"segformer"`` or ``"upernet"``.
        decoder_channels: decoder width.
        mit_norm: LayerNorm epsilon convention of a MiT backbone (ignored by others):
            ``"nvlabs"`` (1e-6 in blocks and stage norms, 1e-5 in patch-embedding and
            key/value-reduction norms), ``"mmseg"`` (1e-6 everywhere; mmsegmentation and the
            GMMSeg release) or ``"hf"`` (1e-5 everywhere; Hugging Face). Use the convention of
            the checkpoint the model loads (:data:`~gmmseg.backbones.mit.MIT_NORM_EPS`).
        segformer_projection: per-level projection of the SegFormer decoder: ``"conv"``
            (mmsegmentation, 1×1 conv + BN + ReLU) or ``"linear"`` (Hugging Face / NVlabs).
            See :class:`~gmmseg.heads.SegFormerDecoder`.
        head: ``"gmm"`` (GMMSeg) or ``"linear"`` (the softmax baseline).
        dropout: dropout of the linear classifier.
        gmm: options of the GMM classifier (:class:`GMMConfig`).
        align_corners: of every bilinear resize: the decoder's internal ones, the logits' in the
            loss and in inference.
        sync_bn: convert BatchNorm to SyncBatchNorm when training on several GPUs.
    """

    backbone: str = "mit_b5"
    output_stride: int | None = None
    window_size: int | None = None
    drop_path_rate: float | None = None
    pretrained: str = ""
    pretrained_source: str = "auto"
    decoder: Literal["fcn", "deeplabv3plus", "segformer", "upernet"] = "segformer"
    decoder_channels: int = 256
    mit_norm: Literal["nvlabs", "mmseg", "hf"] = "nvlabs"
    segformer_projection: Literal["conv", "linear"] = "conv"
    head: Literal["gmm", "linear"] = "gmm"
    dropout: float = 0.1
    gmm: GMMConfig = field(default_factory=GMMConfig)
    align_corners: bool = False
    sync_bn: bool = True


@dataclass(frozen=True)
class DataConfig:
    """Training and validation data.

    Attributes:
        dataset: ``"cityscapes"``, ``"ade20k"``, ``"coco_stuff10k"``, ``"coco_stuff164k"``,
            ``"demo"`` (:class:`~gmmseg.data.DemoScenes`, nothing to download) or ``"folder"``
            (your own images and labels, :class:`~gmmseg.data.FolderDataset`).
        root: dataset folder (unused by ``demo``).
        train_split: split name of the training set.
        val_split: split name of the validation set.
        scale: base (long, short) scale of the random rescale.
        ratio_range: random rescale ratio range.
        crop_size: (h, w) training crop.
        cat_max_ratio: largest fraction one class may cover in a crop.
        test_scale: (long, short) keep-ratio resize at test time (None: keep the size).
        batch_size: global batch (split evenly over processes).
        num_workers: data-loading processes per training process.
        class_balanced: draw a class uniformly, then an image containing it.
        demo_size: side of the demo scenes.
        demo_train_images: frames of the demo's ``train`` split.
        demo_val_images: frames of the demo's ``val`` split.
        classes: ``dataset="folder"``: the class names (``--set data.classes=road,car,sky``).
        class_file: ``dataset="folder"``: a JSON class file instead of ``classes`` (names,
            optional palette and void colours; see :func:`~gmmseg.data.read_class_file`).
            Training reads it and saves its content as ``classes``, ``palette`` and
            ``void_colors`` in the run's recipe, so a checkpoint does not need the file.
        palette: ``dataset="folder"`` with ``classes``: the class colours as R, G, B values,
            three per class in class order (``--set data.palette=128,64,128,0,0,142``), or ``()``.
        void_colors: ``dataset="folder"`` with ``classes``: colours read as ignore, three values
            per colour.
        image_dir: ``dataset="folder"``: image folder under ``root`` (split folders inside).
        label_dir: ``dataset="folder"``: label folder under ``root`` (split folders inside).
        image_suffix: ``dataset="folder"``: ending of the image files ("": .jpg, .png, ...).
        label_suffix: ``dataset="folder"``: ending of the label files.
        reduce_zero_label: ``dataset="folder"``: stored 0 is ignore, v is class v − 1.
    """

    dataset: DatasetName = "cityscapes"
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    scale: tuple[int, int] = (2048, 1024)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 1024)
    cat_max_ratio: float = 0.75
    test_scale: tuple[int, int] | None = (2048, 1024)
    batch_size: int = 16
    num_workers: int = 4
    class_balanced: bool = False
    demo_size: int = 64
    demo_train_images: int = 1000
    demo_val_images: int = 200
    classes: tuple[str, ...] = ()
    class_file: str = ""
    palette: tuple[int, ...] = ()
    void_colors: tuple[int, ...] = ()
    image_dir: str = "images"
    label_dir: str = "labels"
    image_suffix: str = ""
    label_suffix: str = ".png"
    reduce_zero_label: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (:func:`~gmmseg.engine.build_optimizer`).

    Attributes:
        name: ``"adamw"`` or ``"sgd"``.
        lr: base learning rate.
        weight_decay: weight decay (norms and position blocks get none).
        momentum: SGD momentum.
        head_lr_mult: learning-rate multiplier of decoder and classifier.
        power: poly exponent.
        min_lr_ratio: final / initial learning rate.
        warmup_iters: linear warm-up length.
        warmup_ratio: warm-up start factor.
        grad_clip: max gradient norm (None: off).
    """

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 6e-5
    weight_decay: float = 0.01
    momentum: float = 0.9
    head_lr_mult: float = 10.0
    power: float = 1.0
    min_lr_ratio: float = 0.0
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    grad_clip: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    """The loop (:class:`~gmmseg.engine.TrainSettings`) and the run.

    Attributes:
        iters: optimisation steps.
        seed: seed of weights, data order and augmentation (torch's generators; numpy's and
            Python's global generators are seeded with it too, for user code).
        deterministic: ``torch.use_deterministic_algorithms(True)`` (and one CPU thread's worth
            of reproducible kernels).
        log_interval: steps between log records.
        eval_interval: steps between evaluations (0: only at the end).
        checkpoint_interval: steps between checkpoints (0: only at the end).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``.
        channels_last: channels-last memory format.
        compile: ``torch.compile`` the forward.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
    """

    iters: int = 80000
    seed: int = 0
    deterministic: bool = False
    log_interval: int = 50
    eval_interval: int = 8000
    checkpoint_interval: int = 8000
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"


EvalConfig = InferenceSettings
"""The ``eval`` section: how :meth:`~gmmseg.segmentor.Segmentor.predict` is called in validation
and anomaly evaluation (``eval.mode``, ``eval.crop_size``, ``eval.stride``, ``eval.scales``,
``eval.flip``). Another name of :class:`~gmmseg.engine.InferenceSettings`, the one type."""


@dataclass(frozen=True)
class AnomalyConfig:
    """Anomaly-segmentation evaluation of a closed-set model.

    Attributes:
        datasets: benchmarks to evaluate (each needs its root below).
        fs_laf_root: Fishyscapes Lost & Found folder.
        laf_root: the LostAndFound dataset folder it refers to.
        fs_static_root: Fishyscapes Static folder.
        fs_static_cityscapes_root: Cityscapes folder the Static overlays refer to.
        fs_static_version: Static version (1, 2 or 3); published comparisons use 3. Report
            it with the numbers: the versions give different results.
        road_anomaly_root: Road Anomaly folder.
        smiyc_anomaly_root: SegmentMeIfYouCan RoadAnomaly21 folder.
        smiyc_obstacle_root: SegmentMeIfYouCan RoadObstacle21 folder.
        mode: metric computation (``"exact"`` or ``"binned"``).
        fpr95_rule: the FPR95 operating-point rule (``"first_ge"``).
        demo_images: frames of the demo's anomaly splits.
        folder_root: your own anomaly set (``"folder"``, :class:`~gmmseg.data.FolderAnomaly`).
        folder_image_dir: its image folder under ``folder_root``.
        folder_label_dir: its mask folder under ``folder_root``.
        folder_image_suffix: ending of its image files ("": .jpg, .png, ...).
        folder_label_suffix: ending of its mask files.
        folder_label_map: ``stored:canonical`` pairs when the masks do not hold 0 normal,
            1 anomaly, 255 void (e.g. ``0:0,2:1``; empty: the canonical values).
    """

    datasets: tuple[AnomalySetName, ...] = (
        "fishyscapes_lostandfound",
        "fishyscapes_static",
        "road_anomaly",
        "smiyc_anomaly_track",
        "smiyc_obstacle_track",
    )
    fs_laf_root: str = ""
    laf_root: str = ""
    fs_static_root: str = ""
    fs_static_cityscapes_root: str = ""
    fs_static_version: int = 3
    road_anomaly_root: str = ""
    smiyc_anomaly_root: str = ""
    smiyc_obstacle_root: str = ""
    mode: Literal["exact", "binned", "smiyc_binned"] = "exact"
    fpr95_rule: Literal["first_ge", "nearest", "first_gt", "interp"] = "first_ge"
    demo_images: int = 200
    folder_root: str = ""
    folder_image_dir: str = "images"
    folder_label_dir: str = "labels"
    folder_image_suffix: str = ""
    folder_label_suffix: str = ".png"
    folder_label_map: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    """One configuration of the paper (or the demo), by name.

    Attributes:
        name: registry name.
        description: one line.
        model: backbone, decoder, classifier.
        data: datasets and pipeline.
        optim: optimiser and schedule.
        train: the loop.
        eval: inference settings (:class:`~gmmseg.engine.InferenceSettings`).
        anomaly: anomaly evaluation (None for closed-set-only recipes).
        paper_result: the paper's reported number where public ("" otherwise).
        twin: name of the recipe that differs only by the classifier ("" if none).
    """

    name: str
    description: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: InferenceSettings = field(default_factory=InferenceSettings)
    anomaly: AnomalyConfig | None = None
    paper_result: str = ""
    twin: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable; tuples become lists)."""
        return dataclasses.asdict(self)
