"""Expectation-maximisation for Gaussian mixtures.

* Offline: :class:`GaussianMixture`, a scikit-learn-compatible estimator computed in torch, which
  also fits one mixture per group of rows (:meth:`GaussianMixture.fit_grouped`).
* Online (the GMMSeg head's momentum EM): two memories with one interface,
  :class:`MixtureMemory` (``write`` the E-step's samples, then ``m_step``):
  :class:`ComponentMemory` (the paper's ring bank per class and component; its M-step is the
  formula :func:`momentum_m_step`) and :class:`StreamingStatistics` (the O(G·M·D) alternative).
"""

from gmmseg.em.gaussian_mixture import (
    ConvergenceWarning,
    GaussianMixture,
    GroupedGaussianMixture,
    NotFittedError,
)
from gmmseg.em.memory import ComponentMemory
from gmmseg.em.momentum import momentum_m_step
from gmmseg.em.online import MixtureMemory
from gmmseg.em.streaming import StreamingStatistics

__all__ = [
    "ComponentMemory",
    "ConvergenceWarning",
    "GaussianMixture",
    "GroupedGaussianMixture",
    "MixtureMemory",
    "NotFittedError",
    "StreamingStatistics",
    "momentum_m_step",
]
