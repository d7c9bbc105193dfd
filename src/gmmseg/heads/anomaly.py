"""Pixel anomaly scores computed from classifier logits (higher = more anomalous).

These are the standard baselines against which GMMSeg's likelihood score is compared. Each takes
logits ``z`` of shape (B, C, H, W) (any shape with the class axis at ``dim=1`` works) and returns
scores with the class axis removed, computed in at least float32.

| name        | score                    |
| ----------- | ------------------------ |
| ``msp``       | 1 − max_c softmax(z)_c   |
| ``max_logit`` | −max_c z_c               |
| ``energy``    | −T · logsumexp_c(z_c / T) |
| ``entropy``   | −Σ_c p_c log p_c          |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "LOGIT_SCORES",
    "LogitScore",
    "energy_score",
    "entropy_score",
    "logit_anomaly_score",
    "max_logit_score",
    "msp_score",
]

LogitScore = Literal["msp", "max_logit", "energy", "entropy"]


def _check_logits(logits: Tensor) -> Tensor:
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {type(logits).__name__}")
    if logits.ndim < 2 or logits.shape[1] < 1:
        raise ValueError(
            f"logits must have shape (B, C, ...) with C >= 1, got shape {tuple(logits.shape)}"
        )
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits must be finite, got NaN/Inf values")
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def msp_score(logits: Tensor) -> Tensor:
    """One minus the maximum softmax probability.

    Args:
        logits: (B, C, H, W) float.

    Returns:
        (B, H, W) scores in [0, 1 − 1/C].
    """
    z = _check_logits(logits)
    return 1.0 - torch.softmax(z, dim=1).amax(dim=1)


def max_logit_score(logits: Tensor) -> Tensor:
    """Negative maximum logit.

    Args:
        logits: (B, C, H, W) float.

    Returns:
        (B, H, W) scores.
    """
    return -_check_logits(logits).amax(dim=1)


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Free energy ``−T · logsumexp(z / T)``.

    Args:
        logits: (B, C, H, W) float.
        temperature: T > 0.

    Returns:
        (B, H, W) scores.

    Raises:
        ValueError: if ``temperature`` is not positive.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    z = _check_logits(logits)
    return -temperature * torch.logsumexp(z / temperature, dim=1)


def entropy_score(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of the softmax distribution.

    Args:
        logits: (B, C, H, W) float.

    Returns:
        (B, H, W) scores in [0, log C].
    """
    z = _check_logits(logits)
    log_p = torch.log_softmax(z, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


LOGIT_SCORES: dict[str, Callable[[Tensor], Tensor]] = {
    "msp": msp_score,
    "max_logit": max_logit_score,
    "energy": energy_score,
    "entropy": entropy_score,
}


def logit_anomaly_score(logits: Tensor, method: LogitScore = "msp") -> Tensor:
    """Dispatch to one of the logit-based anomaly scores by name.

    Args:
        logits: (B, C, H, W) float.
        method: one of ``"msp"``, ``"max_logit"``, ``"energy"``, ``"entropy"``.

    Returns:
        (B, H, W) scores, higher = more anomalous.

    Raises:
        ValueError: for an unknown ``method``.
    """
    if method not in LOGIT_SCORES:
        raise ValueError(f"method must be one of {sorted(LOGIT_SCORES)}, got {method!r}")
    return LOGIT_SCORES[method](logits)
