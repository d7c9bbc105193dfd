"""The contract of a dense classifier: what :class:`~gmmseg.segmentor.Segmentor` and others call.

A classifier maps a (B, F, h, w) decoder feature map to an output (a NamedTuple with at least
``logits``) and knows what to do with that output: its losses, its state update, its anomaly
score and the maps that inference resizes and averages. Code that holds "some classifier" calls
these methods and never asks which class it has; a capability only one classifier has (pixel
embeddings, a likelihood score) is described by an attribute of the contract.

:class:`~gmmseg.heads.GMMClassifier` and :class:`~gmmseg.heads.LinearClassifier` implement it
(without inheriting from it). :class:`~gmmseg.heads.PosthocMixtures` does not: it scores the
features of a network already trained, and has no logits, loss or update. A new classifier
meets the contract by having its members; ``mypy`` checks it structurally::

    head: Classifier[GMMOutput] = GMMClassifier(19, 256)
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

from torch import Tensor

from gmmseg.em.memory import ComponentMemory
from gmmseg.heads.anomaly import LogitScore

__all__ = ["Classifier", "ClassifierOutput"]


class ClassifierOutput(Protocol):
    """What every classifier output offers (``GMMOutput``, ``LinearOutput``)."""

    @property
    def logits(self) -> Tensor:
        """(B, C, h, w) class logits at feature resolution."""
        ...


OutputT = TypeVar("OutputT", bound=ClassifierOutput)


@runtime_checkable
class Classifier(Protocol[OutputT]):
    """A dense classifier on a (B, F, h, w) feature map; ``OutputT`` is its output type.

    Attributes:
        num_classes: C.
        in_channels: F, the channels of the feature map.
        ignore_index: label value of void pixels.
        validate: whether inputs are checked by value (NaN/Inf features, label range), at the
            cost of device synchronisations; types and shapes are always checked.
        anomaly_name: the name of the classifier's own anomaly score, the one
            :meth:`read_inference_maps` returns (``"likelihood"`` for the GMM head), or None
            when its anomaly score is one of the logit scores (the softmax head).
        embed_dim: D of the classifier's pixel embeddings (:meth:`embed`), or None when it has
            none (the softmax head).
        memory_bank: the ring bank of embeddings the classifier keeps between steps (the GMM
            head with ``memory="ring"``), which checkpoints of the original release also hold;
            None when it keeps none.
    """

    num_classes: int
    in_channels: int
    ignore_index: int
    validate: bool

    @property
    def anomaly_name(self) -> str | None:
        """The name of the classifier's own anomaly score, or None (see the class)."""
        ...

    @property
    def embed_dim(self) -> int | None:
        """D of the pixel embeddings, or None (see the class)."""
        ...

    @property
    def memory_bank(self) -> ComponentMemory | None:
        """The ring memory bank, or None (see the class)."""
        ...

    def __call__(self, features: Tensor) -> OutputT:
        """The module call: :meth:`forward` with the module's hooks."""
        ...

    def forward(self, features: Tensor) -> OutputT:
        """Classify every pixel of (B, F, h, w) float features."""
        ...

    def embed(self, features: Tensor) -> Tensor:
        """(B, D, h, w) pixel embeddings of (B, F, h, w) features.

        Raises:
            ValueError: when ``embed_dim`` is None (no embedding space).
        """
        ...

    def check_labels(self, target: Tensor) -> None:
        """Raise ``ValueError`` unless (B, H, W) ``target`` holds labels in [0, C) ∪ {ignore}."""
        ...

    def loss(self, output: OutputT, target: Tensor) -> dict[str, Tensor]:
        """The training losses of ``output`` against (B, H', W') labels; sum them."""
        ...

    def update(self, output: OutputT, target: Tensor) -> None:
        """The classifier's state update after a training step (a no-op for a stateless one)."""
        ...

    def losses_and_update(self, output: OutputT, target: Tensor) -> dict[str, Tensor]:
        """:meth:`loss` then :meth:`update`, sharing the work they have in common."""
        ...

    def anomaly_score(self, output: OutputT) -> Tensor:
        """(B, h, w) pixel anomaly score at feature resolution, higher = more anomalous."""
        ...

    def inference_maps(self, output: OutputT) -> Tensor:
        """(B, C + A, h, w) maps that inference resizes to the image and averages.

        Sliding windows, scales and flips average these maps (A extra channels: 1 for the GMM
        head's likelihood score, 0 for the softmax head); :meth:`read_inference_maps` turns the
        average into logits and an anomaly score.
        """
        ...

    def read_inference_maps(self, maps: Tensor, logit_score: LogitScore) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) logits and (B, H, W) anomaly score of averaged :meth:`inference_maps`.

        ``logit_score`` names the score of a classifier whose anomaly score is a logit score
        (``anomaly_name`` None); a classifier with its own score ignores it.
        """
        ...
