"""Atomic checkpoints and random-number-generator state capture."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "checkpoint_path",
    "get_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "save_checkpoint",
    "set_rng_state",
]

_PATTERN = re.compile(r"^iter_(\d+)\.pt$")


def checkpoint_path(work_dir: Path | str, iteration: int) -> Path:
    """``work_dir/iter_{iteration:08d}.pt``."""
    return Path(work_dir) / f"iter_{iteration:08d}.pt"


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` to a temporary file, then rename it over ``path``.

    A crash while writing leaves at most a stray ``.tmp`` file, never a truncated checkpoint.

    Args:
        path: destination file.
        state: tensors, numbers, strings and containers of them (loadable with
            ``weights_only=True``).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def latest_checkpoint(work_dir: Path | str) -> Path | None:
    """The ``iter_*.pt`` file of ``work_dir`` with the largest iteration, or None."""
    folder = Path(work_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a gmmseg checkpoint (no ``"model"`` entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{str(path)!r} is not a gmmseg checkpoint: expected a dict with 'model'")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Load a checkpoint's ``"model"`` state dict and its non-persistent ``"buffers"``.

    Raises:
        RuntimeError: the state dict does not fit ``model`` (``load_state_dict``'s error).
    """
    model.load_state_dict(state["model"])
    buffers = dict(model.named_buffers())
    for k, v in state.get("buffers", {}).items():
        if k in buffers:
            buffers[k].copy_(v)


def get_rng_state() -> dict[str, Any]:
    """States of Python's, numpy's legacy, torch's CPU and (if present) CUDA generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`get_rng_state`."""
    random.setstate(_to_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    """Lists back to tuples (``random.setstate`` wants tuples)."""
    if isinstance(x, list | tuple):
        return tuple(_to_tuple(v) for v in x)
    return x
