"""Entropic optimal transport (Sinkhorn) in the log domain: dense (batched) and segmented.

This is the E-step of GMMSeg (step 6 of the algorithm page in the documentation): pixels of one
class are softly assigned to that class's M mixture components under the constraint that every
component receives the same share of the pixels. Given scores S (a higher score means a better
match) and a temperature ``epsilon``, the plan is

    P = diag(exp(f)) · exp(S / epsilon) · diag(exp(g)),

with potentials f (one per row) and g (one per column) chosen so that the rows of P sum to the row
marginal and its columns to the column marginal. This is entropic optimal transport with cost
``-S`` and regularisation ``epsilon``.

Each of the ``n_iters`` rounds first rescales the columns (they then sum to the column marginal)
and then the rows (they then sum *exactly* to the row marginal), the order of the paper's E-step.
With uniform marginals and ``n_iters=3`` the result equals the plain-domain loop of the reference
implementation (which may rescale the result afterwards, e.g. by N so that rows sum to 1)::

    Q = exp(S / eps)
    for _ in range(3):
        Q /= Q.sum(0, keepdim=True) * M  # every column sums to 1/M
        Q /= Q.sum(1, keepdim=True) * N  # every row sums to 1/N

Everything is computed with potentials in the log domain, so ``epsilon`` as small as 1e-3 neither
overflows nor underflows.

Shapes: N rows (pixels), M columns (mixture components), G groups (classes).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["segmented_sinkhorn", "sinkhorn"]

_HALF_DTYPES = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the computation runs in: float32 for half precision inputs, else ``dtype``."""
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def _check_scores(scores: object, *, ndim: int | None = None) -> Tensor:
    """Validate the structure of ``scores``: a floating tensor with >= 2 (or exactly ``ndim``) dims.

    Finiteness is checked by :func:`_scaled_shift`, which needs ``epsilon``.
    """
    if not isinstance(scores, Tensor):
        raise ValueError(f"scores must be a torch.Tensor; received {type(scores).__name__}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must have a floating dtype; received {scores.dtype}")
    if ndim is None and scores.ndim < 2:
        raise ValueError(
            f"scores must have shape (..., N, M) with at least 2 dims; "
            f"received shape {tuple(scores.shape)}"
        )
    if ndim is not None and scores.ndim != ndim:
        raise ValueError(
            f"scores must have shape (N, M) (2 dims); received shape {tuple(scores.shape)}"
        )
    return scores


def _scaled_shift(scores: Tensor, inv_eps: float) -> Tensor:
    """Validate non-empty ``scores`` for finiteness and return the shift ``-max(scores) / epsilon``.

    The algorithms use ``s = scores / epsilon - max(scores) / epsilon`` (a constant shift changes
    no plan; it keeps ``exp(s) <= 1``), computed as ``c + inv_eps * scores`` in one pass. One
    ``aminmax`` proves that every entry is finite (NaN and ±inf propagate to the extremes) and that
    no intermediate of that pass overflows.

    Returns:
        0-dim tensor ``c`` (dtype and device of ``scores``, no gradient).
    """
    extremes = torch.stack(torch.aminmax(scores.detach()))
    lo, hi = extremes.tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("scores must be finite; received a tensor containing NaN or Inf")
    limit = torch.finfo(scores.dtype).max * (1.0 - torch.finfo(scores.dtype).eps)
    if not max(abs(lo), abs(hi), hi - lo) * inv_eps <= limit:
        raise ValueError(
            f"scores / epsilon must be finite in {scores.dtype}; received scores in "
            f"[{lo:g}, {hi:g}] with epsilon = {1.0 / inv_eps:g}, which overflows: "
            "rescale scores or increase epsilon"
        )
    return extremes[1] * -inv_eps


def _check_epsilon(epsilon: object) -> float:
    """Validate ``epsilon``: a finite real number > 0."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise ValueError(f"epsilon must be a positive real number; received {epsilon!r}")
    value = float(epsilon)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"epsilon must be a finite number > 0; received {epsilon!r}")
    return value


def _check_n_iters(n_iters: object) -> int:
    """Validate ``n_iters``: an integer >= 1."""
    if isinstance(n_iters, bool) or not isinstance(n_iters, numbers.Integral):
        raise ValueError(f"n_iters must be an integer >= 1; received {n_iters!r}")
    if int(n_iters) < 1:
        raise ValueError(f"n_iters must be an integer >= 1; received {n_iters!r}")
    return int(n_iters)


def _check_marginal(
    marginal: object,
    name: str,
    *,
    size: int,
    letter: str,
    batch_shape: torch.Size,
    like: Tensor,
) -> Tensor:
    """Validate a marginal of shape (size,) or (..., size) and cast it to ``like``'s dtype.

    Its leading dims must broadcast to ``batch_shape``; entries must be nonnegative and finite,
    and the total of every problem must be positive.
    """
    if not isinstance(marginal, Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor or None; received {type(marginal).__name__}"
        )
    if not marginal.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype; received {marginal.dtype}")
    if marginal.device != like.device:
        raise ValueError(
            f"{name} must be on the same device as scores ({like.device}); "
            f"received {marginal.device}"
        )
    expected = f"({letter},) or (..., {letter}) with {letter}={size}"
    if marginal.ndim < 1 or marginal.shape[-1] != size:
        raise ValueError(f"{name} must have shape {expected}; received {tuple(marginal.shape)}")
    lead = marginal.shape[:-1]
    fits = len(lead) <= len(batch_shape) and all(
        d in (1, t) for d, t in zip(reversed(lead), reversed(batch_shape), strict=False)
    )
    if not fits:
        raise ValueError(
            f"{name} must have shape {expected} whose leading dims broadcast to the batch shape "
            f"{tuple(batch_shape)} of scores; received {tuple(marginal.shape)}"
        )
    marginal = marginal.to(like.dtype)
    if marginal.numel() == 0:
        return marginal
    values = marginal.detach()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} must be finite; received a tensor containing NaN or Inf")
    smallest = float(values.min())
    if smallest < 0.0:
        raise ValueError(f"{name} must be nonnegative; received a minimum of {smallest:g}")
    if size > 0:
        totals = values.sum(-1)
        if not bool((totals > 0).all()):
            raise ValueError(f"{name} must have a positive total; received a total of 0")
    return marginal


def _check_same_totals(
    row_total: Tensor | float, col_total: Tensor | float, *, dtype: torch.dtype
) -> None:
    """Check that row and column marginals carry the same mass (relative tolerance)."""
    rtol = math.sqrt(torch.finfo(dtype).eps)
    rows = torch.as_tensor(row_total, dtype=torch.float64).detach()
    cols = torch.as_tensor(col_total, dtype=torch.float64).detach()
    rows, cols = rows + 0 * cols, cols + 0 * rows  # broadcast to a common shape
    gap = (rows - cols).abs()
    allowed = rtol * torch.maximum(rows.abs(), cols.abs())
    if bool((gap > allowed).any()):
        worst = int(torch.argmax(gap - allowed))
        row_worst = float(rows.reshape(-1)[worst])
        col_worst = float(cols.reshape(-1)[worst])
        raise ValueError(
            "row_marginal and col_marginal must have the same total in every problem "
            f"(defaults are uniform with total 1); received row total {row_worst:.8g} "
            f"and col total {col_worst:.8g}"
        )


# --------------------------------------------------------------------------------------------------
# Dense (batched) Sinkhorn
# --------------------------------------------------------------------------------------------------


def sinkhorn(
    scores: Tensor,
    epsilon: float,
    n_iters: int,
    row_marginal: Tensor | None = None,
    col_marginal: Tensor | None = None,
) -> Tensor:
    """Entropic optimal transport plan between rows and columns of ``scores`` (log domain).

    Solves ``max_P <P, scores> + epsilon * H(P)`` subject to ``P 1 = row_marginal`` and
    ``P^T 1 = col_marginal`` approximately, with ``n_iters`` Sinkhorn rounds. Each round updates the
    column potential first (columns then sum to ``col_marginal``) and then the row potential (rows
    then sum to ``row_marginal`` exactly), as the GMMSeg E-step does. Equivalent to POT's
    ``ot.sinkhorn(a, b, -scores, epsilon, method="sinkhorn_log")`` at convergence.

    Args:
        scores: ``(..., N, M)`` float. Affinity of row n to column m (the negative cost).
            Leading dims are independent problems. Must be finite.
        epsilon: Entropic regularisation (temperature), > 0. Small values give sharper plans; the
            log-domain updates stay finite down to ``1e-3`` and below.
        n_iters: Number of (column, row) update rounds, >= 1. The paper uses 3.
        row_marginal: ``(N,)`` or ``(..., N)`` float, nonnegative, finite; leading dims broadcast
            to those of ``scores``. Default: uniform ``1/N``.
        col_marginal: ``(M,)`` or ``(..., M)`` float, nonnegative, finite, with the same total as
            ``row_marginal`` in every problem. Default: uniform ``1/M``.

    Returns:
        ``(..., N, M)`` transport plan, dtype and device of ``scores`` (half-precision inputs are
        computed in float32). Its rows sum to ``row_marginal``; its columns sum to
        ``col_marginal`` once the iteration has converged. Empty (zeros) when any dim is 0.
        Differentiable with respect to ``scores`` (and strictly positive marginals).

    Raises:
        ValueError: If ``scores`` is not a floating tensor with at least 2 dims, contains NaN/Inf,
            or ``scores / epsilon`` overflows its dtype; if ``epsilon`` is not a number > 0 or
            ``n_iters`` not an integer >= 1; if a marginal has the wrong shape, dtype or device,
            a negative or non-finite entry, a zero total, or if the two marginals have different
            totals (relative tolerance ``sqrt(finfo.eps)``).

    Example:
        >>> import torch
        >>> from gmmseg.sinkhorn import sinkhorn
        >>> scores = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]])
        >>> plan = sinkhorn(scores, epsilon=0.05, n_iters=3)
        >>> plan.sum(-1)  # rows: uniform 1/N
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
        >>> plan.argmax(-1)
        tensor([0, 0, 1, 1])
    """
    scores = _check_scores(scores)
    eps = _check_epsilon(epsilon)
    n_iters = _check_n_iters(n_iters)
    *batch, n, m = scores.shape
    batch_shape = torch.Size(batch)
    work = scores.to(_work_dtype(scores.dtype))

    a = None
    if row_marginal is not None:
        a = _check_marginal(
            row_marginal, "row_marginal", size=n, letter="N", batch_shape=batch_shape, like=work
        )
    b = None
    if col_marginal is not None:
        b = _check_marginal(
            col_marginal, "col_marginal", size=m, letter="M", batch_shape=batch_shape, like=work
        )
    if scores.numel() == 0:  # N, M or a batch dim is 0
        return scores.new_zeros(scores.shape)
    if a is not None or b is not None:
        _check_same_totals(
            1.0 if a is None else a.sum(-1), 1.0 if b is None else b.sum(-1), dtype=work.dtype
        )

    # log a, log b: Python floats for the uniform defaults (no extra tensors), else tensors with
    # -inf at zero entries (those rows/columns get no mass).
    log_a: Tensor | float = -math.log(n) if a is None else torch.log(a)
    log_b: Tensor | float = -math.log(m) if b is None else torch.log(b)

    inv_eps = 1.0 / eps
    s = torch.add(_scaled_shift(work, inv_eps), work, alpha=inv_eps)  # scores / eps - const
    # Round 1 starts from f = 0, i.e. from exp(S / eps) as in the plain-domain algorithm.
    g = log_b - torch.logsumexp(s, dim=-2)
    for _ in range(n_iters - 1):
        f = log_a - torch.logsumexp(s + g.unsqueeze(-2), dim=-1)  # row update
        g = log_b - torch.logsumexp(s + f.unsqueeze(-1), dim=-2)  # column update
    # Final row update, written as a * softmax(s + g) rather than exp(s + f + g): the rows then sum
    # to a up to rounding of the normalisation, even when |s| = |scores| / epsilon is large.
    rows = torch.softmax(s + g.unsqueeze(-2), dim=-1)
    plan = rows / n if a is None else rows * a.unsqueeze(-1)
    return plan.to(scores.dtype)


# --------------------------------------------------------------------------------------------------
# Segmented (ragged groups) Sinkhorn
# --------------------------------------------------------------------------------------------------


def _check_segment_ids(
    segment_ids: object, num_segments: object, *, n: int, like: Tensor, values: bool = True
) -> int:
    """Validate ``segment_ids`` ((N,) int64 in [0, G); the range only if ``values``) and G >= 0."""
    if isinstance(num_segments, bool) or not isinstance(num_segments, numbers.Integral):
        raise ValueError(f"num_segments must be an integer >= 0; received {num_segments!r}")
    g = int(num_segments)
    if g < 0:
        raise ValueError(f"num_segments must be an integer >= 0; received {num_segments!r}")
    if not isinstance(segment_ids, Tensor):
        raise ValueError(
            f"segment_ids must be a torch.Tensor; received {type(segment_ids).__name__}"
        )
    if segment_ids.dtype != torch.int64:
        raise ValueError(f"segment_ids must have dtype torch.int64; received {segment_ids.dtype}")
    if segment_ids.shape != (n,):
        raise ValueError(
            f"segment_ids must have shape (N,) = ({n},) matching scores; "
            f"received {tuple(segment_ids.shape)}"
        )
    if segment_ids.device != like.device:
        raise ValueError(
            f"segment_ids must be on the same device as scores ({like.device}); "
            f"received {segment_ids.device}"
        )
    if values and n > 0:
        lo, hi = torch.stack(torch.aminmax(segment_ids)).tolist()
        if lo < 0 or hi >= g:
            raise ValueError(
                f"segment_ids must lie in [0, num_segments) = [0, {g}); "
                f"received values from {lo} to {hi}"
            )
    return g


def _check_segment_col_marginal(
    col_marginal: object, *, g: int, m: int, like: Tensor
) -> Tensor | None:
    """Validate the column marginal of :func:`segmented_sinkhorn`; return it as (G, M) or None."""
    if col_marginal is None:
        return None
    if not isinstance(col_marginal, Tensor):
        raise ValueError(
            f"col_marginal must be a torch.Tensor or None; received {type(col_marginal).__name__}"
        )
    if not col_marginal.is_floating_point():
        raise ValueError(f"col_marginal must have a floating dtype; received {col_marginal.dtype}")
    if col_marginal.device != like.device:
        raise ValueError(
            f"col_marginal must be on the same device as scores ({like.device}); "
            f"received {col_marginal.device}"
        )
    if col_marginal.shape not in ((m,), (g, m)):
        raise ValueError(
            f"col_marginal must have shape (M,) = ({m},) or (G, M) = ({g}, {m}); "
            f"received {tuple(col_marginal.shape)}"
        )
    marginal = col_marginal.to(like.dtype).expand(g, m)
    if marginal.numel() == 0:
        return marginal
    values = marginal.detach()
    if not bool(torch.isfinite(values).all()):
        raise ValueError("col_marginal must be finite; received a tensor containing NaN or Inf")
    smallest = float(values.min())
    if smallest < 0.0:
        raise ValueError(f"col_marginal must be nonnegative; received a minimum of {smallest:g}")
    totals = values.sum(-1, dtype=torch.float64)
    gap = (totals - 1.0).abs()
    if bool((gap > math.sqrt(torch.finfo(like.dtype).eps)).any()):
        worst = float(totals[int(torch.argmax(gap))])
        raise ValueError(
            "col_marginal must sum to 1 in every group (the total of the uniform row marginal "
            f"1/N_k); received a total of {worst:.8g}"
        )
    return marginal


def segmented_sinkhorn(
    scores: Tensor,
    segment_ids: Tensor,
    num_segments: int,
    epsilon: float,
    n_iters: int,
    col_marginal: Tensor | None = None,
    *,
    validate: bool = True,
) -> Tensor:
    """Sinkhorn inside every group of rows at once (the vectorised GMMSeg E-step).

    Rows with ``segment_ids == k`` form an independent problem with uniform row marginal
    ``1/N_k`` (``N_k`` rows) and column marginal ``col_marginal[k]`` (default uniform ``1/M``),
    so row ``n`` of the result equals the matching row of
    ``sinkhorn(scores[segment_ids == k], epsilon, n_iters, col_marginal=...)``. All groups are
    solved together with segmented sums (no Python loop over groups); rows keep their order.
    Empty groups and groups of one row are allowed.

    Args:
        scores: ``(N, M)`` float, finite. Affinity of pixel n to component m of its own group.
        segment_ids: ``(N,)`` int64 with values in ``[0, num_segments)``: the group of each row.
        num_segments: Number of groups G, >= 0. Groups without rows are allowed.
        epsilon: Entropic regularisation (temperature), > 0.
        n_iters: Number of (column, row) update rounds, >= 1. The paper uses 3.
        col_marginal: ``(M,)`` (shared by all groups) or ``(G, M)`` (one per group) float,
            nonnegative, finite, every row summing to 1 (the mass of each group's uniform row
            marginal; rows of empty groups are validated too). Default: uniform ``1/M``.
        validate: check the values of ``scores`` (finite, ``scores / epsilon`` representable)
            and of ``segment_ids`` (in range). Both checks read a result on the host, a device
            synchronisation on an accelerator; callers whose inputs are valid by construction
            (the GMM head's E-step) pass False, and the call then never synchronises (it
            also computes both forms of the first column update, see ``_segmented_rows``, and
            selects one on the device). Shapes, dtypes, devices and ``col_marginal`` are always
            checked.

    Returns:
        ``(N, M)`` plan, dtype and device of ``scores`` (half-precision inputs are computed in
        float32): the rows of group k sum to ``1/N_k`` (exactly, up to rounding) and its columns
        to ``col_marginal[k]`` (at convergence). Differentiable with respect to ``scores``.

    Note:
        Segmented sums use ``index_add_``, which on CUDA accumulates with atomics: results may
        differ in the last bits between runs unless ``torch.use_deterministic_algorithms(True)``.
        The vectorised form keeps a few (M, N) tensors alive; there is no per-group overhead.

    Raises:
        ValueError: If ``scores`` is not a finite floating ``(N, M)`` tensor (or ``scores /
            epsilon`` overflows); if ``segment_ids`` is not an int64 ``(N,)`` tensor on the device
            of ``scores`` with values in ``[0, num_segments)``; if ``num_segments < 0``,
            ``epsilon <= 0`` or ``n_iters < 1``; if ``col_marginal`` has the wrong shape, dtype or
            device, a negative or non-finite entry, or a row that does not sum to 1.

    Example:
        >>> import torch
        >>> from gmmseg.sinkhorn import segmented_sinkhorn
        >>> scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.1], [0.1, 0.9], [0.8, 0.3]])
        >>> ids = torch.tensor([0, 0, 1, 1, 1])
        >>> plan = segmented_sinkhorn(scores, ids, num_segments=2, epsilon=0.05, n_iters=3)
        >>> plan.sum(-1)  # 1/N_k for the group of each row
        tensor([0.5000, 0.5000, 0.3333, 0.3333, 0.3333])
        >>> plan.argmax(-1)
        tensor([0, 1, 0, 1, 0])
    """
    scores = _check_scores(scores, ndim=2)
    n, m = scores.shape
    g = _check_segment_ids(segment_ids, num_segments, n=n, like=scores, values=validate)
    eps = _check_epsilon(epsilon)
    n_iters = _check_n_iters(n_iters)
    work = scores.to(_work_dtype(scores.dtype))
    b = _check_segment_col_marginal(col_marginal, g=g, m=m, like=work)
    if n == 0 or m == 0:
        return scores.new_zeros((n, m))
    inv_eps = 1.0 / eps
    shift = _scaled_shift(work, inv_eps) if validate else work.detach().amax() * -inv_eps
    # Transposed to (M, N), each component's scores contiguous (see _segmented_rows); stacking
    # the M columns is the cheap way to transpose a narrow (N, M) matrix on CPU.
    s_t = torch.add(shift, torch.stack(work.unbind(1)), alpha=inv_eps)  # scores / eps - const
    r_t, mass = _segmented_rows(s_t, segment_ids, g, n_iters, b, sync_free=not validate)
    plan = torch.stack((r_t * mass).unbind(0), dim=1)  # back to (N, M)
    return plan.to(scores.dtype)


def _row_update(g_t: Tensor, s_t: Tensor, ids: Tensor) -> Tensor:
    """``softmax_j(s_jn + g_t[j, ids[n]])`` over dim 0: rows rescaled to their group's mass."""
    logits = g_t.index_select(1, ids)
    logits += s_t
    return torch.softmax(logits, dim=0)


def _segmented_rows(
    s_t: Tensor, ids: Tensor, g: int, n_iters: int, b: Tensor | None, sync_free: bool = False
) -> tuple[Tensor, Tensor]:
    """Core of :func:`segmented_sinkhorn` on validated, non-empty inputs.

    Args:
        s_t: ``(M, N)`` scores / epsilon minus a constant, with maximum about 0.
        ids: ``(N,)`` int64 group of every row.
        g: Number of groups G.
        n_iters: Rounds, >= 1.
        b: ``(G, M)`` column marginals, or None for uniform ``1/M``.
        sync_free: choose between the two forms of round 1 below on the device (both are
            computed) instead of in Python; the same result, without reading the choice on the host.

    Returns:
        ``(M, N)`` row-normalised plan R (every column of ``R`` sums to 1) and ``(N,)`` row masses
        ``1/N_k``; the plan is ``R^T * mass[:, None]``.

    Works on the transposed layout (M, N): the row update, a softmax over the M components, is a
    reduction across M vectors of length N, and the column update is one segmented sum
    (``index_add_``) along N.

    Column update of round 1 (f = 0, as in the plain algorithm): ``g_kj = log b_kj -
    logsumexp_{n in k} s_nj``. Since ``s <= 0`` the sums of ``exp(s)`` cannot overflow; where one
    underflows (possible only when ``max s`` of a (group, column) is far below the global maximum,
    e.g. small epsilon), all sums are recomputed with exact per-(group, column) maxima.

    Later column updates use the row-normalised plan: after a row update ``P_nj = R_nj / N_k``
    with ``R = softmax_j(s_n + g_k)``, so ``g_kj += log b_kj - log(sum_{n in k} R_nj / N_k)``. That
    sum cannot underflow: the preceding column update left column masses ``b_kj`` and row masses
    ``r_n <= 1``, and ``R_nj = P_nj / r_n >= P_nj``, so ``sum_{n in k} R_nj >= b_kj``.
    """
    m, n = s_t.shape
    dtype = s_t.dtype
    tiny = torch.finfo(dtype).tiny
    counts = ids.new_zeros(g).index_add_(0, ids, torch.ones_like(ids))  # (G,), fixed size
    counts_f = counts.to(dtype).clamp_min(1.0)  # empty groups: 1 (their potentials are unused)
    log_b_t: Tensor | float = -math.log(m) if b is None else torch.log(b.t())  # (M, G)

    # Round 1, column update from f = 0.
    sums = s_t.new_zeros((m, g)).index_add_(1, ids, torch.exp(s_t))
    # A sum of exp(s) is accurate to about one ulp when it exceeds N_k * tiny / eps_machine
    # (every term lost to underflow is below tiny); otherwise use exact per-(group, column) maxima.
    floor = counts_f * (tiny / torch.finfo(dtype).eps)
    underflow = ((sums < floor) & (counts > 0)).any()

    def exact() -> Tensor:
        maxima = s_t.new_zeros((m, g)).scatter_reduce(
            1, ids.expand(m, n), s_t.detach(), "amax", include_self=False
        )
        shifted = torch.exp(s_t - maxima.index_select(1, ids))
        exact_sums = s_t.new_zeros((m, g)).index_add_(1, ids, shifted)
        return log_b_t - torch.log(exact_sums.clamp_min(tiny)) - maxima

    if sync_free:
        # Both are computed and one is selected on the device: a Python branch would read the
        # test on the host. (On a CPU the exact sums cost about twice the rest of round 1.)
        g_t = torch.where(underflow, exact(), log_b_t - torch.log(sums.clamp_min(tiny)))
    elif bool(underflow):
        g_t = exact()
    else:
        g_t = log_b_t - torch.log(sums.clamp_min(tiny))
    # The clamps only act on empty groups (never gathered) and b_kj = 0 columns (potential -inf).

    log_mass_ratio = log_b_t + torch.log(counts_f)  # log(b_kj / (1 / N_k))
    r_t = _row_update(g_t, s_t, ids)
    for _ in range(n_iters - 1):
        col = s_t.new_zeros((m, g)).index_add_(1, ids, r_t)
        g_t = g_t + log_mass_ratio - torch.log(col.clamp_min(tiny))  # column update
        r_t = _row_update(g_t, s_t, ids)
    return r_t, (1.0 / counts_f).index_select(0, ids)
