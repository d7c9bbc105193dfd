"""Input checks shared by the metrics: conversion, shapes, label values, finiteness.

Every message names the argument and the frame, the expected and the received values (up to 10
offending values with their pixel counts).
"""

from __future__ import annotations

import warnings
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

#: Inputs accepted by the metrics: a tensor on any device or a NumPy array.
ArrayLike: TypeAlias = "Tensor | npt.NDArray[Any]"

_MAX_LISTED = 10


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined (0/0) for some classes or for the whole split and is NaN.

    Emitted once per ``compute()`` call, never per class or per frame.
    """


def warn_undefined(message: str) -> None:
    """Emit one :class:`UndefinedMetricWarning` attributed to the caller of ``compute()``."""
    warnings.warn(message, UndefinedMetricWarning, stacklevel=3)


def to_tensor(name: str, x: ArrayLike) -> Tensor:
    """Return ``x`` as a tensor (NumPy arrays are wrapped without copying when possible)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def check_frames(
    name_a: str, a: Tensor, name_b: str, b: Tensor, *, what: str = "(H, W) or (B, H, W)"
) -> tuple[Tensor, Tensor]:
    """Check two frame stacks have identical shape and return them as (B, H, W)."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_a} and {name_b} must have identical shapes {what} (inputs are never resized), "
            f"got {name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)}"
        )
    if a.ndim not in (2, 3):
        raise ValueError(
            f"{name_a} and {name_b} must have shape {what}, got {a.ndim}-D shape {tuple(a.shape)}"
        )
    if a.ndim == 2:
        return a.unsqueeze(0), b.unsqueeze(0)
    return a, b


def check_integer(name: str, x: Tensor) -> None:
    """Raise unless ``x`` has an integer (not bool, not floating) dtype."""
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(
            f"{name} must be an integer tensor (class / label ids), got dtype {x.dtype}; "
            "take the argmax of logits and pass integer ids"
        )


def check_floating(name: str, x: Tensor) -> None:
    """Raise unless ``x`` has a floating dtype."""
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def describe_values(values: Tensor) -> str:
    """``"19 (1024 px), 33 (7 px)"`` for the first 10 distinct values of ``values``."""
    uniq, counts = torch.unique(values.detach().cpu(), return_counts=True)
    parts = [f"{v} ({c} px)" for v, c in zip(uniq.tolist(), counts.tolist(), strict=True)]
    more = len(parts) - _MAX_LISTED
    text = ", ".join(parts[:_MAX_LISTED])
    return text + (f" and {more} more value(s)" if more > 0 else "")


def first_bad_frame(bad: Tensor) -> int:
    """Index of the first frame (dim 0) of a (B, H, W) bool mask that has a True pixel."""
    per_frame = bad.flatten(1).any(dim=1)
    return int(torch.nonzero(per_frame)[0, 0])


def frame_label(frame: int, batch_index: int) -> str:
    """Human-readable frame id used in error messages."""
    return f"frame {frame} (batch index {batch_index})"


def check_binary_labels(labels: Tensor, ignore_index: int, first_frame: int) -> None:
    """Raise unless every label is 0, 1 or ``ignore_index``. ``labels`` is (B, H, W) integer."""
    bad = (labels != 0) & (labels != 1) & (labels != ignore_index)
    if bool(bad.any()):
        b = first_bad_frame(bad)
        vals = labels[b][bad[b]]
        hint = (
            "; Road Anomaly stores anomalies as 2: map 2 -> 1 in the loader"
            if bool((vals == 2).any())
            else "; use 0 = in-distribution, 1 = anomaly"
        )
        raise ValueError(
            f"labels of {frame_label(first_frame + b, b)} must be in {{0, 1, {ignore_index}}} "
            f"(ignore_index={ignore_index}), got {describe_values(vals)}{hint}"
        )


def check_finite_on(scores: Tensor, valid: Tensor, first_frame: int) -> None:
    """Raise if a score is NaN/±inf on a valid pixel. Both are (B, H, W)."""
    bad = valid & ~torch.isfinite(scores)
    if bool(bad.any()):
        b = first_bad_frame(bad)
        vals = scores[b][bad[b]]
        raise ValueError(
            f"scores of {frame_label(first_frame + b, b)} must be finite on valid (non-void) "
            f"pixels, got {describe_values(vals)}; check the score computation (log of 0?)"
        )


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an int ≥ ``minimum`` (bools rejected), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def host_array(x: Tensor) -> npt.NDArray[Any]:
    """A NumPy view (CPU) or copy (other devices) of ``x``; bfloat16 becomes float32 (exact)."""
    if x.dtype == torch.bfloat16:
        x = x.float()
    arr: npt.NDArray[Any] = x.detach().cpu().numpy()
    return arr


def check_binary_labels_np(labels: npt.NDArray[Any], ignore_index: int, first_frame: int) -> None:
    """NumPy twin of :func:`check_binary_labels` for (B, H, W) integer arrays (one fast pass)."""
    flat = labels.reshape(-1)
    if flat.dtype == np.uint8 and 0 <= ignore_index < 256:
        counts = np.bincount(flat, minlength=256)
        counts[[0, 1, ignore_index]] = 0
        if not counts.any():
            return
    elif not ((flat != 0) & (flat != 1) & (flat != ignore_index)).any():
        return
    check_binary_labels(torch.from_numpy(np.ascontiguousarray(labels)), ignore_index, first_frame)


def check_finite_np(
    scores: npt.NDArray[Any], labels: npt.NDArray[Any], ignore_index: int, first_frame: int
) -> None:
    """NumPy twin of :func:`check_finite_on`; only scans further when a score is not finite."""
    if np.isfinite(scores).all():
        return
    s = torch.from_numpy(np.ascontiguousarray(scores))
    check_finite_on(s, torch.from_numpy(np.ascontiguousarray(labels)) != ignore_index, first_frame)
