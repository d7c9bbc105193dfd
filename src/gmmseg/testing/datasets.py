"""Miniature copies of every supported dataset, in the exact real on-disk layouts.

`write_fixture` writes tiny images and labels that mimic the real files in folder names,
file names, formats (PNG/JPEG/WebP/NPZ/JSON/MAT), image modes and label values. Next to each
fixture root it writes ``{name}.json`` with the expected frame ids, shapes and label-value sets,
and the loader arguments (paths relative to the fixture root), so tests compare against data
rather than literals. `write_broken_fixture` writes a copy with one documented
defect, for the rejection tests.

Examples:
    >>> from gmmseg.data import Cityscapes
    >>> root = write_fixture("cityscapes", tmp_path)  # doctest: +SKIP
    >>> Cityscapes(root, "val")[0]["image"].shape  # doctest: +SKIP
    torch.Size([3, 32, 64])
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from gmmseg.data.converters import (
    COCO_STUFF_ID_TO_TRAIN_ID,
    coco_stuff_raw_to_train_ids,
    rasterize_cityscapes_polygons,
)
from gmmseg.data.meta import (
    ADE20K_PALETTE,
    CITYSCAPES_LABELS,
    COCO_STUFF_PALETTE,
    IGNORE_INDEX,
)

__all__ = ["BROKEN_CASES", "FIXTURE_NAMES", "write_broken_fixture", "write_fixture"]

U8 = NDArray[np.uint8]
Size = tuple[int, int]

#: Fixture names accepted by `write_fixture`.
FIXTURE_NAMES: tuple[str, ...] = (
    "cityscapes",
    "ade20k",
    "coco_stuff10k",
    "coco_stuff164k",
    "fishyscapes_lostandfound",
    "fishyscapes_static",
    "road_anomaly",
    "smiyc_anomaly_track",
    "smiyc_obstacle_track",
)

_DEFAULT_SIZE: dict[str, Size] = {
    "cityscapes": (32, 64),
    "ade20k": (40, 48),
    "coco_stuff10k": (40, 56),
    "coco_stuff164k": (48, 40),
    "fishyscapes_lostandfound": (32, 64),
    "fishyscapes_static": (32, 64),
    "road_anomaly": (36, 64),
    "smiyc_anomaly_track": (32, 64),
    "smiyc_obstacle_track": (36, 64),
}
_DEFAULT_NUM = {name: 3 for name in FIXTURE_NAMES} | {
    "cityscapes": 2,
    "ade20k": 2,
    "coco_stuff10k": 2,
    "coco_stuff164k": 2,
}


# --------------------------------------------------------------------------- drawing helpers


def _lut(palette: Sequence[tuple[int, int, int]], offset: int = 0) -> NDArray[np.int16]:
    lut = np.zeros((256, 3), dtype=np.int16)
    lut[offset : offset + len(palette)] = np.asarray(palette, dtype=np.int16)
    lut[IGNORE_INDEX] = (0, 0, 0)
    return lut


def _blocks(rng: np.random.Generator, size: Size, values: Sequence[int], n: int) -> U8:
    """A label map of random rectangles drawn from ``values``."""
    h, w = size
    out = np.full(size, int(rng.choice(values)), dtype=np.uint8)
    for _ in range(n):
        y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
        y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
        out[y0:y1, x0:x1] = int(rng.choice(values))
    return out


def _patch(label: U8, value: int, corner: int) -> None:
    """Paint a (H/4, W/4) patch of ``value`` at one of four corners (0 TL, 1 TR, 2 BL, 3 BR)."""
    h, w = label.shape
    ph, pw = max(1, h // 4), max(1, w // 4)
    y = 0 if corner in (0, 1) else h - ph
    x = 0 if corner in (0, 2) else w - pw
    label[y : y + ph, x : x + pw] = value


def _image(rng: np.random.Generator, colours: NDArray[np.int16], label: U8) -> U8:
    """An RGB image whose colour follows the label (so alignment can be checked), plus noise."""
    noise = rng.integers(-12, 13, size=(*label.shape, 3))
    out: U8 = np.clip(colours[label] + noise, 0, 255).astype(np.uint8)
    return out


def _save_label(label: U8, path: Path, palette_mode: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette_mode:
        img = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
        pal = np.random.default_rng(0).integers(0, 256, size=768).astype(np.uint8)
        img.putpalette(pal.tolist())
        img.save(path)
    else:
        Image.fromarray(np.ascontiguousarray(label)).save(path)


def _save_image(img: U8, path: Path, **kwargs: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(img)).save(path, **kwargs)


def _mixed_size(base: Size, i: int) -> Size:
    """Alternate the base size with a transposed, slightly larger one (variable-size datasets)."""
    return base if i % 2 == 0 else (base[1] + 8, base[0])


class _Expected:
    """Collects the expected content of a fixture and writes ``{name}.json``."""

    def __init__(self, name: str, loader: str, seed: int) -> None:
        self.data: dict[str, Any] = {"name": name, "loader": loader, "seed": seed, "splits": {}}

    def split(self, key: str, kwargs: dict[str, Any]) -> None:
        self.data["splits"][key] = {"kwargs": kwargs, "frames": []}

    def frame(self, key: str, name: str, size: Size, label: U8 | None, **extra: Any) -> None:
        values = None if label is None else sorted(int(v) for v in np.unique(label))
        entry = {"name": name, "shape": list(size), "label_values": values, **extra}
        self.data["splits"][key]["frames"].append(entry)

    def write(self, root: Path) -> None:
        for split in self.data["splits"].values():
            split["frames"].sort(key=lambda f: f["sort_key"] if "sort_key" in f else f["name"])
            for f in split["frames"]:
                f.pop("sort_key", None)
        (root.parent / f"{root.name}.json").write_text(json.dumps(self.data, indent=1) + "\n")


# --------------------------------------------------------------------------- closed-set writers

_CS_BY_NAME = {lab.name: lab for lab in CITYSCAPES_LABELS}
_CS_COLOUR_BY_ID = np.zeros((256, 3), dtype=np.int16)
for _lab in CITYSCAPES_LABELS:
    if _lab.id >= 0:
        _CS_COLOUR_BY_ID[_lab.id] = _lab.color
#: Cityscapes label names drawn by the fixture; "train" (train id 16) is deliberately absent.
_CS_POOL = [
    lab.name for lab in CITYSCAPES_LABELS if lab.id >= 0 and lab.train_id != 16 and lab.id != 0
]


def _rect(y0: int, x0: int, y1: int, x1: int) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _write_cityscapes(
    root: Path, n: int, size: Size, rng: np.random.Generator, exp: _Expected
) -> None:
    h, w = size
    cities = {"train": ("aachen", "bochum"), "val": ("frankfurt", "munster")}
    stems_txt: dict[str, list[str]] = {}
    for split, (c0, c1) in cities.items():
        exp.split(split, {"root": ".", "split": split})
        stems_txt[split] = []
        for i in range(n):
            city = (c0, c1)[i % 2]
            if split == "val" and i == 0:
                stem = "frankfurt_000000_000294"
            else:
                stem = f"{city}_{i // 2:06d}_{19 + 20 * i:06d}"
            objects: list[dict[str, Any]] = [
                {"label": "out of roi", "polygon": _rect(0, 0, h - 1, w - 1)},
                {"label": str(rng.choice(_CS_POOL)), "polygon": _rect(0, 0, h - 1, w - 1)},
            ]
            for _ in range(4):
                y0, x0 = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
                y1, x1 = int(rng.integers(y0 + 1, h)), int(rng.integers(x0 + 1, w))
                objects.append(
                    {"label": str(rng.choice(_CS_POOL)), "polygon": _rect(y0, x0, y1, x1)}
                )
            # lowest class, highest class (as a "group"), ignore, and a never-drawn licence plate.
            objects.append({"label": "road", "polygon": _rect(h - h // 4, 0, h - 1, w // 4)})
            objects.append(
                {"label": "bicyclegroup", "polygon": _rect(0, w - w // 4, h // 4, w - 1)}
            )
            objects.append(
                {"label": "ego vehicle", "polygon": _rect(h - 3, w // 3, h - 1, w - w // 3)}
            )
            objects.append({"label": "license plate", "polygon": _rect(1, 1, 4, 6)})
            gt = root / "gtFine" / split / city
            gt.mkdir(parents=True, exist_ok=True)
            poly = gt / f"{stem}_gtFine_polygons.json"
            poly.write_text(
                json.dumps({"imgHeight": h, "imgWidth": w, "objects": objects}, indent=1)
            )
            train_ids = rasterize_cityscapes_polygons(poly, "train_ids")
            label_ids = rasterize_cityscapes_polygons(poly, "label_ids")
            _save_label(train_ids, gt / f"{stem}_gtFine_labelTrainIds.png", palette_mode=i == 1)
            _save_label(label_ids, gt / f"{stem}_gtFine_labelIds.png")
            colour = _CS_COLOUR_BY_ID[label_ids].astype(np.uint8)
            _save_image(colour, gt / f"{stem}_gtFine_color.png")
            inst = label_ids.astype(np.uint16) * np.uint16(1000 if i % 2 else 1)
            Image.fromarray(inst).save(gt / f"{stem}_gtFine_instanceIds.png")
            img = _image(rng, _CS_COLOUR_BY_ID, label_ids)
            _save_image(img, root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            exp.frame(split, stem, size, train_ids, sort_key=f"{city}/{stem}")
            stems_txt[split].append(f"{city}/{stem}")
    for split, stems in stems_txt.items():
        (root / f"{split}.txt").write_text("".join(f"{s}\n" for s in sorted(stems)))


def _write_ade20k(root: Path, n: int, size: Size, rng: np.random.Generator, exp: _Expected) -> None:
    base = root / "ADEChallengeData2016"
    colours = _lut(ADE20K_PALETTE, offset=1)
    pool = [v for v in range(1, 151) if v != 76]  # stored 76 (train id 75) is absent everywhere
    for split, prefix, key in (
        ("training", "ADE_train", "training"),
        ("validation", "ADE_val", "validation"),
    ):
        exp.split(key, {"root": ".", "split": split})
        for i in range(n):
            sz = _mixed_size(size, i)
            stem = f"{prefix}_{i + 1:08d}"
            lab = _blocks(rng, sz, pool, 5)
            _patch(lab, 0, 0)
            _patch(lab, 1 if i % 2 == 0 else 150, 3)
            if i == 0:
                _patch(lab, 150, 1)
            _save_label(lab, base / "annotations" / split / f"{stem}.png")
            _save_image(
                _image(rng, colours, lab), base / "images" / split / f"{stem}.jpg", quality=90
            )
            train = np.where(lab == 0, IGNORE_INDEX, lab.astype(np.int64) - 1).astype(np.uint8)
            exp.frame(key, stem, sz, train)
    (base / "sceneCategories.txt").write_text(
        "".join(f"ADE_val_{i + 1:08d} street\n" for i in range(n))
    )
    (base / "objectInfo150.txt").write_text(
        "Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n"
    )


def _coco_inverse() -> NDArray[np.int64]:
    inv = np.zeros(256, dtype=np.int64)  # train id k → COCO-Stuff id c; 255 → 0 (unlabeled)
    for c in range(1, 183):
        k = int(COCO_STUFF_ID_TO_TRAIN_ID[c])
        if k >= 0:
            inv[k] = c
    return inv


def _coco_train_ids(rng: np.random.Generator, size: Size, i: int) -> U8:
    pool = [k for k in range(171) if k != 100]  # train id 100 ("door-stuff") is absent everywhere
    lab = _blocks(rng, size, pool, 5)
    _patch(lab, IGNORE_INDEX, 0)
    _patch(lab, 0 if i % 2 == 0 else 170, 3)
    if i == 0:
        _patch(lab, 170, 1)
    return lab


def _write_coco10k(
    root: Path, n: int, size: Size, rng: np.random.Generator, exp: _Expected
) -> None:
    from scipy.io import savemat

    base = root / "coco_stuff10k"
    colours = _lut(COCO_STUFF_PALETTE, offset=1)
    inv = _coco_inverse()
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for split, key, first in (("train2014", "train", 9), ("test2014", "test", 77)):
        exp.split(split, {"root": ".", "split": split, "version": "10k"})
        for i in range(n):
            sz = _mixed_size(size, i)
            stem = f"COCO_train2014_{first + 13 * i:012d}"
            k = _coco_train_ids(rng, sz, i)
            s = inv[k].astype(np.uint16)  # the .mat variable S holds c, 0 = unlabeled
            (base / "annotations").mkdir(parents=True, exist_ok=True)
            savemat(str(base / "annotations" / f"{stem}.mat"), {"S": s})
            converted = coco_stuff_raw_to_train_ids(s, "10k")
            _save_label(converted, base / "annotations" / split / f"{stem}_labelTrainIds.png")
            img = _image(rng, colours, converted)
            if i == 1:  # COCO holds some greyscale JPEGs
                grey = np.asarray(Image.fromarray(img).convert("L"))
                _save_image(grey, base / "images" / split / f"{stem}.jpg", quality=90)
            else:
                _save_image(img, base / "images" / split / f"{stem}.jpg", quality=90)
            exp.frame(split, stem, sz, k)
            lists[key].append(stem)
    lst = base / "imageLists"
    lst.mkdir(parents=True, exist_ok=True)
    for key, stems in lists.items():
        (lst / f"{key}.txt").write_text("".join(f"{s}\n" for s in stems))
    (lst / "all.txt").write_text("".join(f"{s}\n" for s in sorted(lists["train"] + lists["test"])))


def _write_coco164k(
    root: Path, n: int, size: Size, rng: np.random.Generator, exp: _Expected
) -> None:
    base = root / "coco_stuff164k"
    colours = _lut(COCO_STUFF_PALETTE)
    inv = _coco_inverse()
    for split, first in (("train2017", 9), ("val2017", 139)):
        exp.split(split, {"root": ".", "split": split, "version": "164k"})
        for i in range(n):
            sz = _mixed_size(size, i)
            stem = f"{first + 146 * i:012d}"
            k = _coco_train_ids(rng, sz, i)
            c = inv[k]
            raw = np.where(k == IGNORE_INDEX, IGNORE_INDEX, c - 1).astype(np.uint8)
            ann = base / "annotations" / split
            _save_label(raw, ann / f"{stem}.png")
            _save_label(coco_stuff_raw_to_train_ids(raw, "164k"), ann / f"{stem}_labelTrainIds.png")
            _save_image(
                _image(rng, colours, k), base / "images" / split / f"{stem}.jpg", quality=90
            )
            exp.frame(split, stem, sz, k)


# --------------------------------------------------------------------------- anomaly writers

_ANOMALY_COLOURS = np.zeros((256, 3), dtype=np.int16)
_ANOMALY_COLOURS[0] = (128, 64, 128)  # road-like
_ANOMALY_COLOURS[1] = (230, 120, 20)  # the object
_ANOMALY_COLOURS[2] = (230, 120, 20)
_ANOMALY_COLOURS[IGNORE_INDEX] = (70, 130, 180)  # sky / off-road


def _anomaly_label(
    rng: np.random.Generator, size: Size, anomaly: bool, void: bool, anomaly_value: int = 1
) -> U8:
    """0 road in the lower part, 255 void above (if ``void``), one anomaly box on the road."""
    h, w = size
    lab = np.zeros(size, dtype=np.uint8)
    if void:
        lab[: h // 3] = IGNORE_INDEX
        lab[:, : max(1, w // 16)] = IGNORE_INDEX
    if anomaly:
        y0 = int(rng.integers(h // 3 + 1, h - h // 4))
        x0 = int(rng.integers(w // 8, w // 2))
        lab[y0 : y0 + h // 5 + 1, x0 : x0 + w // 5 + 1] = anomaly_value
        if void:  # a void gap inside the anomaly
            lab[y0, x0] = IGNORE_INDEX
    return lab


def _write_fs_laf(root: Path, n: int, size: Size, rng: np.random.Generator, exp: _Expected) -> None:
    scenes = (
        ("test", "04_Maurener_Weg_8"),
        ("train", "01_Hanns_Klemm_Str_45"),
        ("train", "13_Elly_Beinhorn_Str"),
    )
    exp.split("val", {"root": "fishyscapes_lostandfound", "laf_root": "LostAndFound"})
    gamma = PngInfo()
    gamma.add(b"gAMA", (45455).to_bytes(4, "big"))  # as LostAndFound PNGs (ignored when decoding)
    for i in range(n):
        split, scene = scenes[i % 3]
        fid = f"{scene}_{i // 3:06d}_{30 + 10 * i:06d}"
        name = f"{i:04d}_{fid}"
        lab = _anomaly_label(rng, size, anomaly=i % 3 != 2, void=True)
        _save_label(lab, root / "fishyscapes_lostandfound" / f"{name}_labels.png")
        img = _image(rng, _ANOMALY_COLOURS, lab)
        out = root / "LostAndFound" / "leftImg8bit" / split / scene / f"{fid}_leftImg8bit.png"
        _save_image(img, out, pnginfo=gamma)
        exp.frame("val", name, size, lab)
    (root / "fishyscapes_lostandfound" / "README.txt").write_text(
        "Fishyscapes Lost & Found labels\n"
    )


def _write_fs_static(
    root: Path, n: int, size: Size, rng: np.random.Generator, exp: _Expected
) -> None:
    frames = [
        ("frankfurt", "000001", "046504"),
        ("lindau", "000000", "000019"),
        ("munster", "000000", "000019"),
    ]
    frames += [("frankfurt", "000001", f"{60000 + i:06d}") for i in range(max(0, n - 3))]
    for version in (1, 2, 3):
        exp.split(f"v{version}", {"root": ".", "cityscapes_root": "cityscapes", "version": version})
    for i in range(n):
        city, seq, frame = frames[i]
        base_lab = _blocks(rng, size, [0, 255], 2)
        img = _image(rng, _CS_COLOUR_BY_ID, np.where(base_lab == 0, 7, 23).astype(np.uint8))
        _save_image(
            img,
            root
            / "cityscapes"
            / "leftImg8bit"
            / "val"
            / city
            / f"{city}_{seq}_{frame}_leftImg8bit.png",
        )
        for version in (1, 2, 3):
            lab = _anomaly_label(rng, size, anomaly=i != 2, void=True)
            target = _image(rng, _ANOMALY_COLOURS, lab).astype(np.int16)
            overlay = np.where((lab == 1)[..., None], target - img.astype(np.int16), 0).astype(
                np.int16
            )
            overlay[0, 0] = (-300, -300, -300)  # drives pixels below 0 and above 255: clipped
            overlay[0, 1] = (300, 300, 300)
            stem = f"{i:04d}_{city}_{seq}_{frame}"
            folder = root / f"fs_val_v{version}"
            folder.mkdir(parents=True, exist_ok=True)
            _save_label(lab, folder / f"{stem}_labels.png")
            np.savez_compressed(folder / f"{stem}_rgb.npz", rgb=overlay)
            expected = np.clip(img.astype(np.int32) + overlay, 0, 255).astype(np.uint8)
            ref = root / "reference" / f"fs_val_v{version}" / f"{stem}_image.png"
            _save_image(expected, ref)
            exp.frame(f"v{version}", stem, size, lab, reference=str(ref.relative_to(root)))


_RA_NAMES = (
    "animals01_Guiguinto_railway_station_Calves.jpg",
    "vehicles03_Sheffield_tractor.jpg",
    "cones01_Urban_street.jpg",
)


def _write_road_anomaly(
    root: Path, n: int, size: Size, rng: np.random.Generator, exp: _Expected
) -> None:
    ra = root / "RoadAnomaly_jpg"
    names = [_RA_NAMES[i] if i < 3 else f"animals{10 + i:02d}_Extra_frame.jpg" for i in range(n)]
    exp.split("original", {"root": ".", "variant": "original"})
    exp.split("processed", {"root": ".", "variant": "processed"})
    for i, name in enumerate(names):
        stem = name[: -len(".jpg")]
        raw = _anomaly_label(rng, size, anomaly=i != 2, void=False, anomaly_value=2)
        img = _image(rng, _ANOMALY_COLOURS, raw)
        _save_image(img, ra / "frames" / name, quality=90)
        labels = ra / "frames" / f"{stem}.labels"
        _save_label(raw, labels / "labels_semantic.png")
        canonical = (raw == 2).astype(np.uint8)
        if i == 0:  # the files next to it that the loader must ignore
            _save_image(
                _ANOMALY_COLOURS[raw].astype(np.uint8), labels / "labels_semantic_color.png"
            )
            _save_label(canonical, labels / "labels_instance.png")
            (labels / "index.json").write_text(json.dumps({"instances": [{"id": 1}]}))
        _save_image(img, root / "road_anomaly" / "original" / name, quality=90)
        _save_label(canonical, root / "road_anomaly" / "labels" / f"{stem}.png")
        exp.frame("original", stem, size, canonical)
        exp.frame("processed", stem, size, canonical)
    (ra / "frame_list.json").write_text(json.dumps(names, indent=1))


def _write_smiyc(
    root: Path, n: int, size: Size, rng: np.random.Generator, exp: _Expected, obstacle: bool
) -> None:
    folder = root / ("dataset_ObstacleTrack" if obstacle else "dataset_AnomalyTrack")
    ext = ".webp" if obstacle else ".jpg"
    exp.split("validation", {"root": ".", "split": "validation"})
    exp.split("test", {"root": ".", "split": "test"})
    val = [f"validation_{i + 1}" if obstacle else f"validation{i:04d}" for i in range(n)]
    test = ["curvy-street_0000", "gravel_0001"] if obstacle else ["airplane0000", "cow0000"]
    extra = ["validation_19"] if obstacle else []  # excluded from the toolkit's validation split
    for i, fid in enumerate(val + extra + test):
        labelled = not fid.startswith(tuple(test))
        lab = _anomaly_label(rng, size, anomaly=i != 1, void=True)
        if obstacle:  # RO21: everything off the road is void
            w = size[1]
            lab[:, : w // 4] = IGNORE_INDEX
            lab[:, w - w // 4 :] = IGNORE_INDEX
        img = _image(rng, _ANOMALY_COLOURS, lab)
        path = folder / "images" / f"{fid}{ext}"
        if obstacle and i == 0:  # RGBA WebP, to test that alpha is dropped
            rgba = np.concatenate([img, np.full((*size, 1), 200, np.uint8)], axis=-1)
            _save_image(rgba, path, lossless=True)
        elif obstacle:
            _save_image(img, path, quality=90)
        else:
            _save_image(img, path, quality=90)
        if labelled:
            _save_label(lab, folder / "labels_masks" / f"{fid}_labels_semantic.png")
            colour = np.full((*size, 3), 255, np.uint8)
            colour[lab == 1] = (255, 102, 0)
            colour[lab == IGNORE_INDEX] = 0
            _save_image(colour, folder / "labels_masks" / f"{fid}_labels_semantic_color.png")
        if fid in val:
            exp.frame("validation", fid, size, lab)
        elif fid in test:
            exp.frame("test", fid, size, None)


# --------------------------------------------------------------------------- public API

_Writer = Callable[[Path, int, Size, np.random.Generator, _Expected], None]
_WRITERS: dict[str, tuple[str, _Writer]] = {
    "cityscapes": ("Cityscapes", _write_cityscapes),
    "ade20k": ("ADE20K", _write_ade20k),
    "coco_stuff10k": ("COCOStuff", _write_coco10k),
    "coco_stuff164k": ("COCOStuff", _write_coco164k),
    "fishyscapes_lostandfound": ("FishyscapesLostAndFound", _write_fs_laf),
    "fishyscapes_static": ("FishyscapesStatic", _write_fs_static),
    "road_anomaly": ("RoadAnomaly", _write_road_anomaly),
    "smiyc_anomaly_track": (
        "SMIYCAnomalyTrack",
        lambda r, n, s, g, e: _write_smiyc(r, n, s, g, e, obstacle=False),
    ),
    "smiyc_obstacle_track": (
        "SMIYCObstacleTrack",
        lambda r, n, s, g, e: _write_smiyc(r, n, s, g, e, obstacle=True),
    ),
}


def write_fixture(
    name: str,
    root: Path | str,
    num_images: int | None = None,
    size: tuple[int, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a miniature copy of a dataset in its real layout.

    The fixture is written to ``root/name`` and described by ``root/name.json``: for each split
    (or loader configuration) the loader keyword arguments (paths relative to the fixture root)
    and the expected frames (``name``, ``shape`` (H, W), ``label_values`` after the loader's
    mapping, or None for unlabelled frames).

    Args:
        name: One of `FIXTURE_NAMES`.
        root: Parent folder.
        num_images: Frames per split (≥ 2; anomaly fixtures need ≥ 3 for an anomaly-free frame).
            Defaults to 2 (closed-set) or 3 (anomaly).
        size: (H, W) of the images, e.g. ``(1024, 2048)`` for Cityscapes size; variable-size
            datasets alternate it with a transposed size. Defaults to tens of pixels with the real
            aspect ratio. H and W must be ≥ 16.
        seed: Seed of the content; the same arguments always write the same bytes.

    Returns:
        The fixture root ``root/name``.

    Raises:
        ValueError: unknown ``name``, ``num_images`` < 2 (< 3 for anomaly sets), or ``size`` < 16.
    """
    if name not in _WRITERS:
        raise ValueError(f"name must be one of {FIXTURE_NAMES}, got {name!r}")
    n = _DEFAULT_NUM[name] if num_images is None else int(num_images)
    min_n = 2 if name in ("cityscapes", "ade20k", "coco_stuff10k", "coco_stuff164k") else 3
    if n < min_n:
        raise ValueError(f"num_images for {name!r} must be >= {min_n}, got {num_images}")
    sz = _DEFAULT_SIZE[name] if size is None else (int(size[0]), int(size[1]))
    if min(sz) < 16:
        raise ValueError(f"size must be (H, W) with H, W >= 16, got {size}")
    loader, writer = _WRITERS[name]
    out = Path(root) / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    exp = _Expected(name, loader, seed)
    writer(out, n, sz, np.random.default_rng(seed), exp)
    exp.write(out)
    return out


# --------------------------------------------------------------------------- broken copies


def _first(root: Path, pattern: str) -> Path:
    found = sorted(root.rglob(pattern))
    if not found:
        raise FileNotFoundError(f"no {pattern} under {root}")
    return found[0]


def _rewrite(path: Path, fn: Callable[[U8], U8]) -> None:
    with Image.open(path) as img:
        arr = np.asarray(img).copy()
    Image.fromarray(fn(arr)).save(path)


def _set_value(pattern: str, value: int) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        def paint(a: U8) -> U8:
            a[1:3, 1:3] = value
            return a

        _rewrite(_first(root, pattern), paint)

    return corrupt


def _delete(pattern: str) -> Callable[[Path], None]:
    return lambda root: _first(root, pattern).unlink()


def _rgb_label(pattern: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = _first(root, pattern)
        _rewrite(path, lambda a: np.stack([a, a, a], axis=-1))

    return corrupt


def _shrink(pattern: str) -> Callable[[Path], None]:
    return lambda root: _rewrite(_first(root, pattern), lambda a: a[:-2, :-2].copy())


def _empty(folder: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        for p in (root / folder).rglob("*"):
            if p.is_file():
                p.unlink()

    return corrupt


def _copy_over(src_pattern: str, dst_pattern: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        shutil.copyfile(_first(root, src_pattern), _first(root, dst_pattern))

    return corrupt


def _npz(fn: Callable[[NDArray[np.int16]], dict[str, NDArray[np.int16]]]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = _first(root / "fs_val_v3", "*_rgb.npz")
        with np.load(path) as data:
            rgb = np.asarray(data["rgb"])
        arrays: dict[str, Any] = fn(rgb)
        np.savez_compressed(path, **arrays)

    return corrupt


def _bad_laf_name(root: Path) -> None:
    src = _first(root, "*_labels.png")
    shutil.copyfile(src, src.with_name("not-a-frame_labels.png"))


def _bad_frame_list(root: Path) -> None:
    listing = root / "RoadAnomaly_jpg" / "frame_list.json"
    names = json.loads(listing.read_text())
    listing.write_text(json.dumps([*names, "missing01_Not_there.jpg"]))


_CS_VAL = "gtFine/val/*/*_gtFine_labelTrainIds.png"
_ADE_VAL = "annotations/validation/*.png"
_RA_LABEL = "frames/*.labels/labels_semantic.png"
_SMIYC_LABEL = "labels_masks/validation*_labels_semantic.png"
_RO21_LABEL = "labels_masks/validation_1_labels_semantic.png"

#: Per fixture: broken case → (exception type, the split key of ``{name}.json`` it breaks, corrupt).
_BROKEN: dict[str, dict[str, tuple[type[Exception], str, Callable[[Path], None]]]] = {
    "cityscapes": {
        "missing_label": (FileNotFoundError, "val", _delete(_CS_VAL)),
        "label_ids": (ValueError, "val", _copy_over("gtFine/val/*/*_gtFine_labelIds.png", _CS_VAL)),
        "rgb_label": (ValueError, "val", _copy_over("gtFine/val/*/*_gtFine_color.png", _CS_VAL)),
        "size_mismatch": (ValueError, "val", _shrink(_CS_VAL)),
        "empty": (FileNotFoundError, "val", _empty("leftImg8bit/val")),
    },
    "ade20k": {
        "value_151": (ValueError, "validation", _set_value(_ADE_VAL, 151)),
        "missing_label": (FileNotFoundError, "validation", _delete(_ADE_VAL)),
        "rgb_label": (ValueError, "validation", _rgb_label(_ADE_VAL)),
        "size_mismatch": (ValueError, "validation", _shrink(_ADE_VAL)),
        "empty": (
            FileNotFoundError,
            "validation",
            _empty("ADEChallengeData2016/images/validation"),
        ),
    },
    "coco_stuff10k": {
        "value_172": (ValueError, "test2014", _set_value("annotations/test2014/*.png", 172)),
        "missing_label": (FileNotFoundError, "test2014", _delete("annotations/test2014/*.png")),
        "rgb_label": (ValueError, "test2014", _rgb_label("annotations/test2014/*.png")),
    },
    "coco_stuff164k": {
        "value_171": (
            ValueError,
            "val2017",
            _set_value("annotations/val2017/*_labelTrainIds.png", 171),
        ),
        "missing_converted": (
            FileNotFoundError,
            "val2017",
            _delete("annotations/val2017/*_labelTrainIds.png"),
        ),
        "raw_as_converted": (
            ValueError,
            "val2017",
            _copy_over(
                "annotations/val2017/000000000139.png", "annotations/val2017/*_labelTrainIds.png"
            ),
        ),
    },
    "fishyscapes_lostandfound": {
        "raw_label_ids": (ValueError, "val", _set_value("*_labels.png", 2)),
        "missing_image": (FileNotFoundError, "val", _delete("*_leftImg8bit.png")),
        "bad_name": (ValueError, "val", _bad_laf_name),
        "rgb_label": (ValueError, "val", _rgb_label("*_labels.png")),
    },
    "fishyscapes_static": {
        "no_rgb_key": (ValueError, "v3", _npz(lambda rgb: {"overlay": rgb})),
        "overlay_shape": (ValueError, "v3", _npz(lambda rgb: {"rgb": rgb[:-1]})),
        "missing_image": (FileNotFoundError, "v3", _delete("cityscapes/leftImg8bit/val/*/*.png")),
        "value_2": (ValueError, "v3", _set_value("fs_val_v3/*_labels.png", 2)),
    },
    "road_anomaly": {
        "value_1": (ValueError, "original", _set_value(_RA_LABEL, 1)),
        "missing_label": (FileNotFoundError, "original", _delete(_RA_LABEL)),
        "missing_image": (FileNotFoundError, "original", _bad_frame_list),
        "size_mismatch": (ValueError, "original", _shrink(_RA_LABEL)),
    },
    "smiyc_anomaly_track": {
        "value_2": (ValueError, "validation", _set_value(_SMIYC_LABEL, 2)),
        "missing_label": (FileNotFoundError, "validation", _delete(_SMIYC_LABEL)),
        "rgb_label": (
            ValueError,
            "validation",
            _copy_over("labels_masks/validation*_color.png", _SMIYC_LABEL),
        ),
    },
    "smiyc_obstacle_track": {
        "value_2": (ValueError, "validation", _set_value(_RO21_LABEL, 2)),
        "missing_label": (FileNotFoundError, "validation", _delete(_RO21_LABEL)),
    },
}

#: Per fixture name: broken case → (expected exception type, split key of ``{name}.json``).
BROKEN_CASES: dict[str, dict[str, tuple[type[Exception], str]]] = {
    name: {case: (exc, split) for case, (exc, split, _) in cases.items()}
    for name, cases in _BROKEN.items()
}


def write_broken_fixture(name: str, case: str, root: Path | str, seed: int = 0) -> Path:
    """Write a fixture with one documented defect.

    Loading the split named in `BROKEN_CASES` with the arguments of ``{name}.json`` (at
    construction or when reading the frames) raises the listed exception.

    Args:
        name: One of `FIXTURE_NAMES`.
        case: A key of ``BROKEN_CASES[name]``, e.g. ``"missing_label"``.
        root: Parent folder (use a different one from the intact fixture).
        seed: Seed of the content.

    Returns:
        The fixture root ``root/name``.

    Raises:
        ValueError: unknown ``name`` or ``case``.
    """
    if name not in _BROKEN or case not in _BROKEN[name]:
        known = sorted(_BROKEN.get(name, {}))
        raise ValueError(f"unknown broken fixture {name!r}/{case!r}; cases for {name!r}: {known}")
    out = write_fixture(name, root, seed=seed)
    _BROKEN[name][case][2](out)
    return out
