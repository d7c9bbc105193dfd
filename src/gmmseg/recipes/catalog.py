"""The paper's configurations, their softmax twins, the anomaly evaluation, and the demo.

Settings follow the GMMSeg release (built on mmsegmentation's configs): AdamW, lr 6e-5, weight
decay 0.01, head learning rate ×10, poly schedule (power 1) with 1500 warm-up iterations for
SegFormer and Swin; SGD, lr 0.01, momentum 0.9, weight decay 5e-4, poly 0.9 (min lr 1e-4) for
DeepLabV3+. Batch sizes are global (split over the processes of a ``torchrun`` launch).
"""

from __future__ import annotations

import dataclasses

from gmmseg.engine.evaluate import InferenceSettings
from gmmseg.heads.gmm_config import ReleaseFixes
from gmmseg.recipes.schema import (
    AnomalyConfig,
    DataConfig,
    GMMConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    TrainConfig,
)

__all__ = ["RECIPES", "get_recipe", "list_recipes", "recipes_markdown"]

_CITYSCAPES = DataConfig(
    dataset="cityscapes",
    train_split="train",
    val_split="val",
    scale=(2048, 1024),
    crop_size=(512, 1024),
    test_scale=(2048, 1024),
    batch_size=8,
)
_ADE20K = DataConfig(
    dataset="ade20k",
    train_split="training",
    val_split="validation",
    scale=(2048, 512),
    crop_size=(512, 512),
    test_scale=(2048, 512),
    batch_size=16,
)
_COCO10K = DataConfig(
    dataset="coco_stuff10k",
    train_split="train2014",
    val_split="test2014",
    scale=(2048, 512),
    crop_size=(512, 512),
    test_scale=(2048, 512),
    batch_size=16,
)
_ADAMW = OptimConfig(name="adamw", lr=6e-5, weight_decay=0.01, head_lr_mult=10.0, power=1.0)
_SGD = OptimConfig(
    name="sgd",
    lr=0.01,
    weight_decay=5e-4,
    momentum=0.9,
    head_lr_mult=1.0,
    power=0.9,
    min_lr_ratio=0.01,
    warmup_iters=0,
)
_80K = TrainConfig(iters=80000, eval_interval=8000, checkpoint_interval=8000)
_160K = TrainConfig(iters=160000, eval_interval=16000, checkpoint_interval=16000)

# The paper trained mmsegmentation's MiT, whose LayerNorms all use eps 1e-6 (mit_norm="mmseg");
# the released GMMSeg model needs it too.
_SEGFORMER = ModelConfig(
    backbone="mit_b5",
    drop_path_rate=0.1,
    decoder="segformer",
    decoder_channels=768,
    mit_norm="mmseg",
)
_DEEPLAB = ModelConfig(
    backbone="resnet101_v1c", output_stride=8, decoder="deeplabv3plus", decoder_channels=512
)
_UPERNET = ModelConfig(
    backbone="swin_base",
    window_size=12,
    drop_path_rate=0.3,
    decoder="upernet",
    decoder_channels=512,
)


def _gmm(model: ModelConfig, num_components: int) -> ModelConfig:
    # the official head's Dropout2d(0.1) before the projection (training only)
    gmm = GMMConfig(num_components=num_components, dropout=0.1)
    return dataclasses.replace(model, head="gmm", gmm=gmm)


def _pair(
    name: str,
    description: str,
    model: ModelConfig,
    data: DataConfig,
    optim: OptimConfig,
    train: TrainConfig,
    evaluation: InferenceSettings,
    num_components: int,
    paper_gmm: str = "",
    paper_softmax: str = "",
) -> list[Recipe]:
    gmm = Recipe(
        name=f"{name}_gmm",
        description=f"GMMSeg {description}",
        model=_gmm(model, num_components),
        data=data,
        optim=optim,
        train=train,
        eval=evaluation,
        paper_result=paper_gmm,
        twin=f"{name}_softmax",
    )
    softmax = dataclasses.replace(
        gmm,
        name=f"{name}_softmax",
        description=f"softmax baseline {description}",
        model=dataclasses.replace(model, head="linear"),
        paper_result=paper_softmax,
        twin=f"{name}_gmm",
    )
    return [gmm, softmax]


_SLIDE_768 = InferenceSettings(mode="slide", crop_size=(768, 768), stride=(512, 512))
_WHOLE = InferenceSettings(mode="whole")

_DEMO_GMM = GMMConfig(
    embed_dim=32,
    num_components=3,
    memory_size=2000,
    max_samples_per_component=20,
    update_interval=1,
    mean_momentum=0.99,
    upsample_before_norm=True,
    # no dropout before the head: measured harmful on the demo (see docs/demo.md)
    dropout=0.0,
    # Every fix of the original release, except that the demo's bank is small (a few MB): it
    # stays in checkpoints so that resume is exact.
    fixes=dataclasses.replace(ReleaseFixes.all(), persist_memory=True),
)
DEMO = Recipe(
    name="demo",
    description="GMMSeg on the embedded demo scenes (small CNN from scratch, CPU, minutes)",
    model=ModelConfig(
        backbone="convnet_small",
        decoder="segformer",
        decoder_channels=64,
        head="gmm",
        gmm=_DEMO_GMM,
        sync_bn=False,
    ),
    data=DataConfig(
        dataset="demo",
        train_split="train",
        val_split="val",
        crop_size=(64, 64),
        test_scale=None,
        batch_size=16,
        num_workers=0,
        demo_size=64,
        demo_train_images=1000,
        demo_val_images=200,
    ),
    optim=OptimConfig(
        name="adamw",
        lr=4e-3,
        weight_decay=0.01,
        head_lr_mult=10.0,
        power=1.0,
        warmup_iters=50,
        warmup_ratio=0.02,
    ),
    train=TrainConfig(
        iters=1200, eval_interval=0, checkpoint_interval=0, log_interval=100, deterministic=True
    ),
    eval=_WHOLE,
    anomaly=AnomalyConfig(datasets=("demo_ood", "demo_ood_near"), demo_images=200),
    twin="demo_softmax",
)
DEMO_SOFTMAX = dataclasses.replace(
    DEMO,
    name="demo_softmax",
    description="the demo's softmax twin (same backbone, decoder and schedule)",
    model=dataclasses.replace(DEMO.model, head="linear"),
    twin="demo",
)

_ALL: list[Recipe] = [
    *_pair(
        "segformer_b5_cityscapes",
        "SegFormer-MiT-B5, Cityscapes, 768×768 crop, 80k iterations, batch 16, slide 768/512",
        _SEGFORMER,
        dataclasses.replace(_CITYSCAPES, crop_size=(768, 768), batch_size=16),
        _ADAMW,
        _80K,
        _SLIDE_768,
        num_components=5,
    ),
    *_pair(
        "segformer_b5_ade20k",
        "SegFormer-MiT-B5, ADE20K, 512×512 crop, 160k iterations, batch 16, M = 8",
        _SEGFORMER,
        _ADE20K,
        _ADAMW,
        _160K,
        _WHOLE,
        num_components=8,
    ),
    *_pair(
        "segformer_b5_cocostuff10k",
        "SegFormer-MiT-B5, COCO-Stuff-10k, 512×512 crop, 80k iterations, batch 16, M = 5",
        _SEGFORMER,
        _COCO10K,
        _ADAMW,
        _80K,
        _WHOLE,
        num_components=5,
        paper_gmm="44.81 mIoU",
    ),
    *_pair(
        "deeplabv3plus_r101_cityscapes",
        "DeepLabV3+-ResNet101-V1c (OS 8), Cityscapes, 512×1024 crop, 80k iterations, batch 8",
        _DEEPLAB,
        _CITYSCAPES,
        _SGD,
        _80K,
        _WHOLE,
        num_components=5,
    ),
    *_pair(
        "deeplabv3plus_r101_ade20k",
        "DeepLabV3+-ResNet101-V1c (OS 8), ADE20K, 512×512 crop, 160k iterations, batch 16, M = 8",
        _DEEPLAB,
        _ADE20K,
        _SGD,
        _160K,
        _WHOLE,
        num_components=8,
    ),
    *_pair(
        "upernet_swin_b_cityscapes",
        "UPerNet-Swin-B (window 12), Cityscapes, 512×1024 crop, 80k iterations, batch 8",
        _UPERNET,
        _CITYSCAPES,
        dataclasses.replace(_ADAMW, head_lr_mult=1.0),
        _80K,
        _WHOLE,
        num_components=5,
    ),
    *_pair(
        "upernet_swin_b_ade20k",
        "UPerNet-Swin-B (window 12), ADE20K, 512×512 crop, 160k iterations, batch 16, M = 8",
        _UPERNET,
        _ADE20K,
        dataclasses.replace(_ADAMW, head_lr_mult=1.0),
        _160K,
        _WHOLE,
        num_components=8,
    ),
    Recipe(
        name="anomaly_segformer_b5_cityscapes",
        description=(
            "anomaly segmentation with the Cityscapes GMMSeg SegFormer-B5 model: Fishyscapes "
            "L&F and Static, Road Anomaly, SMIYC RA21/RO21 validation"
        ),
        model=_gmm(_SEGFORMER, 5),
        data=dataclasses.replace(_CITYSCAPES, crop_size=(768, 768), batch_size=16),
        optim=_ADAMW,
        train=_80K,
        eval=_SLIDE_768,
        anomaly=AnomalyConfig(),
        twin="segformer_b5_cityscapes_softmax",
    ),
    DEMO,
    DEMO_SOFTMAX,
]

#: Every recipe by name.
RECIPES: dict[str, Recipe] = {r.name: r for r in _ALL}


def list_recipes() -> list[str]:
    """Names accepted by :func:`get_recipe`, in catalogue order."""
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    """A recipe by name.

    Raises:
        ValueError: an unknown name (the known ones are listed).
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {list_recipes()}")
    return RECIPES[name]


def recipes_markdown() -> str:
    """The catalogue as a Markdown table (the docs' and README's recipe tables)."""
    lines = [
        "| recipe | dataset | backbone | decoder | head | crop | iterations | batch | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in RECIPES.values():
        crop = "×".join(map(str, r.data.crop_size))
        lines.append(
            f"| `{r.name}` | {r.data.dataset} | {r.model.backbone} | {r.model.decoder} | "
            f"{r.model.head} | {crop} | {r.train.iters} | {r.data.batch_size} | "
            f"{r.paper_result or '–'} |"
        )
    return "\n".join(lines)
