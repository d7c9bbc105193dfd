"""Gaussian mixtures fitted by expectation-maximisation, scikit-learn compatible and batched.

:class:`GaussianMixture` mirrors :class:`sklearn.mixture.GaussianMixture` (same constructor
arguments, methods and fitted attributes, same EM iterations, same convergence test, same
``n_init`` selection and final E-step), computing in torch on any device. With the same
initialisation its fitted parameters equal scikit-learn's to rounding.
:meth:`GaussianMixture.fit_grouped` fits G independent mixtures at once (one per class, the
common case in segmentation), vectorised over the groups, and returns a
:class:`GroupedGaussianMixture`.

Shapes (K components, D features, G groups; a leading G on every grouped attribute):

| ``covariance_type`` | ``covariances_`` / ``precisions_`` / ``precisions_cholesky_`` |
| ------------------- | ------------------------------------------------------------- |
| ``"full"``          | (K, D, D)                                                     |
| ``"tied"``          | (D, D)                                                        |
| ``"diag"``          | (K, D)                                                        |
| ``"spherical"``     | (K,)                                                          |

Numerics. Inside a fit the rows are shifted by their (weighted) mean, which changes no
estimate but removes the bulk of the cancellation of the expanded quadratic forms in float32.
Variances are *centred* estimates ``Σ r (x − μ)² / n_k``: the diagonal, spherical and tied
M-steps use GEMMs of the shifted data (``rᵀ [x², x]``) and, where the a-priori rounding bound of
that form exceeds a relative ``1e-4`` (a tight component far from the data mean), fall back to
an exact two-pass sum over ``(x − μ)²``; the full M-step always sums ``r (x − μ)(x − μ)ᵀ``.
scikit-learn's one-pass ``E[x²] − μ²`` cancels catastrophically for such a component in float32
(a variance of 0.1 can come out as 112, or negative).

Sample weights. ``fit(X, sample_weight=w)`` runs weighted EM: responsibilities are multiplied by
``w`` in the M-step, so integer weights equal repeated rows, and ``lower_bound_`` is the
*weighted* mean log-likelihood ``Σ w_n log p(x_n) / Σ w_n``.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from gmmseg.distributions import (
    CovarianceType,
    all_finite,
    log_prob_from_precision_cholesky,
    precision_cholesky,
    sample_mixture,
)
from gmmseg.em._kmeans import (
    CHUNK_ELEMENTS,
    SegmentLayout,
    draw_distinct_rows,
    kmeans_labels,
    kmeans_plusplus,
    uniform_draws,
)

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "ConvergenceWarning",
    "GaussianMixture",
    "GroupedGaussianMixture",
    "InitParams",
    "NotFittedError",
]

InitParams = Literal["kmeans", "k-means++", "random", "random_from_data"]
_INIT_PARAMS: tuple[str, ...] = get_args(InitParams)
_COVARIANCE_TYPES: tuple[str, ...] = get_args(CovarianceType)

#: The diagonal/tied GEMM M-step is trusted while eps · E[x²] / Var stays below this bound.
_CANCELLATION_RTOL = 1e-4
_LOG_2PI = math.log(2.0 * math.pi)


class ConvergenceWarning(UserWarning):
    """Warned when the best EM run stopped at ``max_iter`` before converging."""


class NotFittedError(ValueError, AttributeError):
    """Raised when a fitted-model method is called before :meth:`GaussianMixture.fit`."""


# ---------------------------------------------------------------------------------------------
# Parameters and data, batched over G groups


@dataclass(frozen=True)
class _Params:
    """Mixture parameters of G groups. Means are relative to each group's data centre."""

    weights: Tensor  # (G, K)
    means: Tensor  # (G, K, D)
    covariances: Tensor  # (G, K, D, D) | (G, D, D) | (G, K, D) | (G, K)
    precisions_cholesky: Tensor  # same shape as covariances

    def where(self, mask: Tensor, other: _Params) -> _Params:
        """Per group: ``self`` where ``mask`` (G,) is true, else ``other``."""

        def pick(a: Tensor, b: Tensor) -> Tensor:
            return torch.where(mask.reshape(-1, *([1] * (a.ndim - 1))), a, b)

        return _Params(
            pick(self.weights, other.weights),
            pick(self.means, other.means),
            pick(self.covariances, other.covariances),
            pick(self.precisions_cholesky, other.precisions_cholesky),
        )


@dataclass(frozen=True)
class _Data:
    """Training rows laid out for the batched EM (see :class:`SegmentLayout`)."""

    layout: SegmentLayout
    x: Tensor  # (R, D) rows minus their group's weighted mean
    w: Tensor  # (R,) sample weights, 0 on padding rows
    total_weight: Tensor  # (G,) Σ w per group
    centre: Tensor  # (G, D) weighted mean of each group (the shift)
    feats: Tensor | None  # (R, 2D) [x², x] for diag/spherical
    chunk_size: int | None


@dataclass(frozen=True)
class _Inits:
    """User initial values, batched over groups (``None`` where not given)."""

    weights: Tensor | None  # (G, K)
    means: Tensor | None  # (G, K, D), absolute coordinates
    precisions: Tensor | None  # (G, ...) precision matrices/vectors


@dataclass(frozen=True)
class _Outcome:
    params: _Params
    lower_bound: Tensor  # (G,) float64
    n_iter: Tensor  # (G,) int64
    converged: Tensor  # (G,) bool
    lower_bounds: list[float]  # per-iteration lower bounds of group 0's best run


def _prepare_data(
    x: Tensor,
    w: Tensor,
    layout: SegmentLayout,
    covariance_type: CovarianceType,
    chunk_size: int | None,
) -> _Data:
    """Lay out the rows, shift each group to its weighted mean and cache fixed features."""
    xr, wr = layout.scatter_rows(x), layout.scatter_rows(w)
    total = layout.segment_sum(wr)
    centre = layout.segment_matmul(wr[:, None], xr)[:, 0, :] / total[:, None]
    d = x.shape[1]
    feats = None
    if covariance_type in ("diag", "spherical"):
        # The centred rows live inside the feature buffer: one (R, 2D) allocation, not two. One
        # group (the fused pass of _fused_diag_pass) stores it feature-major, a (2D, R) array
        # viewed as (R, 2D): its products (K, 2D)·(2D, rows) and (K, rows)·(rows, 2D) then read
        # each feature as a contiguous row: fits 13-17 % faster than row-major in A/B runs.
        # Several groups keep it row-major, since their block products reshape it.
        r = xr.shape[0]
        if layout.num_groups == 1 and x.device.type == "cpu":
            feats_t = _large_empty((2 * d, r), x.dtype, x.device)
            # Built in row blocks: each block is centred in cache and transposed into place
            # (writing the whole (R, D) through the transposed view at once is 3x slower).
            for start in range(0, r, _FUSED_ROWS):
                stop = min(start + _FUSED_ROWS, r)
                block = feats_t[d:, start:stop]
                block.copy_((xr[start:stop] - centre[0]).T)
                torch.mul(block, block, out=feats_t[:d, start:stop])
            feats = feats_t.T
            xc = feats[:, d:]
        else:
            # several groups, or an accelerator (whole-array kernels, no row blocks)
            if layout.num_groups == 1:
                feats = torch.empty((2 * d, r), dtype=x.dtype, device=x.device).T
            else:
                feats = torch.empty((r, 2 * d), dtype=x.dtype, device=x.device)
            xc = torch.sub(xr, layout.expand_groups(centre), out=feats[:, d:])
            torch.mul(xc, xc, out=feats[:, :d])
    else:
        xc = xr - layout.expand_groups(centre)
    return _Data(layout, xc, wr, total, centre, feats, chunk_size)


# ---------------------------------------------------------------------------------------------
# One small function per formula (E-step)


def _grouped_diag_log_prob(
    data: _Data, means: Tensor, prec_chol: Tensor, log_weights: Tensor
) -> Tensor:
    """Diagonal ``log N(x | μ, σ²) + log w`` of each row under its own group's K components.

    The fused GEMM of :mod:`gmmseg.distributions` batched over groups: one ``baddbmm`` of the
    cached features ``[x², x]`` with ``[−½σ⁻²; μσ⁻²]`` plus a per-component bias.

    Args:
        data: laid-out rows with cached features ``[x², x]`` (R, 2D).
        means: (G, K, D) means.
        prec_chol: (G, K, D) inverse standard deviations.
        log_weights: (G, K) log mixture weights.

    Returns:
        (R, K) weighted log-densities.
    """
    assert data.feats is not None
    prec = prec_chol * prec_chol
    weight = torch.cat([-0.5 * prec, means * prec], dim=2).transpose(1, 2)  # (G, 2D, K)
    bias = (
        log_weights
        + torch.log(prec_chol).sum(-1)
        - 0.5 * ((means * means * prec).sum(-1) + means.shape[-1] * _LOG_2PI)
    )
    return data.layout.group_matmul(data.feats, weight, bias)


def _grouped_full_log_prob(
    data: _Data, means: Tensor, prec_chol: Tensor, log_weights: Tensor, tied: bool
) -> Tensor:
    """Full/tied ``log N(x | μ, Σ) + log w`` of each row under its own group's components.

    Args:
        data: laid-out rows.
        means: (G, K, D) means.
        prec_chol: (G, K, D, D) full or (G, D, D) tied upper Cholesky factors of precisions.
        log_weights: (G, K) log mixture weights.
        tied: whether ``prec_chol`` is shared by the components.

    Returns:
        (R, K) weighted log-densities, computed in chunks of (chunk, K, D) temporaries.
    """
    k, d = means.shape[1], means.shape[2]
    pc = prec_chol.unsqueeze(1) if tied else prec_chol  # (G, K or 1, D, D)
    mu_p = (means.unsqueeze(2) @ pc).squeeze(2)  # (G, K, D)
    log_det = torch.log(torch.diagonal(pc, dim1=-2, dim2=-1)).sum(-1)  # (G, K or 1)
    bias = log_weights + log_det - 0.5 * d * _LOG_2PI  # (G, K)
    out = data.x.new_empty((data.x.shape[0], k))
    for rows, groups in data.layout.chunks(k * d, data.chunk_size):
        xb = data.x[rows].reshape(groups.numel(), -1, d)
        y = xb.unsqueeze(1) @ pc[groups] - mu_p[groups].unsqueeze(2)  # (nbc, K, b, D)
        maha = (y * y).sum(-1).transpose(1, 2)  # (nbc, b, K)
        out[rows] = (bias[groups].unsqueeze(1) - 0.5 * maha).reshape(-1, k)
    return out


def _estimate_weighted_log_prob(
    data: _Data, params: _Params, covariance_type: CovarianceType
) -> Tensor:
    """(R, K) ``log N(x_r | μ_k, Σ_k) + log w_k`` under the row's own group's components.

    One group goes through :func:`gmmseg.distributions.log_prob_from_precision_cholesky` (the
    fused-GEMM path for diag/spherical); several groups through the batched block routines.
    """
    log_weights = torch.log(params.weights)
    if data.layout.num_groups == 1:
        log_prob = log_prob_from_precision_cholesky(
            data.x,
            params.means[0],
            params.precisions_cholesky[0],
            covariance_type,
            chunk_size=data.chunk_size,
            check_finite=False,  # X was validated once by fit
        )
        return log_prob + log_weights[0]
    if covariance_type in ("diag", "spherical"):
        pc = params.precisions_cholesky
        pc = pc.unsqueeze(-1).expand_as(params.means) if covariance_type == "spherical" else pc
        return _grouped_diag_log_prob(data, params.means, pc, log_weights)
    return _grouped_full_log_prob(
        data, params.means, params.precisions_cholesky, log_weights, covariance_type == "tied"
    )


def _log_floor(dtype: torch.dtype) -> float:
    """A log-value whose exponential is far above the subnormal range of ``dtype``.

    ``exp`` of anything below ``log(tiny)`` produces subnormal numbers, which are 10-30× slower
    on x86 CPUs; EM routinely meets such responsibilities (log-resp ≈ −90 in float32). Clamping
    there changes a responsibility by less than ``e^(log tiny + 30)`` (1e-25 in float32, 1e-295
    in float64), far below the ``10·eps`` added to every n_k.
    """
    return math.log(torch.finfo(dtype).tiny) + 30.0


def _logsumexp_rows(weighted: Tensor) -> Tensor:
    """(R, K) -> (R,) ``log Σ_k exp``, without producing subnormal intermediates."""
    top = weighted.amax(dim=1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    shifted = (weighted - top).clamp_min_(_log_floor(weighted.dtype))
    return shifted.exp_().sum(dim=1).log_() + top[:, 0]


def _e_step(data: _Data, params: _Params, covariance_type: CovarianceType) -> tuple[Tensor, Tensor]:
    """E-step: ``(log_prob_norm (R,), log_resp (R, K))`` with ``log p(x) = logsumexp``."""
    weighted = _estimate_weighted_log_prob(data, params, covariance_type)
    log_prob_norm = _logsumexp_rows(weighted)
    return log_prob_norm, weighted - log_prob_norm[:, None]


#: Rows per chunk of the fused diagonal EM pass (temporaries stay in cache).
_FUSED_ROWS = 8192

#: CPU buffers at least this large are mapped with transparent huge pages where Linux allows.
_HUGE_PAGE_BYTES = 32 << 20


def _large_empty(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.empty(shape)``; on Linux CPUs, large ones in memory advised for huge pages.

    A fresh buffer of 100 MB costs about 25 000 page faults on first touch with 4 KB pages, as
    long as filling it (30 vs 6 ms measured); with 2 MB pages, 50. Memory comes from an anonymous
    ``mmap`` released when the last tensor viewing it is freed. Elsewhere (other devices or
    systems, small buffers, a kernel or sandbox that refuses the mapping) this is
    ``torch.empty``.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    advise = getattr(mmap, "MADV_HUGEPAGE", None)
    if device.type != "cpu" or advise is None or nbytes < max(_HUGE_PAGE_BYTES, 1):
        return torch.empty(shape, dtype=dtype, device=device)
    try:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return torch.empty(shape, dtype=dtype, device=device)
    with contextlib.suppress(OSError):  # a hint: kernels without huge pages refuse it
        buf.madvise(advise)
    # The tensor holds a reference to buf, which must never be closed while it lives (closing
    # unmaps the memory under the tensor); it is unmapped when garbage-collected.
    return torch.frombuffer(buf, dtype=dtype).view(shape)


def _fused_diag_pass(
    data: _Data,
    params: _Params,
    covariance_type: CovarianceType,
    out: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """E-step and the M-step's moment GEMM of one diag/spherical mixture in one pass over X.

    The rows are visited in chunks small enough to stay in cache: each chunk's log-densities
    (the fused GEMM of :mod:`gmmseg.distributions` on the cached features ``[x², x]``),
    responsibilities and moments ``Σ w r [x², x]`` are computed while the chunk is hot, so the
    features are read once per iteration instead of three times. The rows were shifted to their
    weighted mean by :func:`_prepare_data`, which is what keeps the expanded quadratic accurate
    (the shift :func:`gmmseg.distributions.log_prob_from_precision_cholesky` applies per call).

    ``out`` = ``(log_prob_norm (R,), rw_t (K, R))`` buffers to write into, so that an EM loop
    reuses one pair instead of allocating (and, with glibc's allocator, page-faulting) megabytes
    per iteration.

    Returns:
        ``(log_prob_norm (R,), rw (R, K) = w·resp, moments (1, K, 2D))``.
    """
    assert data.feats is not None and data.layout.num_groups == 1
    feats, w = data.feats, data.w
    n, d = data.x.shape
    means = params.means[0]
    pc = params.precisions_cholesky[0]
    prec = (pc * pc).unsqueeze(-1).expand_as(means) if covariance_type == "spherical" else pc * pc
    bias = torch.log(params.weights[0]) - 0.5 * (
        (means * means * prec).sum(dim=1) - torch.log(prec).sum(dim=1) + d * _LOG_2PI
    )
    k = means.shape[0]
    # Components-major layout: (K, 2D)·(2D, rows) and (K, rows)·(rows, 2D) are 3-4× faster than
    # the skinny (rows, 2D)·(2D, K) products for small K, and the reductions over K run across
    # contiguous rows.
    weight_t = torch.cat([-0.5 * prec, means * prec], dim=1)  # (K, 2D)
    bias = bias.unsqueeze(1)
    log_prob_norm, rw_t = (feats.new_empty(n), feats.new_empty((k, n))) if out is None else out
    moments = feats.new_zeros((k, 2 * d))
    floor = _log_floor(feats.dtype)
    for start in range(0, n, _FUSED_ROWS):
        stop = min(start + _FUSED_ROWS, n)
        f = feats[start:stop]
        r = rw_t[:, start:stop]
        torch.addmm(bias, weight_t, f.T, out=r)  # (K, rows) weighted log-densities
        # the row maximum, 0 where it is not finite (as in _logsumexp_rows)
        top = r.amax(dim=0).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        total = r.sub_(top).clamp_min_(floor).exp_().sum(dim=0)  # Σ_k exp(ℓ_k − top) ≥ 1
        log_prob_norm[start:stop] = total.log() + top
        # resp = exp(ℓ − logsumexp) = exp(ℓ − top) / total: one exp per entry, not two
        r.mul_(w[start:stop] / total)
        moments.addmm_(r, f)
    return log_prob_norm, rw_t.T, moments.unsqueeze(0)


def _lower_bound(data: _Data, log_prob_norm: Tensor) -> Tensor:
    """(G,) float64 weighted mean log-likelihood ``Σ w log p(x) / Σ w`` of each group."""
    w = data.w.to(torch.float64)
    terms = torch.where(w > 0, w * log_prob_norm.to(torch.float64), torch.zeros_like(w))
    return data.layout.segment_sum(terms) / data.total_weight.to(torch.float64)


# ---------------------------------------------------------------------------------------------
# M-step


def _centred_scatter(
    data: _Data, rw: Tensor, means: Tensor, *, only: Tensor | None = None
) -> Tensor:
    """Exact two-pass scatter ``Σ_n w r_nk (x_n − μ_k)(x_n − μ_k)ᵀ`` per group and component.

    Works on (chunk, K, D, D) temporaries; when few rows carry responsibility (e.g. the
    one-row-per-component initialisations) only those rows are visited.

    Args:
        data: laid-out rows.
        rw: (R, K) responsibilities times sample weights.
        means: (G, K, D) means.
        only: (G, K) bool pairs to compute (others are returned as 0), or ``None`` for all.

    Returns:
        (G, K, D, D).
    """
    g, k, d = means.shape
    out = means.new_zeros((g, k, d, d))
    if only is None:
        only = torch.ones((g, k), dtype=torch.bool, device=means.device)
    comps = torch.nonzero(only.any(dim=0))[:, 0]
    if comps.numel() == 0:
        return out
    mu, r = means[:, comps], rw[:, comps]
    rows_on = (r > 0).any(dim=1) & data.layout.expand_groups(only.any(dim=1))
    rows = torch.nonzero(rows_on)[:, 0]
    if 4 * rows.numel() <= rows_on.numel():
        part = _scatter_rows(data, r, mu, rows)
    else:
        part = _scatter_blocks(data, r, mu, only.any(dim=1))
    out[:, comps] = part
    return out * only[..., None, None].to(out.dtype)


def _scatter_rows(data: _Data, r: Tensor, mu: Tensor, rows: Tensor) -> Tensor:
    """:func:`_centred_scatter` over the listed laid-out ``rows`` only (row by row)."""
    g, k, d = mu.shape
    out = mu.new_zeros((g, k, d, d))
    step = data.chunk_size or max(1, CHUNK_ELEMENTS // (k * d * d))
    for start in range(0, rows.numel(), step):
        idx = rows[start : start + step]
        groups = data.layout.row_groups(idx)
        diff = data.x[idx].unsqueeze(1) - mu[groups]  # (c, K, D)
        weighted = diff * r[idx].unsqueeze(-1)
        out.index_add_(0, groups, weighted.unsqueeze(-1) * diff.unsqueeze(-2))
    return out


def _scatter_blocks(data: _Data, r: Tensor, mu: Tensor, groups_on: Tensor) -> Tensor:
    """:func:`_centred_scatter` over all rows of the ``groups_on`` (G,) groups, by blocks."""
    g, k, d = mu.shape
    out = mu.new_zeros((g, k, d, d))
    for rows, groups in data.layout.chunks(k * d, data.chunk_size):
        nbc = groups.numel()
        xb = data.x[rows].reshape(nbc, 1, -1, d)
        rb = r[rows].reshape(nbc, -1, k).transpose(1, 2).unsqueeze(2)  # (nbc, K, 1, b)
        keep = groups_on[groups]
        if not bool(keep.all()):
            if not bool(keep.any()):
                continue
            xb, rb, groups = xb[keep], rb[keep], groups[keep]
        diff = xb - mu[groups].unsqueeze(2)  # (nbc, K, b, D)
        part = (diff * rb.transpose(-1, -2)).transpose(-1, -2) @ diff  # (nbc, K, D, D)
        out.index_add_(0, groups, part)
    return out


#: Rows summed by one float32 product in the exact variance fallback (partial sums are added
#: in float64), so the fallback's own rounding stays far below the error it replaces.
_EXACT_ROWS = 4096


def _centred_variances(data: _Data, rw: Tensor, means: Tensor, only: Tensor) -> Tensor:
    """Exact two-pass ``Σ_n w r_nk (x_n − μ_k)²`` (per dimension) of the ``only`` (G, K) pairs.

    Each listed (group, component) pair visits its own group's rows (a contiguous range of the
    layout) and nothing else, so the cost is proportional to the pairs that need it: the other
    K − 1 components of a group and the other groups are not touched. Within a pair, only the
    rows with a positive responsibility are visited when they are at most a quarter of the
    group (the one-row-per-component initialisations flag every pair, each with one row).
    Each pair is summed as ``(x − μ)²ᵀ · r`` over chunks of at most ``chunk_size`` and
    4096 rows, the chunk sums accumulated in float64.

    Args:
        data: laid-out rows.
        rw: (R, K) responsibilities times sample weights.
        means: (G, K, D) means.
        only: (G, K) bool pairs to compute.

    Returns:
        (G, K, D), 0 outside ``only``.
    """
    g, k, d = means.shape
    out = torch.zeros((g, k, d), dtype=torch.float64, device=means.device)
    layout = data.layout
    step = min(data.chunk_size or _EXACT_ROWS, _EXACT_ROWS)
    # a group's laid-out rows: whole blocks from its first row (padding rows have w = 0)
    blocks = torch.div(
        layout.counts + layout.block_rows - 1, max(layout.block_rows, 1), rounding_mode="floor"
    )
    ends = layout.group_start + blocks * layout.block_rows
    ranges = torch.stack([layout.group_start, ends], dim=1).tolist()
    for gi, ki in torch.nonzero(only).tolist():
        start, stop = ranges[gi] if layout.block_group is not None else (0, layout.num_rows)
        on = torch.nonzero(rw[start:stop, ki] > 0)[:, 0] + start
        sparse = 4 * on.numel() <= stop - start
        for a in range(0, on.numel() if sparse else stop - start, step):
            rows = on[a : a + step] if sparse else slice(start + a, min(start + a + step, stop))
            diff = data.x[rows] - means[gi, ki]
            out[gi, ki] += torch.mv(diff.mul_(diff).T, rw[rows, ki]).double()
    return out.to(means.dtype)


def _estimate_covariances_full(
    data: _Data, rw: Tensor, nk: Tensor, means: Tensor, reg_covar: float
) -> Tensor:
    """(G, K, D, D) ``Σ w r (x − μ)(x − μ)ᵀ / n_k + reg_covar·I``."""
    scatter = _centred_scatter(data, rw, means)
    eye = torch.eye(means.shape[-1], dtype=means.dtype, device=means.device)
    return scatter / nk[..., None, None] + reg_covar * eye


def _estimate_covariances_tied(
    data: _Data,
    rw: Tensor,
    mass: Tensor,
    nk: Tensor,
    means: Tensor,
    reg_covar: float,
    check: Tensor,
) -> Tensor:
    """(G, D, D) ``Σ_k Σ w r (x − μ_k)(x − μ_k)ᵀ / Σ n_k + reg_covar·I``.

    GEMM form ``Σ_n s_n x xᵀ − Σ_k (2 n_k − m_k) μ_k μ_kᵀ`` with ``s_n = w_n Σ_k r_nk`` and
    ``m_k = Σ w r`` (exact algebra) on the shifted data; the exact two-pass scatter where that
    would lose too many digits. scikit-learn uses ``XᵀX`` for the first term, which is the same
    when every row's responsibilities sum to 1 (every EM iteration) but not for the
    one-row-per-component initialisations (``"k-means++"``, ``"random_from_data"``).
    """
    eps = torch.finfo(means.dtype).eps
    s = rw.sum(dim=1, keepdim=True)
    second = data.layout.segment_matmul(data.x * s, data.x)  # (G, D, D)
    within = second - torch.einsum("gk,gkd,gke->gde", 2 * nk - mass, means, means)
    total = torch.diagonal(second, dim1=-2, dim2=-1)
    lossy = eps * total > _CANCELLATION_RTOL * torch.diagonal(within, dim1=-2, dim2=-1)
    redo = lossy.any(dim=1) & check  # (G,)
    if bool(redo.any()):
        only = redo[:, None].expand(-1, means.shape[1])
        exact = _centred_scatter(data, rw, means, only=only).sum(dim=1)
        within = torch.where(redo[:, None, None], exact, within)
    eye = torch.eye(means.shape[-1], dtype=means.dtype, device=means.device)
    return within / nk.sum(dim=1)[:, None, None] + reg_covar * eye


def _estimate_covariances_diag(
    data: _Data,
    rw: Tensor,
    mass: Tensor,
    nk: Tensor,
    means: Tensor,
    second: Tensor,
    reg_covar: float,
    check: Tensor,
) -> Tensor:
    """(G, K, D) centred variances ``Σ w r (x − μ)² / n_k + reg_covar``.

    ``second`` (G, K, D) is the GEMM ``Σ w r x²`` of the shifted rows. The centred variance is
    ``E[x²] − μ²(2 − m_k/n_k)`` (exact algebra); its rounding error is about eps·E[x²], so where
    that exceeds ``1e-4`` of the variance (a tight component far from the data mean, e.g. a
    singleton) the exact two-pass sum replaces that component's variances.
    """
    eps = torch.finfo(means.dtype).eps
    mean_sq = second / nk[..., None]
    var = mean_sq - means * means * (2.0 - mass / nk)[..., None]
    lossy = eps * mean_sq > _CANCELLATION_RTOL * var
    redo = lossy.any(dim=2) & check[:, None]  # (G, K)
    if bool(redo.any()):
        exact = _centred_variances(data, rw, means, redo) / nk[..., None]
        var = torch.where(redo[..., None], exact, var)
    return var + reg_covar


def _estimate_gaussian_parameters(
    data: _Data,
    resp: Tensor,
    reg_covar: float,
    covariance_type: CovarianceType,
    check: Tensor,
    *,
    weighted: bool = False,
    moments: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """M-step estimates from responsibilities, as scikit-learn's function of the same name.

    Args:
        data: laid-out rows.
        resp: (R, K) responsibilities.
        reg_covar: added to the covariance diagonals.
        covariance_type: one of the four types.
        check: (G,) bool groups whose covariances matter (the accuracy guard looks only there).
        weighted: ``resp`` already includes the sample weights (``w·r``).
        moments: (G, K, 2D) precomputed ``Σ w r [x², x]`` (diag/spherical), if available.

    Returns:
        ``(nk (G, K), means (G, K, D), covariances (G, …))`` with ``nk = Σ w r + 10·eps``.
    """
    eps = torch.finfo(resp.dtype).eps
    rw = resp if weighted else resp * data.w[:, None]
    mass = data.layout.segment_sum(rw)
    nk = mass + 10 * eps
    d = data.x.shape[1]
    if data.feats is not None:
        if moments is None:
            moments = data.layout.segment_matmul(rw, data.feats)  # (G, K, 2D)
        second, first = moments[..., :d], moments[..., d:]
    else:
        first = data.layout.segment_matmul(rw, data.x)
    means = first / nk[..., None]
    if covariance_type == "full":
        cov = _estimate_covariances_full(data, rw, nk, means, reg_covar)
    elif covariance_type == "tied":
        cov = _estimate_covariances_tied(data, rw, mass, nk, means, reg_covar, check)
    else:
        cov = _estimate_covariances_diag(data, rw, mass, nk, means, second, reg_covar, check)
        if covariance_type == "spherical":
            cov = cov.mean(dim=-1)
    return nk, means, cov


# ---------------------------------------------------------------------------------------------
# Precision factors


def _ill_defined_message(dtype: torch.dtype, where: str) -> str:
    message = (
        f"Fitting the mixture model failed because {where} has an ill-defined empirical "
        "covariance (for instance caused by singleton or collapsed samples). Try to decrease "
        "n_components, increase reg_covar, or scale the input data."
    )
    if dtype == torch.float32:
        message += " Fitting in float64 (dtype=torch.float64) also improves accuracy."
    return message


def _compute_precision_cholesky(
    covariances: Tensor, covariance_type: CovarianceType, groups: Tensor | None
) -> Tensor:
    """Batched Cholesky factors of the precisions, via :func:`gmmseg.distributions`.

    Args:
        covariances: (G, …) covariances of G groups (module table shapes with a leading G).
        covariance_type: one of the four types.
        groups: (G,) original group index of each row for error messages, or ``None`` for a
            single mixture.

    Returns:
        Factors of the same shape.

    Raises:
        ValueError: naming the group and component whose covariance is not positive definite.
    """
    g = covariances.shape[0]
    flat_type: CovarianceType = "full" if covariance_type == "tied" else covariance_type
    if covariance_type == "full":
        flat = covariances.reshape(-1, *covariances.shape[-2:])
    elif covariance_type == "tied":
        flat = covariances
    else:
        flat = covariances.reshape(-1, *covariances.shape[2:])
    try:
        return precision_cholesky(flat, flat_type).reshape(covariances.shape)
    except ValueError as err:
        if covariance_type in ("full", "tied"):
            info = torch.linalg.cholesky_ex(flat)[1]
            bad = (info != 0) | ~torch.isfinite(flat).all(dim=(-2, -1))
        else:
            per = flat.reshape(flat.shape[0], -1)
            bad = ((per <= 0) | ~torch.isfinite(per)).any(dim=1)
        first = int(torch.nonzero(bad)[0, 0]) if bool(bad.any()) else 0
        per_group = 1 if covariance_type == "tied" else covariances.shape[1]
        group, comp = divmod(first, per_group)
        where = "the tied covariance" if covariance_type == "tied" else f"component {comp}"
        if groups is not None and g > 0:
            where += f" of group {int(groups[group])}"
        raise ValueError(_ill_defined_message(covariances.dtype, where)) from err


def _precision_cholesky_from_precisions(
    precisions: Tensor, covariance_type: CovarianceType
) -> Tensor:
    """Upper-triangular ``U`` with ``U Uᵀ = Λ`` (full/tied, via the flipped Cholesky) or √Λ."""
    if covariance_type in ("full", "tied"):
        flipped = torch.flip(precisions, dims=(-2, -1))
        return torch.flip(torch.linalg.cholesky(flipped), dims=(-2, -1))
    return torch.sqrt(precisions)


def _precisions_from_cholesky(prec_chol: Tensor, covariance_type: CovarianceType) -> Tensor:
    """``Λ = U Uᵀ`` (full/tied) or ``U²`` (diag/spherical)."""
    if covariance_type in ("full", "tied"):
        return prec_chol @ prec_chol.transpose(-1, -2)
    return prec_chol * prec_chol


def _covariances_from_cholesky(prec_chol: Tensor, covariance_type: CovarianceType) -> Tensor:
    """``Σ = (U Uᵀ)⁻¹ = U⁻ᵀ U⁻¹`` (full/tied) or ``1/U²`` (diag/spherical)."""
    if covariance_type in ("full", "tied"):
        eye = torch.eye(prec_chol.shape[-1], dtype=prec_chol.dtype, device=prec_chol.device)
        inv: Tensor = torch.linalg.solve_triangular(prec_chol, eye.expand_as(prec_chol), upper=True)
        return inv.transpose(-1, -2) @ inv
    return 1.0 / (prec_chol * prec_chol)


def _n_parameters(n_components: int, n_features: int, covariance_type: CovarianceType) -> int:
    """Free parameters of a mixture (weights, means, covariances), as scikit-learn counts."""
    k, d = n_components, n_features
    cov = {
        "full": k * d * (d + 1) / 2.0,
        "tied": d * (d + 1) / 2.0,
        "diag": float(k * d),
        "spherical": float(k),
    }[covariance_type]
    return int(cov + d * k + k - 1)


# ---------------------------------------------------------------------------------------------
# Validation of inputs


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _as_array(name: str, value: object, device: torch.device | None = None) -> Tensor:
    """Any array-like -> tensor (no dtype change beyond numpy's), on ``device`` if given."""
    if isinstance(value, Tensor):
        t = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as err:
            raise ValueError(f"{name} must be an array or tensor, got {type(value)!r}") from err
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
        ):
            raise ValueError(f"{name} must hold numbers, got an array of dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    return t if device is None else t.to(device)


def _to_float(name: str, value: object, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = _as_array(name, value).to(dtype=dtype, device=device)
    if not all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/Inf value(s)")
    return t


def _check_shape(name: str, t: Tensor, expected: tuple[int, ...], grouped: int | None) -> Tensor:
    """Check ``t`` has ``expected`` shape, or (G, *expected) when ``grouped`` = G; batch it."""
    shape = tuple(t.shape)
    if shape == expected:
        return t.unsqueeze(0).expand(grouped or 1, *expected)
    if grouped is not None and shape == (grouped, *expected):
        return t
    want = f"{expected}" + (f" or {(grouped, *expected)}" if grouped is not None else "")
    raise ValueError(f"{name} must have shape {want}, got {shape}")


def _check_weights_init(weights: Tensor) -> None:
    if bool(((weights < 0) | (weights > 1)).any()):
        raise ValueError(
            "weights_init must lie in [0, 1], got values in "
            f"[{float(weights.min()):.5g}, {float(weights.max()):.5g}]"
        )
    atol = 1e-6 if weights.dtype == torch.float32 else 1e-8
    sums = weights.sum(dim=-1)
    if bool(((sums - 1.0).abs() > atol).any()):
        worst = float(sums[(sums - 1.0).abs().argmax()])
        raise ValueError(
            f"weights_init must sum to 1 (to within {atol:g}), got sum {worst:.10g}; "
            "normalise it with w / w.sum()"
        )


def _check_precisions_init(precisions: Tensor, covariance_type: CovarianceType) -> None:
    if covariance_type in ("diag", "spherical"):
        if bool((precisions <= 0).any()):
            raise ValueError(
                f"precisions_init for covariance_type={covariance_type!r} must be positive, "
                f"got minimum {float(precisions.min()):.5g}"
            )
        return
    mats = precisions.reshape(-1, *precisions.shape[-2:])
    if not torch.allclose(mats, mats.transpose(-1, -2)):
        raise ValueError(
            f"precisions_init for covariance_type={covariance_type!r} must be symmetric"
        )
    if bool((torch.linalg.eigvalsh(mats) <= 0).any()):
        raise ValueError(
            f"precisions_init for covariance_type={covariance_type!r} must be positive "
            "definite (all eigenvalues > 0)"
        )


def _generator(random_state: int | torch.Generator | None) -> torch.Generator | None:
    if isinstance(random_state, torch.Generator) or random_state is None:
        return random_state
    return torch.Generator().manual_seed(int(random_state))


# ---------------------------------------------------------------------------------------------
# The estimator


class GaussianMixture:
    """Gaussian mixture fitted by EM, mirroring :class:`sklearn.mixture.GaussianMixture`.

    Computation runs in torch on ``device`` (default: the input tensor's device, the CPU for
    numpy input) in ``dtype`` (default: float64 for numpy and non-float input, as
    scikit-learn; the input tensor's dtype for float32/float64 tensors; float32 for half
    tensors). Fitted attributes are tensors on that device; scalars are Python numbers. Methods
    accept numpy arrays or tensors on any device and return tensors on the model's device.

    Args:
        n_components: K, the number of mixture components (>= 1).
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"`` (module table).
        tol: convergence threshold on the change of the lower bound (>= 0).
        reg_covar: non-negative value added to the covariance diagonals.
        max_iter: maximum EM iterations per initialisation (>= 0; 0 only initialises).
        n_init: number of initialisations; the one with the best lower bound is kept.
        init_params: ``"kmeans"`` (this module's torch k-means, k-means++ seeded),
            ``"k-means++"`` (seeds only), ``"random"`` (uniform responsibilities) or
            ``"random_from_data"`` (K distinct rows). Used for whatever ``*_init`` is missing.
        weights_init: (K,) initial weights, summing to 1 (``fit_grouped``: (K,) or (G, K)).
        means_init: (K, D) initial means (``fit_grouped``: also (G, K, D)).
        precisions_init: initial precisions (inverse covariances), shaped as the module table
            (``fit_grouped``: also with a leading G).
        random_state: int seed, ``torch.Generator`` or ``None`` (torch's global generator).
        warm_start: if true, a second ``fit`` starts from the previous solution (``n_init`` is
            then 1 and the lower bound continues from ``lower_bound_``).
        device: computation device (``None``: follow the input).
        dtype: computation dtype, ``torch.float32`` or ``torch.float64`` (``None``: see above).
        chunk_size: rows per chunk of the log-density and scatter temporaries (``None``: a
            64 MiB budget).

    Attributes:
        weights_: (K,) mixture weights.
        means_: (K, D) means.
        covariances_: covariances, shape by ``covariance_type``.
        precisions_: inverse covariances, same shape.
        precisions_cholesky_: upper Cholesky factors of the precisions, same shape.
        converged_: whether the best run converged.
        n_iter_: EM iterations of the best run.
        lower_bound_: (weighted) mean log-likelihood of the best run's last E-step.
        lower_bounds_: lower bound at every iteration of the best run.
        n_features_in_: D.

    Raises:
        ValueError: on an invalid hyper-parameter (naming it, with the expected and received
            value).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g) + 5])
        >>> gm = GaussianMixture(2, random_state=0).fit(x)
        >>> sorted(gm.predict(x).bincount().tolist())
        [50, 50]
    """

    weights_: Tensor
    means_: Tensor
    covariances_: Tensor
    precisions_: Tensor
    precisions_cholesky_: Tensor
    converged_: bool
    n_iter_: int
    lower_bound_: float
    lower_bounds_: list[float]
    n_features_in_: int
    dtype_: torch.dtype
    device_: torch.device

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: CovarianceType = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: InitParams = "kmeans",
        weights_init: Tensor | npt.ArrayLike | None = None,
        means_init: Tensor | npt.ArrayLike | None = None,
        precisions_init: Tensor | npt.ArrayLike | None = None,
        random_state: int | torch.Generator | None = None,
        warm_start: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size
        self._check_hyperparameters()

    def __repr__(self) -> str:
        defaults = GaussianMixture.__init__.__kwdefaults__ or {}
        shown = [f"n_components={self.n_components}"]
        for name, default in defaults.items():
            value = getattr(self, name)
            if isinstance(value, (Tensor, np.ndarray)) or value != default:
                text = "<array>" if isinstance(value, (Tensor, np.ndarray)) else repr(value)
                shown.append(f"{name}={text}")
        return f"GaussianMixture({', '.join(shown)})"

    # -- validation ---------------------------------------------------------------------------

    def _check_hyperparameters(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        if not _is_int(self.n_components) or self.n_components < 1:
            raise bad("n_components", "an int >= 1")
        if self.covariance_type not in _COVARIANCE_TYPES:
            raise bad("covariance_type", f"one of {_COVARIANCE_TYPES}")
        if not _is_real(self.tol) or not self.tol >= 0:
            raise bad("tol", "a real number >= 0")
        if not _is_real(self.reg_covar) or not 0 <= self.reg_covar < math.inf:
            raise bad("reg_covar", "a finite real number >= 0")
        if not _is_int(self.max_iter) or self.max_iter < 0:
            raise bad("max_iter", "an int >= 0")
        if not _is_int(self.n_init) or self.n_init < 1:
            raise bad("n_init", "an int >= 1")
        if self.init_params not in _INIT_PARAMS:
            raise bad("init_params", f"one of {_INIT_PARAMS}")
        rs = self.random_state
        if not (rs is None or isinstance(rs, torch.Generator) or (_is_int(rs) and rs >= 0)):
            raise bad("random_state", "None, an int >= 0 or a torch.Generator")
        if not isinstance(self.warm_start, bool):
            raise bad("warm_start", "a bool")
        if self.dtype not in (None, torch.float32, torch.float64):
            raise bad("dtype", "None, torch.float32 or torch.float64")
        if self.chunk_size is not None and (not _is_int(self.chunk_size) or self.chunk_size < 1):
            raise bad("chunk_size", "None or an int >= 1")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as err:
                raise bad("device", "None, a torch.device or a device string") from err
        self.n_components = int(self.n_components)
        self.max_iter = int(self.max_iter)
        self.n_init = int(self.n_init)
        self.chunk_size = None if self.chunk_size is None else int(self.chunk_size)

    def _resolve(self, x: object) -> tuple[torch.dtype, torch.device]:
        """Computation dtype and device for the input ``x``."""
        device = (
            torch.device(self.device)
            if self.device is not None
            else (x.device if isinstance(x, Tensor) else torch.device("cpu"))
        )
        if self.dtype is not None:
            return self.dtype, device
        if isinstance(x, Tensor) and x.is_floating_point():
            return (x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32), device
        return torch.float64, device

    def _check_x(self, X: object, dtype: torch.dtype, device: torch.device) -> Tensor:
        x = _to_float("X", X, dtype, device)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"X must have shape (N, D) with N, D >= 1, got shape {tuple(x.shape)}")
        return x

    def _check_sample_weight(self, sample_weight: object, n: int, x: Tensor) -> Tensor:
        if sample_weight is None:
            return torch.ones(n, dtype=x.dtype, device=x.device)
        w = _to_float("sample_weight", sample_weight, x.dtype, x.device)
        if tuple(w.shape) != (n,):
            raise ValueError(f"sample_weight must have shape (N,) = ({n},), got {tuple(w.shape)}")
        if bool((w < 0).any()):
            raise ValueError(
                f"sample_weight must be non-negative, got minimum {float(w.min()):.5g}"
            )
        return w

    def _check_inits(self, d: int, groups: int | None, x: Tensor) -> _Inits:
        """Validate ``*_init`` against K, D (and G) and batch them to (G, …)."""
        k, ct = self.n_components, self.covariance_type
        weights = means = precisions = None
        if self.weights_init is not None:
            wi = _to_float("weights_init", self.weights_init, x.dtype, x.device)
            weights = _check_shape("weights_init", wi, (k,), groups)
            _check_weights_init(weights)
        if self.means_init is not None:
            mi = _to_float("means_init", self.means_init, x.dtype, x.device)
            means = _check_shape("means_init", mi, (k, d), groups)
        if self.precisions_init is not None:
            shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[ct]
            p = _to_float("precisions_init", self.precisions_init, x.dtype, x.device)
            precisions = _check_shape("precisions_init", p, shape, groups)
            _check_precisions_init(precisions, ct)
        return _Inits(weights, means, precisions)

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "precisions_cholesky_"):
            raise NotFittedError(
                "This GaussianMixture instance is not fitted yet; call fit(X) before using "
                "this method"
            )

    # -- initialisation -----------------------------------------------------------------------

    def _initial_resp(self, data: _Data, generator: torch.Generator | None) -> Tensor:
        """(R, K) initial responsibilities by ``init_params`` (a test hook: override freely)."""
        layout, k = data.layout, self.n_components
        r = data.x.shape[0]
        if self.init_params == "random":
            resp = uniform_draws((r, k), generator, data.x)
            return resp / resp.sum(dim=1, keepdim=True)
        if self.init_params == "kmeans":
            labels = kmeans_labels(layout, data.x, data.w, k, generator)
            return torch.nn.functional.one_hot(labels, k).to(data.x.dtype)
        if self.init_params == "k-means++":
            rows = kmeans_plusplus(layout, data.x, data.w, k, generator)
        else:
            rows = draw_distinct_rows(layout, data.w, k, generator)
        resp = data.x.new_zeros((r, k))
        cols = torch.arange(k, device=rows.device).expand_as(rows)
        resp[rows.reshape(-1), cols.reshape(-1)] = 1.0
        return resp

    def _initial_params(
        self, data: _Data, inits: _Inits, generator: torch.Generator | None
    ) -> _Params:
        """Initial parameters: M-step from initial responsibilities, overridden by ``*_init``."""
        ct = self.covariance_type
        g = data.layout.num_groups
        all_groups = torch.ones(g, dtype=torch.bool, device=data.x.device)
        weights = means = cov = None
        if inits.weights is None or inits.means is None or inits.precisions is None:
            resp = self._initial_resp(data, generator)
            nk, means, cov = _estimate_gaussian_parameters(
                data, resp, self.reg_covar, ct, all_groups
            )
            weights = nk / data.total_weight[:, None]
        if inits.weights is not None:
            weights = inits.weights
        if inits.means is not None:
            means = inits.means - data.centre[:, None, :]
        assert weights is not None and means is not None
        groups = None if g == 1 else torch.arange(g)
        if inits.precisions is None:
            assert cov is not None
            prec_chol = _compute_precision_cholesky(cov, ct, groups)
        else:
            prec_chol = _precision_cholesky_from_precisions(inits.precisions, ct)
            cov = _covariances_from_cholesky(prec_chol, ct)
        return _Params(weights, means, cov, prec_chol)

    # -- EM -----------------------------------------------------------------------------------

    def _m_step(
        self,
        data: _Data,
        log_resp: Tensor | None,
        old: _Params,
        active: Tensor,
        fused: tuple[Tensor, Tensor] | None = None,
    ) -> _Params:
        """M-step for the ``active`` (G,) groups; inactive groups keep ``old``.

        ``fused`` is ``(rw, moments)`` from :func:`_fused_diag_pass`, used instead of
        ``log_resp``.
        """
        ct = self.covariance_type
        if fused is not None:
            nk, means, cov = _estimate_gaussian_parameters(
                data, fused[0], self.reg_covar, ct, active, weighted=True, moments=fused[1]
            )
        else:
            assert log_resp is not None
            resp = log_resp.clamp_min(_log_floor(log_resp.dtype)).exp_()
            nk, means, cov = _estimate_gaussian_parameters(data, resp, self.reg_covar, ct, active)
        weights = nk / nk.sum(dim=1, keepdim=True)
        prec_chol = old.precisions_cholesky.clone()
        idx = torch.nonzero(active)[:, 0]
        groups = None if data.layout.num_groups == 1 else idx
        prec_chol[idx] = _compute_precision_cholesky(cov[idx], ct, groups)
        return _Params(weights, means, cov, prec_chol).where(active, old)

    def _em(self, data: _Data, params: _Params, lower_bound: Tensor) -> _Outcome:
        """EM iterations from ``params``; each group stops once its bound changes < tol."""
        g = data.layout.num_groups
        device = data.x.device
        active = torch.ones(g, dtype=torch.bool, device=device)
        converged = torch.zeros(g, dtype=torch.bool, device=device)
        n_iter = torch.zeros(g, dtype=torch.int64, device=device)
        history: list[float] = []
        fuse = g == 1 and data.feats is not None
        buffers = None
        if fuse:
            n, k = data.x.shape[0], params.means.shape[1]
            buffers = (data.x.new_empty(n), data.x.new_empty((k, n)))
        for it in range(1, self.max_iter + 1):
            if fuse:
                log_prob_norm, rw, moments = _fused_diag_pass(
                    data, params, self.covariance_type, buffers
                )
                params = self._m_step(data, None, params, active, fused=(rw, moments))
            else:
                log_prob_norm, log_resp = _e_step(data, params, self.covariance_type)
                params = self._m_step(data, log_resp, params, active)
            current = _lower_bound(data, log_prob_norm)
            change = current - lower_bound
            lower_bound = torch.where(active, current, lower_bound)
            n_iter = torch.where(active, torch.full_like(n_iter, it), n_iter)
            history.append(float(lower_bound[0]))
            done = active & (change.abs() < self.tol)
            converged |= done
            active &= ~done
            if not bool(active.any()):
                break
        return _Outcome(params, lower_bound, n_iter, converged, history)

    def _fit_batched(self, data: _Data, inits: _Inits, warm: _Params | None) -> _Outcome:
        """``n_init`` EM runs (or one warm run); per group, keep the best lower bound."""
        g = data.layout.num_groups
        device = data.x.device
        generator = _generator(self.random_state)
        n_init = 1 if warm is not None else self.n_init
        best: _Outcome | None = None
        for _ in range(n_init):
            if warm is not None:
                params = warm
                start = torch.full((g,), self.lower_bound_, dtype=torch.float64, device=device)
            else:
                params = self._initial_params(data, inits, generator)
                start = torch.full((g,), -math.inf, dtype=torch.float64, device=device)
            if self.max_iter == 0:
                zeros = torch.zeros(g, dtype=torch.int64, device=device)
                no = torch.zeros(g, dtype=torch.bool, device=device)
                best = _Outcome(params, start.fill_(-math.inf), zeros, no, [])
                continue
            run = self._em(data, params, start)
            if best is None:
                best = run
                continue
            take = (run.lower_bound > best.lower_bound) | (best.lower_bound == -math.inf)
            best = _Outcome(
                run.params.where(take, best.params),
                torch.where(take, run.lower_bound, best.lower_bound),
                torch.where(take, run.n_iter, best.n_iter),
                torch.where(take, run.converged, best.converged),
                run.lower_bounds if bool(take[0]) else best.lower_bounds,
            )
        assert best is not None
        return best

    # -- public API ---------------------------------------------------------------------------

    def fit(
        self,
        X: Tensor | npt.ArrayLike,
        y: object = None,
        sample_weight: Tensor | npt.ArrayLike | None = None,
    ) -> GaussianMixture:
        """Estimate the parameters with EM (``n_init`` runs, keep the best lower bound).

        Args:
            X: (N, D) samples, N >= n_components.
            y: ignored (scikit-learn API compatibility).
            sample_weight: (N,) non-negative weights, at least ``n_components`` positive.

        Returns:
            ``self``, fitted.

        Raises:
            ValueError: on invalid input, hyper-parameters or initial values, or an ill-defined
                covariance during EM (the message names the component).

        Warns:
            ConvergenceWarning: if the best run did not converge within ``max_iter``.
        """
        self._fit(X, sample_weight, labels=False)
        return self

    def fit_predict(
        self,
        X: Tensor | npt.ArrayLike,
        y: object = None,
        sample_weight: Tensor | npt.ArrayLike | None = None,
    ) -> Tensor:
        """Fit, then return the component of each sample (equal to ``fit(X).predict(X)``).

        Args:
            X: (N, D) samples.
            y: ignored.
            sample_weight: (N,) non-negative weights.

        Returns:
            (N,) int64 component labels.
        """
        out = self._fit(X, sample_weight, labels=True)
        assert out is not None
        return out

    def _fit(
        self,
        X: Tensor | npt.ArrayLike,
        sample_weight: Tensor | npt.ArrayLike | None,
        *,
        labels: bool,
    ) -> Tensor | None:
        """Fit; return the final E-step's labels only when ``labels`` (``fit_predict``)."""
        self._check_hyperparameters()
        dtype, device = self._resolve(X)
        x = self._check_x(X, dtype, device)
        n, d = x.shape
        if n < self.n_components:
            raise ValueError(
                f"X must have at least n_components={self.n_components} samples, got N={n}"
            )
        w = self._check_sample_weight(sample_weight, n, x)
        positive = int((w > 0).sum())
        if positive < self.n_components:
            raise ValueError(
                f"sample_weight must have at least n_components={self.n_components} positive "
                f"entries, got {positive}"
            )
        warm_ok = self.warm_start and hasattr(self, "precisions_cholesky_")
        if warm_ok and d != self.n_features_in_:
            raise ValueError(
                f"X must have D={self.n_features_in_} features to warm-start, got D={d}"
            )
        inits = self._check_inits(d, None, x)
        data = _prepare_data(
            x, w, SegmentLayout.single(n, device), self.covariance_type, self.chunk_size
        )
        warm = None
        if warm_ok:
            warm = _Params(
                self.weights_.to(dtype=dtype, device=device)[None],
                (self.means_.to(dtype=dtype, device=device) - data.centre[0])[None],
                self.covariances_.to(dtype=dtype, device=device)[None],
                self.precisions_cholesky_.to(dtype=dtype, device=device)[None],
            )
        outcome = self._fit_batched(data, inits, warm)
        if not bool(outcome.converged[0]) and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge within "
                f"max_iter={self.max_iter} iterations. Try different init parameters, or "
                "increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        p = outcome.params
        self._set_fitted(
            p.weights[0],
            p.means[0] + data.centre[0],
            p.covariances[0],
            p.precisions_cholesky[0],
        )
        self.converged_ = bool(outcome.converged[0])
        self.n_iter_ = int(outcome.n_iter[0])
        self.lower_bound_ = float(outcome.lower_bound[0])
        self.lower_bounds_ = outcome.lower_bounds
        if not labels:
            return None
        # Final E-step so that fit_predict(X) == fit(X).predict(X) for any max_iter/tol.
        _, log_resp = _e_step(data, p, self.covariance_type)
        return torch.argmax(log_resp, dim=1)

    def _set_fitted(
        self, weights: Tensor, means: Tensor, covariances: Tensor, prec_chol: Tensor
    ) -> None:
        self.weights_ = weights
        self.means_ = means
        self.covariances_ = covariances
        self.precisions_cholesky_ = prec_chol
        self.precisions_ = _precisions_from_cholesky(prec_chol, self.covariance_type)
        self.n_features_in_ = int(means.shape[1])
        self.dtype_ = means.dtype
        self.device_ = means.device

    def fit_grouped(
        self,
        X: Tensor | npt.ArrayLike,
        group_ids: Tensor | npt.ArrayLike,
        num_groups: int,
        sample_weight: Tensor | npt.ArrayLike | None = None,
    ) -> GroupedGaussianMixture:
        """Fit G independent mixtures, one per group of rows, vectorised over the groups.

        Each group's parameters, ``lower_bound_``, ``n_iter_`` and ``converged_`` equal (to
        rounding) a separate :meth:`fit` on that group's rows with the same initial values
        (``*_init`` may be shared (K, …) or per group (G, K, …)). Random initialisations
        (``init_params`` without complete ``*_init``) are drawn for all groups at once, so they
        differ from separate fits with the same seed. ``warm_start`` does not apply; ``self`` is
        not modified.

        Args:
            X: (N, D) samples.
            group_ids: (N,) integer group of each sample, in [0, num_groups).
            num_groups: G >= 1; every group needs at least ``n_components`` samples. A
                class absent from the data is not fitted silently as garbage: remap the
                present classes to ``0..G'-1`` first (e.g. ``torch.unique(ids,
                return_inverse=True)``).
            sample_weight: (N,) non-negative weights.

        Returns:
            The fitted :class:`GroupedGaussianMixture` (attributes with a leading G).

        Raises:
            ValueError: on invalid input (naming the group that has too few samples).

        Warns:
            ConvergenceWarning: listing the groups whose best run did not converge.
        """
        self._check_hyperparameters()
        dtype, device = self._resolve(X)
        x = self._check_x(X, dtype, device)
        n, d = x.shape
        if not _is_int(num_groups) or num_groups < 1:
            raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
        ids = _as_array("group_ids", group_ids, device)
        if ids.is_floating_point() or ids.dtype == torch.bool or tuple(ids.shape) != (n,):
            raise ValueError(
                f"group_ids must be an integer array of shape (N,) = ({n},), got dtype "
                f"{ids.dtype} and shape {tuple(ids.shape)}"
            )
        ids = ids.to(torch.int64)
        if bool(((ids < 0) | (ids >= num_groups)).any()):
            raise ValueError(
                f"group_ids must lie in [0, num_groups) = [0, {num_groups}), got values in "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )
        w = self._check_sample_weight(sample_weight, n, x)
        k = self.n_components
        counts = torch.bincount(ids, minlength=num_groups)
        positive = torch.bincount(ids, weights=(w > 0).to(torch.float64), minlength=num_groups)
        for what, per_group in (("samples", counts), ("positive sample weights", positive)):
            short = torch.nonzero(per_group < k)
            if short.numel():
                gi = int(short[0, 0])
                raise ValueError(
                    f"group {gi} has {int(per_group[gi])} {what}, fewer than "
                    f"n_components={k}; every group needs at least n_components"
                )
        inits = self._check_inits(d, num_groups, x)
        layout = SegmentLayout.grouped(ids, num_groups)
        data = _prepare_data(x, w, layout, self.covariance_type, self.chunk_size)
        outcome = self._fit_batched(data, inits, None)
        if self.max_iter > 0 and not bool(outcome.converged.all()):
            failed = torch.nonzero(~outcome.converged)[:, 0].tolist()
            warnings.warn(
                f"The best initialization of group(s) {failed} did not converge within "
                f"max_iter={self.max_iter} iterations. Try different init parameters, or "
                "increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=2,
            )
        p = outcome.params
        return GroupedGaussianMixture(
            covariance_type=self.covariance_type,
            weights_=p.weights,
            means_=p.means + data.centre[:, None, :],
            covariances_=p.covariances,
            precisions_=_precisions_from_cholesky(p.precisions_cholesky, self.covariance_type),
            precisions_cholesky_=p.precisions_cholesky,
            lower_bound_=outcome.lower_bound,
            n_iter_=outcome.n_iter,
            converged_=outcome.converged,
            chunk_size=self.chunk_size,
        )

    def _check_new_x(self, X: Tensor | npt.ArrayLike) -> Tensor:
        self._check_is_fitted()
        x = self._check_x(X, self.dtype_, self.device_)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X must have D={self.n_features_in_} features (as in fit), got "
                f"shape {tuple(x.shape)}"
            )
        return x

    def _estimate_weighted_log_prob(self, x: Tensor) -> Tensor:
        """(N, K) ``log N(x | μ_k, Σ_k) + log w_k``."""
        log_prob = log_prob_from_precision_cholesky(
            x,
            self.means_,
            self.precisions_cholesky_,
            self.covariance_type,
            chunk_size=self.chunk_size,
        )
        return log_prob + torch.log(self.weights_)

    def score_samples(self, X: Tensor | npt.ArrayLike) -> Tensor:
        """Log-likelihood of each sample under the mixture.

        Args:
            X: (N, D) samples.

        Returns:
            (N,) ``log p(x_n)``.
        """
        return torch.logsumexp(self._estimate_weighted_log_prob(self._check_new_x(X)), dim=1)

    def score(self, X: Tensor | npt.ArrayLike, y: object = None) -> float:
        """Mean log-likelihood of the samples.

        Args:
            X: (N, D) samples (numpy array or tensor).
            y: ignored (scikit-learn compatibility).

        Returns:
            ``mean_n log p(x_n)`` as a float.

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: if ``X`` is not finite or has a different D than in :meth:`fit`.
        """
        return float(self.score_samples(X).mean())

    def predict(self, X: Tensor | npt.ArrayLike) -> Tensor:
        """Most probable component of each sample.

        Args:
            X: (N, D) samples.

        Returns:
            (N,) int64 component indices, ``argmax_k w_k N(x_n | μ_k, Σ_k)``.

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: if ``X`` is not finite or has a different D than in :meth:`fit`.
        """
        return torch.argmax(self._estimate_weighted_log_prob(self._check_new_x(X)), dim=1)

    def predict_proba(self, X: Tensor | npt.ArrayLike) -> Tensor:
        """Posterior probability of each component (the responsibilities).

        Args:
            X: (N, D) samples.

        Returns:
            (N, K) probabilities, rows summing to 1.

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: if ``X`` is not finite or has a different D than in :meth:`fit`.
        """
        weighted = self._estimate_weighted_log_prob(self._check_new_x(X))
        return torch.exp(weighted - torch.logsumexp(weighted, dim=1, keepdim=True))

    def sample(self, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        """Draw samples from the fitted mixture, ordered by component as scikit-learn does.

        An int ``random_state`` gives the same samples at every call; a ``torch.Generator``
        advances.

        Args:
            n_samples: number of samples (>= 1).

        Returns:
            ``(X, y)``: (n_samples, D) samples and their (n_samples,) int64 components, sorted
            by component.
        """
        self._check_is_fitted()
        if not _is_int(n_samples) or n_samples < 1:
            raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
        generator = _generator(self.random_state)
        where = generator.device if generator is not None else torch.device("cpu")
        x, y = sample_mixture(
            int(n_samples),
            self.means_.to(where),
            self.covariances_.to(where),
            torch.log(self.weights_ / self.weights_.sum()).to(where),
            self.covariance_type,
            generator=generator,
        )
        order = torch.argsort(y, stable=True)
        return x[order].to(self.device_), y[order].to(self.device_)

    def _n_parameters(self) -> int:
        return _n_parameters(self.n_components, self.n_features_in_, self.covariance_type)

    def bic(self, X: Tensor | npt.ArrayLike) -> float:
        """Bayesian information criterion ``−2 N·score(X) + p log N`` (lower is better).

        Args:
            X: (N, D) samples.

        Returns:
            The criterion as a float; ``p`` is the number of free parameters.
        """
        n = self._check_new_x(X).shape[0]
        return -2.0 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X: Tensor | npt.ArrayLike) -> float:
        """Akaike information criterion ``−2 N·score(X) + 2p`` (lower is better).

        Args:
            X: (N, D) samples.

        Returns:
            The criterion as a float; ``p`` is the number of free parameters.
        """
        n = self._check_new_x(X).shape[0]
        return -2.0 * self.score(X) * n + 2.0 * self._n_parameters()


@dataclass(frozen=True, eq=False)
class GroupedGaussianMixture:
    """G Gaussian mixtures fitted together by :meth:`GaussianMixture.fit_grouped`.

    Every attribute is the single-mixture attribute with a leading G dimension; row ``g``
    equals a separate fit on group ``g``'s rows.

    Attributes:
        covariance_type: shared covariance type.
        weights_: (G, K) weights.
        means_: (G, K, D) means.
        covariances_: (G, K, D, D) full, (G, D, D) tied, (G, K, D) diag or (G, K) spherical.
        precisions_: inverse covariances, same shape.
        precisions_cholesky_: upper Cholesky factors of the precisions, same shape.
        lower_bound_: (G,) float64 (weighted) mean log-likelihood of each group's best run.
        n_iter_: (G,) int64 EM iterations of each group's best run.
        converged_: (G,) bool.
        chunk_size: rows per chunk when scoring.
    """

    covariance_type: CovarianceType
    weights_: Tensor
    means_: Tensor
    covariances_: Tensor
    precisions_: Tensor
    precisions_cholesky_: Tensor
    lower_bound_: Tensor
    n_iter_: Tensor
    converged_: Tensor
    chunk_size: int | None = None

    @property
    def num_groups(self) -> int:
        """G, the number of mixtures."""
        return int(self.means_.shape[0])

    @property
    def n_components(self) -> int:
        """K, components per mixture."""
        return int(self.means_.shape[1])

    @property
    def n_features_in_(self) -> int:
        """D, the number of features."""
        return int(self.means_.shape[2])

    def mixture(self, group: int) -> GaussianMixture:
        """The fitted :class:`GaussianMixture` of one group.

        Args:
            group: index in [0, G).

        Returns:
            A fitted single mixture sharing this group's parameter tensors.
        """
        if not _is_int(group) or not 0 <= group < self.num_groups:
            raise ValueError(f"group must be an int in [0, {self.num_groups}), got {group!r}")
        gm = GaussianMixture(
            self.n_components,
            covariance_type=self.covariance_type,
            chunk_size=self.chunk_size,
            dtype=self.means_.dtype,
            device=self.means_.device,
        )
        gm._set_fitted(
            self.weights_[group],
            self.means_[group],
            self.covariances_[group],
            self.precisions_cholesky_[group],
        )
        gm.converged_ = bool(self.converged_[group])
        gm.n_iter_ = int(self.n_iter_[group])
        gm.lower_bound_ = float(self.lower_bound_[group])
        gm.lower_bounds_ = []
        return gm

    def score_samples(self, X: Tensor | npt.ArrayLike) -> Tensor:
        """Log-likelihood of every sample under every group's mixture, ``log p(x | g)``.

        Args:
            X: (N, D) samples.

        Returns:
            (N, G) log-densities (e.g. class-conditional scores).
        """
        x = _to_float("X", X, self.means_.dtype, self.means_.device)
        g, k, d = self.means_.shape
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"X must have shape (N, {d}), got shape {tuple(x.shape)}")
        pc: Any = self.precisions_cholesky_
        ct: CovarianceType = self.covariance_type
        if ct == "tied":
            pc, ct = pc.unsqueeze(1).expand(g, k, d, d), "full"
        log_prob = log_prob_from_precision_cholesky(
            x,
            self.means_.reshape(g * k, d),
            pc.reshape(g * k, *pc.shape[2:]),
            ct,
            chunk_size=self.chunk_size,
        )
        weighted = log_prob.reshape(-1, g, k) + torch.log(self.weights_)
        return torch.logsumexp(weighted, dim=-1)
