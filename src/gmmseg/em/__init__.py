"""Expectation-maximisation for Gaussian mixtures.

* Offline: :class:`GaussianMixture`, a scikit-learn-compatible estimator computed in torch, which
  also fits one mixture per group of rows (:meth:`GaussianMixture.fit_grouped`).
* Online (the GMMSeg head's momentum EM): :class:`ComponentMemory` (ring bank per class and
  component), :func:`momentum_m_step`, and :class:`StreamingStatistics` (the O(G·M·D) alternative).
"""

from gmmseg.em.gaussian_mixture import (
    ConvergenceWarning,
    GaussianMixture,
    GroupedGaussianMixture,
    NotFittedError,
)
from gmmseg.em.memory import ComponentMemory
from gmmseg.em.momentum import momentum_m_step
from gmmseg.em.streaming import StreamingStatistics

__all__ = [
    "ComponentMemory",
    "ConvergenceWarning",
    "GaussianMixture",
    "GroupedGaussianMixture",
    "NotFittedError",
    "StreamingStatistics",
    "momentum_m_step",
]
