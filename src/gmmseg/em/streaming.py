"""Exponentially decayed sufficient statistics per (group, component): a small-memory EM memory.

Letters: G groups (classes), M components per group, D embedding dimensions, N samples.

:class:`StreamingStatistics` is the O(G·M·D) alternative to the O(G·M·K·D) ring bank of
:class:`gmmseg.em.memory.ComponentMemory`, with the same interface
(:class:`gmmseg.em.online.MixtureMemory`: ``write``, then ``m_step``). For each (g, m) it keeps
the total weight ``W``, the weighted mean ``x̄`` and the *centred* sum of squared deviations
``S = Σ w (x − x̄)²`` (per dimension). Batches are merged with Chan et al.'s parallel formula::

    W = Wa + Wb,  δ = x̄b − x̄a,  x̄ = x̄a + δ·Wb/W,  S = Sa + Sb + δ²·Wa·Wb/W

and within a batch ``S`` is accumulated about the batch mean, so float32 stays accurate for
unit-norm embeddings with σ ≈ 0.1 (a one-pass ``E[x²] − x̄²`` would not).

Decay semantic: each :meth:`StreamingStatistics.write` call first multiplies ``W`` and ``S`` of
*every* (g, m) by ``decay``, then merges the batch with weight 1 per sample (or the given weights).
A sample seen ``t`` calls ago therefore weighs ``decay**t``. Decaying a (g, m) absent from the batch
leaves its mean and variance unchanged; it only lowers its weight relative to future samples.
``decay=1`` keeps the exact statistics of every sample seen. As a rule of thumb, a ring of ``K``
slots filled ``max_per_step`` at a time remembers about ``K / max_per_step`` updates (1600 with
the paper's settings); ``decay = 1 − max_per_step / K`` gives a comparable window.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmmseg._distributed import all_reduce_, is_distributed
from gmmseg.em.memory import _check_samples
from gmmseg.em.momentum import _blend, _check_momentum, _check_params, _group_indices

__all__ = ["StreamingStatistics"]


# Samples are processed this many numbers at a time so that temporaries stay small (large fresh
# allocations are page-faulted at every call on CPU).
_CHUNK_ELEMENTS = 1 << 18


def _batch_moments(
    x: Tensor, key: Tensor, w: Tensor | None, size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted moments of one batch per segment, centred about each segment's mean (two passes).

    Args:
        x: (N, D) float samples.
        key: (N,) int64 segment ids in ``[0, size)``.
        w: optional (N,) float non-negative weights; None weighs every sample 1.
        size: number of segments.

    Returns:
        ``(weight (size,), mean (size, D), sq_dev (size, D))``; empty segments are all zero.
    """
    n, d = x.shape
    rows = max(1, _CHUNK_ELEMENTS // max(d, 1))
    ones = w if w is not None else x.new_ones(n)
    weight = x.new_zeros(size).index_add_(0, key, ones)
    total = x.new_zeros(size, d)
    for s in range(0, n, rows):
        xs = x[s : s + rows]
        total.index_add_(0, key[s : s + rows], xs if w is None else xs * w[s : s + rows, None])
    present = weight > 0
    mean = torch.where(
        present.unsqueeze(1), total / torch.where(present, weight, 1.0).unsqueeze(1), 0.0
    )
    sq_dev = x.new_zeros(size, d)
    for s in range(0, n, rows):
        ks = key[s : s + rows]
        dev = (x[s : s + rows] - mean.index_select(0, ks)).square_()
        if w is not None:
            dev.mul_(w[s : s + rows, None])
        sq_dev.index_add_(0, ks, dev)
    return weight, mean, sq_dev


def _merge_moments(
    wa: Tensor, ma: Tensor, sa: Tensor, wb: Tensor, mb: Tensor, sb: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Chan's parallel merge of two sets of (weight, mean, centred sum of squares).

    Args:
        wa: (...) weights of the first set; ``ma``, ``sa``: (..., D).
        ma: (..., D) means of the first set.
        sa: (..., D) centred sums of squared deviations of the first set.
        wb: (...) weights of the second set.
        mb: (..., D) means of the second set.
        sb: (..., D) centred sums of squared deviations of the second set.

    Returns:
        The merged ``(weight, mean, sq_dev)``. Where both weights are 0 the result is
        ``(0, ma, sa + sb)``; where only ``wa`` is 0 the mean is exactly ``mb``.
    """
    w = wa + wb
    frac = torch.where(w > 0, wb / torch.where(w > 0, w, 1.0), 0.0).unsqueeze(-1)
    delta = mb - ma
    mean = torch.where((wa > 0).unsqueeze(-1), ma + delta * frac, mb)
    mean = torch.where((w > 0).unsqueeze(-1), mean, ma)
    sq = sa + sb + delta.square() * wa.unsqueeze(-1) * frac
    return w, mean, sq


def _sum_reduce_moments(
    weight: Tensor, mean: Tensor, sq_dev: Tensor, reduce_sum: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Combine moments held by several workers with two sum-reductions, exactly and centred.

    First ``Σ w`` and ``Σ w·x̄`` give the global mean ``x̄g``; then every worker shifts its sum of
    squares to ``S + w·(x̄ − x̄g)²`` and those are summed. ``reduce_sum`` returns the elementwise
    sum over workers of its argument (``dist.all_reduce`` in practice).

    Args:
        weight: (...) local weights.
        mean: (..., D) local means.
        sq_dev: (..., D) local centred sums of squares.
        reduce_sum: the sum over workers.

    Returns:
        The global ``(weight, mean, sq_dev)``.
    """
    packed = torch.cat([weight.unsqueeze(-1), mean * weight.unsqueeze(-1)], dim=-1)
    packed = reduce_sum(packed)
    total_w = packed[..., 0]
    present = (total_w > 0).unsqueeze(-1)
    global_mean = torch.where(
        present, packed[..., 1:] / torch.where(present, total_w.unsqueeze(-1), 1.0), 0.0
    )
    shifted = sq_dev + weight.unsqueeze(-1) * (mean - global_mean).square()
    return total_w, global_mean, reduce_sum(shifted)


def _all_reduce_sum(t: Tensor) -> Tensor:
    """The elementwise sum of ``t`` over all processes (a new tensor; ``t`` is unchanged)."""
    out = t.clone()
    all_reduce_([out], "sum")
    return out


class StreamingStatistics(nn.Module):
    """Decayed weight, mean and centred second moment of the samples of each (group, component).

    Buffers (all in ``state_dict``):
        weight_sum: (G, M) float — ``W``, the decayed total weight.
        running_mean: (G, M, D) float — ``x̄``, the weighted mean (0 where ``W`` is 0).
        sq_dev_sum: (G, M, D) float — ``S = Σ w (x − x̄)²``, the centred sum of squares.

    Args:
        num_groups: G, the number of groups (classes).
        num_components: M, components per group.
        dim: D, the embedding dimension.
        decay: in (0, 1]; every :meth:`write` call first multiplies the weight and the sum of
            squares of every (g, m) by ``decay`` (see the module notes). 1 keeps exact statistics.
        device: device of the buffers.
        dtype: floating dtype of the statistics (default: torch's default dtype). Samples are
            cast to it.

    Raises:
        ValueError: if a size is not positive, ``decay`` is outside (0, 1] or ``dtype`` is not
            floating.

    Example:
        >>> stats = StreamingStatistics(num_groups=2, num_components=1, dim=3, decay=1.0)
        >>> x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> stats.write(x, torch.tensor([1, 1]), torch.tensor([0, 0])).tolist()
        [[0.0], [2.0]]
        >>> stats.mean()[1, 0].tolist(), stats.variance()[1, 0].tolist()
        ([0.5, 0.5, 0.0], [0.25, 0.25, 0.0])
    """

    weight_sum: Tensor
    running_mean: Tensor
    sq_dev_sum: Tensor

    def __init__(
        self,
        num_groups: int,
        num_components: int,
        dim: int,
        decay: float = 0.999,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_groups", num_groups),
            ("num_components", num_components),
            ("dim", dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, received {value!r}")
        if not 0.0 < float(decay) <= 1.0:
            raise ValueError(f"decay: expected a value in (0, 1], received {decay!r}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating dtype, received {dtype}")
        self.num_groups = num_groups
        self.num_components = num_components
        self.dim = dim
        self.decay = float(decay)
        pairs = (num_groups, num_components)
        self.register_buffer("weight_sum", torch.zeros(pairs, device=device, dtype=dtype))
        self.register_buffer("running_mean", torch.zeros(*pairs, dim, device=device, dtype=dtype))
        self.register_buffer("sq_dev_sum", torch.zeros(*pairs, dim, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        """The configuration, for ``repr``."""
        return (
            f"num_groups={self.num_groups}, num_components={self.num_components}, "
            f"dim={self.dim}, decay={self.decay}"
        )

    @torch.no_grad()
    def reset(self) -> None:
        """Forget every sample: zero all statistics."""
        self.weight_sum.zero_()
        self.running_mean.zero_()
        self.sq_dev_sum.zero_()

    @torch.no_grad()
    def write(
        self,
        embeddings: Tensor,
        groups: Tensor,
        components: Tensor,
        mask: Tensor | None = None,
        *,
        weights: Tensor | None = None,
        sync: bool = False,
        validate: bool = True,
    ) -> Tensor:
        """Decay the statistics once, then merge a batch of samples.

        :meth:`gmmseg.em.online.MixtureMemory.write` for these statistics (pomegranate's
        ``summarize``). Vectorised with ``index_add_`` (on CUDA, atomic adds make the last bits
        depend on scheduling unless ``torch.use_deterministic_algorithms(True)``).

        Args:
            embeddings: (N, D) float samples (N may be 0: the call then only decays).
            groups: (N,) integer ids in ``[0, G)``.
            components: (N,) integer ids in ``[0, M)``.
            mask: optional (N,) bool: only samples where it is True count (the result is that
                of passing the masked rows; the others go to a discarded extra segment, so no
                tensor's size depends on the mask's values).
            weights: optional (N,) float, finite and non-negative; default 1 per sample.
            sync: if True and ``torch.distributed`` is initialised with more than one process,
                the batch statistics of all processes are combined (two all-reduces of
                G·M·(D + 1) and G·M·D numbers) before merging, so that processes starting from
                the same state stay identical without all-gathering the embeddings. Every
                process must call ``write`` with ``sync=True`` the same number of times.
            validate: check the ids' range, the embeddings for NaN/Inf and the weights' values
                (each reads a result on the host, a device synchronisation on an accelerator).
                Types, shapes and devices are always checked.

        Returns:
            (G, M) float: the batch's total weight per (group, component) (its sample count
            without ``weights``; over all processes with ``sync``), before any decay.

        Raises:
            ValueError: on a wrong shape, dtype or device, and with ``validate`` on ids out of
                range, NaN/Inf embeddings or invalid weights.
        """
        device = self.weight_sum.device
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
        dtype = self.weight_sum.dtype
        n = embeddings.shape[0]
        w: Tensor | None = None
        if weights is not None:
            if not isinstance(weights, Tensor) or weights.shape != (n,):
                shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights)
                raise ValueError(f"weights: expected shape ({n},), received {shape}")
            if not weights.is_floating_point() or weights.device != device:
                raise ValueError(
                    f"weights: expected a floating tensor on {device}, "
                    f"received {weights.dtype} on {weights.device}"
                )
            checked = weights if mask is None else torch.where(mask, weights, 0.0)
            if (
                validate
                and n > 0
                and not (bool(torch.isfinite(checked).all()) and bool((checked >= 0).all()))
            ):
                raise ValueError("weights: expected finite non-negative values")
            w = weights.to(dtype)
        size = self.num_groups * self.num_components
        key = groups.to(torch.int64) * self.num_components + components.to(torch.int64)
        if mask is None:
            bw, bm, bs = _batch_moments(embeddings.to(dtype), key, w, size)
        else:  # masked samples go to segment ``size``, dropped
            key = torch.where(mask, key, size)
            if w is not None:
                w = torch.where(mask, w, 0.0)
            bw, bm, bs = (t[:size] for t in _batch_moments(embeddings.to(dtype), key, w, size + 1))
        if sync and is_distributed():
            bw, bm, bs = _sum_reduce_moments(bw, bm, bs, _all_reduce_sum)
        if self.decay != 1.0:
            self.weight_sum.mul_(self.decay)
            self.sq_dev_sum.mul_(self.decay)
        self._merge_flat(bw, bm, bs)
        return bw.reshape(self.num_groups, self.num_components)

    def _merge_flat(self, wb: Tensor, mb: Tensor, sb: Tensor) -> None:
        size = self.num_groups * self.num_components
        w, m, s = _merge_moments(
            self.weight_sum.view(size),
            self.running_mean.view(size, self.dim),
            self.sq_dev_sum.view(size, self.dim),
            wb.reshape(size),
            mb.reshape(size, self.dim),
            sb.reshape(size, self.dim),
        )
        self.weight_sum.copy_(w.view_as(self.weight_sum))
        self.running_mean.copy_(m.view_as(self.running_mean))
        self.sq_dev_sum.copy_(s.view_as(self.sq_dev_sum))

    @torch.no_grad()
    def merge_(self, other: StreamingStatistics) -> StreamingStatistics:
        """Merge another set of statistics into this one, in place (no decay is applied).

        The result equals the statistics of one stream that saw both sets of samples, each with
        its own (decayed) weight.

        Args:
            other: statistics of the same G, M, D, on the same device.

        Returns:
            ``self``.

        Raises:
            ValueError: if ``other`` has a different shape or device.
        """
        if not isinstance(other, StreamingStatistics) or (
            other.running_mean.shape != self.running_mean.shape
        ):
            received = (
                tuple(other.running_mean.shape)
                if isinstance(other, StreamingStatistics)
                else type(other)
            )
            raise ValueError(
                "other: expected StreamingStatistics of shape "
                f"{tuple(self.running_mean.shape)}, received {received}"
            )
        if other.weight_sum.device != self.weight_sum.device:
            raise ValueError(
                f"other: expected device {self.weight_sum.device}, "
                f"received {other.weight_sum.device}"
            )
        dtype = self.weight_sum.dtype
        self._merge_flat(
            other.weight_sum.to(dtype), other.running_mean.to(dtype), other.sq_dev_sum.to(dtype)
        )
        return self

    @torch.no_grad()
    def synced(self) -> StreamingStatistics:
        """A copy holding the statistics of all processes merged (this one is left unchanged).

        Use when each process accumulates its own samples (``write(..., sync=False)``). The
        decays stay consistent provided every process made the same number of ``write`` calls.
        Without an initialised multi-process ``torch.distributed`` this is a plain copy. Keeping
        the local state separate (as torchmetrics does) avoids counting samples twice when it is
        called repeatedly.

        Returns:
            A new :class:`StreamingStatistics` with the merged statistics.
        """
        out = copy.deepcopy(self)
        if is_distributed():
            w, m, s = _sum_reduce_moments(
                self.weight_sum, self.running_mean, self.sq_dev_sum, _all_reduce_sum
            )
            out.weight_sum.copy_(w)
            out.running_mean.copy_(m)
            out.sq_dev_sum.copy_(s)
        return out

    def mean(self) -> Tensor:
        """Weighted mean of the samples.

        Returns:
            (G, M, D) float; NaN where no weight has been seen (``weight_sum == 0``).
        """
        present = (self.weight_sum > 0).unsqueeze(-1)
        return torch.where(present, self.running_mean, torch.nan)

    def variance(self, center: Tensor | None = None) -> Tensor:
        """Weighted (population) variance per dimension, optionally about another centre.

        About a centre ``f`` this is ``E[(x − f)²] = var + (x̄ − f)²``, computed from the centred
        statistics (GMMSeg's σ is measured about the normalised direction ``f``, not the mean).

        Args:
            center: optional centre ``f`` broadcastable to (G, M, D); None uses the mean.

        Returns:
            (G, M, D) float; NaN where ``weight_sum == 0``.

        Raises:
            ValueError: if ``center`` does not broadcast to (G, M, D).
        """
        present = self.weight_sum > 0
        var = self.sq_dev_sum / torch.where(present, self.weight_sum, 1.0).unsqueeze(-1)
        if center is not None:
            try:
                shift = torch.broadcast_to(center, self.running_mean.shape)
            except RuntimeError as err:
                raise ValueError(
                    f"center: expected a tensor broadcastable to {tuple(self.running_mean.shape)}, "
                    f"received {tuple(center.shape)}"
                ) from err
            var = var + (self.running_mean - shift).square()
        return torch.where(present.unsqueeze(-1), var, torch.nan)

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
    ) -> tuple[Tensor, Tensor]:
        """GMMSeg's momentum M-step from these statistics instead of a ring bank.

        :meth:`gmmseg.em.online.MixtureMemory.m_step` for these statistics (pomegranate's
        ``from_summaries``, with the momentum as its ``inertia``). With ``f = normalise(x̄)``
        (the direction of the weighted sum of samples): ``μ ← m·μ + (1 − m)·f`` and
        ``σ ← s·σ + (1 − s)·sqrt(var + (x̄ − f)² + variance_floor)``.
        With ``decay=1`` this is exactly :func:`gmmseg.em.momentum.momentum_m_step` on a bank
        whose counted slots hold the same samples. Components with no weight are left unchanged,
        as are groups not listed. Pure: the inputs are not modified.

        Args:
            means: (G, M, D) float, the component means.
            scales: (G, M, D) float, the component standard deviations.
            groups: groups to update: 1-D integer indices in ``[0, G)`` or a (G,) bool mask.
            mean_momentum: weight of the old mean (paper: 0.999).
            scale_momentum: weight of the old σ (paper: 0).
            variance_floor: added to the per-dimension spread before the square root.
            validate: check ``means`` and ``scales`` for NaN/Inf and integer ``groups`` for
                their range (reads on the host, device synchronisations on an accelerator). A
                bool mask of groups costs one synchronisation either way (its ``nonzero``).

        Returns:
            ``(new_means, new_scales)``: (G, M, D) tensors in the dtype of ``means``.

        Raises:
            ValueError: on shapes that do not match (G, M, D), NaN/Inf parameters, a momentum
                outside [0, 1], a negative ``variance_floor`` or groups out of range.
        """
        _check_params(means, scales, values=validate)
        expected = tuple(self.running_mean.shape)
        if tuple(means.shape) != expected:
            raise ValueError(f"means: expected shape {expected}, received {tuple(means.shape)}")
        if means.device != self.weight_sum.device:
            raise ValueError(
                f"means: expected device {self.weight_sum.device}, received {means.device}"
            )
        _check_momentum("mean_momentum", mean_momentum)
        _check_momentum("scale_momentum", scale_momentum)
        floor = float(variance_floor)
        if not (floor >= 0.0 and floor < float("inf")):
            raise ValueError(
                f"variance_floor: expected a finite value >= 0, received {variance_floor}"
            )
        idx = _group_indices(groups, self.num_groups, means.device, values=validate)
        if idx.numel() == 0:
            return means.clone(), scales.clone()
        dtype = means.dtype
        w = self.weight_sum.index_select(0, idx).to(dtype)  # (S, M)
        mean = self.running_mean.index_select(0, idx).to(dtype)  # (S, M, D)
        sq = self.sq_dev_sum.index_select(0, idx).to(dtype)
        ok = w > 0
        f = F.normalize(mean, dim=-1)
        var = sq / torch.where(ok, w, 1.0).unsqueeze(-1)
        spread = var + (mean - f).square()
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
