"""Embedding fidelity of the class mixtures: FID, KID and precision/recall per class.

For each class c, samples drawn from the learned mixture p(x | c) are compared with held-out real
pixel embeddings of class c by [torch-fidelity](https://github.com/toshas/torch-fidelity),
through a registered identity feature extractor (``"gmmseg-identity"``): the embeddings *are* the
features, so no network weights are needed or downloaded. Needs the ``fidelity`` extra
(``pip install gmmseg[fidelity]``); torch-fidelity (and torchvision, which it imports) is only
imported when a function of this module is called, never by ``import gmmseg.metrics``.

Protocol of :func:`mixture_fidelity`, per class: the class's real embeddings are shuffled (and
capped at ``max_real_per_class``) and split into a held half A (⌊n/2⌋) and a reference half B
(⌈n/2⌉). Two rows are computed against the same reference B with the same sample sizes:

- ``mixture``: |A| samples of the class mixture vs B;
- ``noise_floor``: the real half A vs B, i.e. what a perfect model would score at this sample
  size. A mixture row within the noise floor is as good as the data can tell.

Caveats (read before quoting a number):

- **Sphere vs R^D.** gmmseg's embeddings are L2-normalised (they lie on the unit sphere), while
  each class density is a mixture of Gaussians in R^D. Its samples have squared norm about
  ‖μ‖² + Σ_d σ_d² (with unit means and the M-step floor σ² ≥ 0.01 that is ≥ 1.64 for D = 64), so
  they lie off the sphere and every metric measures that mismatch as well as the fit of the
  directions. ``normalize_samples=True`` projects the samples onto the sphere to measure the
  directional fit alone; say which one is reported.
- **FID uses two moments only.** It fits one Gaussian to each set (mean and covariance) and is
  blind to everything else: a multi-modal mixture and a single Gaussian with the same mean and
  covariance have FID 0. KID (cubic polynomial kernel, moments up to order 3) and the k-NN
  precision/recall complement it.
- **Sample sizes.** The FID estimate is biased upward by a term that grows with D and shrinks
  like 1/n; with n ≤ D the sample covariance is singular and FID is hardly meaningful. Precision
  and recall depend on n through the k-NN radii. Compare a class's mixture row with its noise
  floor (same sizes, same reference), not with other classes or other papers.
- **KID subsets.** KID is the unbiased MMD² estimate (it can be slightly negative), averaged over
  ``kid_subsets`` random subsets of size min(``kid_subset_size``, |A|) (reported per class);
  ``kid_std`` is the spread over subsets, not the standard error of the mean. Small subsets give
  high variance.
- **Held-out data.** Pass embeddings that were neither used to fit the mixture nor stored in its
  memory bank, otherwise the numbers are optimistic.

Everything runs on the CPU in float64 (torch-fidelity computes in NumPy / CPU torch); inputs on
other devices are copied. Results are deterministic given ``generator``.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, TypedDict

import torch
from torch import Tensor
from torch.utils.data import Dataset

from gmmseg.metrics._validation import check_positive_int, describe_values, warn_undefined

__all__ = [
    "FEATURE_EXTRACTOR",
    "FidelityResult",
    "FidelityScores",
    "FidelityTable",
    "fidelity_scores",
    "mixture_fidelity",
]

FEATURE_EXTRACTOR = "gmmseg-identity"
"""Name under which the identity feature extractor is registered in torch-fidelity."""
_FEATURE = "embedding"
_METRICS = ("fid", "kid_mean", "kid_std", "precision", "recall", "f_score")
_KID_DEFAULT_SUBSET = 1000


class FidelityScores(TypedDict):
    """Output of :func:`fidelity_scores` for one pair of sets.

    Keys:
        fid: Fréchet distance between Gaussians fitted to the two sets (≥ 0 up to round-off).
        kid_mean: mean over subsets of the unbiased MMD² with kernel (x·y/D + 1)³.
        kid_std: standard deviation of the MMD² over the subsets.
        precision: fraction of ``generated`` inside the k-NN balls of ``real``.
        recall: fraction of ``real`` inside the k-NN balls of ``generated``.
        f_score: harmonic mean of precision and recall.
        num_generated: number of generated vectors.
        num_real: number of real vectors.
        kid_subset_size: the KID subset size used (0 with ``kid=False``).
    """

    fid: float
    kid_mean: float
    kid_std: float
    precision: float
    recall: float
    f_score: float
    num_generated: int
    num_real: int
    kid_subset_size: int


class FidelityTable(TypedDict):
    """One row per class: (C,) float64 tensors, NaN for classes that were not evaluated.

    Keys:
        fid: (C,) FID.
        kid_mean: (C,) mean KID over subsets.
        kid_std: (C,) KID standard deviation over subsets.
        precision: (C,) k-NN precision.
        recall: (C,) k-NN recall.
        f_score: (C,) harmonic mean of precision and recall.
    """

    fid: Tensor
    kid_mean: Tensor
    kid_std: Tensor
    precision: Tensor
    recall: Tensor
    f_score: Tensor


class FidelityResult(TypedDict):
    """Output of :func:`mixture_fidelity`.

    Keys:
        mixture: :class:`FidelityTable` of mixture samples (|A| per class) vs the real half B.
        noise_floor: :class:`FidelityTable` of the real half A vs the real half B.
        evaluated: (C,) bool, classes with enough real embeddings (the others are NaN).
        num_real: (C,) int64, valid real embeddings of each class (before the cap).
        num_samples: (C,) int64, |A| = number of mixture samples and of held real embeddings.
        num_reference: (C,) int64, |B| = size of the real reference half.
        kid_subset_size: (C,) int64, KID subset size used (0 where not evaluated or no KID).
        normalize_samples: whether the samples were projected onto the unit sphere.
    """

    mixture: FidelityTable
    noise_floor: FidelityTable
    evaluated: Tensor
    num_real: Tensor
    num_samples: Tensor
    num_reference: Tensor
    kid_subset_size: Tensor
    normalize_samples: bool


# ------------------------------------------------------------------ torch-fidelity boundary


def _torch_fidelity() -> Any:
    """Import torch-fidelity (typed ``Any``: it ships no annotations) or explain how to get it."""
    try:
        return importlib.import_module("torch_fidelity")
    except ImportError as err:
        raise ImportError(
            "gmmseg.metrics.fidelity needs torch-fidelity (and torchvision, which it imports): "
            "install the `fidelity` extra, `pip install gmmseg[fidelity]` "
            f"(import failed with: {err})"
        ) from err


def _register(tf: Any) -> None:
    """Register the identity feature extractor once per process (idempotent)."""
    registry: Any = importlib.import_module("torch_fidelity.registry")
    if FEATURE_EXTRACTOR in registry.FEATURE_EXTRACTORS_REGISTRY:
        return
    base: Any = tf.FeatureExtractorBase

    def __init__(self: Any, name: str, features_list: Any, **kwargs: Any) -> None:
        # torch-fidelity passes every calculate_metrics keyword argument; none is needed here.
        base.__init__(self, name, features_list)

    def forward(self: Any, x: Tensor) -> tuple[Tensor]:
        return (x,)

    def provided_features() -> tuple[str]:
        return (_FEATURE,)

    def default_feature(metric: str) -> str:
        return _FEATURE

    def can_be_compiled() -> bool:
        return False

    def dummy_input() -> Tensor:
        raise NotImplementedError("the identity feature extractor is never compiled")

    # Built with type(): torch-fidelity is untyped, and mypy rejects subclassing an Any base.
    cls = type(
        "IdentityFeatureExtractor",
        (base,),
        {
            "__doc__": "Features = the input vectors (B, D) themselves; no weights.",
            "__init__": __init__,
            "forward": forward,
            "get_provided_features_list": staticmethod(provided_features),
            "get_default_feature_layer_for_metric": staticmethod(default_feature),
            "can_be_compiled": staticmethod(can_be_compiled),
            "get_dummy_input_for_compile": staticmethod(dummy_input),
        },
    )
    tf.register_feature_extractor(FEATURE_EXTRACTOR, cls)


class _Rows(Dataset[Tensor]):
    """The rows of an (N, D) tensor as a dataset of (D,) feature vectors."""

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> Tensor:
        return self.x[i]


def _calculate(
    tf: Any,
    generated: Tensor,
    real: Tensor,
    kid_subsets: int,
    kid_subset_size: int,
    prc_neighborhood: int,
    seed: int,
    kid: bool,
    prc: bool,
) -> FidelityScores:
    """One torch-fidelity call on two validated (n, D) float64 CPU tensors."""
    out: dict[str, float] = tf.calculate_metrics(
        input1=_Rows(generated),
        input2=_Rows(real),
        feature_extractor=FEATURE_EXTRACTOR,
        fid=True,
        kid=kid,
        prc=prc,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        prc_neighborhood=prc_neighborhood,
        batch_size=max(int(generated.shape[0]), int(real.shape[0])),
        cuda=False,
        cache=False,
        save_cpu_ram=True,  # no DataLoader workers; blockwise k-NN distances
        rng_seed=seed,
        verbose=False,
    )
    return FidelityScores(
        fid=float(out[tf.KEY_METRIC_FID]),
        kid_mean=float(out.get(tf.KEY_METRIC_KID_MEAN, math.nan)),
        kid_std=float(out.get(tf.KEY_METRIC_KID_STD, math.nan)),
        precision=float(out.get(tf.KEY_METRIC_PRECISION, math.nan)),
        recall=float(out.get(tf.KEY_METRIC_RECALL, math.nan)),
        f_score=float(out.get(tf.KEY_METRIC_F_SCORE, math.nan)),
        num_generated=int(generated.shape[0]),
        num_real=int(real.shape[0]),
        kid_subset_size=kid_subset_size if kid else 0,
    )


# ------------------------------------------------------------------------------ validation


def _check_tensor(name: str, x: object, ndim: int, shape: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {shape}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape}, got {x.ndim}-D shape {tuple(x.shape)}")
    return x


def _check_float_finite(name: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(
            f"{name} must be finite, got {int(bad.sum())} non-finite value(s): "
            f"{describe_values(x[bad])}"
        )


def _check_vectors(name: str, x: object, min_rows: int) -> Tensor:
    t = _check_tensor(name, x, 2, "(N, D)")
    _check_float_finite(name, t)
    if t.shape[0] < min_rows or t.shape[1] < 1:
        raise ValueError(
            f"{name} must have at least {min_rows} rows and 1 column, got shape {tuple(t.shape)}"
        )
    return t.detach()


def _check_generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError(
            f"generator must be a CPU torch.Generator or None (sampling runs on the CPU), got "
            f"{generator!r}"
        )
    return generator


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def _check_mixture(
    means: object, scales: object, log_weights: object
) -> tuple[Tensor, Tensor, Tensor]:
    mu = _check_tensor("means", means, 3, "(C, M, D)")
    sd = _check_tensor("scales", scales, 3, "(C, M, D)")
    if tuple(sd.shape) != tuple(mu.shape):
        raise ValueError(
            f"scales must have the shape of means (C, M, D) = {tuple(mu.shape)}, "
            f"got {tuple(sd.shape)}"
        )
    if 0 in tuple(mu.shape):
        raise ValueError(f"means must have C, M, D >= 1, got shape {tuple(mu.shape)}")
    _check_float_finite("means", mu)
    _check_float_finite("scales", sd)
    if bool((sd <= 0).any()):
        raise ValueError(
            f"scales must be positive standard deviations, got {describe_values(sd[sd <= 0])}"
        )
    c, m, _ = mu.shape
    if log_weights is None:
        lw = torch.zeros(c, m, dtype=torch.float64)
    else:
        lw = _check_tensor("log_weights", log_weights, 2, "(C, M)")
        if tuple(lw.shape) != (c, m):
            raise ValueError(
                f"log_weights must have shape (C, M) = {(c, m)}, got {tuple(lw.shape)}"
            )
        if not lw.is_floating_point():
            raise ValueError(f"log_weights must be a floating-point tensor, got dtype {lw.dtype}")
        if bool((torch.isnan(lw) | (lw == math.inf)).any()):
            raise ValueError(
                "log_weights must not contain NaN or +inf (-inf = weight 0 is allowed)"
            )
        dead = (lw == -math.inf).all(dim=1)
        if bool(dead.any()):
            raise ValueError(
                "every class needs a component with positive weight; log_weights is -inf for "
                f"all components of class(es) {torch.nonzero(dead).flatten().tolist()}"
            )
        lw = lw.detach().to("cpu", torch.float64)
    return mu.detach().to("cpu", torch.float64), sd.detach().to("cpu", torch.float64), lw


def _check_labels(labels: object, n: int, num_classes: int, ignore_index: int) -> Tensor:
    y = _check_tensor("labels", labels, 1, "(N,)")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class ids, got dtype {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(
            f"labels must have one entry per embedding, got labels {tuple(y.shape)} and "
            f"embeddings with {n} rows"
        )
    y = y.detach().cpu()
    bad = ((y < 0) | (y >= num_classes)) & (y != ignore_index)
    if bool(bad.any()):
        raise ValueError(
            f"labels must be in [0, {num_classes}) or ignore_index={ignore_index}, got "
            f"{describe_values(y[bad])}"
        )
    return y.to(torch.int64)


# ---------------------------------------------------------------------------------- public


def fidelity_scores(
    generated: Tensor,
    real: Tensor,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int | None = None,
    prc_neighborhood: int = 3,
    seed: int = 0,
    kid: bool = True,
    prc: bool = True,
) -> FidelityScores:
    """FID, KID and precision/recall between two sets of feature vectors, by torch-fidelity.

    The vectors are the features (identity extractor); they are compared in float64 on the CPU.

    Args:
        generated: (N1, D) float, finite; torch-fidelity's ``input1`` (the model's samples).
        real: (N2, D) float, finite; ``input2`` (the real data).
        kid_subsets: number of random KID subsets (≥ 1).
        kid_subset_size: KID subset size, ≤ min(N1, N2); None for min(1000, N1, N2).
        prc_neighborhood: k of the k-NN balls of precision/recall (≥ 1).
        seed: seed of the KID subset draws.
        kid: compute KID (else its entries are NaN).
        prc: compute precision/recall (else NaN); it costs O(N1·N2 + N1² + N2²) distances.

    Returns:
        :class:`FidelityScores`.

    Raises:
        ImportError: if torch-fidelity is not installed (the ``fidelity`` extra).
        ValueError: on a non-float, non-finite or non-2-D input, different D, fewer than
            ``prc_neighborhood + 1`` (and 2) vectors in a set, or a bad subset size.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g)
        >>> s = fidelity_scores(a, b, kid_subsets=10)
        >>> s["fid"] < 0.2
        True
    """
    k = check_positive_int("prc_neighborhood", prc_neighborhood)
    check_positive_int("kid_subsets", kid_subsets)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    need = max(2, k + 1)
    gen = _check_vectors("generated", generated, need).to("cpu", torch.float64)
    ref = _check_vectors("real", real, need).to("cpu", torch.float64)
    if gen.shape[1] != ref.shape[1]:
        raise ValueError(
            f"generated and real must have the same dimension D, got generated "
            f"{tuple(gen.shape)} and real {tuple(ref.shape)}"
        )
    smallest = min(gen.shape[0], ref.shape[0])
    if kid_subset_size is None:
        size = min(_KID_DEFAULT_SUBSET, smallest)
    else:
        size = check_positive_int("kid_subset_size", kid_subset_size, minimum=2)
        if size > smallest:
            raise ValueError(f"kid_subset_size must be <= min(N1, N2) = {smallest}, got {size}")
    tf = _torch_fidelity()
    _register(tf)
    return _calculate(tf, gen, ref, kid_subsets, size, k, seed, kid, prc)


def _sample(
    means: Tensor, scales: Tensor, log_weights: Tensor, n: int, g: torch.Generator
) -> Tensor:
    """(n, D) samples of one class mixture: means, scales (M, D), log_weights (M,)."""
    probs = torch.softmax(log_weights, dim=0)
    comp = torch.multinomial(probs, n, replacement=True, generator=g)
    eps = torch.randn(n, means.shape[1], generator=g, dtype=torch.float64)
    return means[comp] + scales[comp] * eps


def _nan_table(num_classes: int) -> FidelityTable:
    def nan() -> Tensor:
        return torch.full((num_classes,), math.nan, dtype=torch.float64)

    return FidelityTable(
        fid=nan(), kid_mean=nan(), kid_std=nan(), precision=nan(), recall=nan(), f_score=nan()
    )


def _store(table: FidelityTable, c: int, scores: FidelityScores) -> None:
    for key in _METRICS:
        table[key][c] = scores[key]  # type: ignore[literal-required]


def mixture_fidelity(
    means: Tensor,
    scales: Tensor,
    embeddings: Tensor,
    labels: Tensor,
    log_weights: Tensor | None = None,
    *,
    ignore_index: int = 255,
    normalize_means: bool = True,
    normalize_samples: bool = False,
    max_real_per_class: int | None = 10_000,
    kid_subsets: int = 100,
    kid_subset_size: int | None = None,
    prc_neighborhood: int = 3,
    kid: bool = True,
    prc: bool = True,
    generator: torch.Generator | None = None,
) -> FidelityResult:
    """Per-class FID, KID and precision/recall of the class mixtures, with a real-vs-real floor.

    See the module documentation for the protocol (halves A and B) and the caveats.

    Args:
        means: (C, M, D) float component means (a ``GMMClassifier``'s ``means`` buffer).
        scales: (C, M, D) float positive standard deviations (its ``scales`` buffer).
        embeddings: (N, D) float held-out real pixel embeddings, finite.
        labels: (N,) integer class ids in [0, C) or ``ignore_index`` (those rows are not used).
        log_weights: (C, M) float log mixture weights, normalised or not (softmax per class;
            -inf = weight 0); None for uniform weights, as in GMMSeg.
        ignore_index: label of rows to leave out; must not be a class id.
        normalize_means: L2-normalise the means before sampling, as the classifier does before
            every use of its means (``docs/algorithm.md``).
        normalize_samples: project the samples onto the unit sphere (the directional fit only;
            see the caveats).
        max_real_per_class: use at most this many real embeddings per class (a random subset;
            precision/recall cost O(n²)); None for all.
        kid_subsets: number of random KID subsets per comparison.
        kid_subset_size: upper bound of the KID subset size; each class uses
            min(kid_subset_size, |A|) (default bound 1000), reported in the result.
        prc_neighborhood: k of the k-NN balls of precision/recall.
        kid: compute KID (else its rows are NaN).
        prc: compute precision/recall (else NaN); O(n²) distances per class.
        generator: CPU generator for the split, the samples and the KID subsets; None for a
            generator seeded with 0 (the result is deterministic either way).

    Returns:
        :class:`FidelityResult`: per-class (C,) rows ``mixture`` and ``noise_floor``. A class
        with fewer than 2·(``prc_neighborhood`` + 1) real embeddings is not evaluated (NaN, one
        :class:`~gmmseg.metrics.UndefinedMetricWarning` naming such classes).

    Raises:
        ImportError: if torch-fidelity is not installed (the ``fidelity`` extra).
        ValueError: on wrong ranks or shapes (``scales`` ≠ ``means`` shape, D of ``embeddings``
            ≠ D of ``means``, ``labels`` not (N,)), non-float or non-finite parameters or
            embeddings, non-positive scales, labels outside [0, C) ∪ {ignore_index}, or bad
            options.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> means, scales = torch.randn(2, 3, 8), torch.full((2, 3, 8), 0.1)
        >>> x, y = torch.randn(400, 8, generator=g), torch.arange(400) % 2
        >>> r = mixture_fidelity(means, scales, x, y, kid_subsets=5, generator=g)
        >>> mixture, floor = r["mixture"], r["noise_floor"]
        >>> mixture["fid"].shape, floor["fid"].shape
        (torch.Size([2]), torch.Size([2]))
    """
    mu, sd, lw = _check_mixture(means, scales, log_weights)
    num_classes, _, dim = mu.shape
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index must not be a class id in [0, {num_classes}), got {ignore_index}"
        )
    x = _check_vectors("embeddings", embeddings, 0)
    if x.shape[1] != dim:
        raise ValueError(
            f"embeddings must have D = {dim} columns like means (C, M, D) = {tuple(mu.shape)}, "
            f"got embeddings {tuple(x.shape)}"
        )
    y = _check_labels(labels, int(x.shape[0]), num_classes, ignore_index)
    k = check_positive_int("prc_neighborhood", prc_neighborhood)
    check_positive_int("kid_subsets", kid_subsets)
    bound = (
        _KID_DEFAULT_SUBSET
        if kid_subset_size is None
        else check_positive_int("kid_subset_size", kid_subset_size, minimum=2)
    )
    min_real = 2 * max(2, k + 1)
    if max_real_per_class is not None:
        check_positive_int("max_real_per_class", max_real_per_class, minimum=min_real)
    g = _check_generator(generator)
    tf = _torch_fidelity()
    _register(tf)

    if normalize_means:
        mu = torch.nn.functional.normalize(mu, dim=-1)
    # Row indices of each class, in pixel order: class c is by_class[start[c] : start[c + 1]].
    valid = torch.nonzero(y != ignore_index).flatten()
    by_class = valid[torch.argsort(y[valid], stable=True)]
    counts = torch.bincount(y[valid], minlength=num_classes)
    start = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).tolist()
    mixture, floor = _nan_table(num_classes), _nan_table(num_classes)
    num_samples = torch.zeros(num_classes, dtype=torch.int64)
    num_reference = torch.zeros(num_classes, dtype=torch.int64)
    subset = torch.zeros(num_classes, dtype=torch.int64)
    skipped: list[str] = []
    for c in range(num_classes):  # one torch-fidelity call pair per class
        n = int(counts[c])
        if n < min_real:
            skipped.append(f"{c} ({n})")
            continue
        order = torch.randperm(n, generator=g)
        if max_real_per_class is not None:
            order = order[:max_real_per_class]
        rows = by_class[start[c] : start[c + 1]][order]
        # Only the used rows are copied to the CPU in float64, never the whole (N, D) input.
        real = x[rows.to(x.device)].to("cpu", torch.float64)
        half = real.shape[0] // 2
        held, ref = real[:half], real[half:]
        samples = _sample(mu[c], sd[c], lw[c], int(held.shape[0]), g)
        if normalize_samples:
            samples = torch.nn.functional.normalize(samples, dim=-1)
        size = min(bound, int(held.shape[0]))
        seed = _seed(g)
        args = (kid_subsets, size, k, seed, kid, prc)
        _store(mixture, c, _calculate(tf, samples, ref, *args))
        _store(floor, c, _calculate(tf, held, ref, *args))
        num_samples[c], num_reference[c] = held.shape[0], ref.shape[0]
        subset[c] = size if kid else 0
    if skipped:
        warn_undefined(
            f"fidelity is NaN for {len(skipped)} class(es) with fewer than {min_real} real "
            f"embeddings (class (count)): {', '.join(skipped[:10])}"
            + (" ..." if len(skipped) > 10 else "")
        )
    return FidelityResult(
        mixture=mixture,
        noise_floor=floor,
        evaluated=num_samples > 0,
        num_real=counts,
        num_samples=num_samples,
        num_reference=num_reference,
        kid_subset_size=subset,
        normalize_samples=normalize_samples,
    )
