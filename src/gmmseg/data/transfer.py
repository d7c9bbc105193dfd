"""Compact transfer from DataLoader workers: normalise and pad after the batch crossed over.

A worker sends each batch to the main process through shared memory. A training pipeline that
ends with `~gmmseg.data.transforms.Normalize` and `~gmmseg.data.transforms.Pad` makes that
batch large: a 512×1024 crop is a 6 MB float32 image and a 4 MB int64 label, although the same
information fits in 1.5 MB (uint8 image) and 0.5 MB (uint8 label). Creating and filling the
shared memory costs about as much per byte as it takes to compute the crop, so on a small
machine the transfer, not the pipeline, can decide the loader's speed.

`CompactTransfer` splits such a pipeline: the workers run everything before the
``Normalize`` (+ ``Pad``) tail and collate uint8 images (padded with zeros, their valid size
recorded) and uint8 labels (when every value fits); the main process then normalises, fills
the padding and widens the labels to int64. The batches are identical, bit for bit, to the
ones the whole pipeline gives with `~gmmseg.data.samplers.collate_samples`.

Examples:
    >>> pipeline = transforms.train_pipeline((2048, 1024), (512, 1024))
    >>> head, transfer = CompactTransfer.split(pipeline)  # doctest: +SKIP
    >>> loader = FinishingDataLoader(  # doctest: +SKIP
    ...     dataset_with(head), batch_size=8, num_workers=4,
    ...     collate_fn=transfer.collate, finish=transfer.finish,
    ... )
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate

from gmmseg.data.base import Sample
from gmmseg.data.transforms import Compose, Normalize, Pad

__all__ = ["CompactTransfer", "FinishingDataLoader"]


@dataclass(frozen=True)
class CompactTransfer:
    """The ``Normalize`` (+ ``Pad``) tail of a pipeline, run on batches after the transfer.

    Attributes:
        normalize: The pipeline's final normalisation (or the one before its final ``Pad``).
        pad: The pipeline's final ``Pad``, or None.
    """

    normalize: Normalize
    pad: Pad | None = None

    @classmethod
    def split(cls, transform: object) -> tuple[Compose, CompactTransfer] | None:
        """Split a pipeline into its worker part and its deferred tail.

        Args:
            transform: A transform; only a `Compose` (exactly, not a subclass) whose
                last steps are exactly ``Normalize`` or ``Normalize, Pad`` qualifies.

        Returns:
            ``(head, transfer)``: ``head`` is a `Compose` of the preceding steps (the same
            step objects, so the same random draws), or None when ``transform`` does not end
            with that tail.
        """
        if type(transform) is not Compose:
            return None
        steps = list(transform.transforms)
        pad: Pad | None = None
        if steps and type(steps[-1]) is Pad:
            last = steps.pop()
            assert isinstance(last, Pad)
            pad = last
        if not steps or type(steps[-1]) is not Normalize:
            return None
        normalize = steps.pop()
        assert isinstance(normalize, Normalize)
        return Compose(steps), cls(normalize, pad)

    # ------------------------------------------------------------------ worker side

    def collate(self, batch: Sequence[Sample]) -> dict[str, Any]:
        """Worker side: stack uint8 images and compact labels, padded to ``pad.size``.

        A batch whose images are not all uint8 (a head that already gives floats) is
        normalised and padded here instead, as the whole pipeline would.

        Args:
            batch: Samples from the pipeline's head: (3, h, w) images, (h, w) integer labels
                or None.

        Returns:
            The keys of `~gmmseg.data.samplers.collate_samples`, with ``image`` (B, 3, H, W)
            uint8 and ``label`` (B, H, W) uint8 when every label is int64 with values in
            0–255 (else the labels as they are, or None), plus ``valid_size`` (B, 2) int64,
            the (h, w) of each image before padding (None when the batch was finished here),
            and ``label_widened`` (whether `finish` turns the labels back into int64).

        Raises:
            ValueError: an image larger than ``pad.size`` (as ``Pad``), a batch mixing
                labelled and unlabelled samples, or unequal sizes without a ``Pad``.
        """
        labels = [s["label"] for s in batch]
        if any(lab is None for lab in labels) and not all(lab is None for lab in labels):
            raise ValueError("a batch mixes labelled and unlabelled samples")
        if any(s["image"].dtype != torch.uint8 for s in batch):
            done = [self.normalize(s) for s in batch]
            if self.pad is not None:
                done = [self.pad(s) for s in done]
            return self._stack(done, [s["label"] for s in done], None, False)
        sizes = [(int(s["image"].shape[1]), int(s["image"].shape[2])) for s in batch]
        images = [s["image"] for s in batch]
        present = [lab for lab in labels if lab is not None]
        if self.pad is not None:
            images = [self._pad(img, 0, self.pad.size) for img in images]
            present = [self._pad(lab, self.pad.label_pad_value, self.pad.size) for lab in present]
        elif len(set(sizes)) > 1:
            raise ValueError(
                f"cannot stack images of different sizes {sorted(set(sizes))}: crop/pad them in "
                "the transform or use batch_size=1"
            )
        # One decision for the whole batch: a worker stacks into a buffer of the first
        # label's dtype, so mixed dtypes would be cast (and wrap around) silently.
        widen = bool(present) and all(_fits_uint8(lab) for lab in present)
        if widen:
            present = [lab.to(torch.uint8) for lab in present]
        packed = [{**s, "image": img} for s, img in zip(batch, images, strict=True)]
        valid = torch.tensor(sizes, dtype=torch.int64).reshape(len(batch), 2)
        return self._stack(packed, present, valid, widen)

    @staticmethod
    def _stack(
        batch: Sequence[Any], labels: Sequence[Tensor | None], valid: Tensor | None, widen: bool
    ) -> dict[str, Any]:
        present = [lab for lab in labels if lab is not None]
        # default_collate stacks straight into shared memory inside a worker process.
        return {
            "image": default_collate([s["image"] for s in batch]),
            "label": default_collate(present) if present else None,
            "name": [s["name"] for s in batch],
            "image_path": [s["image_path"] for s in batch],
            "label_path": [s["label_path"] for s in batch],
            "ori_size": [s["ori_size"] for s in batch],
            "valid_size": valid,
            "label_widened": widen,
        }

    @staticmethod
    def _pad(x: Tensor, value: float, size: tuple[int, int]) -> Tensor:
        h, w = x.shape[-2:]
        if h > size[0] or w > size[1]:
            raise ValueError(f"Pad: image (H, W) = {(h, w)} is larger than size {size}")
        if (h, w) == size:
            return x
        out = x.new_full((*x.shape[:-2], *size), value)
        out[..., :h, :w] = x
        return out

    # ------------------------------------------------------------------ main side

    def finish(self, batch: dict[str, Any], pin_memory: bool = False) -> dict[str, Any]:
        """Main side: normalise, fill the padding, widen the labels; drop the transfer keys.

        Args:
            batch: A batch from `collate`.
            pin_memory: Give the new tensors pinned memory when the incoming batch is pinned
                (a loader with ``pin_memory=True`` on a machine with an accelerator).

        Returns:
            The batch `~gmmseg.data.samplers.collate_samples` gives for the whole pipeline:
            ``image`` (B, 3, H, W) float32, ``label`` (B, H, W) or None, and the lists.
        """
        out = dict(batch)
        valid = out.pop("valid_size")
        widen = out.pop("label_widened")
        if valid is None:  # normalised and padded in the worker
            return out
        raw: Tensor = out["image"]
        pin = pin_memory and raw.is_pinned()
        norm = self.normalize
        mean = torch.tensor(norm.mean)[:, None, None]
        std = torch.tensor(norm.std)[:, None, None]
        image = torch.empty(raw.shape, dtype=torch.float32, pin_memory=pin)
        torch.sub(raw, mean, out=image).div_(std)  # = Normalize: uint8 → float32, − mean, / std
        if self.pad is not None:
            fill = self.pad.pad_value
            for i, (h, w) in enumerate(valid.tolist()):
                image[i, :, h:, :] = fill
                image[i, :, :h, w:] = fill
        out["image"] = image
        if widen:
            label: Tensor = out["label"]
            out["label"] = torch.empty(label.shape, dtype=torch.int64, pin_memory=pin).copy_(label)
        return out


def _fits_uint8(label: Tensor) -> bool:
    """Whether ``label`` is int64 with every value in 0–255 (so uint8 holds it exactly)."""
    if label.dtype != torch.int64:
        return False
    if label.numel() == 0:
        return True
    lo, hi = torch.aminmax(label)
    return int(lo) >= 0 and int(hi) <= 255


class FinishingDataLoader(DataLoader[Any]):
    """A `DataLoader` whose batches pass through ``finish`` in the main process.

    Everything else is `DataLoader`'s: ``finish`` receives each collated batch (after pinning,
    when ``pin_memory=True``) and its result is what iteration yields. ``iter(loader)`` is a
    generator over those results (not DataLoader's iterator object); the workers start at its
    first ``next``.

    Args:
        *args: `DataLoader` arguments.
        finish: Called as ``finish(batch, pin_memory)`` on every batch.
        **kwargs: `DataLoader` keyword arguments.
    """

    def __init__(
        self, *args: Any, finish: Callable[[dict[str, Any], bool], dict[str, Any]], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.finish = finish

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        """Iterate over finished batches."""
        for batch in super().__iter__():
            yield self.finish(batch, self.pin_memory)
