"""Gaussian and Gaussian-mixture log-densities, and sampling.

Covariances follow scikit-learn's conventions (K components, D dimensions):

| ``covariance_type`` | ``covariances`` shape | meaning                                   |
| ------------------- | --------------------- | ----------------------------------------- |
| ``"full"``          | (K, D, D)             | one full covariance matrix per component  |
| ``"tied"``          | (D, D)                | one full covariance shared by all         |
| ``"diag"``          | (K, D)                | per-component variances (not std devs)    |
| ``"spherical"``     | (K,)                  | one variance per component                |

``"full"`` and ``"tied"`` go through the Cholesky factor of the precision matrix, as scikit-learn
does. ``"diag"`` and ``"spherical"`` use one matrix product per chunk of rows,

    log N(x | μ, σ²) = −½ ([x², x] · [σ⁻²; −2μσ⁻²] + Σ μ²σ⁻² + Σ log σ² + D log 2π),

after shifting ``x`` and ``μ`` by the mean of the component means, which removes the catastrophic
cancellation of the expanded quadratic when the data sit far from the origin. This is the path the
GMMSeg head uses (see the algorithm page of the documentation): it never materialises an (N, K, D)
tensor. It is the library's only diagonal log-density: the head and EM both call it.

All functions compute in the promoted floating dtype of their inputs, follow the input's device,
and run in at least float32 even under autocast (half-precision inputs are upcast).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = [
    "CovarianceType",
    "all_finite",
    "diag_log_prob_from_features",
    "gaussian_log_prob",
    "log_prob_from_precision_cholesky",
    "mixture_log_prob",
    "precision_cholesky",
    "sample_mixture",
]

CovarianceType = Literal["full", "tied", "diag", "spherical"]
_COVARIANCE_TYPES: tuple[str, ...] = get_args(CovarianceType)

#: Default budget, in elements, of the temporary buffer of one chunk (64 MiB in float32).
_CHUNK_ELEMENTS = 1 << 24


def _check_covariance_type(covariance_type: str) -> None:
    if covariance_type not in _COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {_COVARIANCE_TYPES}, got {covariance_type!r}"
        )


def all_finite(t: Tensor) -> bool:
    """Whether every element of ``t`` is finite (no NaN/Inf).

    Args:
        t: a floating-point tensor of any shape (an empty one counts as finite).

    Returns:
        ``bool(torch.isfinite(t).all())``.
    """
    return bool(torch.isfinite(t).all())


def _check_finite(name: str, t: Tensor) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/Inf value(s)")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def _expected_cov_shape(covariance_type: str, k: int, d: int) -> tuple[int, ...]:
    return {
        "full": (k, d, d),
        "tied": (d, d),
        "diag": (k, d),
        "spherical": (k,),
    }[covariance_type]


def _validate_params(means: Tensor, covariances: Tensor, covariance_type: str) -> None:
    _check_covariance_type(covariance_type)
    if means.ndim != 2:
        raise ValueError(f"means must have shape (K, D), got shape {tuple(means.shape)}")
    _check_finite("means", means)
    k, d = means.shape
    expected = _expected_cov_shape(covariance_type, k, d)
    if tuple(covariances.shape) != expected:
        raise ValueError(
            f"covariances for covariance_type={covariance_type!r} with K={k}, D={d} must have "
            f"shape {expected}, got {tuple(covariances.shape)}"
        )
    _check_finite("covariances", covariances)


def _validate_x(x: Tensor, d: int) -> None:
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape (N, D) with D={d}, got shape {tuple(x.shape)}")
    _check_finite("x", x)


def precision_cholesky(covariances: Tensor, covariance_type: CovarianceType) -> Tensor:
    """Cholesky factor of the precision matrices, as scikit-learn parameterises them.

    For ``"full"``/``"tied"`` the factor ``P`` is upper-triangular with ``P Pᵀ = Σ⁻¹``; for
    ``"diag"``/``"spherical"`` it is ``1/σ`` elementwise.

    Args:
        covariances: (K, D, D), (D, D), (K, D) or (K,) float, see the module table.
        covariance_type: one of ``"full"``, ``"tied"``, ``"diag"``, ``"spherical"``.

    Returns:
        Tensor of the same shape as ``covariances``.

    Raises:
        ValueError: if a covariance is not positive definite (the message names the component)
            or contains NaN/Inf.

    Example:
        >>> precision_cholesky(torch.tensor([4.0, 0.25]), "spherical")
        tensor([0.5000, 2.0000])
    """
    _check_covariance_type(covariance_type)
    _check_finite("covariances", covariances)
    if covariance_type in ("diag", "spherical"):
        bad = covariances <= 0
        if bool(bad.any()):
            idx = torch.nonzero(bad)[0].tolist()
            raise ValueError(
                f"covariances must be positive for covariance_type={covariance_type!r}: "
                f"component {idx[0]} has variance {covariances[tuple(idx)].item():.6g}"
                + (f" in dimension {idx[1]}" if len(idx) > 1 else "")
                + "; increase the variance floor (reg_covar) or rescale the data"
            )
        return torch.rsqrt(covariances)
    ndim = 3 if covariance_type == "full" else 2
    if covariances.ndim != ndim or covariances.shape[-1] != covariances.shape[-2]:
        expected = "(K, D, D)" if covariance_type == "full" else "(D, D)"
        raise ValueError(
            f"covariances for covariance_type={covariance_type!r} must have shape {expected}, "
            f"got shape {tuple(covariances.shape)}"
        )
    mats = covariances if covariances.ndim == 3 else covariances.unsqueeze(0)
    what = "component {}" if covariance_type == "full" else "the tied covariance"
    asym = (mats - mats.transpose(-1, -2)).abs().amax(dim=(-2, -1))
    scale = mats.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(mats.dtype).tiny)
    tol = 100 * torch.finfo(mats.dtype).eps
    if bool((asym > tol * scale).any()):
        k = int(torch.nonzero(asym > tol * scale)[0, 0])
        raise ValueError(
            f"covariances must be symmetric: {what.format(k)} has max |Σ − Σᵀ| = "
            f"{asym[k].item():.3g} (relative {asym[k].item() / scale[k].item():.3g})"
        )
    chol, info = torch.linalg.cholesky_ex(mats)
    if bool((info != 0).any()):
        k = int(torch.nonzero(info)[0, 0])
        min_eig = torch.linalg.eigvalsh(mats[k]).min().item()
        raise ValueError(
            f"covariances must be positive definite: {what.format(k)} is not (smallest "
            f"eigenvalue {min_eig:.3g}); increase reg_covar or rescale the data"
        )
    eye = torch.eye(mats.shape[-1], dtype=mats.dtype, device=mats.device).expand_as(mats)
    inv_lower: Tensor = torch.linalg.solve_triangular(chol, eye, upper=False)
    prec_chol = inv_lower.transpose(-1, -2)
    return prec_chol if covariances.ndim == 3 else prec_chol[0]


def _rows_per_chunk(chunk_size: int | None, n: int, width: int) -> int:
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        return chunk_size
    return max(1, min(max(n, 1), _CHUNK_ELEMENTS // max(width, 1)))


def diag_log_prob_from_features(features: Tensor, means: Tensor, precisions: Tensor) -> Tensor:
    """Diagonal log-densities from the features ``[x², x]`` of the samples: one matrix product.

    ``−½ Σ_d (x_d − μ_d)² / σ_d²`` expands into ``[x², x] · [−½σ⁻²; μσ⁻²]`` plus a bias per
    component, so the (N, K) block is one ``addmm``. The expansion is accurate when ``x`` and
    ``μ`` are near the origin relative to their spread: callers shift both by a common centre
    first (the density is translation invariant). :func:`log_prob_from_precision_cholesky`
    shifts by the mean of the means; an EM loop, whose data is fixed, shifts the data once by
    its mean and keeps the features for every iteration.

    Args:
        features: (N, 2D) ``[x², x]`` of the (shifted) samples.
        means: (K, D) means, shifted like the samples.
        precisions: (K, D) inverse variances 1/σ².

    Returns:
        (N, K) log-densities ``log N(x_n | μ_k, diag(σ_k²))``.
    """
    d = means.shape[1]
    weight = torch.cat([-0.5 * precisions, means * precisions], dim=1).T  # (2D, K)
    bias = -0.5 * (
        (means * means * precisions).sum(dim=1)
        - torch.log(precisions).sum(dim=1)
        + d * math.log(2 * math.pi)
    )
    return torch.addmm(bias, features, weight)


def _diag_log_prob(x: Tensor, means: Tensor, prec: Tensor, chunk_size: int | None) -> Tensor:
    """Diagonal log-density by chunks of rows (see :func:`diag_log_prob_from_features`).

    The data and the means are shifted by the mean of the means, which keeps the expanded
    square from cancelling when the data sit far from the origin.
    """
    center = means.mean(dim=0)
    rows = _rows_per_chunk(chunk_size, x.shape[0], 2 * x.shape[1])
    parts = []
    for start in range(0, x.shape[0], rows):
        xc = x[start : start + rows] - center
        features = torch.cat([xc * xc, xc], dim=1)
        parts.append(diag_log_prob_from_features(features, means - center, prec))
    if not parts:
        return x.new_empty((0, means.shape[0]))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _full_log_prob(
    x: Tensor, means: Tensor, prec_chol: Tensor, tied: bool, chunk_size: int | None
) -> Tensor:
    n, d = x.shape
    k = means.shape[0]
    # Shift by the mean of the means (the density is translation invariant): x·P and μ·P are
    # then small and their difference keeps its digits in float32.
    center = means.mean(dim=0)
    means = means - center
    if tied:
        log_det = torch.log(torch.diagonal(prec_chol)).sum().expand(k)
        mu_p = means @ prec_chol  # (K, D)
    else:
        log_det = torch.log(torch.diagonal(prec_chol, dim1=-2, dim2=-1)).sum(dim=-1)
        mu_p = torch.einsum("kd,kde->ke", means, prec_chol)
    rows = _rows_per_chunk(chunk_size, n, k * d)
    parts = []
    for start in range(0, n, rows):
        xs = x[start : start + rows] - center
        y = (xs @ prec_chol).unsqueeze(1) if tied else torch.einsum("nd,kde->nke", xs, prec_chol)
        y = y - mu_p
        parts.append(-0.5 * (d * math.log(2 * math.pi) + (y * y).sum(dim=-1)) + log_det)
    if not parts:
        return x.new_empty((0, k))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def log_prob_from_precision_cholesky(
    x: Tensor,
    means: Tensor,
    precisions_cholesky: Tensor,
    covariance_type: CovarianceType,
    *,
    chunk_size: int | None = None,
    check_finite: bool = True,
) -> Tensor:
    """Per-component Gaussian log-densities from Cholesky factors of the precisions.

    This is the inner routine of :func:`gaussian_log_prob` and of EM; it does not validate
    positive-definiteness (the factor is assumed to come from :func:`precision_cholesky`).

    Args:
        x: (N, D) float samples.
        means: (K, D) float component means.
        precisions_cholesky: factor of shape (K, D, D), (D, D), (K, D) or (K,) by type.
        covariance_type: one of ``"full"``, ``"tied"``, ``"diag"``, ``"spherical"``.
        chunk_size: rows of ``x`` per chunk; ``None`` picks a chunk whose temporary buffer stays
            under 2²⁴ elements (64 MiB in float32). The temporary is (chunk, 2D) for
            diag/spherical and (chunk, K, D) for full/tied.
        check_finite: scan ``x`` for NaN/Inf (one pass over the data). Callers that already
            validated ``x`` (an EM loop, a head whose input was checked) pass ``False``.

    Returns:
        (N, K) log-densities log N(x_n | μ_k, Σ_k).

    Raises:
        ValueError: on shape mismatch, non-finite input or bad ``chunk_size``.
    """
    _check_covariance_type(covariance_type)
    if means.ndim != 2:
        raise ValueError(f"means must have shape (K, D), got shape {tuple(means.shape)}")
    k, d = means.shape
    expected = _expected_cov_shape(covariance_type, k, d)
    if tuple(precisions_cholesky.shape) != expected:
        raise ValueError(
            f"precisions_cholesky for covariance_type={covariance_type!r} with K={k}, D={d} "
            f"must have shape {expected}, got {tuple(precisions_cholesky.shape)}"
        )
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape (N, D) with D={d}, got shape {tuple(x.shape)}")
    if check_finite:
        _check_finite("x", x)
    dtype = _compute_dtype(x, means, precisions_cholesky)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x_, mu_, pc_ = x.to(dtype), means.to(dtype), precisions_cholesky.to(dtype)
        if covariance_type == "diag":
            return _diag_log_prob(x_, mu_, pc_ * pc_, chunk_size)
        if covariance_type == "spherical":
            return _diag_log_prob(x_, mu_, (pc_ * pc_).unsqueeze(1).expand(k, d), chunk_size)
        return _full_log_prob(x_, mu_, pc_, covariance_type == "tied", chunk_size)


def gaussian_log_prob(
    x: Tensor,
    means: Tensor,
    covariances: Tensor,
    covariance_type: CovarianceType = "diag",
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Log-density of every sample under every Gaussian component.

    Args:
        x: (N, D) float samples.
        means: (K, D) float component means.
        covariances: (K, D, D) full, (D, D) tied, (K, D) diag variances or (K,) spherical
            variances.
        covariance_type: one of ``"full"``, ``"tied"``, ``"diag"``, ``"spherical"``.
        chunk_size: rows of ``x`` processed at once (bounds the temporary memory, see
            :func:`log_prob_from_precision_cholesky`); ``None`` chooses automatically.

    Returns:
        (N, K) tensor ``log N(x_n | μ_k, Σ_k)`` in the promoted dtype of the inputs (at least
        float32).

    Raises:
        ValueError: on wrong shapes, NaN/Inf inputs, an unknown ``covariance_type`` or a
            covariance that is not positive definite (the message names the component).

    Example:
        >>> x = torch.zeros(2, 3)
        >>> gaussian_log_prob(x, torch.zeros(1, 3), torch.ones(1, 3), "diag").shape
        torch.Size([2, 1])
    """
    _validate_params(means, covariances, covariance_type)
    _validate_x(x, means.shape[1])
    dtype = _compute_dtype(x, means, covariances)
    prec_chol = precision_cholesky(covariances.to(dtype), covariance_type)
    return log_prob_from_precision_cholesky(
        x, means, prec_chol, covariance_type, chunk_size=chunk_size, check_finite=False
    )


def _check_log_weights(log_weights: Tensor, k: int) -> None:
    if log_weights.shape != (k,):
        raise ValueError(
            f"log_weights must have shape (K,) = ({k},), got {tuple(log_weights.shape)}"
        )
    if not log_weights.is_floating_point():
        raise ValueError(f"log_weights must be floating point, got dtype {log_weights.dtype}")
    bad = torch.isnan(log_weights) | (log_weights == math.inf)
    if bool(bad.any()):
        raise ValueError(
            f"log_weights must not contain NaN or +Inf, got {log_weights[bad].tolist()} at "
            f"components {torch.nonzero(bad)[:, 0].tolist()}"
        )
    total = float(torch.logsumexp(log_weights.double(), dim=0))
    if not abs(total) <= 1e-4:
        raise ValueError(
            f"log_weights must be normalised (logsumexp(log_weights) = 0), got {total:.6g}; "
            "pass torch.log_softmax(w, 0) for unnormalised weights"
        )


def mixture_log_prob(
    x: Tensor,
    means: Tensor,
    covariances: Tensor,
    log_weights: Tensor,
    covariance_type: CovarianceType = "diag",
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Log-density of a Gaussian mixture, ``log Σ_k w_k N(x | μ_k, Σ_k)``.

    Args:
        x: (N, D) float samples.
        means: (K, D) float component means.
        covariances: covariances in the layout of ``covariance_type`` (see module table).
        log_weights: (K,) normalised log mixture weights (``-inf`` allowed for empty components).
        covariance_type: one of ``"full"``, ``"tied"``, ``"diag"``, ``"spherical"``.
        chunk_size: see :func:`gaussian_log_prob`.

    Returns:
        (N,) log-densities.

    Raises:
        ValueError: as :func:`gaussian_log_prob`, or if ``log_weights`` has the wrong shape,
            contains NaN/+Inf or is not normalised.
    """
    _validate_params(means, covariances, covariance_type)
    _check_log_weights(log_weights, means.shape[0])
    comp = gaussian_log_prob(x, means, covariances, covariance_type, chunk_size=chunk_size)
    return torch.logsumexp(comp + log_weights.to(comp.dtype), dim=1)


def sample_mixture(
    n: int,
    means: Tensor,
    covariances: Tensor,
    log_weights: Tensor,
    covariance_type: CovarianceType = "diag",
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw samples from a Gaussian mixture.

    Args:
        n: number of samples (>= 0).
        means: (K, D) float component means.
        covariances: covariances in the layout of ``covariance_type`` (see module table).
        log_weights: (K,) normalised log mixture weights.
        covariance_type: one of ``"full"``, ``"tied"``, ``"diag"``, ``"spherical"``.
        generator: random generator on the device of ``means`` (for reproducibility).

    Returns:
        ``(samples, components)``: (n, D) samples in the promoted dtype of ``means`` and
        ``covariances`` (at least float32) and (n,) int64 indices
        of the component each sample was drawn from.

    Raises:
        ValueError: on bad ``n``, shapes, non-finite or non-positive-definite parameters.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, k = sample_mixture(5, torch.zeros(2, 3), torch.ones(2), torch.log(
        ...     torch.tensor([0.5, 0.5])), "spherical", generator=g)
        >>> x.shape, k.shape
        (torch.Size([5, 3]), torch.Size([5]))
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    _validate_params(means, covariances, covariance_type)
    k, d = means.shape
    _check_log_weights(log_weights, k)
    precision_cholesky(covariances, covariance_type)  # validates positive-definiteness
    dtype = _compute_dtype(means, covariances)
    probs = torch.softmax(log_weights.to(torch.float64), dim=0)
    if n == 0:
        components = torch.zeros(0, dtype=torch.int64, device=means.device)
    else:
        components = torch.multinomial(probs, n, replacement=True, generator=generator)
        components = components.to(means.device)
    z = torch.randn((n, d), generator=generator, dtype=dtype, device=means.device)
    mu = means.to(dtype)[components]
    cov = covariances.to(dtype)
    if covariance_type == "diag":
        return mu + z * cov.sqrt()[components], components
    if covariance_type == "spherical":
        return mu + z * cov.sqrt()[components].unsqueeze(1), components
    if covariance_type == "tied":
        return mu + z @ torch.linalg.cholesky(cov).T, components
    chol = torch.linalg.cholesky(cov)  # (K, D, D)
    out = torch.empty_like(mu)
    rows = _rows_per_chunk(None, n, d * d)
    for start in range(0, n, rows):
        sl = slice(start, start + rows)
        out[sl] = mu[sl] + torch.bmm(chol[components[sl]], z[sl].unsqueeze(-1)).squeeze(-1)
    return out, components
