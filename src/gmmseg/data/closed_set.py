"""Closed-set loaders: Cityscapes, ADE20K, COCO-Stuff 10k / 164k."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from gmmseg.data._io import allowed_mask
from gmmseg.data.base import (
    Frame,
    SegmentationDataset,
    Transform,
    require_label,
    resolve_root,
    scan,
)
from gmmseg.data.meta import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    COCO_STUFF_CLASSES,
    COCO_STUFF_PALETTE,
    IGNORE_INDEX,
)

__all__ = ["ADE20K", "COCOStuff", "Cityscapes"]

_IDENTITY = np.arange(256, dtype=np.uint8)
_REDUCE_ZERO = np.concatenate([[IGNORE_INDEX], np.arange(255)]).astype(np.uint8)
_CITYSCAPES_FORBIDDEN = ("_gtFine_labelIds.png", "_gtFine_instanceIds.png", "_gtFine_color.png")


def _split_folder(split: str, aliases: dict[str, str], dataset: str) -> str:
    if split not in aliases:
        raise ValueError(f"{dataset}: split must be one of {sorted(aliases)}, got {split!r}")
    return aliases[split]


class Cityscapes(SegmentationDataset):
    """Cityscapes gtFine with the 19 train classes.

    Layout: ``{root}/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` paired with
    ``{root}/gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png`` (values 0–18 and 255;
    generate them with `convert_cityscapes`).

    Args:
        root: Cityscapes root (holding ``leftImg8bit/`` and ``gtFine/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: Optional joint transform.
        label_suffix: Suffix of the train-id label files.
        check_full: Compare the frame count with the official count (2975 / 500 / 1525).

    Raises:
        ValueError: ``label_suffix`` names labelIds, instanceIds or colour files; bad label values.
        FileNotFoundError: missing split folder, no images, or an image without its label.

    Examples:
        >>> ds = Cityscapes("/data/cityscapes", "val")  # doctest: +SKIP
        >>> ds[0]["label"].shape  # doctest: +SKIP
        torch.Size([1024, 2048])
    """

    classes: ClassVar[tuple[str, ...]] = CITYSCAPES_CLASSES
    palette: ClassVar[tuple[tuple[int, int, int], ...]] = CITYSCAPES_PALETTE
    official_counts: ClassVar[dict[str, int]] = {"train": 2975, "val": 500, "test": 1525}

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        transform: Transform | None = None,
        label_suffix: str = "_gtFine_labelTrainIds.png",
        check_full: bool = False,
    ) -> None:
        if label_suffix.endswith(_CITYSCAPES_FORBIDDEN):
            raise ValueError(
                f"label_suffix {label_suffix!r} names a file that does not hold train ids; "
                "expected '_gtFine_labelTrainIds.png' (generate it from *_gtFine_labelIds.png "
                "with gmmseg.data.converters.convert_cityscapes)"
            )
        split = _split_folder(split, {s: s for s in ("train", "val", "test")}, "Cityscapes")
        self.root = Path(root)
        self.split = split
        img_dir = self.root / "leftImg8bit" / split
        frames = []
        for img in scan(img_dir, "_leftImg8bit.png"):
            rel = img.relative_to(img_dir)
            stem = img.name[: -len("_leftImg8bit.png")]
            lab = self.root / "gtFine" / split / rel.parent / f"{stem}{label_suffix}"
            hint = ""
            if not lab.exists() and lab.with_name(f"{stem}_gtFine_labelIds.png").exists():
                hint = (
                    " (only *_gtFine_labelIds.png found: run "
                    "`python -m gmmseg.data.converters cityscapes ROOT` first)"
                )
            frames.append(Frame(stem, img, require_label(img, lab, hint)))
        super().__init__(
            frames,
            allowed=allowed_mask([*range(19), IGNORE_INDEX]),
            lut=_IDENTITY,
            expected="{0, …, 18} ∪ {255}",
            hint=(
                "this looks like a `*_gtFine_labelIds.png` file (34 ids); generate "
                "`*_gtFine_labelTrainIds.png` first"
            ),
            transform=transform,
        )
        self._check_full(split, check_full)


class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing (``ADEChallengeData2016``), 150 classes.

    Stored value 0 ("other") becomes 255 and v ∈ 1…150 becomes train id v − 1 (the zero-label
    reduction happens exactly once, here).

    Args:
        root: ``ADEChallengeData2016`` folder or its parent.
        split: ``"training"`` / ``"train"`` or ``"validation"`` / ``"val"``.
        transform: Optional joint transform.
        check_full: Compare the frame count with the official count (20210 / 2000).

    Raises:
        ValueError: unknown split; label values above 150.
        FileNotFoundError: missing folder, no images, or an image without its annotation.
    """

    classes: ClassVar[tuple[str, ...]] = ADE20K_CLASSES
    palette: ClassVar[tuple[tuple[int, int, int], ...]] = ADE20K_PALETTE
    official_counts: ClassVar[dict[str, int]] = {"training": 20210, "validation": 2000}

    def __init__(
        self,
        root: Path | str,
        split: str = "training",
        transform: Transform | None = None,
        check_full: bool = False,
    ) -> None:
        aliases = {"train": "training", "training": "training"}
        aliases.update({"val": "validation", "validation": "validation"})
        split = _split_folder(split, aliases, "ADE20K")
        self.root = resolve_root(root, "ADEChallengeData2016")
        self.split = split
        img_dir = self.root / "images" / split
        frames = []
        for img in scan(img_dir, ".jpg"):
            lab = self.root / "annotations" / split / img.relative_to(img_dir).with_suffix(".png")
            frames.append(Frame(img.stem, img, require_label(img, lab)))
        super().__init__(
            frames,
            allowed=allowed_mask(range(151)),
            lut=_REDUCE_ZERO,
            expected="{0, …, 150}",
            hint=(
                "raw ADE20K annotations hold 0–150; a value of 255 means the file was already "
                "reduced or is not an ADE20K annotation"
            ),
            transform=transform,
        )
        self._check_full(split, check_full)


_COCO_SPLITS: dict[str, dict[str, str]] = {
    "10k": {
        "train": "train2014",
        "train2014": "train2014",
        "test": "test2014",
        "test2014": "test2014",
    },
    "164k": {
        "train": "train2017",
        "train2017": "train2017",
        "val": "val2017",
        "val2017": "val2017",
    },
}


class COCOStuff(SegmentationDataset):
    """COCO-Stuff 10k or 164k with 171 classes, read from the converted ``*_labelTrainIds.png``.

    | version | image folders            | file values           | train id       |
    | ------- | ------------------------ | --------------------- | -------------- |
    | 10k     | ``train2014``/``test2014`` | 0–171 (0 = unlabeled) | v − 1; 0 → 255 |
    | 164k    | ``train2017``/``val2017``  | 0–170, 255            | v              |

    Labels: ``annotations/{split}/{stem}_labelTrainIds.png`` (never the raw ``{stem}.png``).

    Args:
        root: ``coco_stuff10k`` / ``coco_stuff164k`` folder or its parent.
        split: ``"train"``/``"test"`` (10k, = ``train2014``/``test2014``) or ``"train"``/``"val"``
            (164k, = ``train2017``/``val2017``).
        version: ``"10k"`` or ``"164k"`` (the zero-label convention differs).
        transform: Optional joint transform.
        check_full: Compare the frame count with the official count.

    Raises:
        ValueError: unknown version; split of the other version; label values out of range.
        FileNotFoundError: missing folder, no images, or a missing converted label (with a hint
            to run the converter when the raw annotation exists).
    """

    classes: ClassVar[tuple[str, ...]] = COCO_STUFF_CLASSES
    palette: ClassVar[tuple[tuple[int, int, int], ...]] = COCO_STUFF_PALETTE
    official_counts: ClassVar[dict[str, int]] = {
        "train2014": 9000,
        "test2014": 1000,
        "train2017": 118287,
        "val2017": 5000,
    }

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        version: Literal["10k", "164k"] = "164k",
        transform: Transform | None = None,
        check_full: bool = False,
    ) -> None:
        if version not in _COCO_SPLITS:
            raise ValueError(f"version must be '10k' or '164k', got {version!r}")
        other = "164k" if version == "10k" else "10k"
        if split in _COCO_SPLITS[other] and split not in _COCO_SPLITS[version]:
            raise ValueError(
                f"COCOStuff(version={version!r}) got split {split!r}, a COCO-Stuff {other} split; "
                f"10k uses train2014/test2014 (file value = train id + 1) and 164k uses "
                f"train2017/val2017 (file value = train id): pass the matching version"
            )
        split = _split_folder(split, _COCO_SPLITS[version], f"COCOStuff {version}")
        self.root = resolve_root(root, f"coco_stuff{version}")
        self.split = split
        self.version = version
        img_dir = self.root / "images" / split
        if not img_dir.is_dir():
            present = sorted(p.name for p in (self.root / "images").glob("*") if p.is_dir())
            if any(p in _COCO_SPLITS[other].values() for p in present):
                raise ValueError(
                    f"COCOStuff(version={version!r}): {self.root / 'images'} holds {present}, the "
                    f"split folders of COCO-Stuff {other}; the 10k and 164k label conventions "
                    "differ by one, pass the matching version"
                )
        ann_dir = self.root / "annotations"
        frames = []
        for img in scan(img_dir, ".jpg"):
            lab = ann_dir / split / f"{img.stem}_labelTrainIds.png"
            hint = ""
            raw = (ann_dir / split / f"{img.stem}.png", ann_dir / f"{img.stem}.mat")
            if not lab.exists() and any(r.exists() for r in raw):
                hint = (
                    f" (found the raw annotation only: run `python -m gmmseg.data.converters "
                    f"coco-stuff {self.root} --version {version}` first)"
                )
            frames.append(Frame(img.stem, img, require_label(img, lab, hint)))
        if version == "10k":
            allowed, lut, expected = allowed_mask(range(172)), _REDUCE_ZERO, "{0, …, 171}"
        else:
            allowed = allowed_mask([*range(171), IGNORE_INDEX])
            lut, expected = _IDENTITY, "{0, …, 170} ∪ {255}"
        super().__init__(
            frames,
            allowed=allowed,
            lut=lut,
            expected=expected,
            hint=(
                f"not a converted COCO-Stuff {version} train-id file (raw annotations must be "
                "converted with gmmseg.data.converters.convert_coco_stuff; 10k and 164k files "
                "differ by one)"
            ),
            transform=transform,
        )
        self._check_full(split, check_full)
