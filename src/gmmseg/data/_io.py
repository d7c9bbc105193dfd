"""File decoding and the validation rules shared by every loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, features

__all__ = [
    "allowed_mask",
    "check_same_size",
    "check_values",
    "read_image",
    "read_label",
]

_LABEL_MODES = ("L", "P")


def _check_image_path(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.suffix.lower() == ".webp" and not features.check("webp"):
        raise ImportError(
            f"cannot decode {path}: this Pillow build has no WebP support; "
            "install a Pillow wheel built with libwebp"
        )


def _decode_error(kind: str, path: Path, err: Exception) -> OSError:
    return OSError(f"cannot decode {kind} file {path}: {err} (is the file truncated or corrupt?)")


# Modes Pillow converts to 8-bit RGB without losing range: 1-bit, 8-bit grey, palette, colour.
_EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_rgb(img: Image.Image, path: Path | None = None) -> NDArray[np.uint8]:
    """The pixels of an opened image as RGB: alpha dropped, other modes converted.

    16-bit greyscale images are rescaled to 8 bits (``round(v · 255 / 65535)``, PNG's rule for
    changing sample depth), not clipped; modes whose range is not defined by the file (32-bit
    integer or float) are refused.
    """
    if img.mode == "RGB":
        rgb: NDArray[np.uint8] = np.array(img, dtype=np.uint8)  # one writable copy
        return rgb
    if img.mode in ("RGBA", "LA", "P", "PA"):
        arr = np.asarray(img.convert("RGBA"))[..., :3]  # drop alpha
    elif img.mode in _SIXTEEN_BIT_MODES or (img.mode == "I" and img.format == "PNG"):
        # Pillow's own conversion clips 16-bit values to 0..255 instead of rescaling them.
        wide = np.asarray(img, dtype=np.int64)
        if wide.min(initial=0) < 0 or wide.max(initial=0) > 65535:
            raise ValueError(f"image {path}: mode {img.mode!r} values outside 0..65535")
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        arr = np.repeat(grey[..., None], 3, axis=2)
    elif img.mode in _EIGHT_BIT_MODES:
        arr = np.asarray(img.convert("RGB"))
    else:
        raise ValueError(
            f"image {path} has mode {img.mode!r} (32-bit integer or float pixels): gmmseg reads "
            "8- and 16-bit images; convert it to an 8-bit RGB image first"
        )
    return np.array(arr, dtype=np.uint8, order="C")  # writable, contiguous


def _bomb(path: Path, err: Exception) -> ValueError:
    return ValueError(
        f"image {path} is larger than Pillow's decompression-bomb limit ({err}); downscale "
        "it, or, if you trust the file and call gmmseg from Python, raise "
        "PIL.Image.MAX_IMAGE_PIXELS first"
    )


def read_image(path: Path) -> NDArray[np.uint8]:
    """Decode an image file as RGB uint8, exactly as stored (no gamma or colour-profile correction).

    An alpha channel is dropped; greyscale, palette and CMYK images are converted to RGB;
    16-bit greyscale is rescaled to 8 bits (``round(v · 255 / 65535)``), never clipped.

    Args:
        path: Image file (PNG, JPEG or WebP).

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImportError: a WebP file and Pillow was built without WebP support.
        OSError: the file cannot be decoded (truncated or corrupt), naming it.
        ValueError: 32-bit integer or float pixels, or more pixels than Pillow's
            decompression-bomb limit, naming the file.
    """
    _check_image_path(path)
    try:
        with Image.open(path) as img:
            return _to_rgb(img, path)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as err:
        raise _bomb(path, err) from err
    except OSError as err:
        raise _decode_error("image", path, err) from err


def read_label(path: Path) -> NDArray[np.uint8]:
    """Decode a label PNG as its stored indices (a palette PNG gives its indices, not colours).

    Mode "L" is read as is; for mode "P" the palette indices are used, never the colours.

    Args:
        path: Label file.

    Returns:
        (H, W) uint8 array of stored values.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a single-channel 8-bit image (e.g. an RGB colour
            visualisation such as ``*_color.png``, or a 16-bit file).
        OSError: the file cannot be decoded (truncated or corrupt), naming it.
    """
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    try:
        with Image.open(path) as img:
            if img.mode not in _LABEL_MODES:
                raise ValueError(
                    f"label file {path} has mode {img.mode!r}; expected a single-channel 8-bit "
                    f"index image (mode 'L' or 'P'). A colour visualisation (e.g. *_color.png) "
                    f"or a 16-bit file is not a label map"
                )
            arr = np.array(img, dtype=np.uint8)  # a writable copy of the stored indices
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as err:
        raise _bomb(path, err) from err
    except OSError as err:
        raise _decode_error("label", path, err) from err
    return arr


def allowed_mask(values: list[int] | range) -> NDArray[np.bool_]:
    """Boolean table of length 256 that is True exactly at ``values``."""
    mask = np.zeros(256, dtype=np.bool_)
    mask[np.asarray(list(values), dtype=np.int64)] = True
    return mask


def check_values(
    label: NDArray[np.uint8], allowed: NDArray[np.bool_], path: Path, expected: str, hint: str
) -> None:
    """Raise if ``label`` holds a value outside ``allowed`` (never clamped or remapped).

    Args:
        label: (H, W) uint8 stored values.
        allowed: (256,) bool table of allowed values.
        path: The file, named in the error.
        expected: Human-readable allowed set, e.g. ``"{0, …, 18} ∪ {255}"``.
        hint: What the violation probably means.

    Raises:
        ValueError: naming the file, up to 10 offending values with pixel counts, and ``hint``.
    """
    counts = torch.bincount(torch.from_numpy(label).reshape(-1), minlength=256).numpy()
    bad = np.flatnonzero((counts > 0) & ~allowed)
    if bad.size:
        listed = ", ".join(f"{int(v)} ({int(counts[v])} px)" for v in bad[:10])
        more = f" and {bad.size - 10} more" if bad.size > 10 else ""
        raise ValueError(
            f"label file {path} holds values outside the allowed set {expected}: "
            f"{listed}{more}. Hint: {hint}"
        )


def check_same_size(
    image: NDArray[np.uint8], label: NDArray[np.uint8], image_path: Path, label_path: Path
) -> None:
    """Raise if image and label sizes differ (loaders never resize labels).

    Raises:
        ValueError: naming both files and both H×W.
    """
    if image.shape[:2] != label.shape[:2]:
        ih, iw = image.shape[:2]
        lh, lw = label.shape[:2]
        raise ValueError(
            f"image {image_path} is {iw}x{ih} (WxH) but its label {label_path} is {lw}x{lh}; "
            "image and label must have the same size (loaders never resize labels)"
        )
