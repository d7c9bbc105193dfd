"""Your own data: a folder of images and label PNGs, closed-set or anomaly.

Layout (folder names and suffixes are arguments)::

    root/
      images/{split}/**/{stem}{image_suffix}
      labels/{split}/**/{stem}{label_suffix}

Images and labels are matched by relative folder and stem; ``split=""`` reads ``images/`` and
``labels/`` directly. Labels are checked like the named datasets': a value outside the class
range (or the anomaly set's values) is an error naming the file, the values found and what was
expected. Colour (RGB) label images are converted through the class palette, or refused when no
palette is given.

The class list is a sequence of names or a JSON class file (:func:`read_class_file`)::

    {"classes": ["road", "car", "sky"],
     "palette": [[128, 64, 128], [0, 0, 142], [70, 130, 180]],
     "void_colors": [[0, 0, 0]]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from gmmseg.data._io import allowed_mask
from gmmseg.data.anomaly import AnomalyDataset
from gmmseg.data.base import Frame, SegmentationDataset, Transform
from gmmseg.data.meta import IGNORE_INDEX

__all__ = [
    "IMAGE_SUFFIXES",
    "ClassList",
    "FolderAnomaly",
    "FolderDataset",
    "parse_label_map",
    "read_class_file",
]

RGB = tuple[int, int, int]

#: Image file endings accepted when ``image_suffix`` is ``""`` (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class ClassList:
    """The classes of a folder dataset.

    Attributes:
        names: Class names; the index is the train id (C = ``len(names)``, at most 255).
        palette: One RGB colour per class, or ``()``. Needed to read colour label images.
        void_colors: Colours of colour label images that mean "ignore" (255).
    """

    names: tuple[str, ...]
    palette: tuple[RGB, ...] = ()
    void_colors: tuple[RGB, ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("classes: expected at least one class name, got none")
        if len(self.names) > IGNORE_INDEX:
            raise ValueError(
                f"classes: at most {IGNORE_INDEX} classes fit an 8-bit label with ignore "
                f"{IGNORE_INDEX}, got {len(self.names)}"
            )
        if not all(isinstance(n, str) and n.strip() for n in self.names):
            raise ValueError(f"classes: every name must be a non-empty string, got {self.names!r}")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"classes: names must be unique, got repeated {dup}")
        if self.palette and len(self.palette) != len(self.names):
            raise ValueError(
                f"palette: expected one colour per class ({len(self.names)}), got "
                f"{len(self.palette)}"
            )
        colours = [*self.palette, *self.void_colors]
        for c in colours:
            if len(c) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in c):
                raise ValueError(f"palette: expected [r, g, b] with 0..255 integers, got {c!r}")
        if len(set(colours)) != len(colours):
            dup2 = sorted({c for c in colours if colours.count(c) > 1})
            raise ValueError(f"palette: every class and void colour must differ, got {dup2}")


def _colour(value: object, path: Path, key: str) -> RGB:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"class file {path}: {key} entries must be [r, g, b], got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def read_class_file(path: Path | str) -> ClassList:
    """Read a JSON class file.

    The file is an object with ``"classes"`` (a list of names) and optionally ``"palette"``
    (one ``[r, g, b]`` per class) and ``"void_colors"`` (colours read as ignore), or a plain
    list of names.

    Args:
        path: The ``.json`` file.

    Returns:
        The :class:`ClassList`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not JSON, unknown keys, or bad names / colours, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class file not found: {path}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"class file {path} is not valid JSON: {err}") from err
    if isinstance(content, list):
        content = {"classes": content}
    if not isinstance(content, dict):
        raise ValueError(
            f"class file {path}: expected an object with 'classes' (or a list of names), got "
            f"{type(content).__name__}"
        )
    unknown = sorted(set(content) - {"classes", "palette", "void_colors"})
    if unknown:
        raise ValueError(
            f"class file {path}: unknown keys {unknown}; expected 'classes', 'palette', "
            "'void_colors'"
        )
    names = content.get("classes")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"class file {path}: 'classes' must be a list of names, got {names!r}")
    palette = content.get("palette", [])
    voids = content.get("void_colors", [])
    for key, value in (("palette", palette), ("void_colors", voids)):
        if not isinstance(value, list):
            raise ValueError(f"class file {path}: {key!r} must be a list of [r, g, b]")
    try:
        return ClassList(
            tuple(names),
            tuple(_colour(c, path, "palette") for c in palette),
            tuple(_colour(c, path, "void_colors") for c in voids),
        )
    except ValueError as err:
        raise ValueError(f"class file {path}: {err}") from err


def _class_list(
    classes: ClassList | Sequence[str] | Path | str, palette: Sequence[Sequence[int]] | None
) -> ClassList:
    if isinstance(classes, ClassList):
        if palette is not None:
            raise ValueError("palette: give it inside the ClassList or here, not both")
        return classes
    if isinstance(classes, (str, Path)):
        if palette is not None:
            raise ValueError("palette: give it inside the class file or here, not both")
        return read_class_file(classes)
    colours = tuple((int(c[0]), int(c[1]), int(c[2])) for c in palette or ())
    return ClassList(tuple(classes), colours)


def _check_suffix(name: str, suffix: str) -> None:
    if suffix and not suffix.startswith((".", "_", "-")):
        raise ValueError(
            f"{name} must start with '.', '_' or '-' (e.g. '.png', '_label.png'), got {suffix!r}"
        )


def _pair_files(
    image_root: Path, label_root: Path | None, image_suffix: str, label_suffix: str
) -> list[Frame]:
    """Images under ``image_root`` and their labels, sorted by relative path."""
    if not image_root.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_root}")
    if label_root is not None and not label_root.is_dir():
        raise FileNotFoundError(f"label folder not found: {label_root}")
    same = label_root is not None and image_root.resolve() == label_root.resolve()
    if same and image_suffix and image_suffix == label_suffix:
        raise ValueError(
            f"images and labels share the folder {image_root} and the suffix {label_suffix!r}: "
            "give them different suffixes (e.g. image_suffix='.jpg', label_suffix='_label.png')"
        )
    images: list[tuple[Path, str]] = []
    for path in sorted(image_root.rglob("*"), key=lambda p: p.relative_to(image_root).as_posix()):
        if not path.is_file() or (same and path.name.endswith(label_suffix)):
            continue
        if image_suffix:
            if path.name.endswith(image_suffix):
                images.append((path, path.name[: -len(image_suffix)]))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            images.append((path, path.name[: -len(path.suffix)]))
    if not images:
        wanted = repr(image_suffix) if image_suffix else f"one of {list(IMAGE_SUFFIXES)}"
        raise FileNotFoundError(f"no images ending {wanted} found under {image_root}")
    frames: list[Frame] = []
    seen: dict[str, Path] = {}
    for path, stem in images:
        if stem in seen:
            raise ValueError(
                f"images {seen[stem]} and {path} share the name {stem!r}: frame names must be "
                "unique (result files are named after them)"
            )
        seen[stem] = path
        label = None
        if label_root is not None:
            rel = path.parent.relative_to(image_root)
            label = label_root / rel / f"{stem}{label_suffix}"
            if not label.is_file():
                raise FileNotFoundError(
                    f"image {path} has no label: expected {label} (label_suffix={label_suffix!r})"
                )
        frames.append(Frame(stem, path, label))
    return frames


def _split_root(root: Path, folder: str, split: str) -> Path:
    return root / folder / split if split else root / folder


class FolderDataset(SegmentationDataset):
    """Closed-set segmentation data in a plain folder, with your own classes.

    ``{root}/{image_dir}/{split}/**/{stem}{image_suffix}`` is paired with
    ``{root}/{label_dir}/{split}/**/{stem}{label_suffix}``. Label files are single-channel
    index PNGs (mode ``L``, or ``P`` whose indices are read) holding train ids 0…C−1 and 255
    (ignore); with ``reduce_zero_label`` they hold 0 (ignore) and 1…C. Colour (RGB) label
    images are converted through the palette (its colours → train ids, ``void_colors`` → 255);
    without a palette they are refused.

    Args:
        root: The dataset folder.
        split: Sub-folder of ``image_dir`` / ``label_dir`` (``""``: none).
        classes: Class names, a :class:`ClassList`, or the path of a JSON class file
            (:func:`read_class_file`).
        palette: RGB colour per class (only with a list of names).
        image_dir: Image folder under ``root``.
        label_dir: Label folder under ``root`` (may equal ``image_dir`` when the suffixes
            tell the files apart).
        image_suffix: Ending of the image files (``""``: any of :data:`IMAGE_SUFFIXES`).
        label_suffix: Ending of the label files, replacing the image's.
        reduce_zero_label: Stored 0 is ignore and stored v is train id v − 1 (ADE20K's
            convention).
        transform: Optional joint transform.

    Raises:
        FileNotFoundError: a missing folder, no images, or an image without its label.
        ValueError: a bad class list, two images of one name, and (when read) a label value
            outside the class range, an unknown colour or a colour label without palette.

    Examples:
        >>> ds = FolderDataset("/data/mine", "train", ["road", "car", "sky"])  # doctest: +SKIP
        >>> ds[0]["label"].unique()  # doctest: +SKIP
        tensor([  0,   1,   2, 255])
    """

    def __init__(
        self,
        root: Path | str,
        split: str,
        classes: ClassList | Sequence[str] | Path | str,
        *,
        palette: Sequence[Sequence[int]] | None = None,
        image_dir: str = "images",
        label_dir: str = "labels",
        image_suffix: str = "",
        label_suffix: str = ".png",
        reduce_zero_label: bool = False,
        transform: Transform | None = None,
    ) -> None:
        info = _class_list(classes, palette)
        c = len(info.names)
        if reduce_zero_label and c > IGNORE_INDEX - 1:
            raise ValueError(
                f"reduce_zero_label stores class c as c + 1: at most {IGNORE_INDEX - 1} classes, "
                f"got {c}"
            )
        _check_suffix("image_suffix", image_suffix)
        _check_suffix("label_suffix", label_suffix)
        self.root = Path(root)
        self.split = split
        self.class_list = info
        # Instance attributes shadow the (empty) class-level ones of the base class.
        self.classes = info.names  # type: ignore[misc]
        self.palette = info.palette  # type: ignore[misc]
        frames = _pair_files(
            _split_root(self.root, image_dir, split),
            _split_root(self.root, label_dir, split),
            image_suffix,
            label_suffix,
        )
        if reduce_zero_label:
            allowed = allowed_mask([*range(c + 1), IGNORE_INDEX])
            lut = np.concatenate([[IGNORE_INDEX], np.arange(255)]).astype(np.uint8)
            lut[IGNORE_INDEX] = IGNORE_INDEX  # a stored ignore stays ignore
            expected = f"{{0, …, {c}}} ∪ {{255}} (0 = ignore, reduce_zero_label)"
            hint = (
                f"the class list has {c} classes, stored as 1…{c} (class v − 1) with 0 and 255 "
                "ignore (reduce_zero_label)"
            )
        else:
            allowed = allowed_mask([*range(c), IGNORE_INDEX])
            lut = np.arange(256, dtype=np.uint8)
            expected = f"{{0, …, {c - 1}}} ∪ {{255}}"
            hint = f"the class list has {c} classes (train ids 0…{c - 1}, ignore 255)"
        super().__init__(
            frames,
            allowed=allowed,
            lut=lut,
            expected=expected,
            hint=hint,
            transform=transform,
        )
        self.reduce_zero_label = reduce_zero_label

    def load_label(self, index: int) -> NDArray[np.uint8] | None:
        """Decode, validate and map the label of frame ``index``.

        Returns:
            (H, W) uint8 train ids (ignore 255).

        Raises:
            ValueError: values outside the class range, an unknown colour, or a colour label
                without palette, naming the file.
        """
        path = self.frames[index].label_path
        if path is None:
            return None
        if _is_colour(path):
            return _colours_to_ids(path, self.class_list)
        return super().load_label(index)


def _is_colour(path: Path) -> bool:
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    with Image.open(path) as img:
        return img.mode in ("RGB", "RGBA")


def _colours_to_ids(path: Path, info: ClassList) -> NDArray[np.uint8]:
    """Map a colour label image to train ids through ``info.palette`` (void colours → 255)."""
    if not info.palette:
        raise ValueError(
            f"label file {path} is an RGB colour image but the class list has no palette: give "
            "'palette' (one [r, g, b] per class) in the class file, or store index labels "
            "(mode 'L' or 'P', values 0…C−1 and 255)"
        )
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours = [*info.palette, *info.void_colors]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in colours], dtype=np.int64)
    ids = np.array(
        [*range(len(info.palette)), *[IGNORE_INDEX] * len(info.void_colors)], dtype=np.uint8
    )
    order = np.argsort(keys)
    keys, ids = keys[order], ids[order]
    pos = np.clip(np.searchsorted(keys, code), 0, len(keys) - 1)
    known = keys[pos] == code
    if not known.all():
        found, counts = np.unique(code[~known], return_counts=True)
        listed = ", ".join(
            f"({v >> 16}, {(v >> 8) & 255}, {v & 255}) ({n} px)"
            for v, n in zip(found[:10].tolist(), counts[:10].tolist(), strict=True)
        )
        more = f" and {found.size - 10} more" if found.size > 10 else ""
        raise ValueError(
            f"label file {path} holds colours outside the palette of {len(info.palette)} classes"
            f" and {len(info.void_colors)} void colours: {listed}{more}. Hint: add them to "
            "'palette' or 'void_colors' in the class file"
        )
    out: NDArray[np.uint8] = ids[pos]
    return out


def parse_label_map(text: Sequence[str] | Mapping[int, int] | str) -> dict[int, int]:
    """Parse an anomaly label mapping ``"stored:canonical"`` (e.g. ``"0:0,2:1,255:255"``).

    Args:
        text: Comma-separated pairs, a sequence of pairs (``["0:0", "2:1"]``) or a mapping.

    Returns:
        ``{stored value: canonical value}``; canonical values are 0, 1 or 255.

    Raises:
        ValueError: a malformed pair, a stored value outside 0…255, a canonical value other
            than 0, 1, 255, or a stored value given twice.
    """
    if isinstance(text, Mapping):
        pairs = [(int(k), int(v)) for k, v in text.items()]
    else:
        items = text.split(",") if isinstance(text, str) else list(text)
        pairs = []
        for item in (i.strip() for i in items):
            if not item:
                continue
            parts = item.split(":")
            try:
                if len(parts) != 2:
                    raise ValueError
                pairs.append((int(parts[0]), int(parts[1])))
            except ValueError:
                raise ValueError(
                    f"label_map: expected 'stored:canonical' pairs such as '2:1', got {item!r}"
                ) from None
    out: dict[int, int] = {}
    for stored, canon in pairs:
        if not 0 <= stored <= 255:
            raise ValueError(f"label_map: stored values are 0…255, got {stored}")
        if canon not in (0, 1, IGNORE_INDEX):
            raise ValueError(
                f"label_map: {stored} maps to {canon}; expected 0 (normal), 1 (anomaly) or 255 "
                "(void)"
            )
        if stored in out:
            raise ValueError(f"label_map: stored value {stored} is mapped twice")
        out[stored] = canon
    if not out:
        raise ValueError("label_map: expected at least one 'stored:canonical' pair, got none")
    return out


class FolderAnomaly(AnomalyDataset):
    """An anomaly-segmentation set in a plain folder (images plus 0 / 1 / void masks).

    ``{root}/{image_dir}/**/{stem}{image_suffix}`` is paired with
    ``{root}/{label_dir}/**/{stem}{label_suffix}``, a single-channel PNG. By default it holds
    the canonical anomaly label of the named anomaly sets: 0 normal, 1 anomaly, 255 void; a
    ``label_map`` reads other conventions (Road Anomaly's 0 / 2: ``{0: 0, 2: 1}``). Values
    outside the map are an error naming the file.

    Args:
        root: The dataset folder.
        image_dir: Image folder under ``root``.
        label_dir: Mask folder under ``root``.
        image_suffix: Ending of the image files (``""``: any of :data:`IMAGE_SUFFIXES`).
        label_suffix: Ending of the mask files, replacing the image's.
        label_map: Stored value → 0, 1 or 255 (None: the canonical 0, 1, 255);
            see :func:`parse_label_map` for the text form.
        transform: Optional joint transform.

    Raises:
        FileNotFoundError: a missing folder, no images, or an image without its mask.
        ValueError: a bad map, two images of one name, and (when read) values outside the map.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        image_dir: str = "images",
        label_dir: str = "labels",
        image_suffix: str = "",
        label_suffix: str = ".png",
        label_map: Mapping[int, int] | Sequence[str] | str | None = None,
        transform: Transform | None = None,
    ) -> None:
        mapping = (
            {0: 0, 1: 1, IGNORE_INDEX: IGNORE_INDEX}
            if label_map is None
            else parse_label_map(label_map)
        )
        _check_suffix("image_suffix", image_suffix)
        _check_suffix("label_suffix", label_suffix)
        self.root = Path(root)
        self.label_map = mapping
        frames = _pair_files(
            self.root / image_dir, self.root / label_dir, image_suffix, label_suffix
        )
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for stored, canon in mapping.items():
            lut[stored] = canon
        shown = ", ".join(f"{k}→{v}" for k, v in sorted(mapping.items()))
        super().__init__(
            frames,
            allowed=allowed_mask(sorted(mapping)),
            lut=lut,
            expected="{" + ", ".join(str(k) for k in sorted(mapping)) + "}",
            hint=(
                f"the label map is {{{shown}}} (0 normal, 1 anomaly, 255 void); pass label_map "
                "(--set anomaly.folder_label_map=...) for other stored values"
            ),
            transform=transform,
        )
