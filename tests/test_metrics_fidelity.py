"""Embedding fidelity (FID / KID / precision-recall by torch-fidelity) of class mixtures.

Tests marked ``vision`` need torch-fidelity (and torchvision): ``nox -s tests_vision``. The others
run in the core session without the ``fidelity`` extra: the lazy import, the ImportError naming
the extra, and the input checks (all done before torch-fidelity is imported).
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from gmmseg.metrics import UndefinedMetricWarning
from gmmseg.metrics.fidelity import fidelity_scores, mixture_fidelity

vision = pytest.mark.vision


def frechet_reference(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> float:
    """‖Δμ‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}), with scipy's matrix square root."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1 + cov2 - 2.0 * covmean))


def mixture_moments(
    means: np.ndarray, scales: np.ndarray, log_weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of one diagonal mixture: means, scales (M, D), log_weights (M,)."""
    w = np.exp(log_weights - log_weights.max())
    w /= w.sum()
    mean = w @ means
    second = sum(
        wm * (np.diag(s**2) + np.outer(m, m)) for wm, m, s in zip(w, means, scales, strict=True)
    )
    return mean, second - np.outer(mean, mean)


def random_mixture(c: int, m: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(c, m, d, generator=g), dim=-1)
    scales = 0.1 + 0.2 * torch.rand(c, m, d, generator=g)
    return means, scales


def draw_from(
    means: torch.Tensor, scales: torch.Tensor, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """n embeddings per class from the uniform mixtures, with a plain per-class loop."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(means.shape[0]):
        comp = torch.randint(0, means.shape[1], (n,), generator=g)
        xs.append(means[c, comp] + scales[c, comp] * torch.randn(n, means.shape[2], generator=g))
        ys.append(torch.full((n,), c))
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------- core session (no extra)


def test_import_metrics_does_not_import_torch_fidelity() -> None:
    code = (
        "import sys, gmmseg.metrics, gmmseg.metrics.fidelity; "
        "bad = [m for m in ('torch_fidelity', 'torchvision') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_missing_extra_raises_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails as if not installed
    x = torch.randn(10, 2)
    with pytest.raises(ImportError, match=r"`fidelity` extra.*gmmseg\[fidelity\]"):
        fidelity_scores(x, x)
    means, scales = torch.zeros(1, 1, 2), torch.ones(1, 1, 2)
    with pytest.raises(ImportError, match="`fidelity` extra"):
        mixture_fidelity(means, scales, x, torch.zeros(10, dtype=torch.int64))


def _mixture_args() -> dict[str, object]:
    return {
        "means": torch.zeros(3, 2, 4),
        "scales": torch.ones(3, 2, 4),
        "embeddings": torch.randn(20, 4),
        "labels": torch.arange(20) % 3,
    }


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"means": torch.zeros(3, 4)}, r"means must have shape \(C, M, D\)"),
        ({"scales": torch.ones(3, 1, 4)}, "scales must have the shape of means"),
        ({"scales": torch.zeros(3, 2, 4)}, "scales must be positive"),
        ({"means": torch.full((3, 2, 4), math.nan)}, "means must be finite"),
        ({"means": torch.zeros(3, 2, 4, dtype=torch.int64)}, "means must be a floating-point"),
        ({"embeddings": torch.randn(20, 5)}, "embeddings must have D = 4 columns"),
        ({"embeddings": torch.randn(20)}, r"embeddings must have shape \(N, D\)"),
        ({"embeddings": torch.full((20, 4), math.inf)}, "embeddings must be finite"),
        ({"labels": torch.arange(19) % 3}, "labels must have one entry per embedding"),
        ({"labels": (torch.arange(20) % 3).float()}, "labels must be an integer tensor"),
        ({"labels": torch.arange(20).reshape(4, 5)}, r"labels must have shape \(N,\)"),
        ({"labels": torch.arange(20) % 4}, r"labels must be in \[0, 3\) or ignore_index=255"),
        ({"labels": torch.full((20,), -1)}, r"got -1 \(20 px\)"),
        ({"log_weights": torch.zeros(3, 3)}, r"log_weights must have shape \(C, M\)"),
        ({"log_weights": torch.full((3, 2), -math.inf)}, "positive weight"),
        ({"log_weights": torch.full((3, 2), math.nan)}, "must not contain NaN"),
        ({"ignore_index": 2}, r"ignore_index must not be a class id in \[0, 3\)"),
        ({"max_real_per_class": 3}, "max_real_per_class must be an int >= 8"),
        ({"kid_subset_size": 1}, "kid_subset_size must be an int >= 2"),
        ({"kid_subsets": 0}, "kid_subsets must be an int >= 1"),
        ({"prc_neighborhood": 0}, "prc_neighborhood must be an int >= 1"),
        ({"generator": 0}, "generator must be a CPU torch.Generator"),
    ],
)
def test_mixture_fidelity_errors(change: dict[str, object], match: str) -> None:
    args = _mixture_args() | change
    with pytest.raises(ValueError, match=match):
        mixture_fidelity(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("generated", "real", "kwargs", "match"),
    [
        (torch.randn(10, 3), torch.randn(10, 4), {}, "the same dimension D"),
        (torch.randn(3, 3), torch.randn(10, 3), {}, "generated must have at least 4 rows"),
        (torch.randn(10, 3), torch.randn(10, 3, 1), {}, r"real must have shape \(N, D\)"),
        (torch.randn(10, 3), torch.randn(8, 3), {"kid_subset_size": 9}, r"<= min\(N1, N2\) = 8"),
        (torch.randn(10, 3), torch.randn(8, 3), {"seed": -1}, "seed must be an int"),
    ],
)
def test_fidelity_scores_errors(
    generated: torch.Tensor, real: torch.Tensor, kwargs: dict[str, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        fidelity_scores(generated, real, **kwargs)


# ----------------------------------------------------------------- vision session (extra)


@pytest.fixture
def tf() -> object:
    return pytest.importorskip("torch_fidelity")


@vision
@pytest.mark.usefixtures("tf")
def test_two_gaussians_known_fid() -> None:
    """A one-component diagonal class vs real data from a full-covariance Gaussian."""
    d = 4
    mu1, s1 = np.zeros(d), np.array([1.0, 0.5, 2.0, 1.0])
    rng = np.random.default_rng(1)
    mu2 = np.array([1.0, -0.5, 0.3, 0.0])
    a = rng.normal(size=(d, d))
    cov2 = a @ a.T / d + 0.2 * np.eye(d)
    real = rng.multivariate_normal(mu2, cov2, size=40_000)
    expected = frechet_reference(mu1, np.diag(s1**2), mu2, cov2)
    out = mixture_fidelity(
        torch.from_numpy(mu1).view(1, 1, d),
        torch.from_numpy(s1).view(1, 1, d),
        torch.from_numpy(real),
        torch.zeros(40_000, dtype=torch.int64),
        normalize_means=False,
        max_real_per_class=None,
        kid=False,
        prc=False,
        generator=torch.Generator().manual_seed(0),
    )
    fid = float(out["mixture"]["fid"][0])
    assert expected > 3.0
    assert fid == pytest.approx(expected, rel=0.05)
    assert float(out["noise_floor"]["fid"][0]) < 0.01 * expected
    assert math.isnan(float(out["mixture"]["kid_mean"][0]))  # not computed
    assert int(out["kid_subset_size"][0]) == 0


@vision
@pytest.mark.usefixtures("tf")
def test_weighted_mixture_known_fid() -> None:
    """FID of a weighted 3-component mixture = FID of its moments (FID sees two moments only)."""
    d = 3
    means = np.array([[2.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, -1.0, 2.0]])
    scales = np.array([[0.5, 0.3, 0.4], [0.2, 0.6, 0.3], [0.4, 0.4, 0.2]])
    log_weights = np.log(np.array([0.5, 0.3, 0.2]))
    mean, cov = mixture_moments(means, scales, log_weights)
    rng = np.random.default_rng(2)
    real = rng.normal(size=(40_000, d)) * 0.5
    expected = frechet_reference(mean, cov, np.zeros(d), 0.25 * np.eye(d))
    out = mixture_fidelity(
        torch.from_numpy(means)[None],
        torch.from_numpy(scales)[None],
        torch.from_numpy(real),
        torch.zeros(40_000, dtype=torch.int64),
        torch.from_numpy(log_weights)[None] + 7.0,  # unnormalised log weights are fine
        normalize_means=False,
        max_real_per_class=None,
        kid=False,
        prc=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(out["mixture"]["fid"][0]) == pytest.approx(expected, rel=0.05)


@vision
@pytest.mark.usefixtures("tf")
def test_scores_equal_independent_formulas() -> None:
    """The identity extractor passes the vectors unchanged: FID of the sample moments, the full
    unbiased MMD² (one subset = all rows) and the k-NN precision/recall by plain loops."""
    g = torch.Generator().manual_seed(3)
    d, n, k = 5, 40, 3
    gen = torch.randn(n, d, generator=g, dtype=torch.float64)
    real = 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64) + 0.4
    out = fidelity_scores(gen, real, kid_subsets=1, kid_subset_size=n, prc_neighborhood=k)
    x, y = gen.numpy(), real.numpy()
    fid = frechet_reference(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert out["fid"] == pytest.approx(fid, rel=1e-8)

    def kern(a: np.ndarray, b: np.ndarray) -> float:
        return (float(a @ b) / d + 1.0) ** 3

    kxx = sum(kern(x[i], x[j]) for i in range(n) for j in range(n) if i != j)
    kyy = sum(kern(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    kxy = sum(kern(x[i], y[j]) for i in range(n) for j in range(n))
    mmd2 = (kxx + kyy) / (n * (n - 1)) - 2.0 * kxy / (n * n)
    assert out["kid_mean"] == pytest.approx(mmd2, rel=1e-8)
    assert out["kid_std"] == 0.0

    def inside(points: np.ndarray, support: np.ndarray) -> float:
        radii = [sorted(np.linalg.norm(support - s, axis=1))[k] for s in support]  # k-th NN
        hits = [
            any(np.linalg.norm(p - s) <= r for s, r in zip(support, radii, strict=True))
            for p in points
        ]
        return sum(hits) / len(hits)

    assert out["precision"] == pytest.approx(inside(x, y), abs=1e-6)
    assert out["recall"] == pytest.approx(inside(y, x), abs=1e-6)
    assert (out["num_generated"], out["num_real"], out["kid_subset_size"]) == (n, n, n)


@vision
@pytest.mark.usefixtures("tf")
def test_identical_distributions_match_noise_floor() -> None:
    means, scales = random_mixture(2, 3, 8, seed=0)
    x, y = draw_from(means, scales, 2000, seed=1)
    kid = {"kid_subsets": 10, "kid_subset_size": 500}
    out = mixture_fidelity(means, scales, x, y, **kid, generator=torch.Generator().manual_seed(0))
    mix, floor = out["mixture"], out["noise_floor"]
    for table in (mix, floor):
        assert bool((table["fid"].abs() < 0.02).all())  # the wrong model below: 0.3
        assert bool((table["kid_mean"].abs() < 4 * table["kid_std"]).all())
    assert bool(((mix["precision"] - floor["precision"]).abs() < 0.05).all())
    assert bool(((mix["recall"] - floor["recall"]).abs() < 0.05).all())
    assert bool((floor["precision"] > 0.8).all())
    # A wrong model (scales doubled) is far above its floor.
    wrong = mixture_fidelity(
        means, 2.0 * scales, x, y, **kid, prc=False, generator=torch.Generator().manual_seed(0)
    )
    w_mix, w_floor = wrong["mixture"], wrong["noise_floor"]
    assert bool((w_mix["fid"] > 20 * w_floor["fid"]).all())
    assert bool((w_mix["kid_mean"] > w_floor["kid_mean"] + 3 * w_mix["kid_std"]).all())
    assert torch.equal(w_floor["fid"], floor["fid"])  # same split, same floor


@vision
@pytest.mark.usefixtures("tf")
def test_table_shape_counts_and_skipped_class() -> None:
    means, scales = random_mixture(4, 2, 6, seed=4)
    x, y = draw_from(means, scales, 200, seed=5)
    y[y == 2] = 255  # class 2 has no real embedding (ignored rows are not used)
    y[(y == 3).nonzero()[5:].flatten()] = 255  # class 3 keeps 5 < 2 * (3 + 1)
    with pytest.warns(UndefinedMetricWarning, match=r"2 class\(es\).*2 \(0\), 3 \(5\)"):
        out = mixture_fidelity(
            means,
            scales,
            x,
            y,
            max_real_per_class=101,
            kid_subsets=5,
            kid_subset_size=40,
            generator=torch.Generator().manual_seed(0),
        )
    for table in (out["mixture"], out["noise_floor"]):
        assert set(table) == {"fid", "kid_mean", "kid_std", "precision", "recall", "f_score"}
        for value in table.values():
            assert value.shape == (4,) and value.dtype == torch.float64
            assert bool(value[:2].isfinite().all()) and bool(value[2:].isnan().all())
    assert out["evaluated"].tolist() == [True, True, False, False]
    assert out["num_real"].tolist() == [200, 200, 0, 5]
    assert out["num_samples"].tolist() == [50, 50, 0, 0]
    assert out["num_reference"].tolist() == [51, 51, 0, 0]
    assert out["kid_subset_size"].tolist() == [40, 40, 0, 0]
    assert out["normalize_samples"] is False


@vision
@pytest.mark.usefixtures("tf")
def test_deterministic_and_normalize_samples() -> None:
    """Same generator → same numbers; on-sphere data: only the projected samples match it."""
    means, scales = random_mixture(1, 2, 8, seed=6)
    x, y = draw_from(means, scales, 2000, seed=7)
    x = torch.nn.functional.normalize(x, dim=-1)  # real embeddings live on the unit sphere

    def run(normalize: bool) -> dict[str, torch.Tensor]:
        out = mixture_fidelity(
            means,
            scales,
            x.float(),
            y,
            normalize_samples=normalize,
            kid=False,
            prc=False,
            generator=torch.Generator().manual_seed(0),
        )
        assert out["normalize_samples"] is normalize
        return {"mix": out["mixture"]["fid"], "floor": out["noise_floor"]["fid"]}

    first, again = run(True), run(True)
    assert torch.equal(first["mix"], again["mix"]) and torch.equal(first["floor"], again["floor"])
    off_sphere = run(False)
    assert float(first["mix"][0]) < 0.05
    assert float(off_sphere["mix"][0]) > 10 * float(first["mix"][0])


@vision
@pytest.mark.usefixtures("tf")
def test_registration_is_idempotent() -> None:
    registry = pytest.importorskip("torch_fidelity.registry")
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = fidelity_scores(x, x + 1.0, kid=False, prc=False)
        second = fidelity_scores(x, x + 1.0, kid=False, prc=False)
    assert "gmmseg-identity" in registry.FEATURE_EXTRACTORS_REGISTRY
    assert first["fid"] == pytest.approx(3.0, rel=1e-6)  # a pure shift: ‖Δμ‖² = 3
    assert first["fid"] == second["fid"]
