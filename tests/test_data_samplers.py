"""Class-balanced sampling (statistical tests with fixed seeds), the index cache, loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from gmmseg.data import Cityscapes, Sample
from gmmseg.data import transforms as T
from gmmseg.data.samplers import (
    ClassBalancedSampler,
    DistributedClassBalancedSampler,
    build_dataloader,
    class_image_index,
    collate_samples,
)
from gmmseg.testing import write_fixture

pytestmark = pytest.mark.cpu_only("samplers and data loaders run on the CPU")


class Labels:
    """A minimal labelled dataset: class c present in image i iff table[i, c]."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.classes = tuple(str(c) for c in range(table.shape[1]))
        self.loads = 0

    def __len__(self) -> int:
        return int(self.table.shape[0])

    def load_label(self, index: int) -> np.ndarray:
        self.loads += 1
        present = np.flatnonzero(self.table[index])
        return np.concatenate([present, [255, 255]]).astype(np.uint8).reshape(1, -1)

    def file_list(self) -> list[str]:
        return [f"img{i}" for i in range(len(self))]


def skewed_table() -> np.ndarray:
    # Class 0 in every image, class 1 in two, class 2 in one, class 3 in none.
    t = np.zeros((8, 4), dtype=bool)
    t[:, 0] = True
    t[[2, 5], 1] = True
    t[7, 2] = True
    return t


def test_index_matches_loop() -> None:
    ds = Labels(skewed_table())
    index = class_image_index(ds, 4)
    for c in range(4):
        loop = [i for i in range(len(ds)) if ds.table[i, c]]
        assert index.images_of(c).tolist() == loop
    assert index.present.tolist() == [0, 1, 2]


def test_sampler_uniform_over_classes() -> None:
    ds = Labels(skewed_table())
    sampler = ClassBalancedSampler(ds, 30000, torch.Generator().manual_seed(0))
    classes, images = sampler.sample(30000)
    # Classes: uniform over the three present classes (chi-square, fixed seed).
    counts = torch.bincount(classes, minlength=4).numpy()
    assert counts[3] == 0
    assert stats.chisquare(counts[:3]).pvalue > 1e-3
    # Every drawn image contains its class.
    assert ds.table[images.numpy(), classes.numpy()].all()
    # Images: P(i) = 1/3 * sum over classes c in i of 1/n_c.
    n_c = ds.table.sum(0)
    expected = (ds.table[:, :3] / n_c[:3]).sum(1) / 3
    got = torch.bincount(images, minlength=8).numpy()
    assert stats.chisquare(got, expected * got.sum()).pvalue > 1e-3
    # Compare with uniform image sampling, which is far from class-balanced here.
    assert counts[2] / counts.sum() == pytest.approx(1 / 3, abs=0.02)


def test_sampler_on_fixture_and_cache(tmp_path: Path) -> None:
    root = write_fixture("cityscapes", tmp_path, num_images=6)
    ds = Cityscapes(root, "val")
    index = class_image_index(ds, 19, cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("class_index_*.npz"))
    assert len(cached) == 1
    again = class_image_index(ds, 19, cache_dir=tmp_path / "cache")
    assert torch.equal(index.images, again.images) and torch.equal(index.offsets, again.offsets)
    for c in range(19):
        loop = [i for i in range(len(ds)) if (ds[i]["label"] == c).any()]  # type: ignore[operator]
        assert index.images_of(c).tolist() == loop
    # The cache is keyed by the file list: another split gets another file.
    class_image_index(Cityscapes(root, "train"), 19, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("class_index_*.npz"))) == 2
    sampler = ClassBalancedSampler(
        ds, 5000, torch.Generator().manual_seed(1), cache_dir=tmp_path / "cache"
    )
    classes, _ = sampler.sample(5000)
    present = index.present
    counts = torch.bincount(classes, minlength=19)[present].numpy()
    assert stats.chisquare(counts).pvalue > 1e-3
    assert 16 not in present.tolist()  # "train" is absent from the fixture


def test_cache_is_used(tmp_path: Path) -> None:
    ds = Labels(skewed_table())
    class_image_index(ds, 4, cache_dir=tmp_path)
    loads = ds.loads
    class_image_index(ds, 4, cache_dir=tmp_path)
    assert ds.loads == loads


def test_index_errors() -> None:
    t = skewed_table()
    with pytest.raises(ValueError, match="outside"):
        class_image_index(Labels(t), 2)

    class NoLabel(Labels):
        def load_label(self, index: int) -> None:  # type: ignore[override]
            return None

    with pytest.raises(ValueError, match="no label"):
        class_image_index(NoLabel(t), 4)
    with pytest.raises(ValueError, match="num_samples"):
        ClassBalancedSampler(Labels(t), 0)
    with pytest.raises(ValueError, match="nothing to sample"):
        ClassBalancedSampler(Labels(np.zeros((3, 2), dtype=bool)), 5).sample(5)


def test_sampler_iteration_and_determinism() -> None:
    ds = Labels(skewed_table())
    a = list(ClassBalancedSampler(ds, 50, torch.Generator().manual_seed(3)))
    b = list(ClassBalancedSampler(ds, 50, torch.Generator().manual_seed(3)))
    assert a == b and len(a) == 50 and all(0 <= i < 8 for i in a)
    s = ClassBalancedSampler(ds, 50, torch.Generator().manual_seed(3))
    assert list(s) != list(s)  # successive epochs continue the stream


def test_distributed_sharding() -> None:
    ds = Labels(skewed_table())
    index = class_image_index(ds, 4)
    shards = [
        DistributedClassBalancedSampler(ds, 101, num_replicas=4, rank=r, seed=5, index=index)
        for r in range(4)
    ]
    seqs = [list(s) for s in shards]
    assert all(len(s) == len(sh) == 26 for s, sh in zip(seqs, shards, strict=True))
    single = DistributedClassBalancedSampler(ds, 104, num_replicas=1, rank=0, seed=5, index=index)
    merged = [seqs[i % 4][i // 4] for i in range(104)]
    assert merged == list(single)
    shards[0].set_epoch(1)
    assert list(shards[0]) != seqs[0]
    with pytest.raises(ValueError, match="rank"):
        DistributedClassBalancedSampler(ds, 10, num_replicas=2, rank=2, index=index)
    default = DistributedClassBalancedSampler(ds, 10, index=index)
    assert (default.num_replicas, default.rank) == (1, 0)


def _sample(label: torch.Tensor | None, hw: tuple[int, int] = (4, 6)) -> Sample:
    return {
        "image": torch.zeros(3, *hw, dtype=torch.uint8),
        "label": label,
        "name": "n",
        "image_path": "i",
        "label_path": "",
        "ori_size": hw,
    }


def test_collate() -> None:
    batch = collate_samples([_sample(torch.zeros(4, 6, dtype=torch.long))] * 2)
    assert batch["image"].shape == (2, 3, 4, 6) and batch["label"].shape == (2, 4, 6)
    assert batch["name"] == ["n", "n"]
    assert collate_samples([_sample(None)] * 2)["label"] is None
    with pytest.raises(ValueError, match="mixes"):
        collate_samples([_sample(None), _sample(torch.zeros(4, 6, dtype=torch.long))])
    with pytest.raises(ValueError, match="sizes"):
        collate_samples([_sample(None), _sample(None, (5, 6))])


def test_build_dataloader(tmp_path: Path) -> None:
    root = write_fixture("cityscapes", tmp_path, num_images=4)
    ds = Cityscapes(root, "val", transform=T.train_pipeline(scale=(64, 32), crop_size=(16, 32)))
    sampler = ClassBalancedSampler(ds, 8, torch.Generator().manual_seed(0))
    loader = build_dataloader(ds, 4, sampler=sampler, seed=1)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 16, 32) and batch["label"].shape == (4, 16, 32)
    assert batch["image"].dtype == torch.float32
    # Without workers the transforms draw from the main process's default generator.
    torch.manual_seed(7)
    first = [b["image"] for b in build_dataloader(ds, 2, seed=7)]
    torch.manual_seed(7)
    second = [b["image"] for b in build_dataloader(ds, 2, seed=7)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    with pytest.raises(ValueError, match="sampler"):
        build_dataloader(ds, 2, sampler=sampler, shuffle=True)
    with pytest.raises(ValueError, match="batch_size"):
        build_dataloader(ds, 0)


@pytest.mark.slow
def test_dataloader_workers_reproducible(tmp_path: Path) -> None:
    root = write_fixture("cityscapes", tmp_path, num_images=4)
    ds = Cityscapes(root, "val", transform=T.train_pipeline(scale=(64, 32), crop_size=(16, 32)))

    def run() -> list[torch.Tensor]:
        return [b["image"] for b in build_dataloader(ds, 2, num_workers=2, seed=3)]

    a, b = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # The two workers draw different augmentations.
    assert not torch.equal(a[0], a[1])


def test_cache_is_rebuilt_when_labels_change_or_the_file_is_damaged(tmp_path: Path) -> None:
    # Before: the cache was keyed on the paths only, so a label rewritten in place kept the
    # stale index; a truncated cache file raised from np.load.
    import os

    from PIL import Image

    root = write_fixture("cityscapes", tmp_path, num_images=4)
    ds = Cityscapes(root, "val")
    cache = tmp_path / "cache"
    before = class_image_index(ds, 19, cache_dir=cache)
    label_path = Path(ds.frames[0].label_path)
    stat = label_path.stat()
    Image.fromarray(np.full((64, 128), 7, dtype=np.uint8)).save(label_path)  # class 7 only
    os.utime(label_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = class_image_index(Cityscapes(root, "val"), 19, cache_dir=cache)
    loop = [c for c in range(19) if 0 in after.images_of(c).tolist()]
    assert loop == [7]
    assert [c for c in range(19) if 0 in before.images_of(c).tolist()] != [7]
    for damaged in cache.glob("class_index_*.npz"):
        damaged.write_bytes(damaged.read_bytes()[:20])
    again = class_image_index(Cityscapes(root, "val"), 19, cache_dir=cache)
    assert torch.equal(again.images, after.images) and torch.equal(again.offsets, after.offsets)
