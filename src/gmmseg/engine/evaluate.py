"""Evaluation loops: closed-set mIoU and pixel anomaly metrics over a data loader."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from gmmseg.engine.posthoc import posthoc_score_maps
from gmmseg.heads import PosthocMixtures
from gmmseg.heads.anomaly import LOGIT_SCORES
from gmmseg.metrics import AnomalyMetrics, AnomalyResult, SegmentationMetrics, SegmentationResult
from gmmseg.metrics._curve import FPR95Rule
from gmmseg.metrics.anomaly import AnomalyMode
from gmmseg.segmentor import Prediction, Segmentor

__all__ = ["InferenceSettings", "anomaly_score_maps", "evaluate_anomaly", "evaluate_segmentation"]


@dataclass(frozen=True)
class InferenceSettings:
    """How :meth:`Segmentor.predict` is called.

    Attributes:
        mode: ``"whole"`` or ``"slide"``.
        crop_size: (h, w) window of ``"slide"``.
        stride: (h, w) stride of ``"slide"``.
        scales: image rescaling factors (multi-scale testing).
        flip: also average the mirrored image.
    """

    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def predict(self, model: Segmentor, images: Tensor) -> Prediction:
        """``model.predict(images, ...)`` with these settings."""
        return model.predict(images, self.mode, self.crop_size, self.stride, self.scales, self.flip)


def _to_label_size(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    squeeze = x.ndim == 3
    y = x.unsqueeze(1) if squeeze else x
    y = F.interpolate(y.float(), size=tuple(size), mode="bilinear", align_corners=align_corners)
    return y.squeeze(1) if squeeze else y


def anomaly_score_maps(model: Segmentor, prediction: Prediction) -> dict[str, Tensor]:
    """Every anomaly score of a prediction, by name (higher = more anomalous).

    A classifier with an anomaly score of its own yields it under its ``anomaly_name`` (a GMM
    classifier: ``"likelihood"``, −max_c log p(x | c)) and, for comparison, the logit scores of
    its own logits; a linear classifier yields ``"msp"``, ``"max_logit"``, ``"energy"`` and
    ``"entropy"``.

    Args:
        model: the segmentor that made the prediction.
        prediction: the result of :meth:`Segmentor.predict`.

    Returns:
        Name → (B, H, W) float scores.
    """
    scores: dict[str, Tensor] = {}
    own = model.classifier.anomaly_name
    if own is not None:
        scores[own] = prediction.anomaly
    for name, fn in LOGIT_SCORES.items():
        scores[name] = fn(prediction.logits)
    return scores


def _batches(
    loader: Iterable[dict[str, Any]], device: torch.device
) -> Iterable[tuple[Tensor, Tensor]]:
    for batch in loader:
        if batch["label"] is None:
            raise ValueError(
                f"evaluation needs labels, but the batch {batch['name']} has none (a test split?)"
            )
        yield batch["image"].to(device), batch["label"].to(device)


@torch.inference_mode()
def evaluate_segmentation(
    model: Segmentor,
    loader: Iterable[dict[str, Any]],
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    settings: InferenceSettings | None = None,
    ignore_index: int = 255,
) -> SegmentationResult:
    """mIoU, mAcc, aAcc and per-class IoU of ``model`` over ``loader``.

    Logits are resized (bilinear) to each label's resolution before the argmax, so labels are
    evaluated at their stored size. Under ``torch.distributed`` each rank evaluates its shard
    and the confusion counts are all-reduced.

    Args:
        model: the segmentor (set to eval mode here).
        loader: batches of ``{"image": (B, 3, H, W) float, "label": (B, H', W') int64}``.
        num_classes: C.
        device: where to compute.
        settings: inference settings (whole image by default).
        ignore_index: void label.

    Returns:
        :class:`~gmmseg.metrics.SegmentationResult`.
    """
    settings = settings or InferenceSettings()
    device = torch.device(device)
    model.eval()
    metrics = SegmentationMetrics(num_classes, ignore_index)
    for images, labels in _batches(loader, device):
        pred = settings.predict(model, images)
        logits = _to_label_size(pred.logits, labels.shape[-2:], model.align_corners)
        metrics.update(logits.argmax(dim=1), labels)
    metrics.all_reduce()
    return metrics.compute()


@torch.inference_mode()
def evaluate_anomaly(
    model: Segmentor,
    loader: Iterable[dict[str, Any]],
    *,
    device: torch.device | str = "cpu",
    settings: InferenceSettings | None = None,
    scores: Sequence[str] | None = None,
    mode: AnomalyMode = "exact",
    fpr95_rule: FPR95Rule = "first_ge",
    ignore_index: int = 255,
    posthoc: PosthocMixtures | None = None,
) -> dict[str, AnomalyResult]:
    """Pixel anomaly metrics (AP, AUROC, FPR95, …) of every anomaly score over ``loader``.

    Args:
        model: the segmentor.
        loader: batches with anomaly labels (0 normal, 1 anomaly, ``ignore_index`` void).
        device: where to compute.
        settings: inference settings.
        scores: names from :func:`anomaly_score_maps` (all of them by default).
        mode: :class:`~gmmseg.metrics.AnomalyMetrics` mode (exact by default).
        fpr95_rule: the FPR95 rule (``"first_ge"``: the first operating point with TPR ≥ 0.95).
        ignore_index: void label.
        posthoc: post-hoc mixtures fitted on this model
            (:func:`~gmmseg.engine.posthoc.fit_posthoc`): adds their ``"posthoc_likelihood"``
            and ``"posthoc_marginal"`` scores.

    Returns:
        Score name → :class:`~gmmseg.metrics.AnomalyResult`.

    Raises:
        ValueError: an unknown score name.
    """
    settings = settings or InferenceSettings()
    device = torch.device(device)
    model.eval()
    metrics: dict[str, AnomalyMetrics] | None = None
    for images, labels in _batches(loader, device):
        maps = anomaly_score_maps(model, settings.predict(model, images))
        if posthoc is not None:
            maps.update(posthoc_score_maps(model, posthoc, images, settings))
        if metrics is None:
            names = list(maps) if scores is None else list(scores)
            unknown = [n for n in names if n not in maps]
            if unknown:
                raise ValueError(f"unknown anomaly score(s) {unknown}; available: {list(maps)}")
            metrics = {
                n: AnomalyMetrics(ignore_index, mode=mode, fpr95_rule=fpr95_rule) for n in names
            }
        for name, m in metrics.items():
            m.update(_to_label_size(maps[name], labels.shape[-2:], model.align_corners), labels)
    if metrics is None:
        raise ValueError("the anomaly loader yielded no batch")
    for m in metrics.values():
        m.all_reduce()
    return {name: m.compute() for name, m in metrics.items()}
