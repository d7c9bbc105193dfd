"""Visualisation helpers against plain per-pixel loops and written-out formulas."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from gmmseg import viz
from gmmseg.viz import colorize, heatmap, image_grid, overlay, plot_curves, to_uint8_image

# The ramp's end stops, as documented ("dark = low, yellow = high").
FIRST = (68, 1, 84)
LAST = (253, 231, 37)

colours = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))


def _u8(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.uint8, shape, elements=st.integers(0, 255))


# --------------------------------------------------------------------------- colorize


@given(
    palette=st.lists(colours, min_size=1, max_size=6),
    ignore_index=st.sampled_from([255, 0, 2, 7, 300, -1, -100]),
    ignore_color=colours,
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    data=st.data(),
)
def test_colorize_matches_loop(
    palette: list[tuple[int, int, int]],
    ignore_index: int,
    ignore_color: tuple[int, int, int],
    h: int,
    w: int,
    data: st.DataObject,
) -> None:
    values = st.integers(0, len(palette) - 1) | st.just(ignore_index)
    label = np.array(data.draw(st.lists(values, min_size=h * w, max_size=h * w))).reshape(h, w)
    out = colorize(label, palette, ignore_index, ignore_color)
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
    for y in range(h):
        for x in range(w):
            v = int(label[y, x])
            want = ignore_color if v == ignore_index else palette[v]
            assert tuple(out[y, x]) == tuple(want), (y, x, v)
    # a tensor gives the same picture
    assert np.array_equal(
        colorize(torch.from_numpy(label), palette, ignore_index, ignore_color), out
    )


def test_colorize_defaults() -> None:
    palette = [(10, 20, 30), (40, 50, 60)]
    out = colorize(np.array([[0, 1, 255]]), palette)
    assert out.tolist() == [[[10, 20, 30], [40, 50, 60], [0, 0, 0]]]


def test_colorize_errors() -> None:
    palette = [(1, 2, 3), (4, 5, 6)]
    with pytest.raises(ValueError, match="outside"):
        colorize(np.array([[0, 2]]), palette)
    with pytest.raises(ValueError, match="outside"):
        colorize(np.array([[-1, 0]]), palette)
    with pytest.raises(ValueError, match="outside"):
        colorize(np.array([[0, 255]]), palette, ignore_index=-1)  # 255 is not ignored here
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        colorize(np.zeros((1, 2, 2), dtype=np.int64), palette)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        colorize(np.zeros(4, dtype=np.int64), palette)


# --------------------------------------------------------------------------- heatmap


def _ramp_colour(score: float, lo: float, hi: float) -> tuple[int, ...]:
    """Linear interpolation along the ramp stops, written out per pixel."""
    stops = viz._RAMP
    t = (score - lo) / max(hi - lo, 1e-12)
    t = min(max(t, 0.0), 1.0)
    pos = t * (len(stops) - 1)
    i = min(math.floor(pos), len(stops) - 2)
    f = pos - i
    return tuple(round(float(stops[i, c] * (1 - f) + stops[i + 1, c] * f)) for c in range(3))


def test_ramp_endpoints() -> None:
    assert tuple(viz._RAMP[0]) == FIRST and tuple(viz._RAMP[-1]) == LAST
    out = heatmap(np.array([[0.0, 1.0]]), 0.0, 1.0)
    assert tuple(out[0, 0]) == FIRST and tuple(out[0, 1]) == LAST


@given(
    scores=hnp.arrays(
        np.float64, st.tuples(st.integers(1, 4), st.integers(1, 4)), elements=st.floats(-5, 5)
    ),
    bounds=st.tuples(st.floats(-6, 6), st.floats(0.01, 8)) | st.none(),
)
def test_heatmap_matches_ramp(scores: np.ndarray, bounds: tuple[float, float] | None) -> None:
    if bounds is None:
        out = heatmap(scores)
        lo, hi = float(np.percentile(scores, 1)), float(np.percentile(scores, 99))
    else:
        lo, hi = bounds[0], bounds[0] + bounds[1]
        out = heatmap(torch.from_numpy(scores), lo, hi)
    assert out.dtype == np.uint8 and out.shape == (*scores.shape, 3)
    for idx in np.ndindex(scores.shape):
        want = _ramp_colour(float(scores[idx]), lo, hi)
        assert np.abs(out[idx].astype(int) - np.array(want)).max() <= 1, (idx, scores[idx])


def test_heatmap_monotone_and_clipped() -> None:
    scores = np.linspace(-1.0, 2.0, 301).reshape(1, -1)
    out = heatmap(scores, 0.0, 1.0)
    # position along the ramp: index of the nearest colour of a fine reference ramp
    fine = np.array([_ramp_colour(s, 0.0, 1.0) for s in np.linspace(0, 1, 2001)], float)
    dist = ((out[0].astype(float)[:, None, :] - fine[None]) ** 2).sum(-1)
    position = dist.argmin(1)
    assert np.all(np.diff(position) >= 0)
    below, above = scores[0] <= 0.0, scores[0] >= 1.0
    assert (out[0, below] == FIRST).all() and (out[0, above] == LAST).all()
    assert position[below].max() == 0 and position[above].min() == len(fine) - 1


def test_heatmap_non_finite() -> None:
    s = np.array([[0.0, np.nan, 1.0], [np.inf, -np.inf, 0.5]])
    out = heatmap(s, 0.0, 1.0)
    assert tuple(out[0, 1]) == FIRST  # NaN: the low end
    assert tuple(out[1, 0]) == LAST and tuple(out[1, 1]) == FIRST  # ±inf saturate
    assert tuple(out[0, 2]) == LAST and tuple(out[1, 2]) == _ramp_colour(0.5, 0.0, 1.0)
    # default bounds come from the finite scores only
    rng = np.random.default_rng(0)
    finite = rng.normal(size=(6, 7))
    with_nan = finite.copy()
    with_nan[0, :3] = np.nan
    lo, hi = np.percentile(with_nan[np.isfinite(with_nan)], [1, 99])
    got = heatmap(with_nan)
    for idx in np.ndindex(finite.shape):
        if np.isfinite(with_nan[idx]):
            want = _ramp_colour(float(with_nan[idx]), float(lo), float(hi))
            assert np.abs(got[idx].astype(int) - np.array(want)).max() <= 1
    # tiny ranges with huge finite scores saturate without overflow warnings
    big = np.array([[1e308, -1e308, 0.0]])
    assert heatmap(big, 0.0, 1e-6)[0].tolist() == [list(LAST), list(FIRST), list(FIRST)]


def test_heatmap_constant_and_errors() -> None:
    assert (heatmap(np.full((2, 2), 3.0)) == FIRST).all()
    with pytest.raises(ValueError, match="finite"):
        heatmap(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="finite"):
        heatmap(np.array([[np.inf, -np.inf]]))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        heatmap(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="low must not exceed high"):
        heatmap(np.zeros((2, 2)), 1.0, 0.0)
    with pytest.raises(ValueError, match="high must be a finite"):
        heatmap(np.zeros((2, 2)), 0.0, float("nan"))
    assert (heatmap(np.zeros((2, 2)), 1.0, 1.0) == FIRST).all()  # low == high is allowed


# --------------------------------------------------------------------------- overlay


@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.just(3)),
    alpha=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_overlay_blend(shape: tuple[int, int, int], alpha: float, data: st.DataObject) -> None:
    image = data.draw(_u8(shape))
    col = data.draw(_u8(shape))
    out = overlay(image, col, alpha)
    assert out.dtype == np.uint8 and out.shape == shape
    for idx in np.ndindex(shape):
        want = round(float(image[idx]) * (1 - alpha) + float(col[idx]) * alpha)
        assert int(out[idx]) == want, idx
    assert np.array_equal(overlay(image, col, 0.0), image)
    assert np.array_equal(overlay(image, col, 1.0), col)


def test_overlay_errors() -> None:
    a = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        overlay(a, np.zeros((2, 3, 3), np.uint8))
    for alpha in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="alpha"):
            overlay(a, a, alpha)


# --------------------------------------------------------------------------- to_uint8_image


@given(
    h=st.integers(1, 5),
    w=st.integers(1, 5).filter(lambda w: w != 3),  # (3, H, 3) reads as channels-last
    mean=st.tuples(*[st.floats(0, 255)] * 3),
    std=st.tuples(*[st.floats(1, 80)] * 3),
    data=st.data(),
)
def test_to_uint8_image_inverts_normalisation(
    h: int,
    w: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    data: st.DataObject,
) -> None:
    img = data.draw(_u8((h, w, 3)))
    chw = np.empty((3, h, w), np.float32)
    for c in range(3):
        chw[c] = (img[:, :, c].astype(np.float64) - mean[c]) / std[c]
    out = to_uint8_image(torch.from_numpy(chw), mean, std)
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
    assert np.array_equal(out, img)
    assert np.array_equal(to_uint8_image(chw, mean, std), img)


@given(img=_u8((4, 5, 3)))
def test_to_uint8_image_passthrough(img: np.ndarray) -> None:
    assert np.array_equal(to_uint8_image(img), img)
    chw = torch.from_numpy(img).permute(2, 0, 1)
    assert np.array_equal(to_uint8_image(chw), img)
    assert np.array_equal(to_uint8_image(chw.float()), img)


def test_to_uint8_image_clips_and_errors() -> None:
    x = np.array([-5.0, 0.4, 0.6, 254.5, 300.0]).reshape(1, 5, 1).repeat(3, axis=2)
    assert to_uint8_image(x)[0, :, 0].tolist() == [0, 0, 1, 254, 255]
    for shape in [(4, 2, 2), (2, 2), (2, 2, 4), (1, 3, 2, 2)]:
        with pytest.raises(ValueError, match="3, H, W"):
            to_uint8_image(np.zeros(shape))


# --------------------------------------------------------------------------- image_grid


@given(
    nrows=st.integers(1, 3),
    ncol=st.integers(1, 3),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    scale=st.integers(1, 3),
    pad=st.integers(0, 4),
    titled=st.booleans(),
    data=st.data(),
)
def test_image_grid_layout(
    nrows: int,
    ncol: int,
    h: int,
    w: int,
    scale: int,
    pad: int,
    titled: bool,
    data: st.DataObject,
) -> None:
    rows = [[data.draw(_u8((h, w, 3))) for _ in range(ncol)] for _ in range(nrows)]
    titles = [f"c{j}" for j in range(ncol)] if titled else None
    grid = image_grid(rows, titles, scale=scale, pad=pad)
    band = 14 if titled else 0
    hs, ws = h * scale, w * scale
    assert grid.mode == "RGB"
    assert grid.size == (ncol * (ws + pad) + pad, nrows * (hs + pad) + pad + band)
    arr = np.asarray(grid)
    covered = np.zeros(arr.shape[:2], bool)
    covered[:band] = True  # the title band
    for i in range(nrows):
        for j in range(ncol):
            y, x = band + pad + i * (hs + pad), pad + j * (ws + pad)
            want = np.empty((hs, ws, 3), np.uint8)
            for yy in range(hs):
                for xx in range(ws):
                    want[yy, xx] = rows[i][j][yy // scale, xx // scale]
            assert np.array_equal(arr[y : y + hs, x : x + ws], want), (i, j)
            covered[y : y + hs, x : x + ws] = True
    assert (arr[~covered] == 255).all()  # white margins


def test_image_grid_title_drawn() -> None:
    panel = np.full((8, 20, 3), 128, np.uint8)
    grid = np.asarray(image_grid([[panel]], ["Title"], scale=1))
    assert (grid[:14] != 255).any()
    assert (np.asarray(image_grid([[panel]], scale=1)) == 255).sum() > 0


def test_image_grid_errors() -> None:
    a = np.zeros((2, 2, 3), np.uint8)
    b = np.zeros((2, 3, 3), np.uint8)
    with pytest.raises(ValueError, match="at least one"):
        image_grid([])
    with pytest.raises(ValueError, match="at least one"):
        image_grid([[]])
    with pytest.raises(ValueError, match="every row"):
        image_grid([[a, a], [a]])
    with pytest.raises(ValueError, match="every row"):
        image_grid([[a], [a, a]])
    with pytest.raises(ValueError, match="one shape"):
        image_grid([[a, b]])
    with pytest.raises(ValueError, match="one shape"):
        image_grid([[a], [b]])
    with pytest.raises(ValueError, match="one title per column"):
        image_grid([[a, a]], titles=["only one"])


# --------------------------------------------------------------------------- plot_curves


def test_plot_curves_writes_png(tmp_path: Path) -> None:
    fpr = torch.tensor([0.0, 0.1, 0.5, 1.0])
    tpr = torch.tensor([0.0, 0.6, 0.9, 1.0])
    recall = torch.tensor([1.0, 0.9, 0.5, 0.0])
    precision = torch.tensor([0.3, 0.5, 0.8, 1.0])
    curves = {"gmm": (fpr, tpr, recall, precision), "softmax": (fpr, fpr, recall, recall)}
    path = tmp_path / "curves.png"
    assert plot_curves(curves, path, title="ROC and PR") == path
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (900, 400)  # figsize (9, 4) at 100 dpi
        im.load()


def test_curve_points_keep_the_ends_and_a_point_per_length_step() -> None:
    from gmmseg.viz import curve_points

    rng = np.random.default_rng(0)
    n, keep = 200_000, 1000
    x = np.cumsum(rng.exponential(size=n))
    x /= x[-1]
    y = np.sqrt(x) + 0.01 * rng.normal(size=n)  # a noisy precision-like curve
    kx, ky = curve_points(x, y, keep)
    idx = np.searchsorted(x, kx)
    assert np.array_equal(x[idx], kx) and np.array_equal(y[idx], ky)  # a subsequence
    assert idx[0] == 0 and idx[-1] == n - 1 and np.all(np.diff(idx) > 0)
    assert len(idx) <= keep + 2
    step = np.abs(np.diff(x)) + np.abs(np.diff(y))
    total = step.sum()
    # between two kept points the curve moves at most one length step (plus one raw step)
    for a, b in itertools.pairwise(idx):
        assert step[a:b].sum() <= total / keep + step[a:b].max() + 1e-12
    short = np.array([0.0, 0.5, 1.0])
    assert curve_points(short, short, keep)[0] is short  # small curves are drawn whole
    with pytest.raises(ValueError, match=r"x and y must be 1-d arrays of one length"):
        curve_points(short, short[:2])
    with pytest.raises(ValueError, match=r"max_points must be >= 1, got 0"):
        curve_points(short, short, 0)
