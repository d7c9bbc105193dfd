"""Post-hoc class-conditional mixtures: recovery vs scikit-learn, streaming, scores vs scipy."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from gmmseg.em import GaussianMixture
from gmmseg.heads import PosthocFitter, PosthocMixtures, PosthocSettings

# -- data ---------------------------------------------------------------------------------------


def _class_mixtures(
    seed: int, num_classes: int = 3, m: int = 2, d: int = 4, per_component: int = 300
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features drawn from known, well-separated per-class mixtures, rows shuffled."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(num_classes):
        for k in range(m):
            centre = rng.normal(0, 1, d) + 12.0 * np.eye(d)[(c * m + k) % d] * (1 + c * m + k)
            scale = rng.uniform(0.3, 1.0, d)
            xs.append(centre + scale * rng.normal(0, 1, (per_component, d)))
            ys.append(np.full(per_component, c))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(len(y))
    return torch.from_numpy(x[order]), torch.from_numpy(y[order])


def _fit(
    x: torch.Tensor, y: torch.Tensor, c: int, settings: PosthocSettings, batch: int | None = None
) -> PosthocMixtures:
    fitter = PosthocFitter(c, x.shape[1], settings)
    step = batch or x.shape[0]
    for i in range(0, x.shape[0], step):
        fitter.update(x[i : i + step], y[i : i + step])
    return fitter.fit()


def _sorted_components(means: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    order = np.lexsort(means.T[::-1])
    return [means[order], *(o[order] for o in others)]


# -- fitting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_recovers_known_class_mixtures_like_sklearn_per_class(covariance_type: str) -> None:
    x, y = _class_mixtures(0)
    s = PosthocSettings(
        num_components=2,
        covariance_type=covariance_type,
        reg_covar=1e-6,
        max_samples_per_class=10**6,  # type: ignore[arg-type]
    )
    head = _fit(x, y, 3, s)
    assert head.classes.tolist() == [0, 1, 2]
    for c in range(3):
        xc = x[y == c].numpy()
        sk = SkGaussianMixture(
            2, covariance_type=covariance_type, reg_covar=1e-6, random_state=0, tol=1e-6
        ).fit(xc)
        ours_cov = (
            1.0 / head.precisions_cholesky[c].numpy() ** 2
            if covariance_type == "diag"
            else np.linalg.inv(
                np.einsum(
                    "kij,klj->kil",
                    head.precisions_cholesky[c].numpy(),
                    head.precisions_cholesky[c].numpy(),
                )
            )
        )
        mu, w, cov = _sorted_components(head.means[c].numpy(), head.weights[c].numpy(), ours_cov)
        sk_mu, sk_w, sk_cov = _sorted_components(sk.means_, sk.weights_, sk.covariances_)
        np.testing.assert_allclose(mu, sk_mu, atol=1e-3)
        np.testing.assert_allclose(w, sk_w, atol=1e-3)
        np.testing.assert_allclose(cov, sk_cov, rtol=1e-2, atol=1e-4)
        # and the truth: the per-class sample holds every pixel, each mixture has 2 modes
        assert int(head.sample_counts[c]) == int((y == c).sum())


@pytest.mark.parametrize("batch", [1, 97, 1000])
def test_streaming_equals_one_update_on_the_concatenation(batch: int) -> None:
    x, y = _class_mixtures(1)
    y[::7] = 255  # ignored pixels are skipped but keep their place in the stream
    if batch == 1:  # one pixel at a time: a shorter stream keeps the test fast
        x, y = x[:300], y[:300]
    s = PosthocSettings(num_components=2, max_samples_per_class=40, seed=3)
    whole = _fit(x, y, 3, s)
    streamed = _fit(x, y, 3, s, batch)
    for name in ("means", "weights", "precisions_cholesky", "log_priors", "sample_counts"):
        assert torch.equal(getattr(whole, name), getattr(streamed, name)), name


def test_with_every_pixel_kept_the_fit_is_fit_grouped_on_the_labelled_features() -> None:
    x, y = _class_mixtures(2)
    y[5::11] = 255
    s = PosthocSettings(num_components=2, max_samples_per_class=10**6, seed=4)
    head = _fit(x, y, 3, s, batch=128)
    keep = y != 255
    ref = GaussianMixture(
        2, covariance_type="diag", reg_covar=s.reg_covar, random_state=4
    ).fit_grouped(x[keep], y[keep], 3)
    torch.testing.assert_close(head.means, ref.means_, rtol=0, atol=0)
    torch.testing.assert_close(head.precisions_cholesky, ref.precisions_cholesky_, rtol=0, atol=0)
    counts = torch.bincount(y[keep], minlength=3).double()
    torch.testing.assert_close(head.log_priors, torch.log(counts / counts.sum()))


def test_reservoir_is_a_uniform_sample_of_each_class_and_bounded() -> None:
    n, cap = 20000, 500
    x = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, 2)
    y = torch.zeros(n, dtype=torch.int64)
    y[n // 2 :] = 1
    fitter = PosthocFitter(2, 2, PosthocSettings(num_components=1, max_samples_per_class=cap))
    for i in range(0, n, 333):
        fitter.update(x[i : i + 333], y[i : i + 333])
    kept, cls = fitter.sample()
    assert torch.bincount(cls).tolist() == [cap, cap]
    assert fitter.reservoir_bytes == 2 * cap * (2 * 8 + 24)
    positions = kept[:, 0]
    assert torch.all(positions[1:] > positions[:-1])  # stream order, no duplicates
    # uniform over each class's positions: a Kolmogorov-Smirnov test against U[0, n/2)
    for c in range(2):
        u = (positions[cls == c] - c * n / 2) / (n / 2)
        assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3


def test_deterministic_for_a_seed_and_different_for_another() -> None:
    x, y = _class_mixtures(3)
    s0 = PosthocSettings(num_components=2, max_samples_per_class=100, seed=0)
    a, b = _fit(x, y, 3, s0, batch=64), _fit(x, y, 3, s0, batch=64)
    c = _fit(x, y, 3, PosthocSettings(num_components=2, max_samples_per_class=100, seed=1))
    assert torch.equal(a.means, b.means) and torch.equal(a.weights, b.weights)
    assert not torch.equal(a.means, c.means)


# -- classes and labels -------------------------------------------------------------------------


def test_small_and_absent_classes_get_no_mixture_with_a_warning() -> None:
    x, y = _class_mixtures(4, num_classes=3, m=1)
    y[y == 2] = 1  # class 2 absent
    y[0], y[1] = 3, 3  # class 3: two pixels, fewer than M = 3
    s = PosthocSettings(num_components=3)
    with pytest.warns(UserWarning, match=r"class\(es\) \[2, 3\] have fewer than num_components=3"):
        head = _fit(x, y, 4, s)
    assert head.classes.tolist() == [0, 1]
    log_p = head.class_log_prob(x[:10])
    assert torch.isinf(log_p[:, 2:]).all() and (log_p[:, 2:] < 0).all()
    assert torch.isfinite(log_p[:, :2]).all()
    scores = head.anomaly_scores(x[:10])
    assert all(torch.isfinite(v).all() for v in scores.values())
    counts = head.pixel_counts[:2].double()
    torch.testing.assert_close(head.log_priors, torch.log(counts / counts.sum()))


def test_no_class_with_enough_pixels_raises() -> None:
    fitter = PosthocFitter(2, 3, PosthocSettings(num_components=4))
    fitter.update(torch.randn(5, 3), torch.tensor([0, 0, 1, 1, 255]))
    with pytest.raises(ValueError, match="no class has num_components=4"):
        fitter.fit()


def test_all_ignored_then_fit_raises() -> None:
    fitter = PosthocFitter(2, 3)
    fitter.update(torch.randn(4, 3), torch.full((4,), 255))
    assert fitter.pixels_seen == 4
    with pytest.raises(ValueError, match="no class has"):
        fitter.fit()


def test_fit_before_update_raises() -> None:
    with pytest.raises(ValueError, match="call update"):
        PosthocFitter(2, 3).fit()


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), r"labels must be in \[0, 2\).*\[2\]"),
        (torch.randn(4, 3), torch.tensor([0, -1, 1, 0]), r"\[-1\]"),
        (torch.randn(4, 5), torch.zeros(4, dtype=torch.int64), r"shape \(N, 3\)"),
        (torch.randn(4, 3), torch.zeros(3, dtype=torch.int64), r"shape \(4,\)"),
        (torch.randn(4, 3), torch.zeros(4), "integer tensor"),
        (torch.full((4, 3), math.nan), torch.zeros(4, dtype=torch.int64), "finite"),
        (torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), "floating"),
    ],
)
def test_update_validates(features: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PosthocFitter(2, 3).update(features, labels)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_components": 0}, "num_components"),
        ({"covariance_type": "tied"}, "covariance_type"),
        ({"projection": "pca"}, "projection_dim"),
        ({"projection_dim": 3}, "projection_dim"),
        ({"reg_covar": -1.0}, "reg_covar"),
        ({"seed": -1}, "seed"),
        ({"num_components": 5, "max_samples_per_class": 4}, "max_samples_per_class"),
    ],
)
def test_settings_validate(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PosthocSettings(**kwargs)  # type: ignore[arg-type]


# -- scores -------------------------------------------------------------------------------------


def _reference_scores(head: PosthocMixtures, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A plain loop over classes and components with scipy.stats densities."""
    z = x
    if head.settings.normalize:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    if head.projection is not None:
        z = (z - head.centre.numpy()) @ head.projection.numpy()
    per_class = np.full((x.shape[0], head.num_classes), -np.inf)
    for g, c in enumerate(head.classes.tolist()):
        comps = []
        for m in range(head.weights.shape[1]):
            pc = head.precisions_cholesky[g, m].numpy()
            cov = np.diag(1 / pc**2) if pc.ndim == 1 else np.linalg.inv(pc @ pc.T)
            comps.append(
                stats.multivariate_normal(head.means[g, m].numpy(), cov).logpdf(z)
                + np.log(head.weights[g, m].item())
            )
        per_class[:, c] = logsumexp(np.stack(comps, 1), axis=1)
    fitted = per_class[:, head.classes.numpy()]
    likelihood = -fitted.max(axis=1)
    marginal = -logsumexp(fitted + head.log_priors.numpy(), axis=1)
    return likelihood, marginal


@pytest.mark.parametrize(
    "settings",
    [
        PosthocSettings(num_components=2),
        PosthocSettings(num_components=2, covariance_type="full"),
        PosthocSettings(num_components=1, normalize=True, projection="pca", projection_dim=2),
        PosthocSettings(num_components=3, projection="random", projection_dim=3, seed=5),
    ],
)
def test_scores_equal_a_plain_per_class_loop(settings: PosthocSettings) -> None:
    x, y = _class_mixtures(5, num_classes=4, m=2)
    y[y == 3] = 255  # class 3 absent
    with pytest.warns(UserWarning, match=r"\[3\]"):
        head = _fit(x, y, 4, settings)
    probe = x[:50] + torch.randn(50, x.shape[1], generator=torch.Generator().manual_seed(0))
    likelihood, marginal = _reference_scores(head, probe.numpy())
    scores = head.anomaly_scores(probe)
    np.testing.assert_allclose(scores["posthoc_likelihood"].numpy(), likelihood, rtol=1e-9)
    np.testing.assert_allclose(scores["posthoc_marginal"].numpy(), marginal, rtol=1e-9)


def test_score_maps_are_the_row_scores_laid_out() -> None:
    x, y = _class_mixtures(6)
    head = _fit(x, y, 3, PosthocSettings(num_components=2))
    fmap = x[:24].reshape(2, 3, 4, 4).permute(0, 3, 1, 2)  # (B, F, h, w), pixel order b h w
    maps = head.score_maps(fmap)
    rows = head.anomaly_scores(x[:24])
    for name in ("posthoc_likelihood", "posthoc_marginal"):
        assert maps[name].shape == (2, 3, 4)
        torch.testing.assert_close(maps[name].reshape(-1), rows[name])


def test_update_map_resizes_labels_like_the_gmm_head() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, 8, 8), generator=g)
    a = PosthocFitter(2, 3, PosthocSettings(num_components=1))
    a.update_map(feats, labels)
    b = PosthocFitter(2, 3, PosthocSettings(num_components=1))
    b.update(feats.permute(0, 2, 3, 1).reshape(-1, 3), labels[:, ::2, ::2].reshape(-1))
    assert torch.equal(a.sample()[0], b.sample()[0])


@given(
    n=st.integers(1, 40),
    c=st.integers(1, 4),
    cap=st.integers(1, 8),
    batch=st.integers(1, 13),
    seed=st.integers(0, 2**31),
)
def test_reservoir_holds_min_of_cap_and_count_per_class(
    n: int, c: int, cap: int, batch: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c + 1, (n,), generator=g)
    labels[labels == c] = 255
    x = torch.randn(n, 2, generator=g)
    fitter = PosthocFitter(c, 2, PosthocSettings(num_components=1, max_samples_per_class=cap))
    for i in range(0, n, batch):
        fitter.update(x[i : i + batch], labels[i : i + batch])
    counts = torch.bincount(labels[labels != 255], minlength=c)
    assert torch.equal(fitter.pixel_counts, counts)
    if counts.sum() == 0:
        return
    _, cls = fitter.sample()
    assert torch.equal(torch.bincount(cls, minlength=c), counts.clamp(max=cap))


# -- files --------------------------------------------------------------------------------------


def test_save_load_roundtrip_weights_only(tmp_path: Path) -> None:
    x, y = _class_mixtures(7)
    head = _fit(
        x.float(), y, 3, PosthocSettings(num_components=2, projection="pca", projection_dim=3)
    )
    head = PosthocMixtures.from_dict({**head.to_dict(), "info": {"space": "decoder"}})
    path = head.save(tmp_path / "h.posthoc.pt")
    state = torch.load(path, weights_only=True)
    assert state["format"] == "gmmseg.posthoc/1"
    loaded = PosthocMixtures.load(path)
    assert loaded.settings == head.settings and loaded.info == {"space": "decoder"}
    for name in ("posthoc_likelihood", "posthoc_marginal"):
        assert torch.equal(
            loaded.anomaly_scores(x[:5].float())[name], head.anomaly_scores(x[:5].float())[name]
        )
    assert path.stat().st_size < 20_000


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PosthocMixtures.load(tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a gmmseg post-hoc mixtures file"):
        PosthocMixtures.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        PosthocMixtures.load(tmp_path / "junk.pt")


def test_scoring_validates_width() -> None:
    x, y = _class_mixtures(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head = _fit(x, y, 3, PosthocSettings(num_components=2))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        head.anomaly_scores(torch.randn(3, 5, dtype=torch.float64))
