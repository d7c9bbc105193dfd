"""Class-conditional Gaussian mixtures fitted to a trained network's features after training.

A network trained with a softmax classifier gives no density p(x | c) of its pixel features. This
module fits one: it streams (features, labels) pairs of the training split, keeps a bounded,
uniformly drawn sample of every class's features, and fits one mixture of M Gaussians per class
with gmmseg's EM (:meth:`~gmmseg.em.GaussianMixture.fit_grouped`, all classes at once). Nothing
of the network changes. Pixels are then scored by

* ``"posthoc_likelihood"``: −max_c log p(x | c), the best class log-likelihood (GMMSeg's own
  anomaly score, with mixtures fitted after training);
* ``"posthoc_marginal"``: −log Σ_c p(c) p(x | c), the negative log-density of the feature under
  the whole model, with p(c) the classes' shares of the labelled pixels seen.

Higher is more anomalous for both. :class:`PosthocFitter` collects the sample and fits;
:class:`PosthocMixtures` is the fitted head (a small file, loadable with ``weights_only=True``).

Memory of the fit is bounded whatever the data size. The per-class reservoir holds at most
``max_samples_per_class`` = N rows per class: at most C·N·(4·D' + 24) bytes, D' the width stored
(F, or D after a random projection; float64 features take 8 bytes per value), plus during an
update the temporaries of C·N + B rows for a batch of B pixels. Which rows are kept is decided by
a key hashed from the seed and the pixel's position in the stream (the N smallest keys of each
class: a uniform sample without replacement), so the sample, and hence the fit, is the same for a
seed however the stream is split into batches.

Handling of classes and labels:

* pixels labelled ``ignore_index`` are skipped (they still advance the stream position);
  labels outside [0, C) ∪ {ignore_index} raise ``ValueError``;
* a class with fewer sampled pixels than M (including a class absent from the data) gets no
  mixture: its log p(x | c) is −inf, it takes no part in either score, and :meth:`PosthocFitter.fit`
  warns naming it; the priors are the shares among the fitted classes. If no class has M pixels,
  ``fit`` raises ``ValueError``.

Example:
    >>> fitter = PosthocFitter(num_classes=19, in_channels=256)
    >>> for features, labels in batches:  # (N, 256) float, (N,) int64
    ...     fitter.update(features, labels)
    >>> head = fitter.fit()
    >>> scores = head.anomaly_scores(test_features)  # {"posthoc_likelihood": (N,), ...}
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from gmmseg.distributions import log_prob_from_precision_cholesky
from gmmseg.heads._common import resize_target

__all__ = [
    "POSTHOC_SCORES",
    "PosthocFitter",
    "PosthocMixtures",
    "PosthocSettings",
]

#: Names of the two scores, in the order :meth:`PosthocMixtures.anomaly_scores` returns them.
POSTHOC_SCORES = ("posthoc_likelihood", "posthoc_marginal")

Projection = Literal["none", "random", "pca"]
PosthocCovariance = Literal["diag", "full"]

_FILE_FORMAT = "gmmseg.posthoc/1"


@dataclass(frozen=True)
class PosthocSettings:
    """How the post-hoc mixtures are fitted.

    Attributes:
        num_components: M, Gaussians per class (1 is Gaussian discriminant analysis).
        covariance_type: ``"diag"`` (default) or ``"full"`` (D² parameters per component: for
            small D).
        max_samples_per_class: N, the reservoir size per class.
        normalize: L2-normalise every feature first (before any projection).
        projection: ``"none"``, ``"random"`` (a fixed Gaussian matrix scaled by 1/√D, drawn
            from ``seed``, applied before storing, so the reservoir holds D values per row) or
            ``"pca"`` (the top-D principal directions of the pooled reservoir, computed at
            :meth:`PosthocFitter.fit`; features are centred by the pooled mean first).
        projection_dim: D of the projection (required unless ``projection="none"``).
        reg_covar: added to every variance (covariance diagonal), in the units of the
            (projected) features.
        max_iter: EM iterations per class.
        n_init: EM initialisations (the best lower bound is kept).
        seed: seed of the reservoir keys, the random projection and the EM initialisation.
    """

    num_components: int = 3
    covariance_type: PosthocCovariance = "diag"
    max_samples_per_class: int = 5000
    normalize: bool = False
    projection: Projection = "none"
    projection_dim: int | None = None
    reg_covar: float = 1e-4
    max_iter: int = 100
    n_init: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        for name in ("num_components", "max_samples_per_class", "max_iter", "n_init"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "an int >= 1")
        if self.covariance_type not in ("diag", "full"):
            raise bad("covariance_type", "'diag' or 'full'")
        if not isinstance(self.normalize, bool):
            raise bad("normalize", "a bool")
        if self.projection not in ("none", "random", "pca"):
            raise bad("projection", "'none', 'random' or 'pca'")
        d = self.projection_dim
        if self.projection == "none" and d is not None:
            raise bad("projection_dim", "None when projection='none'")
        if self.projection != "none" and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise bad("projection_dim", f"an int >= 1 with projection={self.projection!r}")
        if not (isinstance(self.reg_covar, (int, float)) and 0 <= self.reg_covar < math.inf):
            raise bad("reg_covar", "a finite number >= 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "an int >= 0")
        if self.num_components > self.max_samples_per_class:
            raise bad("max_samples_per_class", f">= num_components={self.num_components}")


def _check_float_rows(name: str, x: Tensor, width: int) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite, got NaN/Inf values")


def _stream_keys(seed: int, index: Tensor) -> Tensor:
    """(N,) int64 keys in [0, 2⁶³): splitmix64 of the stream positions ``index`` and ``seed``.

    A counter-based hash (no generator state): a pixel's key depends only on the seed and its
    position, never on how the stream was split into batches.
    """
    golden = np.uint64(0x9E3779B97F4A7C15)
    z = index.cpu().numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64) + golden
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(1)).astype(np.int64)).to(index.device)


def _random_projection(in_channels: int, dim: int, seed: int) -> Tensor:
    """(F, D) float64 Gaussian matrix with entries of variance 1/D (CPU, from ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(in_channels, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)


def _pca_projection(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Mean (F,) and top-``dim`` principal directions (F, D) of the rows of ``x`` (float64).

    The sign of each direction is fixed (its largest-magnitude entry positive) so the result
    does not depend on the eigen-solver.
    """
    x64 = x.to(torch.float64)
    centre = x64.mean(dim=0)
    xc = x64 - centre
    cov = xc.T @ xc / max(x64.shape[0] - 1, 1)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    top = vectors.flip(-1)[:, :dim]
    pivot = top.abs().argmax(dim=0)
    signs = torch.sign(top[pivot, torch.arange(dim, device=top.device)])
    return centre, top * torch.where(signs == 0, 1.0, signs)


@dataclass(frozen=True, eq=False)
class PosthocMixtures:
    """Class-conditional Gaussian mixtures on a trained network's features (the fitted head).

    Made by :meth:`PosthocFitter.fit`; saved and loaded with :meth:`save` / :meth:`load`. G is the
    number of fitted classes (those with at least M sampled pixels), D the width after the
    feature transform (F without projection).

    Attributes:
        num_classes: C.
        in_channels: F, the width of the features it scores.
        settings: the :class:`PosthocSettings` it was fitted with.
        classes: (G,) int64 class id of each fitted mixture, increasing.
        log_priors: (G,) log p(c) of the fitted classes (their shares of the labelled pixels
            seen, renormalised over the fitted classes).
        weights: (G, M) mixture weights.
        means: (G, M, D) means.
        precisions_cholesky: (G, M, D) for ``"diag"`` (1/σ) or (G, M, D, D) for ``"full"``
            (upper Cholesky factors of the precisions, as scikit-learn).
        centre: (F,) subtracted before the projection (the PCA mean; zeros otherwise).
        projection: (F, D) projection matrix, or ``None``.
        pixel_counts: (C,) int64 labelled pixels seen per class.
        sample_counts: (C,) int64 pixels in the reservoir per class when fitted.
        info: free-form JSON-like metadata (str/int/float/bool/None/lists), e.g. which
            features of which model were fitted.
    """

    num_classes: int
    in_channels: int
    settings: PosthocSettings
    classes: Tensor
    log_priors: Tensor
    weights: Tensor
    means: Tensor
    precisions_cholesky: Tensor
    centre: Tensor
    projection: Tensor | None
    pixel_counts: Tensor
    sample_counts: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_fitted(self) -> int:
        """G, the number of classes with a mixture."""
        return int(self.classes.shape[0])

    def to(self, device: torch.device | str) -> PosthocMixtures:
        """A copy with every tensor on ``device``."""
        moved: dict[str, Any] = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)

    def transform(self, features: Tensor) -> Tensor:
        """The feature transform of the fit: optional L2 normalisation, then projection.

        Args:
            features: (N, F) float.

        Returns:
            (N, D) in the dtype of the fitted parameters.
        """
        _check_float_rows("features", features, self.in_channels)
        x = features.to(self.means.dtype)
        if self.settings.normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        if self.projection is not None:
            x = (x - self.centre.to(x.dtype)) @ self.projection.to(x.dtype)
        return x

    def class_log_prob(self, features: Tensor) -> Tensor:
        """Class-conditional log-densities log p(x | c).

        One fused log-density over all G·M components
        (:func:`~gmmseg.distributions.log_prob_from_precision_cholesky`, chunked over rows), then
        a log-sum-exp over each class's M weighted components.

        Args:
            features: (N, F) float.

        Returns:
            (N, C) log p(x | c), −inf for the classes without a mixture.
        """
        x = self.transform(features)
        g = self.num_fitted
        ct = self.settings.covariance_type
        pc = self.precisions_cholesky
        log_prob = log_prob_from_precision_cholesky(
            x,
            rearrange(self.means, "g m d -> (g m) d"),
            rearrange(pc, "g m ... -> (g m) ..."),
            ct,
            check_finite=False,
        )
        weighted = rearrange(log_prob, "n (g m) -> n g m", g=g) + torch.log(self.weights)
        fitted = torch.logsumexp(weighted, dim=-1)
        out = fitted.new_full((x.shape[0], self.num_classes), -math.inf)
        out[:, self.classes] = fitted
        return out

    def anomaly_scores(self, features: Tensor) -> dict[str, Tensor]:
        """Both anomaly scores of every row (higher = more anomalous).

        Args:
            features: (N, F) float.

        Returns:
            ``{"posthoc_likelihood": (N,) −max_c log p(x | c), "posthoc_marginal": (N,)
            −log Σ_c p(c) p(x | c)}``.
        """
        log_p = self.class_log_prob(features)[:, self.classes]
        return {
            "posthoc_likelihood": -log_p.amax(dim=1),
            "posthoc_marginal": -torch.logsumexp(log_p + self.log_priors, dim=1),
        }

    def score_maps(self, features: Tensor) -> dict[str, Tensor]:
        """Both anomaly scores of a feature map, at its resolution.

        Args:
            features: (B, F, h, w) float.

        Returns:
            Score name → (B, h, w).
        """
        if features.ndim != 4:
            raise ValueError(
                f"features must have shape (B, {self.in_channels}, h, w), got "
                f"{tuple(features.shape)}"
            )
        b, _, h, w = features.shape
        scores = self.anomaly_scores(rearrange(features, "b f h w -> (b h w) f"))
        return {k: rearrange(v, "(b h w) -> b h w", b=b, h=h, w=w) for k, v in scores.items()}

    # -- files ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Tensors, numbers and strings only (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "format": _FILE_FORMAT,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "settings": dataclasses.asdict(self.settings),
            "classes": self.classes,
            "log_priors": self.log_priors,
            "weights": self.weights,
            "means": self.means,
            "precisions_cholesky": self.precisions_cholesky,
            "centre": self.centre,
            "projection": self.projection,
            "pixel_counts": self.pixel_counts,
            "sample_counts": self.sample_counts,
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> PosthocMixtures:
        """Rebuild from :meth:`to_dict`.

        Raises:
            ValueError: if ``state`` is not a post-hoc mixtures state or its shapes disagree.
        """
        if not isinstance(state, dict) or state.get("format") != _FILE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"not a gmmseg post-hoc mixtures file (format {_FILE_FORMAT!r}), got {found!r}"
            )
        head = cls(
            num_classes=int(state["num_classes"]),
            in_channels=int(state["in_channels"]),
            settings=PosthocSettings(**state["settings"]),
            classes=state["classes"],
            log_priors=state["log_priors"],
            weights=state["weights"],
            means=state["means"],
            precisions_cholesky=state["precisions_cholesky"],
            centre=state["centre"],
            projection=state["projection"],
            pixel_counts=state["pixel_counts"],
            sample_counts=state["sample_counts"],
            info=dict(state.get("info", {})),
        )
        g, m, d = head.means.shape
        expected = (g, m, d) if head.settings.covariance_type == "diag" else (g, m, d, d)
        if (
            tuple(head.precisions_cholesky.shape) != expected
            or tuple(head.weights.shape) != (g, m)
            or tuple(head.classes.shape) != (g,)
            or tuple(head.log_priors.shape) != (g,)
            or (
                head.projection is not None
                and tuple(head.projection.shape) != (head.in_channels, d)
            )
        ):
            raise ValueError("post-hoc mixtures state has inconsistent shapes (a damaged file?)")
        return head

    def save(self, path: Path | str) -> Path:
        """Write the head to ``path`` (``torch.save`` of :meth:`to_dict`); returns the path."""
        path = Path(path)
        torch.save(self.to_dict(), path)
        return path

    @classmethod
    def load(cls, path: Path | str, map_location: torch.device | str = "cpu") -> PosthocMixtures:
        """Read a head written by :meth:`save` (``weights_only=True``: no code is unpickled).

        Raises:
            FileNotFoundError: a missing file.
            ValueError: a file that is not a post-hoc mixtures file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"post-hoc mixtures file {str(path)!r} does not exist")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            raise ValueError(f"cannot read post-hoc mixtures file {str(path)!r}: {e}") from e
        return cls.from_dict(state)


class PosthocFitter:
    """Streams (features, labels) batches into per-class reservoirs, then fits the mixtures.

    Memory: at most C·N reservoir rows of D' values plus three int64 per row (class, key,
    stream position), i.e. C·N·(4·D' + 24) bytes for float32 features (module docstring), with
    N = ``settings.max_samples_per_class`` and D' = F, or D after a random projection.

    Args:
        num_classes: C.
        in_channels: F, the feature width.
        settings: fitting settings.
        ignore_index: label of pixels to skip.

    Example:
        >>> fitter = PosthocFitter(3, 8, PosthocSettings(num_components=1))
        >>> fitter.update(torch.randn(100, 8), torch.randint(0, 3, (100,)))
        >>> head = fitter.fit()
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        settings: PosthocSettings | None = None,
        *,
        ignore_index: int = 255,
    ) -> None:
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.settings = settings if settings is not None else PosthocSettings()
        self.ignore_index = ignore_index
        s = self.settings
        if (
            s.projection != "none"
            and s.projection_dim is not None
            and s.projection_dim > in_channels
        ):
            raise ValueError(
                f"projection_dim must be <= in_channels={in_channels}, got {s.projection_dim}"
            )
        self._projection = (
            _random_projection(in_channels, s.projection_dim, s.seed)
            if s.projection == "random" and s.projection_dim is not None
            else None
        )
        self.pixels_seen = 0
        self.pixel_counts = torch.zeros(num_classes, dtype=torch.int64)
        self._x: Tensor | None = None  # (R, D') stored rows
        self._cls = torch.zeros(0, dtype=torch.int64)
        self._key = torch.zeros(0, dtype=torch.int64)
        self._pos = torch.zeros(0, dtype=torch.int64)

    @property
    def reservoir_bytes(self) -> int:
        """Bytes held by the reservoir now."""
        rows = 0 if self._x is None else self._x.numel() * self._x.element_size()
        return rows + 3 * 8 * int(self._cls.shape[0])

    def _store(self, x: Tensor) -> Tensor:
        """What the reservoir keeps of (N, F) features: normalised and randomly projected."""
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        if self.settings.normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        if self._projection is not None:
            x = x @ self._projection.to(x)
        return x

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add a batch of labelled pixels.

        Args:
            features: (N, F) float, finite.
            labels: (N,) integer class ids in [0, C) or ``ignore_index``.

        Raises:
            ValueError: on a wrong shape or dtype, non-finite features, or labels outside
                [0, C) ∪ {ignore_index}.
        """
        _check_float_rows("features", features, self.in_channels)
        n = features.shape[0]
        if (
            not isinstance(labels, Tensor)
            or labels.is_floating_point()
            or labels.dtype == torch.bool
            or tuple(labels.shape) != (n,)
        ):
            raise ValueError(
                f"labels must be an integer tensor of shape ({n},), got "
                + (
                    f"{labels.dtype} {tuple(labels.shape)}"
                    if isinstance(labels, Tensor)
                    else type(labels).__name__
                )
            )
        labels = labels.to(features.device, torch.int64)
        valid = labels != self.ignore_index
        bad = valid & ((labels < 0) | (labels >= self.num_classes))
        if bool(bad.any()):
            values = torch.unique(labels[bad])[:10].tolist()
            raise ValueError(
                f"labels must be in [0, {self.num_classes}) or ignore_index="
                f"{self.ignore_index}, got {values}"
            )
        positions = torch.arange(self.pixels_seen, self.pixels_seen + n, device=features.device)
        self.pixels_seen += n
        cls = labels[valid]
        self.pixel_counts += torch.bincount(cls, minlength=self.num_classes).cpu()
        x = self._store(features[valid])
        pos = positions[valid]
        key = _stream_keys(self.settings.seed, pos)
        if self._x is not None:
            x = torch.cat([self._x.to(x), x])
            cls = torch.cat([self._cls.to(cls.device), cls])
            key = torch.cat([self._key.to(key.device), key])
            pos = torch.cat([self._pos.to(pos.device), pos])
        # The N smallest keys of each class: order by (class, key), rank within the class.
        by_key = torch.argsort(key, stable=True)
        order = by_key[torch.argsort(cls[by_key], stable=True)]
        sizes = torch.bincount(cls, minlength=self.num_classes)
        starts = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(order.shape[0], device=order.device) - starts[cls[order]]
        keep = order[rank < self.settings.max_samples_per_class]
        self._x, self._cls, self._key, self._pos = x[keep], cls[keep], key[keep], pos[keep]

    def update_map(self, features: Tensor, labels: Tensor) -> None:
        """Add a feature map and its labels (resized to the features by nearest neighbour).

        Args:
            features: (B, F, h, w) float.
            labels: (B, H, W) integer labels (any H, W; nearest-neighbour resize to (h, w),
                as the GMM head resizes its targets).
        """
        if features.ndim != 4 or labels.ndim != 3 or labels.shape[0] != features.shape[0]:
            raise ValueError(
                f"features (B, F, h, w) and labels (B, H, W) must share B, got "
                f"{tuple(features.shape)} and {tuple(labels.shape)}"
            )
        target = resize_target(labels, (int(features.shape[2]), int(features.shape[3])))
        self.update(
            rearrange(features, "b f h w -> (b h w) f"), rearrange(target, "b h w -> (b h w)")
        )

    def sample(self) -> tuple[Tensor, Tensor]:
        """The reservoir in stream order: (R, D') stored features and their (R,) classes."""
        if self._x is None:
            raise ValueError("no labelled pixel has been added: call update() first")
        order = torch.argsort(self._pos)
        return self._x[order], self._cls[order]

    def fit(self, info: dict[str, Any] | None = None) -> PosthocMixtures:
        """Fit one mixture per class on the reservoir.

        The rows enter EM in stream order, so with every pixel in the reservoir the fit equals
        ``GaussianMixture(...).fit_grouped`` on the concatenated labelled features.

        Args:
            info: metadata stored with the head.

        Returns:
            The fitted :class:`PosthocMixtures` (on the features' device).

        Raises:
            ValueError: if no class has M sampled pixels.

        Warns:
            UserWarning: naming the classes left without a mixture (fewer than M pixels).
            ConvergenceWarning: from EM, naming classes whose fit did not converge.
        """
        s = self.settings
        x, cls = self.sample()
        sample_counts = torch.bincount(cls, minlength=self.num_classes).cpu()
        fitted = torch.nonzero(sample_counts >= s.num_components)[:, 0]
        left_out = torch.nonzero(sample_counts < s.num_components)[:, 0].tolist()
        if fitted.numel() == 0:
            raise ValueError(
                f"no class has num_components={s.num_components} labelled pixels "
                f"(counts {sample_counts.tolist()}): add data or lower num_components"
            )
        if left_out:
            warnings.warn(
                f"post-hoc mixtures: class(es) {left_out} have fewer than num_components="
                f"{s.num_components} labelled pixels ({sample_counts[left_out].tolist()}); they "
                "get no mixture (log p(x | c) = -inf) and no prior",
                UserWarning,
                stacklevel=2,
            )
        centre = torch.zeros(self.in_channels, dtype=x.dtype, device=x.device)
        projection = None if self._projection is None else self._projection.to(x)
        if s.projection == "pca" and s.projection_dim is not None:
            mean, directions = _pca_projection(x, s.projection_dim)
            centre, projection = mean.to(x), directions.to(x)
            x = (x - centre) @ projection
        group_of = torch.full((self.num_classes,), -1, dtype=torch.int64)
        group_of[fitted] = torch.arange(fitted.numel())
        groups = group_of.to(cls.device)[cls]
        rows = groups >= 0
        # the offline estimator (and the scikit-learn it may import) only when fitting
        from gmmseg.em.gaussian_mixture import GaussianMixture

        gm = GaussianMixture(
            s.num_components,
            covariance_type=s.covariance_type,
            reg_covar=s.reg_covar,
            max_iter=s.max_iter,
            n_init=s.n_init,
            random_state=s.seed,
        ).fit_grouped(x[rows], groups[rows], int(fitted.numel()))
        counts = self.pixel_counts[fitted].to(torch.float64)
        log_priors = torch.log(counts / counts.sum()).to(x)
        return PosthocMixtures(
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            settings=s,
            classes=fitted.to(x.device),
            log_priors=log_priors,
            weights=gm.weights_,
            means=gm.means_,
            precisions_cholesky=gm.precisions_cholesky_,
            centre=centre,
            projection=projection,
            pixel_counts=self.pixel_counts.clone(),
            sample_counts=sample_counts,
            info=dict(info or {}),
        )
