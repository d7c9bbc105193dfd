"""Anomaly-segmentation loaders.

Every loader yields the canonical anomaly label: 0 in-distribution, 1 anomaly, 255 void.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from gmmseg.data._io import allowed_mask, read_image
from gmmseg.data.base import (
    Frame,
    SegmentationDataset,
    Transform,
    require_label,
    resolve_root,
    scan,
)
from gmmseg.data.meta import ANOMALY_CLASSES, ANOMALY_PALETTE, IGNORE_INDEX

__all__ = [
    "FishyscapesLostAndFound",
    "FishyscapesStatic",
    "RoadAnomaly",
    "SMIYCAnomalyTrack",
    "SMIYCObstacleTrack",
]

_IDENTITY = np.arange(256, dtype=np.uint8)
_CANONICAL = allowed_mask([0, 1, IGNORE_INDEX])
_CANONICAL_TEXT = "{0, 1, 255}"
_FS_LAF_NAME = re.compile(r"^(\d{4})_((\d{2}_.+)_(\d{6})_(\d{6}))_labels\.png$")
_FS_STATIC_NAME = re.compile(r"^(\d{4})_(.+)_(\d{6})_(\d{6})_labels\.png$")


class AnomalyDataset(SegmentationDataset):
    """Base of the anomaly loaders: canonical classes, palette and void."""

    classes: ClassVar[tuple[str, ...]] = ANOMALY_CLASSES
    palette: ClassVar[tuple[tuple[int, int, int], ...]] = ANOMALY_PALETTE


class FishyscapesLostAndFound(AnomalyDataset):
    """Fishyscapes Lost & Found validation (100 frames), images from LostAndFound.

    Labels: ``{root}/{nnnn}_{fid}_labels.png`` (0/1/255); images:
    ``{laf_root}/leftImg8bit/{train,test}/{scene}/{fid}_leftImg8bit.png`` (``train`` tried first).
    Frame id: the label name without ``_labels.png``, e.g. ``0000_04_Maurener_Weg_8_000000_000030``.

    Args:
        root: ``fishyscapes_lostandfound`` folder (or its parent).
        laf_root: LostAndFound root (holding ``leftImg8bit/``).
        transform: Optional joint transform.
        check_full: Compare the frame count with the official 100.

    Raises:
        ValueError: a ``*_labels.png`` name that does not parse; label values outside {0, 1, 255}.
        FileNotFoundError: no label files; an image found in neither LostAndFound split.
    """

    official_counts: ClassVar[dict[str, int]] = {"val": 100}

    def __init__(
        self,
        root: Path | str,
        laf_root: Path | str,
        transform: Transform | None = None,
        check_full: bool = False,
    ) -> None:
        self.root = resolve_root(root, "fishyscapes_lostandfound")
        self.laf_root = Path(laf_root)
        frames = []
        for lab in scan(self.root, "_labels.png"):
            m = _FS_LAF_NAME.match(lab.name)
            if m is None:
                raise ValueError(
                    f"label file {lab} does not parse as '{{nnnn}}_{{NN}}_{{scene}}_{{seq:06d}}_"
                    "{frame:06d}_labels.png' (Fishyscapes Lost & Found naming)"
                )
            fid, scene = m.group(2), m.group(3)
            candidates = [
                self.laf_root / "leftImg8bit" / s / scene / f"{fid}_leftImg8bit.png"
                for s in ("train", "test")
            ]
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise FileNotFoundError(
                    f"no LostAndFound image for {lab}: tried {candidates[0]} and {candidates[1]}"
                )
            frames.append(Frame(lab.name[: -len("_labels.png")], found[0], lab))
        super().__init__(
            frames,
            allowed=_CANONICAL,
            lut=_IDENTITY,
            expected=_CANONICAL_TEXT,
            hint="raw LostAndFound labelIds passed instead of Fishyscapes labels",
            transform=transform,
        )
        self._check_full("val", check_full)


class FishyscapesStatic(AnomalyDataset):
    """Fishyscapes Static validation: Cityscapes val images plus ``.npz`` overlays.

    The image of ``fs_val_v{version}/{nnnn}_{city}_{seq}_{frame}_labels.png`` is synthesised as
    ``clip(cityscapes_image + npz["rgb"], 0, 255)`` in a wide integer type, with the Cityscapes
    image ``{cityscapes_root}/leftImg8bit/val/{city}/{city}_{seq}_{frame}_leftImg8bit.png``.

    Args:
        root: Folder holding ``fs_val_v1/``, ``fs_val_v2/``, ``fs_val_v3/`` (or one of them).
        cityscapes_root: Cityscapes root.
        version: 1, 2 or 3 (required: the versions give different numbers; published
            comparisons use 3).
        transform: Optional joint transform.

    Raises:
        ValueError: bad version; npz without key ``rgb``; overlay shape ≠ image shape; label values.
        FileNotFoundError: missing folder, Cityscapes image or overlay.
    """

    def __init__(
        self,
        root: Path | str,
        cityscapes_root: Path | str,
        version: int,
        transform: Transform | None = None,
    ) -> None:
        if version not in (1, 2, 3):
            raise ValueError(f"version must be 1, 2 or 3, got {version!r}")
        self.version = version
        self.root = resolve_root(root, f"fs_val_v{version}")
        self.cityscapes_root = Path(cityscapes_root)
        frames = []
        for lab in scan(self.root, "_labels.png"):
            m = _FS_STATIC_NAME.match(lab.name)
            if m is None:
                raise ValueError(
                    f"label file {lab} does not parse as "
                    "'{nnnn}_{city}_{seq:06d}_{frame:06d}_labels.png' (Fishyscapes Static naming)"
                )
            city, seq, frame = m.group(2), m.group(3), m.group(4)
            img = (
                self.cityscapes_root
                / "leftImg8bit"
                / "val"
                / city
                / f"{city}_{seq}_{frame}_leftImg8bit.png"
            )
            if not img.is_file():
                raise FileNotFoundError(f"Cityscapes val image for {lab} not found: {img}")
            npz = lab.with_name(lab.name[: -len("_labels.png")] + "_rgb.npz")
            if not npz.is_file():
                raise FileNotFoundError(f"overlay for {lab} not found: {npz}")
            frames.append(Frame(lab.name[: -len("_labels.png")], img, lab, extra=npz))
        super().__init__(
            frames,
            allowed=_CANONICAL,
            lut=_IDENTITY,
            expected=_CANONICAL_TEXT,
            hint="Fishyscapes labels hold 0 in-distribution, 1 anomaly, 255 void",
            transform=transform,
        )

    def load_image(self, index: int) -> NDArray[np.uint8]:
        """Synthesise the image of frame ``index``: (H, W, 3) uint8."""
        frame = self.frames[index]
        base = read_image(frame.image_path)
        assert frame.extra is not None
        with np.load(frame.extra) as data:
            if "rgb" not in data.files:
                raise ValueError(
                    f"overlay {frame.extra} has keys {data.files}; expected key 'rgb' "
                    "(signed integer H×W×3)"
                )
            overlay = np.asarray(data["rgb"])
        if overlay.shape != base.shape:
            raise ValueError(
                f"overlay {frame.extra} has shape {overlay.shape}, expected the shape of "
                f"{frame.image_path}: {base.shape}"
            )
        out = np.clip(base.astype(np.int32) + overlay.astype(np.int32), 0, 255)
        return out.astype(np.uint8)


class RoadAnomaly(AnomalyDataset):
    """Road Anomaly (60 frames).

    ``variant="original"``: ``RoadAnomaly_jpg/frame_list.json`` lists the frames;
    ``frames/{name}.jpg`` is paired with ``frames/{name-without-ext}.labels/labels_semantic.png``
    whose values 0 (background) / 2 (anomaly) map to 0 / 1. There is no void.
    ``variant="processed"`` (PEBAL layout): ``road_anomaly/original/{stem}.jpg`` with
    ``road_anomaly/labels/{stem}.png`` already holding 0/1.

    Args:
        root: ``RoadAnomaly_jpg`` / ``road_anomaly`` folder, or their parent.
        variant: ``"original"`` or ``"processed"``.
        transform: Optional joint transform.
        check_full: Compare the frame count with the official 60.

    Raises:
        ValueError: values outside {0, 2} (original) or {0, 1} (processed); bad variant.
        FileNotFoundError: a listed frame without image or label; no frames.
    """

    official_counts: ClassVar[dict[str, int]] = {"test": 60}

    def __init__(
        self,
        root: Path | str,
        variant: Literal["original", "processed"] = "original",
        transform: Transform | None = None,
        check_full: bool = False,
    ) -> None:
        frames = []
        if variant == "original":
            self.root = resolve_root(root, "RoadAnomaly_jpg")
            listing = self.root / "frame_list.json"
            if not listing.is_file():
                raise FileNotFoundError(f"Road Anomaly frame list not found: {listing}")
            names = json.loads(listing.read_text())
            if not isinstance(names, list) or not names:
                raise FileNotFoundError(f"{listing} lists no frames (expected a JSON list)")
            for name in sorted(str(n) for n in names):
                img = self.root / "frames" / name
                # A listed name is a file inside frames/: "../x" or an absolute path would read
                # outside the dataset. Checked on the name, so that symlinked frames (git-annex,
                # DVC) stay readable.
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise ValueError(
                        f"{listing} lists {name!r}, which is not a file inside "
                        f"{self.root / 'frames'}"
                    )
                if not img.is_file():
                    raise FileNotFoundError(f"{listing} lists {name!r} but {img} does not exist")
                lab = self.root / "frames" / f"{Path(name).stem}.labels" / "labels_semantic.png"
                frames.append(Frame(Path(name).stem, img, require_label(img, lab)))
            allowed, expected = allowed_mask([0, 2]), "{0, 2}"
            lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
            lut[0], lut[2] = 0, 1
            hint = "original Road Anomaly labels hold 0 background and 2 anomaly (no 1, no void)"
        elif variant == "processed":
            self.root = resolve_root(root, "road_anomaly")
            for img in scan(self.root / "original", ".jpg"):
                lab = self.root / "labels" / f"{img.stem}.png"
                frames.append(Frame(img.stem, img, require_label(img, lab)))
            allowed, expected, lut = allowed_mask([0, 1]), "{0, 1}", _IDENTITY
            hint = "processed Road Anomaly labels hold 0/1; use variant='original' for 0/2 files"
        else:
            raise ValueError(f"variant must be 'original' or 'processed', got {variant!r}")
        self.variant = variant
        super().__init__(
            frames, allowed=allowed, lut=lut, expected=expected, hint=hint, transform=transform
        )
        self._check_full("test", check_full)


class _SMIYC(AnomalyDataset):
    _folder: ClassVar[str] = ""
    _suffix: ClassVar[str] = ""

    def __init__(
        self,
        root: Path | str,
        split: str = "validation",
        transform: Transform | None = None,
        check_full: bool = False,
    ) -> None:
        if split not in ("validation", "test"):
            raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
        self.root = resolve_root(root, self._folder)
        self.split = split
        frames = []
        for img in scan(self.root / "images", self._suffix):
            fid = img.stem
            if self._split_of(fid) != split:
                continue
            if split == "validation":
                lab = self.root / "labels_masks" / f"{fid}_labels_semantic.png"
                frames.append(Frame(fid, img, require_label(img, lab)))
            else:
                frames.append(Frame(fid, img, None))
        if not frames:
            raise FileNotFoundError(
                f"no {split} frames ending {self._suffix!r} found under {self.root / 'images'}"
            )
        super().__init__(
            frames,
            allowed=_CANONICAL,
            lut=_IDENTITY,
            expected=_CANONICAL_TEXT,
            hint="SMIYC labels hold 0 in-distribution, 1 anomaly/obstacle, 255 void",
            transform=transform,
            has_labels=split == "validation",
        )
        self._check_full(split, check_full)

    @staticmethod
    def _split_of(fid: str) -> str | None:
        return "validation" if fid.startswith("validation") else "test"


class SMIYCAnomalyTrack(_SMIYC):
    """SegmentMeIfYouCan RoadAnomaly21 (``dataset_AnomalyTrack``).

    ``images/{fid}.jpg`` with ``labels_masks/{fid}_labels_semantic.png`` (0/1/255; colour files
    are skipped). Validation = ids starting ``validation`` (10 frames); ``split="test"`` (100
    frames) has no public labels: its samples carry ``label=None`` and `has_labels` is False.

    Args:
        root: ``dataset_AnomalyTrack`` folder or its parent.
        split: ``"validation"`` or ``"test"``.
        transform: Optional joint transform.
        check_full: Compare the frame count with the official count.

    Raises:
        ValueError: bad split; label values outside {0, 1, 255}; a colour label.
        FileNotFoundError: no frames; a validation frame without label.
    """

    _folder: ClassVar[str] = "dataset_AnomalyTrack"
    _suffix: ClassVar[str] = ".jpg"
    official_counts: ClassVar[dict[str, int]] = {"validation": 10, "test": 100}


class SMIYCObstacleTrack(_SMIYC):
    """SegmentMeIfYouCan RoadObstacle21 (``dataset_ObstacleTrack``, WebP images).

    ``images/{fid}.webp`` (alpha dropped) with ``labels_masks/{fid}_labels_semantic.png``
    (0 road, 1 obstacle, 255 off-road void). Validation follows the toolkit: ids starting
    ``validation`` minus those starting ``validation_19`` and ``validation_21`` … ``validation_29``.
    The excluded validation ids belong to neither split. ``split="test"`` is unlabelled
    (``label=None``).

    Args:
        root: ``dataset_ObstacleTrack`` folder or its parent.
        split: ``"validation"`` or ``"test"``.
        transform: Optional joint transform.
        check_full: Compare the frame count with the official count (30 / 327).

    Raises:
        ImportError: Pillow without WebP support.
        ValueError: bad split; label values outside {0, 1, 255}; a colour label.
        FileNotFoundError: no frames; a validation frame without label.
    """

    _folder: ClassVar[str] = "dataset_ObstacleTrack"
    _suffix: ClassVar[str] = ".webp"
    official_counts: ClassVar[dict[str, int]] = {"validation": 30, "test": 327}
    _excluded: ClassVar[tuple[str, ...]] = tuple(f"validation_{n}" for n in (19, *range(21, 30)))

    @staticmethod
    def _split_of(fid: str) -> str | None:
        if not fid.startswith("validation"):
            return "test"
        return None if fid.startswith(SMIYCObstacleTrack._excluded) else "validation"
