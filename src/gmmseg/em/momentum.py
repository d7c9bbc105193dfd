"""Momentum M-step of GMMSeg's online EM: the formula, from a ring-buffer bank.

Letters: G groups (classes), M components per group, K ring slots, D embedding dimensions.

:func:`momentum_m_step` is a pure function of the parameters and a ``(G, M, K, D)`` bank: the
formula :meth:`gmmseg.em.memory.ComponentMemory.m_step` applies to its bank, usable on any bank
(e.g. the ``queue`` of an original checkpoint). The final blend and the argument checks are shared
with :meth:`gmmseg.em.streaming.StreamingStatistics.m_step`. Training code calls the memories'
``m_step`` (:class:`gmmseg.em.online.MixtureMemory`), whichever memory it holds.

For each listed group g and each component m, with ``e`` ranging over the counted slots of the
(g, m) ring (step 8 of the algorithm page in the documentation):

    f = normalise(Σ e)
    μ ← mean_momentum · μ + (1 − mean_momentum) · f
    σ_new = sqrt(mean over slots of (e − f)² + variance_floor)      (per dimension)
    σ ← scale_momentum · σ + (1 − scale_momentum) · σ_new

The paper uses ``mean_momentum = 0.999``, ``scale_momentum = 0`` and ``variance_floor = 0.01``.
The spread is computed centred, as the mean of ``(e − f)²``, never as ``E[e²] − …``.

Notes on the original release (``GMMSegHead.update_GMM``):

* The means it receives are unit length (the head re-normalises them at the start of every
  forward) but the blended ``μ`` is returned as is, with norm below 1; it is re-normalised before
  its next use. This function likewise uses ``means`` as given and does not normalise its output.
* It updates every class present in the gathered labels, including classes none of whose pixels
  were written to the memory in that step (e.g. all misclassified): those still move toward the
  direction of their (unchanged) memory. Which groups to pass is the caller's choice.
* ``f = normalise(0) = 0`` when the slots sum to zero (e.g. a zero-initialised memory), which pulls
  ``μ`` toward the origin; with a ``valid`` mask, a ring with no counted slot is left unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["momentum_m_step"]

# The M-step reads the bank a block of slots at a time so that its temporaries stay bounded: a
# copy of the listed groups would be as large as the bank (the ADE20K memory, 150 × 8 × 32000 ×
# 64 floats, is 9.8 GB). The block size is fixed, so the sums do not depend on the machine.
_CHUNK_ELEMENTS = 1 << 21


def _check_momentum(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: expected a value in [0, 1], received {value!r}")


def _check_params(means: Tensor, scales: Tensor, *, values: bool = True) -> None:
    """Validate ``means (G, M, D)`` and ``scales (G, M, D)`` (their finiteness if ``values``)."""
    if not isinstance(means, Tensor) or means.ndim != 3:
        shape = tuple(means.shape) if isinstance(means, Tensor) else type(means)
        raise ValueError(f"means: expected a (G, M, D) tensor, received {shape}")
    if not means.is_floating_point():
        raise ValueError(f"means: expected a floating dtype, received {means.dtype}")
    if not isinstance(scales, Tensor) or scales.shape != means.shape:
        shape = tuple(scales.shape) if isinstance(scales, Tensor) else type(scales)
        raise ValueError(
            f"scales: expected shape {tuple(means.shape)} like means, received {shape}"
        )
    if scales.dtype != means.dtype or scales.device != means.device:
        raise ValueError(
            f"scales: expected dtype {means.dtype} on {means.device} like means, "
            f"received {scales.dtype} on {scales.device}"
        )
    for name, t in (("means", means), ("scales", scales)):
        if values and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: expected finite values, received NaN or Inf")


def _group_indices(
    groups: Tensor | Sequence[int], num_groups: int, device: torch.device, *, values: bool = True
) -> Tensor:
    """Turn ``groups`` (indices or a (G,) bool mask) into sorted unique int64 indices.

    A mask costs one ``nonzero`` (a device synchronisation on an accelerator); indices cost a
    range check and a ``unique`` unless ``values`` is False, when they must already be sorted,
    unique and in range.

    Raises:
        ValueError: if a mask has the wrong length or an index is outside ``[0, G)``.
    """
    ids = groups if isinstance(groups, Tensor) else torch.as_tensor(list(groups), device=device)
    if ids.numel() == 0 and ids.dtype != torch.bool:
        return torch.zeros(0, dtype=torch.int64, device=device)
    ids = ids.to(device)
    if ids.dtype == torch.bool:
        if ids.shape != (num_groups,):
            raise ValueError(
                f"groups: expected a ({num_groups},) bool mask or 1-D indices, "
                f"received a bool tensor of shape {tuple(ids.shape)}"
            )
        return torch.nonzero(ids).flatten()
    if ids.is_floating_point() or ids.is_complex() or ids.ndim > 1:
        raise ValueError(
            f"groups: expected a ({num_groups},) bool mask or 1-D integer indices, "
            f"received dtype {ids.dtype} and shape {tuple(ids.shape)}"
        )
    ids = ids.flatten().to(torch.int64)
    if not values:
        return ids
    if ids.numel() > 0:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= num_groups:
            raise ValueError(
                f"groups: expected indices in [0, {num_groups}), received values in [{lo}, {hi}]"
                " (drop the ignore label before calling)"
            )
    unique: Tensor = torch.unique(ids)
    return unique


def _blend(
    means: Tensor,
    scales: Tensor,
    idx: Tensor,
    direction: Tensor,
    spread: Tensor,
    ok: Tensor,
    mean_momentum: float,
    scale_momentum: float,
    variance_floor: float,
) -> tuple[Tensor, Tensor]:
    """Apply the momentum update to the groups ``idx``; shared by the bank and streaming paths.

    Args:
        means: (G, M, D) current means.
        scales: (G, M, D) current standard deviations.
        idx: (S,) int64 groups to update.
        direction: (S, M, D) ``f``, the normalised direction of the samples.
        spread: (S, M, D) mean of ``(e − f)²`` over the samples.
        ok: (S, M) bool, False where a component has no samples (left unchanged).
        mean_momentum: weight of the old mean.
        scale_momentum: weight of the old scale.
        variance_floor: added to ``spread`` before the square root.

    Returns:
        ``(new_means, new_scales)``, new (G, M, D) tensors.
    """
    old_mu = means.index_select(0, idx)
    old_sigma = scales.index_select(0, idx)
    mu = mean_momentum * old_mu + (1.0 - mean_momentum) * direction
    sigma = scale_momentum * old_sigma + (1.0 - scale_momentum) * torch.sqrt(
        spread + variance_floor
    )
    keep = ok.unsqueeze(-1)
    new_means = means.index_copy(0, idx, torch.where(keep, mu, old_mu))
    new_scales = scales.index_copy(0, idx, torch.where(keep, sigma, old_sigma))
    return new_means, new_scales


@torch.no_grad()
def momentum_m_step(
    means: Tensor,
    scales: Tensor,
    bank: Tensor,
    groups: Tensor | Sequence[int],
    *,
    mean_momentum: float = 0.999,
    scale_momentum: float = 0.0,
    variance_floor: float = 1e-2,
    valid: Tensor | None = None,
    slots_per_chunk: int | None = None,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """GMMSeg's momentum M-step from a ring-buffer memory (step 8 of the algorithm).

    For each listed group and every component, with ``e`` over the counted slots:
    ``f = normalise(Σ e)``, ``μ ← m·μ + (1 − m)·f``,
    ``σ_new = sqrt(mean (e − f)² + variance_floor)`` per dimension, ``σ ← s·σ + (1 − s)·σ_new``.
    Groups not listed are returned unchanged. Pure: the inputs are not modified.

    Vectorised over groups, components and slots. The bank is read in two passes (sum, then
    centred spread), ``slots_per_chunk`` slots of every listed group at a time, so temporaries
    stay small (large ones cost page faults on CPU) whatever the number of groups.

    Args:
        means: (G, M, D) float, the component means (the head keeps them unit length).
        scales: (G, M, D) float, the component standard deviations σ.
        bank: (G, M, K, D) float, the memory (e.g. ``ComponentMemory.bank``). Read in the dtype of
            ``means``.
        groups: the groups to update: 1-D integer indices in ``[0, G)`` (duplicates allowed) or a
            (G,) bool mask. GMMSeg passes the classes present in the (gathered) batch, ignore
            label excluded.
        mean_momentum: m, weight of the old mean (paper: 0.999).
        scale_momentum: s, weight of the old σ (paper: 0).
        variance_floor: added to the per-dimension spread before the square root (paper: 0.01).
            With 0, σ can be 0.
        valid: optional (G, M, K) bool, the slots that count (``ComponentMemory.valid_mask()``).
            None counts every slot. A (g, m) of a listed group with no counted slot is left
            unchanged.
        slots_per_chunk: slots read per chunk; None picks it so that a chunk holds about 2M
            numbers (raise it on GPUs for fewer kernel launches).
        validate: check ``means``, ``scales`` and the bank's sums for NaN/Inf, and integer
            ``groups`` for their range (each reads a result on the host, a device
            synchronisation on an accelerator); with False, integer ``groups`` must be sorted
            and unique. Shapes, dtypes and devices are always checked. A bool mask of groups
            costs one synchronisation either way (its ``nonzero``: the number of listed groups
            sizes the work).

    Returns:
        ``(new_means, new_scales)``: (G, M, D) tensors in the dtype of ``means``.

    Raises:
        ValueError: on inconsistent shapes, dtypes or devices, NaN/Inf in ``means`` or ``scales``,
            NaN/Inf in ``bank`` (detected through the sums of the listed groups), a momentum
            outside [0, 1], a negative or non-finite ``variance_floor``, or groups out of range.

    Example:
        >>> g, m, k, d = 2, 3, 16, 4
        >>> bank = torch.nn.functional.normalize(torch.randn(g, m, k, d), dim=-1)
        >>> mu, sigma = momentum_m_step(torch.zeros(g, m, d), torch.ones(g, m, d), bank, [1])
        >>> bool((mu[0] == 0).all()), bool((mu[1] != 0).any())
        (True, True)
    """
    _check_params(means, scales, values=validate)
    num_groups, num_components, dim = means.shape
    if not isinstance(bank, Tensor) or bank.ndim != 4:
        shape = tuple(bank.shape) if isinstance(bank, Tensor) else type(bank)
        raise ValueError(f"bank: expected a (G, M, K, D) tensor, received {shape}")
    if (bank.shape[0], bank.shape[1], bank.shape[3]) != (num_groups, num_components, dim):
        raise ValueError(
            f"bank: expected shape ({num_groups}, {num_components}, K, {dim}) to match means, "
            f"received {tuple(bank.shape)}"
        )
    if not bank.is_floating_point() or bank.device != means.device:
        raise ValueError(
            f"bank: expected a floating tensor on {means.device}, "
            f"received {bank.dtype} on {bank.device}"
        )
    capacity = bank.shape[2]
    if capacity < 1:
        raise ValueError("bank: expected at least one slot (K >= 1), received K = 0")
    if valid is not None and (
        not isinstance(valid, Tensor)
        or valid.dtype != torch.bool
        or valid.shape != bank.shape[:3]
        or valid.device != means.device
    ):
        desc = (
            f"{valid.dtype} of shape {tuple(valid.shape)} on {valid.device}"
            if isinstance(valid, Tensor)
            else repr(type(valid))
        )
        raise ValueError(
            f"valid: expected a bool tensor of shape {tuple(bank.shape[:3])} on {means.device}, "
            f"received {desc}"
        )
    _check_momentum("mean_momentum", mean_momentum)
    _check_momentum("scale_momentum", scale_momentum)
    floor = float(variance_floor)
    if not (floor >= 0.0 and floor < float("inf")):
        raise ValueError(f"variance_floor: expected a finite value >= 0, received {variance_floor}")
    if slots_per_chunk is not None and (
        isinstance(slots_per_chunk, bool)
        or not isinstance(slots_per_chunk, int)
        or slots_per_chunk < 1
    ):
        raise ValueError(
            f"slots_per_chunk: expected None or a positive int, received {slots_per_chunk!r}"
        )
    idx = _group_indices(groups, num_groups, means.device, values=validate)
    if idx.numel() == 0:
        return means.clone(), scales.clone()
    num_sel = idx.numel()
    step = slots_per_chunk or max(1, _CHUNK_ELEMENTS // (num_sel * num_components * dim))
    dtype = means.dtype

    def slots(start: int) -> Tensor:  # (S, M, k, D): bounded copy of the listed groups
        return bank[:, :, start : start + step].index_select(0, idx).to(dtype)

    def reduce(x: Tensor, start: int) -> Tensor:  # Σ over the counted slots: (S, M, D)
        if valid is None:
            return x.sum(dim=2)
        w = valid[:, :, start : start + step].index_select(0, idx).to(dtype)  # (S, M, k)
        return torch.einsum("smkd,smk->smd", x, w)

    total = means.new_zeros(num_sel, num_components, dim)
    for start in range(0, capacity, step):
        total += reduce(slots(start), start)
    f = F.normalize(total, dim=-1)  # (S, M, D)
    centre = f.unsqueeze(2)
    sq = torch.zeros_like(total)
    for start in range(0, capacity, step):
        sq += reduce(slots(start).sub_(centre).square_(), start)  # centred: Σ (e − f)²
    if valid is None:
        count = torch.full((num_sel, num_components), float(capacity), dtype=dtype, device=f.device)
    else:
        count = valid.index_select(0, idx).sum(dim=2).to(dtype)
    if validate and not (bool(torch.isfinite(total).all()) and bool(torch.isfinite(sq).all())):
        raise ValueError("bank: expected finite values, received NaN or Inf")
    ok = count > 0
    spread = sq / torch.where(ok, count, 1.0).unsqueeze(-1)
    return _blend(
        means,
        scales,
        idx,
        f,
        spread,
        ok,
        float(mean_momentum),
        float(scale_momentum),
        floor,
    )
