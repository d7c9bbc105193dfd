"""Compact transfer: the split pipeline gives the same batches as the whole one, bit for bit."""

from __future__ import annotations

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
    norm, pad = T.Normalize(), T.Pad((4, 4))
    transfer = CompactTransfer(norm, pad)
    with pytest.raises(ValueError, match=r"larger than size \(4, 4\)"):
        transfer.collate([make_sample(0, 5, 3)])
    floaty = make_sample(0, 3, 3)  # a float head is finished in the worker, as a whole pipeline
    floaty["image"] = floaty["image"].float()
    packed = transfer.collate([floaty])
    assert packed["valid_size"] is None and packed["image"].dtype == torch.float32
    whole = collate_samples([pad(norm(floaty))])
    assert_same_batch(transfer.finish(packed), whole)
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


def test_one_label_dtype_per_batch() -> None:
    """A label that does not fit uint8 keeps the whole batch int64 (no silent wrap-around)."""
    norm, pad = T.Normalize(), T.Pad((6, 7), label_pad_value=-1)
    transfer = CompactTransfer(norm, pad)
    fits, big = make_sample(0, 6, 7), make_sample(1, 6, 7, max_label=300)
    big["label"][0, 0] = 300
    for order in ([fits, big], [big, fits]):
        packed = transfer.collate(order)
        assert packed["label"].dtype == torch.int64 and not packed["label_widened"]
        assert_same_batch(transfer.finish(packed), collate_samples([pad(norm(s)) for s in order]))
    # The pad value -1 makes a padded crop int64; a full-size crop alone would fit uint8.
    small = make_sample(2, 4, 7)
    packed = transfer.collate([fits, small])
    assert packed["label"].dtype == torch.int64
    assert_same_batch(
        transfer.finish(packed), collate_samples([pad(norm(s)) for s in [fits, small]])
    )


class _ToFloat(T.JointTransform):
    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return {**sample, "image": sample["image"].float()}


class _InMemory(torch.utils.data.Dataset[Sample]):
    def __init__(self, samples: list[Sample], transform: T.JointTransform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.transform(self.samples[i])


def test_workers_agree_on_mixed_labels_float_heads_and_pinning() -> None:
    """Through real workers: mixed label ranges, a head giving floats, pin_memory on a CPU."""
    # the second sample of the second batch holds 300: the batch's first label fits uint8
    samples = [make_sample(i, 6, 7, max_label=300 if i == 4 else 18) for i in range(6)]
    samples[4]["label"][0, 0] = 300
    pipes = {
        "uint8 head": T.Compose([T.RandomFlip(0.5), T.Normalize(), T.Pad((6, 8))]),
        "float head": T.Compose([_ToFloat(), T.Normalize(), T.Pad((6, 8))]),
    }
    for name, pipe in pipes.items():
        ds = _InMemory(samples, pipe)
        got, want = (
            list(
                build_dataloader(
                    ds, 3, num_workers=2, seed=1, pin_memory=pin, compact_transfer=compact
                )
            )
            for compact, pin in ((True, True), (False, False))
        )
        assert len(got) == len(want) == 2
        for g, w in zip(got, want, strict=True):
            assert_same_batch(g, w)
        assert (got[1]["label"] == 300).any(), name  # not wrapped around to 44


def test_check_pair_refuses_non_finite_ranges() -> None:
    with pytest.raises(ValueError, match="saturation_range must be a pair of finite positive"):
        T.PhotoMetricDistortion(saturation_range=(0.5, float("inf")))
    with pytest.raises(ValueError, match="ratio_range"):
        T.RandomRescale((64, 32), ratio_range=(float("nan"), 2.0))
