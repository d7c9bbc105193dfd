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

`~gmmseg.data.samplers.build_dataloader` does this by default; `transfer_loader` does it for a
dataset built around a given transform.

Examples:
    >>> pipeline = transforms.train_pipeline((2048, 1024), (512, 1024))
    >>> loader = transfer_loader(  # doctest: +SKIP
    ...     lambda t: Cityscapes(root, "train", transform=t), pipeline,
    ...     batch_size=8, num_workers=4,
    ... )
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from gmmseg.data.base import Sample
from gmmseg.data.samplers import collate_samples
from gmmseg.data.transforms import Compose, Normalize, Pad, _fits_uint8, _pad_to

__all__ = ["CompactTransfer", "FinishingDataLoader", "transfer_loader"]


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
        if any(s["image"].dtype != torch.uint8 for s in batch):
            done = [self.normalize(s) for s in batch]
            if self.pad is not None:
                done = [self.pad(s) for s in done]
            return {**collate_samples(done), "valid_size": None, "label_widened": False}
        sizes = [(int(s["image"].shape[1]), int(s["image"].shape[2])) for s in batch]
        packed = [s.copy() for s in batch]
        if self.pad is not None:
            size, fill = self.pad.size, self.pad.label_pad_value
            for p in packed:
                p["image"] = _pad_to(p["image"], size, 0)
                p["label"] = None if p["label"] is None else _pad_to(p["label"], size, fill)
        # One decision for the whole batch: a worker stacks into a buffer of the first
        # label's dtype, so mixed dtypes would be cast (and wrap around) silently.
        present = [p["label"] for p in packed if p["label"] is not None]
        widen = bool(present) and all(
            lab.dtype == torch.int64 and _fits_uint8(lab) for lab in present
        )
        for p in packed:
            if widen and p["label"] is not None:
                p["label"] = p["label"].to(torch.uint8)
        out = collate_samples(packed)
        out["valid_size"] = torch.tensor(sizes, dtype=torch.int64).reshape(len(batch), 2)
        out["label_widened"] = widen
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


def transfer_loader(
    make_dataset: Callable[[Any], Dataset[Sample]],
    transform: object,
    *,
    compact: bool = True,
    **kwargs: Any,
) -> DataLoader[Any]:
    """A loader over ``make_dataset(t)``, with the compact transfer when it applies.

    With ``num_workers > 0``, ``compact`` and a ``transform`` that `CompactTransfer.split`
    accepts, ``t`` is the pipeline's head, the workers collate with `CompactTransfer.collate`
    and the main process finishes each batch (a `FinishingDataLoader`). Otherwise ``t`` is
    ``transform`` and batches are collated with `~gmmseg.data.samplers.collate_samples`.

    Args:
        make_dataset: Builds the dataset that applies a given transform.
        transform: The whole pipeline.
        compact: Allow the compact transfer.
        **kwargs: `DataLoader` arguments other than ``collate_fn``.

    Returns:
        The loader; its batches are the same either way.
    """
    split = CompactTransfer.split(transform)
    if compact and kwargs.get("num_workers", 0) > 0 and split is not None:
        head, transfer = split
        return FinishingDataLoader(
            make_dataset(head), collate_fn=transfer.collate, finish=transfer.finish, **kwargs
        )
    return DataLoader(make_dataset(transform), collate_fn=collate_samples, **kwargs)
