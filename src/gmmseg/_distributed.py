"""torch.distributed helpers shared by the heads, the online EM, the metrics and the engine.

A leaf module (it imports only torch): every helper is a no-op, or returns the single-process
answer, when ``torch.distributed`` is unavailable, not initialised, or has one process.

Collectives run on the backend's device: NCCL communicates CUDA tensors only and gloo is used
here with CPU tensors, so a tensor elsewhere (e.g. a metric state kept on the CPU under NCCL) is
copied there and the result copied back.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather_rows",
    "all_reduce_",
    "is_distributed",
    "is_initialized",
    "rank",
    "world_size",
]


def is_initialized() -> bool:
    """True when ``torch.distributed`` is available and its default process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes: ``dist.get_world_size()``, or 1 without a process group."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's global rank: ``dist.get_rank()``, or 0 without a process group."""
    return dist.get_rank() if is_initialized() else 0


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return world_size() > 1


def _comm_device(t: Tensor) -> torch.device:
    """Where a collective on ``t`` runs: its own GPU or the current one with NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return t.device if t.is_cuda else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(t: Tensor) -> Tensor:
    """Concatenate ``t`` over all processes along its first axis, in rank order.

    Processes may hold different numbers of rows: the row counts are exchanged first (one
    device synchronisation, to size the result) and every process's rows are padded to the
    largest count for the gather.

    Args:
        t: (N, ...) tensor of any dtype; N may differ between processes, the other axes may not.

    Returns:
        (ΣN, ...) tensor on ``t``'s device; ``t`` itself when not distributed.
    """
    if not is_distributed():
        return t
    device = _comm_device(t)
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype, device=device)
    padded[: t.shape[0]] = t.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)], dim=0).to(t.device)


def all_reduce_(tensors: list[Tensor], op: Literal["sum", "max", "min"] = "sum") -> None:
    """Reduce each tensor elementwise over all processes, in place.

    Args:
        tensors: tensors of the same shapes on every process; each is overwritten with the
            reduction. Nothing happens when not distributed.
        op: ``"sum"``, ``"max"`` or ``"min"``.

    Raises:
        ValueError: on an unknown ``op``.
    """
    if op not in ("sum", "max", "min"):
        raise ValueError(f"op: expected 'sum', 'max' or 'min', received {op!r}")
    if not is_distributed():
        return
    # (ReduceOp exists only in builds with torch.distributed: looked up here, not at import)
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
    for t in tensors:
        buf = t.to(_comm_device(t))
        dist.all_reduce(buf, op=reduce_op)
        if buf is not t:
            t.copy_(buf)
