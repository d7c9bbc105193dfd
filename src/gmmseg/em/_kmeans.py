"""Initialisers of :class:`~gmmseg.em.GaussianMixture`: weighted k-means++ and Lloyd k-means.

They are the starting points of EM, not a reproduction of scikit-learn's ``KMeans``: seeding
follows the greedy k-means++ of scikit-learn (``2 + ⌊log k⌋`` candidates per centre), Lloyd
iterations stop on a relative shift of the centres. Every routine honours sample weights and
draws its random numbers through :func:`uniform_draws`, so a seed gives the same start on every
device.

This module is private: its names may change without notice.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["draw_distinct_rows", "kmeans_labels", "kmeans_plusplus", "uniform_draws"]


def uniform_draws(
    shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor
) -> Tensor:
    """Uniform [0, 1) draws made on the generator's device, returned in ``like``'s dtype/device.

    Drawing on the generator's device (the CPU for ``None`` and integer seeds) keeps results
    identical whatever device the computation runs on.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return u.to(dtype=like.dtype, device=like.device)


def _sample_rows(p: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """(n,) int64 rows drawn with replacement with probability ∝ ``p`` (N,) ≥ 0."""
    cum = torch.cumsum(p.to(torch.float64), 0)
    u = uniform_draws((n,), generator, cum)
    rows = torch.searchsorted(cum, u * cum[-1], right=True)
    return rows.clamp_(max=p.numel() - 1)


def draw_distinct_rows(w: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """``k`` distinct rows drawn uniformly among the rows with positive weight.

    Args:
        w: (N,) sample weights, at least ``k`` of them positive.
        k: number of rows.
        generator: random generator (``None``: torch's global CPU generator).

    Returns:
        (k,) int64 row indices.
    """
    u = uniform_draws((w.numel(),), generator, w.to(torch.float64))
    keys = u + (w <= 0).to(u.dtype)  # positive-weight rows in [0, 1), the others in [1, 2)
    return torch.argsort(keys)[:k]


def _squared_distances(x: Tensor, x_sq: Tensor, centres: Tensor) -> Tensor:
    """(N, D) rows, (N,) ‖x‖², (C, D) centres -> (N, C) ‖x − c‖²."""
    cross = x @ centres.T
    return (x_sq[:, None] - 2.0 * cross + (centres * centres).sum(-1)).clamp_min_(0.0)


def kmeans_plusplus(x: Tensor, w: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """Greedy weighted k-means++ seeding.

    Each new centre is the best (lowest potential) of ``2 + ⌊log k⌋`` candidates drawn with
    probability ∝ w·D², D being the distance to the closest centre chosen so far.

    Args:
        x: (N, D) rows (centred, for accuracy).
        w: (N,) sample weights.
        k: number of centres.
        generator: random generator.

    Returns:
        (k,) int64 row indices of the seeds.
    """
    trials = 2 + int(math.log(k))
    x_sq = (x * x).sum(-1)
    seeds = [_sample_rows(w, 1, generator)]
    closest = _squared_distances(x, x_sq, x[seeds[0]])[:, 0]
    for _ in range(1, k):
        candidates = _sample_rows(w * closest, trials, generator)  # (T,)
        d2 = torch.minimum(_squared_distances(x, x_sq, x[candidates]), closest[:, None])
        best = torch.argmin(w @ d2)  # the candidate with the lowest potential Σ w·D²
        seeds.append(candidates[best : best + 1])
        closest = d2[:, best]
    return torch.cat(seeds)


def kmeans_labels(
    x: Tensor,
    w: Tensor,
    k: int,
    generator: torch.Generator | None,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> Tensor:
    """Weighted Lloyd k-means from k-means++ seeds.

    Stops once the squared shift of the centres is at most ``tol`` × (mean per-dimension
    variance of the data); an empty cluster keeps its centre.

    Args:
        x: (N, D) rows, centred (the variance above assumes it).
        w: (N,) sample weights.
        k: number of clusters.
        generator: random generator for the seeding.
        max_iter: maximum Lloyd iterations.
        tol: relative tolerance on the centre shift.

    Returns:
        (N,) int64 cluster of each row, from the final centres.
    """
    x_sq = (x * x).sum(-1)
    centres = x[kmeans_plusplus(x, w, k, generator)]  # (k, D)
    threshold = tol * (w @ x_sq) / (w.sum() * x.shape[1])
    for _ in range(max_iter):
        labels = torch.argmin(_squared_distances(x, x_sq, centres), dim=1)
        resp = torch.nn.functional.one_hot(labels, k).to(x.dtype) * w[:, None]
        mass = resp.sum(dim=0)  # (k,)
        filled = mass > 0
        safe = torch.where(filled, mass, torch.ones_like(mass))
        new = torch.where(filled[:, None], (resp.T @ x) / safe[:, None], centres)
        shift = ((new - centres) ** 2).sum()
        centres = new
        if not bool(shift > threshold):
            break
    return torch.argmin(_squared_distances(x, x_sq, centres), dim=1)
