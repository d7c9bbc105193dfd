"""Miniature folder datasets (for tests, examples and dry runs of ``data.dataset=folder``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from gmmseg.data.meta import IGNORE_INDEX

__all__ = ["write_anomaly_folder_fixture", "write_folder_fixture"]

U8 = NDArray[np.uint8]


# Colour levels 36 apart: two palette colours differ by at least 36 in some channel, more than
# the image noise (±10) can bridge, and 7³ = 343 colours cover the 255 classes a label allows.
_LEVELS = np.arange(20, 237, 36)


def _palette(num_classes: int) -> NDArray[np.int64]:
    """Distinct, well-separated colours (a fixed sequence; class k's colour).

    Drawn without replacement from the 7 × 7 × 7 grid of :data:`_LEVELS` (never black, the
    fixture's void colour).
    """
    grid = np.stack(np.meshgrid(_LEVELS, _LEVELS, _LEVELS, indexing="ij"), -1).reshape(-1, 3)
    if not 1 <= num_classes <= len(grid):
        raise ValueError(f"num_classes: expected 1..{len(grid)}, got {num_classes}")
    pick = np.random.default_rng(1234).choice(len(grid), size=num_classes, replace=False)
    out: NDArray[np.int64] = grid[pick].astype(np.int64)
    return out


def _scene(rng: np.random.Generator, size: tuple[int, int], num_classes: int) -> U8:
    """Horizontal bands of random classes with a rectangle of another class."""
    h, w = size
    label = np.empty((h, w), dtype=np.uint8)
    cuts = np.sort(rng.choice(np.arange(1, h), size=min(2, h - 1), replace=False))
    for part, (a, b) in enumerate(zip([0, *cuts.tolist()], [*cuts.tolist(), h], strict=True)):
        label[a:b] = (part + int(rng.integers(num_classes))) % num_classes
    y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    label[y : y + h // 3, x : x + w // 3] = int(rng.integers(num_classes))
    return label


def _image(rng: np.random.Generator, colours: NDArray[np.int64], label: U8) -> U8:
    """An image whose colour follows the label, plus noise (learnable in a few steps)."""
    noise = rng.integers(-10, 11, size=(*label.shape, 3))
    safe = np.where(label == IGNORE_INDEX, 0, label)
    out: U8 = np.clip(colours[safe] + noise, 0, 255).astype(np.uint8)
    return out


def _new(path: Path) -> Path:
    if path.exists():
        raise FileExistsError(f"{path} already exists: write the fixture into an empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_folder_fixture(
    root: Path | str,
    classes: Sequence[str] = ("road", "car", "sky"),
    *,
    splits: Sequence[tuple[str, int]] = (("train", 6), ("val", 2)),
    size: tuple[int, int] = (48, 64),
    colour_labels: bool = False,
    image_suffix: str = ".jpg",
    seed: int = 0,
) -> Path:
    """Write a miniature closed-set folder dataset and its JSON class file.

    Layout: ``root/images/{split}/{i:04d}{image_suffix}``, ``root/labels/{split}/{i:04d}.png``
    (train ids, a few ignore pixels) or, with ``colour_labels``, RGB labels in the palette's
    colours (ignore in the void colour black); ``root/classes.json``.

    Args:
        root: Output folder (new files only: an existing file is never replaced).
        classes: Class names.
        splits: ``(split, number of frames)`` pairs.
        size: (H, W) of every frame.
        colour_labels: Store RGB colour labels instead of index PNGs.
        image_suffix: ``.jpg`` or ``.png``.
        seed: Seed of the content.

    Returns:
        ``root``.

    Raises:
        FileExistsError: a file to be written already exists.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = _palette(len(classes))
    info = {
        "classes": list(classes),
        "palette": colours.tolist(),
        "void_colors": [[0, 0, 0]],
    }
    _new(root / "classes.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    for split, count in splits:
        for i in range(count):
            label = _scene(rng, size, len(classes))
            label[0, :4] = IGNORE_INDEX  # a few ignore pixels
            image = _image(rng, colours, label)
            quality: dict[str, Any] = {"quality": 95} if image_suffix == ".jpg" else {}
            Image.fromarray(image).save(
                _new(root / "images" / split / f"{i:04d}{image_suffix}"), **quality
            )
            target = _new(root / "labels" / split / f"{i:04d}.png")
            if colour_labels:
                rgb = np.zeros((*size, 3), dtype=np.uint8)
                known = label != IGNORE_INDEX
                rgb[known] = colours[label[known]]
                Image.fromarray(rgb).save(target)
            else:
                Image.fromarray(label).save(target)
    return root


def write_anomaly_folder_fixture(
    root: Path | str,
    *,
    count: int = 3,
    size: tuple[int, int] = (48, 64),
    anomaly_value: int = 1,
    void: bool = True,
    num_classes: int = 3,
    seed: int = 1,
) -> Path:
    """Write a miniature anomaly folder: ``root/images/{i:04d}.jpg``, ``root/labels/{i:04d}.png``.

    Each frame is a scene of ``num_classes`` classes (coloured as in :func:`write_folder_fixture`)
    with a bright square object stored as ``anomaly_value`` and, with ``void``, a void top row
    (255). Normal pixels are 0.

    Args:
        root: Output folder (new files only).
        count: Number of frames.
        size: (H, W).
        anomaly_value: Stored value of anomaly pixels (1; Road Anomaly's original files: 2).
        void: Store a row of void (255).
        num_classes: Classes of the normal content.
        seed: Seed of the content.

    Returns:
        ``root``.

    Raises:
        FileExistsError: a file to be written already exists.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = _palette(num_classes)
    h, w = size
    for i in range(count):
        scene = _scene(rng, size, num_classes)
        image = _image(rng, colours, scene)
        mask = np.zeros(size, dtype=np.uint8)
        y, x = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
        sy, sx = max(2, h // 4), max(2, w // 4)
        mask[y : y + sy, x : x + sx] = anomaly_value
        image[y : y + sy, x : x + sx] = (255, 0, 255)
        if void:
            mask[0, :] = IGNORE_INDEX
        Image.fromarray(image).save(_new(root / "images" / f"{i:04d}.jpg"), quality=95)
        Image.fromarray(mask).save(_new(root / "labels" / f"{i:04d}.png"))
    return root
