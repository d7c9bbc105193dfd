"""Expectation-maximisation for Gaussian mixtures.

* Offline: :class:`GaussianMixture`, a scikit-learn-compatible estimator computed in torch, which
  also fits one mixture per group of rows (:meth:`GaussianMixture.fit_grouped`).
* Online (the GMMSeg head's momentum EM): two memories with one interface,
  :class:`MixtureMemory` (``write`` the E-step's samples, then ``m_step``):
  :class:`ComponentMemory` (the paper's ring bank per class and component; its M-step is the
  formula :func:`momentum_m_step`) and :class:`StreamingStatistics` (the O(G·M·D) alternative).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gmmseg.em.memory import ComponentMemory
from gmmseg.em.momentum import momentum_m_step
from gmmseg.em.online import MixtureMemory
from gmmseg.em.streaming import StreamingStatistics

if TYPE_CHECKING:
    from gmmseg.em.gaussian_mixture import (
        ConvergenceWarning,
        GaussianMixture,
        GroupedGaussianMixture,
        NotFittedError,
    )

# The estimator module imports scikit-learn when it is installed (its exception and warning
# classes subclass scikit-learn's); it is loaded on first use, so the online EM of the training
# path never imports scikit-learn.
_ESTIMATOR_NAMES = (
    "ConvergenceWarning",
    "GaussianMixture",
    "GroupedGaussianMixture",
    "NotFittedError",
)

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


def __getattr__(name: str) -> Any:
    """The estimator's names, imported on first use (PEP 562)."""
    if name in _ESTIMATOR_NAMES:
        value = getattr(importlib.import_module("gmmseg.em.gaussian_mixture"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gmmseg.em' has no attribute {name!r}")
