"""A host-device synchronisation detector for CPU test runs.

On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` catches synchronisations; on the CPU nothing
synchronises, so this detector flags the Python-level torch calls that *would* synchronise on an
accelerator: reading a tensor's value on the host (``item``, ``bool``, ``int``, ``float``,
``tolist``, ``numpy``, ...) and the operations whose output size depends on the data
(``nonzero``, ``unique``, boolean-mask indexing, ...). It is built on the public
:class:`torch.overrides.TorchFunctionMode`, which sees every torch call made from Python.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_SRC = os.sep + os.path.join("src", "gmmseg") + os.sep

# Calls that read a tensor's value on the host.
_HOST_READS = {
    torch.Tensor.item,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.equal,
    torch.equal,
    torch.is_nonzero,
    torch.Tensor.is_nonzero,
}
# Calls whose output size depends on the data (the size is read back to allocate the output).
_DATA_SIZED = {
    torch.nonzero,
    torch.Tensor.nonzero,
    torch.argwhere,
    torch.Tensor.argwhere,
    torch.unique,
    torch.Tensor.unique,
    torch.unique_consecutive,
    torch.Tensor.unique_consecutive,
    torch.masked_select,
    torch.Tensor.masked_select,
    torch.bincount,
    torch.Tensor.bincount,
}
_REPEAT_INTERLEAVE = {torch.repeat_interleave, torch.Tensor.repeat_interleave}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))


def _has_bool_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


@dataclass(frozen=True)
class Sync:
    """One call that would synchronise: the torch call and the library frame that made it."""

    call: str
    file: str
    function: str
    line: int

    def __str__(self) -> str:
        return f"{self.call} in {self.file}:{self.line} ({self.function})"


@dataclass
class SyncLog:
    """The syncs seen inside :func:`detect_syncs`."""

    syncs: list[Sync] = field(default_factory=list)


def _sync_reason(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str | None:
    if func in _HOST_READS or func in _DATA_SIZED:
        return _name(func)
    if func in _REPEAT_INTERLEAVE and kwargs.get("output_size") is None:
        # repeat_interleave(input, repeats, dim, *, output_size): a tensor of repeats needs its sum
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if isinstance(repeats, torch.Tensor) or (len(args) == 1 and "repeats" not in kwargs):
            return _name(func) + " without output_size"
    if func in _INDEXING and len(args) > 1 and _has_bool_index(args[1]):
        return _name(func) + " with a bool mask"
    return None


class _Detector(TorchFunctionMode):
    def __init__(self, log: SyncLog) -> None:
        super().__init__()
        self.log = log

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        reason = _sync_reason(func, args, kwargs)
        if reason is not None:
            self.log.syncs.append(_caller(reason))
        return func(*args, **kwargs)


def _caller(reason: str) -> Sync:
    """The innermost frame in gmmseg's sources (else the innermost outside torch)."""
    fallback: Sync | None = None
    for info in inspect.stack()[2:]:
        path = info.filename
        if _SRC in path:
            rel = path[path.index(_SRC) + 1 :]
            return Sync(reason, rel, info.function, info.lineno)
        if fallback is None and os.sep + "torch" + os.sep not in path and "sync_check" not in path:
            fallback = Sync(reason, path, info.function, info.lineno)
    return fallback or Sync(reason, "?", "?", 0)


@contextmanager
def detect_syncs() -> Iterator[SyncLog]:
    """Record, inside the block, every torch call that would synchronise host and device."""
    log = SyncLog()
    with _Detector(log):
        yield log
