"""Reading checkpoint files written by other tools, safely and without reading what is not needed.

:func:`read_checkpoint` opens a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``), a
``.safetensors`` file or a Hugging Face ``save_pretrained`` folder and returns its tensors as a flat
``name -> tensor`` dict, plus the file's metadata.

* **Safety.** ``torch.load`` always runs with ``weights_only=True``. The metadata of mmcv and
  mmengine files can hold numpy arrays, numpy scalars and dtypes (class palettes, seeds): those
  types, and nothing else, are allow-listed. Any other object (for example mmengine's
  ``HistoryBuffer``) stops the load with :class:`UntrustedCheckpointError`, naming the type;
  ``trust=True`` is the explicit opt-in to full unpickling, which can run code from the file.
* **Memory.** Files in PyTorch's zip format are memory-mapped (``torch.load(..., mmap=True)``):
  a tensor's bytes are read from disk only when the tensor is used. The 6.5 GiB memory bank of the
  official GMMSeg release is therefore never read unless a caller asks for it. Files in the legacy
  (pre-1.6, non-zip) format are read whole.
* **Damage.** A truncated or damaged file raises :class:`ValueError` with one line naming the
  file and what the reader found. Only read and unpickling failures are reported so; any other
  exception surfaces as itself.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["CheckpointFile", "UntrustedCheckpointError", "read_checkpoint"]

_ZIP_MAGIC = b"PK\x03\x04"
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class UntrustedCheckpointError(ValueError):
    """The file holds Python objects that ``weights_only`` loading refuses.

    Attributes:
        path: the file.
        types: the refused globals, as ``module.name`` strings.
    """

    def __init__(self, path: Path, types: list[str]) -> None:
        self.path = path
        self.types = types
        listed = ", ".join(types) if types else "(unknown)"
        super().__init__(
            f"checkpoint {str(path)!r} holds Python objects that safe loading (weights_only) "
            f"refuses: {listed}. If you trust the file's origin, load it with trust=True "
            f"(command line: --trust-checkpoint), which unpickles it in full and can run code "
            f"stored in it"
        )


@dataclass
class CheckpointFile:
    """The tensors and metadata of a checkpoint file.

    Attributes:
        path: the file (or folder) read.
        tensors: every tensor of the model's state dict under its name in the file, with the
            usual wrappers removed (``state_dict``, ``model``, ``module``, DDP's ``module.``).
            Memory-mapped when ``mapped``.
        meta: the file's metadata: mmcv/mmengine's ``meta`` dict, or a Hugging Face folder's
            ``config.json``; empty when there is none.
        top_level: the keys of the saved object (e.g. ``["meta", "state_dict", "optimizer"]``);
            empty for safetensors and folders.
        mapped: whether ``tensors`` are memory-mapped (read from disk on first use).
    """

    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    top_level: list[str] = field(default_factory=list)
    mapped: bool = False


def _numpy_safe_globals() -> list[Any]:
    """Numpy arrays, scalars and dtypes, under the names numpy 1.x and 2.x pickle them with.

    The reconstruct functions are taken from numpy's public ``__reduce__`` results, not from its
    private modules; numpy 1.x pickles them as ``numpy.core.multiarray.*``, numpy 2.x as
    ``numpy._core.multiarray.*``, and each is allowed under both names (``(callable, name)``
    entries). The dtype classes (``numpy.dtypes.Float64DType``, ...) are what an unpickled
    ``numpy.dtype`` is, so restoring its state needs them.
    """
    reconstruct = np.zeros(1).__reduce__()[0]  # builds an ndarray
    scalar = np.float64(0).__reduce__()[0]  # builds a numpy scalar
    entries: list[Any] = [np.ndarray, np.dtype]
    entries += sorted({type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGSU"}, key=str)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries += [(reconstruct, f"{module}._reconstruct"), (scalar, f"{module}.scalar")]
    return entries


def _allowed_names(entries: list[Any]) -> set[str]:
    names: set[str] = set()
    for entry in entries:
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


def _damaged(path: Path, why: str) -> ValueError:
    # PyTorch's weights-only message spans lines around its one informative part
    why = why.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
    why = " ".join(why.split())
    size = path.stat().st_size
    return ValueError(
        f"checkpoint {str(path)!r} ({size} bytes) is truncated or damaged ({why}); "
        f"download or copy it again"
    )


# What torch.load raises for a file it cannot read: a damaged zip (BadZipFile; RuntimeError
# from PyTorch's zip reader "PytorchStreamReader failed ...", or "unexpected EOF" / "Invalid
# magic number" for the legacy format), a pickle stream that ends early or is malformed
# (EOFError, UnpicklingError, struct.error from its binary headers). Nothing else is caught:
# any other exception is a bug, not a damaged file, and is left to surface as itself.
_READ_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    RuntimeError,
    EOFError,
    pickle.UnpicklingError,
    struct.error,
)
# The legacy (non-zip) format's pickle is read straight from the file, and PyTorch's
# weights-only unpickler reads each pickle's protocol byte as ``read(1)[0]``: a file cut at the
# start of one of its pickles raises IndexError there. Zip files never reach the unpickler cut.
_LEGACY_READ_ERRORS: tuple[type[Exception], ...] = (*_READ_ERRORS, IndexError)
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _refused_globals(path: Path, is_zip: bool, error: pickle.UnpicklingError) -> list[str]:
    """The globals outside the allow-list that a weights-only load of ``path`` stopped at."""
    if is_zip:
        allowed = _allowed_names(_numpy_safe_globals())
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except _READ_ERRORS:  # its pickle is damaged, not untrusted
            return []
        return [g for g in found if g not in allowed]
    # A legacy file cannot be scanned by PyTorch; its message names the first refused global,
    # which is the file's only when the pickles are whole (a cut file stops mid-name).
    if not _legacy_pickles_whole(path):
        return []
    return _REFUSED_GLOBAL.findall(str(error))[:1]


def _legacy_pickles_whole(path: Path) -> bool:
    """Whether the five pickles that open a legacy-format file each end with STOP.

    (Magic number, protocol, system info, the object, its storage keys.) Walked with
    :func:`pickletools.genops`, which decodes opcodes without importing or calling anything.
    """
    with path.open("rb") as f:
        for _ in range(5):
            try:
                for _op in pickletools.genops(f):
                    pass
            except ValueError:  # the stream ends (or breaks) before STOP
                return False
    return True


def _torch_load(path: Path, trust: bool) -> tuple[Any, bool]:
    """``torch.load`` with the allow-list; returns the object and whether it is memory-mapped."""
    with path.open("rb") as f:
        head = f.read(4)
    is_zip = head == _ZIP_MAGIC
    if is_zip and not zipfile.is_zipfile(path):
        raise _damaged(path, "its zip directory is missing")
    allow = _numpy_safe_globals()
    errors = _READ_ERRORS if is_zip else _LEGACY_READ_ERRORS
    try:
        if trust:
            obj = torch.load(path, map_location="cpu", weights_only=False, mmap=is_zip)
        else:
            with torch.serialization.safe_globals(allow):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        if not trust and "Weights only load failed" in str(e):
            refused = _refused_globals(path, is_zip, e)
            if refused:
                raise UntrustedCheckpointError(path, refused) from None
        raise _damaged(path, f"{type(e).__name__}: {e}") from None
    except ModuleNotFoundError as e:
        if not trust:  # the weights-only unpickler imports nothing
            raise
        raise ValueError(
            f"unpickling checkpoint {str(path)!r} needs the Python module {e.name!r}, which is "
            f"not installed: install it, or re-save the file's state_dict alone"
        ) from None
    except errors as e:
        raise _damaged(path, f"{type(e).__name__}: {e}") from None
    return obj, is_zip


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"reading {str(path)!r} needs the 'safetensors' package: pip install safetensors"
        ) from e
    try:
        return dict(load_file(str(path), device="cpu"))
    except SafetensorError as e:
        raise _damaged(path, f"safetensors: {e}") from None


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    while isinstance(obj, Mapping):
        inner = next(
            (obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)),
            None,
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"checkpoint {str(path)!r} holds no state dict (a mapping of names to tensors)"
        )
    out = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _read_folder(path: Path, trust: bool) -> CheckpointFile:
    meta: dict[str, Any] = {}
    config = path / "config.json"
    if config.is_file():
        meta = json.loads(config.read_text())
    for name in _HF_INDEXES:
        index = path / name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            tensors: dict[str, Tensor] = {}
            mapped = bool(shards)
            for shard in shards:
                part = _read_file(path / shard, trust)
                tensors.update(part.tensors)
                mapped = mapped and part.mapped
            return CheckpointFile(path, tensors, meta, mapped=mapped)
    for name in _HF_WEIGHTS:
        if (path / name).is_file():
            inner = _read_file(path / name, trust)
            return CheckpointFile(path, inner.tensors, meta, inner.top_level, inner.mapped)
    raise FileNotFoundError(
        f"folder {str(path)!r} holds no model weights: expected one of {list(_HF_WEIGHTS)} "
        f"(a Hugging Face save_pretrained folder)"
    )


def _read_file(path: Path, trust: bool) -> CheckpointFile:
    if path.suffix == ".safetensors":
        return CheckpointFile(path, _read_safetensors(path))
    obj, mapped = _torch_load(path, trust)
    top = [str(k) for k in obj] if isinstance(obj, Mapping) else []
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    tensors = _unwrap(obj, path)
    plain_meta = dict(meta) if isinstance(meta, Mapping) else {}
    return CheckpointFile(path, tensors, plain_meta, top, mapped)


def read_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> CheckpointFile:
    """Read a checkpoint file or Hugging Face folder (see the module docstring).

    Args:
        path: a ``torch.save`` file, a ``.safetensors`` file, or a folder written by
            ``save_pretrained`` (``model.safetensors`` or ``pytorch_model.bin``, possibly sharded).
        trust: unpickle the file in full (``weights_only=False``). Only for files whose origin
            you trust: unpickling can run code stored in the file.

    Returns:
        The :class:`CheckpointFile`.

    Raises:
        FileNotFoundError: ``path`` does not exist, or a folder holds no weights.
        UntrustedCheckpointError: the file holds objects outside the allow-list (``trust=False``).
        ValueError: the file is truncated or damaged, holds no state dict, or needs an
            uninstalled module to unpickle (``trust=True``).
    """
    p = Path(path)
    if p.is_dir():
        return _read_folder(p, trust)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    return _read_file(p, trust)
