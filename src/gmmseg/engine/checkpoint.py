"""Atomic, hashed checkpoints; the trainer's manifest of the files it wrote; RNG state capture.

Every checkpoint written by :func:`save_checkpoint` carries a SHA-256 of its content (every
tensor's bytes, dtype and shape, and every plain value, in key order) that
:func:`load_checkpoint` recomputes, so a flipped bit or a damaged tensor is refused instead of
loaded. Hashing reads every byte once more on save and on load (about as long as reading the
file from a fast disk); ``verify=False`` skips the check on load.

:class:`CheckpointManifest` is the list of checkpoints a :class:`~gmmseg.engine.Trainer` wrote into
its work folder (``checkpoints.json``). Pruning deletes only files listed there, and
:func:`latest_checkpoint` prefers it, so files a user put in the folder (``iter_best.pt``, a
copy kept by hand) are never touched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointManifest",
    "checkpoint_path",
    "checkpoints_in",
    "content_hash",
    "get_rng_state",
    "is_gmmseg_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "remove_stale_temporaries",
    "save_checkpoint",
    "set_rng_state",
    "write_text_atomic",
]

_PATTERN = re.compile(r"^iter_(\d+)\.pt$")
# The temporary names save_checkpoint and the manifest use: ".NAME.PID.tmp".
_TEMPORARY = re.compile(
    r"^\.(iter_\d+\.pt|checkpoints\.json|metrics\.json|recipe\.json)\.(\d+)\.tmp$"
)
_HASH_KEY = "sha256"
MANIFEST_NAME = "checkpoints.json"


def checkpoint_path(work_dir: Path | str, iteration: int) -> Path:
    """``work_dir/iter_{iteration:08d}.pt``."""
    return Path(work_dir) / f"iter_{iteration:08d}.pt"


# --------------------------------------------------------------------------- content hash


def _feed(h: Any, obj: Any) -> None:
    """Feed a canonical, type-tagged encoding of ``obj`` to the hash ``h``.

    Lists and tuples encode alike (a round trip through ``torch.load`` may turn one into the
    other); dict entries are taken in sorted order of their tagged keys.
    """
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # no copy
    elif isinstance(obj, Mapping):
        items = sorted(obj.items(), key=lambda kv: f"{type(kv[0]).__name__}:{kv[0]!r}")
        h.update(f"D{len(items)}|".encode())
        for k, v in items:
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}|".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, bool | int | float | str | bytes | torch.dtype):
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())
    else:
        raise TypeError(
            f"cannot hash a {type(obj).__name__} in a checkpoint: store tensors, numbers, "
            "strings and lists/dicts of them"
        )


def content_hash(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's content, its own ``"sha256"`` entry excluded.

    Args:
        state: tensors, numbers, strings, ``None`` and (nested) lists, tuples and dicts of them.

    Returns:
        64 hexadecimal characters.

    Raises:
        TypeError: a value of another type.
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != _HASH_KEY})
    return h.hexdigest()


# --------------------------------------------------------------------------- files


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_atomic(path: Path, write: Any, what: str) -> None:
    """``write(tmp)`` then rename over ``path``; never leaves a partial ``path`` or ``tmp``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        # torch.save reports a full disk as a RuntimeError ("unexpected pos ...").
        full = "unexpected pos" in str(e) or getattr(e, "errno", None) == errno.ENOSPC
        hint = " (the disk is full?)" if full else ""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OSError(
            f"could not write {what} {str(path)!r}{hint}: {first}; the previous file, if any, "
            "is unchanged"
        ) from e
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` to a temporary file, then rename it over ``path``.

    For a work folder's ``metrics.json`` and ``recipe.json``: a killed write leaves the
    previous file whole.

    Args:
        path: destination file.
        text: its whole content.

    Returns:
        ``path``.

    Raises:
        OSError: the file cannot be written, naming it.
    """
    path = Path(path)
    _write_atomic(path, lambda tmp: tmp.write_text(text), "file")
    return path


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """Write ``state`` and its content hash to a temporary file, then rename it over ``path``.

    A crash while writing leaves at most a stray ``.iter_*.pt.PID.tmp`` file (removed by
    :func:`remove_stale_temporaries`), never a truncated checkpoint.

    Args:
        path: destination file.
        state: tensors, numbers, strings and containers of them (loadable with
            ``weights_only=True``). A ``"sha256"`` entry is added to the file, not to ``state``.

    Returns:
        ``path``.

    Raises:
        OSError: the file cannot be written (full disk, read-only folder), naming it.
    """
    path = Path(path)
    stored = {**state, _HASH_KEY: content_hash(state)}
    _write_atomic(path, lambda tmp: torch.save(stored, tmp), "checkpoint")
    return path


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Delete the temporary files of checkpoint writes that were killed before they finished.

    Only names of the form ``.iter_<digits>.pt.<pid>.tmp``, ``.checkpoints.json.<pid>.tmp``,
    ``.metrics.json.<pid>.tmp`` and ``.recipe.json.<pid>.tmp`` whose process is not running are
    removed.

    Returns:
        The removed paths.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMPORARY.match(p.name)
        if m is None or _process_alive(int(m.group(2))):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


_READ_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError)


def is_gmmseg_checkpoint(path: Path | str) -> bool:
    """Whether ``path`` is a file :func:`load_checkpoint` reads (a dict with ``"model"``).

    Reads only the file's structure (memory-mapped); any file that is not one, or that
    cannot be read, gives False (:func:`load_checkpoint` then says why).
    """
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return False
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except _READ_ERRORS:
        return False
    return isinstance(state, dict) and "model" in state


def load_checkpoint(
    path: Path | str,
    map_location: str | torch.device = "cpu",
    *,
    verify: bool = True,
    mmap: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Args:
        path: the file.
        map_location: where tensors go.
        verify: recompute the content hash and compare it with the stored one (files written
            before gmmseg stored hashes have none and are loaded unchecked).
        mmap: map the file instead of reading it into memory (``torch.load(mmap=True)``):
            tensors that are never used (a memory bank at inference) take no RAM beyond the
            page cache while the hash is checked.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: the file is truncated or corrupt, its content hash does not match, or it
            is not a gmmseg checkpoint (no ``"model"`` entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise ValueError(
                f"{str(path)!r} is not a gmmseg checkpoint: it holds Python objects other than "
                f"tensors and plain values ({str(e).splitlines()[0]})"
            ) from e
        raise ValueError(_unreadable(path, e)) from e
    except _READ_ERRORS as e:
        raise ValueError(_unreadable(path, e)) from e
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{str(path)!r} is not a gmmseg checkpoint: expected a dict with 'model'")
    stored = state.get(_HASH_KEY)
    if verify and stored is not None and content_hash(state) != stored:
        raise ValueError(
            f"checkpoint {str(path)!r} is corrupt: its content does not match the hash stored "
            "when it was written (a damaged copy or disk?); use another checkpoint"
        )
    return state


def _unreadable(path: Path, e: BaseException) -> str:
    first = (str(e).splitlines() or [type(e).__name__])[0]
    return f"checkpoint {str(path)!r} cannot be read (truncated or corrupt?): {first}"


def load_model_state(model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Load a checkpoint's ``"model"`` state dict (strict).

    Checkpoints of earlier gmmseg versions also stored buffers kept out of ``state_dict``
    under ``"buffers"``; those that the model now keeps in its ``state_dict`` are read from
    there, the others are ignored (they are recomputed or, like a non-persistent memory bank,
    deliberately not restored).

    Raises:
        RuntimeError: the state dict does not fit ``model`` (``load_state_dict``'s error).
    """
    weights = dict(state["model"])
    expected = model.state_dict()
    for k, v in state.get("buffers", {}).items():
        if k in expected and k not in weights:
            weights[k] = v
    model.load_state_dict(weights)


# --------------------------------------------------------------------------- manifest


class CheckpointManifest:
    """The checkpoints a trainer wrote into ``folder``, kept in ``folder/checkpoints.json``.

    Each entry records the file name, the iteration, and the evaluation result of that
    iteration once it has run (the checkpoint is written before the evaluation, so that a
    failing evaluation cannot lose the training). The file is rewritten atomically.

    Args:
        folder: the work folder.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        self.entries: list[dict[str, Any]] = []
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                entries = data["checkpoints"]
                if not isinstance(entries, list):
                    raise TypeError("'checkpoints' is not a list")
                self.entries = [dict(e) for e in entries if _PATTERN.match(str(e["file"]))]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"checkpoint manifest {str(self.path)!r} is damaged ({e}); move it away to "
                    "fall back to the iter_*.pt files of the folder"
                ) from e

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.entries)

    def _write(self) -> None:
        # Python's JSON keeps NaN and infinities (as NaN / Infinity), so evaluation results
        # read back equal to what was recorded.
        text = json.dumps({"format": 1, "checkpoints": _plain(self.entries)}, indent=1) + "\n"
        _write_atomic(self.path, lambda tmp: tmp.write_text(text), "checkpoint manifest")

    def add(self, path: Path, iteration: int) -> None:
        """Record a checkpoint this process just wrote (replacing an entry of the same file)."""
        self.entries = [e for e in self.entries if e["file"] != path.name]
        self.entries.append({"file": path.name, "iteration": iteration})
        self._write()

    def record_eval(self, iteration: int, result: dict[str, Any]) -> None:
        """Attach an evaluation result to the entry of ``iteration`` (if there is one)."""
        for e in self.entries:
            if e["iteration"] == iteration:
                e["eval"] = result
                self._write()

    def eval_of(self, iteration: int) -> dict[str, Any] | None:
        """The recorded evaluation of ``iteration``, if any."""
        for e in self.entries:
            if e["iteration"] == iteration and "eval" in e:
                result: dict[str, Any] = e["eval"]
                return result
        return None

    def prune(self, keep: int) -> list[Path]:
        """Delete all but the ``keep`` most recent listed checkpoints; only listed files.

        Returns:
            The deleted paths.
        """
        if keep <= 0 or len(self.entries) <= keep:
            return []
        ordered = sorted(self.entries, key=lambda e: int(e["iteration"]))
        old, self.entries = ordered[:-keep], ordered[-keep:]
        self._write()
        removed = []
        for e in old:
            p = self.folder / str(e["file"])
            p.unlink(missing_ok=True)
            removed.append(p)
        return removed

    def latest(self) -> Path | None:
        """The listed checkpoint with the largest iteration that is still on disk."""
        present = [e for e in self.entries if (self.folder / str(e["file"])).is_file()]
        if not present:
            return None
        return self.folder / str(max(present, key=lambda e: int(e["iteration"]))["file"])


def _plain(x: Any) -> Any:
    """Tensors to (nested) lists, tuples to lists, mapping keys to strings; floats kept."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x


def checkpoints_in(work_dir: Path | str) -> list[tuple[int, str]]:
    """``(iteration, file name)`` of the trainer's checkpoints in ``work_dir`` that exist.

    Those listed in its manifest; in a folder without one (an earlier version's), the
    ``iter_<digits>.pt`` files.
    """
    folder = Path(work_dir)
    if not folder.is_dir():
        return []
    if (folder / MANIFEST_NAME).is_file():
        return [
            (int(e["iteration"]), str(e["file"]))
            for e in CheckpointManifest(folder)
            if (folder / str(e["file"])).is_file()
        ]
    return [(int(m.group(1)), p.name) for p in folder.iterdir() if (m := _PATTERN.match(p.name))]


def latest_checkpoint(work_dir: Path | str) -> Path | None:
    """The most recent checkpoint of ``work_dir``, or None.

    Uses the trainer's manifest (``checkpoints.json``) when the folder has one; otherwise (work
    folders of earlier versions) the ``iter_<digits>.pt`` file with the largest iteration.
    """
    folder = Path(work_dir)
    if not folder.is_dir():
        return None
    if (folder / MANIFEST_NAME).is_file():
        return CheckpointManifest(folder).latest()
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name))]
    return max(found)[1] if found else None


def get_rng_state() -> dict[str, Any]:
    """States of Python's, numpy's legacy, torch's CPU and (if present) CUDA generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    # Only a process that uses CUDA has CUDA generators worth saving; asking for them would
    # start CUDA in a CPU run on a machine with a GPU.
    if _cuda_in_use():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _cuda_in_use() -> bool:
    """Whether this process has started CUDA (torch types ``is_initialized`` loosely)."""
    return torch.cuda.is_available() and bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`get_rng_state`.

    CUDA generators are restored only in a process that uses CUDA, one per visible device (a
    checkpoint written on a machine with more GPUs restores the first ones).
    """
    random.setstate(_to_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and _cuda_in_use():
        cuda_states = list(state["cuda"])
        for index in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[index], index)


def _to_tuple(x: Any) -> Any:
    """Lists back to tuples (``random.setstate`` wants tuples)."""
    if isinstance(x, list | tuple):
        return tuple(_to_tuple(v) for v in x)
    return x
