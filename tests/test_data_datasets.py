"""Loaders against their fixtures: pairing, values, splits, and every documented rejection."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import gmmseg.data as D
from gmmseg.data.converters import (
    cityscapes_label_ids_to_train_ids,
    cityscapes_train_ids_to_label_ids,
    coco_stuff_raw_to_train_ids,
    convert_cityscapes,
    convert_coco_stuff,
    lostandfound_label_ids_to_anomaly,
    main,
)
from gmmseg.data.meta import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    COCO_STUFF_CLASSES,
    COCO_STUFF_PALETTE,
)
from gmmseg.testing import datasets as F

pytestmark = pytest.mark.cpu_only("datasets decode files with numpy and Pillow on the CPU")


CLOSED = ("cityscapes", "ade20k", "coco_stuff10k", "coco_stuff164k")
NUM_CLASSES = {"cityscapes": 19, "ade20k": 150, "coco_stuff10k": 171, "coco_stuff164k": 171}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fixtures")
    for name in F.FIXTURE_NAMES:
        F.write_fixture(name, root)
    return root


def expected(root: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((root / f"{name}.json").read_text()))


def build(root: Path, name: str, key: str) -> D.SegmentationDataset:
    exp = expected(root, name)
    kwargs = {
        k: (root / name / v if k.endswith("root") else v)
        for k, v in exp["splits"][key]["kwargs"].items()
    }
    cls = getattr(D, exp["loader"])
    ds: D.SegmentationDataset = cls(**kwargs)
    return ds


def all_splits() -> list[tuple[str, str]]:
    # The split keys are fixed by the writers; listed here so parametrisation needs no disk.
    keys = {
        "cityscapes": ("train", "val"),
        "ade20k": ("training", "validation"),
        "coco_stuff10k": ("train2014", "test2014"),
        "coco_stuff164k": ("train2017", "val2017"),
        "fishyscapes_lostandfound": ("val",),
        "fishyscapes_static": ("v1", "v2", "v3"),
        "road_anomaly": ("original", "processed"),
        "smiyc_anomaly_track": ("validation", "test"),
        "smiyc_obstacle_track": ("validation", "test"),
    }
    return [(n, k) for n, ks in keys.items() for k in ks]


@pytest.mark.parametrize(("name", "key"), all_splits())
def test_loader_matches_fixture(fixture_root: Path, name: str, key: str) -> None:
    frames = expected(fixture_root, name)["splits"][key]["frames"]
    ds = build(fixture_root, name, key)
    assert len(ds) == len(frames) >= 2
    assert ds.names == [f["name"] for f in frames]
    for i, f in enumerate(frames):
        s = ds[i]
        assert s["name"] == f["name"]
        assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, *f["shape"])
        assert s["ori_size"] == tuple(f["shape"])
        assert Path(s["image_path"]).is_file()
        if f["label_values"] is None:
            assert s["label"] is None and s["label_path"] == "" and not ds.has_labels
        else:
            assert s["label"] is not None and s["label"].dtype == torch.int64
            assert s["label"].shape == tuple(f["shape"])
            assert torch.unique(s["label"]).tolist() == f["label_values"]
            assert Path(s["label_path"]).is_file()


@pytest.mark.parametrize("name", CLOSED)
def test_closed_set_value_coverage(fixture_root: Path, name: str) -> None:
    """Checklist 3: lowest class, highest class and ignore appear; at least one class is absent."""
    c = NUM_CLASSES[name]
    for split in expected(fixture_root, name)["splits"].values():
        seen = set().union(*(f["label_values"] for f in split["frames"]))
        assert {0, c - 1, 255} <= seen
        assert seen <= set(range(c)) | {255}
        assert len(seen - {255}) < c


@pytest.mark.parametrize(
    "name", [n for n in F.FIXTURE_NAMES if n not in CLOSED and n != "road_anomaly"]
)
def test_anomaly_fixture_coverage(fixture_root: Path, name: str) -> None:
    """Checklist 5: one frame without anomaly; void in every frame of datasets that have void."""
    for split in expected(fixture_root, name)["splits"].values():
        labelled = [f["label_values"] for f in split["frames"] if f["label_values"] is not None]
        if not labelled:
            continue
        assert any(1 not in v for v in labelled) and any(1 in v for v in labelled)
        assert all(255 in v for v in labelled)


def test_road_anomaly_has_no_void(fixture_root: Path) -> None:
    ds = build(fixture_root, "road_anomaly", "original")
    values = set().union(*(set(ds[i]["label"].unique().tolist()) for i in range(len(ds))))  # type: ignore[union-attr]
    assert values == {0, 1}


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", ["cityscapes", "fishyscapes_static", "smiyc_obstacle_track"])
def test_fixture_deterministic(tmp_path: Path, name: str) -> None:
    a = _digest(F.write_fixture(name, tmp_path / "a", seed=3))
    b = _digest(F.write_fixture(name, tmp_path / "b", seed=3))
    c = _digest(F.write_fixture(name, tmp_path / "c", seed=4))
    assert a == b
    assert a != c


def test_fixture_arguments(tmp_path: Path) -> None:
    root = F.write_fixture("cityscapes", tmp_path, num_images=4, size=(48, 96))
    ds = D.Cityscapes(root, "val")
    assert len(ds) == 4 and ds[0]["image"].shape == (3, 48, 96)
    with pytest.raises(ValueError, match="name must be one of"):
        F.write_fixture("kitti", tmp_path)
    with pytest.raises(ValueError, match="num_images"):
        F.write_fixture("road_anomaly", tmp_path, num_images=2)
    with pytest.raises(ValueError, match="size"):
        F.write_fixture("ade20k", tmp_path, size=(8, 8))
    with pytest.raises(ValueError, match="unknown broken fixture"):
        F.write_broken_fixture("ade20k", "nope", tmp_path)


BROKEN = [(n, c) for n, cases in F.BROKEN_CASES.items() for c in cases]


@pytest.mark.parametrize(("name", "case"), BROKEN)
def test_broken_fixture_rejected(tmp_path: Path, name: str, case: str) -> None:
    exc, key = F.BROKEN_CASES[name][case]
    F.write_broken_fixture(name, case, tmp_path)

    def load() -> None:
        ds = build(tmp_path, name, key)
        for i in range(len(ds)):
            ds[i]

    with pytest.raises(exc) as info:
        load()
    assert str(tmp_path) in str(info.value)  # the error names the file or folder


def test_every_dataset_has_broken_cases() -> None:
    assert set(F.BROKEN_CASES) == set(F.FIXTURE_NAMES)


# --------------------------------------------------------------------------- Cityscapes


def test_cityscapes_metadata() -> None:
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[0] == "road"
    assert CITYSCAPES_CLASSES[18] == "bicycle" and CITYSCAPES_PALETTE[13] == (0, 0, 142)
    assert D.Cityscapes.ignore_index == 255
    assert len(ADE20K_CLASSES) == 150 and ADE20K_CLASSES[7] == "bed"
    assert len(COCO_STUFF_CLASSES) == 171 and COCO_STUFF_CLASSES[80] == "banner"
    assert COCO_STUFF_PALETTE[7] == COCO_STUFF_PALETTE[9] == COCO_STUFF_PALETTE[92]


@pytest.mark.parametrize(
    "suffix", ["_gtFine_labelIds.png", "_gtFine_instanceIds.png", "_gtFine_color.png"]
)
def test_cityscapes_rejects_non_train_id_suffix(fixture_root: Path, suffix: str) -> None:
    with pytest.raises(ValueError, match="labelTrainIds"):
        D.Cityscapes(fixture_root / "cityscapes", "val", label_suffix=suffix)


def test_cityscapes_pairs_and_decodes_palette_mode(fixture_root: Path) -> None:
    ds = D.Cityscapes(fixture_root / "cityscapes", "val")
    assert [Path(f.image_path).parent.name for f in ds.frames] == ["frankfurt", "munster"]
    p_mode = [f for f in ds.frames if Image.open(f.label_path).mode == "P"]
    assert len(p_mode) == 1
    i = ds.frames.index(p_mode[0])
    stored = np.asarray(Image.open(p_mode[0].label_path))
    assert np.array_equal(ds[i]["label"].numpy(), stored)  # type: ignore[union-attr]


def test_cityscapes_label_ids_converter_matches_rasterised(fixture_root: Path) -> None:
    for lab_ids in sorted((fixture_root / "cityscapes" / "gtFine").rglob("*_labelIds.png")):
        train = lab_ids.with_name(lab_ids.name.replace("_labelIds", "_labelTrainIds"))
        got = cityscapes_label_ids_to_train_ids(np.asarray(Image.open(lab_ids)))
        assert np.array_equal(got, np.asarray(Image.open(train)))
        poly = lab_ids.with_name(lab_ids.name.replace("_labelIds.png", "_polygons.json"))
        assert np.array_equal(D.rasterize_cityscapes_polygons(poly), got)


def test_cityscapes_converters_values() -> None:
    ids = np.arange(34)
    train = cityscapes_label_ids_to_train_ids(ids)
    assert train[7] == 0 and train[33] == 18 and train[0] == 255 and train[29] == 255
    assert (train != 255).sum() == 19
    back = cityscapes_train_ids_to_label_ids(np.array([0, 13, 18, 255]))
    assert back.tolist() == [7, 26, 33, 0]
    with pytest.raises(ValueError, match="34"):
        cityscapes_label_ids_to_train_ids(np.array([[34, 0]]))
    with pytest.raises(ValueError, match="-1"):
        cityscapes_label_ids_to_train_ids(np.array([-1]))
    with pytest.raises(ValueError, match="19"):
        cityscapes_train_ids_to_label_ids(np.array([19]))
    with pytest.raises(ValueError, match="integer"):
        cityscapes_label_ids_to_train_ids(np.array([1.0]))


def test_convert_cityscapes_writes_train_ids(tmp_path: Path) -> None:
    root = F.write_fixture("cityscapes", tmp_path)
    ref = {p: np.asarray(Image.open(p)).copy() for p in root.rglob("*_labelTrainIds.png")}
    for p in ref:
        p.unlink()
    with pytest.raises(FileNotFoundError, match="converters cityscapes"):
        D.Cityscapes(root, "val")
    assert main(["cityscapes", str(root)]) == 0
    for p, arr in ref.items():
        assert np.array_equal(np.asarray(Image.open(p)), arr)
    assert convert_cityscapes(root, source="polygons", overwrite=True) == len(ref)
    with pytest.raises(FileNotFoundError, match="gtFine"):
        convert_cityscapes(tmp_path / "nowhere")


def test_check_full(fixture_root: Path) -> None:
    with pytest.raises(ValueError, match="500"):
        D.Cityscapes(fixture_root / "cityscapes", "val", check_full=True)
    with pytest.raises(ValueError, match="split"):
        D.Cityscapes(fixture_root / "cityscapes", "validation")


# --------------------------------------------------------------------------- ADE20K


def test_ade20k_zero_label_reduction(fixture_root: Path) -> None:
    ds = D.ADE20K(fixture_root / "ade20k", "val")
    stored = np.asarray(Image.open(ds.frames[0].label_path)).astype(np.int64)
    label = ds[0]["label"]
    assert label is not None
    assert torch.equal(
        label[torch.from_numpy(stored == 0)], torch.full_like(label[stored == 0], 255)
    )
    nz = stored != 0
    assert np.array_equal(label.numpy()[nz], stored[nz] - 1)
    assert {0, 149, 255} <= set(label.unique().tolist())
    sizes = {tuple(ds[i]["image"].shape) for i in range(len(ds))}
    assert len(sizes) == 2  # mixed sizes


# --------------------------------------------------------------------------- COCO-Stuff


def test_coco_stuff_versions(fixture_root: Path) -> None:
    ten = D.COCOStuff(fixture_root / "coco_stuff10k", "test", version="10k")
    assert ten.names[0] == "COCO_train2014_000000000077"
    stored = np.asarray(Image.open(ten.frames[0].label_path))
    assert {0, 1, 171} <= set(np.unique(stored).tolist())
    assert ten[0]["image"].shape[0] == 3
    assert Image.open(ten.frames[1].image_path).mode == "L"  # greyscale JPEG → RGB
    assert ten[1]["image"].shape[0] == 3
    big = D.COCOStuff(fixture_root / "coco_stuff164k", "val", version="164k")
    assert big.names[0] == "000000000139"
    assert big.frames[0].label_path is not None
    assert big.frames[0].label_path.name == "000000000139_labelTrainIds.png"
    raw = np.asarray(Image.open(big.frames[0].label_path.with_name("000000000139.png")))
    assert 181 in raw  # the raw file sits alongside and is not read
    label = big[0]["label"]
    assert label is not None and {0, 170, 255} <= set(label.unique().tolist())
    assert np.array_equal(coco_stuff_raw_to_train_ids(raw, "164k"), label.numpy())


def test_coco_stuff_version_mismatch(fixture_root: Path) -> None:
    with pytest.raises(ValueError, match=r"10k.*164k|164k.*10k"):
        D.COCOStuff(fixture_root / "coco_stuff164k", "val2017", version="10k")
    with pytest.raises(ValueError, match=r"10k.*164k|164k.*10k"):
        D.COCOStuff(fixture_root / "coco_stuff10k", "test2014", version="164k")
    with pytest.raises(ValueError, match=r"10k.*164k|164k.*10k"):
        D.COCOStuff(fixture_root / "coco_stuff164k/coco_stuff164k", "train", version="10k")
    with pytest.raises(ValueError, match="version"):
        D.COCOStuff(fixture_root / "coco_stuff164k", "val", version="1k")  # type: ignore[arg-type]


def test_coco_stuff_raw_conversion_tables() -> None:
    # 164k raw r = c - 1; the first and last kept ids, and each side of a dropped id.
    raw = np.array([0, 10, 12, 181, 255])
    assert coco_stuff_raw_to_train_ids(raw, "164k").tolist() == [0, 10, 11, 170, 255]
    assert coco_stuff_raw_to_train_ids(raw[:4] + 1, "10k").tolist() == [1, 11, 12, 171]
    assert coco_stuff_raw_to_train_ids(np.array([0]), "10k").tolist() == [0]
    for bad, version in ((11, "164k"), (12, "10k"), (182, "164k"), (183, "10k"), (91, "10k")):
        with pytest.raises(ValueError, match=version):
            coco_stuff_raw_to_train_ids(np.array([bad]), version)  # type: ignore[arg-type]
    # The kept ids map onto 0..170 bijectively.
    kept = [c for c in range(1, 183) if c not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}]
    assert coco_stuff_raw_to_train_ids(np.array(kept), "10k").tolist() == list(range(1, 172))


def test_convert_coco_stuff(tmp_path: Path) -> None:
    for version in ("10k", "164k"):
        root = F.write_fixture(f"coco_stuff{version}", tmp_path) / f"coco_stuff{version}"
        ref = {p: np.asarray(Image.open(p)).copy() for p in root.rglob("*_labelTrainIds.png")}
        for p in ref:
            p.unlink()
        with pytest.raises(FileNotFoundError, match="converters coco-stuff"):
            D.COCOStuff(root, "train", version=version)  # type: ignore[arg-type]
        assert convert_coco_stuff(root, version) == len(ref)  # type: ignore[arg-type]
        for p, arr in ref.items():
            assert np.array_equal(np.asarray(Image.open(p)), arr)


# --------------------------------------------------------------------------- anomaly sets


def test_lostandfound_raw_mapping() -> None:
    got = lostandfound_label_ids_to_anomaly(np.array([[0, 1, 2, 43]]))
    assert got.tolist() == [[255, 0, 1, 1]]
    with pytest.raises(ValueError, match="44"):
        lostandfound_label_ids_to_anomaly(np.array([44]))


def test_fishyscapes_laf_searches_both_splits(fixture_root: Path) -> None:
    ds = build(fixture_root, "fishyscapes_lostandfound", "val")
    assert ds.names[0] == "0000_04_Maurener_Weg_8_000000_000030"
    splits = [f.image_path.parent.parent.name for f in ds.frames]
    assert splits == ["test", "train", "train"]


@pytest.mark.parametrize("key", ["v1", "v2", "v3"])
def test_fishyscapes_static_synthesis(fixture_root: Path, key: str) -> None:
    ds = build(fixture_root, "fishyscapes_static", key)
    assert ds.names[0] == "0000_frankfurt_000001_046504"
    for i, f in enumerate(expected(fixture_root, "fishyscapes_static")["splits"][key]["frames"]):
        ref = np.asarray(Image.open(fixture_root / "fishyscapes_static" / f["reference"]))
        got = ds[i]["image"].permute(1, 2, 0).numpy()
        assert np.array_equal(got, ref)
        assert (got[0, 0] == 0).all() and (got[0, 1] == 255).all()  # clipped


def test_fishyscapes_static_version_required(fixture_root: Path) -> None:
    root = fixture_root / "fishyscapes_static"
    with pytest.raises(ValueError, match="version"):
        D.FishyscapesStatic(root, root / "cityscapes", version=4)
    with pytest.raises(TypeError):
        D.FishyscapesStatic(root, root / "cityscapes")  # type: ignore[call-arg]


def test_road_anomaly_mapping(fixture_root: Path) -> None:
    ds = build(fixture_root, "road_anomaly", "original")
    names = json.loads((fixture_root / "road_anomaly/RoadAnomaly_jpg/frame_list.json").read_text())
    assert ds.names == sorted(n[:-4] for n in names)
    stored = np.asarray(Image.open(ds.frames[0].label_path))
    label = ds[0]["label"]
    assert label is not None
    assert np.array_equal(label.numpy(), (stored == 2).astype(np.int64))
    with pytest.raises(ValueError, match="variant"):
        D.RoadAnomaly(fixture_root / "road_anomaly", variant="raw")  # type: ignore[arg-type]


def test_smiyc_splits(fixture_root: Path) -> None:
    ra = build(fixture_root, "smiyc_anomaly_track", "validation")
    assert ra.names[0] == "validation0000" and ra.has_labels
    test = build(fixture_root, "smiyc_anomaly_track", "test")
    assert test.names == ["airplane0000", "cow0000"] and not test.has_labels
    assert "unlabelled" in repr(test)
    ro = build(fixture_root, "smiyc_obstacle_track", "validation")
    assert "validation_19" not in ro.names  # excluded by the toolkit's split
    ro_test = build(fixture_root, "smiyc_obstacle_track", "test")
    assert "validation_19" not in ro_test.names
    with pytest.raises(ValueError, match="split"):
        D.SMIYCAnomalyTrack(fixture_root / "smiyc_anomaly_track", "val")


def test_smiyc_obstacle_rgba_alpha_dropped(fixture_root: Path) -> None:
    ds = build(fixture_root, "smiyc_obstacle_track", "validation")
    i = ds.names.index("validation_1")
    with Image.open(ds.frames[i].image_path) as img:
        assert img.mode == "RGBA"
        rgb = np.asarray(img)[..., :3]
    assert np.array_equal(ds[i]["image"].permute(1, 2, 0).numpy(), rgb)
    label = ds[i]["label"]
    assert label is not None and (label[:, :4] == 255).all()  # off-road border is void


def test_webp_without_decoder(fixture_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gmmseg.data import _io

    monkeypatch.setattr(_io.features, "check", lambda name: False)
    ds = build(fixture_root, "smiyc_obstacle_track", "validation")
    with pytest.raises(ImportError, match="WebP"):
        ds[0]


def test_index_error(fixture_root: Path) -> None:
    ds = build(fixture_root, "ade20k", "validation")
    with pytest.raises(IndexError):
        ds[len(ds)]


@pytest.mark.parametrize("entry", ["../../outside.jpg", "/etc/hostname", "a/../../outside.jpg"])
def test_road_anomaly_frame_list_cannot_leave_the_dataset(tmp_path: Path, entry: str) -> None:
    # Before: a "../" entry of frame_list.json read a file outside the dataset folder.
    F.write_fixture("road_anomaly", tmp_path)
    exp = expected(tmp_path, "road_anomaly")
    kwargs = {
        k: (tmp_path / "road_anomaly" / v if k.endswith("root") else v)
        for k, v in exp["splits"]["original"]["kwargs"].items()
    }
    listing = next(Path(kwargs["root"]).rglob("frame_list.json"))
    outside = listing.parent.parent / "outside.jpg"
    outside.write_bytes(b"not part of the dataset")
    names = json.loads(listing.read_text())
    listing.write_text(json.dumps([*names, entry]))
    with pytest.raises(ValueError, match="not a file inside"):
        D.RoadAnomaly(**kwargs)


def test_road_anomaly_reads_symlinked_frames(tmp_path: Path) -> None:
    # Found in review: resolving symlinks refused frames kept in git-annex / DVC stores.
    F.write_fixture("road_anomaly", tmp_path)
    exp = expected(tmp_path, "road_anomaly")
    kwargs = {
        k: (tmp_path / "road_anomaly" / v if k.endswith("root") else v)
        for k, v in exp["splits"]["original"]["kwargs"].items()
    }
    plain = D.RoadAnomaly(**kwargs)
    first = Path(plain.frames[0].image_path)
    store = tmp_path / "annex" / "blob.jpg"
    store.parent.mkdir()
    first.rename(store)
    first.symlink_to(store)
    linked = D.RoadAnomaly(**kwargs)
    assert torch.equal(linked[0]["image"], plain[0]["image"])


@pytest.mark.parametrize("stem", ["../../escape", "/tmp/escape", ".."])
def test_convert_coco_stuff_10k_list_cannot_leave_the_dataset(tmp_path: Path, stem: str) -> None:
    # A path in imageLists/*.txt read a .mat and wrote a PNG outside the dataset folder.
    root = F.write_fixture("coco_stuff10k", tmp_path) / "coco_stuff10k"
    lst = root / "imageLists" / "train.txt"
    lst.write_text(lst.read_text() + f"\n{stem}\n")
    for p in root.rglob("*_labelTrainIds.png"):
        p.unlink()
    with pytest.raises(ValueError, match="which is not a file name"):
        convert_coco_stuff(root, "10k")
    assert not list(tmp_path.glob("escape*"))
