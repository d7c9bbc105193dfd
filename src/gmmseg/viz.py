"""Colour maps, segmentation overlays, anomaly heat maps, figure grids and ROC/PR curves.

Images are composed with numpy and Pillow (core dependencies); only :func:`plot_curves` needs
matplotlib (the ``viz`` or ``demo`` extra), imported when called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from torch import Tensor

__all__ = [
    "colorize",
    "curve_points",
    "heatmap",
    "image_grid",
    "overlay",
    "plot_curves",
    "to_uint8_image",
]

U8 = NDArray[np.uint8]

# A perceptually ordered dark-blue → yellow ramp (9 stops, viridis-like), interpolated.
_RAMP = np.array(
    [
        [68, 1, 84],
        [72, 40, 120],
        [62, 74, 137],
        [49, 104, 142],
        [38, 130, 142],
        [31, 158, 137],
        [53, 183, 121],
        [109, 205, 89],
        [253, 231, 37],
    ],
    dtype=np.float64,
)


def _np(x: Tensor | NDArray[Any]) -> NDArray[Any]:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def to_uint8_image(
    image: Tensor | NDArray[Any],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> U8:
    """(3, H, W) or (H, W, 3) image → (H, W, 3) uint8 (un-normalised with ``mean``/``std``).

    Raises:
        ValueError: not a 3-channel image.
    """
    arr = _np(image)
    if arr.ndim != 3 or 3 not in (arr.shape[0], arr.shape[-1]):
        raise ValueError(f"image must be (3, H, W) or (H, W, 3), got shape {arr.shape}")
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    arr = arr.astype(np.float64)
    if mean is not None and std is not None:
        arr = arr * np.asarray(std) + np.asarray(mean)
    out: U8 = np.clip(arr, 0, 255).round().astype(np.uint8)
    return out


def colorize(
    label: Tensor | NDArray[Any],
    palette: Sequence[Sequence[int]],
    ignore_index: int = 255,
    ignore_color: Sequence[int] = (0, 0, 0),
) -> U8:
    """(H, W) class ids → (H, W, 3) uint8 colours; ``ignore_index`` gets ``ignore_color``.

    Raises:
        ValueError: ids outside ``[0, len(palette))`` other than ``ignore_index``.
    """
    lab = _np(label).astype(np.int64)
    if lab.ndim != 2:
        raise ValueError(f"label must be (H, W), got shape {lab.shape}")
    # palette rows, then the ignore colour in the last row (any ignore_index, even negative)
    table = np.zeros((len(palette) + 1, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    table[-1] = np.asarray(ignore_color, dtype=np.uint8)
    ignore = lab == ignore_index
    bad = ((lab < 0) | (lab >= len(palette))) & ~ignore
    if bad.any():
        raise ValueError(
            f"label has values {sorted(set(lab[bad].tolist()))[:10]} outside [0, {len(palette)}) "
            f"and != ignore_index {ignore_index}"
        )
    out: U8 = table[np.where(ignore, len(palette), lab)]
    return out


def heatmap(
    scores: Tensor | NDArray[Any], low: float | None = None, high: float | None = None
) -> U8:
    """(H, W) scores → (H, W, 3) uint8 heat map (dark = low, yellow = high).

    ``low``/``high`` default to the 1st and 99th percentiles of the finite scores.

    Raises:
        ValueError: not 2-D, no finite score, a non-finite ``low``/``high``, or a given
            ``low`` above a given ``high``.
    """
    s = _np(scores).astype(np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (H, W), got shape {s.shape}")
    for name, bound in (("low", low), ("high", high)):
        if bound is not None and not np.isfinite(bound):
            raise ValueError(f"{name} must be a finite number or None, got {bound}")
    if low is not None and high is not None and low > high:
        raise ValueError(f"low must not exceed high, got low={low} and high={high}")
    finite = s[np.isfinite(s)]
    if finite.size == 0:
        raise ValueError("scores has no finite value")
    lo = float(np.percentile(finite, 1)) if low is None else low
    hi = float(np.percentile(finite, 99)) if high is None else high
    with np.errstate(over="ignore"):  # huge scores over a tiny range: ±inf, then clipped
        t = np.clip((np.nan_to_num(s, nan=lo) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    pos = t * (len(_RAMP) - 1)
    i = np.minimum(pos.astype(np.int64), len(_RAMP) - 2)
    f = (pos - i)[..., None]
    ramp = _RAMP[i] * (1 - f) + _RAMP[i + 1] * f
    result: U8 = ramp.round().astype(np.uint8)
    return result


def overlay(image: U8, colours: U8, alpha: float = 0.5) -> U8:
    """Blend (H, W, 3) uint8 ``colours`` over ``image`` with opacity ``alpha``.

    Raises:
        ValueError: shapes differ or alpha outside [0, 1].
    """
    if image.shape != colours.shape:
        raise ValueError(f"image {image.shape} and colours {colours.shape} differ in shape")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mix = image.astype(np.float64) * (1 - alpha) + colours.astype(np.float64) * alpha
    out: U8 = mix.round().astype(np.uint8)
    return out


def image_grid(
    rows: Sequence[Sequence[U8]],
    titles: Sequence[str] | None = None,
    scale: int = 2,
    pad: int = 4,
) -> Image.Image:
    """Tile equally sized (H, W, 3) uint8 panels into one image, with optional column titles.

    Args:
        rows: panels per row (every row has the same number of panels).
        titles: one title per column, drawn above the first row.
        scale: nearest-neighbour upscaling of every panel.
        pad: white margin between panels.

    Returns:
        The grid as a PIL image.

    Raises:
        ValueError: empty input, ragged rows, or panels of different sizes.
    """
    if not rows or not rows[0]:
        raise ValueError("rows must hold at least one panel")
    ncol = len(rows[0])
    if any(len(r) != ncol for r in rows):
        raise ValueError(f"every row must have {ncol} panels, got {[len(r) for r in rows]}")
    if titles is not None and len(titles) != ncol:
        raise ValueError(f"titles must hold one title per column ({ncol}), got {len(titles)}")
    shapes = {p.shape for r in rows for p in r}
    if len(shapes) != 1:
        raise ValueError(f"panels must share one shape, got {sorted(shapes)}")
    h, w, _ = next(iter(shapes))
    h, w = h * scale, w * scale
    top = 14 if titles else 0
    grid = Image.new(
        "RGB", (ncol * (w + pad) + pad, len(rows) * (h + pad) + pad + top), (255, 255, 255)
    )
    draw = ImageDraw.Draw(grid)
    if titles:
        for j, title in enumerate(titles):
            draw.text((pad + j * (w + pad), 1), title, fill=(0, 0, 0))
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            tile = Image.fromarray(panel).resize((w, h), Image.Resampling.NEAREST)
            grid.paste(tile, (pad + j * (w + pad), top + pad + i * (h + pad)))
    return grid


def curve_points(
    x: NDArray[Any], y: NDArray[Any], max_points: int = 4000
) -> tuple[NDArray[Any], NDArray[Any]]:
    """The points of a curve worth drawing: at most about ``max_points`` of them.

    A pixel-level anomaly curve has one point per distinct score (hundreds of thousands), far
    more than a figure can show, and drawing them all is slow. The points kept are the first,
    the last and one wherever the curve's length (``Σ |dx| + |dy|``) passes another
    ``1 / max_points`` of its total, so every stretch of the curve keeps points in proportion to
    how far it moves. A drawing change only: metrics are computed from every point.

    Args:
        x: (N,) coordinates along the horizontal axis.
        y: (N,) coordinates along the vertical axis.
        max_points: about how many points to keep (at most ``max_points + 2``).

    Returns:
        ``(x[keep], y[keep])``: a subsequence of the curve's points, in order.

    Raises:
        ValueError: ``x`` and ``y`` are not 1-d arrays of one length, or ``max_points < 1``.
    """
    if x.ndim != 1 or y.shape != x.shape:
        raise ValueError(
            f"x and y must be 1-d arrays of one length, got shapes {x.shape} and {y.shape}"
        )
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    n = len(x)
    if n <= max_points + 2:
        return x, y
    step = np.abs(np.diff(x.astype(np.float64))) + np.abs(np.diff(y.astype(np.float64)))
    length = np.concatenate([[0.0], np.cumsum(step)])
    if length[-1] == 0:
        return x[[0, -1]], y[[0, -1]]
    bins = np.floor(length * (max_points / length[-1])).astype(np.int64)
    keep = np.flatnonzero(np.diff(bins, prepend=-1) != 0)  # first point of each length bin
    keep = np.union1d(keep, [n - 1])
    return x[keep], y[keep]


def plot_curves(
    curves: Mapping[str, tuple[Tensor, Tensor, Tensor, Tensor]],
    path: Path | str,
    title: str = "",
) -> Path:
    """Save ROC and precision-recall curves side by side (needs matplotlib).

    Each curve is drawn through at most about 4000 of its points (:func:`curve_points`).

    Args:
        curves: name → (fpr, tpr, recall, precision) 1-d tensors (e.g. from
            :meth:`gmmseg.metrics.AnomalyCurve.roc` and ``.pr``).
        path: output image (PNG).
        title: figure title.

    Returns:
        ``path``.

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plot_curves needs matplotlib: pip install 'gmmseg[viz]'") from e
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 4))
    for name, (fpr, tpr, recall, precision) in curves.items():
        roc_ax.plot(*curve_points(_np(fpr), _np(tpr)), label=name)
        pr_ax.plot(*curve_points(_np(recall), _np(precision)), label=name)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
