"""Process-group setup for ``torchrun`` and small helpers; single-process runs need none of it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gmmseg._distributed import is_initialized, rank, world_size

__all__ = ["DistInfo", "barrier", "cleanup_distributed", "init_distributed", "select_device"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands.

    Attributes:
        rank: global rank (0 without a process group).
        world_size: number of processes (1 without a process group).
        local_rank: rank on this node (the GPU index).
        device: the device this process computes on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0


def select_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``device`` if given, else ``cuda:local_rank`` when CUDA is available, else CPU.

    Raises:
        ValueError: an invalid device name; a device type other than cpu and cuda; a CUDA
            device requested without CUDA, or with an index past the last GPU.
    """
    if device is None or device == "auto":
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(
            f"device {device!r} is not a device name: expected auto, cpu, cuda or cuda:N"
        ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {device!r}: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif dev.type != "cpu":
        # Training, evaluation and prediction are tested on CPU and CUDA only; other backends
        # (mps, xpu, meta, ...) fail deep inside a step with unrelated messages.
        raise ValueError(f"device {device!r} is not supported: expected auto, cpu, cuda or cuda:N")
    return dev


def init_distributed(device: str | None = None) -> DistInfo:
    """Initialise the default process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    NCCL is used on CUDA, gloo on CPU. Without ``WORLD_SIZE`` (a plain ``python`` launch), or
    with an already initialised group, nothing is initialised.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:0"`` or None/``"auto"``.

    Returns:
        The rank, world size, local rank and device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(device, local_rank)
    if str(dev) == "cuda":  # no index given: this process's GPU
        dev = torch.device("cuda", local_rank)
    if world > 1 and not is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if is_initialized():
        return DistInfo(rank(), world_size(), local_rank, dev)
    return DistInfo(0, 1, 0, dev)


def barrier() -> None:
    """``dist.barrier()`` when a process group is initialised."""
    if is_initialized():
        dist.barrier()


def cleanup_distributed() -> None:
    """Destroy the default process group if this module's caller created one."""
    if is_initialized():
        dist.destroy_process_group()
