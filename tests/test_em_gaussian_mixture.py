"""Tests for gmmseg.em.gaussian_mixture against scikit-learn's GaussianMixture."""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from scipy.optimize import linear_sum_assignment
from sklearn.datasets import load_iris, load_wine, make_blobs
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import gmmseg.em._steps as steps_module
from gmmseg.em._kmeans import draw_distinct_rows, kmeans_plusplus
from gmmseg.em.gaussian_mixture import (
    ConvergenceWarning,
    GaussianMixture,
    GroupedGaussianMixture,
    NotFittedError,
)

COV_TYPES = ["full", "tied", "diag", "spherical"]
ATTRS = ["weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"]


# -- data and helpers -----------------------------------------------------------------------


def _iris() -> np.ndarray:
    return load_iris().data


def _wine() -> np.ndarray:
    x = load_wine().data
    return (x - x.mean(0)) / x.std(0)


def _blobs() -> np.ndarray:
    x, _ = make_blobs(n_samples=500, centers=4, n_features=3, cluster_std=1.5, random_state=3)
    return x


DATASETS = {"iris": _iris, "wine": _wine, "blobs": _blobs}


def _inits(x: np.ndarray, k: int, ct: str, seed: int = 0) -> dict[str, Any]:
    """Identical initial values for both implementations."""
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    cov = np.cov(x.T).reshape(d, d) + 1e-3 * np.eye(d)
    prec = np.linalg.inv(cov)
    precisions = {
        "full": np.stack([prec] * k),
        "tied": prec,
        "diag": np.tile(1.0 / np.diag(cov), (k, 1)),
        "spherical": np.full(k, 1.0 / np.diag(cov).mean()),
    }[ct]
    return {
        "means_init": x[rng.choice(len(x), k, replace=False)],
        "weights_init": np.full(k, 1.0 / k),
        "precisions_init": precisions,
    }


def _fit_both(x: np.ndarray, k: int, **kw: Any) -> tuple[SkGaussianMixture, GaussianMixture]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(k, **kw).fit(x)
        ours = GaussianMixture(k, **kw).fit(x)
    return sk, ours


def _assert_params_equal(ours: GaussianMixture, sk: SkGaussianMixture, rtol: float = 1e-6) -> None:
    for name in ATTRS:
        ref = np.asarray(getattr(sk, name))
        got = getattr(ours, name)
        assert isinstance(got, np.ndarray), name  # numpy in, numpy out, as scikit-learn
        assert got.dtype == ref.dtype, name
        np.testing.assert_allclose(
            got, ref, rtol=rtol, atol=rtol * 1e-3 * np.abs(ref).max(), err_msg=name
        )
    assert math.isclose(ours.lower_bound_, sk.lower_bound_, rel_tol=rtol)
    assert ours.n_iter_ == sk.n_iter_
    assert ours.converged_ == sk.converged_


class _SklearnResp(GaussianMixture):
    """Draws the initial responsibilities exactly as scikit-learn does for an integer seed.

    Overrides the private ``_initial_resp`` hook: this checks the initial M-step from
    responsibilities and the ``n_init`` selection.
    """

    def __init__(self, *args: Any, sk_seed: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._rs = np.random.RandomState(sk_seed)

    def _initial_resp(
        self, x: torch.Tensor, w: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        n, k = x.shape[0], self.n_components
        if self.init_params == "random":
            resp = self._rs.uniform(size=(n, k))
            resp /= resp.sum(axis=1, keepdims=True)
        else:
            resp = np.zeros((n, k))
            resp[self._rs.choice(n, size=k, replace=False), np.arange(k)] = 1.0
        return torch.as_tensor(resp, dtype=x.dtype, device=x.device)


# -- parity with scikit-learn ---------------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("ct", COV_TYPES)
@pytest.mark.parametrize("max_iter", [100, 2])
def test_fit_matches_sklearn_with_identical_init(dataset: str, ct: str, max_iter: int) -> None:
    x = DATASETS[dataset]()
    sk, ours = _fit_both(x, 3, covariance_type=ct, max_iter=max_iter, **_inits(x, 3, ct))
    assert sk.converged_ == (max_iter == 100)
    _assert_params_equal(ours, sk)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-6)


@pytest.mark.parametrize(
    ("ct", "init"),
    [(ct, "random") for ct in COV_TYPES]
    + [(ct, "random_from_data") for ct in ["full", "diag", "spherical"]],
)
def test_initial_m_step_from_resp_and_n_init_match_sklearn(ct: str, init: str) -> None:
    x = _blobs()
    kw: dict[str, Any] = {"covariance_type": ct, "init_params": init, "n_init": 3, "tol": 1e-4}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        sk = SkGaussianMixture(4, random_state=5, **kw).fit(x)
    ours = _SklearnResp(4, sk_seed=5, **kw).fit(x)
    # Two of the n_init runs may reach the same optimum with the components in another order;
    # which of them "wins" then hangs on the last bit of the lower bound (scikit-learn keeps a
    # later run only if its bound is strictly greater). Such a tie is accepted only as a
    # relabelling of the same fit with the same bound; any other difference fails below.
    order = linear_sum_assignment(
        np.linalg.norm(sk.means_[:, None, :] - ours.means_[None, :, :], axis=2)
    )[1]
    if not np.array_equal(order, np.arange(4)):
        assert math.isclose(ours.lower_bound_, sk.lower_bound_, rel_tol=1e-12)
        for name in ATTRS:
            got = getattr(ours, name)
            if ct != "tied" or name in ("weights_", "means_"):  # tied shares one covariance
                got = got[order]
            np.testing.assert_allclose(got, np.asarray(getattr(sk, name)), rtol=1e-5)
        return
    _assert_params_equal(ours, sk, rtol=1e-5)


def test_tied_initial_covariance_is_centred_for_one_row_per_component() -> None:
    """Documented deviation: scikit-learn's (XᵀX − Σ n_k μμᵀ)/Σ n_k also counts rows with no
    responsibility (about the origin) when each component starts from one row."""
    x = _blobs()
    for init in ["random_from_data", "k-means++"]:
        gm = GaussianMixture(4, covariance_type="tied", init_params=init, max_iter=0)
        gm.fit(x)
        np.testing.assert_allclose(gm.covariances_, 1e-6 * np.eye(3), rtol=1e-7, atol=1e-7)


def test_partial_inits_override_resp_estimates_like_sklearn() -> None:
    x = _iris()
    inits = _inits(x, 3, "diag")
    kw: dict[str, Any] = {"covariance_type": "diag", "init_params": "random"}
    sk = SkGaussianMixture(3, random_state=1, means_init=inits["means_init"], **kw).fit(x)
    ours = _SklearnResp(3, sk_seed=1, means_init=inits["means_init"], **kw).fit(x)
    _assert_params_equal(ours, sk)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_scoring_methods_match_sklearn(ct: str) -> None:
    x = _wine()
    sk, ours = _fit_both(x, 3, covariance_type=ct, **_inits(x, 3, ct, seed=2))
    x_new = x[::3] + 0.1
    np.testing.assert_array_equal(ours.predict(x_new), sk.predict(x_new))
    np.testing.assert_allclose(ours.predict_proba(x_new), sk.predict_proba(x_new), atol=1e-9)
    np.testing.assert_allclose(ours.score_samples(x_new), sk.score_samples(x_new), rtol=1e-9)
    # tensors in, tensors out: the same values
    t_new = torch.as_tensor(x_new)
    assert torch.equal(ours.predict(t_new), torch.as_tensor(ours.predict(x_new)))
    torch.testing.assert_close(ours.score_samples(t_new), torch.as_tensor(sk.score_samples(x_new)))
    assert math.isclose(ours.score(x_new), sk.score(x_new), rel_tol=1e-9)
    assert math.isclose(ours.bic(x_new), sk.bic(x_new), rel_tol=1e-9)
    assert math.isclose(ours.aic(x_new), sk.aic(x_new), rel_tol=1e-9)


def test_warm_start_matches_sklearn() -> None:
    x = _blobs()
    kw: dict[str, Any] = {"covariance_type": "full", "max_iter": 2, "warm_start": True}
    kw |= _inits(x, 4, "full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkGaussianMixture(4, **kw)
        ours = GaussianMixture(4, **kw)
        for _ in range(3):
            sk.fit(x)
            ours.fit(x)
            _assert_params_equal(ours, sk)


@pytest.mark.parametrize("init", ["kmeans", "k-means++", "random", "random_from_data"])
@pytest.mark.parametrize("max_iter", [1, 100])
def test_fit_predict_equals_predict(init: str, max_iter: int) -> None:
    x = _blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(4, init_params=init, max_iter=max_iter, random_state=0)
        labels = gm.fit_predict(x)
    np.testing.assert_array_equal(labels, gm.predict(x))


def test_convergence_warning_and_max_iter_zero() -> None:
    x = _iris()
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        GaussianMixture(3, max_iter=1, random_state=0).fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gm = GaussianMixture(3, max_iter=0, random_state=0).fit(x)
    assert gm.n_iter_ == 0
    assert gm.lower_bound_ == -math.inf
    assert gm.converged_ is False
    assert gm.covariances_.shape == (3, 4, 4)


def test_all_inits_with_max_iter_zero_gives_the_inits_back() -> None:
    x = _iris()
    inits = _inits(x, 3, "full")
    gm = GaussianMixture(3, max_iter=0, **inits).fit(x)
    np.testing.assert_allclose(gm.means_, inits["means_init"], rtol=1e-12)
    np.testing.assert_allclose(gm.precisions_, inits["precisions_init"], rtol=1e-10)
    np.testing.assert_allclose(gm.covariances_, np.linalg.inv(inits["precisions_init"]), rtol=1e-9)


# -- kmeans initialisation ------------------------------------------------------------------


def test_kmeans_init_recovers_separated_blobs_and_is_deterministic() -> None:
    x, y = make_blobs(n_samples=600, centers=5, n_features=4, cluster_std=0.5, random_state=7)
    a = GaussianMixture(5, init_params="kmeans", max_iter=0, random_state=3).fit(x)
    b = GaussianMixture(5, init_params="kmeans", max_iter=0, random_state=3).fit(x)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert adjusted_rand_score(y, a.predict(x)) == pytest.approx(1.0)


def test_kmeans_plusplus_and_distinct_draws_pick_positive_weight_rows() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, generator=g, dtype=torch.float64)
    w = (torch.rand(300, generator=g) > 0.2).double()
    for rows in (draw_distinct_rows(w, 5, g), kmeans_plusplus(x, w, 5, g)):
        assert rows.shape == (5,)
        assert bool((w[rows] > 0).all())
    rows = draw_distinct_rows(w, 5, g)
    assert len(set(rows.tolist())) == 5


# -- grouped fits ---------------------------------------------------------------------------


def _grouped_data() -> tuple[np.ndarray, np.ndarray, int]:
    parts, ids = [], []
    for g, (n, std) in enumerate([(300, 1.0), (500, 2.0), (700, 0.5), (260, 3.0)]):
        x, _ = make_blobs(n_samples=n, centers=3, n_features=4, cluster_std=std, random_state=g)
        parts.append(x + 20 * g)
        ids.append(np.full(n, g))
    x, gid = np.concatenate(parts), np.concatenate(ids)
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm], gid[perm], 4


def _per_group_inits(x: np.ndarray, gid: np.ndarray, ngroups: int, ct: str) -> dict[str, Any]:
    per = [_inits(x[gid == g], 3, ct, seed=g) for g in range(ngroups)]
    return {name: np.stack([p[name] for p in per]) for name in per[0]}


@pytest.mark.parametrize("ct", COV_TYPES)
def test_fit_grouped_equals_separate_fits(ct: str) -> None:
    x, gid, ngroups = _grouped_data()
    inits = _per_group_inits(x, gid, ngroups, ct)
    max_iter = {"full": 25, "tied": 20, "diag": 15, "spherical": 12}[ct]
    kw: dict[str, Any] = {"covariance_type": ct, "tol": 1e-4, "max_iter": max_iter}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = GaussianMixture(3, **kw, **inits).fit_grouped(x, gid, ngroups)
        singles = [
            GaussianMixture(3, **kw, **{k: v[g] for k, v in inits.items()}).fit(x[gid == g])
            for g in range(ngroups)
        ]
    assert isinstance(res, GroupedGaussianMixture)
    assert res.num_groups == ngroups and res.n_components == 3 and res.n_features_in_ == 4
    for g, single in enumerate(singles):
        for name in ATTRS:
            torch.testing.assert_close(
                getattr(res, name)[g], torch.as_tensor(getattr(single, name)), rtol=1e-9, atol=1e-9
            )
        assert float(res.lower_bound_[g]) == pytest.approx(single.lower_bound_, rel=1e-12)
        assert int(res.n_iter_[g]) == single.n_iter_
        assert bool(res.converged_[g]) == single.converged_
    assert len(set(res.n_iter_.tolist())) > 1, "groups should stop at different iterations"
    assert not bool(res.converged_.all()), "some group should hit max_iter"
    assert bool(res.converged_.any()), "some group should converge"


def test_fit_grouped_shared_inits_small_chunks_and_scoring() -> None:
    x, gid, ngroups = _grouped_data()
    inits = _inits(x[gid == 0], 3, "full")
    gm = GaussianMixture(3, covariance_type="full", tol=1e-5, chunk_size=37, **inits)
    res = gm.fit_grouped(torch.as_tensor(x), torch.as_tensor(gid), ngroups)
    scores = res.score_samples(x[:50])
    assert scores.shape == (50, ngroups)
    for g in range(ngroups):
        single = GaussianMixture(3, covariance_type="full", tol=1e-5, **inits).fit(x[gid == g])
        torch.testing.assert_close(
            res.means_[g], torch.as_tensor(single.means_), rtol=1e-9, atol=1e-9
        )
        torch.testing.assert_close(
            scores[:, g], res.mixture(g).score_samples(torch.as_tensor(x[:50]))
        )
        np.testing.assert_array_equal(res.mixture(g).predict(x), single.predict(x))


@pytest.mark.parametrize("ct", ["tied", "spherical"])
def test_grouped_score_samples_other_types(ct: str) -> None:
    x, gid, ngroups = _grouped_data()
    res = GaussianMixture(2, covariance_type=ct, random_state=0).fit_grouped(x, gid, ngroups)
    scores = res.score_samples(x[:20])
    for g in range(ngroups):
        torch.testing.assert_close(
            scores[:, g], res.mixture(g).score_samples(torch.as_tensor(x[:20]))
        )


def test_fit_grouped_random_inits_and_warning_lists_groups() -> None:
    x, gid, ngroups = _grouped_data()
    for init in ["kmeans", "k-means++", "random", "random_from_data"]:
        gm = GaussianMixture(3, covariance_type="diag", init_params=init, random_state=1)
        a = gm.fit_grouped(x, gid, ngroups)
        b = gm.fit_grouped(x, gid, ngroups)
        assert torch.equal(a.means_, b.means_), init
        assert bool(torch.isfinite(a.lower_bound_).all())
    with pytest.warns(ConvergenceWarning, match=r"group\(s\) \[0, 1, 2, 3\]"):
        GaussianMixture(3, max_iter=1, random_state=0).fit_grouped(x, gid, ngroups)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("diagonal", [False, True])
def test_centred_scatter_matches_plain_loop(sparse: bool, diagonal: bool) -> None:
    g = torch.Generator().manual_seed(3)
    n, d, k = 120, 3, 4
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    resp = torch.rand(n, k, generator=g, dtype=torch.float64)
    if sparse:
        resp[torch.rand(n, generator=g) > 0.1] = 0.0
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    only = [j for j in range(k) if bool(torch.rand((), generator=g) > 0.3)]
    if diagonal:
        got = steps_module._centred_variances(x, resp, means, only)
    else:
        got = steps_module._centred_scatter(x, resp, means)[only]
    for i, j in enumerate(only):
        diff = x - means[j]
        full = (resp[:, j, None] * diff).T @ diff
        torch.testing.assert_close(got[i], torch.diagonal(full) if diagonal else full)


# -- sampling -------------------------------------------------------------------------------


@pytest.mark.parametrize("ct", COV_TYPES)
def test_sample_shapes_counts_and_reproducibility(ct: str) -> None:
    x = torch.as_tensor(_blobs())  # fitted on a tensor: samples are tensors
    gm = GaussianMixture(4, covariance_type=ct, random_state=0).fit(x)
    xs, ys = gm.sample(20000)
    assert isinstance(xs, torch.Tensor) and isinstance(ys, torch.Tensor)
    assert isinstance(gm.means_, torch.Tensor) and isinstance(gm.covariances_, torch.Tensor)
    assert xs.shape == (20000, 3) and ys.shape == (20000,)
    assert xs.dtype == torch.float64 and ys.dtype == torch.int64
    assert bool((ys[1:] >= ys[:-1]).all()), "sorted by component, as scikit-learn"
    counts = torch.bincount(ys, minlength=4).numpy()
    expected = gm.weights_.numpy() * 20000
    assert stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue > 1e-3
    for k in range(4):
        sel = xs[ys == k]
        se = float(gm.covariances_.max().sqrt()) / math.sqrt(len(sel))
        assert torch.allclose(sel.mean(0), gm.means_[k], atol=6 * se + 1e-9)
    again = gm.sample(20000)
    assert torch.equal(again[0], xs) and torch.equal(again[1], ys)
    gen = GaussianMixture(4, covariance_type=ct, random_state=torch.Generator().manual_seed(0))
    gen.fit(x)
    assert not torch.equal(gen.sample(10)[0], gen.sample(10)[0])
    numpy_fit = GaussianMixture(4, covariance_type=ct, random_state=0).fit(x.numpy())
    xs_np, ys_np = numpy_fit.sample(20000)  # fitted on numpy: the same samples, as numpy
    np.testing.assert_array_equal(ys_np, ys.numpy())
    np.testing.assert_allclose(xs_np, xs.numpy(), rtol=1e-12, atol=1e-12)


# -- sample weights -------------------------------------------------------------------------


@pytest.mark.parametrize("ct", COV_TYPES)
def test_integer_sample_weights_equal_repeated_rows(ct: str) -> None:
    x = _iris()
    reps = np.random.default_rng(0).integers(0, 4, len(x))
    inits = _inits(x, 3, ct)
    weighted = GaussianMixture(3, covariance_type=ct, **inits).fit(x, sample_weight=reps)
    repeated = GaussianMixture(3, covariance_type=ct, **inits).fit(np.repeat(x, reps, axis=0))
    for name in ATTRS:
        torch.testing.assert_close(getattr(weighted, name), getattr(repeated, name))
    assert weighted.lower_bound_ == pytest.approx(repeated.lower_bound_, rel=1e-12)
    assert weighted.n_iter_ == repeated.n_iter_


def test_sample_weight_random_init_and_fractional_weights() -> None:
    x = _blobs()
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(x))
    for init in ["kmeans", "random_from_data", "random"]:
        gm = GaussianMixture(4, init_params=init, random_state=0).fit(x, sample_weight=w)
        assert float(gm.weights_.sum()) == pytest.approx(1.0)
        lb = (w * gm.score_samples(x)).sum() / w.sum()
        assert gm.lower_bound_ == pytest.approx(lb, abs=1e-3)


# -- numerics -------------------------------------------------------------------------------


@pytest.mark.parametrize("ct", COV_TYPES)
def test_float32_tight_cluster_far_from_origin(ct: str) -> None:
    """One-pass E[x²] − μ² would give garbage here in float32 (scikit-learn fails to fit)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (500, 3)), rng.normal(5, math.sqrt(0.1), (100, 3))])
    x += 1e4
    precisions = {
        "full": np.stack([np.eye(3)] * 2),
        "tied": np.eye(3),
        "diag": np.ones((2, 3)),
        "spherical": np.ones(2),
    }[ct]
    kw: dict[str, Any] = {
        "covariance_type": ct,
        "means_init": np.array([[1e4] * 3, [1e4 + 5] * 3]),
        "weights_init": [0.5, 0.5],
        "precisions_init": precisions,
    }
    f32 = GaussianMixture(2, dtype=torch.float32, **kw).fit(torch.as_tensor(x, dtype=torch.float32))
    f64 = GaussianMixture(2, **kw).fit(x)
    assert f32.covariances_.dtype == torch.float32
    torch.testing.assert_close(
        f32.covariances_.double(), torch.as_tensor(f64.covariances_), rtol=2e-3, atol=1e-4
    )
    if ct in ("diag", "spherical"):
        assert float(f32.covariances_[1].mean()) == pytest.approx(0.1, rel=0.15)


def test_float32_fit_grouped_with_tight_components_matches_float64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fit_grouped's exact variance fallback, taken only for the pairs that need it."""
    rng = np.random.default_rng(1)
    groups = []
    for g in range(3):
        wide = rng.normal(0, 1, (400, 3))
        tight = rng.normal(6 + g, 0.1, (80 + 20 * g, 3))  # far from the mean: E[x²] ≫ σ²
        groups.append(np.concatenate([wide, tight]) + 1e4)
    x = np.concatenate(groups)
    gid = np.concatenate([np.full(len(a), g) for g, a in enumerate(groups)])
    kw: dict[str, Any] = {
        "covariance_type": "diag",
        "means_init": np.stack([[[1e4] * 3, [1e4 + 6 + g] * 3] for g in range(3)]),
        "weights_init": np.full((3, 2), 0.5),
        "precisions_init": np.ones((3, 2, 3)),
    }
    calls: list[int] = []
    exact = steps_module._centred_variances

    def spy(
        x: torch.Tensor, rw: torch.Tensor, means: torch.Tensor, only: list[int]
    ) -> torch.Tensor:
        calls.append(len(only))
        return exact(x, rw, means, only)

    monkeypatch.setattr(steps_module, "_centred_variances", spy)
    x32 = torch.as_tensor(x, dtype=torch.float32)
    f32 = GaussianMixture(2, dtype=torch.float32, **kw).fit_grouped(x32, torch.as_tensor(gid), 3)
    assert calls and max(calls) < 6, "the fallback ran, for some (group, component) pairs only"
    for g in range(3):
        one = {k: v[g] for k, v in kw.items() if k != "covariance_type"}
        f64 = GaussianMixture(2, covariance_type="diag", **one).fit(x[gid == g])
        torch.testing.assert_close(
            f32.covariances_[g].double(), torch.as_tensor(f64.covariances_), rtol=2e-3, atol=1e-4
        )
        torch.testing.assert_close(
            f32.means_[g].double(), torch.as_tensor(f64.means_), rtol=1e-6, atol=1e-3
        )


def test_float32_singleton_component_far_from_the_rest() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, (500, 3)), rng.normal(300, math.sqrt(0.1), (50, 3))])
    x += 1000.0
    kw: dict[str, Any] = {
        "covariance_type": "diag",
        "means_init": np.array([[1000.0] * 3, [1300.0] * 3]),
        "weights_init": [0.5, 0.5],
        "precisions_init": np.ones((2, 3)),
    }
    f32 = GaussianMixture(2, dtype=torch.float32, **kw).fit(x)
    f64 = GaussianMixture(2, **kw).fit(x)
    assert f32.covariances_.dtype == np.float32  # numpy in, numpy out in the fit's dtype
    np.testing.assert_allclose(f32.covariances_, f64.covariances_, rtol=1e-3, atol=0)
    # Initial M-step from one row per component: each variance is reg_covar (1e-6), whereas
    # one-pass E[x²] − μ² rounds to about eps·x² ≈ 1e-3 here (or goes negative).
    singleton = GaussianMixture(
        2, covariance_type="diag", dtype=torch.float32, init_params="random_from_data", max_iter=0
    ).fit(x)
    assert bool(((singleton.covariances_ > 0.5e-6) & (singleton.covariances_ < 2e-6)).all())


def test_duplicate_points_get_reg_covar() -> None:
    x = np.tile([[3.0, -1.0]], (10, 1)) + 1e6
    for ct, expected in [("diag", np.full((1, 2), 1e-3)), ("spherical", np.full(1, 1e-3))]:
        gm = GaussianMixture(1, covariance_type=ct, reg_covar=1e-3).fit(x)
        np.testing.assert_allclose(gm.covariances_, expected, rtol=1e-9)
    gm = GaussianMixture(1, covariance_type="full", reg_covar=1e-3).fit(x)
    np.testing.assert_allclose(gm.covariances_[0], 1e-3 * np.eye(2), rtol=1e-9)


@given(
    n=st.integers(1, 25),
    d=st.integers(1, 4),
    k=st.integers(1, 3),
    ct=st.sampled_from(COV_TYPES),
    seed=st.integers(0, 2**16),
    duplicates=st.booleans(),
)
def test_property_shapes_and_invariants(
    n: int, d: int, k: int, ct: str, seed: int, duplicates: bool
) -> None:
    k = min(k, n)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10)
    if duplicates:
        x[: max(1, n // 2)] = x[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(k, covariance_type=ct, reg_covar=1e-4, random_state=seed)
        labels = gm.fit_predict(x)
    shapes = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}
    assert gm.weights_.shape == (k,) and gm.means_.shape == (k, d)
    assert gm.covariances_.shape == shapes[ct] == gm.precisions_cholesky_.shape
    assert float(gm.weights_.sum()) == pytest.approx(1.0)
    np.testing.assert_array_equal(labels, gm.predict(x))
    proba = gm.predict_proba(x)
    np.testing.assert_allclose(proba.sum(1), np.ones(n), rtol=1e-12)
    assert bool(np.isfinite(gm.score_samples(x)).all())
    if n >= 2:  # scikit-learn needs two samples; one EM step from identical initial values
        inits = _inits(x, k, ct, seed=seed)
        sk, ours = _fit_both(x, k, covariance_type=ct, reg_covar=1e-4, max_iter=1, **inits)
        _assert_params_equal(ours, sk, rtol=1e-6)


# -- dtypes, devices, fitted-state -----------------------------------------------------------


def test_dtype_and_device_defaults() -> None:
    x = _blobs()
    assert GaussianMixture(2).fit(x).means_.dtype == np.float64
    # numpy in, numpy out in the input's floating dtype (integers -> float64), as scikit-learn
    assert GaussianMixture(2).fit(x.astype(np.float32)).means_.dtype == np.float32
    assert GaussianMixture(2).fit(x.astype(np.int64)).means_.dtype == np.float64
    assert GaussianMixture(2).fit(x.astype(object)).means_.dtype == np.float64
    gm = GaussianMixture(2).fit(torch.as_tensor(x, dtype=torch.float32))
    assert gm.means_.dtype == torch.float32 and gm.means_.device.type == "cpu"
    assert gm.predict(x).dtype == np.int64
    assert gm.predict(torch.as_tensor(x)).dtype == torch.int64
    assert gm.predict_proba(x).dtype == np.float32
    assert isinstance(gm.lower_bound_, float) and isinstance(gm.n_iter_, int)
    assert GaussianMixture(2, dtype=torch.float32).fit(x).means_.dtype == np.float32
    assert GaussianMixture(2).fit(torch.as_tensor(x).half()).means_.dtype == torch.float32
    assert "n_components=2" in repr(GaussianMixture(2, covariance_type="diag"))


def test_not_fitted_error() -> None:
    gm = GaussianMixture(2)
    for call in (gm.predict, gm.predict_proba, gm.score_samples, gm.score, gm.bic, gm.aic):
        with pytest.raises(NotFittedError, match="not fitted"):
            call(np.zeros((3, 2)))
    with pytest.raises(NotFittedError):
        gm.sample(3)
    err = NotFittedError("x")
    assert isinstance(err, ValueError) and isinstance(err, AttributeError)


# -- validation errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": 2.5}, "n_components"),
        ({"covariance_type": "banana"}, "covariance_type"),
        ({"tol": -1.0}, "tol"),
        ({"reg_covar": -1e-6}, "reg_covar"),
        ({"max_iter": -1}, "max_iter"),
        ({"n_init": 0}, "n_init"),
        ({"init_params": "kmeans--"}, "init_params"),
        ({"random_state": "seed"}, "random_state"),
        ({"warm_start": 1}, "warm_start"),
        ({"dtype": torch.int64}, "dtype"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"device": "not-a-device"}, "device"),
    ],
)
def test_bad_hyperparameters(kwargs: dict[str, Any], match: str) -> None:
    k = kwargs.pop("n_components", 2)
    gm = GaussianMixture(k, **kwargs)  # stored as given (scikit-learn's convention) ...
    with pytest.raises(ValueError, match=f"The '{match}' parameter of GaussianMixture must be"):
        gm.fit(_iris())  # ... and checked by fit


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights_init": [0.5, 0.6]}, r"should be normalized, .*sum to 1 .*w / w.sum\(\)"),
        ({"weights_init": [1.5, -0.5]}, r"weights_init lies in \[-0.5, 1.5\]"),
        ({"weights_init": [1.0]}, r"'weights' should have the shape of \(2,\), .*weights_init"),
        ({"means_init": np.zeros((2, 3))}, r"'means' should have the shape of \(2, 4\)"),
        ({"means_init": np.full((2, 4), np.nan)}, "Input means_init contains NaN"),
        ({"precisions_init": np.ones((2, 4, 4))}, "positive-definite .*eigenvalue <= 0"),
        ({"precisions_init": np.triu(np.ones((2, 4, 4)))}, "precisions_init is not symmetric"),
        ({"precisions_init": np.ones((2, 3, 3))}, r"'full precision' should have the shape"),
        (
            {"covariance_type": "diag", "precisions_init": -np.ones((2, 4))},
            "'diag precision' should be positive .*precisions_init",
        ),
    ],
)
def test_bad_initial_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GaussianMixture(2, **kwargs).fit(_iris())


def test_bad_data() -> None:
    x = _iris()
    gm = GaussianMixture(2)
    with pytest.raises(ValueError, match=r"Expected 2D array, got 1D array.*X must have shape"):
        gm.fit(x[:, 0])
    with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
        gm.fit(np.where(x > 7, np.inf, x))
    with pytest.raises(ValueError, match="X must hold numbers"):
        gm.fit(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match="Expected n_samples >= n_components"):
        gm.fit(x[:1])
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(N,\)"):
        gm.fit(x, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        gm.fit(x, sample_weight=-np.ones(len(x)))
    with pytest.raises(ValueError, match="sample_weight must have at least n_components"):
        gm.fit(x, sample_weight=np.r_[1.0, np.zeros(len(x) - 1)])
    gm.fit(x)
    with pytest.raises(ValueError, match="X has 3 features, but GaussianMixture is expecting 4"):
        gm.predict(x[:, :3])
    with pytest.raises(ValueError, match="Invalid value for 'n_samples'"):
        gm.sample(0)


def test_ill_defined_covariance_names_component_and_reg_covar() -> None:
    same = np.full((6, 2), 3.0)
    for ct in COV_TYPES:
        with pytest.raises(ValueError, match=r"increase reg_covar.*(component 0|tied covariance)"):
            GaussianMixture(1, covariance_type=ct, reg_covar=0.0).fit(same)
    spread = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ValueError, match=r"reg_covar.*component 0 of group 1"):
        GaussianMixture(1, reg_covar=0.0).fit_grouped(
            np.r_[spread, same], np.r_[np.zeros(10, dtype=int), np.ones(6, dtype=int)], 2
        )


def test_bad_grouped_inputs() -> None:
    x, gid, ngroups = _grouped_data()
    gm = GaussianMixture(3)
    with pytest.raises(ValueError, match="num_groups"):
        gm.fit_grouped(x, gid, 0)
    with pytest.raises(ValueError, match="group_ids must be an integer array"):
        gm.fit_grouped(x, gid.astype(float), ngroups)
    with pytest.raises(ValueError, match=r"group_ids must lie in \[0, num_groups\)"):
        gm.fit_grouped(x, gid, ngroups - 1)
    few = gid.copy()
    few[np.flatnonzero(gid == 2)[2:]] = 1
    with pytest.raises(ValueError, match="group 2 has 2 samples, fewer than n_components=3"):
        gm.fit_grouped(x, few, ngroups)
    with pytest.raises(ValueError, match="group 4 has 0 samples"):
        gm.fit_grouped(x, gid, ngroups + 1)
    with pytest.raises(ValueError, match=r"shape of \(3, 4\) or \(4, 3, 4\), .*means_init"):
        GaussianMixture(3, means_init=np.zeros((2, 3, 4))).fit_grouped(x, gid, ngroups)
    res = gm.fit_grouped(x, gid, ngroups)
    with pytest.raises(ValueError, match="group must be an int"):
        res.mixture(ngroups)


def test_large_diag_fit_matches_sklearn() -> None:
    """A fit on 70 000 × 64 rows equals scikit-learn's up to rounding: the expanded quadratic
    amplifies the GEMM's summation order (threads, alignment), which changes the lower bound by
    ~1e-10 relative between runs.

    All three initial values are given: without ``precisions_init`` both libraries take the
    initial covariances from a k-means run seeded by numpy's global state, whose cluster order
    then decides which component ends where (the test failed when other tests had drawn from it).
    """
    rng = np.random.default_rng(4)
    n, d, k = 70_000, 64, 3
    x = rng.normal(size=(n, d)) + rng.integers(0, 3, n)[:, None] * 2.0
    kw: dict[str, Any] = {
        "covariance_type": "diag",
        "max_iter": 3,
        "tol": 0.0,
        "means_init": x[:k],
        "weights_init": np.full(k, 1 / k),
        "precisions_init": np.ones((k, d)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = GaussianMixture(k, **kw).fit(x)
        ref = SkGaussianMixture(k, **kw).fit(x)
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(ours, attr), getattr(ref, attr), rtol=1e-6)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-6)


# -- scikit-learn estimator protocol -----------------------------------------------------------


def test_sklearn_exception_classes_catch_gmmseg_errors_and_warnings() -> None:
    import sklearn.exceptions

    assert issubclass(NotFittedError, sklearn.exceptions.NotFittedError)
    assert issubclass(ConvergenceWarning, SkConvergenceWarning)
    with pytest.raises(sklearn.exceptions.NotFittedError):
        GaussianMixture(2).predict(_iris())
    with pytest.warns(SkConvergenceWarning, match="did not converge"):
        GaussianMixture(3, max_iter=1, random_state=0).fit(_iris())
    with warnings.catch_warnings():  # scikit-learn's filter silences gmmseg's warning
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", SkConvergenceWarning)
        GaussianMixture(3, max_iter=1, random_state=0).fit(_iris())


def test_get_params_set_params_and_validation_in_fit() -> None:
    gm = GaussianMixture(3, covariance_type="diag", tol=1e-4, verbose_interval=5)
    params = gm.get_params()
    assert params["n_components"] == 3 and params["covariance_type"] == "diag"
    assert set(params) == set(inspect.signature(GaussianMixture).parameters)
    twin = GaussianMixture(**params)
    assert twin.get_params() == params
    assert gm.set_params(n_components=-1, tol=np.inf) is gm  # stored, not checked ...
    with pytest.raises(ValueError, match="The 'n_components' parameter of GaussianMixture"):
        gm.fit(_iris())  # ... until fit
    with pytest.raises(ValueError, match="Invalid parameter 'n_component' for estimator"):
        gm.set_params(n_component=2)
    gm.set_params(n_components=3).fit(_iris())
    assert gm.get_params()["n_components"] == 3  # fit does not rewrite parameters


def test_numpy_random_state_seeds_and_advances() -> None:
    x = _blobs()

    def fit(rs: Any) -> np.ndarray:
        return (
            GaussianMixture(4, init_params="random_from_data", max_iter=0, random_state=rs)
            .fit(x)
            .means_
        )

    np.testing.assert_array_equal(fit(np.random.RandomState(3)), fit(np.random.RandomState(3)))
    shared = np.random.RandomState(3)
    first, second = fit(shared), fit(shared)
    assert not np.array_equal(first, second), "a RandomState advances between fits"


def test_float32_weights_init_normalised_as_sklearn_accepts() -> None:
    x = _iris().astype(np.float32)
    w = np.random.default_rng(0).uniform(size=3).astype(np.float32)
    w = w / w.sum()  # float32 rounding: the sum is 1 only to about 1e-7
    SkGaussianMixture(3, weights_init=w, random_state=0).fit(x)  # the reference accepts it
    gm = GaussianMixture(3, weights_init=w, random_state=0).fit(x)
    assert gm.means_.dtype == np.float32
    GaussianMixture(3, weights_init=w, random_state=0).fit(x.astype(np.float64))
    with pytest.raises(ValueError, match="should be normalized"):
        GaussianMixture(3, weights_init=w * 1.001, random_state=0).fit(x)


def test_object_arrays_of_numbers_and_sparse_input() -> None:
    import scipy.sparse

    x = _iris()
    a = GaussianMixture(3, random_state=0).fit(x)
    b = GaussianMixture(3, random_state=0).fit(x.astype(object))
    np.testing.assert_array_equal(a.means_, b.means_)
    bad = x.astype(object)
    bad[0, 0] = {"not": "a number"}
    with pytest.raises(TypeError, match="X must hold numbers"):
        GaussianMixture(3).fit(bad)
    with pytest.raises(TypeError, match="Sparse data was passed for X"):
        GaussianMixture(3).fit(scipy.sparse.csr_matrix(x))


def test_verbose_prints_initialisations_and_iterations(capsys: pytest.CaptureFixture[str]) -> None:
    x = _blobs()
    GaussianMixture(4, n_init=2, verbose=1, verbose_interval=2, random_state=0).fit(x)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Initialization 0" and "Initialization 1" in out
    assert "  Iteration 2" in out and out[-1] == "Initialization converged."
    GaussianMixture(4, verbose=2, verbose_interval=1, random_state=0).fit(x)
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("  Iteration 1\t time lapse ") and "ll change" in out[1]
    assert "lower bound" in out[-1]
    GaussianMixture(4, random_state=0).fit(x)
    assert capsys.readouterr().out == ""


def test_clone_pipeline_and_grid_search() -> None:
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.RandomState(0)
    x = np.r_[rng.randn(60, 2), rng.randn(60, 2) + 6]
    gm = GaussianMixture(2, covariance_type="diag", random_state=rng)
    twin = clone(gm)
    assert twin is not gm and twin.get_params()["covariance_type"] == "diag"
    pipe = make_pipeline(StandardScaler(), GaussianMixture(random_state=0)).fit(x)
    assert pipe.predict(x).shape == (120,)
    search = GridSearchCV(GaussianMixture(random_state=0), {"n_components": [1, 2, 3]}, cv=3)
    search.fit(x)
    assert search.best_params_["n_components"] >= 2  # two separated blobs
    assert isinstance(search.best_estimator_, GaussianMixture)


def test_numpy_scalar_hyperparameters() -> None:
    """Parameters as a grid search may pass them (numpy scalars) fit like Python numbers."""
    x = _blobs()
    kw: dict[str, Any] = {
        "max_iter": np.int64(50),
        "n_init": np.int64(2),
        "chunk_size": np.int64(10),
        "random_state": np.int64(3),
        "tol": np.float32(1e-3),
        "verbose_interval": np.int64(3),
        "warm_start": np.bool_(False),
    }
    for init in ["kmeans", "k-means++", "random", "random_from_data"]:
        a = GaussianMixture(np.int64(4), init_params=init, **kw).fit(x)
        b = GaussianMixture(4, init_params=init, **{k: v.item() for k, v in kw.items()}).fit(x)
        np.testing.assert_array_equal(a.means_, b.means_)
        assert a.sample(np.int64(5))[0].shape == (5, 3)


def test_exception_classes_without_scikit_learn() -> None:
    """Without scikit-learn the classes fall back to the standard bases (no hard dependency)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "from gmmseg.em import ConvergenceWarning, NotFittedError, GaussianMixture\n"
        "assert ConvergenceWarning.__mro__[1] is UserWarning, ConvergenceWarning.__mro__\n"
        "assert issubclass(NotFittedError, (ValueError)), NotFittedError.__mro__\n"
        "assert issubclass(NotFittedError, AttributeError), NotFittedError.__mro__\n"
        "assert 'sklearn' not in NotFittedError.__mro__[1].__module__\n"
        "import numpy as np\n"
        "GaussianMixture(2, random_state=0).fit(np.random.RandomState(0).randn(50, 2))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
