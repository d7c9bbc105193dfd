"""Online EM: ring memory, momentum M-step, streaming statistics, and their shared interface.

Each vectorised routine is checked against a plain loop written here (one sample written at a
time; one (group, component) at a time in numpy).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from gmmseg.em import memory as memory_module
from gmmseg.em import streaming as streaming_module
from gmmseg.em.memory import ComponentMemory, _linspace_index
from gmmseg.em.momentum import momentum_m_step
from gmmseg.em.online import MixtureMemory
from gmmseg.em.streaming import StreamingStatistics, _merge_moments, _sum_reduce_moments

# ----------------------------------------------------------------------------------------------
# references


def ref_enqueue(
    bank: torch.Tensor,
    ptr: torch.Tensor,
    filled: torch.Tensor,
    emb: torch.Tensor,
    groups: torch.Tensor,
    comps: torch.Tensor,
    max_per_step: int | None,
) -> None:
    """Step 7 of the algorithm (docs/algorithm.md), one ring and one sample at a time."""
    num_g, num_m, cap, _ = bank.shape
    for g in range(num_g):
        for m in range(num_m):
            rows = [i for i in range(emb.shape[0]) if groups[i] == g and comps[i] == m]
            if not rows:
                continue
            x = emb[rows]
            if max_per_step is not None and len(rows) > max_per_step:
                x = x[torch.linspace(0, len(rows) - 1, max_per_step, dtype=torch.int64)]
            for row in x:
                p = int(ptr[g, m])
                bank[g, m, p] = row
                ptr[g, m] = (p + 1) % cap
                filled[g, m] = min(int(filled[g, m]) + 1, cap)


def ref_m_step(
    means: np.ndarray,
    scales: np.ndarray,
    bank: np.ndarray,
    groups: list[int],
    mean_momentum: float,
    scale_momentum: float,
    floor: float,
    valid: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = means.copy(), scales.copy()
    for g in sorted(set(groups)):
        for m in range(means.shape[1]):
            e = bank[g, m] if valid is None else bank[g, m][valid[g, m]]
            if e.shape[0] == 0:
                continue
            s = e.sum(axis=0)
            f = s / max(np.linalg.norm(s), 1e-12)
            mu[g, m] = mean_momentum * means[g, m] + (1 - mean_momentum) * f
            new = np.sqrt(((e - f) ** 2).mean(axis=0) + floor)
            sigma[g, m] = scale_momentum * scales[g, m] + (1 - scale_momentum) * new
    return mu, sigma


def ref_moments(
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    num_g: int,
    num_m: int,
    decay: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weight, mean and variance per (g, m) of all samples, batch t weighted by decay**(T-1-t)."""
    d = batches[0][0].shape[1]
    big_t = len(batches)
    weight = np.zeros((num_g, num_m))
    mean = np.full((num_g, num_m, d), np.nan)
    var = np.full((num_g, num_m, d), np.nan)
    for g in range(num_g):
        for m in range(num_m):
            xs, ws = [], []
            for t, (x, gr, co, w) in enumerate(batches):
                sel = (gr == g) & (co == m)
                xs.append(x[sel])
                ws.append(w[sel] * decay ** (big_t - 1 - t))
            xa, wa = np.concatenate(xs), np.concatenate(ws)
            weight[g, m] = wa.sum()
            if wa.sum() > 0:
                mean[g, m] = np.average(xa, axis=0, weights=wa)
                var[g, m] = np.average((xa - mean[g, m]) ** 2, axis=0, weights=wa)
    return weight, mean, var


def random_batch(
    gen: torch.Generator, n: int, num_g: int, num_m: int, d: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = F.normalize(torch.randn(n, d, generator=gen, dtype=dtype), dim=1)
    g = torch.randint(0, num_g, (n,), generator=gen)
    m = torch.randint(0, num_m, (n,), generator=gen)
    return x, g, m


# ----------------------------------------------------------------------------------------------
# ComponentMemory


def test_linspace_index_matches_torch_linspace() -> None:
    for steps in (1, 2, 3, 7, 15, 20, 33):
        n = torch.arange(steps + 1, 400)
        ns = n.repeat_interleave(steps)
        js = torch.arange(steps).repeat(n.numel())
        got = _linspace_index(js, ns, steps).view(-1, steps)
        want = torch.stack([torch.linspace(0, int(k) - 1, steps, dtype=torch.int64) for k in n])
        assert torch.equal(got, want), steps
    # the quirk: PyTorch's integer linspace is not floor(j (n-1) / (steps-1))
    assert int(torch.linspace(0, 58, 15, dtype=torch.int64)[7]) == 28
    assert int(_linspace_index(torch.tensor([7]), torch.tensor([59]), 15)) == 28


@given(
    num_g=st.integers(1, 4),
    num_m=st.integers(1, 3),
    cap=st.integers(1, 7),
    d=st.integers(1, 3),
    max_per_step=st.sampled_from([None, 1, 2, 3, 5, 20]),
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    concentrate=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_ring_write_matches_loop(
    num_g: int,
    num_m: int,
    cap: int,
    d: int,
    max_per_step: int | None,
    sizes: list[int],
    concentrate: bool,
    seed: int,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    mem = ComponentMemory(num_g, num_m, d, capacity=cap, max_per_step=max_per_step, generator=gen)
    bank, ptr, filled = mem.bank.clone(), mem.ptr.clone(), mem.filled.clone()
    for n in sizes:
        x, g, m = random_batch(gen, n, num_g, num_m, d, torch.float32)
        if concentrate:  # everything in one or two rings: many samples per ring
            g, m = g % min(num_g, 1 + seed % 2), m % 1
        written = mem.write(x, g, m)
        before = filled.clone()
        ref_enqueue(bank, ptr, filled, x, g, m, max_per_step)
        assert torch.equal(mem.bank, bank)
        assert torch.equal(mem.ptr, ptr)
        assert torch.equal(mem.filled, filled)
        counts = torch.zeros(num_g, num_m, dtype=torch.int64)
        for gi, mi in zip(g.tolist(), m.tolist(), strict=True):
            counts[gi, mi] += 1
        want = counts if max_per_step is None else counts.clamp(max=max_per_step)
        assert torch.equal(written, want)
        assert torch.equal(filled, (before + want).clamp(max=cap))


@given(
    num_g=st.integers(1, 4),
    num_m=st.integers(1, 3),
    cap=st.integers(1, 7),
    max_per_step=st.sampled_from([None, 1, 3, 20]),
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_ring_write_with_mask_equals_write_of_the_selection(
    num_g: int, num_m: int, cap: int, max_per_step: int | None, sizes: list[int], seed: int
) -> None:
    """Masked samples (with out-of-range ids) change nothing: fixed-size writes, same result."""
    gen = torch.Generator().manual_seed(seed)
    masked = ComponentMemory(
        num_g, num_m, 2, capacity=cap, max_per_step=max_per_step, generator=gen
    )
    plain = ComponentMemory(num_g, num_m, 2, capacity=cap, max_per_step=max_per_step)
    plain.load_state_dict(masked.state_dict())
    for n in sizes:
        x, g, m = random_batch(gen, n, num_g, num_m, 2, torch.float32)
        keep = torch.rand(n, generator=gen) < 0.6
        g_bad = torch.where(keep, g, 255)
        for validate in (True, False):
            if validate:
                w1 = masked.write(x, g_bad, m, keep)
            else:
                w1 = masked.write(x, g_bad, m, keep, validate=False)
            w2 = plain.write(x[keep], g[keep], m[keep])
            assert torch.equal(w1, w2)
            assert torch.equal(masked.bank, plain.bank)
            assert torch.equal(masked.ptr, plain.ptr)
            assert torch.equal(masked.filled, plain.filled)


def test_ring_write_mask_errors() -> None:
    mem = ComponentMemory(2, 2, 3, capacity=4)
    x = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"mask: expected a \(3,\) bool tensor"):
        mem.write(x, _ids(0, 0, 0), _ids(0, 0, 0), torch.ones(3))
    with pytest.raises(ValueError, match="groups: expected ids in"):
        mem.write(x, _ids(0, 5, 0), _ids(0, 0, 0), torch.tensor([True, True, False]))
    bad = torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="finite"):
        mem.write(bad, _ids(0, 0, 0), _ids(0, 0, 0))
    mem.write(bad, _ids(0, 0, 0), _ids(0, 0, 0), torch.tensor([True, False, True]))


def test_streaming_update_with_mask_equals_update_of_the_selection() -> None:
    gen = torch.Generator().manual_seed(3)
    masked = StreamingStatistics(3, 2, 4, decay=0.9)
    plain = StreamingStatistics(3, 2, 4, decay=0.9)
    for n, weighted in ((30, False), (0, False), (25, True)):
        x, g, m = random_batch(gen, n, 3, 2, 4, torch.float32)
        keep = torch.rand(n, generator=gen) < 0.5
        w = torch.rand(n, generator=gen) if weighted else None
        masked.write(x, torch.where(keep, g, 255), m, keep, weights=w, validate=False)
        plain.write(x[keep], g[keep], m[keep], weights=None if w is None else w[keep])
        for a, b in zip(masked.buffers(), plain.buffers(), strict=True):
            assert torch.equal(a, b)


def test_m_step_validate_false_equals_checked() -> None:
    gen = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(4, 2, 8, 3, generator=gen), dim=-1)
    means = F.normalize(torch.randn(4, 2, 3, generator=gen), dim=-1)
    scales = torch.rand(4, 2, 3, generator=gen) + 0.5
    mask = torch.tensor([True, False, True, True])
    checked = momentum_m_step(means, scales, bank, [0, 2, 3])
    for groups in (mask, torch.tensor([0, 2, 3])):
        got = momentum_m_step(means, scales, bank, groups, validate=False)
        assert all(torch.equal(a, b) for a, b in zip(got, checked, strict=True))
    stats = StreamingStatistics(4, 2, 3)
    stats.write(
        bank.reshape(-1, 3),
        torch.arange(4).repeat_interleave(16),
        torch.zeros(64, dtype=torch.int64),
    )
    want = stats.m_step(means, scales, [0, 2, 3])
    got = stats.m_step(means, scales, mask, validate=False)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_ring_write_single_sample_and_wrap_around() -> None:
    mem = ComponentMemory(2, 2, 3, capacity=5, max_per_step=4, init="zeros")
    x = torch.arange(1, 11, dtype=torch.float32)[:, None].repeat(1, 3)  # rows 1..10
    mem.write(x[:1], torch.tensor([1]), torch.tensor([0]))
    assert mem.bank[1, 0, 0].tolist() == [1.0] * 3
    assert mem.ptr.tolist() == [[0, 0], [1, 0]]
    # 7 samples to ring (0, 1): linspace(0, 6, 4) -> rows 0, 2, 4, 6 -> values 1, 3, 5, 7
    mem.write(x[:7], torch.zeros(7, dtype=torch.int64), torch.ones(7, dtype=torch.int64))
    assert mem.bank[0, 1, :, 0].tolist() == [1.0, 3.0, 5.0, 7.0, 0.0]
    mem.write(x[7:10], torch.zeros(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64))
    # writes 8, 9, 10 at slots 4, 0, 1
    assert mem.bank[0, 1, :, 0].tolist() == [9.0, 10.0, 5.0, 7.0, 8.0]
    assert mem.ptr.tolist() == [[0, 2], [1, 0]]
    assert mem.filled.tolist() == [[0, 5], [1, 0]]


def test_ring_write_more_than_capacity_in_one_step_keeps_last() -> None:
    mem = ComponentMemory(1, 1, 1, capacity=3, max_per_step=None, init="zeros")
    x = torch.arange(1, 8, dtype=torch.float32)[:, None]
    zeros = torch.zeros(7, dtype=torch.int64)
    written = mem.write(x, zeros, zeros)
    assert int(written) == 7
    # sequential writes at slots 0,1,2,0,1,2,0 -> slot0=7, slot1=5, slot2=6
    assert mem.bank[0, 0, :, 0].tolist() == [7.0, 5.0, 6.0]
    assert int(mem.ptr) == 1


def test_ring_write_empty_and_dtype_cast() -> None:
    mem = ComponentMemory(2, 2, 3, capacity=4, init="zeros")
    empty = torch.zeros(0, dtype=torch.int64)
    written = mem.write(torch.zeros(0, 3), empty, empty)
    assert written.shape == (2, 2) and int(written.sum()) == 0
    assert int(mem.filled.sum()) == 0
    x = torch.full((1, 3), 0.5, dtype=torch.float64)
    mem.write(x, torch.tensor([1]), torch.tensor([1], dtype=torch.int32))
    assert mem.bank.dtype == torch.float32
    assert mem.bank[1, 1, 0].tolist() == [0.5] * 3


def test_random_init_matches_original(monkeypatch: pytest.MonkeyPatch) -> None:
    num_g, num_m, d, cap = 3, 2, 4, 8
    gen = torch.Generator().manual_seed(123)
    original = F.normalize(torch.randn(num_g * num_m, d, cap, generator=gen), dim=1)
    want = original.view(num_g, num_m, d, cap).transpose(-1, -2)
    # chunk of one group = 2*8*4 = 64 numbers: three randn calls reproduce the single one
    monkeypatch.setattr(memory_module, "_INIT_CHUNK_ELEMENTS", 64)
    mem = ComponentMemory(num_g, num_m, d, capacity=cap, generator=gen.manual_seed(123))
    assert torch.equal(mem.bank, want)
    torch.testing.assert_close(mem.bank.norm(dim=-1), torch.ones(num_g, num_m, cap))


def test_valid_mask_and_reset() -> None:
    mem = ComponentMemory(2, 2, 2, capacity=3, count_only_filled=True)
    assert not mem.valid_mask().any()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, generator=gen)
    mem.write(x, torch.tensor([0, 0, 1, 0]), torch.tensor([1, 1, 0, 1]))
    want = torch.zeros(2, 2, 3, dtype=torch.bool)
    want[0, 1, :3] = True
    want[1, 0, :1] = True
    assert torch.equal(mem.valid_mask(), want)
    faithful = ComponentMemory(2, 2, 2, capacity=3)
    assert faithful.valid_mask().all() and faithful.valid_mask().shape == (2, 2, 3)
    mem.reset()
    assert not mem.valid_mask().any() and int(mem.ptr.sum()) == 0


def test_persistent_flag_and_state_dict_roundtrip() -> None:
    gen = torch.Generator().manual_seed(0)
    mem = ComponentMemory(2, 2, 3, capacity=4, generator=gen)
    x, g, m = random_batch(gen, 9, 2, 2, 3, torch.float32)
    mem.write(x, g, m)
    assert set(mem.state_dict()) == {"bank", "ptr", "filled"}
    other = ComponentMemory(2, 2, 3, capacity=4, init="zeros")
    other.load_state_dict(mem.state_dict())
    assert torch.equal(other.bank, mem.bank) and torch.equal(other.ptr, mem.ptr)
    light = ComponentMemory(2, 2, 3, capacity=4, persistent=False)
    assert light.state_dict() == {}
    assert "count_only_filled=False" in repr(light)


def test_load_original_layout() -> None:
    num_g, num_m, d, cap = 2, 3, 4, 5
    queue = torch.randn(num_g * num_m, d, cap)
    queue_ptr = torch.tensor([0, 1, 2, 3, 4, 0])
    mem = ComponentMemory(num_g, num_m, d, capacity=cap)
    mem.load_original(queue, queue_ptr)
    for g in range(num_g):
        for m in range(num_m):
            assert torch.equal(mem.bank[g, m], queue[g * num_m + m].T)
            assert int(mem.ptr[g, m]) == int(queue_ptr[g * num_m + m])
    assert (mem.filled == cap).all()
    with pytest.raises(ValueError, match="queue"):
        mem.load_original(queue[:, :, :2], queue_ptr)
    with pytest.raises(ValueError, match="queue_ptr"):
        mem.load_original(queue, queue_ptr + 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_groups": 0}, "num_groups"),
        ({"capacity": -1}, "capacity"),
        ({"max_per_step": 0}, "max_per_step"),
        ({"init": "normal"}, "init"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_memory_constructor_errors(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"num_groups": 2, "num_components": 2, "dim": 3, "capacity": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ComponentMemory(**args)  # type: ignore[arg-type]


def _ids(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


@pytest.mark.parametrize(
    ("emb", "groups", "comps", "match"),
    [
        (torch.zeros(3, 4), _ids(0, 0, 0), _ids(0, 0, 0), r"embeddings: expected shape \(N, 3\)"),
        (torch.zeros(3), _ids(0, 0, 0), _ids(0, 0, 0), "embeddings"),
        (torch.zeros(3, 3, dtype=torch.int64), _ids(0, 0, 0), _ids(0, 0, 0), "floating"),
        (torch.zeros(3, 3), _ids(0, 0), _ids(0, 0, 0), r"groups: expected shape \(3,\)"),
        (torch.zeros(3, 3), _ids(0, 0, 0), _ids(0, 0, 0)[:, None], "components"),
        (torch.zeros(3, 3), torch.zeros(3), _ids(0, 0, 0), "groups: expected an integer"),
        (torch.zeros(3, 3), _ids(0, 0, 0).bool(), _ids(0, 0, 0), "groups: expected an integer"),
        (torch.zeros(3, 3), _ids(0, 2, 1), _ids(0, 0, 0), r"groups.*\[0, 2\)"),
        (torch.zeros(3, 3), _ids(0, 255, 1), _ids(0, 0, 0), "groups"),
        (torch.zeros(3, 3), _ids(0, 0, 0), _ids(-1, 0, 0), "components"),
        (torch.tensor([[0.0, float("nan"), 0.0]]), _ids(0), _ids(0), "finite"),
        (torch.tensor([[0.0, float("inf"), 0.0]]), _ids(0), _ids(0), "finite"),
    ],
)
def test_ring_write_errors(
    emb: torch.Tensor, groups: torch.Tensor, comps: torch.Tensor, match: str
) -> None:
    mem = ComponentMemory(2, 2, 3, capacity=4)
    before = mem.bank.clone()
    with pytest.raises(ValueError, match=match):
        mem.write(emb, groups, comps)
    assert torch.equal(mem.bank, before) and int(mem.ptr.sum()) == 0


# ----------------------------------------------------------------------------------------------
# momentum_m_step


def random_params(
    gen: torch.Generator, num_g: int, num_m: int, d: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    means = F.normalize(torch.randn(num_g, num_m, d, generator=gen, dtype=dtype), dim=-1)
    scales = 0.05 + torch.rand(num_g, num_m, d, generator=gen, dtype=dtype)
    return means, scales


@given(
    num_g=st.integers(1, 5),
    num_m=st.integers(1, 3),
    cap=st.integers(1, 9),
    d=st.integers(1, 4),
    mean_momentum=st.sampled_from([0.0, 0.5, 0.999, 1.0]),
    scale_momentum=st.sampled_from([0.0, 0.3, 1.0]),
    floor=st.sampled_from([0.0, 1e-2]),
    use_valid=st.booleans(),
    as_mask=st.booleans(),
    slots_per_chunk=st.sampled_from([None, 1, 2, 4]),
    seed=st.integers(0, 2**31 - 1),
)
def test_m_step_matches_loop(
    num_g: int,
    num_m: int,
    cap: int,
    d: int,
    mean_momentum: float,
    scale_momentum: float,
    floor: float,
    use_valid: bool,
    as_mask: bool,
    slots_per_chunk: int | None,
    seed: int,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64
    means, scales = random_params(gen, num_g, num_m, d, dt)
    bank = F.normalize(torch.randn(num_g, num_m, cap, d, generator=gen, dtype=dt), dim=-1)
    valid = torch.rand(num_g, num_m, cap, generator=gen) < 0.6 if use_valid else None
    chosen = torch.randint(0, num_g, (int(torch.randint(0, num_g + 2, (1,), generator=gen)),))
    groups_list = chosen.tolist()
    groups: torch.Tensor | list[int] = groups_list
    if as_mask:
        mask = torch.zeros(num_g, dtype=torch.bool)
        mask[chosen] = True
        groups = mask
    inputs = [t.clone() for t in (means, scales, bank)]
    mu, sigma = momentum_m_step(
        means,
        scales,
        bank,
        groups,
        mean_momentum=mean_momentum,
        scale_momentum=scale_momentum,
        variance_floor=floor,
        valid=valid,
        slots_per_chunk=slots_per_chunk,
    )
    ref_mu, ref_sigma = ref_m_step(
        means.numpy(),
        scales.numpy(),
        bank.numpy(),
        groups_list,
        mean_momentum,
        scale_momentum,
        floor,
        None if valid is None else valid.numpy(),
    )
    np.testing.assert_allclose(mu.numpy(), ref_mu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), ref_sigma, rtol=0, atol=1e-12)
    for t, before in zip((means, scales, bank), inputs, strict=True):
        assert torch.equal(t, before)  # pure
    untouched = [g for g in range(num_g) if g not in groups_list]
    assert torch.equal(mu[untouched], means[untouched])
    assert torch.equal(sigma[untouched], scales[untouched])


def test_m_step_paper_defaults_by_hand() -> None:
    bank = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)  # G=M=1, K=2, D=2
    means = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    scales = torch.ones(1, 1, 2, dtype=torch.float64)
    mu, sigma = momentum_m_step(means, scales, bank, [0])
    f = np.array([1.0, 1.0]) / np.sqrt(2.0)
    np.testing.assert_allclose(mu[0, 0].numpy(), 0.999 * np.array([1.0, 0.0]) + 0.001 * f)
    spread = ((np.array([[1.0, 0.0], [0.0, 1.0]]) - f) ** 2).mean(axis=0)
    np.testing.assert_allclose(sigma[0, 0].numpy(), np.sqrt(spread + 0.01))


def test_m_step_count_only_filled_ignores_initial_values() -> None:
    gen = torch.Generator().manual_seed(1)
    num_g, num_m, d = 3, 2, 4
    random_mem = ComponentMemory(num_g, num_m, d, capacity=6, count_only_filled=True, generator=gen)
    zero_mem = ComponentMemory(num_g, num_m, d, capacity=6, init="zeros", count_only_filled=True)
    x, g, m = random_batch(gen, 7, num_g, num_m, d, torch.float32)
    g = g.clamp(max=1)  # group 2 stays empty
    random_mem.write(x, g, m)
    zero_mem.write(x, g, m)
    means, scales = random_params(gen, num_g, num_m, d, torch.float32)
    a = momentum_m_step(means, scales, random_mem.bank, [0, 1, 2], valid=random_mem.valid_mask())
    b = momentum_m_step(means, scales, zero_mem.bank, [0, 1, 2], valid=zero_mem.valid_mask())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # rings with no written slot (all of group 2, maybe some of 0/1) are left unchanged
    empty = random_mem.filled == 0
    assert empty[2].all()
    assert torch.equal(a[0][empty], means[empty]) and torch.equal(a[1][empty], scales[empty])
    # the faithful path counts the random slots: results differ for group 2
    c = momentum_m_step(means, scales, random_mem.bank, [2])
    assert not torch.equal(c[0][2], means[2])


def test_m_step_zero_bank_shrinks_mean_faithfully() -> None:
    means = F.normalize(torch.randn(1, 2, 3, dtype=torch.float64), dim=-1)
    scales = torch.ones(1, 2, 3, dtype=torch.float64)
    mu, sigma = momentum_m_step(means, scales, torch.zeros(1, 2, 4, 3, dtype=torch.float64), [0])
    torch.testing.assert_close(mu, 0.999 * means)
    torch.testing.assert_close(sigma, torch.full_like(scales, 0.1))


def test_m_step_no_groups_and_float32_bank_with_float64_params() -> None:
    gen = torch.Generator().manual_seed(2)
    means, scales = random_params(gen, 2, 2, 3, torch.float64)
    bank = torch.randn(2, 2, 5, 3, generator=gen)
    mu, sigma = momentum_m_step(means, scales, bank, [])
    assert torch.equal(mu, means) and torch.equal(sigma, scales) and mu is not means
    mu, _ = momentum_m_step(means, scales, bank, torch.tensor([1, 1]))
    assert mu.dtype == torch.float64
    ref_mu, _ = ref_m_step(
        means.numpy(), scales.numpy(), bank.double().numpy(), [1], 0.999, 0.0, 1e-2, None
    )
    np.testing.assert_allclose(mu.numpy(), ref_mu, atol=1e-12)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"means": torch.zeros(2, 2)}, "means"),
        ({"scales": torch.ones(2, 2, 4)}, "scales"),
        ({"scales": torch.ones(2, 2, 3, dtype=torch.float64)}, "scales"),
        ({"means": torch.full((2, 2, 3), float("nan"))}, "means: expected finite"),
        ({"bank": torch.zeros(2, 2, 5, 4)}, "bank"),
        ({"bank": torch.zeros(2, 5, 3)}, "bank"),
        ({"bank": torch.full((2, 2, 5, 3), float("inf"))}, "bank: expected finite"),
        ({"groups": [2]}, r"groups.*\[0, 2\)"),
        ({"groups": [-1]}, "groups"),
        ({"groups": torch.tensor([True])}, "groups"),
        ({"groups": torch.tensor([0.0])}, "groups"),
        ({"valid": torch.ones(2, 2, 5)}, "valid"),
        ({"valid": torch.ones(2, 2, 4, dtype=torch.bool)}, "valid"),
        ({"mean_momentum": 1.5}, "mean_momentum"),
        ({"scale_momentum": -0.1}, "scale_momentum"),
        ({"variance_floor": -1.0}, "variance_floor"),
        ({"variance_floor": float("nan")}, "variance_floor"),
        ({"slots_per_chunk": 0}, "slots_per_chunk"),
    ],
)
def test_m_step_errors(change: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "means": torch.zeros(2, 2, 3),
        "scales": torch.ones(2, 2, 3),
        "bank": torch.zeros(2, 2, 5, 3),
        "groups": [0],
    }
    args.update(change)
    with pytest.raises(ValueError, match=match):
        momentum_m_step(**args)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# StreamingStatistics


def make_batches(
    seed: int,
    sizes: list[int],
    num_g: int,
    num_m: int,
    d: int,
    weighted: bool,
    dtype: torch.dtype = torch.float64,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    gen = torch.Generator().manual_seed(seed)
    out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    for n in sizes:
        x, g, m = random_batch(gen, n, num_g, num_m, d, dtype)
        x = x + torch.randn(d, generator=gen, dtype=dtype)  # an offset: not centred at 0
        w = torch.rand(n, generator=gen, dtype=dtype) if weighted else None
        out.append((x, g, m, w))
    return out


def as_numpy(
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]],
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    return [
        (x.numpy(), g.numpy(), m.numpy(), np.ones(len(g)) if w is None else w.numpy())
        for x, g, m, w in batches
    ]


def assert_stats_close(
    stats: StreamingStatistics, ref: tuple[np.ndarray, np.ndarray, np.ndarray], atol: float
) -> None:
    weight, mean, var = ref
    np.testing.assert_allclose(stats.weight_sum.numpy(), weight, rtol=1e-12, atol=atol)
    np.testing.assert_allclose(stats.mean().numpy(), mean, rtol=0, atol=atol)
    np.testing.assert_allclose(stats.variance().numpy(), var, rtol=0, atol=atol)


@given(
    num_g=st.integers(1, 4),
    num_m=st.integers(1, 3),
    d=st.integers(1, 4),
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=6),
    decay=st.sampled_from([1.0, 0.9, 0.5]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_streaming_matches_weighted_numpy(
    num_g: int,
    num_m: int,
    d: int,
    sizes: list[int],
    decay: float,
    weighted: bool,
    seed: int,
) -> None:
    batches = make_batches(seed, sizes, num_g, num_m, d, weighted)
    stats = StreamingStatistics(num_g, num_m, d, decay=decay, dtype=torch.float64)
    for t, (x, g, m, w) in enumerate(batches):
        stats.write(x, g, m, weights=w)
        ref = ref_moments(as_numpy(batches[: t + 1]), num_g, num_m, decay)
        assert_stats_close(stats, ref, atol=1e-10)


def test_streaming_chunked_batches_match_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming_module, "_CHUNK_ELEMENTS", 7)  # 2 rows per chunk at D = 3
    for weighted in (False, True):
        batches = make_batches(4, [11, 5], 2, 2, 3, weighted)
        stats = StreamingStatistics(2, 2, 3, decay=0.75, dtype=torch.float64)
        for x, g, m, w in batches:
            stats.write(x, g, m, weights=w)
        assert_stats_close(stats, ref_moments(as_numpy(batches), 2, 2, 0.75), atol=1e-10)


def test_huge_finite_embeddings_are_accepted() -> None:
    x = torch.full((2, 3), 3e38)  # finite, but their sum overflows float32
    mem = ComponentMemory(1, 1, 3, capacity=2, init="zeros")
    mem.write(x, torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    assert torch.equal(mem.bank[0, 0], x)


def test_streaming_float32_unit_norm_accuracy() -> None:
    gen = torch.Generator().manual_seed(0)
    d, n_batches, n = 64, 40, 500
    center = torch.zeros(d, dtype=torch.float64)
    center[0] = 1.0  # axis-aligned: one coordinate near 1, the rest near 0
    stats = StreamingStatistics(1, 2, d, decay=1.0)
    xs = []
    for _ in range(n_batches):
        x = F.normalize(center + 0.1 * torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
        comps = (torch.rand(n, generator=gen) < 0.3).long()
        stats.write(x.float(), torch.zeros(n, dtype=torch.int64), comps)
        xs.append((x, comps))
    x_all = torch.cat([x for x, _ in xs]).numpy()
    c_all = torch.cat([c for _, c in xs]).numpy()
    for m in range(2):
        sel = x_all[c_all == m]
        np.testing.assert_allclose(stats.mean()[0, m].numpy(), sel.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(stats.variance()[0, m].numpy(), sel.var(axis=0), atol=1e-5)
        f = sel.sum(axis=0) / np.linalg.norm(sel.sum(axis=0))
        about_f = ((sel - f) ** 2).mean(axis=0)
        f32 = torch.from_numpy(f).float()
        np.testing.assert_allclose(stats.variance(f32)[0, m].numpy(), about_f, atol=1e-5)


def test_streaming_merge_two_halves_equals_one_stream() -> None:
    num_g, num_m, d = 3, 2, 4
    batches = make_batches(5, [13, 0, 21, 8, 17, 30], num_g, num_m, d, weighted=True)
    one = StreamingStatistics(num_g, num_m, d, decay=1.0, dtype=torch.float64)
    a = StreamingStatistics(num_g, num_m, d, decay=1.0, dtype=torch.float64)
    b = StreamingStatistics(num_g, num_m, d, decay=1.0, dtype=torch.float64)
    for i, (x, g, m, w) in enumerate(batches):
        one.write(x, g, m, weights=w)
        (a if i < 3 else b).write(x, g, m, weights=w)
    assert a.merge_(b) is a
    for name in ("weight_sum", "running_mean", "sq_dev_sum"):
        torch.testing.assert_close(getattr(a, name), getattr(one, name), rtol=0, atol=1e-10)


def split_batches(
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]],
    ranks: int,
) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]]:
    out: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]] = [
        [] for _ in range(ranks)
    ]
    for x, g, m, w in batches:
        for r in range(ranks):
            sl = slice(r, None, ranks)
            out[r].append((x[sl], g[sl], m[sl], None if w is None else w[sl]))
    return out


def test_decayed_ranks_merge_and_sum_reduce_equal_one_stream() -> None:
    """Ranks that each see a share of every batch, merged, equal one stream of the full batches."""
    num_g, num_m, d, decay, ranks = 2, 3, 3, 0.8, 3
    batches = make_batches(7, [20, 9, 0, 31, 14], num_g, num_m, d, weighted=True)
    one = StreamingStatistics(num_g, num_m, d, decay=decay, dtype=torch.float64)
    for x, g, m, w in batches:
        one.write(x, g, m, weights=w)
    parts = []
    for share in split_batches(batches, ranks):
        s = StreamingStatistics(num_g, num_m, d, decay=decay, dtype=torch.float64)
        for x, g, m, w in share:
            s.write(x, g, m, weights=w)
        parts.append(s)
    merged = StreamingStatistics(num_g, num_m, d, decay=decay, dtype=torch.float64)
    for p in parts:
        merged.merge_(p)
    # the all-reduce formula, with ranks stacked on a leading dimension
    w, mean, sq = _sum_reduce_moments(
        torch.stack([p.weight_sum for p in parts]),
        torch.stack([p.running_mean for p in parts]),
        torch.stack([p.sq_dev_sum for p in parts]),
        lambda t: t.sum(0, keepdim=True).expand_as(t).clone(),
    )
    for r in range(ranks):
        torch.testing.assert_close(w[r], one.weight_sum, rtol=0, atol=1e-10)
        torch.testing.assert_close(mean[r], one.running_mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(sq[r], one.sq_dev_sum, rtol=0, atol=1e-10)
    for name in ("weight_sum", "running_mean", "sq_dev_sum"):
        torch.testing.assert_close(getattr(merged, name), getattr(one, name), rtol=0, atol=1e-10)
    ref = ref_moments(as_numpy(batches), num_g, num_m, decay)
    assert_stats_close(merged, ref, atol=1e-10)
    # without torch.distributed, sync is a no-op and synced() a copy
    local = StreamingStatistics(num_g, num_m, d, decay=decay, dtype=torch.float64)
    for x, g, m, w in batches:
        local.write(x, g, m, weights=w, sync=True)
    assert torch.equal(local.sq_dev_sum, one.sq_dev_sum)
    copy = local.synced()
    assert copy is not local and torch.equal(copy.running_mean, local.running_mean)


def test_merge_moments_edge_cases() -> None:
    zero = torch.zeros(2)
    ma, mb = torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [5.0]])
    sa, sb = torch.zeros(2, 1), torch.zeros(2, 1)
    w, m, s = _merge_moments(torch.tensor([0.0, 1.0]), ma, sa, torch.tensor([2.0, 0.0]), mb, sb)
    assert w.tolist() == [2.0, 1.0] and m.tolist() == [[3.0], [2.0]] and s.tolist() == [[0], [0]]
    w, m, _ = _merge_moments(zero, ma, sa, zero, mb, sb)
    assert w.tolist() == [0.0, 0.0] and torch.equal(m, ma)


def test_streaming_empty_components_are_nan_and_decay_keeps_ratios() -> None:
    stats = StreamingStatistics(2, 1, 2, decay=0.5, dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]], dtype=torch.float64)
    stats.write(x, torch.tensor([0, 0]), torch.tensor([0, 0]))
    assert torch.isnan(stats.mean()[1]).all() and torch.isnan(stats.variance()[1]).all()
    mean, var = stats.mean().clone(), stats.variance().clone()
    empty = torch.zeros(0, dtype=torch.int64)
    stats.write(torch.zeros(0, 2, dtype=torch.float64), empty, empty)  # decays only
    assert float(stats.weight_sum[0, 0]) == 1.0
    torch.testing.assert_close(stats.mean()[0], mean[0])
    torch.testing.assert_close(stats.variance()[0], var[0])


def test_streaming_state_dict_roundtrip_and_reset() -> None:
    batches = make_batches(3, [10, 12], 2, 2, 3, weighted=False, dtype=torch.float32)
    stats = StreamingStatistics(2, 2, 3)
    for x, g, m, w in batches:
        stats.write(x, g, m, weights=w)
    other = StreamingStatistics(2, 2, 3)
    other.load_state_dict(stats.state_dict())
    assert set(stats.state_dict()) == {"weight_sum", "running_mean", "sq_dev_sum"}
    assert torch.equal(other.variance(), stats.variance())
    assert "decay=0.999" in repr(other)
    other.reset()
    assert int(other.weight_sum.sum()) == 0


@pytest.mark.parametrize("use_valid", [False, True])
def test_streaming_m_step_equals_bank_m_step(use_valid: bool) -> None:
    num_g, num_m, d, cap = 3, 2, 4, 50
    gen = torch.Generator().manual_seed(11)
    mem = ComponentMemory(
        num_g,
        num_m,
        d,
        capacity=cap,
        max_per_step=None,
        count_only_filled=use_valid,
        generator=gen,
        dtype=torch.float64,
    )
    stats = StreamingStatistics(num_g, num_m, d, decay=1.0, dtype=torch.float64)
    for n in (7, 15, 0, 9):  # at most 31 per ring: no overwrite
        x, g, m = random_batch(gen, n, num_g, num_m, d, torch.float64)
        g = g.clamp(max=num_g - 2) if use_valid else g  # leave the last group empty
        mem.write(x, g, m)
        if use_valid:  # only the written samples count
            stats.write(x, g, m)
    if not use_valid:  # every slot counts, initial random ones included: stream the final bank
        keys = torch.arange(num_g * num_m).repeat_interleave(cap)
        flat = mem.bank.reshape(-1, d)
        for part in torch.arange(flat.shape[0]).chunk(4):
            stats.write(flat[part], keys[part] // num_m, keys[part] % num_m)
    means, scales = random_params(gen, num_g, num_m, d, torch.float64)
    mm, sm, floor = 0.9, 0.25, 1e-3
    valid = mem.valid_mask() if use_valid else None
    want = momentum_m_step(
        means,
        scales,
        mem.bank,
        [0, 2],
        mean_momentum=mm,
        scale_momentum=sm,
        variance_floor=floor,
        valid=valid,
    )
    got = stats.m_step(
        means, scales, [0, 2], mean_momentum=mm, scale_momentum=sm, variance_floor=floor
    )
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-10)
    if use_valid:
        assert torch.equal(got[0][2], means[2]) and torch.equal(got[1][2], scales[2])
    assert torch.equal(got[0][1], means[1])  # not listed


# ----------------------------------------------------------------------------------------------
# MixtureMemory: the interface both memories offer


def test_both_memories_implement_the_interface() -> None:
    memories: list[MixtureMemory] = [  # mypy checks the signatures here
        ComponentMemory(2, 2, 3, capacity=4),
        StreamingStatistics(2, 2, 3),
    ]
    for memory in memories:
        assert isinstance(memory, MixtureMemory)
    assert not isinstance(torch.nn.Linear(2, 2), MixtureMemory)


def _padded(
    samples: dict[tuple[int, int], list[np.ndarray]], num_g: int, num_m: int, d: int
) -> tuple[np.ndarray, np.ndarray]:
    """The samples of each (g, m) as a zero-padded (G, M, K, D) bank and its (G, M, K) mask."""
    k = max([len(v) for v in samples.values()] + [1])
    bank = np.zeros((num_g, num_m, k, d))
    valid = np.zeros((num_g, num_m, k), dtype=bool)
    for (g, m), rows in samples.items():
        bank[g, m, : len(rows)] = rows
        valid[g, m, : len(rows)] = True
    return bank, valid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_both_memories_give_the_loop_m_step_on_the_same_samples(seed: int) -> None:
    """Ring (counting written slots, none overwritten) and statistics (decay 1) hold the same
    samples, so through the interface both give the plain-loop M-step on them."""
    num_g, num_m, d, cap = 4, 2, 3, 40
    gen = torch.Generator().manual_seed(seed)
    memories: dict[str, MixtureMemory] = {
        "ring": ComponentMemory(
            num_g,
            num_m,
            d,
            capacity=cap,
            max_per_step=None,
            count_only_filled=True,
            generator=gen,
            dtype=torch.float64,
        ),
        "stats": StreamingStatistics(num_g, num_m, d, decay=1.0, dtype=torch.float64),
    }
    samples: dict[tuple[int, int], list[np.ndarray]] = {}
    for n in (9, 0, 14, 6):  # at most 29 samples per ring: nothing is overwritten
        x, g, m = random_batch(gen, n, num_g, num_m, d, torch.float64)
        keep = torch.rand(n, generator=gen) < 0.7
        g = torch.where(keep, g.clamp(max=num_g - 2), 99)  # last group empty; masked ids invalid
        counts = np.zeros((num_g, num_m))
        for i in range(n):
            if keep[i]:
                samples.setdefault((int(g[i]), int(m[i])), []).append(x[i].numpy())
                counts[int(g[i]), int(m[i])] += 1
        for name, memory in memories.items():
            added = memory.write(x, g, m, keep)
            np.testing.assert_array_equal(added.double().numpy(), counts, err_msg=name)
    means, scales = random_params(gen, num_g, num_m, d, torch.float64)
    groups = [0, 2, 3]  # group 3 holds nothing: left unchanged; group 1 is not listed
    bank, valid = _padded(samples, num_g, num_m, d)
    want = ref_m_step(means.numpy(), scales.numpy(), bank, groups, 0.9, 0.25, 1e-3, valid)
    for name, memory in memories.items():
        mu, sigma = memory.m_step(
            means, scales, groups, mean_momentum=0.9, scale_momentum=0.25, variance_floor=1e-3
        )
        np.testing.assert_allclose(mu.numpy(), want[0], rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(sigma.numpy(), want[1], rtol=0, atol=1e-12, err_msg=name)
        assert torch.equal(mu[1], means[1]) and torch.equal(sigma[3], scales[3]), name


def test_faithful_ring_m_step_is_the_loop_on_the_whole_bank() -> None:
    """A wrapped ring with the paper's settings (every slot counts, sub-sampled writes)."""
    num_g, num_m, d, cap, per_step = 3, 2, 4, 5, 3
    gen = torch.Generator().manual_seed(5)
    ring = ComponentMemory(num_g, num_m, d, capacity=cap, max_per_step=per_step, generator=gen)
    memory: MixtureMemory = ring
    bank, ptr, filled = ring.bank.clone(), ring.ptr.clone(), ring.filled.clone()
    for n in (30, 7, 25):
        x, g, m = random_batch(gen, n, num_g, num_m, d, torch.float32)
        memory.write(x, g, m)
        ref_enqueue(bank, ptr, filled, x, g, m, per_step)
    means, scales = random_params(gen, num_g, num_m, d, torch.float32)
    mu, sigma = memory.m_step(means, scales, torch.tensor([True, False, True]))
    want = ref_m_step(
        means.double().numpy(), scales.double().numpy(), bank.double().numpy(),
        [0, 2], 0.999, 0.0, 1e-2, None,
    )  # fmt: skip
    np.testing.assert_allclose(mu.numpy(), want[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(sigma.numpy(), want[1], rtol=0, atol=1e-6)
    # the method is the formula on its bank, bit for bit
    direct = momentum_m_step(means, scales, ring.bank, torch.tensor([True, False, True]))
    assert torch.equal(mu, direct[0]) and torch.equal(sigma, direct[1])


_X, _Z = torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64)
_P = (torch.zeros(2, 2, 3), torch.ones(2, 2, 3))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.write(torch.zeros(2, 4), _Z, _Z), "embeddings"),
        (lambda s: s.write(_X, torch.tensor([0, 3]), _Z), "groups"),
        (lambda s: s.write(torch.full((2, 3), float("nan")), _Z, _Z), "finite"),
        (lambda s: s.write(_X, _Z, _Z, weights=torch.tensor([1.0, -1.0])), "weights"),
        (lambda s: s.write(_X, _Z, _Z, weights=torch.tensor([1.0, float("inf")])), "weights"),
        (lambda s: s.write(_X, _Z, _Z, weights=torch.ones(3)), "weights"),
        (lambda s: s.write(_X, _Z, _Z, weights=torch.ones(2).long()), "weights"),
        (lambda s: s.merge_(StreamingStatistics(2, 2, 4)), "other"),
        (lambda s: s.variance(torch.zeros(5)), "center"),
        (lambda s: s.m_step(torch.zeros(2, 2, 4), torch.ones(2, 2, 4), [0]), "means"),
        (lambda s: s.m_step(*_P, [2]), "groups"),
        (lambda s: s.m_step(*_P, [0], mean_momentum=2.0), "mean_momentum"),
        (lambda s: s.m_step(*_P, [0], variance_floor=-1.0), "variance_floor"),
    ],
)
def test_streaming_errors(call: object, match: str) -> None:
    stats = StreamingStatistics(2, 2, 3)
    with pytest.raises(ValueError, match=match):
        call(stats)  # type: ignore[operator]
    assert int(stats.weight_sum.sum()) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"decay": 0.0}, "decay"), ({"decay": 1.5}, "decay"), ({"dim": 0}, "dim")],
)
def test_streaming_constructor_errors(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"num_groups": 2, "num_components": 2, "dim": 3}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        StreamingStatistics(**args)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# distributed (two gloo processes)


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batches = make_batches(9, [16, 0, 23, 11], 2, 2, 3, weighted=True)
        share = split_batches(batches, world)[rank]
        synced_stream = StreamingStatistics(2, 2, 3, decay=0.7, dtype=torch.float64)
        local = StreamingStatistics(2, 2, 3, decay=0.7, dtype=torch.float64)
        for x, g, m, w in share:
            synced_stream.write(x, g, m, weights=w, sync=True)
            local.write(x, g, m, weights=w)
        merged = local.synced()
        torch.save(
            {"sync": synced_stream.state_dict(), "synced": merged.state_dict()},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="gloo file store")
def test_distributed_sync_equals_one_stream(tmp_path: Path) -> None:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    world = 2
    mp.spawn(  # type: ignore[attr-defined, no-untyped-call]
        _dist_worker,
        args=(world, str(tmp_path / "init"), str(tmp_path)),
        nprocs=world,
        join=True,
    )
    one = StreamingStatistics(2, 2, 3, decay=0.7, dtype=torch.float64)
    for x, g, m, w in make_batches(9, [16, 0, 23, 11], 2, 2, 3, weighted=True):
        one.write(x, g, m, weights=w)
    for r in range(world):
        saved = torch.load(tmp_path / f"rank{r}.pt")
        for key in ("sync", "synced"):
            for name, value in saved[key].items():
                torch.testing.assert_close(value, one.state_dict()[name], rtol=0, atol=1e-10)
