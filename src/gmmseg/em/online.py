"""The interface of GMMSeg's online EM memory: write the E-step's samples, then the M-step.

Letters: G groups (classes), M components per group, D embedding dimensions, N samples.

The online EM splits as pomegranate's ``summarize`` / ``from_summaries``:
:meth:`MixtureMemory.write` adds the samples the E-step assigned to each (group, component) to what
the memory keeps, and :meth:`MixtureMemory.m_step` turns what it keeps into new component
parameters, blended with the old ones by a momentum (pomegranate's ``inertia``). Unlike
``from_summaries``, the M-step is pure (it returns the parameters and keeps the memory as is):
the memory outlives every M-step.

Two memories implement it, interchangeably for :class:`~gmmseg.heads.GMMClassifier`:

* :class:`~gmmseg.em.memory.ComponentMemory`, the paper's ring bank of the last ``K`` embeddings
  per (group, component), O(G·M·K·D) numbers; its M-step is
  :func:`~gmmseg.em.momentum.momentum_m_step` over the bank;
* :class:`~gmmseg.em.streaming.StreamingStatistics`, exponentially decayed sufficient statistics
  (weight, mean, centred sum of squares), O(G·M·D) numbers; with ``decay=1`` its M-step equals
  that of a ring holding the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["MixtureMemory"]


@runtime_checkable
class MixtureMemory(Protocol):
    """A memory of embeddings per (group, component) and the momentum M-step from it.

    ``isinstance(x, MixtureMemory)`` checks only that both methods exist (a runtime-checkable
    protocol); mypy checks their signatures.
    """

    def write(
        self,
        embeddings: Tensor,
        groups: Tensor,
        components: Tensor,
        mask: Tensor | None = None,
        *,
        validate: bool = True,
    ) -> Tensor:
        """Add samples to the memory of their (group, component).

        Every tensor the call creates is sized by the inputs' shapes, never by their values, so
        with ``validate=False`` a write does not synchronise host and device.

        Args:
            embeddings: (N, D) float samples (GMMSeg: the correctly predicted pixels'
                embeddings, in pixel order, gathered over processes in distributed training).
            groups: (N,) integer ids in ``[0, G)`` (anything where ``mask`` is False).
            components: (N,) integer ids in ``[0, M)``, the E-step's assignments (anything
                where ``mask`` is False).
            mask: optional (N,) bool: only samples where it is True count, with the result of
                passing ``embeddings[mask]``, ``groups[mask]``, ``components[mask]``.
            validate: check the ids' range and the embeddings for NaN/Inf (each reads a result
                on the host). Types, shapes and devices are always checked.

        Returns:
            (G, M): what this call added to each (group, component): the number of samples
            written (ring bank, int64) or their total weight (statistics, their dtype).

        Raises:
            ValueError: on a wrong shape, dtype or device, and with ``validate`` on ids out of
                range or NaN/Inf embeddings.
        """
        ...

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
        """GMMSeg's momentum M-step from the memory (step 8 of the algorithm).

        For each listed group and component, with ``e`` over the samples the memory holds:
        ``f = normalise(Σ e)``, ``μ ← m·μ + (1 − m)·f`` and
        ``σ ← s·σ + (1 − s)·sqrt(mean (e − f)² + variance_floor)`` per dimension. Components
        with nothing in memory and groups not listed are returned unchanged. Pure: neither
        the inputs nor the memory are modified.

        Args:
            means: (G, M, D) float, the component means (the head keeps them unit length).
            scales: (G, M, D) float, the component standard deviations σ.
            groups: the groups to update: 1-D integer indices in ``[0, G)`` or a (G,) bool mask
                (one device synchronisation, its ``nonzero``).
            mean_momentum: m, weight of the old mean (paper: 0.999).
            scale_momentum: s, weight of the old σ (paper: 0).
            variance_floor: added to the per-dimension spread before the square root (paper:
                0.01).
            validate: check the parameters (and what the memory holds) for NaN/Inf and integer
                ``groups`` for their range (reads on the host).

        Returns:
            ``(new_means, new_scales)``: (G, M, D) tensors in the dtype of ``means``.

        Raises:
            ValueError: on inconsistent shapes, dtypes or devices, NaN/Inf values with
                ``validate``, a momentum outside [0, 1], a negative ``variance_floor`` or groups
                out of range.
        """
        ...
