"""Ring-buffer memory of embeddings per (group, component): GMMSeg's online EM memory.

Letters: G groups (classes), M components per group, K ring slots per (group, component),
D embedding dimensions, N samples.

Each training step, the embeddings of correctly-predicted pixels are written to the ring of the
(class, component) the E-step assigned them to, at most ``max_per_step`` per ring and step, chosen
at evenly spaced positions (:meth:`ComponentMemory.write`). The momentum M-step
(:meth:`ComponentMemory.m_step`, the formula :func:`gmmseg.em.momentum.momentum_m_step`) then
reads the whole ring. :class:`ComponentMemory` implements :class:`gmmseg.em.online.MixtureMemory`,
the interface it shares with :class:`gmmseg.em.streaming.StreamingStatistics`. Writing is fully
vectorised: one stable sort, a few cumulative sums and one scatter, with no Python loop over
groups or components.

Differences from the original release (``GMMSegHead._dequeue_and_enqueue_k``):

* Layout: the original buffer ``queue`` is ``(G·M, D, K)`` and ``queue_ptr`` is ``(G·M,)``; here
  ``bank`` is ``(G, M, K, D)`` and ``ptr`` is ``(G, M)``. :meth:`ComponentMemory.load_original`
  converts.
* The original seeds every slot with a random unit vector and the M-step averages over all ``K``
  slots, so the random vectors leak into early M-steps. ``count_only_filled=True`` makes
  :meth:`ComponentMemory.valid_mask` report only written slots (the default ``False`` is faithful).
* The bank is ``G·M·K·D`` floats: 5.7 GiB in float32 at ADE20K scale (150 × 5 × 32000 × 64).
  ``persistent=False`` keeps it (and the pointers) out of ``state_dict``; a resumed run then
  restarts from an empty (or freshly random) memory.
* ``max_per_step=None`` (the original's ``-1``) writes every sample; if more than ``K`` arrive for
  one ring in one step, the result is that of writing them one after another (the last ``K``
  survive). The original fails with a shape error in that case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gmmseg.distributions import all_finite
from gmmseg.em.momentum import momentum_m_step

__all__ = ["ComponentMemory"]

# Random initialisation is generated group by group in chunks of at most this many elements, so
# that seeding a multi-GiB bank does not need a second bank-sized temporary.
_INIT_CHUNK_ELEMENTS = 1 << 24


def _check_samples(
    embeddings: Tensor,
    groups: Tensor,
    components: Tensor,
    *,
    num_groups: int,
    num_components: int,
    dim: int,
    device: torch.device,
    mask: Tensor | None = None,
    values: bool = True,
) -> None:
    """Validate ``(embeddings (N, D), groups (N,), components (N,))`` at a public boundary.

    ``mask`` (N,) bool, when given, selects the samples whose values count. ``values=False``
    checks only types, shapes and devices: the range and NaN/Inf tests read their results on the
    host, a device synchronisation on an accelerator.

    Raises:
        ValueError: naming the argument, what was expected and what was received.
    """
    if not isinstance(embeddings, Tensor):
        raise ValueError(f"embeddings: expected a torch.Tensor, received {type(embeddings)!r}")
    if embeddings.ndim != 2 or embeddings.shape[1] != dim:
        raise ValueError(
            f"embeddings: expected shape (N, {dim}), received {tuple(embeddings.shape)}"
        )
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings: expected a floating dtype, received {embeddings.dtype}")
    n = embeddings.shape[0]
    if mask is not None and (
        not isinstance(mask, Tensor)
        or mask.dtype != torch.bool
        or mask.shape != (n,)
        or mask.device != device
    ):
        desc = (
            f"{mask.dtype} of shape {tuple(mask.shape)} on {mask.device}"
            if isinstance(mask, Tensor)
            else repr(type(mask))
        )
        raise ValueError(f"mask: expected a ({n},) bool tensor on {device}, received {desc}")
    for name, ids, bound in (
        ("groups", groups, num_groups),
        ("components", components, num_components),
    ):
        if not isinstance(ids, Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, received {type(ids)!r}")
        if ids.ndim != 1 or ids.shape[0] != n:
            raise ValueError(
                f"{name}: expected shape ({n},) to match embeddings, received {tuple(ids.shape)}"
            )
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"{name}: expected an integer dtype, received {ids.dtype}")
        if ids.device != device:
            raise ValueError(f"{name}: expected device {device}, received {ids.device}")
        if values and n > 0:
            if mask is not None:
                ids = torch.where(mask, ids, 0)
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= bound:
                raise ValueError(
                    f"{name}: expected ids in [0, {bound}), received values in [{lo}, {hi}]"
                )
    if embeddings.device != device:
        raise ValueError(f"embeddings: expected device {device}, received {embeddings.device}")
    if values and not all_finite(embeddings if mask is None else embeddings[mask]):
        raise ValueError("embeddings: expected finite values, received NaN or Inf")


def _linspace_index(j: Tensor, n: Tensor, steps: int) -> Tensor:
    """Element ``j`` of ``torch.linspace(0, n - 1, steps, dtype=torch.int64)``, vectorised.

    This reproduces PyTorch's integer ``linspace`` bit for bit (the original's
    ``rnd_sample(n, steps, _uniform=True)``): the step ``(n − 1)/(steps − 1)`` is a float64, the
    first ``steps // 2`` points are ``step·j`` and the rest ``(n − 1) − step·(steps − 1 − j)``, each
    truncated toward zero. This is *not* always ``⌊j·(n − 1)/(steps − 1)⌋``: for ``steps = 15`` and
    ``n = 59`` element 7 is 28, not 29. For ``steps = 20`` (the paper) the two agree because 19 is
    prime.

    Args:
        j: (W,) int64 positions in ``[0, steps)``.
        n: (W,) int64 population sizes, ``n > steps``.
        steps: number of points.

    Returns:
        (W,) int64 indices in ``[0, n)``.
    """
    if steps == 1:
        return torch.zeros_like(j)
    last = (n - 1).to(torch.float64)
    step = last / (steps - 1)
    jf = j.to(torch.float64)
    value = torch.where(j < steps // 2, step * jf, last - step * (steps - 1 - jf))
    return value.to(torch.int64)


class ComponentMemory(nn.Module):
    """A ring buffer of ``K`` embeddings for each of the ``G × M`` (group, component) pairs.

    Buffers:
        bank: (G, M, K, D) float — the stored embeddings.
        ptr: (G, M) int64 — the next slot to write in each ring.
        filled: (G, M) int64 — slots written so far, capped at ``K`` (since the last reset).

    Args:
        num_groups: G, the number of groups (classes).
        num_components: M, components per group.
        dim: D, the embedding dimension.
        capacity: K, ring slots per (group, component). The paper uses 32000.
        max_per_step: at most this many samples are written per ring and :meth:`write` call,
            taken at indices ``linspace(0, n − 1, max_per_step)`` truncated to integers. ``None``
            writes all of them (the original's ``-1``). The paper uses 20.
        init: ``"random"`` (faithful): each slot holds a random unit vector, standard normal then
            L2-normalised over D, as in the original. ``"zeros"``: zero vectors.
        count_only_filled: if True, :meth:`valid_mask` reports only slots written since the last
            reset, so initial values never reach the M-step. The default False counts every slot
            (faithful to the original).
        persistent: if False, ``bank``, ``ptr`` and ``filled`` are left out of ``state_dict`` (the
            bank is 5.7 GiB at ADE20K scale); after loading a checkpoint the memory restarts from
            its initial state and refills within ``K / max_per_step`` steps per ring. Pair with
            ``count_only_filled=True`` so the restart does not leak initial values.
        generator: random generator for ``init="random"``.
        device: device of the buffers.
        dtype: floating dtype of ``bank`` (default: torch's default dtype).

    Raises:
        ValueError: if a size is not positive, ``max_per_step`` is not None or positive, ``init``
            is unknown or ``dtype`` is not floating.

    Example:
        >>> mem = ComponentMemory(num_groups=3, num_components=2, dim=4, capacity=8)
        >>> x = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
        >>> written = mem.write(x, torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 1, 0, 0, 1]))
        >>> written.tolist()
        [[0, 2], [1, 0], [1, 1]]
        >>> means, scales = mem.m_step(torch.zeros(3, 2, 4), torch.ones(3, 2, 4), [0, 2])
    """

    bank: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(
        self,
        num_groups: int,
        num_components: int,
        dim: int,
        capacity: int = 32000,
        max_per_step: int | None = 20,
        init: Literal["random", "zeros"] = "random",
        count_only_filled: bool = False,
        persistent: bool = True,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_groups", num_groups),
            ("num_components", num_components),
            ("dim", dim),
            ("capacity", capacity),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, received {value!r}")
        if max_per_step is not None and (
            isinstance(max_per_step, bool) or not isinstance(max_per_step, int) or max_per_step < 1
        ):
            raise ValueError(
                f"max_per_step: expected None or a positive int, received {max_per_step!r}"
            )
        if init not in ("random", "zeros"):
            raise ValueError(f"init: expected 'random' or 'zeros', received {init!r}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating dtype, received {dtype}")
        self.num_groups = num_groups
        self.num_components = num_components
        self.dim = dim
        self.capacity = capacity
        self.max_per_step = max_per_step
        self.init = init
        self.count_only_filled = count_only_filled
        self.persistent = persistent
        shape = (num_groups, num_components, capacity, dim)
        self.register_buffer(
            "bank", torch.zeros(shape, device=device, dtype=dtype), persistent=persistent
        )
        pairs = (num_groups, num_components)
        self.register_buffer(
            "ptr", torch.zeros(pairs, device=device, dtype=torch.int64), persistent=persistent
        )
        self.register_buffer(
            "filled", torch.zeros(pairs, device=device, dtype=torch.int64), persistent=persistent
        )
        self.reset(generator=generator)

    def extra_repr(self) -> str:
        """The configuration, for ``repr``."""
        return (
            f"num_groups={self.num_groups}, num_components={self.num_components}, "
            f"dim={self.dim}, capacity={self.capacity}, max_per_step={self.max_per_step}, "
            f"init={self.init!r}, count_only_filled={self.count_only_filled}, "
            f"persistent={self.persistent}"
        )

    @torch.no_grad()
    def reset(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise the bank (per ``init``) and set ``ptr`` and ``filled`` to zero.

        With ``init="random"`` the values are those of the original,
        ``normalize(randn(G·M, D, K), dim=1)`` rearranged to ``(G, M, K, D)``. The bank is generated
        a few groups at a time; on CPU this reproduces the single ``randn`` call exactly whenever
        each chunk holds a multiple of 16 numbers (always true for D = 64).

        Args:
            generator: random generator for ``init="random"``.
        """
        self.ptr.zero_()
        self.filled.zero_()
        if self.init == "zeros":
            self.bank.zero_()
            return
        m, k, d = self.num_components, self.capacity, self.dim
        per_group = m * k * d
        step = max(1, _INIT_CHUNK_ELEMENTS // per_group)
        for start in range(0, self.num_groups, step):
            stop = min(start + step, self.num_groups)
            noise = torch.randn(
                (stop - start) * m,
                d,
                k,
                generator=generator,
                device=self.bank.device,
                dtype=self.bank.dtype,
            )
            noise = F.normalize(noise, dim=1)
            self.bank[start:stop] = rearrange(noise, "(g m) d k -> g m k d", m=m)

    def valid_mask(self) -> Tensor:
        """Slots that count in the M-step.

        Returns:
            (G, M, K) bool: all True, or with ``count_only_filled`` only the ``filled`` slots.
            Rings are filled from slot 0 upward, so the written slots are ``k < filled[g, m]``.
        """
        shape = (self.num_groups, self.num_components, self.capacity)
        if not self.count_only_filled:
            return torch.ones(shape, dtype=torch.bool, device=self.bank.device)
        slots = torch.arange(self.capacity, device=self.bank.device)
        return slots < self.filled.unsqueeze(-1)

    @torch.no_grad()
    def write(
        self,
        embeddings: Tensor,
        groups: Tensor,
        components: Tensor,
        mask: Tensor | None = None,
        *,
        validate: bool = True,
    ) -> Tensor:
        """Write samples to their (group, component) rings (``MixtureMemory.write``).

        The caller selects the samples (GMMSeg: correctly-predicted pixels, in pixel order
        ``(b, h, w)``, after an all-gather in distributed training), either by passing only them
        or with ``mask``. For each (g, m), the ``n`` samples assigned to it are taken in input
        order; if ``n > max_per_step``, only those at indices ``linspace(0, n − 1, max_per_step)``
        (truncated to integers, exactly as PyTorch computes an int64 ``linspace``) are kept. They
        are written at ``ptr[g, m]``, wrapping around, and ``ptr`` advances by the number written,
        modulo ``K``.

        Every tensor has a size fixed by the inputs' shapes (never by their values), so with
        ``validate=False`` the call never synchronises host and device: the candidate writes are
        the ``G·M·max_per_step`` (ring, ordinal) pairs (or the N samples when ``max_per_step`` is
        None), and a candidate that writes nothing repeats a write of its ring, or rewrites a
        slot of its untouched ring with its own value.

        Args:
            embeddings: (N, D) float. Cast to the bank's dtype.
            groups: (N,) integer ids in ``[0, G)`` (anything where ``mask`` is False).
            components: (N,) integer ids in ``[0, M)`` (anything where ``mask`` is False).
            mask: optional (N,) bool: only samples where it is True are written (the result is
                that of passing ``embeddings[mask]``, ``groups[mask]``, ``components[mask]``).
            validate: check the ids' range and the embeddings for NaN/Inf (each reads a result
                on the host, a device synchronisation on an accelerator). Types, shapes and
                devices are always checked.

        Returns:
            (G, M) int64: the number of samples written to each ring by this call.

        Raises:
            ValueError: on a wrong shape, dtype or device, and with ``validate`` on ids out of
                range or NaN/Inf embeddings.
        """
        device = self.bank.device
        _check_samples(
            embeddings,
            groups,
            components,
            num_groups=self.num_groups,
            num_components=self.num_components,
            dim=self.dim,
            device=device,
            mask=mask,
            values=validate,
        )
        g, m, k, d = self.num_groups, self.num_components, self.capacity, self.dim
        rings = g * m
        n_samples = embeddings.shape[0]
        key = groups.to(torch.int64) * m + components.to(torch.int64)  # (N,)
        if mask is not None:
            key = torch.where(mask, key, rings)  # masked samples go to a dummy ring
        counts = key.new_zeros(rings + 1).index_add_(0, key, torch.ones_like(key))[:rings]
        written = counts if self.max_per_step is None else counts.clamp(max=self.max_per_step)
        if n_samples == 0:
            return written.view(g, m)
        # Writing w samples one after another leaves only the last min(w, K) of them.
        kept = written.clamp(max=k)
        skipped = written - kept
        sort_key = key.to(torch.int32) if rings < 2**31 else key  # int32 sorts twice as fast
        order = torch.argsort(sort_key, stable=True)  # samples grouped by ring, input order within
        first = torch.cumsum(counts, 0) - counts
        if self.max_per_step is None:
            # Candidates: the samples in ring order; ordinal = rank within the ring.
            ring = key.index_select(0, order)
            real = ring < rings
            ring = torch.where(real, ring, 0)
            j = torch.arange(n_samples, device=device) - first.index_select(0, ring)
            j = torch.where(real, j, 0)
        else:
            # Candidates: ordinals 0 .. max_per_step - 1 of every ring.
            per = self.max_per_step
            cand = torch.arange(rings * per, device=device)
            ring, j = cand // per, cand % per
            real = torch.ones_like(ring, dtype=torch.bool)
        ring_written = written.index_select(0, ring)
        ring_skipped = skipped.index_select(0, ring)
        writes = real & (j >= ring_skipped) & (j < ring_written)
        # A candidate that writes nothing repeats the first write of its ring (same slot, same
        # value), or, in a ring written nothing, rewrites the slot at the pointer with itself.
        has = ring_written > 0
        j = torch.where(writes, j, torch.where(has, ring_skipped, 0))
        n = counts.index_select(0, ring)
        rank = j
        if self.max_per_step is not None:
            rank = torch.where(n > self.max_per_step, _linspace_index(j, n, self.max_per_step), j)
        position = (first.index_select(0, ring) + rank).clamp(0, n_samples - 1)
        source = order.index_select(0, position)
        ptr = self.ptr.view(rings)
        slot = torch.remainder(ptr.index_select(0, ring) + j, k)
        bank = self.bank.view(rings, k, d)
        new = embeddings.index_select(0, source).to(bank.dtype)
        bank[ring, slot] = torch.where(has.unsqueeze(1), new, bank[ring, slot])
        ptr.copy_(torch.remainder(ptr + written, k))
        filled = self.filled.view(rings)
        filled.copy_(torch.clamp(filled + written, max=k))
        return written.view(g, m)

    @torch.no_grad()
    def m_step(
        self,
        means: Tensor,
        scales: Tensor,
        groups: Tensor | Sequence[int],
        *,
        mean_momentum: float = 0.999,
        scale_momentum: float = 0.0,
        variance_floor: float = 1e-2,
        validate: bool = True,
        slots_per_chunk: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """GMMSeg's momentum M-step from this bank (``MixtureMemory.m_step``).

        :func:`~gmmseg.em.momentum.momentum_m_step` over ``bank``, counting the slots of
        :meth:`valid_mask` (every slot unless ``count_only_filled``). For each listed group and
        component, with ``e`` over the counted slots: ``f = normalise(Σ e)``,
        ``μ ← m·μ + (1 − m)·f``, ``σ ← s·σ + (1 − s)·sqrt(mean (e − f)² + variance_floor)``.
        Pure: neither the inputs nor the memory are modified.

        Args:
            means: (G, M, D) float, the component means (the head keeps them unit length).
            scales: (G, M, D) float, the component standard deviations σ.
            groups: the groups to update: 1-D integer indices in ``[0, G)`` or a (G,) bool mask.
            mean_momentum: weight of the old mean (paper: 0.999).
            scale_momentum: weight of the old σ (paper: 0).
            variance_floor: added to the per-dimension spread before the square root (0.01).
            validate: check the parameters and the bank's sums for NaN/Inf and integer
                ``groups`` for their range (reads on the host); with False, integer ``groups``
                must be sorted and unique.
            slots_per_chunk: slots read at a time (see
                :func:`~gmmseg.em.momentum.momentum_m_step`).

        Returns:
            ``(new_means, new_scales)``: (G, M, D) tensors in the dtype of ``means``.

        Raises:
            ValueError: as :func:`~gmmseg.em.momentum.momentum_m_step`.
        """
        return momentum_m_step(
            means,
            scales,
            self.bank,
            groups,
            mean_momentum=mean_momentum,
            scale_momentum=scale_momentum,
            variance_floor=variance_floor,
            # None rather than an all-True mask: the plain sum over slots, not a weighted one
            valid=self.valid_mask() if self.count_only_filled else None,
            slots_per_chunk=slots_per_chunk,
            validate=validate,
        )

    @torch.no_grad()
    def load_original(self, queue: Tensor, queue_ptr: Tensor) -> None:
        """Load the memory of an original GMMSeg checkpoint.

        ``filled`` is set to ``K`` everywhere (the original counts every slot).

        Args:
            queue: (G·M, D, K) float, the original's ``decode_head.queue``.
            queue_ptr: (G·M,) int, the original's ``decode_head.queue_ptr``.

        Raises:
            ValueError: if the shapes do not match this memory, or a pointer is outside ``[0, K)``.
        """
        g, m, k, d = self.num_groups, self.num_components, self.capacity, self.dim
        if queue.shape != (g * m, d, k):
            raise ValueError(
                f"queue: expected shape ({g * m}, {d}, {k}), received {tuple(queue.shape)}"
            )
        if queue_ptr.shape != (g * m,):
            raise ValueError(
                f"queue_ptr: expected shape ({g * m},), received {tuple(queue_ptr.shape)}"
            )
        if bool((queue_ptr < 0).any()) or bool((queue_ptr >= k).any()):
            raise ValueError(f"queue_ptr: expected values in [0, {k}), received out-of-range ones")
        bank = rearrange(queue, "(g m) d k -> g m k d", m=m)
        self.bank.copy_(bank)
        self.ptr.copy_(queue_ptr.view(g, m))
        self.filled.fill_(k)
