"""Engine units: parameter groups and optimisers, the poly schedule, checkpoints, the stream.

References are written out in the tests: the expected group of every parameter by hand, the
mmsegmentation poly/warm-up formula, byte comparisons of files, plain draws from each random
generator, and the global stream sliced with ``itertools.islice``.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gmmseg.data import Sample
from gmmseg.data.transforms import JointTransform, RandomFlip
from gmmseg.engine import (
    PolyWarmup,
    build_optimizer,
    latest_checkpoint,
    load_checkpoint,
    parameter_groups,
    save_checkpoint,
)
from gmmseg.engine.checkpoint import checkpoint_path, get_rng_state, set_rng_state
from gmmseg.engine.stream import AugmentedView, TrainStream, draw_seed

# --------------------------------------------------------------------------- parameter groups


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=True)  # weight and bias decayed
        self.bn = nn.BatchNorm2d(4)  # no decay (norm layer, name without "norm")
        self.ln = nn.LayerNorm(4)  # no decay (norm layer)
        self.pos_block = nn.Conv2d(4, 4, 3, groups=4)  # no decay (keyword)
        self.frozen = nn.Linear(4, 4)  # left out
        self.frozen.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(4))  # decayed: not a norm, no keyword
        self.decoder = nn.Linear(4, 4)  # "body.decoder." is not a head prefix


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)  # head, decayed
        self.gn = nn.GroupNorm(2, 4)  # head, no decay


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _Body()
        self.decoder = _Decoder()
        self.classifier = nn.Linear(4, 3)  # head, decayed
        self.decoderish = nn.Linear(4, 4)  # body: "decoderish." does not start with "decoder."


# name -> (head, no_decay), written by hand; frozen parameters are absent.
_EXPECTED: dict[str, tuple[bool, bool]] = {
    "body.conv.weight": (False, False),
    "body.conv.bias": (False, False),
    "body.bn.weight": (False, True),
    "body.bn.bias": (False, True),
    "body.ln.weight": (False, True),
    "body.ln.bias": (False, True),
    "body.pos_block.weight": (False, True),
    "body.pos_block.bias": (False, True),
    "body.scale": (False, False),
    "body.decoder.weight": (False, False),
    "body.decoder.bias": (False, False),
    "decoder.proj.weight": (True, False),
    "decoder.proj.bias": (True, False),
    "decoder.gn.weight": (True, True),
    "decoder.gn.bias": (True, True),
    "classifier.weight": (True, False),
    "classifier.bias": (True, False),
    "decoderish.weight": (False, False),
    "decoderish.bias": (False, False),
}


def _group_of(groups: list[dict[str, Any]], model: nn.Module) -> dict[str, list[int]]:
    """Parameter name -> indices of the groups holding it (by identity)."""
    where: dict[int, list[int]] = {}
    for gi, g in enumerate(groups):
        for p in g["params"]:
            where.setdefault(id(p), []).append(gi)
    return {name: where.get(id(p), []) for name, p in model.named_parameters()}


def test_parameter_groups_partition_and_decay() -> None:
    model = _Model()
    groups = parameter_groups(model, weight_decay=0.01, head_lr_mult=10.0)
    found = _group_of(groups, model)
    assert set(_EXPECTED) | {"body.frozen.weight", "body.frozen.bias"} == set(found)
    assert found["body.frozen.weight"] == [] and found["body.frozen.bias"] == []
    for name, (head, no_decay) in _EXPECTED.items():
        assert len(found[name]) == 1, name  # exactly one group
        g = groups[found[name][0]]
        assert g["weight_decay"] == (0.0 if no_decay else 0.01), name
        assert g["lr_mult"] == (10.0 if head else 1.0), name
        assert g["name"] == ("head" if head else "body") + ("_no_decay" if no_decay else ""), name
    # up to four groups, none empty, names unique
    assert len(groups) == 4
    assert all(g["params"] for g in groups)
    assert len({g["name"] for g in groups}) == len(groups)
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_trainable == len(_EXPECTED)


def test_parameter_groups_only_present_kinds() -> None:
    model = nn.Sequential(nn.Linear(3, 3))  # one decayed body group, nothing else
    groups = parameter_groups(model, weight_decay=0.5)
    assert [g["name"] for g in groups] == ["body"]
    assert groups[0]["weight_decay"] == 0.5 and groups[0]["lr_mult"] == 1.0
    frozen = nn.Linear(3, 3).requires_grad_(False)
    assert parameter_groups(frozen, weight_decay=0.5) == []


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_build_optimizer_initial_lr(name: str) -> None:
    model = _Model()
    opt = build_optimizer(model, name, lr=6e-5, weight_decay=0.01, head_lr_mult=10.0)  # type: ignore[arg-type]
    assert isinstance(opt, torch.optim.AdamW if name == "adamw" else torch.optim.SGD)
    assert len(opt.param_groups) == 4
    for g in opt.param_groups:
        head = g["name"].startswith("head")
        assert g["lr_mult"] == (10.0 if head else 1.0)
        assert g["initial_lr"] == pytest.approx(6e-5 * g["lr_mult"], rel=1e-15)
        assert g["lr"] == g["initial_lr"]
        assert g["weight_decay"] == (0.0 if g["name"].endswith("_no_decay") else 0.01)
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len(_EXPECTED)


def test_build_optimizer_errors() -> None:
    model = _Model()
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer(model, "adam", 1e-3, 0.0)  # type: ignore[arg-type]
    for lr in (0.0, -1e-3, math.nan):
        with pytest.raises(ValueError, match="lr"):
            build_optimizer(model, "sgd", lr, 0.0)
    for wd in (-1e-4, math.nan):
        with pytest.raises(ValueError, match="weight_decay"):
            build_optimizer(model, "sgd", 1e-3, wd)
    frozen = nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        build_optimizer(frozen, "adamw", 1e-3, 0.0)


# --------------------------------------------------------------------------- poly schedule


def _mmseg_factor(t: int, max_iters: int, power: float, m: float, w: int, r: float) -> float:
    """mmsegmentation's PolyLrUpdater with linear warm-up, relative to the base lr."""
    t = min(max(t, 0), max_iters)
    regular = (1 - m) * (1 - t / max_iters) ** power + m
    if t < w:
        regular *= 1 - (1 - t / w) * (1 - r)
    return regular


@given(
    max_iters=st.integers(1, 200_000),
    power=st.floats(0.0, 3.0),
    min_ratio=st.floats(0.0, 1.0),
    warmup=st.integers(0, 5000),
    warmup_ratio=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_poly_warmup_factor_formula(
    max_iters: int,
    power: float,
    min_ratio: float,
    warmup: int,
    warmup_ratio: float,
    data: st.DataObject,
) -> None:
    sched = PolyWarmup(max_iters, power, min_ratio, warmup, warmup_ratio)
    t = data.draw(st.integers(-10, max_iters + 10) | st.sampled_from([0, warmup, max_iters]))
    expected = _mmseg_factor(t, max_iters, power, min_ratio, warmup, warmup_ratio)
    assert math.isclose(sched.factor(t), expected, rel_tol=1e-12, abs_tol=1e-15)
    assert -1e-15 <= sched.factor(t) <= 1 + 1e-12


def test_poly_warmup_known_values() -> None:
    sched = PolyWarmup(max_iters=100, power=1.0, warmup_iters=10, warmup_ratio=0.1)
    assert sched.factor(0) == pytest.approx(0.1)  # warm-up starts at warmup_ratio
    assert sched.factor(5) == pytest.approx(0.95 * (1 - 0.5 * 0.9))
    assert sched.factor(10) == pytest.approx(0.9)  # warm-up over: plain poly
    assert sched.factor(50) == pytest.approx(0.5)
    assert sched.factor(100) == 0.0
    assert sched.factor(1000) == 0.0 and sched.factor(-5) == sched.factor(0)  # clamped
    poly = PolyWarmup(max_iters=10, power=0.9, min_lr_ratio=0.25)
    assert poly.factor(0) == 1.0 and poly.factor(10) == 0.25
    assert poly.factor(5) == pytest.approx(0.75 * 0.5**0.9 + 0.25)
    # after the warm-up, non-increasing
    values = [sched.factor(t) for t in range(10, 101)]
    assert all(a >= b for a, b in pairwise(values))


def test_poly_warmup_apply_sets_every_group() -> None:
    model = _Model()
    opt = build_optimizer(model, "sgd", lr=0.01, weight_decay=1e-4, head_lr_mult=10.0)
    sched = PolyWarmup(max_iters=50, power=0.9, warmup_iters=5, warmup_ratio=1e-3)
    for t in (3, 0, 20, 49, 50, 7):  # any order: no compounding
        f = sched.apply(opt, t)
        assert f == sched.factor(t)
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(0.01 * g["lr_mult"] * f, rel=1e-12, abs=0.0)
            assert g["initial_lr"] == pytest.approx(0.01 * g["lr_mult"])


def test_poly_warmup_apply_plain_optimizer_does_not_compound() -> None:
    # An optimiser built without initial_lr: the lr at the first apply is the base.
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.5)
    sched = PolyWarmup(max_iters=10)
    for t in (2, 5, 5, 8, 0):
        sched.apply(opt, t)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 - t / 10))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_iters": 0}, "max_iters"),
        ({"max_iters": 10, "warmup_iters": -1}, "warmup_iters"),
        ({"max_iters": 10, "min_lr_ratio": -0.1}, "min_lr_ratio"),
        ({"max_iters": 10, "min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"max_iters": 10, "min_lr_ratio": math.nan}, "min_lr_ratio"),
        ({"max_iters": 10, "warmup_ratio": 1.01}, "warmup_ratio"),
        ({"max_iters": 10, "warmup_ratio": -0.5}, "warmup_ratio"),
        ({"max_iters": 10, "power": -1.0}, "power"),
        ({"max_iters": 10, "power": math.nan}, "power"),
    ],
)
def test_poly_warmup_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PolyWarmup(**kwargs)


# --------------------------------------------------------------------------- checkpoints


def test_save_checkpoint_roundtrip_creates_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "iter_00000003.pt"
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "iteration": 3, "tag": "x"}
    assert save_checkpoint(path, state) == path
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["iteration"] == 3 and loaded["tag"] == "x"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_save_checkpoint_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = checkpoint_path(tmp_path, 7)
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    before = path.read_bytes()

    def broken_save(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    assert path.read_bytes() == before  # previous checkpoint untouched
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    # and with no previous file, nothing at all remains
    fresh = tmp_path / "new" / "iter_00000001.pt"
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(fresh, {"model": {}})
    assert list(fresh.parent.iterdir()) == []
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_checkpoint_path_format(tmp_path: Path) -> None:
    assert checkpoint_path(tmp_path, 42) == tmp_path / "iter_00000042.pt"
    assert checkpoint_path(str(tmp_path), 123456789).name == "iter_123456789.pt"


@given(iterations=st.sets(st.integers(0, 10**9), min_size=1, max_size=6), pad=st.booleans())
def test_latest_checkpoint_picks_largest(
    tmp_path_factory: pytest.TempPathFactory, iterations: set[int], pad: bool
) -> None:
    folder = tmp_path_factory.mktemp("ckpt")
    for it in iterations:
        name = f"iter_{it:08d}.pt" if pad else f"iter_{it}.pt"
        (folder / name).write_bytes(b"x")
    # distractors: larger numbers in names that are not checkpoints
    big = max(iterations) + 1
    for name in (
        f"iter_{big}.pt.tmp",
        f".iter_{big:08d}.pt.123.tmp",
        f"iter_{big}.pth",
        f"xiter_{big}.pt",
        "iter_.pt",
        "iter_abc.pt",
        "latest.pt",
    ):
        (folder / name).write_bytes(b"x")
    found = latest_checkpoint(folder)
    assert found is not None
    assert int(found.name[len("iter_") : -len(".pt")]) == max(iterations)
    assert found.parent == folder


def test_latest_checkpoint_none(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None  # empty
    assert latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / "notes.txt").write_text("x")
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "notes.txt") is None  # a file, not a folder


def test_latest_checkpoint_numeric_not_lexicographic(tmp_path: Path) -> None:
    for name in ("iter_9.pt", "iter_00000010.pt", "iter_100.pt", "iter_00000020.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == tmp_path / "iter_100.pt"


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint file
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="model"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="model"):
        load_checkpoint(tmp_path / "list.pt")


@pytest.fixture
def _keep_global_rng() -> Any:
    """Restore the global generators after a test that moves them."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()  # noqa: NPY002
    yield
    random.setstate(py)
    np.random.set_state(npy)  # noqa: NPY002
    torch.set_rng_state(th)


def _draws() -> tuple[list[float], list[float], list[float]]:
    """A few draws from each global generator, including the cached Gaussians."""
    py = [random.random(), random.gauss(0, 1), random.randint(0, 10**9), random.gauss(0, 1)]
    npy = [*np.random.standard_normal(3).tolist(), np.random.random()]  # noqa: NPY002
    npy.append(float(np.random.standard_normal()))  # noqa: NPY002
    th = torch.rand(3, dtype=torch.float64).tolist() + torch.randn(3).tolist()
    return py, npy, th


def _prime() -> None:
    """Move every generator into a state with a cached Gaussian (odd number of normals)."""
    random.seed(1234)
    np.random.seed(5678)  # noqa: NPY002
    torch.manual_seed(91011)
    random.gauss(0, 1)
    np.random.standard_normal()  # noqa: NPY002
    torch.randn(5)


@pytest.mark.usefixtures("_keep_global_rng")
def test_rng_state_roundtrip() -> None:
    _prime()
    state = get_rng_state()
    first = _draws()
    assert _draws() != first  # the generators moved
    set_rng_state(state)
    assert _draws() == first


@pytest.mark.usefixtures("_keep_global_rng")
def test_rng_state_survives_checkpoint(tmp_path: Path) -> None:
    _prime()
    path = save_checkpoint(tmp_path / "iter_1.pt", {"model": {}, "rng": get_rng_state()})
    first = _draws()
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002
    torch.manual_seed(0)
    loaded = load_checkpoint(path)  # weights_only=True
    set_rng_state(loaded["rng"])
    assert _draws() == first


# --------------------------------------------------------------------------- stream


class _Frames(torch.utils.data.Dataset[Sample]):
    """n frames with (3, 2, 5) asymmetric uint8 images and labels; labels for class balance."""

    def __init__(self, n: int, labels: list[torch.Tensor] | None = None) -> None:
        self.n = n
        self.labels = labels

    def __len__(self) -> int:
        return self.n

    def load_label(self, index: int) -> torch.Tensor:
        assert self.labels is not None
        return self.labels[index]

    def __getitem__(self, index: int) -> Sample:
        image = (torch.arange(30, dtype=torch.uint8).reshape(3, 2, 5) + index).to(torch.uint8)
        label = torch.arange(10, dtype=torch.int64).reshape(2, 5) % 3
        return {
            "image": image,
            "label": label,
            "name": f"f{index}",
            "image_path": "",
            "label_path": "",
            "ori_size": (2, 5),
        }


def _take(stream: TrainStream, n: int) -> list[tuple[int, int]]:
    return list(islice(iter(stream), n))


@given(n=st.integers(1, 9), seed=st.integers(0, 2**40), epochs=st.integers(1, 4))
def test_shuffle_blocks_are_permutations(n: int, seed: int, epochs: int) -> None:
    keys = _take(TrainStream(_Frames(n), seed=seed), n * epochs)
    assert [d for d, _ in keys] == list(range(n * epochs))
    for e in range(epochs):
        assert sorted(i for _, i in keys[e * n : (e + 1) * n]) == list(range(n))
    assert keys == _take(TrainStream(_Frames(n), seed=seed), n * epochs)  # deterministic


def test_shuffle_depends_on_seed_and_epoch() -> None:
    a = [i for _, i in _take(TrainStream(_Frames(20), seed=0), 60)]
    b = [i for _, i in _take(TrainStream(_Frames(20), seed=1), 60)]
    assert a != b
    assert a[:20] != a[20:40] or a[20:40] != a[40:60]  # epochs reshuffle


@given(
    n=st.integers(1, 7),
    seed=st.integers(0, 1000),
    start=st.integers(0, 30),
    length=st.integers(1, 20),
    world_size=st.integers(1, 4),
    data=st.data(),
)
def test_resume_is_the_continuation(
    n: int, seed: int, start: int, length: int, world_size: int, data: st.DataObject
) -> None:
    rank = data.draw(st.integers(0, world_size - 1))
    ds = _Frames(n)
    fresh = TrainStream(ds, seed=seed, rank=rank, world_size=world_size)
    resumed = TrainStream(ds, seed=seed, rank=rank, world_size=world_size, start=start)
    assert _take(resumed, length) == list(islice(iter(fresh), start, start + length))


@given(n=st.integers(1, 8), seed=st.integers(0, 1000), per_rank=st.integers(1, 12))
def test_ranks_interleave_to_the_single_stream(n: int, seed: int, per_rank: int) -> None:
    ds = _Frames(n)
    single = _take(TrainStream(ds, seed=seed), 3 * per_rank)
    merged: list[tuple[int, int] | None] = [None] * (3 * per_rank)
    for r in range(3):
        keys = _take(TrainStream(ds, seed=seed, rank=r, world_size=3), per_rank)
        assert [d for d, _ in keys] == [r + 3 * k for k in range(per_rank)]
        for k, key in enumerate(keys):
            merged[r + 3 * k] = key
    assert merged == single


def test_stream_errors() -> None:
    with pytest.raises(ValueError, match="rank"):
        TrainStream(_Frames(3), rank=3, world_size=3)
    with pytest.raises(ValueError, match="rank"):
        TrainStream(_Frames(3), rank=-1)
    with pytest.raises(ValueError, match="order"):
        TrainStream(_Frames(3), order="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        TrainStream(_Frames(0))
    with pytest.raises(ValueError, match="start"):
        TrainStream(_Frames(3), start=-1)


def _balanced_frames() -> _Frames:
    """6 frames over 3 classes; frame 4 is all-ignore and can never be drawn."""
    ign = 255
    labels = [
        torch.tensor([[0, 0], [0, ign]]),
        torch.tensor([[0, 1], [1, 1]]),
        torch.tensor([[0, 0], [0, 0]]),
        torch.tensor([[2, 2], [ign, ign]]),
        torch.tensor([[ign, ign], [ign, ign]]),
        torch.tensor([[0, 0], [0, 1]]),
    ]
    return _Frames(6, labels)


def test_class_balanced_deterministic_and_resumable() -> None:
    ds = _balanced_frames()

    def make(seed: int, **kw: Any) -> TrainStream:
        return TrainStream(ds, seed=seed, order="class_balanced", num_classes=3, **kw)

    keys = _take(make(7), 60)
    assert keys == _take(make(7), 60)
    assert keys != _take(make(8), 60)
    assert [d for d, _ in keys] == list(range(60))
    drawn = Counter(i for _, i in keys)
    assert 4 not in drawn  # contains no class
    assert set(drawn) <= {0, 1, 2, 3, 5}
    assert drawn[3] > 0  # the only image of class 2 is drawn about a third of the time
    for start in (0, 1, 5, 6, 13, 29):
        assert _take(make(7, start=start), 15) == keys[start : start + 15]
    for r in range(2):
        shard = _take(make(7, rank=r, world_size=2), 20)
        assert shard == keys[r::2][:20]
        assert _take(make(7, rank=r, world_size=2, start=9), 5) == keys[r::2][9:14]


def test_class_balanced_needs_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        TrainStream(_balanced_frames(), order="class_balanced")


class _Record(JointTransform):
    """Writes the generator's first 62-bit draw into ``name`` (and adds it to the image)."""

    def __init__(self) -> None:
        self.seen: list[torch.Generator | None] = []

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        self.seen.append(generator)
        value = int(torch.randint(0, 2**62, (), generator=generator))
        out = dict(sample)
        out["name"] = str(value)
        out["image"] = sample["image"] + value % 7
        return out  # type: ignore[return-value]


def test_augmented_view_seeded_by_draw() -> None:
    ds = _Frames(4)
    record = _Record()
    view = AugmentedView(ds, record, seed=3)
    assert len(view) == 4
    a, b = view[(5, 2)], view[(5, 2)]
    assert a["name"] == b["name"] and torch.equal(a["image"], b["image"])
    assert all(isinstance(g, torch.Generator) for g in record.seen)
    assert record.seen[0] is not record.seen[1]  # a fresh generator per item
    # the generator depends on (seed, draw) only, not on the index
    assert view[(5, 0)]["name"] == a["name"]
    values = [view[(d, 1)]["name"] for d in range(200)]
    assert len(set(values)) == 200
    other = AugmentedView(ds, _Record(), seed=4)
    assert [other[(d, 1)]["name"] for d in range(200)] != values
    # the documented seed: a generator seeded with draw_seed(seed, draw)
    for d in (0, 1, 99):
        g = torch.Generator().manual_seed(draw_seed(3, d))
        assert view[(d, 1)]["name"] == str(int(torch.randint(0, 2**62, (), generator=g)))


def test_augmented_view_random_flip() -> None:
    ds = _Frames(3)
    view = AugmentedView(ds, RandomFlip(0.5), seed=11)
    base = ds[1]
    flipped = 0
    for d in range(64):
        s = view[(d, 1)]
        again = view[(d, 1)]
        assert torch.equal(s["image"], again["image"]) and torch.equal(s["label"], again["label"])  # type: ignore[arg-type]
        if torch.equal(s["image"], base["image"].flip(-1)):
            assert torch.equal(s["label"], base["label"].flip(-1))  # type: ignore[union-attr,arg-type]
            flipped += 1
        else:
            assert torch.equal(s["image"], base["image"])
            assert torch.equal(s["label"], base["label"])  # type: ignore[arg-type]
    assert 0 < flipped < 64


@given(seed=st.integers(-(2**63), 2**64), a=st.integers(0, 2**48), b=st.integers(0, 2**48))
def test_draw_seed_deterministic_and_distinct(seed: int, a: int, b: int) -> None:
    sa = draw_seed(seed, a)
    assert sa == draw_seed(seed, a)
    assert 0 <= sa < 2**63
    if a != b:
        assert sa != draw_seed(seed, b)


def test_draw_seed_distinct_over_a_run() -> None:
    seeds = {draw_seed(0, d) for d in range(20_000)}
    assert len(seeds) == 20_000
    epoch_seeds = {draw_seed(0, -1 - e) for e in range(1000)}  # the stream's epoch generators
    assert len(epoch_seeds) == 1000 and not epoch_seeds & seeds
