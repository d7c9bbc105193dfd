"""Class-balanced sampling and data loaders.

`ClassBalancedSampler` draws a class uniformly among the classes present in the dataset,
then an image containing it uniformly. The class → images index it needs is computed from the
labels in one pass and cached to a file keyed by the dataset's file list and each file's size
and modification time (`class_image_index`), so it is computed once per dataset. As with
``make``, a label rewritten with the same size and its old modification time (``cp -p``,
``rsync -a``, ``tar`` of an edited copy) is not noticed: delete ``class_index_*.npz`` from the
cache folder after such a change. Hashing every label's content instead would read the whole
label set at every start.

`build_dataloader` wraps `DataLoader` with seeded workers and a
collate function that understands `Sample` (including ``label=None``).
"""

from __future__ import annotations

import hashlib
import os
import random
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from gmmseg.data.base import Sample
from gmmseg.data.meta import IGNORE_INDEX

__all__ = [
    "ClassBalancedSampler",
    "ClassImageIndex",
    "DistributedClassBalancedSampler",
    "build_dataloader",
    "class_image_index",
    "collate_samples",
    "seed_worker",
]

_CACHE_VERSION = 2  # 2: the key includes file sizes and times


class LabelledDataset(Protocol):
    """What the index needs: a length and a label per frame (as ``SegmentationDataset``)."""

    def __len__(self) -> int: ...

    def load_label(self, index: int) -> Any: ...


@dataclass(frozen=True)
class ClassImageIndex:
    """For each class, the sorted indices of the images that contain it (CSR layout).

    Attributes:
        num_classes: C.
        offsets: (C + 1,) int64; images of class c are ``images[offsets[c]:offsets[c+1]]``.
        images: (nnz,) int64 image indices.
    """

    num_classes: int
    offsets: Tensor
    images: Tensor

    def images_of(self, c: int) -> Tensor:
        """(n_c,) int64 indices of the images containing class ``c``."""
        return self.images[int(self.offsets[c]) : int(self.offsets[c + 1])]

    @property
    def counts(self) -> Tensor:
        """(C,) int64 number of images per class."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def present(self) -> Tensor:
        """(C',) int64 the classes with at least one image."""
        return torch.nonzero(self.counts > 0).flatten()


def _labels_as_tensor(label: Any, index: int) -> Tensor:
    if label is None:
        raise ValueError(f"frame {index} has no label: class-balanced sampling needs labels")
    t = torch.as_tensor(np.asarray(label)) if not isinstance(label, Tensor) else label
    return t.reshape(-1).long()


def _cache_key(files: Sequence[str], num_classes: int, ignore_index: int) -> str:
    """Hash of the file list, each file's size and modification time, C and the ignore index.

    ``files`` entries may join several paths with ``|`` (image and label): each is stat-ed, so
    a label rewritten in place gives a new key (and a fresh index) instead of a stale one.
    """
    h = hashlib.sha256(f"v{_CACHE_VERSION}|{num_classes}|{ignore_index}\n".encode())
    for f in files:
        h.update(f.encode())
        for part in f.split("|"):
            try:
                st = os.stat(part)
            except OSError:
                h.update(b"|-")
                continue
            h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(b"\n")
    return h.hexdigest()[:24]


def _read_cache(path: Path, num_classes: int, num_images: int) -> ClassImageIndex | None:
    """The cached index, or None when the file is damaged (it is then rebuilt and rewritten)."""
    try:
        with np.load(path) as data:
            offsets = torch.from_numpy(data["offsets"].astype(np.int64))
            images = torch.from_numpy(data["images"].astype(np.int64))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if offsets.shape != (num_classes + 1,) or int(offsets[-1]) != images.numel():
        return None
    if images.numel() and not 0 <= int(images.min()) <= int(images.max()) < num_images:
        return None
    return ClassImageIndex(num_classes, offsets, images)


def class_image_index(
    dataset: LabelledDataset,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    cache_dir: Path | str | None = None,
) -> ClassImageIndex:
    """Compute (or load from cache) the class → images index of a dataset.

    Args:
        dataset: A dataset with ``load_label(i)`` returning (H, W) train ids (every gmmseg
            loader); with ``cache_dir`` it must also have ``file_list()``.
        num_classes: C; label values must lie in [0, C) ∪ {ignore_index}.
        ignore_index: Value that marks no class.
        cache_dir: Folder of the cache file ``class_index_{key}.npz``, the key hashing the
            dataset's file list, each file's size and modification time, C and
            ``ignore_index`` (not the files' content: see the module's note). No caching when
            None.

    Returns:
        The index.

    Raises:
        ValueError: a label value outside [0, C) ∪ {ignore_index}, a frame without label, or
            ``cache_dir`` with a dataset without ``file_list()``.
    """
    path = None
    if cache_dir is not None:
        file_list = getattr(dataset, "file_list", None)
        if file_list is None:
            raise ValueError("cache_dir needs a dataset with file_list() to key the cache")
        key = _cache_key(file_list(), num_classes, ignore_index)
        path = Path(cache_dir) / f"class_index_{key}.npz"
        if path.is_file():
            cached = _read_cache(path, num_classes, len(dataset))
            if cached is not None:
                return cached
    presence = torch.zeros(len(dataset), num_classes, dtype=torch.bool)
    for i in range(len(dataset)):
        flat = _labels_as_tensor(dataset.load_label(i), i)
        flat = flat[flat != ignore_index]
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_classes):
            bad = torch.unique(flat[(flat < 0) | (flat >= num_classes)])[:10].tolist()
            raise ValueError(
                f"frame {i}: label values {bad} outside [0, {num_classes}) ∪ {{{ignore_index}}}"
            )
        presence[i] = torch.bincount(flat, minlength=num_classes) > 0
    per_class = presence.t()
    counts = per_class.sum(1)
    offsets = torch.zeros(num_classes + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    images = torch.nonzero(per_class)[:, 1].contiguous()  # row-major: grouped by class, sorted
    index = ClassImageIndex(num_classes, offsets, images)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, offsets=offsets.numpy(), images=images.numpy())
        tmp.replace(path)
    return index


def _draw(
    index: ClassImageIndex, n: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    present = index.present
    if present.numel() == 0:
        raise ValueError("no class is present in any image: nothing to sample")
    classes = present[torch.randint(0, present.numel(), (n,), generator=generator)]
    counts = index.counts[classes]
    pos = (torch.rand(n, generator=generator, dtype=torch.float64) * counts).long()
    pos = torch.minimum(pos, counts - 1)
    return classes, index.images[index.offsets[classes] + pos]


class ClassBalancedSampler(Sampler[int]):
    """Draw a class uniformly (among classes present), then an image containing it.

    Classes that appear in no image cannot be drawn. Each pass draws ``num_samples`` indices
    with replacement; successive passes continue the generator's stream.

    Args:
        dataset: A dataset with ``load_label`` (see `class_image_index`).
        num_samples: Indices per pass (epoch).
        generator: Source of randomness (torch's default generator when None).
        num_classes: C; defaults to ``len(dataset.classes)``.
        ignore_index: Value that marks no class.
        cache_dir: Where to cache the class → images index.
        index: A precomputed index (skips the pass over the labels).

    Examples:
        >>> sampler = ClassBalancedSampler(Cityscapes(root, "train"), 1000)  # doctest: +SKIP
        >>> loader = build_dataloader(dataset, 8, sampler=sampler)  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        num_samples: int,
        generator: torch.Generator | None = None,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        cache_dir: Path | str | None = None,
        index: ClassImageIndex | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if index is None:
            c = num_classes if num_classes is not None else len(getattr(dataset, "classes", ()))
            if c <= 0:
                raise ValueError("num_classes is required for a dataset without `classes`")
            index = class_image_index(dataset, c, ignore_index, cache_dir)
        self.index = index
        self.num_samples = num_samples
        self.generator = generator

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """Draw ``n`` (class, image) pairs: two (n,) int64 tensors."""
        return _draw(self.index, n, self.generator)

    def __iter__(self) -> Iterator[int]:
        _, images = self.sample(self.num_samples)
        return iter(images.tolist())

    def __len__(self) -> int:
        return self.num_samples


class DistributedClassBalancedSampler(Sampler[int]):
    """Class-balanced sampling sharded over ranks (call `set_epoch` every epoch).

    Every rank draws the same global sequence of ``num_samples`` (rounded up to a multiple of
    ``num_replicas``) from ``seed + epoch`` and keeps positions ``rank::num_replicas``.

    Args:
        dataset: A dataset with ``load_label``.
        num_samples: Global indices per epoch.
        num_replicas: World size; from ``torch.distributed`` when None (1 if not initialised).
        rank: This rank; from ``torch.distributed`` when None (0 if not initialised).
        seed: Base seed, identical on every rank.
        num_classes: C; defaults to ``len(dataset.classes)``.
        ignore_index: Value that marks no class.
        cache_dir: Where to cache the class → images index.
        index: A precomputed index.
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        num_samples: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        cache_dir: Path | str | None = None,
        index: ClassImageIndex | None = None,
    ) -> None:
        dist = torch.distributed
        ready = dist.is_available() and dist.is_initialized()
        self.num_replicas = (
            num_replicas if num_replicas is not None else (dist.get_world_size() if ready else 1)
        )
        self.rank = rank if rank is not None else (dist.get_rank() if ready else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")
        self.base = ClassBalancedSampler(
            dataset, num_samples, None, num_classes, ignore_index, cache_dir, index
        )
        self.total = -(-num_samples // self.num_replicas) * self.num_replicas
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (changes the draw; the same on every rank)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        _, images = _draw(self.base.index, self.total, g)
        return iter(images[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.total // self.num_replicas


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global RNG that user code may use
    random.seed(seed)


def collate_samples(batch: Sequence[Sample]) -> dict[str, Any]:
    """Stack a list of samples.

    Returns:
        ``image`` (B, 3, H, W); ``label`` (B, H, W) int64, or None when every label is None;
        ``name``, ``image_path``, ``label_path`` lists; ``ori_size`` list of (H, W).

    Raises:
        ValueError: a batch mixing labelled and unlabelled samples, or unequal sizes.
    """
    labels = [s["label"] for s in batch]
    if any(lab is None for lab in labels) and not all(lab is None for lab in labels):
        raise ValueError("a batch mixes labelled and unlabelled samples")
    shapes = {tuple(s["image"].shape) for s in batch}
    if len(shapes) > 1:
        raise ValueError(
            f"cannot stack images of different sizes {sorted(shapes)}: crop/pad them in the "
            "transform or use batch_size=1"
        )
    stacked = [lab for lab in labels if lab is not None]
    # default_collate stacks tensors straight into shared memory inside a worker process;
    # torch.stack would stack into private memory that the worker then copies to shared
    # memory to send the batch.
    return {
        "image": default_collate([s["image"] for s in batch]),
        "label": default_collate(stacked) if stacked else None,
        "name": [s["name"] for s in batch],
        "image_path": [s["image_path"] for s in batch],
        "label_path": [s["label_path"] for s in batch],
        "ori_size": [s["ori_size"] for s in batch],
    }


def build_dataloader(
    dataset: Dataset[Sample],
    batch_size: int,
    sampler: Sampler[int] | None = None,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    pin_memory: bool | None = None,
    drop_last: bool = False,
    persistent_workers: bool | None = None,
) -> DataLoader[Sample]:
    """A DataLoader with seeded workers, `collate_samples` and sensible defaults.

    The loader's generator is seeded with ``seed``, so the per-worker seeds (and therefore the
    random transforms, which draw from torch's default generator) are reproducible for a given
    ``seed`` and ``num_workers``. With ``num_workers=0`` the transforms run in the main process
    and draw from its default generator: call ``torch.manual_seed`` for reproducibility.

    Args:
        dataset: The dataset.
        batch_size: B.
        sampler: Optional sampler (e.g. `ClassBalancedSampler`); excludes ``shuffle``.
        shuffle: Shuffle when no sampler is given.
        num_workers: Worker processes.
        seed: Seed of the loader's generator.
        pin_memory: Defaults to ``torch.cuda.is_available()``.
        drop_last: Drop the last incomplete batch.
        persistent_workers: Defaults to ``num_workers > 0``.

    Returns:
        The DataLoader.

    Raises:
        ValueError: ``sampler`` together with ``shuffle``, or non-positive ``batch_size``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if sampler is not None and shuffle:
        raise ValueError("pass either sampler or shuffle=True, not both")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_samples,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers,
    )
