"""A resumable, rank-sharded stream of training samples with per-draw seeded augmentation.

The random transforms of draw ``n`` use a generator seeded from ``(seed, n)``, so the sample
sequence depends only on the seed and the position in the stream: not on the number of data
workers, and not on whether the run was interrupted and resumed. This is what makes a resumed
run reach the same weights as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch.utils.data import Dataset, Sampler

from gmmseg.data import ClassBalancedSampler, Sample
from gmmseg.data.transforms import JointTransform

__all__ = ["AugmentedView", "TrainStream", "draw_seed"]

_MASK = (1 << 63) - 1


def draw_seed(seed: int, draw: int) -> int:
    """A 63-bit seed for draw ``draw`` of a stream seeded with ``seed`` (splitmix64 mixing)."""
    z = (seed * 0x9E3779B97F4A7C15 + draw + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK


class AugmentedView(Dataset[Sample]):
    """``dataset[index]`` transformed with a generator seeded from ``(seed, draw)``.

    Indexed by ``(draw, index)`` keys as yielded by :class:`TrainStream`. ``dataset`` must not
    apply random transforms itself.

    Args:
        dataset: the un-augmented dataset.
        transform: joint transform called as ``transform(sample, generator)``.
        seed: stream seed.
    """

    def __init__(self, dataset: Dataset[Sample], transform: JointTransform, seed: int) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        draw, index = key
        g = torch.Generator().manual_seed(draw_seed(self.seed, draw))
        return self.transform(self.dataset[index], g)


class TrainStream(Sampler[tuple[int, int]]):
    """Endless ``(draw, index)`` keys: epoch after epoch of a seeded order, sharded over ranks.

    Epoch ``e`` is a permutation of the dataset (``order="shuffle"``) or ``len(dataset)`` draws
    of :class:`~gmmseg.data.ClassBalancedSampler` (``order="class_balanced"``), both from a
    generator seeded with ``(seed, e)``. Rank ``r`` of ``world_size`` takes positions
    ``r, r + world_size, …`` of the concatenated epochs; ``draw`` is the global position.

    Args:
        dataset: the dataset (with ``load_label`` etc. for class-balanced order).
        seed: stream seed.
        order: ``"shuffle"`` or ``"class_balanced"``.
        rank: this process's rank.
        world_size: number of processes.
        start: number of keys this rank already consumed (resume).
        num_classes: classes, for the class-balanced index.
        cache_dir: where the class-balanced index is cached.

    Raises:
        ValueError: an unknown ``order``, a ``rank`` outside ``[0, world_size)``, a negative
            ``start`` or an empty dataset.
    """

    def __init__(
        self,
        dataset: Dataset[Sample],
        seed: int = 0,
        order: Literal["shuffle", "class_balanced"] = "shuffle",
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        num_classes: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if order not in ("shuffle", "class_balanced"):
            raise ValueError(f"order must be 'shuffle' or 'class_balanced', got {order!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if start < 0:
            raise ValueError(f"start (keys already consumed) must be >= 0, got {start}")
        self.n = len(dataset)  # type: ignore[arg-type]
        if self.n == 0:
            raise ValueError("cannot stream an empty dataset")
        self.dataset = dataset
        self.seed = seed
        self.order = order
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self._balanced: ClassBalancedSampler | None = None
        if order == "class_balanced":
            self._balanced = ClassBalancedSampler(
                dataset,  # type: ignore[arg-type]
                num_samples=self.n,
                num_classes=num_classes,
                cache_dir=cache_dir,
            )

    def _epoch(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(draw_seed(self.seed, -1 - epoch))
        if self._balanced is not None:
            self._balanced.generator = g
            return list(self._balanced)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start * self.world_size + self.rank  # global position of the next key
        epoch, offset = divmod(pos, self.n)
        order = self._epoch(epoch)
        while True:
            yield pos, order[offset]
            pos += self.world_size
            offset += self.world_size
            while offset >= self.n:
                offset -= self.n
                epoch += 1
                order = self._epoch(epoch)
