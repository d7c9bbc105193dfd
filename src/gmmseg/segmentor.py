"""``Segmentor`` = backbone + decoder + classifier, with whole / sliding / multi-scale inference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmmseg.heads.anomaly import LogitScore
from gmmseg.heads.base import Classifier, ClassifierOutput

__all__ = ["Prediction", "Segmentor"]


class Prediction(NamedTuple):
    """Result of :meth:`Segmentor.predict`, at the input resolution.

    Both are float32, or float64 for a float64 model.

    Attributes:
        logits: (B, C, H, W) averaged class logits.
        anomaly: (B, H, W) anomaly score, higher = more anomalous (for a GMM classifier
            −max_c s, the best class log-likelihood taken at the feature resolution, then
            resized and averaged like the logits; for a linear classifier the chosen logit
            score of the averaged logits).
    """

    logits: Tensor
    anomaly: Tensor


class Segmentor(nn.Module):
    """A segmentation network: ``classifier(decoder(backbone(images)))``.

    Args:
        backbone: module mapping (B, 3, H, W) images to a list of feature maps.
        decoder: module mapping that list to one (B, F, h, w) feature map.
        classifier: a :class:`~gmmseg.heads.Classifier` with ``in_channels == F``
            (:class:`~gmmseg.heads.GMMClassifier`, :class:`~gmmseg.heads.LinearClassifier`).
        align_corners: of every bilinear resize of logits.
        logit_anomaly: the anomaly score of a classifier without one of its own (a linear
            classifier, whose ``anomaly_name`` is None; ``"msp"`` by default).

    Example:
        >>> seg = Segmentor(backbone, decoder, GMMClassifier(19, decoder.out_channels))
        >>> losses = seg.training_step(images, labels)
        >>> sum(losses.values()).backward()
    """

    def __init__(
        self,
        backbone: nn.Module,
        decoder: nn.Module,
        classifier: Classifier[Any],
        *,
        align_corners: bool = False,
        logit_anomaly: LogitScore = "msp",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.classifier: Classifier[Any] = classifier
        self.align_corners = align_corners
        self.logit_anomaly: LogitScore = logit_anomaly

    @property
    def num_classes(self) -> int:
        """C."""
        return self.classifier.num_classes

    def features(self, images: Tensor) -> Tensor:
        """Decoder features of (B, 3, H, W) images: (B, F, h, w)."""
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"images must be a float tensor of shape (B, 3, H, W), got "
                f"{tuple(images.shape)} {images.dtype}"
            )
        feats = self.backbone(images)
        out: Tensor = self.decoder(feats)
        return out

    def forward(self, images: Tensor) -> ClassifierOutput:
        """Classifier output at feature resolution.

        Args:
            images: (B, 3, H, W) float normalised images.

        Returns:
            The classifier's output (:class:`~gmmseg.heads.GMMOutput`,
            :class:`~gmmseg.heads.LinearOutput`, ...).
        """
        out: ClassifierOutput = self.classifier(self.features(images))
        return out

    def training_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Forward, losses and the classifier's state update (GMM memory and M-step).

        With the classifier's ``validate=False`` the step reads nothing back from the device
        (a GMM classifier: except once per M-step, to list the classes present), so a GPU keeps
        running ahead; check the labels on the host first with ``classifier.check_labels``. With
        ``validate=True`` (the default) bad features or labels raise a ``ValueError`` here, at
        the cost of a few synchronisations per step.

        Args:
            images: (B, 3, H, W) float.
            labels: (B, H, W) int64 with ignore for void.

        Returns:
            The classifier's losses (already weighted; the training loss is their sum).
        """
        return self.losses_and_update(self(images), labels)

    def losses_and_update(self, output: ClassifierOutput, labels: Tensor) -> dict[str, Tensor]:
        """Losses of a forward output, then the classifier's state update.

        Under ``DistributedDataParallel`` call the wrapped model for the forward (so gradients
        are synchronised) and this method of the inner module for the rest:
        ``seg.losses_and_update(ddp_model(images), labels)``.

        Args:
            output: the result of :meth:`forward`.
            labels: (B, H, W) int64 with ignore for void.

        Returns:
            The classifier's losses.
        """
        return self.classifier.losses_and_update(output, labels)

    # ------------------------------------------------------------------ inference

    def _whole(self, images: Tensor) -> Tensor:
        """The classifier's inference maps of ``images``, resized to the images' size."""
        maps = self.classifier.inference_maps(self.forward(images))
        return F.interpolate(
            maps, size=images.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )

    def _slide(self, images: Tensor, crop_size: tuple[int, int], stride: tuple[int, int]) -> Tensor:
        b, _, h, w = images.shape
        ch, cw = crop_size
        sh, sw = stride
        rows = max(h - ch + sh - 1, 0) // sh + 1
        cols = max(w - cw + sw - 1, 0) // sw + 1
        total: Tensor | None = None
        count: Tensor | None = None
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
                y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
                crop = self._whole(images[:, :, y1:y2, x1:x2])
                if total is None or count is None:
                    total = crop.new_zeros((b, crop.shape[1], h, w))
                    count = crop.new_zeros((1, 1, h, w))
                total[:, :, y1:y2, x1:x2] += crop
                count[:, :, y1:y2, x1:x2] += 1
        assert total is not None and count is not None
        return total / count

    @torch.inference_mode()
    def predict(
        self,
        images: Tensor,
        mode: Literal["whole", "slide"] = "whole",
        crop_size: tuple[int, int] | None = None,
        stride: tuple[int, int] | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> Prediction:
        """Logits and anomaly scores at the input resolution.

        Sliding-window inference sums the upsampled logits of overlapping crops and divides by
        the number of crops covering each pixel (mmsegmentation's ``slide`` mode); multi-scale and
        flip average the results over every scale (and its mirror), resized back to the input.
        What is averaged is the classifier's
        :meth:`~gmmseg.heads.Classifier.inference_maps`: the logits, and for a GMM classifier its
        likelihood score (with ``upsample_before_norm`` its class scores s instead of its logits,
        the logit LayerNorm then applied once, to the average).

        Args:
            images: (B, 3, H, W) float.
            mode: ``"whole"`` or ``"slide"``.
            crop_size: (h, w) crop of ``"slide"`` mode.
            stride: (h, w) stride of ``"slide"`` mode.
            scales: image rescaling factors.
            flip: also average the horizontally flipped image.

        Returns:
            :class:`Prediction`.

        Raises:
            ValueError: on an unknown mode, missing crop/stride for ``"slide"``, or bad scales.
        """
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        if mode == "slide" and (crop_size is None or stride is None):
            raise ValueError("mode='slide' needs crop_size and stride, e.g. (768, 768), (512, 512)")
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(
                f"scales must be a non-empty sequence of positive floats, got {scales}"
            )
        h, w = images.shape[-2:]
        acc: Tensor | None = None
        n = 0
        for scale in scales:
            img = images
            if scale != 1.0:
                size = (round(h * scale), round(w * scale))
                img = F.interpolate(
                    images, size=size, mode="bilinear", align_corners=self.align_corners
                )
            for flipped in (False, True) if flip else (False,):
                x = img.flip(-1) if flipped else img
                maps = (
                    self._whole(x) if mode == "whole" else self._slide(x, crop_size, stride)  # type: ignore[arg-type]
                )
                if flipped:
                    maps = maps.flip(-1)
                if maps.shape[-2:] != (h, w):
                    maps = F.interpolate(
                        maps, size=(h, w), mode="bilinear", align_corners=self.align_corners
                    )
                acc = maps if acc is None else acc + maps
                n += 1
        assert acc is not None
        logits, anomaly = self.classifier.read_inference_maps(acc / n, self.logit_anomaly)
        return Prediction(logits=logits, anomaly=anomaly)
