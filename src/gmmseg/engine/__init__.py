"""Training engine: optimisers and schedule, resumable data stream, loop, checkpoints, evaluation.

Single process on CPU or one GPU, or many processes under ``torchrun`` (DistributedDataParallel;
the GMM state stays identical on all ranks because its update gathers from every rank).
"""

from gmmseg.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from gmmseg.engine.distributed import DistInfo, cleanup_distributed, init_distributed
from gmmseg.engine.evaluate import (
    InferenceSettings,
    anomaly_score_maps,
    evaluate_anomaly,
    evaluate_segmentation,
)
from gmmseg.engine.logger import MetricLogger
from gmmseg.engine.optim import PolyWarmup, build_optimizer, parameter_groups
from gmmseg.engine.trainer import Trainer, TrainSettings

__all__ = [
    "DistInfo",
    "InferenceSettings",
    "MetricLogger",
    "PolyWarmup",
    "TrainSettings",
    "Trainer",
    "anomaly_score_maps",
    "build_optimizer",
    "cleanup_distributed",
    "evaluate_anomaly",
    "evaluate_segmentation",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "parameter_groups",
    "save_checkpoint",
]
