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

        Args:
            batch: Samples from the pipeline's head: (3, h, w) uint8 images, (h, w) integer
                labels or None.

        Returns:
            The keys of `~gmmseg.data.samplers.collate_samples`, with ``image`` (B, 3, H, W)
            uint8, ``label`` (B, H, W) uint8 (or int64 when a value lies outside 0–255, or
            None) and ``valid_size`` (B, 2) int64, the (h, w) of each image before padding.

        Raises:
            ValueError: a non-uint8 image, an image larger than ``pad.size`` (as ``Pad``), a
                batch mixing labelled and unlabelled samples, or unequal sizes without a
                ``Pad``.
        """
        labels = [s["label"] for s in batch]
        if any(lab is None for lab in labels) and not all(lab is None for lab in labels):
            raise ValueError("a batch mixes labelled and unlabelled samples")
        for s in batch:
            if s["image"].dtype != torch.uint8:
                raise ValueError(
                    f"CompactTransfer expects the pipeline head to give uint8 images, got "
                    f"{s['image'].dtype} for {s['name']!r}"
                )
        sizes = [(int(s["image"].shape[1]), int(s["image"].shape[2])) for s in batch]
        images = [s["image"] for s in batch]
        stacked = [lab for lab in labels if lab is not None]
        if self.pad is not None:
            images = [self._pad(img, 0, self.pad.size) for img in images]
            stacked = [self._pad(lab, self.pad.label_pad_value, self.pad.size) for lab in stacked]
        elif len(set(sizes)) > 1:
            raise ValueError(
                f"cannot stack images of different sizes {sorted(set(sizes))}: crop/pad them in "
                "the transform or use batch_size=1"
            )
        # default_collate stacks straight into shared memory inside a worker process.
        return {
            "image": default_collate(images),
            "label": default_collate([_compact(lab) for lab in stacked]) if stacked else None,
            "name": [s["name"] for s in batch],
            "image_path": [s["image_path"] for s in batch],
            "label_path": [s["label_path"] for s in batch],
            "ori_size": [s["ori_size"] for s in batch],
            "valid_size": torch.tensor(sizes, dtype=torch.int64).reshape(len(batch), 2),
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
        """Main side: normalise, fill the padding, widen the labels; drop ``valid_size``.

        Args:
            batch: A batch from `collate`.
            pin_memory: Allocate the float images in pinned memory (as a loader with
                ``pin_memory=True`` would give them).

        Returns:
            The batch `~gmmseg.data.samplers.collate_samples` gives for the whole pipeline:
            ``image`` (B, 3, H, W) float32, ``label`` (B, H, W) int64 or None, and the lists.
        """
        out = dict(batch)
        valid = out.pop("valid_size")
        raw: Tensor = out["image"]
        norm = self.normalize
        mean = torch.tensor(norm.mean)[:, None, None]
        std = torch.tensor(norm.std)[:, None, None]
        image = torch.empty(raw.shape, dtype=torch.float32, pin_memory=pin_memory)
        torch.sub(raw, mean, out=image).div_(std)  # = Normalize: uint8 → float32, − mean, / std
        if self.pad is not None:
            fill = self.pad.pad_value
            for i, (h, w) in enumerate(valid.tolist()):
                image[i, :, h:, :] = fill
                image[i, :, :h, w:] = fill
        out["image"] = image
        if out["label"] is not None:
            out["label"] = out["label"].to(torch.int64)
        return out


def _compact(label: Tensor) -> Tensor:
    """``label`` as uint8 when every value lies in 0–255 (exact), else unchanged."""
    if label.dtype == torch.uint8 or label.numel() == 0:
        return label.to(torch.uint8)
    lo, hi = torch.aminmax(label)
    return label.to(torch.uint8) if int(lo) >= 0 and int(hi) <= 255 else label


class FinishingDataLoader(DataLoader[Any]):
    """A `DataLoader` whose batches pass through ``finish`` in the main process.

    Everything else is `DataLoader`'s: ``finish`` receives each collated batch (after pinning,
    when ``pin_memory=True``) and its result is what iteration yields.

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
