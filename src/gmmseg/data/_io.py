"""File decoding and the validation rules shared by every loader (spec: datasets.md §0, G1–G7)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, ImageFile, features

__all__ = [
    "allowed_mask",
    "check_same_size",
    "check_values",
    "read_image",
    "read_image_region",
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
        f"image {path} is larger than Pillow's decompression-bomb limit ({err}); if you trust "
        "the file, raise PIL.Image.MAX_IMAGE_PIXELS"
    )


def read_image(path: Path) -> NDArray[np.uint8]:
    """Decode an image file as RGB uint8, exactly as stored (G7: no gamma or profile correction).

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


def _png_rows_only(img: Image.Image, rows: int) -> bool:
    """Limit the decoding of a non-interlaced single-tile PNG to its first ``rows`` rows.

    PNG rows are compressed top to bottom in one zlib stream, so the first rows decode without
    the rest. Returns False (nothing changed) for any other file layout.
    """
    w, h = img.size
    if (
        not isinstance(img, ImageFile.ImageFile)
        or img.format != "PNG"
        or img.info.get("interlace")
        or len(img.tile) != 1
        or img.tile[0][0] != "zip"
        or img.tile[0][1] != (0, 0, w, h)
        or rows >= h
    ):
        return False
    name, _, offset, args = img.tile[0]
    # Pillow ≥ 11 describes tiles as ImageFile._Tile named tuples, older ones as plain tuples.
    make: Any = getattr(ImageFile, "_Tile", lambda *fields: fields)
    img.tile = [make(name, (0, 0, w, rows), offset, args)]
    return True


def _check_png_chunks(path: Path) -> None:
    """Raise if the chunk list of a PNG runs past the end of the file or has no IEND chunk.

    Used after a partial decode, which does not read the file to its end: a truncated file is
    still refused, as a full decode would refuse it. Only chunk headers are read (one seek per
    chunk); the data of the undecoded rows is not checked.
    """
    with path.open("rb") as f:
        end = f.seek(0, 2)
        pos = 8  # the signature
        while True:
            f.seek(pos)
            head = f.read(8)
            if len(head) < 8:
                raise OSError(
                    f"image file {path} is truncated: no IEND chunk before the end of the file "
                    f"({end} bytes)"
                )
            pos += 12 + int.from_bytes(head[:4], "big")
            if pos > end:
                raise OSError(
                    f"image file {path} is truncated: chunk {head[4:8]!r} ends at byte {pos} "
                    f"but the file has {end} bytes"
                )
            if head[4:8] == b"IEND":
                return


def read_image_region(
    path: Path, region_of: Callable[[tuple[int, int]], tuple[int, int, int, int]]
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """Decode only the part of an image that a crop needs.

    ``region_of`` gets the stored (H, W) from the file header, before any pixel is decoded,
    and returns the (top, left, height, width) box to decode. For an RGB PNG (not interlaced)
    only the rows down to the bottom of the box are decompressed; other files are decoded
    whole. The result always equals ``read_image(path)[top:top+height, left:left+width]``.

    Args:
        path: Image file (PNG, JPEG or WebP).
        region_of: Maps the image size to the box; may raise (e.g. a size mismatch).

    Returns:
        ((height, width, 3) uint8 read-only array, (H, W) of the whole image).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImportError: a WebP file and Pillow was built without WebP support.
        OSError: the file cannot be decoded or is truncated, naming it.
        ValueError: the box does not lie inside the image.
    """
    _check_image_path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            top, left, rh, rw = region_of((h, w))
            if top < 0 or left < 0 or rh <= 0 or rw <= 0 or top + rh > h or left + rw > w:
                raise ValueError(
                    f"region (top, left, height, width) = {(top, left, rh, rw)} must lie inside "
                    f"the image {path} of (H, W) = {(h, w)}"
                )
            if img.mode != "RGB":
                return _to_rgb(img, path)[top : top + rh, left : left + rw], (h, w)
            partial = _png_rows_only(img, top + rh)
            img.load()
            region: NDArray[np.uint8] = np.asarray(img.crop((left, top, left + rw, top + rh)))
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as err:
        raise _bomb(path, err) from err
    except OSError as err:
        raise _decode_error("image", path, err) from err
    if partial:
        _check_png_chunks(path)
    return region, (h, w)


def read_label(path: Path) -> NDArray[np.uint8]:
    """Decode a label PNG as its stored indices (G2).

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
    """Raise if ``label`` holds a value outside ``allowed`` (G4).

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
    """Raise if image and label sizes differ (G3: labels are never resized by loaders).

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
