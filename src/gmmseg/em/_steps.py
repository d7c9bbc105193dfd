"""The formulas of EM for Gaussian mixtures, one small function each, as scikit-learn writes them.

Shapes (N samples, K components, D features):

| ``covariance_type`` | covariances / precisions / ``precisions_chol`` |
| ------------------- | ---------------------------------------------- |
| ``"full"``          | (K, D, D)                                      |
| ``"tied"``          | (D, D)                                         |
| ``"diag"``          | (K, D)                                         |
| ``"spherical"``     | (K,)                                           |

``resp`` is always (N, K) and already multiplied by the sample weights (``w_n · r_nk``), so
``nk = Σ_n resp_nk`` is the weighted count of a component. Variances and covariances are
*centred* estimates ``Σ r (x − μ)(x − μ)ᵀ / n_k``; see :func:`estimate_gaussian_covariances_diag`
for why a one-pass ``E[x²] − μ²`` is not enough in float32.

This module is private: its names may change without notice.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmmseg.distributions import (
    CovarianceType,
    diag_log_prob_from_features,
    log_prob_from_precision_cholesky,
    precision_cholesky,
)

__all__ = [
    "compute_precision_cholesky",
    "covariances_from_cholesky",
    "diag_features",
    "estimate_gaussian_covariances_diag",
    "estimate_gaussian_covariances_full",
    "estimate_gaussian_covariances_tied",
    "estimate_gaussian_parameters",
    "estimate_log_prob_resp",
    "n_parameters",
    "precision_cholesky_from_precisions",
    "precisions_from_cholesky",
    "responsibilities",
]

#: The GEMM form of the diagonal/tied M-step is trusted while eps · E[x²] / Var stays below this.
CANCELLATION_RTOL = 1e-4
#: Rows per product in the exact variance sums (partial sums are added in float64).
EXACT_ROWS = 4096


# ---------------------------------------------------------------------------------------------
# E-step


def diag_features(X: Tensor) -> Tensor:
    """(N, 2D) ``[x², x]``: what the diagonal E-step and M-step read of the samples.

    The diagonal log-density is one matrix product with these features and the M-step's
    moments ``Σ r x²`` and ``Σ r x`` are one more, so a fit computes them once, not at every
    iteration. Pass samples centred near their mean (the expanded square then keeps its digits).
    """
    return torch.cat([X * X, X], dim=1)


def _log_floor(dtype: torch.dtype) -> float:
    """A log-value whose exponential is far above the subnormal range of ``dtype``.

    ``exp`` of anything below ``log(tiny)`` produces subnormal numbers, whose arithmetic is many
    times slower on x86 CPUs, and EM routinely meets such responsibilities (log-resp ≈ −90 in
    float32 for well-separated components). Clamping there changes a responsibility by less
    than ``e^(log tiny + 30)`` (1e-25 in float32, 1e-295 in float64), far below the ``10·eps``
    added to every n_k.
    """
    return math.log(torch.finfo(dtype).tiny) + 30.0


def _logsumexp_rows(weighted: Tensor) -> Tensor:
    """(N, K) -> (N,) ``log Σ_k exp``, the exponentials clamped as in :func:`_log_floor`."""
    top = weighted.amax(dim=1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    shifted = (weighted - top).clamp_min(_log_floor(weighted.dtype))
    return torch.log(torch.exp(shifted).sum(dim=1)) + top[:, 0]


def responsibilities(log_resp: Tensor) -> Tensor:
    """(N, K) ``exp(log_resp)``, clamped as in :func:`_log_floor`."""
    return torch.exp(log_resp.clamp_min(_log_floor(log_resp.dtype)))


def estimate_log_prob_resp(
    X: Tensor,
    weights: Tensor,
    means: Tensor,
    precisions_chol: Tensor,
    covariance_type: CovarianceType,
    chunk_size: int | None = None,
    features: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """E-step: the log-likelihood of each sample and its log-responsibilities.

    ``log p(x_n) = logsumexp_k (log w_k + log N(x_n | μ_k, Σ_k))`` with the component
    log-densities of :mod:`gmmseg.distributions` (the library's one implementation of each
    density); ``log r_nk`` is the difference.

    Args:
        X: (N, D) samples, already validated.
        weights: (K,) mixture weights.
        means: (K, D) means.
        precisions_chol: Cholesky factors of the precisions (module table).
        covariance_type: one of the four types.
        chunk_size: rows per chunk of the density's temporaries (``None``: a fixed budget).
        features: (N, 2D) :func:`diag_features` of ``X`` for diag/spherical, if computed.

    Returns:
        ``(log_prob_norm (N,), log_resp (N, K))``.
    """
    if features is not None and covariance_type in ("diag", "spherical"):
        prec = precisions_chol * precisions_chol
        prec = prec.unsqueeze(1).expand_as(means) if covariance_type == "spherical" else prec
        log_prob = diag_log_prob_from_features(features, means, prec)
    else:
        log_prob = log_prob_from_precision_cholesky(
            X, means, precisions_chol, covariance_type, chunk_size=chunk_size, check_finite=False
        )
    weighted = log_prob + torch.log(weights)
    log_prob_norm = _logsumexp_rows(weighted)
    return log_prob_norm, weighted - log_prob_norm[:, None]


# ---------------------------------------------------------------------------------------------
# M-step


def _centred_variances(X: Tensor, resp: Tensor, means: Tensor, components: list[int]) -> Tensor:
    """Exact two-pass ``Σ_n r_nk (x_n − μ_k)²`` (per dimension) of the listed components.

    Only the rows with a positive responsibility are visited, in chunks of ``EXACT_ROWS``
    whose sums are accumulated in float64.

    Returns:
        (len(components), D) in the dtype of ``X``.
    """
    out = torch.zeros((len(components), X.shape[1]), dtype=torch.float64, device=X.device)
    for i, k in enumerate(components):
        rows = torch.nonzero(resp[:, k] > 0)[:, 0]
        for start in range(0, rows.numel(), EXACT_ROWS):
            idx = rows[start : start + EXACT_ROWS]
            diff = X[idx] - means[k]
            out[i] += ((diff * diff).T @ resp[idx, k]).double()
    return out.to(X.dtype)


def _centred_scatter(X: Tensor, resp: Tensor, means: Tensor) -> Tensor:
    """Exact two-pass scatter ``Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ`` of every component: (K, D, D)."""
    k, d = means.shape
    out = means.new_empty((k, d, d))
    for j in range(k):
        diff = X - means[j]
        out[j] = (resp[:, j, None] * diff).T @ diff
    return out


def estimate_gaussian_covariances_full(
    resp: Tensor, X: Tensor, nk: Tensor, means: Tensor, reg_covar: float
) -> Tensor:
    """Full covariances ``Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ / n_k + reg_covar·I``: (K, D, D)."""
    eye = torch.eye(means.shape[1], dtype=means.dtype, device=means.device)
    return _centred_scatter(X, resp, means) / nk[:, None, None] + reg_covar * eye


def estimate_gaussian_covariances_tied(
    resp: Tensor, X: Tensor, nk: Tensor, means: Tensor, reg_covar: float
) -> Tensor:
    """Tied covariance ``Σ_k Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ / Σ_k n_k + reg_covar·I``: (D, D).

    Computed as ``Σ_n s_n x xᵀ − Σ_k (2 n_k − m_k) μ_k μ_kᵀ`` with ``s_n = Σ_k r_nk`` and
    ``m_k = Σ_n r_nk`` (exact algebra, one GEMM), or as the exact two-pass scatter when the
    GEMM form would lose more than ``CANCELLATION_RTOL`` of the variance to rounding.
    scikit-learn uses ``XᵀX`` for the first term, which is the same when every row's
    responsibilities sum to 1 (every EM iteration) but not for the one-row-per-component
    initialisations (``"k-means++"``, ``"random_from_data"``).
    """
    eps = torch.finfo(means.dtype).eps
    mass = resp.sum(dim=0)
    second = (X * resp.sum(dim=1, keepdim=True)).T @ X
    within = second - torch.einsum("k,kd,ke->de", 2 * nk - mass, means, means)
    lossy = eps * torch.diagonal(second) > CANCELLATION_RTOL * torch.diagonal(within)
    if bool(lossy.any()):
        within = _centred_scatter(X, resp, means).sum(dim=0)
    eye = torch.eye(means.shape[1], dtype=means.dtype, device=means.device)
    return within / nk.sum() + reg_covar * eye


def estimate_gaussian_covariances_diag(
    resp: Tensor,
    X: Tensor,
    nk: Tensor,
    means: Tensor,
    reg_covar: float,
    second: Tensor | None = None,
) -> Tensor:
    """Diagonal variances ``Σ_n r_nk (x_n − μ_k)² / n_k + reg_covar``: (K, D).

    The GEMM form ``E[x²] − μ²(2 − m_k/n_k)`` (exact algebra, with ``E[x²] = rᵀx² / n_k`` and
    ``m_k = Σ_n r_nk``) has a rounding error of about ``eps·E[x²]``; where that exceeds
    ``CANCELLATION_RTOL`` of the variance (a tight component far from the data mean, e.g. a
    singleton) the exact two-pass sum replaces that component's variances. scikit-learn's
    one-pass form cancels there: in float32 a variance of 0.1 can come out as 112, or negative.
    ``second`` is (K, D) ``Σ_n r_nk x_n²`` when the caller already has it.
    """
    eps = torch.finfo(means.dtype).eps
    mass = resp.sum(dim=0)
    if second is None:
        second = resp.T @ (X * X)
    mean_sq = second / nk[:, None]
    var = mean_sq - means * means * (2.0 - mass / nk)[:, None]
    lossy = (eps * mean_sq > CANCELLATION_RTOL * var).any(dim=1)
    if bool(lossy.any()):
        redo = torch.nonzero(lossy)[:, 0].tolist()
        var[redo] = _centred_variances(X, resp, means, redo) / nk[redo, None]
    return var + reg_covar


def estimate_gaussian_parameters(
    X: Tensor,
    resp: Tensor,
    reg_covar: float,
    covariance_type: CovarianceType,
    features: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """M-step: weighted counts, means and covariances from the responsibilities.

    Args:
        X: (N, D) samples.
        resp: (N, K) responsibilities times sample weights.
        reg_covar: added to the covariance diagonals.
        covariance_type: one of the four types.
        features: (N, 2D) :func:`diag_features` of ``X`` for diag/spherical, if computed: the
            moments ``Σ r x²`` and ``Σ r x`` are then one product.

    Returns:
        ``(nk (K,), means (K, D), covariances)`` with ``nk = Σ_n resp_nk + 10·eps`` (as
        scikit-learn, so that an empty component does not divide by zero); the spherical
        variance is the mean of the diagonal ones.
    """
    nk = resp.sum(dim=0) + 10 * torch.finfo(resp.dtype).eps
    if covariance_type in ("full", "tied"):
        means = (resp.T @ X) / nk[:, None]
        if covariance_type == "full":
            return nk, means, estimate_gaussian_covariances_full(resp, X, nk, means, reg_covar)
        return nk, means, estimate_gaussian_covariances_tied(resp, X, nk, means, reg_covar)
    d = X.shape[1]
    moments = resp.T @ (diag_features(X) if features is None else features)  # (K, 2D)
    means = moments[:, d:] / nk[:, None]
    var = estimate_gaussian_covariances_diag(resp, X, nk, means, reg_covar, moments[:, :d])
    return nk, means, var if covariance_type == "diag" else var.mean(dim=1)


# ---------------------------------------------------------------------------------------------
# Precision factors


def compute_precision_cholesky(
    covariances: Tensor, covariance_type: CovarianceType, where: str = ""
) -> Tensor:
    """Cholesky factors of the precisions, via :func:`gmmseg.distributions.precision_cholesky`.

    Args:
        covariances: shaped as the module table.
        covariance_type: one of the four types.
        where: appended to the name of the failing component in the error (e.g.
            ``" of group 3"``).

    Returns:
        Factors of the same shape.

    Raises:
        ValueError: naming the component whose covariance is not positive definite, with what
            to do about it.
    """
    try:
        return precision_cholesky(covariances, covariance_type)
    except ValueError as err:
        if covariance_type == "tied":
            name = "the tied covariance"
        else:
            if covariance_type == "full":
                bad = (torch.linalg.cholesky_ex(covariances)[1] != 0) | ~torch.isfinite(
                    covariances
                ).all(dim=(-2, -1))
            else:
                per = covariances.reshape(covariances.shape[0], -1)
                bad = ((per <= 0) | ~torch.isfinite(per)).any(dim=1)
            name = f"component {int(torch.nonzero(bad)[0, 0]) if bool(bad.any()) else 0}"
        message = (  # scikit-learn's message, then which component failed
            "Fitting the mixture model failed because some components have ill-defined "
            "empirical covariance (for instance caused by singleton or collapsed samples). Try "
            "to decrease the number of components, increase reg_covar, or scale the input "
            f"data. The first is {name}{where}."
        )
        if covariances.dtype == torch.float32:
            message += " Fitting in float64 (dtype=torch.float64) also improves accuracy."
        raise ValueError(message) from err


def precision_cholesky_from_precisions(
    precisions: Tensor, covariance_type: CovarianceType
) -> Tensor:
    """Upper-triangular ``U`` with ``U Uᵀ = Λ`` (full/tied, via the flipped Cholesky) or √Λ."""
    if covariance_type in ("full", "tied"):
        flipped = torch.flip(precisions, dims=(-2, -1))
        return torch.flip(torch.linalg.cholesky(flipped), dims=(-2, -1))
    return torch.sqrt(precisions)


def precisions_from_cholesky(prec_chol: Tensor, covariance_type: CovarianceType) -> Tensor:
    """``Λ = U Uᵀ`` (full/tied) or ``U²`` (diag/spherical)."""
    if covariance_type in ("full", "tied"):
        return prec_chol @ prec_chol.transpose(-1, -2)
    return prec_chol * prec_chol


def covariances_from_cholesky(prec_chol: Tensor, covariance_type: CovarianceType) -> Tensor:
    """``Σ = (U Uᵀ)⁻¹ = U⁻ᵀ U⁻¹`` (full/tied) or ``1/U²`` (diag/spherical)."""
    if covariance_type in ("full", "tied"):
        eye = torch.eye(prec_chol.shape[-1], dtype=prec_chol.dtype, device=prec_chol.device)
        inv: Tensor = torch.linalg.solve_triangular(prec_chol, eye.expand_as(prec_chol), upper=True)
        return inv.transpose(-1, -2) @ inv
    return 1.0 / (prec_chol * prec_chol)


def n_parameters(n_components: int, n_features: int, covariance_type: CovarianceType) -> int:
    """Free parameters of a mixture (weights, means, covariances), as scikit-learn counts."""
    k, d = n_components, n_features
    cov = {
        "full": k * d * (d + 1) / 2.0,
        "tied": d * (d + 1) / 2.0,
        "diag": float(k * d),
        "spherical": float(k),
    }[covariance_type]
    return int(cov + d * k + k - 1)
