"""torch.distributed helpers for metric states; no-ops without an initialised process group.

Metric states may live on the CPU (anomaly and component metrics) or on the inputs' device
(segmentation). NCCL only communicates CUDA tensors and gloo is used here with CPU tensors, so
each collective runs on the backend's device and the result is copied back in place.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when torch.distributed is available, initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_(tensors: list[Tensor], op: str = "sum") -> None:
    """In-place all-reduce (``"sum"``, ``"max"`` or ``"min"``) of each tensor over all ranks."""
    if not is_distributed():
        return
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
    device = _comm_device()
    for t in tensors:
        buf = t.to(device)
        dist.all_reduce(buf, op=reduce_op)
        if buf is not t:
            t.copy_(buf)


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate a 1-D tensor of rank-dependent length over all ranks (rank order)."""
    if not is_distributed():
        return t
    device = _comm_device()
    world = dist.get_world_size()
    size = torch.tensor([t.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    lengths = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=t.dtype, device=device)
    padded[: t.numel()] = t.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, lengths, strict=True)]).to(t.device)
