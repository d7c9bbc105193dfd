"""Tests for gmmseg.sinkhorn against POT, the paper's plain-domain loop and per-group loops."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gmmseg.sinkhorn import segmented_sinkhorn, sinkhorn

F64 = torch.float64
F32 = torch.float32


# --------------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------------


def pot_plan(
    scores: torch.Tensor,
    epsilon: float,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    n_iters: int = 20000,
    stop: float = 1e-13,
) -> np.ndarray:
    """POT's log-domain Sinkhorn on one (N, M) problem with cost -scores."""
    n, m = scores.shape
    a_np = np.full(n, 1.0 / n) if a is None else a.double().numpy()
    b_np = np.full(m, 1.0 / m) if b is None else b.double().numpy()
    return ot.sinkhorn(
        a_np,
        b_np,
        -scores.double().numpy(),
        epsilon,
        method="sinkhorn_log",
        numItermax=n_iters,
        stopThr=stop,
        warn=False,
    )


def paper_plain_loop(scores: torch.Tensor, epsilon: float, n_iters: int = 3) -> torch.Tensor:
    """The plain-domain E-step of the reference implementation, normalised to total mass 1."""
    q = torch.exp(scores / epsilon)
    q = q / q.sum()
    n, m = q.shape
    for _ in range(n_iters):
        q = q / q.sum(dim=0, keepdim=True) / m  # every component gets 1/M
        q = q / q.sum(dim=1, keepdim=True) / n  # every pixel gets 1/N
    return q


def segment_loop(
    scores: torch.Tensor,
    ids: torch.Tensor,
    num_segments: int,
    epsilon: float,
    n_iters: int,
    col_marginal: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain loop twin of segmented_sinkhorn: one dense call per group, scattered back."""
    out = torch.zeros_like(scores)
    for k in range(num_segments):
        rows = (ids == k).nonzero().flatten()
        if rows.numel() == 0:
            continue
        b = None
        if col_marginal is not None:
            b = col_marginal if col_marginal.ndim == 1 else col_marginal[k]
        out[rows] = sinkhorn(scores[rows], epsilon, n_iters, col_marginal=b)
    return out


def random_scores(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype = F64, scale: float = 1.0
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen, dtype=F64) * 2 - 1).mul(scale).to(dtype)


def random_marginal(shape: tuple[int, ...], seed: int, total: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(shape, generator=gen, dtype=F64) + 0.05
    return w / w.sum(-1, keepdim=True) * total


def tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == F32 else {"rtol": 1e-10, "atol": 1e-12}


seeds = st.integers(0, 2**31 - 1)
dtypes = st.sampled_from([F32, F64])


# --------------------------------------------------------------------------------------------------
# Dense: against POT
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m", "eps"), [(7, 3, 0.5), (40, 5, 0.25), (5, 9, 1.0), (1, 4, 0.3)])
def test_dense_matches_pot_uniform(n: int, m: int, eps: float) -> None:
    scores = random_scores((n, m), seed=n * 100 + m)
    plan = sinkhorn(scores, eps, n_iters=200)
    np.testing.assert_allclose(plan.numpy(), pot_plan(scores, eps), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("n", "m", "eps", "total"), [(6, 4, 0.5, 1.0), (30, 5, 0.3, 2.5)])
def test_dense_matches_pot_nonuniform(n: int, m: int, eps: float, total: float) -> None:
    scores = random_scores((n, m), seed=7)
    a = random_marginal((n,), seed=1, total=total)
    b = random_marginal((m,), seed=2, total=total)
    plan = sinkhorn(scores, eps, n_iters=200, row_marginal=a, col_marginal=b)
    np.testing.assert_allclose(plan.numpy(), pot_plan(scores, eps, a, b), atol=1e-6, rtol=0)
    torch.testing.assert_close(plan.sum(-1), a, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(plan.sum(-2), b, rtol=1e-8, atol=1e-10)


def test_dense_matches_pot_batched_with_batched_marginals() -> None:
    scores = random_scores((2, 3, 8, 4), seed=3)
    a = random_marginal((3, 8), seed=4)  # broadcast over the first batch dim
    b = random_marginal((2, 3, 4), seed=5)
    plan = sinkhorn(scores, 0.4, n_iters=200, row_marginal=a, col_marginal=b)
    assert plan.shape == (2, 3, 8, 4)
    for i in range(2):
        for j in range(3):
            ref = pot_plan(scores[i, j], 0.4, a[j], b[i, j])
            np.testing.assert_allclose(plan[i, j].numpy(), ref, atol=1e-6, rtol=0)


@given(
    n=st.integers(1, 7),
    m=st.integers(1, 5),
    n_iters=st.integers(1, 12),
    eps=st.sampled_from([1e-3, 0.01, 0.05, 0.3]),
    seed=seeds,
)
def test_dense_iterates_match_pot_iterates(
    n: int, m: int, n_iters: int, eps: float, seed: int
) -> None:
    # POT's sinkhorn_log also updates columns then rows, so equal round counts give equal plans,
    # converged or not, and at any epsilon.
    scores = random_scores((n, m), seed)
    a = random_marginal((n,), seed + 1)
    b = random_marginal((m,), seed + 2)
    plan = sinkhorn(scores, eps, n_iters, row_marginal=a, col_marginal=b)
    ref = pot_plan(scores, eps, a, b, n_iters=n_iters, stop=0.0)
    np.testing.assert_allclose(plan.numpy(), ref, rtol=1e-8, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Dense: the paper's E-step
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize(("n", "m"), [(200, 5), (37, 3), (1, 5), (6, 1)])
def test_paper_plain_loop_equivalence(dtype: torch.dtype, n: int, m: int) -> None:
    raw = random_scores((n, m), seed=n + m, scale=300.0)  # log-likelihood-like magnitudes
    scores = raw / raw.abs().max()  # the paper's normalisation to [-1, 1]
    ref = paper_plain_loop(scores, 0.05, n_iters=3)  # float64 plain domain is safe here
    plan = sinkhorn(scores.to(dtype), 0.05, n_iters=3)
    assert plan.dtype == dtype
    torch.testing.assert_close(plan, ref.to(dtype), **tol(dtype))
    # Same hard assignment, ignoring rows whose two best entries tie to rounding.
    top2 = ref.topk(min(2, m), dim=-1).values
    clear = (top2[:, 0] - top2[:, -1]) > 1e-4 * top2[:, 0] if m > 1 else torch.ones(n, dtype=bool)
    assert torch.equal(plan.argmax(-1)[clear], ref.argmax(-1)[clear])


# --------------------------------------------------------------------------------------------------
# Dense: properties
# --------------------------------------------------------------------------------------------------


@given(
    shape=st.tuples(st.integers(0, 2), st.integers(1, 9), st.integers(1, 6)),
    n_iters=st.integers(1, 5),
    eps=st.sampled_from([1e-3, 0.05, 1.0]),
    dtype=dtypes,
    seed=seeds,
)
def test_dense_shapes_and_exact_row_marginals(
    shape: tuple[int, int, int], n_iters: int, eps: float, dtype: torch.dtype, seed: int
) -> None:
    b_dim, n, m = shape
    full = (b_dim, n, m) if b_dim else (n, m)
    scores = random_scores(full, seed, dtype)
    a = random_marginal((n,), seed + 1).to(dtype)
    plan = sinkhorn(scores, eps, n_iters, row_marginal=a)
    assert plan.shape == scores.shape
    assert plan.dtype == dtype
    assert bool(torch.isfinite(plan).all())
    assert bool((plan >= 0).all())
    torch.testing.assert_close(plan.sum(-1), a.expand(full[:-1]), **tol(dtype))


@settings(max_examples=25)
@given(n=st.integers(1, 8), m=st.integers(1, 5), eps=st.sampled_from([0.3, 1.0]), seed=seeds)
def test_dense_column_marginals_at_convergence(n: int, m: int, eps: float, seed: int) -> None:
    scores = random_scores((n, m), seed)
    b = random_marginal((m,), seed + 1)
    plan = sinkhorn(scores, eps, n_iters=500, col_marginal=b)
    torch.testing.assert_close(plan.sum(-2), b, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(plan.sum(-1), torch.full((n,), 1 / n, dtype=F64))


@given(
    batch=st.tuples(st.integers(1, 2), st.integers(1, 3)),
    n=st.integers(1, 6),
    m=st.integers(1, 4),
    dtype=dtypes,
    seed=seeds,
)
def test_dense_batching_equals_per_item_calls(
    batch: tuple[int, int], n: int, m: int, dtype: torch.dtype, seed: int
) -> None:
    scores = random_scores((*batch, n, m), seed, dtype)
    b = random_marginal((batch[1], m), seed + 1).to(dtype)
    plan = sinkhorn(scores, 0.1, 4, col_marginal=b)
    for i in range(batch[0]):
        for j in range(batch[1]):
            one = sinkhorn(scores[i, j], 0.1, 4, col_marginal=b[j])
            torch.testing.assert_close(plan[i, j], one, **tol(dtype))


@given(
    k=st.integers(1, 6),
    m=st.integers(1, 5),
    scale=st.sampled_from([1.0, 100.0]),
    dtype=dtypes,
    seed=seeds,
)
def test_dense_tiny_epsilon_is_finite_with_correct_marginals(
    k: int, m: int, scale: float, dtype: torch.dtype, seed: int
) -> None:
    # Each row has one favourite column (score `scale`), every column is the favourite of k rows:
    # the optimal plan is feasible and Sinkhorn with epsilon = 1e-3 reaches it in a few rounds.
    n = k * m
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.rand((n, m), generator=gen, dtype=F64) * 1.5 - 1) * scale
    favourite = torch.randperm(n, generator=gen) % m
    scores[torch.arange(n), favourite] = scale
    plan = sinkhorn(scores.to(dtype), 1e-3, 5)
    assert bool(torch.isfinite(plan).all())
    torch.testing.assert_close(plan.sum(-1), torch.full((n,), 1 / n, dtype=dtype), **tol(dtype))
    torch.testing.assert_close(plan.sum(-2), torch.full((m,), 1 / m, dtype=dtype), **tol(dtype))
    assert torch.equal(plan.argmax(-1), favourite)


@given(
    n=st.integers(1, 30),
    m=st.integers(1, 6),
    scale=st.sampled_from([1.0, 1000.0]),
    dtype=dtypes,
    seed=seeds,
)
def test_dense_tiny_epsilon_random_scores_stay_finite(
    n: int, m: int, scale: float, dtype: torch.dtype, seed: int
) -> None:
    scores = random_scores((n, m), seed, dtype, scale=scale)
    plan = sinkhorn(scores, 1e-3, 3)
    assert bool(torch.isfinite(plan).all())
    torch.testing.assert_close(plan.sum(-1), torch.full((n,), 1 / n, dtype=dtype), **tol(dtype))
    torch.testing.assert_close(plan.sum(), torch.tensor(1.0, dtype=dtype), **tol(dtype))


def test_dense_float32_small_epsilon_agrees_with_float64() -> None:
    scores = random_scores((64, 5), seed=11)
    p64 = sinkhorn(scores, 1e-3, 3)
    p32 = sinkhorn(scores.float(), 1e-3, 3)
    torch.testing.assert_close(p32.double(), p64, rtol=0, atol=1e-4 / 64)


def test_dense_one_row_and_one_column() -> None:
    scores = random_scores((1, 4), seed=0)
    b = random_marginal((4,), seed=1)
    torch.testing.assert_close(sinkhorn(scores, 0.05, 3, col_marginal=b), b[None])
    col = random_scores((5, 1), seed=2)
    a = random_marginal((5,), seed=3)
    torch.testing.assert_close(sinkhorn(col, 0.05, 3, row_marginal=a), a[:, None])


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # POT's log(0)
def test_dense_zero_marginal_entries_get_no_mass() -> None:
    scores = random_scores((4, 3), seed=4)
    a = torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=F64)
    b = torch.tensor([0.0, 0.6, 0.4], dtype=F64)
    plan = sinkhorn(scores, 0.5, 500, row_marginal=a, col_marginal=b)
    assert bool((plan[1] == 0).all())
    assert bool((plan[:, 0] == 0).all())
    np.testing.assert_allclose(plan.numpy(), pot_plan(scores, 0.5, a, b), atol=1e-9)


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (3, 0, 2), (0, 0), (0, 4, 3)])
def test_dense_empty_returns_empty_plan(shape: tuple[int, ...]) -> None:
    scores = torch.zeros(shape)
    plan = sinkhorn(scores, 0.05, 3)
    assert plan.shape == shape
    assert plan.dtype == scores.dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dense_half_precision_returns_input_dtype(dtype: torch.dtype) -> None:
    scores = random_scores((16, 5), seed=5)
    plan = sinkhorn(scores.to(dtype), 0.05, 3)
    assert plan.dtype == dtype
    ref = sinkhorn(scores.to(dtype).float(), 0.05, 3)
    torch.testing.assert_close(plan.float(), ref, rtol=1e-2, atol=1e-3)


def test_dense_does_not_modify_inputs_and_is_differentiable() -> None:
    scores = random_scores((2, 5, 3), seed=6).requires_grad_()
    a = random_marginal((5,), seed=7).requires_grad_()
    before, a_before = scores.detach().clone(), a.detach().clone()
    plan = sinkhorn(scores, 0.3, 4, row_marginal=a)
    assert torch.equal(scores.detach(), before)
    assert torch.equal(a.detach(), a_before)
    torch.autograd.gradcheck(lambda s: sinkhorn(s, 0.3, 4, row_marginal=a.detach()), (scores,))
    # Marginals are differentiable too (perturbations that keep the total are meaningful).
    (grad_a,) = torch.autograd.grad((plan * scores.detach()).sum(), a)
    assert bool(torch.isfinite(grad_a).all())


# --------------------------------------------------------------------------------------------------
# Segmented: against a loop of dense calls
# --------------------------------------------------------------------------------------------------


@st.composite
def segment_cases(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    num_segments = draw(st.integers(1, 8))
    n = draw(st.integers(1, 40))
    m = draw(st.integers(1, 5))
    layout = draw(st.sampled_from(["random", "one_group", "singletons", "skewed"]))
    seed = draw(seeds)
    gen = torch.Generator().manual_seed(seed)
    if layout == "random":
        ids = torch.randint(0, num_segments, (n,), generator=gen)
    elif layout == "one_group":  # all rows in one group, the others empty
        ids = torch.full((n,), int(torch.randint(0, num_segments, (1,), generator=gen)))
    elif layout == "singletons":  # groups of size 1 next to a big group
        ids = torch.randint(0, num_segments, (n,), generator=gen)
        ids[: min(n, num_segments)] = torch.arange(min(n, num_segments))
        ids[min(n, num_segments) :] = 0
    else:  # uneven sizes, some groups empty
        p = torch.rand(num_segments, generator=gen) ** 4
        p[0] += 1e-3
        ids = torch.multinomial(p, n, replacement=True, generator=gen)
    scores = random_scores((n, m), seed + 1)
    return scores, ids, num_segments


@given(
    case=segment_cases(),
    n_iters=st.integers(1, 6),
    eps=st.sampled_from([1e-3, 0.05, 0.5]),
)
def test_segmented_equals_loop_of_dense_calls(
    case: tuple[torch.Tensor, torch.Tensor, int], n_iters: int, eps: float
) -> None:
    scores, ids, num_segments = case
    plan = segmented_sinkhorn(scores, ids, num_segments, eps, n_iters)
    ref = segment_loop(scores, ids, num_segments, eps, n_iters)
    torch.testing.assert_close(plan, ref, rtol=1e-10, atol=1e-10)
    counts = torch.bincount(ids, minlength=num_segments).to(F64)
    torch.testing.assert_close(plan.sum(-1), 1.0 / counts[ids], rtol=1e-12, atol=0)


@given(case=segment_cases(), shared=st.booleans(), seed=seeds)
def test_segmented_col_marginal_equals_loop(
    case: tuple[torch.Tensor, torch.Tensor, int], shared: bool, seed: int
) -> None:
    scores, ids, num_segments = case
    m = scores.shape[1]
    b = random_marginal((m,) if shared else (num_segments, m), seed)
    plan = segmented_sinkhorn(scores, ids, num_segments, 0.1, 4, col_marginal=b)
    ref = segment_loop(scores, ids, num_segments, 0.1, 4, col_marginal=b)
    torch.testing.assert_close(plan, ref, rtol=1e-10, atol=1e-10)


def test_segmented_scaled_scores_and_float32_match_loop() -> None:
    # Large score ranges exercise the exact per-(group, column) maxima in float32 and float64.
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (300,), generator=gen)
    for dtype, scale, eps in [(F32, 1.0, 1e-3), (F64, 50.0, 1e-3), (F32, 1.0, 0.05)]:
        scores = random_scores((300, 5), seed=1, dtype=dtype, scale=scale)
        plan = segmented_sinkhorn(scores, ids, 6, eps, 3)
        assert plan.dtype == dtype
        assert bool(torch.isfinite(plan).all())
        ref = segment_loop(scores, ids, 6, eps, 3)
        torch.testing.assert_close(plan, ref, **tol(dtype))


def test_segmented_converges_to_pot_per_group() -> None:
    scores = random_scores((60, 4), seed=8)
    ids = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(9))
    plan = segmented_sinkhorn(scores, ids, 3, 0.3, 200)
    for k in range(3):
        rows = ids == k
        np.testing.assert_allclose(plan[rows].numpy(), pot_plan(scores[rows], 0.3), atol=1e-6)


def test_segmented_paper_setting_matches_plain_loop_per_class() -> None:
    gen = torch.Generator().manual_seed(10)
    ids = torch.randint(0, 19, (2000,), generator=gen)
    raw = -torch.rand((2000, 5), generator=gen, dtype=F64) * 300
    scores = raw.clone()
    for k in range(19):  # the paper normalises each class's scores by their max |S|
        rows = ids == k
        scores[rows] = raw[rows] / raw[rows].abs().max()
    plan = segmented_sinkhorn(scores.float(), ids, 19, 0.05, 3)
    for k in range(19):
        rows = ids == k
        ref = paper_plain_loop(scores[rows], 0.05).float()
        torch.testing.assert_close(plan[rows], ref, rtol=1e-4, atol=1e-7)


def test_segmented_empty_and_half_precision() -> None:
    assert segmented_sinkhorn(
        torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), 3, 0.05, 3
    ).shape == (
        0,
        5,
    )
    assert segmented_sinkhorn(
        torch.zeros(4, 0), torch.zeros(4, dtype=torch.long), 1, 0.05, 3
    ).shape == (
        4,
        0,
    )
    scores = random_scores((20, 5), seed=12)
    ids = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(0))
    half = segmented_sinkhorn(scores.half(), ids, 3, 0.05, 3)
    assert half.dtype == torch.float16
    ref = segmented_sinkhorn(scores.half().float(), ids, 3, 0.05, 3)
    torch.testing.assert_close(half.float(), ref, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(("eps", "scale"), [(0.05, 1.0), (1e-3, 1.0)])  # both round-1 branches
def test_segmented_autograd_path_equals_buffered_path(eps: float, scale: float) -> None:
    scores = random_scores((200, 5), seed=14, scale=scale)
    ids = torch.randint(0, 7, (200,), generator=torch.Generator().manual_seed(15))
    fast = segmented_sinkhorn(scores, ids, 7, eps, 3)
    with_grad = segmented_sinkhorn(scores.clone().requires_grad_(), ids, 7, eps, 3)
    assert with_grad.requires_grad
    assert with_grad.is_contiguous()
    assert fast.is_contiguous()
    torch.testing.assert_close(with_grad.detach(), fast, rtol=1e-12, atol=1e-15)


def test_segmented_does_not_modify_inputs_and_is_differentiable() -> None:
    scores = random_scores((9, 3), seed=13).requires_grad_()
    ids = torch.tensor([2, 0, 0, 2, 2, 0, 2, 0, 2])  # group 1 empty
    before = scores.detach().clone()
    ids_before = ids.clone()
    segmented_sinkhorn(scores, ids, 3, 0.3, 3)
    assert torch.equal(scores.detach(), before)
    assert torch.equal(ids, ids_before)
    torch.autograd.gradcheck(lambda s: segmented_sinkhorn(s, ids, 3, 0.3, 3), (scores,))
    # The gradients are those of the per-group problems.
    grad = torch.autograd.grad(segmented_sinkhorn(scores, ids, 3, 0.3, 3)[:, 0].sum(), scores)[0]
    ref = torch.autograd.grad(segment_loop(scores, ids, 3, 0.3, 3)[:, 0].sum(), scores)[0]
    torch.testing.assert_close(grad, ref)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------

S = random_scores((4, 3), seed=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scores": S.numpy()}, "scores must be a torch.Tensor"),
        ({"scores": torch.ones(4, 3, dtype=torch.long)}, "scores must have a floating dtype"),
        ({"scores": torch.ones(3)}, r"scores must have shape \(\.\.\., N, M\)"),
        ({"scores": torch.tensor([[0.0, float("nan")]])}, "scores must be finite"),
        ({"scores": torch.tensor([[0.0, float("inf")]])}, "scores must be finite"),
        ({"scores": torch.tensor([[3e38, 3e38]]), "epsilon": 10.0}, None),  # sum overflows: valid
        (
            {"scores": torch.tensor([[3e38, 3e38]])},
            "scores / epsilon must be finite in torch.float32",
        ),
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0"),
        ({"epsilon": -1.0}, "epsilon must be a finite number > 0; received -1.0"),
        ({"epsilon": float("inf")}, "epsilon must be a finite number > 0"),
        ({"epsilon": "0.1"}, "epsilon must be a positive real number"),
        ({"n_iters": 0}, "n_iters must be an integer >= 1; received 0"),
        ({"n_iters": 2.0}, "n_iters must be an integer >= 1"),
        ({"n_iters": True}, "n_iters must be an integer >= 1"),
        ({"row_marginal": [0.25] * 4}, "row_marginal must be a torch.Tensor"),
        ({"row_marginal": torch.ones(4, dtype=torch.long)}, "row_marginal must have a floating"),
        ({"row_marginal": torch.full((5,), 0.2)}, r"row_marginal must have shape \(N,\).*N=4"),
        ({"col_marginal": torch.full((2, 3), 1 / 3)}, "col_marginal must have shape.*broadcast"),
        ({"col_marginal": torch.tensor([0.5, float("nan"), 0.5])}, "col_marginal must be finite"),
        ({"row_marginal": torch.tensor([0.5, -0.25, 0.5, 0.25])}, "row_marginal must be nonneg"),
        ({"row_marginal": torch.zeros(4)}, "row_marginal must have a positive total"),
        ({"row_marginal": torch.full((4,), 0.5)}, "same total.*row total 2 and col total 1"),
        (
            {"row_marginal": torch.full((4,), 0.5), "col_marginal": torch.full((3,), 0.5)},
            "row_marginal and col_marginal must have the same total",
        ),
    ],
)
def test_dense_validation(kwargs: dict[str, object], match: str | None) -> None:
    args: dict[str, object] = {"scores": S, "epsilon": 0.1, "n_iters": 3}
    args.update(kwargs)
    if match is None:
        assert bool(torch.isfinite(sinkhorn(**args)).all())  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError, match=match):
        sinkhorn(**args)  # type: ignore[arg-type]


def test_dense_marginal_on_wrong_device_is_rejected() -> None:
    with pytest.raises(ValueError, match="row_marginal must be on the same device"):
        sinkhorn(S, 0.1, 3, row_marginal=torch.full((4,), 0.25, device="meta"))


IDS = torch.tensor([0, 1, 1, 0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scores": torch.ones(2, 4, 3)}, r"scores must have shape \(N, M\)"),
        ({"scores": torch.tensor([[float("nan")] * 3] * 4)}, "scores must be finite"),
        ({"scores": torch.full((4, 3), 1e38)}, "scores / epsilon must be finite.*increase epsilon"),
        ({"segment_ids": [0, 1, 1, 0]}, "segment_ids must be a torch.Tensor"),
        (
            {"segment_ids": IDS.int()},
            "segment_ids must have dtype torch.int64; received torch.int32",
        ),
        ({"segment_ids": IDS.float()}, "segment_ids must have dtype torch.int64"),
        ({"segment_ids": IDS[:3]}, r"segment_ids must have shape \(N,\) = \(4,\)"),
        ({"segment_ids": IDS[None]}, r"segment_ids must have shape \(N,\)"),
        (
            {"segment_ids": torch.tensor([0, 1, 2, 0])},
            r"segment_ids must lie in \[0, num_segments\)",
        ),
        ({"segment_ids": torch.tensor([0, -1, 1, 0])}, "received values from -1 to 1"),
        ({"num_segments": -1}, "num_segments must be an integer >= 0; received -1"),
        ({"num_segments": 2.0}, "num_segments must be an integer"),
        ({"epsilon": 0}, "epsilon must be a finite number > 0"),
        ({"n_iters": 0}, "n_iters must be an integer >= 1"),
        ({"col_marginal": torch.full((4,), 0.25)}, r"col_marginal must have shape \(M,\) = \(3,\)"),
        ({"col_marginal": torch.full((3, 3), 1 / 3)}, r"or \(G, M\) = \(2, 3\)"),
        ({"col_marginal": torch.ones(3, dtype=torch.long)}, "col_marginal must have a floating"),
        ({"col_marginal": torch.tensor([1.0, -0.5, 0.5])}, "col_marginal must be nonnegative"),
        ({"col_marginal": torch.tensor([1.0, float("inf"), 0.5])}, "col_marginal must be finite"),
        (
            {"col_marginal": torch.full((3,), 0.5)},
            "col_marginal must sum to 1.*received a total of 1.5",
        ),
    ],
)
def test_segmented_validation(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "scores": S,
        "segment_ids": IDS,
        "num_segments": 2,
        "epsilon": 0.1,
        "n_iters": 3,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        segmented_sinkhorn(**args)  # type: ignore[arg-type]


def test_uniform_defaults_have_total_one() -> None:
    plan = sinkhorn(random_scores((3, 6, 2), seed=1), 0.2, 3)
    torch.testing.assert_close(plan.sum((-1, -2)), torch.ones(3, dtype=F64))
    assert math.isclose(float(plan[0].sum()), 1.0)


def test_ties_give_the_uniform_plan() -> None:
    """Constant scores: every assignment is equally good, the plan is uniform 1/(N·M)."""
    plan = sinkhorn(torch.full((7, 3), 0.3, dtype=torch.float64), 0.05, 3)
    torch.testing.assert_close(plan, torch.full((7, 3), 1 / 21, dtype=torch.float64))
    ids = torch.tensor([0, 0, 1, 1, 1, 3])
    seg = segmented_sinkhorn(torch.zeros(6, 2, dtype=torch.float64), ids, 4, 1e-3, 3)
    sizes = torch.tensor([2.0, 2.0, 3.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(seg, (1 / (2 * sizes))[:, None].expand(6, 2))


@given(
    case=segment_cases(),
    n_iters=st.integers(1, 4),
    eps=st.sampled_from([1e-3, 0.05, 0.5]),
)
def test_segmented_validate_false_gives_the_same_plan(
    case: tuple[torch.Tensor, torch.Tensor, int], n_iters: int, eps: float
) -> None:
    """``validate=False`` only skips the value checks (small epsilons take the underflow path)."""
    scores, ids, num_segments = case
    plan = segmented_sinkhorn(scores, ids, num_segments, eps, n_iters)
    unchecked = segmented_sinkhorn(scores, ids, num_segments, eps, n_iters, validate=False)
    assert torch.equal(plan, unchecked)


def test_segmented_validate_false_skips_only_value_checks() -> None:
    scores = torch.tensor([[0.0, float("nan")]])
    with pytest.raises(ValueError, match="finite"):
        segmented_sinkhorn(scores, torch.tensor([0]), 1, 0.05, 3)
    segmented_sinkhorn(scores, torch.tensor([0]), 1, 0.05, 3, validate=False)  # not scanned
    with pytest.raises(ValueError, match="segment_ids must lie"):
        segmented_sinkhorn(torch.zeros(1, 2), torch.tensor([3]), 1, 0.05, 3)
    with pytest.raises(ValueError, match=r"dtype torch\.int64"):
        segmented_sinkhorn(torch.zeros(1, 2), torch.tensor([0.0]), 1, 0.05, 3, validate=False)  # type: ignore[arg-type]
