"""Label converters: Cityscapes labelIds → trainIds and COCO-Stuff raw ids → train ids.

The array functions are pure and strict: a value that cannot occur in the source format raises
instead of being mapped to ignore. The ``convert_*`` functions write the converted files in the
layout the loaders read, and are callable from the command line::

    python -m gmmseg.data.converters cityscapes /data/cityscapes
    python -m gmmseg.data.converters coco-stuff /data/coco_stuff164k --version 164k
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from gmmseg.data._io import read_label
from gmmseg.data.meta import CITYSCAPES_LABELS, COCO_STUFF_DROPPED_IDS, IGNORE_INDEX

__all__ = [
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "COCO_STUFF_ID_TO_TRAIN_ID",
    "cityscapes_label_ids_to_train_ids",
    "cityscapes_train_ids_to_label_ids",
    "coco_stuff_raw_to_train_ids",
    "convert_cityscapes",
    "convert_coco_stuff",
    "lostandfound_label_ids_to_anomaly",
    "main",
    "rasterize_cityscapes_polygons",
]

CocoStuffVersion = Literal["10k", "164k"]


def _cityscapes_lut() -> NDArray[np.uint8]:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in CITYSCAPES_LABELS:
        if lab.id >= 0:
            lut[lab.id] = lab.train_id
    return lut


def _coco_lut() -> NDArray[np.int64]:
    lut = np.full(183, -1, dtype=np.int64)
    k = 0
    for c in range(1, 183):
        if c not in COCO_STUFF_DROPPED_IDS:
            lut[c] = k
            k += 1
    return lut


#: (256,) uint8: Cityscapes label id → train id (255 for ignored ids; entries ≥ 34 unused).
CITYSCAPES_ID_TO_TRAIN_ID: NDArray[np.uint8] = _cityscapes_lut()
#: (183,) int64: COCO-Stuff id c (1–182) → train id k (0–170); −1 for 0 and the dropped ids.
COCO_STUFF_ID_TO_TRAIN_ID: NDArray[np.int64] = _coco_lut()


def _as_uint8_array(x: NDArray[np.integer], name: str) -> NDArray[np.int64]:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _bad_values(arr: NDArray[np.int64], ok: NDArray[np.bool_]) -> str:
    vals, counts = np.unique(arr[~ok], return_counts=True)
    return ", ".join(f"{int(v)} ({int(c)} px)" for v, c in zip(vals[:10], counts[:10], strict=True))


def cityscapes_label_ids_to_train_ids(label_ids: NDArray[np.integer]) -> NDArray[np.uint8]:
    """Map a Cityscapes ``*_gtFine_labelIds.png`` array to train ids.

    Args:
        label_ids: (H, W) integer array of label ids 0–33.

    Returns:
        (H, W) uint8 train ids: 0–18, and 255 for ids ignored in evaluation.

    Raises:
        ValueError: a value outside 0–33 (not a labelIds file).

    Examples:
        >>> cityscapes_label_ids_to_train_ids(np.array([[7, 0], [26, 33]])).tolist()
        [[0, 255], [13, 18]]
    """
    arr = _as_uint8_array(label_ids, "label_ids")
    ok = (arr >= 0) & (arr <= 33)
    if not ok.all():
        raise ValueError(
            f"label_ids must hold Cityscapes label ids 0–33, got {_bad_values(arr, ok)}"
        )
    return CITYSCAPES_ID_TO_TRAIN_ID[arr]


def cityscapes_train_ids_to_label_ids(train_ids: NDArray[np.integer]) -> NDArray[np.uint8]:
    """Inverse map for submissions: train id → label id (the first label in list order wins).

    Args:
        train_ids: (H, W) integer array with values 0–18 or 255.

    Returns:
        (H, W) uint8 label ids; 255 maps to 0 ("unlabeled").

    Raises:
        ValueError: a value outside {0, …, 18} ∪ {255}.
    """
    arr = _as_uint8_array(train_ids, "train_ids")
    ok = ((arr >= 0) & (arr <= 18)) | (arr == IGNORE_INDEX)
    if not ok.all():
        raise ValueError(f"train_ids must hold 0–18 or 255, got {_bad_values(arr, ok)}")
    inv = np.zeros(256, dtype=np.uint8)
    for lab in reversed(CITYSCAPES_LABELS):
        if lab.id >= 0:
            inv[lab.train_id] = lab.id
    inv[IGNORE_INDEX] = 0
    return inv[arr]


def lostandfound_label_ids_to_anomaly(label_ids: NDArray[np.integer]) -> NDArray[np.uint8]:
    """Map raw LostAndFound ``*_gtCoarse_labelIds.png`` values to the canonical anomaly label.

    For the on-road protocol only: 0 (unlabeled / ego / out of region) → 255, 1 (free road) → 0,
    2–43 (obstacles) → 1.

    Args:
        label_ids: (H, W) integer array with values 0–43.

    Returns:
        (H, W) uint8 with 0 / 1 / 255.

    Raises:
        ValueError: a value outside 0–43.
    """
    arr = _as_uint8_array(label_ids, "label_ids")
    ok = (arr >= 0) & (arr <= 43)
    if not ok.all():
        raise ValueError(
            f"label_ids must hold LostAndFound label ids 0–43, got {_bad_values(arr, ok)}"
        )
    lut = np.ones(44, dtype=np.uint8)
    lut[0], lut[1] = IGNORE_INDEX, 0
    return lut[arr]


def rasterize_cityscapes_polygons(
    path: Path, kind: Literal["train_ids", "label_ids"] = "train_ids"
) -> NDArray[np.uint8]:
    """Rasterise a Cityscapes ``*_gtFine_polygons.json`` file.

    The canvas (the JSON's ``imgWidth`` × ``imgHeight``) is filled with 255 (train ids) or 0
    ("unlabeled", label ids) and painted polygon by polygon in file order. Objects marked
    ``"deleted": 1`` (annotation-tool leftovers) and labels with id −1 are skipped, as
    cityscapesscripts does; a trailing ``group`` in a label name is removed before lookup.

    Args:
        path: The polygons JSON file.
        kind: ``"train_ids"`` or ``"label_ids"``.

    Returns:
        (H, W) uint8 label map.

    Raises:
        ValueError: an unknown label name or ``kind``.
    """
    if kind not in ("train_ids", "label_ids"):
        raise ValueError(f"kind must be 'train_ids' or 'label_ids', got {kind!r}")
    data = json.loads(Path(path).read_text())
    by_name = {lab.name: lab for lab in CITYSCAPES_LABELS}
    fill = IGNORE_INDEX if kind == "train_ids" else 0
    canvas = Image.new("L", (int(data["imgWidth"]), int(data["imgHeight"])), fill)
    draw = ImageDraw.Draw(canvas)
    for obj in data["objects"]:
        if obj.get("deleted", 0):
            continue
        name = str(obj["label"])
        if name not in by_name and name.endswith("group"):
            name = name[: -len("group")]
        if name not in by_name:
            raise ValueError(f"{path}: unknown Cityscapes label {obj['label']!r}")
        lab = by_name[name]
        if lab.id < 0:
            continue
        value = lab.train_id if kind == "train_ids" else lab.id
        draw.polygon([(float(x), float(y)) for x, y in obj["polygon"]], fill=value)
    out: NDArray[np.uint8] = np.array(canvas, dtype=np.uint8)
    return out


def coco_stuff_raw_to_train_ids(
    raw: NDArray[np.integer], version: CocoStuffVersion
) -> NDArray[np.uint8]:
    """Convert raw COCO-Stuff annotations to the ``*_labelTrainIds.png`` values.

    | version | input value                          | written value |
    | ------- | ------------------------------------ | ------------- |
    | 164k    | r = c − 1 (0–181, not dropped); 255  | k; 255        |
    | 10k     | c (1–182, not dropped); 0            | k + 1; 0      |

    Args:
        raw: (H, W) integer array: the 164k stuffthingmaps PNG values, or the 10k ``.mat`` ``S``.
        version: ``"10k"`` or ``"164k"``.

    Returns:
        (H, W) uint8: 164k → 0–170 and 255; 10k → 0–171 (0 = unlabeled).

    Raises:
        ValueError: a dropped id, a value outside the raw range, or an unknown ``version``.
    """
    arr = _as_uint8_array(raw, "raw")
    if version == "164k":
        c = np.where(arr == IGNORE_INDEX, 0, arr + 1)
        ok = ((arr >= 0) & (arr <= 181)) | (arr == IGNORE_INDEX)
    elif version == "10k":
        c = arr
        ok = (arr >= 0) & (arr <= 182)
    else:
        raise ValueError(f"version must be '10k' or '164k', got {version!r}")
    if not ok.all():
        raise ValueError(f"raw COCO-Stuff {version} values out of range: {_bad_values(arr, ok)}")
    k = COCO_STUFF_ID_TO_TRAIN_ID[c]
    dropped = (k < 0) & (c > 0)
    if dropped.any():
        raise ValueError(
            f"raw COCO-Stuff {version} array holds dropped (never annotated) ids: "
            f"{_bad_values(arr, ~dropped)}"
        )
    unlabeled = IGNORE_INDEX if version == "164k" else 0
    out = np.where(c == 0, unlabeled, k if version == "164k" else k + 1)
    return out.astype(np.uint8)


def _write_png(arr: NDArray[np.uint8], path: Path) -> None:
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(path)


def convert_cityscapes(
    root: Path,
    splits: Sequence[str] = ("train", "val", "test"),
    source: Literal["label_ids", "polygons"] = "label_ids",
    overwrite: bool = False,
) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_labelIds.png`` (or polygons).

    Args:
        root: Cityscapes root (holding ``gtFine/``).
        splits: Splits to convert; missing split folders are skipped.
        source: Convert from ``*_gtFine_labelIds.png`` or rasterise ``*_gtFine_polygons.json``.
        overwrite: Rewrite existing files.

    Returns:
        Number of files written.

    Raises:
        FileNotFoundError: ``root/gtFine`` does not exist.
    """
    gt = Path(root) / "gtFine"
    if not gt.is_dir():
        raise FileNotFoundError(f"Cityscapes annotation folder not found: {gt}")
    suffix = "_gtFine_labelIds.png" if source == "label_ids" else "_gtFine_polygons.json"
    written = 0
    for split in splits:
        for src in sorted((gt / split).rglob(f"*{suffix}")):
            dst = src.with_name(src.name[: -len(suffix)] + "_gtFine_labelTrainIds.png")
            if dst.exists() and not overwrite:
                continue
            if source == "label_ids":
                out = cityscapes_label_ids_to_train_ids(read_label(src))
            else:
                out = rasterize_cityscapes_polygons(src, "train_ids")
            _write_png(out, dst)
            written += 1
    return written


def convert_coco_stuff(root: Path, version: CocoStuffVersion, overwrite: bool = False) -> int:
    """Write the ``*_labelTrainIds.png`` files of COCO-Stuff 10k or 164k.

    164k: every raw ``annotations/{split}/{stem}.png`` gets ``{stem}_labelTrainIds.png`` alongside.
    10k: every ``annotations/{stem}.mat`` listed in ``imageLists/{train,test}.txt`` is written to
    ``annotations/{train2014,test2014}/{stem}_labelTrainIds.png``.

    Args:
        root: ``coco_stuff164k`` or ``coco_stuff10k`` folder.
        version: ``"10k"`` or ``"164k"``.
        overwrite: Rewrite existing files.

    Returns:
        Number of files written.

    Raises:
        FileNotFoundError: the annotation folder (or a listed ``.mat``) is missing.
        ValueError: an unknown ``version`` or invalid raw values.
    """
    ann = Path(root) / "annotations"
    if not ann.is_dir():
        raise FileNotFoundError(f"COCO-Stuff annotation folder not found: {ann}")
    written = 0
    if version == "164k":
        for src in sorted(ann.glob("*/*.png")):
            if src.stem.endswith("_labelTrainIds"):
                continue
            dst = src.with_name(f"{src.stem}_labelTrainIds.png")
            if dst.exists() and not overwrite:
                continue
            _write_png(coco_stuff_raw_to_train_ids(read_label(src), "164k"), dst)
            written += 1
    elif version == "10k":
        from scipy.io import loadmat

        for list_name, split in (("train", "train2014"), ("test", "test2014")):
            lst = Path(root) / "imageLists" / f"{list_name}.txt"
            if not lst.is_file():
                continue
            (ann / split).mkdir(exist_ok=True)
            for stem in lst.read_text().split():
                # A listed stem names a file in annotations/: a path would read and write
                # outside the dataset.
                if Path(stem).name != stem or stem in (".", ".."):
                    raise ValueError(f"{lst} lists {stem!r}, which is not a file name")
                src = ann / f"{stem}.mat"
                dst = ann / split / f"{stem}_labelTrainIds.png"
                if dst.exists() and not overwrite:
                    continue
                if not src.is_file():
                    raise FileNotFoundError(f"{lst} lists {stem} but {src} does not exist")
                raw = np.asarray(loadmat(str(src))["S"])
                _write_png(coco_stuff_raw_to_train_ids(raw, "10k"), dst)
                written += 1
    else:
        raise ValueError(f"version must be '10k' or '164k', got {version!r}")
    return written


def main(argv: Sequence[str] | None = None, prog: str = "python -m gmmseg.data.converters") -> int:
    """Command-line entry point (``gmmseg convert`` or ``python -m gmmseg.data.converters``).

    Args:
        argv: Arguments; ``sys.argv[1:]`` when None.
        prog: Program name shown in usage messages.

    Returns:
        Exit status 0.
    """
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="dataset", required=True)
    cs = sub.add_parser("cityscapes", help="write *_gtFine_labelTrainIds.png")
    cs.add_argument("root", type=Path)
    cs.add_argument("--source", choices=("label_ids", "polygons"), default="label_ids")
    cs.add_argument("--overwrite", action="store_true")
    co = sub.add_parser("coco-stuff", help="write *_labelTrainIds.png")
    co.add_argument("root", type=Path)
    co.add_argument("--version", choices=("10k", "164k"), required=True)
    co.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.dataset == "cityscapes":
        n = convert_cityscapes(args.root, source=args.source, overwrite=args.overwrite)
    else:
        n = convert_coco_stuff(args.root, args.version, overwrite=args.overwrite)
    print(f"wrote {n} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
