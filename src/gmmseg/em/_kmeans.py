"""Grouped rows and a small grouped k-means, shared by :mod:`gmmseg.em.gaussian_mixture`.

:class:`SegmentLayout` stores how the rows of a data set are split into G groups (one mixture
per group, e.g. one per class) so that every per-group reduction is one batched call:

* G = 1: the rows stay as they are (R = N), and every reduction is a plain matrix product.
* G > 1: the rows are sorted by group and each group is padded to a multiple of ``B`` rows, so
  the padded array of R rows splits into ``nb = R / B`` blocks that each belong to one group.
  Per-group matrix products are then one ``bmm`` over blocks followed by an ``index_add_`` of
  the block results into their group (a segmented sum), with no Python loop over groups.
  Padding rows carry sample weight 0, so they never contribute to a sum.

The k-means routines (k-means++ seeding, Lloyd iterations, random draws of distinct rows) run
on that layout, vectorised over groups. They are the initialisers of ``GaussianMixture``; they
are not meant to reproduce scikit-learn's ``KMeans`` bit for bit.

This module is private: its names may change without notice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SegmentLayout",
    "draw_distinct_rows",
    "kmeans_labels",
    "kmeans_plusplus",
    "uniform_draws",
]

#: Budget, in elements, of one chunk's temporary buffer (64 MiB in float32).
CHUNK_ELEMENTS = 1 << 24
#: Rows per block when G > 1 (waste: at most G·(B − 1) padding rows).
BLOCK_ROWS = 256


@dataclass(frozen=True)
class SegmentLayout:
    """Rows of N samples split into G groups, laid out as R rows in blocks of one group each.

    Attributes:
        num_groups: G.
        num_rows: R, the number of laid-out rows (N when G = 1, padded otherwise).
        block_rows: B, rows per block (0 when G = 1: one flat block).
        block_group: (nb,) int64 group of each block, or ``None`` when G = 1.
        positions: (N,) int64 laid-out row of each input row, or ``None`` when G = 1 (identity).
        group_start: (G,) int64 first laid-out row of each group.
        counts: (G,) int64 number of input rows in each group.
    """

    num_groups: int
    num_rows: int
    block_rows: int
    block_group: Tensor | None
    positions: Tensor | None
    group_start: Tensor
    counts: Tensor

    @classmethod
    def single(cls, n: int, device: torch.device) -> SegmentLayout:
        """Layout of one group holding all N rows (no copy, no padding)."""
        return cls(
            num_groups=1,
            num_rows=n,
            block_rows=0,
            block_group=None,
            positions=None,
            group_start=torch.zeros(1, dtype=torch.int64, device=device),
            counts=torch.full((1,), n, dtype=torch.int64, device=device),
        )

    @classmethod
    def grouped(
        cls, group_ids: Tensor, num_groups: int, block_rows: int = BLOCK_ROWS
    ) -> SegmentLayout:
        """Layout of N rows with ``group_ids`` (N,) int64 in [0, G) (validated by the caller)."""
        device = group_ids.device
        counts = torch.bincount(group_ids, minlength=num_groups)
        blocks = torch.div(counts + block_rows - 1, block_rows, rounding_mode="floor")
        block_start = torch.cumsum(blocks, 0) - blocks
        nb = int(blocks.sum())
        order = torch.argsort(group_ids, stable=True)
        sorted_groups = group_ids[order]
        row_start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(group_ids.numel(), device=device) - row_start[sorted_groups]
        positions = torch.empty_like(order)
        positions[order] = block_start[sorted_groups] * block_rows + rank
        block_group = torch.repeat_interleave(
            torch.arange(num_groups, device=device), blocks, output_size=nb
        )
        return cls(
            num_groups=num_groups,
            num_rows=nb * block_rows,
            block_rows=block_rows,
            block_group=block_group,
            positions=positions,
            group_start=block_start * block_rows,
            counts=counts,
        )

    # -- moving rows in and out of the layout ------------------------------------------------

    def scatter_rows(self, t: Tensor) -> Tensor:
        """(N, *F) rows in input order -> (R, *F) laid-out rows (padding filled with 0)."""
        if self.positions is None:
            return t
        out = t.new_zeros((self.num_rows, *t.shape[1:]))
        out[self.positions] = t
        return out

    def gather_rows(self, t: Tensor) -> Tensor:
        """(R, *F) laid-out rows -> (N, *F) rows in input order."""
        return t if self.positions is None else t[self.positions]

    def row_groups(self, rows: Tensor) -> Tensor:
        """Group of each of the given laid-out ``rows`` (int64)."""
        if self.block_group is None:
            return torch.zeros_like(rows)
        return self.block_group[torch.div(rows, self.block_rows, rounding_mode="floor")]

    def expand_groups(self, t: Tensor) -> Tensor:
        """(G, *F) per-group values -> per-row values broadcastable against (R, *F)."""
        if self.block_group is None:
            return t[0]
        return torch.repeat_interleave(t[self.block_group], self.block_rows, dim=0)

    # -- segmented reductions -----------------------------------------------------------------

    def _add_blocks(self, per_block: Tensor) -> Tensor:
        assert self.block_group is not None
        out = per_block.new_zeros((self.num_groups, *per_block.shape[1:]))
        return out.index_add_(0, self.block_group, per_block)

    def segment_sum(self, t: Tensor) -> Tensor:
        """(R, *F) -> (G, *F): sum of each group's rows."""
        if self.block_group is None:
            return t.sum(dim=0, keepdim=True)
        blocks = t.reshape(-1, self.block_rows, *t.shape[1:]).sum(dim=1)
        return self._add_blocks(blocks)

    def segment_matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """(R, K), (R, F) -> (G, K, F): ``Σ_rows aᵀ b`` over each group's rows (one GEMM/bmm)."""
        if self.block_group is None:
            return (a.T @ b).unsqueeze(0)
        k, f = a.shape[1], b.shape[1]
        per_block = torch.bmm(
            a.reshape(-1, self.block_rows, k).transpose(1, 2), b.reshape(-1, self.block_rows, f)
        )
        return self._add_blocks(per_block)

    def group_matmul(self, a: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
        """(R, F), (G, F, K)[, (G, K)] -> (R, K): each row times its own group's matrix.

        One GEMM (G = 1) or one ``bmm`` over blocks; ``bias`` is added in the same call.
        """
        if self.block_group is None:
            return a @ w[0] if bias is None else torch.addmm(bias[0], a, w[0])
        f, k = w.shape[1], w.shape[2]
        blocks = a.reshape(-1, self.block_rows, f)
        if bias is None:
            out = torch.bmm(blocks, w[self.block_group])
        else:
            out = torch.baddbmm(bias[self.block_group].unsqueeze(1), blocks, w[self.block_group])
        return out.reshape(-1, k)

    def chunks(
        self, elements_per_row: int, chunk_rows: int | None
    ) -> Iterator[tuple[slice, Tensor]]:
        """Split the rows into chunks of whole blocks whose temporaries fit the memory budget.

        Args:
            elements_per_row: size of the per-row temporary the caller will allocate.
            chunk_rows: rows per chunk requested by the user, or ``None`` for the budget.

        Yields:
            ``(rows, groups)``: a slice of laid-out rows, to be viewed as ``(len(groups), b, …)``
            blocks, and the (nbc,) int64 group of each of those blocks.
        """
        rows = chunk_rows or max(1, CHUNK_ELEMENTS // max(elements_per_row, 1))
        if self.block_group is None:
            zero = self.group_start[:1]
            for start in range(0, self.num_rows, rows):
                yield slice(start, min(start + rows, self.num_rows)), zero
            return
        per_chunk = max(1, rows // self.block_rows)
        nb = self.block_group.numel()
        for b0 in range(0, nb, per_chunk):
            b1 = min(b0 + per_chunk, nb)
            yield slice(b0 * self.block_rows, b1 * self.block_rows), self.block_group[b0:b1]


# -- random draws ---------------------------------------------------------------------------


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


def _sample_rows(
    layout: SegmentLayout, p: Tensor, n: int, generator: torch.Generator | None
) -> Tensor:
    """Draw ``n`` rows per group with replacement, with probability ∝ ``p`` (R,) ≥ 0.

    Returns:
        (G, n) int64 laid-out row indices. A group whose ``p`` is all zero gets its last row.
    """
    cum = torch.cumsum(p.to(torch.float64), 0)
    first = layout.group_start
    last = first + layout.counts - 1
    base = cum[first] - p[first].to(torch.float64)
    total = cum[last] - base
    u = uniform_draws((layout.num_groups, n), generator, cum)
    idx = torch.searchsorted(cum, base[:, None] + u * total[:, None], right=True)
    return torch.minimum(torch.maximum(idx, first[:, None]), last[:, None])


def draw_distinct_rows(
    layout: SegmentLayout, w: Tensor, k: int, generator: torch.Generator | None
) -> Tensor:
    """Draw ``k`` distinct rows per group uniformly among rows with positive weight.

    Args:
        layout: the row layout.
        w: (R,) sample weights (0 on padding); each group has at least ``k`` positive ones.
        k: rows per group.
        generator: random generator (``None``: torch's global CPU generator).

    Returns:
        (G, k) int64 laid-out row indices.
    """
    u = uniform_draws((layout.num_rows,), generator, w.to(torch.float64))
    # Random keys: positive-weight rows in [0, 1), others in [1, 2); group g offset by 2g.
    keys = (
        u
        + (w <= 0).to(u.dtype)
        + 2.0
        * layout.expand_groups(torch.arange(layout.num_groups, device=w.device, dtype=u.dtype))
    )
    order = torch.argsort(keys)
    offsets = layout.group_start[:, None] + torch.arange(k, device=w.device)
    return order[offsets]


# -- k-means --------------------------------------------------------------------------------


def _squared_distances(layout: SegmentLayout, x: Tensor, x_sq: Tensor, centres: Tensor) -> Tensor:
    """(R, D) rows, (R,) ‖x‖², (G, C, D) centres -> (R, C) ‖x − c‖² to the row's own group's."""
    cross = layout.group_matmul(x, centres.transpose(1, 2))
    c_sq = layout.expand_groups((centres * centres).sum(-1))
    return (x_sq[:, None] - 2.0 * cross + c_sq).clamp_min_(0.0)


def kmeans_plusplus(
    layout: SegmentLayout, x: Tensor, w: Tensor, k: int, generator: torch.Generator | None
) -> Tensor:
    """Greedy weighted k-means++ seeding in every group at once.

    Each new centre is the best (lowest potential) of ``2 + ⌊log k⌋`` candidates drawn with
    probability ∝ w·D², D being the distance to the closest centre chosen so far.

    Args:
        layout: the row layout.
        x: (R, D) rows (centred per group for accuracy).
        w: (R,) sample weights (0 on padding).
        k: centres per group.
        generator: random generator.

    Returns:
        (G, k) int64 laid-out row indices of the seeds.
    """
    trials = 2 + int(math.log(k))
    x_sq = (x * x).sum(-1)
    seeds = [_sample_rows(layout, w, 1, generator)[:, 0]]
    closest = _squared_distances(layout, x, x_sq, x[seeds[0]][:, None, :])[:, 0]
    for _ in range(1, k):
        cand = _sample_rows(layout, w * closest, trials, generator)  # (G, T)
        d2 = torch.minimum(_squared_distances(layout, x, x_sq, x[cand]), closest[:, None])
        potential = layout.segment_sum(w[:, None] * d2)  # (G, T)
        best = torch.argmin(potential, dim=1)  # (G,)
        seeds.append(cand.gather(1, best[:, None])[:, 0])
        best_row = layout.expand_groups(best).expand(layout.num_rows)
        closest = d2.gather(1, best_row[:, None])[:, 0]
    return torch.stack(seeds, dim=1)


def kmeans_labels(
    layout: SegmentLayout,
    x: Tensor,
    w: Tensor,
    k: int,
    generator: torch.Generator | None,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> Tensor:
    """Weighted Lloyd k-means from k-means++ seeds, in every group at once.

    A group stops moving once the squared shift of its centres is at most
    ``tol`` × (mean per-dimension variance of the group); an empty cluster keeps its centre.

    Args:
        layout: the row layout.
        x: (R, D) rows, centred per group (the variance above assumes it).
        w: (R,) sample weights (0 on padding).
        k: clusters per group.
        generator: random generator for the seeding.
        max_iter: maximum Lloyd iterations.
        tol: relative tolerance on the centre shift.

    Returns:
        (R,) int64 cluster of each row (within its group), from the final centres.
    """
    x_sq = (x * x).sum(-1)
    centres = x[kmeans_plusplus(layout, x, w, k, generator)]  # (G, k, D)
    total_w = layout.segment_sum(w)
    variance = layout.segment_sum(w * x_sq) / (total_w * x.shape[1])
    threshold = tol * variance
    active = torch.ones(layout.num_groups, dtype=torch.bool, device=x.device)
    for _ in range(max_iter):
        labels = torch.argmin(_squared_distances(layout, x, x_sq, centres), dim=1)
        resp = torch.nn.functional.one_hot(labels, k).to(x.dtype) * w[:, None]
        mass = layout.segment_sum(resp)  # (G, k)
        sums = layout.segment_matmul(resp, x)  # (G, k, D)
        filled = mass > 0
        safe = torch.where(filled, mass, torch.ones_like(mass))
        new = torch.where(filled[..., None], sums / safe[..., None], centres)
        shift = ((new - centres) ** 2).sum(dim=(1, 2))
        centres = torch.where(active[:, None, None], new, centres)
        active = active & (shift > threshold)
        if not bool(active.any()):
            break
    return torch.argmin(_squared_distances(layout, x, x_sq, centres), dim=1)
