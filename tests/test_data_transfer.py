"""Compact transfer: the split pipeline gives the same batches as the whole one, bit for bit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from gmmseg.data import (
    Cityscapes,
    CompactTransfer,
    FinishingDataLoader,
    Sample,
    build_dataloader,
    write_fixture,
)
from gmmseg.data import transforms as T
from gmmseg.data.samplers import collate_samples


def make_sample(seed: int, h: int, w: int, max_label: int = 18) -> Sample:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, max_label + 1, (h, w), generator=g)
    label[torch.rand(h, w, generator=g) < 0.2] = 255
    return {
        "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
        "label": label,
        "name": f"s{seed}",
        "image_path": f"s{seed}.png",
        "label_path": f"s{seed}_label.png",
        "ori_size": (h, w),
    }


def assert_same_batch(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def test_split_finds_the_normalize_pad_tail() -> None:
    pipe = T.train_pipeline((192, 96), (48, 80))
    split = CompactTransfer.split(pipe)
    assert split is not None
    head, transfer = split
    assert type(head) is T.Compose and head.transforms == pipe.transforms[:-2]
    assert transfer.normalize is pipe.transforms[-2] and transfer.pad is pipe.transforms[-1]
    flip = T.RandomFlip()
    only_norm = CompactTransfer.split(T.Compose([flip, T.Normalize()]))
    assert only_norm is not None and only_norm[0].transforms == [flip]
    assert only_norm[1].pad is None

    class MyCompose(T.Compose):
        pass

    for other in (
        None,
        T.Normalize(),  # not a Compose
        MyCompose(list(pipe.transforms)),  # a subclass may change what the steps do
        T.Compose([T.Normalize(), flip]),  # something after the normalisation
        T.Compose([flip, T.Pad((48, 80))]),  # a pad without a normalisation before it
        T.Compose([]),
    ):
        assert CompactTransfer.split(other) is None


@settings(deadline=None, max_examples=30)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 15)), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    pad_value=st.sampled_from([0.0, -1.5]),
    label_pad=st.sampled_from([255, 7]),
)
def test_collate_then_finish_equals_the_whole_pipeline(
    sizes: list[tuple[int, int]], seed: int, pad_value: float, label_pad: int
) -> None:
    """Normalize → Pad → collate_samples equals the transfer, for any mix of crop sizes."""
    norm = T.Normalize(mean=(100.0, 110.5, 90.25), std=(50.0, 61.3, 47.0))
    pad = T.Pad((12, 15), pad_value=pad_value, label_pad_value=label_pad)
    samples = [make_sample(seed + i, h, w) for i, (h, w) in enumerate(sizes)]
    want = collate_samples([pad(norm(s)) for s in samples])
    transfer = CompactTransfer(norm, pad)
    packed = transfer.collate(samples)
    assert packed["image"].dtype == torch.uint8 and packed["label"].dtype == torch.uint8
    assert packed["valid_size"].tolist() == [list(hw) for hw in sizes]
    assert_same_batch(transfer.finish(packed), want)


def test_labels_outside_uint8_stay_int64_and_unlabelled_batches() -> None:
    norm, pad = T.Normalize(), T.Pad((6, 7))
    transfer = CompactTransfer(norm, pad)
    samples = [make_sample(0, 5, 7, max_label=300), make_sample(1, 6, 4)]
    packed = transfer.collate(samples)
    assert packed["label"].dtype == torch.int64  # 300 does not fit in uint8
    assert_same_batch(transfer.finish(packed), collate_samples([pad(norm(s)) for s in samples]))
    negative = make_sample(2, 6, 7)
    negative["label"][0, 0] = -1
    assert transfer.collate([negative])["label"].dtype == torch.int64
    unlabelled = [make_sample(3, 6, 7)]
    unlabelled[0]["label"] = None
    assert_same_batch(
        transfer.finish(transfer.collate(unlabelled)),
        collate_samples([pad(norm(s)) for s in unlabelled]),
    )
    # Without a Pad, equal sizes stack as before.
    no_pad = CompactTransfer(norm)
    same = [make_sample(4, 5, 5), make_sample(5, 5, 5)]
    assert_same_batch(no_pad.finish(no_pad.collate(same)), collate_samples([norm(s) for s in same]))


def test_collate_errors_name_the_problem() -> None:
    transfer = CompactTransfer(T.Normalize(), T.Pad((4, 4)))
    with pytest.raises(ValueError, match=r"larger than size \(4, 4\)"):
        transfer.collate([make_sample(0, 5, 3)])
    floaty = make_sample(0, 3, 3)
    floaty["image"] = floaty["image"].float()
    with pytest.raises(ValueError, match=re.escape("uint8 images, got torch.float32 for 's0'")):
        transfer.collate([floaty])
    unlabelled = make_sample(1, 3, 3)
    unlabelled["label"] = None
    with pytest.raises(ValueError, match="mixes labelled and unlabelled"):
        transfer.collate([make_sample(0, 3, 3), unlabelled])
    with pytest.raises(ValueError, match="different sizes"):
        CompactTransfer(T.Normalize()).collate([make_sample(0, 3, 3), make_sample(1, 3, 4)])


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture("cityscapes", tmp_path_factory.mktemp("cs"), num_images=4, size=(96, 192))


def test_build_dataloader_with_workers_gives_identical_batches(cityscapes: Path) -> None:
    """Two workers, crops small enough to be padded: compact and plain transfer agree."""
    pipe = T.train_pipeline((192, 96), (48, 80), ratio_range=(0.2, 0.6))
    dataset = Cityscapes(cityscapes, "train", transform=pipe)
    loaders = [
        build_dataloader(
            dataset,
            2,
            shuffle=True,
            num_workers=2,
            seed=7,
            pin_memory=False,
            compact_transfer=compact,
        )
        for compact in (True, False)
    ]
    assert type(loaders[0]) is FinishingDataLoader and type(loaders[1]) is DataLoader
    assert dataset.transform is pipe  # the workers got a copy with the shortened pipeline
    batches = [list(loader) for loader in loaders]
    assert len(batches[0]) == len(batches[1]) == 2
    padded = 0
    for got, want in zip(*batches, strict=True):
        assert_same_batch(got, want)
        padded += int((want["label"] == 255).all(dim=1).any())
    assert padded > 0  # the ratio range forces padding, which the test must cover
    # No workers: nothing crosses processes, the plain loader is used.
    assert type(build_dataloader(dataset, 2, num_workers=0)) is DataLoader
