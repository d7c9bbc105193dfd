"""Input checks of :class:`~gmmseg.em.GaussianMixture`: data, sample weights, initial values.

Each check raises a ``ValueError`` naming the argument, what was expected and what was received.

This module is private: its names may change without notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from gmmseg.distributions import CovarianceType, all_finite

__all__ = [
    "Inits",
    "as_array",
    "check_group_ids",
    "check_inits",
    "check_sample_weight",
    "check_x",
    "float_dtype",
    "is_int",
    "is_real",
    "to_float",
]


def is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    """Whether ``value`` is a Python or numpy integer (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: object) -> bool:
    """Whether ``value`` is a Python or numpy real number (not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def as_array(name: str, value: object, device: torch.device | None = None) -> Tensor:
    """Any array-like -> tensor (no dtype change beyond numpy's), on ``device`` if given.

    Object arrays of numbers are converted to float64, as scikit-learn does; scipy sparse
    matrices are refused (dense data is required).
    """
    if isinstance(value, Tensor):
        t = value
    else:
        if scipy.sparse.issparse(value):
            raise TypeError(
                f"Sparse data was passed for {name}, but dense data is required. Use "
                "'.toarray()' to convert to a dense numpy array."
            )
        try:
            arr = np.asarray(value)
        except Exception as err:
            raise ValueError(f"{name} must be an array or tensor, got {type(value)!r}") from err
        if arr.dtype == object:
            try:
                arr = arr.astype(np.float64)
            except TypeError as err:  # e.g. a dict in the array: TypeError, as numpy's
                raise TypeError(f"{name} must hold numbers: {err}") from err
            except ValueError as err:
                raise ValueError(f"{name} must hold numbers: {err}") from err
        if not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
            raise ValueError(f"{name} must hold numbers, got an array of dtype {arr.dtype}")
        # A copy for read-only input (memory maps): torch cannot wrap it without a warning.
        arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.is_complex():
        raise ValueError(
            f"Complex data not supported: {name} must be real-valued, got dtype {t.dtype}"
        )
    return t if device is None else t.to(device)


def float_dtype(t: Tensor, *, numpy_input: bool) -> torch.dtype:
    """The floating dtype a computation on ``t`` runs in when none is requested.

    float32 and float64 are kept; other dtypes become float64, as scikit-learn does, except
    half-precision tensors, which become float32 (the tensor path's choice).
    """
    if t.dtype in (torch.float32, torch.float64):
        return t.dtype
    if t.is_floating_point() and not numpy_input:
        return torch.float32
    return torch.float64


def to_float(name: str, value: object, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``value`` as a finite tensor of ``dtype`` on ``device``."""
    t = as_array(name, value).to(dtype=dtype, device=device)
    if not all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"Input {name} contains NaN or infinity ({bad} non-finite value(s))")
    return t


def check_x(X: object, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(N, D) finite samples with N, D >= 1 (an already converted tensor is not copied)."""
    x = as_array("X", X)
    if x.ndim != 2:
        hint = (
            " Reshape your data either using array.reshape(-1, 1) if your data has a single "
            "feature or array.reshape(1, -1) if it contains a single sample."
            if x.ndim == 1
            else ""
        )
        raise ValueError(
            f"Expected 2D array, got {x.ndim}D array instead: X must have shape (N, D), got "
            f"shape {tuple(x.shape)}.{hint}"
        )
    for axis, what in ((0, "sample(s)"), (1, "feature(s)")):
        if x.shape[axis] < 1:
            raise ValueError(
                f"Found array with 0 {what} (shape={tuple(x.shape)}) while a minimum of 1 is "
                "required."
            )
    return to_float("X", x, dtype, device)


def check_sample_weight(sample_weight: object, x: Tensor) -> Tensor:
    """(N,) non-negative finite weights (ones when ``None``)."""
    n = x.shape[0]
    if sample_weight is None:
        return torch.ones(n, dtype=x.dtype, device=x.device)
    w = to_float("sample_weight", sample_weight, x.dtype, x.device)
    if tuple(w.shape) != (n,):
        raise ValueError(f"sample_weight must have shape (N,) = ({n},), got {tuple(w.shape)}")
    if bool((w < 0).any()):
        raise ValueError(f"sample_weight must be non-negative, got minimum {float(w.min()):.5g}")
    return w


def check_group_ids(group_ids: object, num_groups: object, n: int, device: torch.device) -> Tensor:
    """(N,) int64 group of each sample, in [0, num_groups)."""
    if not is_int(num_groups) or int(num_groups) < 1:
        raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
    g = int(num_groups)
    ids = as_array("group_ids", group_ids, device)
    if ids.is_floating_point() or ids.dtype == torch.bool or tuple(ids.shape) != (n,):
        raise ValueError(
            f"group_ids must be an integer array of shape (N,) = ({n},), got dtype "
            f"{ids.dtype} and shape {tuple(ids.shape)}"
        )
    ids = ids.to(torch.int64)
    if bool(((ids < 0) | (ids >= g)).any()):
        raise ValueError(
            f"group_ids must lie in [0, num_groups) = [0, {g}), got values in "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    return ids


@dataclass(frozen=True)
class Inits:
    """User initial values, with a leading G (1 for a single mixture); ``None`` where not given.

    Attributes:
        weights: (G, K) weights.
        means: (G, K, D) means.
        precisions: (G, …) precisions, shaped as the covariances.
    """

    weights: Tensor | None
    means: Tensor | None
    precisions: Tensor | None

    def group(self, g: int) -> Inits:
        """The initial values of group ``g`` (a leading 1 kept)."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[g : g + 1]

        return Inits(pick(self.weights), pick(self.means), pick(self.precisions))


def _check_shape(
    name: str, arg: str, t: Tensor, expected: tuple[int, ...], groups: int | None
) -> Tensor:
    """Check ``t`` has ``expected`` shape, or (G, *expected) when ``groups`` = G; batch it.

    ``name`` is scikit-learn's name of the parameter (``'weights'``, ``'full precision'``),
    ``arg`` the argument's (``weights_init``).
    """
    shape = tuple(t.shape)
    if shape == expected:
        return t.unsqueeze(0).expand(groups or 1, *expected)
    if groups is not None and shape == (groups, *expected):
        return t
    want = f"{expected}" + (f" or {(groups, *expected)}" if groups is not None else "")
    raise ValueError(
        f"The parameter '{name}' should have the shape of {want}, but got {shape} ({arg})"
    )


def _check_weights_init(weights: Tensor, atol: float) -> None:
    low, high = float(weights.min()), float(weights.max())
    if low < 0 or high > 1:
        # scikit-learn's wording, which swaps the two values; the true range follows.
        raise ValueError(
            "The parameter 'weights' should be in the range [0, 1], but got max value "
            f"{low:.5f}, min value {high:.5f} (weights_init lies in [{low:.5g}, {high:.5g}])"
        )
    sums = weights.sum(dim=-1)
    if bool(((sums - 1.0).abs() > atol).any()):
        worst = float(sums[(sums - 1.0).abs().argmax()])
        raise ValueError(
            f"The parameter 'weights' should be normalized, but got sum(weights) = {worst:.5f} "
            f"(weights_init must sum to 1 to within {atol:g}, got {worst:.10g}; normalise it "
            "with w / w.sum())"
        )


def _check_precisions_init(precisions: Tensor, covariance_type: CovarianceType) -> None:
    if covariance_type in ("diag", "spherical"):
        if bool((precisions <= 0).any()):
            raise ValueError(
                f"'{covariance_type} precision' should be positive (precisions_init has "
                f"minimum {float(precisions.min()):.5g})"
            )
        return
    mats = precisions.reshape(-1, *precisions.shape[-2:])
    if not torch.allclose(mats, mats.transpose(-1, -2)):
        raise ValueError(
            f"'{covariance_type} precision' should be symmetric, positive-definite "
            "(precisions_init is not symmetric)"
        )
    if bool((torch.linalg.eigvalsh(mats) <= 0).any()):
        raise ValueError(
            f"'{covariance_type} precision' should be symmetric, positive-definite "
            "(precisions_init has an eigenvalue <= 0)"
        )


def check_inits(
    weights_init: object,
    means_init: object,
    precisions_init: object,
    *,
    n_components: int,
    covariance_type: CovarianceType,
    groups: int | None,
    like: Tensor,
) -> Inits:
    """Validate the ``*_init`` values against K, D (and G) and batch them to (G, …).

    Args:
        weights_init: (K,) or ``None``; also (G, K) when ``groups`` is given.
        means_init: (K, D) or ``None``; also (G, K, D).
        precisions_init: shaped as the covariances, or ``None``; also with a leading G.
        n_components: K.
        covariance_type: one of the four types.
        groups: G for grouped fits, ``None`` for one mixture.
        like: the (N, D) data (dtype, device, D).

    Returns:
        The batched values (leading dimension G, or 1 for one mixture).
    """
    k, d = n_components, like.shape[1]
    weights = means = precisions = None
    if weights_init is not None:
        wi = as_array("weights_init", weights_init)
        # scikit-learn's tolerance: 1e-6 for float32 weights (w / w.sum() is that accurate)
        single = torch.float32 in (wi.dtype, like.dtype)
        wi = to_float("weights_init", wi, like.dtype, like.device)
        weights = _check_shape("weights", "weights_init", wi, (k,), groups)
        _check_weights_init(weights, 1e-6 if single else 1e-8)
    if means_init is not None:
        mi = to_float("means_init", means_init, like.dtype, like.device)
        means = _check_shape("means", "means_init", mi, (k, d), groups)
    if precisions_init is not None:
        shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}
        p = to_float("precisions_init", precisions_init, like.dtype, like.device)
        name = f"{covariance_type} precision"
        precisions = _check_shape(name, "precisions_init", p, shape[covariance_type], groups)
        _check_precisions_init(precisions, covariance_type)
    return Inits(weights, means, precisions)
