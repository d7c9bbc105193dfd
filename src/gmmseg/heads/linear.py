"""The discriminative softmax baseline head."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from gmmseg.em.memory import ComponentMemory
from gmmseg.heads._common import (
    LossAverage,
    check_features,
    check_target,
    compute_dtype,
    segmentation_loss,
)
from gmmseg.heads.anomaly import LogitScore, logit_anomaly_score

__all__ = ["LinearClassifier", "LinearOutput"]


class LinearOutput(NamedTuple):
    """Output of :class:`LinearClassifier`.

    Attributes:
        logits: (B, C, H, W) class logits at feature resolution.
    """

    logits: Tensor


class LinearClassifier(nn.Module):
    """Dropout + 1×1 convolution to C logits, trained with cross-entropy.

    It meets the same :class:`~gmmseg.heads.Classifier` contract as
    :class:`gmmseg.heads.GMMClassifier`, so the two swap in one line. It has no embedding space
    (``embed_dim`` is None) and no anomaly score of its own (``anomaly_name`` is None): its
    anomaly scores are computed from its logits (:mod:`gmmseg.heads.anomaly`).

    Args:
        num_classes: C.
        in_channels: channels of the decoder feature map.
        dropout: dropout probability before the classifier (0.1 as in mmsegmentation).
        ignore_index: label value excluded from the loss.
        loss_average: ``"all"`` divides the loss by every label pixel, ignored ones included
            (mmsegmentation's default, used by the paper); ``"valid"`` by the non-ignored ones.
        align_corners: passed to the bilinear upsampling of the logits in the loss.
        validate: check input values: NaN/Inf features in :meth:`forward` and labels outside
            [0, C) ∪ {ignore_index} in :meth:`loss` (each reads its result on the host, a device
            synchronisation on an accelerator). With False only types and shapes are checked;
            see :class:`~gmmseg.heads.GMMClassifier` and :meth:`check_labels`.

    Example:
        >>> head = LinearClassifier(num_classes=3, in_channels=8)
        >>> head(torch.randn(2, 8, 4, 4)).logits.shape
        torch.Size([2, 3, 4, 4])
    """

    anomaly_name: str | None = None
    embed_dim: int | None = None
    memory_bank: ComponentMemory | None = None

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        *,
        dropout: float = 0.1,
        ignore_index: int = 255,
        loss_average: LossAverage = "all",
        align_corners: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if loss_average not in ("all", "valid"):
            raise ValueError(f"loss_average must be 'all' or 'valid', got {loss_average!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.ignore_index = ignore_index
        self.loss_average: LossAverage = loss_average
        self.align_corners = align_corners
        self.validate = validate
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        if self.classifier.bias is not None:
            nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Tensor) -> LinearOutput:
        """Classify every pixel.

        Args:
            features: (B, in_channels, H, W) float.

        Returns:
            :class:`LinearOutput` with ``logits`` (B, C, H, W).

        Raises:
            ValueError: on a wrong shape, or non-finite features with ``validate``.
        """
        check_features(features, self.in_channels, values=self.validate)
        logits: Tensor = self.classifier(self.dropout(features))
        return LinearOutput(logits=logits)

    def loss(self, output: LinearOutput, target: Tensor) -> dict[str, Tensor]:
        """Cross-entropy against labels at label resolution.

        Args:
            output: the result of :meth:`forward`.
            target: (B, H', W') int64 class ids with ``ignore_index`` for void.

        Returns:
            ``{"loss_seg": scalar}``.

        Raises:
            ValueError: on a wrong shape, or labels outside [0, C) ∪ {ignore_index} with
                ``validate``.
        """
        check_target(target, self.num_classes, self.ignore_index, values=self.validate)
        if target.shape[0] != output.logits.shape[0]:
            raise ValueError(
                f"target batch size {target.shape[0]} != logits batch size {output.logits.shape[0]}"
            )
        return {
            "loss_seg": segmentation_loss(
                output.logits, target, self.ignore_index, self.loss_average, self.align_corners
            )
        }

    def check_labels(self, target: Tensor) -> None:
        """Raise unless ``target`` is (B, H, W) integer labels in [0, C) ∪ {ignore_index}.

        Always checks the values, whatever ``validate`` says: call it once per batch where the
        labels are still on the host (no device synchronisation), e.g. before moving them.

        Raises:
            ValueError: naming the offending values and their pixel count.
        """
        check_target(target, self.num_classes, self.ignore_index)

    def update(self, output: LinearOutput, target: Tensor) -> None:
        """No-op: the softmax head has no generative state (kept for interchangeability)."""

    def losses_and_update(self, output: LinearOutput, target: Tensor) -> dict[str, Tensor]:
        """:meth:`loss` (the update is a no-op).

        Raises:
            ValueError: ``output`` is not a :class:`LinearOutput` (e.g. another head's), or as
                :meth:`loss`.
        """
        if not isinstance(output, LinearOutput):
            raise ValueError(f"output must be a LinearOutput, got {type(output).__name__}")
        losses = self.loss(output, target)
        self.update(output, target)
        return losses

    def embed(self, features: Tensor) -> Tensor:
        """Always raises: the softmax head has no embedding space (``embed_dim`` is None).

        Raises:
            ValueError: always; use the decoder features instead.
        """
        raise ValueError(
            "LinearClassifier has no pixel embeddings (embed_dim is None): use the decoder "
            "features instead"
        )

    def anomaly_score(self, output: LinearOutput, method: LogitScore = "msp") -> Tensor:
        """Pixel anomaly score from the logits.

        Args:
            output: the result of :meth:`forward`.
            method: ``"msp"``, ``"max_logit"``, ``"energy"`` or ``"entropy"``.

        Returns:
            (B, H, W) scores, higher = more anomalous.
        """
        return logit_anomaly_score(output.logits, method)

    def inference_maps(self, output: LinearOutput) -> Tensor:
        """(B, C, h, w): the logits, which inference resizes and averages.

        Args:
            output: the result of :meth:`forward`.

        Returns:
            The logits in the wider of float32 and their dtype.
        """
        return output.logits.to(compute_dtype(output.logits.dtype))

    def read_inference_maps(
        self, maps: Tensor, logit_score: LogitScore = "msp"
    ) -> tuple[Tensor, Tensor]:
        """Logits and the chosen logit anomaly score of averaged :meth:`inference_maps`.

        Args:
            maps: (B, C, H, W) resized and averaged logits.
            logit_score: ``"msp"``, ``"max_logit"``, ``"energy"`` or ``"entropy"``.

        Returns:
            (B, C, H, W) logits and (B, H, W) anomaly score of those logits.
        """
        logits = maps[:, : self.num_classes]
        return logits, logit_anomaly_score(logits, logit_score)
