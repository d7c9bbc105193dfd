"""gmmseg.distributions against scipy.stats (independent reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from scipy import stats
from scipy.special import logsumexp

from gmmseg.distributions import (
    all_finite,
    gaussian_log_prob,
    log_prob_from_precision_cholesky,
    mixture_log_prob,
    precision_cholesky,
    sample_mixture,
)

COV_TYPES = ["full", "tied", "diag", "spherical"]


def random_params(
    rng: np.random.Generator, k: int, d: int, cov_type: str, scale: float, offset: float
) -> tuple[np.ndarray, np.ndarray]:
    """Means (K, D) and covariances in scikit-learn's layout, conditioning <= ~100."""
    means = offset + scale * rng.normal(size=(k, d))

    def spd() -> np.ndarray:
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        eig = scale**2 * rng.uniform(0.1, 1.0, size=d)
        return (q * eig) @ q.T

    if cov_type == "full":
        cov = np.stack([spd() for _ in range(k)])
    elif cov_type == "tied":
        cov = spd()
    elif cov_type == "diag":
        cov = scale**2 * rng.uniform(0.1, 1.0, size=(k, d))
    else:
        cov = scale**2 * rng.uniform(0.1, 1.0, size=k)
    return means, cov


def scipy_log_prob(x: np.ndarray, means: np.ndarray, cov: np.ndarray, cov_type: str) -> np.ndarray:
    k, d = means.shape
    cols = []
    for j in range(k):
        if cov_type == "full":
            c = cov[j]
        elif cov_type == "tied":
            c = cov
        elif cov_type == "diag":
            c = np.diag(cov[j])
        else:
            c = cov[j] * np.eye(d)
        cols.append(stats.multivariate_normal(mean=means[j], cov=c).logpdf(x).reshape(-1))
    return np.stack(cols, axis=1)


param_cases = st.tuples(
    st.sampled_from(COV_TYPES),
    st.integers(1, 5),  # K
    st.integers(1, 6),  # D
    st.integers(1, 40),  # N
    st.sampled_from([1e-2, 1.0, 30.0]),  # scale
    st.sampled_from([0.0, 5.0, -100.0]),  # offset (in units of scale)
    st.integers(0, 2**31 - 1),  # seed
)


@given(param_cases)
def test_log_prob_matches_scipy_float64(case: tuple[str, int, int, int, float, float, int]) -> None:
    cov_type, k, d, n, scale, offset, seed = case
    rng = np.random.default_rng(seed)
    means, cov = random_params(rng, k, d, cov_type, scale, offset * scale)
    x = means[rng.integers(0, k, size=n)] + 2 * scale * rng.normal(size=(n, d))
    ours = gaussian_log_prob(
        torch.from_numpy(x), torch.from_numpy(means), torch.from_numpy(cov), cov_type
    )
    assert ours.dtype == torch.float64
    assert ours.shape == (n, k)
    ref = scipy_log_prob(x, means, cov, cov_type)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9, atol=1e-9)


@given(param_cases)
# Small scales far from the origin (in units of the scale): the full/tied path must shift the data.
@example(("tied", 5, 6, 40, 0.01, -100.0, 4))
@example(("tied", 5, 6, 40, 0.01, -100.0, 12))
@example(("full", 5, 6, 40, 0.01, -100.0, 12))
@example(("full", 5, 6, 40, 0.01, -100.0, 22))
def test_log_prob_matches_scipy_float32(case: tuple[str, int, int, int, float, float, int]) -> None:
    cov_type, k, d, n, scale, offset, seed = case
    rng = np.random.default_rng(seed)
    means, cov = random_params(rng, k, d, cov_type, scale, offset * scale)
    x = means[rng.integers(0, k, size=n)] + 2 * scale * rng.normal(size=(n, d))
    x32, m32, c32 = (torch.from_numpy(a).float() for a in (x, means, cov))
    ours = gaussian_log_prob(x32, m32, c32, cov_type)
    assert ours.dtype == torch.float32
    # Reference on the float32-rounded inputs, so only the computation's error is measured.
    ref = scipy_log_prob(x32.double().numpy(), m32.double().numpy(), c32.double().numpy(), cov_type)
    np.testing.assert_allclose(ours.double().numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale", [0.1, 0.05])
def test_unit_norm_embeddings_small_variance_float32(scale: float) -> None:
    """The head's regime: unit-norm x and μ, σ ≈ 0.1, D = 64 (cancellation-prone)."""
    g = torch.Generator().manual_seed(0)
    d, k, n = 64, 150, 4000
    means = torch.nn.functional.normalize(
        torch.randn(k, d, generator=g, dtype=torch.float64), dim=1
    )
    idx = torch.randint(0, k, (n,), generator=g)
    x = torch.nn.functional.normalize(
        means[idx] + 0.3 * scale * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1
    )
    var = (scale * torch.exp(0.2 * torch.randn(k, d, generator=g, dtype=torch.float64))) ** 2
    ref = gaussian_log_prob(x, means, var, "diag")
    ours = gaussian_log_prob(x.float(), means.float(), var.float(), "diag")
    ref_on_rounded = gaussian_log_prob(
        x.float().double(), means.float().double(), var.float().double(), "diag"
    )
    # The best-scoring component is where accuracy matters most: check it explicitly too.
    best = ref.argmax(dim=1)
    assert torch.equal(ours.argmax(dim=1), best)
    assert (ours.double() - ref_on_rounded).abs().max().item() < 1e-3
    # Against an independent reference as well (scipy, a handful of rows).
    sl = slice(0, 50)
    scipy_ref = scipy_log_prob(
        x.float().double()[sl].numpy(),
        means.float().double().numpy(),
        var.float().double().numpy(),
        "diag",
    )
    np.testing.assert_allclose(ours[sl].double().numpy(), scipy_ref, rtol=0, atol=1e-3)


def test_far_from_origin_float32_diag_and_spherical() -> None:
    """Data at offset 1e4 with σ = 0.1: the expanded quadratic would lose everything."""
    g = torch.Generator().manual_seed(1)
    means = 1e4 + torch.randn(3, 8, generator=g, dtype=torch.float64)
    x = means[torch.tensor([0, 1, 2, 0])] + 0.1 * torch.randn(
        4, 8, generator=g, dtype=torch.float64
    )
    x = x.float().double()
    means = means.float().double()
    for cov_type, cov in (
        ("diag", torch.full((3, 8), 0.01)),
        ("spherical", torch.full((3,), 0.01)),
    ):
        ref = scipy_log_prob(x.numpy(), means.numpy(), cov.double().numpy(), cov_type)
        ours = gaussian_log_prob(x.float(), means.float(), cov, cov_type)
        # Each coordinate of x, μ carries float32 rounding of ~5e-4 at 1e4: compare with the
        # distances the inputs actually encode (reference computed on the rounded inputs).
        best = np.argmax(ref, axis=1)
        assert np.array_equal(ours.argmax(1).numpy(), best)
        rows = np.arange(4)
        np.testing.assert_allclose(ours.double().numpy()[rows, best], ref[rows, best], atol=0.1)


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_chunking_does_not_change_results(cov_type: str, chunk_size: int) -> None:
    rng = np.random.default_rng(3)
    means, cov = random_params(rng, 4, 3, cov_type, 1.0, 0.0)
    x = torch.from_numpy(rng.normal(size=(20, 3)))
    full = gaussian_log_prob(x, torch.from_numpy(means), torch.from_numpy(cov), cov_type)
    chunked = gaussian_log_prob(
        x, torch.from_numpy(means), torch.from_numpy(cov), cov_type, chunk_size=chunk_size
    )
    torch.testing.assert_close(chunked, full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_gradient_through_x_with_chunks(cov_type: str) -> None:
    rng = np.random.default_rng(4)
    means, cov = random_params(rng, 3, 2, cov_type, 1.0, 0.0)
    x = torch.from_numpy(rng.normal(size=(5, 2))).requires_grad_(True)

    def f(x_: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(
            x_, torch.from_numpy(means), torch.from_numpy(cov), cov_type, chunk_size=2
        )

    assert torch.autograd.gradcheck(f, (x,))


def test_empty_input() -> None:
    out = gaussian_log_prob(torch.zeros(0, 3), torch.zeros(2, 3), torch.ones(2, 3), "diag")
    assert out.shape == (0, 2)
    out = gaussian_log_prob(torch.zeros(0, 3), torch.zeros(2, 3), torch.eye(3), "tied")
    assert out.shape == (0, 2)


def test_autocast_computes_in_float32() -> None:
    x = torch.randn(10, 4)
    means, var = torch.randn(3, 4), torch.rand(3, 4) + 0.5
    ref = gaussian_log_prob(x, means, var, "diag")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gaussian_log_prob(x, means, var, "diag")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_half_inputs_are_upcast() -> None:
    x = torch.randn(10, 4)
    means, var = torch.randn(3, 4), torch.rand(3, 4) + 0.5
    out = gaussian_log_prob(x.bfloat16(), means.bfloat16(), var.bfloat16(), "diag")
    assert out.dtype == torch.float32


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_precision_cholesky_matches_inverse(cov_type: str) -> None:
    rng = np.random.default_rng(5)
    _, cov = random_params(rng, 3, 4, cov_type, 2.0, 0.0)
    pc = precision_cholesky(torch.from_numpy(cov), cov_type).numpy()  # type: ignore[arg-type]
    if cov_type in ("diag", "spherical"):
        np.testing.assert_allclose(pc**2 * cov, 1.0, rtol=1e-12)
    else:
        mats, pcs = (cov[None], pc[None]) if cov_type == "tied" else (cov, pc)
        for c, p in zip(mats, pcs, strict=True):
            np.testing.assert_allclose(np.triu(p), p)  # upper-triangular
            np.testing.assert_allclose(p @ p.T, np.linalg.inv(c), rtol=1e-9, atol=1e-12)


@given(
    st.sampled_from(COV_TYPES),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 30),
    st.integers(0, 2**31 - 1),
)
def test_mixture_log_prob_matches_scipy(cov_type: str, k: int, d: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    means, cov = random_params(rng, k, d, cov_type, 1.0, 0.0)
    w = rng.dirichlet(np.ones(k))
    x = rng.normal(size=(n, d)) * 2
    ours = mixture_log_prob(
        torch.from_numpy(x),
        torch.from_numpy(means),
        torch.from_numpy(cov),
        torch.from_numpy(np.log(w)),
        cov_type,  # type: ignore[arg-type]
    )
    ref = logsumexp(scipy_log_prob(x, means, cov, cov_type) + np.log(w), axis=1)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9, atol=1e-9)


def test_mixture_log_prob_zero_weight_component() -> None:
    x = torch.randn(5, 2, dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0], [100.0, 100.0]], dtype=torch.float64)
    cov = torch.ones(2, 2, dtype=torch.float64)
    lw = torch.tensor([0.0, -torch.inf], dtype=torch.float64)
    out = mixture_log_prob(x, means, cov, lw, "diag")
    ref = stats.multivariate_normal(mean=[0, 0]).logpdf(x.numpy())
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_sample_mixture_moments_and_frequencies(cov_type: str) -> None:
    rng = np.random.default_rng(6)
    k, d, n = 3, 2, 60000
    means, cov = random_params(rng, k, d, cov_type, 1.0, 0.0)
    means = means * 10  # well separated
    w = np.array([0.2, 0.3, 0.5])
    g = torch.Generator().manual_seed(0)
    x, comp = sample_mixture(
        n,
        torch.from_numpy(means),
        torch.from_numpy(cov),
        torch.from_numpy(np.log(w)),
        cov_type,  # type: ignore[arg-type]
        generator=g,
    )
    assert x.shape == (n, d) and comp.shape == (n,) and comp.dtype == torch.int64
    counts = np.bincount(comp.numpy(), minlength=k)
    assert stats.chisquare(counts, w * n).pvalue > 1e-3
    full_cov = {
        "full": lambda j: cov[j],
        "tied": lambda j: cov,
        "diag": lambda j: np.diag(cov[j]),
        "spherical": lambda j: cov[j] * np.eye(d),
    }[cov_type]
    for j in range(k):
        xs = x[comp == j].numpy()
        se = np.sqrt(np.diag(full_cov(j)) / len(xs))
        assert np.all(np.abs(xs.mean(0) - means[j]) < 5 * se)
        np.testing.assert_allclose(np.cov(xs.T), full_cov(j), atol=0.1 * np.abs(full_cov(j)).max())


def test_sample_mixture_reproducible_and_empty() -> None:
    args = (torch.zeros(2, 3), torch.ones(2, 3), torch.log(torch.tensor([0.5, 0.5])), "diag")
    a = sample_mixture(7, *args, generator=torch.Generator().manual_seed(1))  # type: ignore[arg-type]
    b = sample_mixture(7, *args, generator=torch.Generator().manual_seed(1))  # type: ignore[arg-type]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x, c = sample_mixture(0, *args)  # type: ignore[arg-type]
    assert x.shape == (0, 3) and c.shape == (0,)


# ----------------------------------------------------------------------------- errors


def test_non_pd_full_covariance_names_component() -> None:
    cov = torch.eye(2).repeat(3, 1, 1)
    cov[2] = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="component 2"):
        gaussian_log_prob(torch.zeros(1, 2), torch.zeros(3, 2), cov, "full")


def test_non_pd_tied_covariance() -> None:
    with pytest.raises(ValueError, match="tied covariance"):
        gaussian_log_prob(torch.zeros(1, 2), torch.zeros(3, 2), -torch.eye(2), "tied")


@pytest.mark.parametrize(
    ("cov_type", "cov", "match"),
    [
        ("diag", torch.tensor([[1.0, 1.0], [1.0, 0.0]]), "component 1 .* dimension 1"),
        ("spherical", torch.tensor([1.0, -1.0]), "component 1"),
    ],
)
def test_non_positive_variance_names_component(
    cov_type: str, cov: torch.Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        gaussian_log_prob(torch.zeros(1, 2), torch.zeros(2, 2), cov, cov_type)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("x", "means", "cov", "cov_type", "match"),
    [
        (torch.zeros(3), torch.zeros(2, 3), torch.ones(2, 3), "diag", "x must have shape"),
        (
            torch.zeros(4, 2),
            torch.zeros(2, 3),
            torch.ones(2, 3),
            "diag",
            r"x must have shape \(N, D\) with D=3",
        ),
        (torch.zeros(4, 3), torch.zeros(3), torch.ones(2, 3), "diag", "means must have shape"),
        (
            torch.zeros(4, 3),
            torch.zeros(2, 3),
            torch.ones(2, 2),
            "diag",
            r"must have shape \(2, 3\)",
        ),
        (torch.zeros(4, 3), torch.zeros(2, 3), torch.ones(2, 3), "full", r"\(2, 3, 3\)"),
        (torch.zeros(4, 3), torch.zeros(2, 3), torch.ones(2, 3), "bogus", "covariance_type"),
        (
            torch.full((4, 3), torch.nan),
            torch.zeros(2, 3),
            torch.ones(2, 3),
            "diag",
            "x must be finite",
        ),
        (
            torch.zeros(4, 3),
            torch.full((2, 3), torch.inf),
            torch.ones(2, 3),
            "diag",
            "means must be finite",
        ),
        (
            torch.zeros(4, 3, dtype=torch.int64),
            torch.zeros(2, 3),
            torch.ones(2, 3),
            "diag",
            "floating",
        ),
    ],
)
def test_bad_inputs_raise(
    x: torch.Tensor, means: torch.Tensor, cov: torch.Tensor, cov_type: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        gaussian_log_prob(x, means, cov, cov_type)  # type: ignore[arg-type]


def test_bad_chunk_size() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        gaussian_log_prob(
            torch.zeros(4, 3), torch.zeros(2, 3), torch.ones(2, 3), "diag", chunk_size=0
        )


def test_precision_cholesky_shape_checked() -> None:
    with pytest.raises(ValueError, match="precisions_cholesky"):
        log_prob_from_precision_cholesky(
            torch.zeros(4, 3), torch.zeros(2, 3), torch.ones(3, 3), "diag"
        )


def test_unnormalised_log_weights_rejected() -> None:
    with pytest.raises(ValueError, match="log_weights must be normalised"):
        mixture_log_prob(
            torch.zeros(1, 2), torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(2), "diag"
        )
    with pytest.raises(ValueError, match="log_weights must have shape"):
        mixture_log_prob(
            torch.zeros(1, 2), torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(3), "diag"
        )
    with pytest.raises(ValueError, match="NaN"):
        mixture_log_prob(
            torch.zeros(1, 2),
            torch.zeros(2, 2),
            torch.ones(2, 2),
            torch.tensor([0.0, torch.nan]),
            "diag",
        )


def test_sample_mixture_bad_n() -> None:
    with pytest.raises(ValueError, match="n must be"):
        sample_mixture(-1, torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1), "diag")


def test_check_finite_flag() -> None:
    x = torch.tensor([[float("nan"), 0.0]])
    args = (torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="x must be finite"):
        log_prob_from_precision_cholesky(x, *args, "diag")
    # Callers that validated x already may skip the scan; NaN then propagates, as documented.
    out = log_prob_from_precision_cholesky(x, *args, "diag", check_finite=False)
    assert torch.isnan(out).all()


def test_non_symmetric_covariance_rejected() -> None:
    cov = torch.tensor([[[2.0, 5.0], [0.3, 1.0]]])
    with pytest.raises(ValueError, match=r"symmetric: component 0 has max \|Σ − Σᵀ\| = 4.7"):
        gaussian_log_prob(torch.zeros(1, 2), torch.zeros(1, 2), cov, "full")


def test_precision_cholesky_checks_shape_per_type() -> None:
    with pytest.raises(ValueError, match=r"'full' must have shape \(K, D, D\)"):
        precision_cholesky(torch.eye(2), "full")
    with pytest.raises(ValueError, match=r"'tied' must have shape \(D, D\)"):
        precision_cholesky(torch.eye(2)[None], "tied")


def test_non_pd_message_gives_smallest_eigenvalue() -> None:
    cov = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="smallest eigenvalue -1"):
        precision_cholesky(cov, "tied")


@given(
    values=st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True)
        | st.sampled_from([3.0e38, -3.0e38, 0.0]),
        min_size=0,
        max_size=40,
    ),
)
@example(values=[3.0e38, 3.0e38])  # finite entries whose float32 sum overflows
@example(values=[float("inf"), float("-inf")])  # infinities that do not cancel to a finite sum
def test_all_finite_equals_the_elementwise_test(values: list[float]) -> None:
    t = torch.tensor(values, dtype=torch.float32)
    assert all_finite(t) == bool(np.isfinite(np.asarray(values, dtype=np.float32)).all())
    assert all_finite(t.reshape(-1, 1).expand(-1, 3)) == all_finite(t)
