"""Folder datasets (your own data): pairing, label conventions, class files, every rejection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from gmmseg.data import ClassList, FolderAnomaly, FolderDataset, read_class_file
from gmmseg.data.folder import parse_label_map
from gmmseg.data.meta import ANOMALY_CLASSES
from gmmseg.testing import write_anomaly_folder_fixture, write_folder_fixture

pytestmark = pytest.mark.cpu_only("datasets decode files with numpy and Pillow on the CPU")

PALETTE = [(128, 64, 128), (0, 0, 142), (70, 130, 180)]


def _image(path: Path, h: int = 6, w: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(len(str(path))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _label(path: Path, values: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        img = Image.frombytes("P", values.shape[::-1], values.astype(np.uint8).tobytes())
        img.putpalette([(i * 7) % 256 for i in range(768)])
        img.save(path)
    elif mode == "I;16":
        Image.fromarray(values.astype(np.uint16)).save(path)
    else:
        Image.fromarray(values.astype(np.uint8)).save(path)


def _values(seed: int, high: int, h: int = 6, w: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (h, w)).astype(np.uint8)


# --- pairing -------------------------------------------------------------------------------


def test_pairs_by_relative_folder_and_stem_in_sorted_order(tmp_path: Path) -> None:
    stored = {}
    for i, rel in enumerate(["b/x", "a/z", "a/y"]):
        _image(tmp_path / "images" / "train" / f"{rel}.jpg")
        stored[rel.split("/")[1]] = _values(i, 3)
        _label(tmp_path / "labels" / "train" / f"{rel}.png", stored[rel.split("/")[1]])
    ds = FolderDataset(tmp_path, "train", ["a", "b", "c"])
    assert ds.names == ["y", "z", "x"]  # sorted by relative path: a/y, a/z, b/x
    for i, name in enumerate(ds.names):
        sample = ds[i]
        assert sample["label"].dtype == torch.int64
        np.testing.assert_array_equal(sample["label"].numpy(), stored[name])
        assert sample["image"].shape == (3, 6, 8)
    assert ds.classes == ("a", "b", "c")
    assert len(ds) == 3


def test_no_split_folder_and_suffixes_in_one_folder(tmp_path: Path) -> None:
    _image(tmp_path / "data" / "f1.png")
    _label(tmp_path / "data" / "f1_label.png", _values(0, 2))
    ds = FolderDataset(
        tmp_path,
        "",
        ["a", "b"],
        image_dir="data",
        label_dir="data",
        image_suffix=".png",
        label_suffix="_label.png",
    )
    assert ds.names == ["f1"]  # the label file is not taken for an image
    np.testing.assert_array_equal(ds[0]["label"].numpy(), _values(0, 2))


def test_any_image_ending_by_default_and_other_files_ignored(tmp_path: Path) -> None:
    for name in ("a.JPG", "b.png", "c.webp"):
        _image(tmp_path / "images" / name)
        _label(tmp_path / "labels" / f"{Path(name).stem}.png", _values(0, 2))
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    ds = FolderDataset(tmp_path, "", ["a", "b"])
    assert ds.names == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("setup", "error", "match"),
    [
        ("no_images_dir", FileNotFoundError, r"image folder not found: .*images[/\\]train"),
        ("no_labels_dir", FileNotFoundError, r"label folder not found: .*labels[/\\]train"),
        ("empty", FileNotFoundError, "no images ending"),
        ("missing_label", FileNotFoundError, r"image .*a\.jpg has no label: expected .*a\.png"),
        ("duplicate", ValueError, "share the name 'a'"),
    ],
)
def test_layout_errors(tmp_path: Path, setup: str, error: type, match: str) -> None:
    if setup != "no_images_dir":
        (tmp_path / "images" / "train").mkdir(parents=True)
    if setup != "no_labels_dir":
        (tmp_path / "labels" / "train").mkdir(parents=True)
    if setup in ("missing_label", "duplicate", "no_labels_dir"):
        _image(tmp_path / "images" / "train" / "a.jpg")
    if setup == "duplicate":
        _label(tmp_path / "labels" / "train" / "a.png", _values(0, 2))
        _image(tmp_path / "images" / "train" / "sub" / "a.jpg")
        _label(tmp_path / "labels" / "train" / "sub" / "a.png", _values(0, 2))
    with pytest.raises(error, match=match):
        FolderDataset(tmp_path, "train", ["a", "b"])


def test_bad_suffix_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label_suffix must start with"):
        FolderDataset(tmp_path, "train", ["a"], label_suffix="png")
    _image(tmp_path / "data" / "f.png")
    with pytest.raises(ValueError, match=r"share the folder .* and the suffix '\.png'"):
        FolderDataset(tmp_path, "", ["a"], image_dir="data", label_dir="data", image_suffix=".png")


# --- label values --------------------------------------------------------------------------


def _one(tmp_path: Path, values: np.ndarray, mode: str = "L") -> Path:
    _image(tmp_path / "images" / "f.jpg", *values.shape)
    path = tmp_path / "labels" / "f.png"
    _label(path, values, mode)
    return path


def test_value_outside_class_range_names_file_values_and_expected(tmp_path: Path) -> None:
    values = _values(0, 3)
    values[0, :3] = 7
    values[1, 0] = 254
    path = _one(tmp_path, values)
    ds = FolderDataset(tmp_path, "", ["a", "b", "c"])
    with pytest.raises(ValueError, match="holds values outside") as err:
        ds[0]
    text = str(err.value)
    assert "\n" not in text
    assert str(path) in text
    assert "7 (3 px)" in text and "254 (1 px)" in text
    assert "{0, …, 2} ∪ {255}" in text
    assert "3 classes" in text


def test_ignore_255_and_palette_mode_indices_pass(tmp_path: Path) -> None:
    values = _values(1, 3)
    values[2, :] = 255
    _one(tmp_path, values, mode="P")
    label = FolderDataset(tmp_path, "", ["a", "b", "c"])[0]["label"].numpy()
    np.testing.assert_array_equal(label, values)


def test_sixteen_bit_label_refused(tmp_path: Path) -> None:
    _one(tmp_path, _values(1, 3), mode="I;16")
    with pytest.raises(ValueError, match="expected a single-channel 8-bit"):
        FolderDataset(tmp_path, "", ["a", "b", "c"])[0]


def test_reduce_zero_label_against_a_plain_loop(tmp_path: Path) -> None:
    values = _values(2, 4)  # 0 = ignore, 1..3 = classes 0..2
    values[0, 0] = 255
    _one(tmp_path, values)
    got = FolderDataset(tmp_path, "", ["a", "b", "c"], reduce_zero_label=True)[0]["label"]
    want = np.empty_like(values)
    for (y, x), v in np.ndenumerate(values):
        want[y, x] = 255 if v in (0, 255) else v - 1
    np.testing.assert_array_equal(got.numpy(), want)
    values[1, 1] = 4
    _label(tmp_path / "labels" / "f.png", values)
    with pytest.raises(ValueError, match=r"reduce_zero_label\): 4 \(1 px\)") as err:
        FolderDataset(tmp_path, "", ["a", "b", "c"], reduce_zero_label=True)[0]
    hint = str(err.value).split("Hint: ")[1]
    assert hint == (
        "the class list has 3 classes, stored as 1…3 (class v − 1) with 0 and 255 ignore "
        "(reduce_zero_label)"
    )
    # without reduce_zero_label the stored values are the train ids
    values[1, 1] = 3
    _label(tmp_path / "labels" / "f.png", values)
    with pytest.raises(
        ValueError, match=r"Hint: the class list has 3 classes \(train ids 0…2, ignore 255\)$"
    ):
        FolderDataset(tmp_path, "", ["a", "b", "c"])[0]


def test_classes_is_a_required_argument(tmp_path: Path) -> None:
    write_folder_fixture(tmp_path, ("a", "b"), splits=(("train", 1),))
    with pytest.raises(TypeError, match="classes"):
        FolderDataset(tmp_path, "train")  # type: ignore[call-arg]


# --- colour labels -------------------------------------------------------------------------


def _colour_label(tmp_path: Path, ids: np.ndarray, colours: list, void=(0, 0, 0)) -> Path:
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    for (y, x), v in np.ndenumerate(ids):
        rgb[y, x] = void if v == 255 else colours[v]
    _image(tmp_path / "images" / "f.jpg", *ids.shape)
    path = tmp_path / "labels" / "f.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def test_colour_labels_through_the_palette(tmp_path: Path) -> None:
    ids = _values(3, 3)
    ids[0, :2] = 255
    _colour_label(tmp_path, ids, PALETTE)
    info = ClassList(("a", "b", "c"), tuple(PALETTE), ((0, 0, 0),))
    np.testing.assert_array_equal(FolderDataset(tmp_path, "", info)[0]["label"].numpy(), ids)


def test_colour_label_with_unknown_colour_names_it(tmp_path: Path) -> None:
    ids = _values(3, 3)
    path = _colour_label(tmp_path, ids, PALETTE)
    rgb = np.asarray(Image.open(path)).copy()
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    ds = FolderDataset(tmp_path, "", ["a", "b", "c"], palette=PALETTE)
    with pytest.raises(ValueError, match=r"\(1, 2, 3\) \(1 px\)") as err:
        ds[0]
    assert str(path) in str(err.value) and "outside the palette" in str(err.value)


def test_colour_label_without_palette_refused(tmp_path: Path) -> None:
    path = _colour_label(tmp_path, _values(3, 3), PALETTE)
    with pytest.raises(ValueError, match="RGB colour image but the class list has no palette"):
        FolderDataset(tmp_path, "", ["a", "b", "c"])[0]
    assert path.is_file()


@given(st.lists(st.integers(0, 3), min_size=1, max_size=24), st.integers(1, 4))
def test_colour_round_trip_property(tmp_path_factory, flat: list[int], width: int) -> None:
    tmp = tmp_path_factory.mktemp("colour")
    n = len(flat) - len(flat) % width or width
    ids = np.array((flat * width)[:n], dtype=np.uint8).reshape(-1, width)
    ids[ids == 3] = 255
    _colour_label(tmp, ids, PALETTE)
    ds = FolderDataset(tmp, "", ClassList(("a", "b", "c"), tuple(PALETTE), ((0, 0, 0),)))
    np.testing.assert_array_equal(ds.load_label(0), ids)


# --- class lists and files -----------------------------------------------------------------


def test_class_file_object_and_list_forms(tmp_path: Path) -> None:
    full = tmp_path / "c.json"
    full.write_text(json.dumps({"classes": ["a", "b"], "palette": [[1, 2, 3], [4, 5, 6]]}))
    info = read_class_file(full)
    assert info.names == ("a", "b") and info.palette == ((1, 2, 3), (4, 5, 6))
    plain = tmp_path / "l.json"
    plain.write_text('["x", "y", "z"]')
    assert read_class_file(plain) == ClassList(("x", "y", "z"))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "is not valid JSON"),
        ('{"classes": ["a"], "colours": []}', r"unknown keys \['colours'\]"),
        ('{"classes": "a,b"}', "'classes' must be a list of names"),
        ('{"classes": ["a", "b"], "palette": [[1, 2, 3]]}', r"one colour per class \(2\)"),
        ('{"classes": ["a", "a"]}', r"repeated \['a'\]"),
        ('{"classes": ["a"], "palette": [[1, 2]]}', r"must be \[r, g, b\]"),
        ('{"classes": ["a"], "palette": [[1, 2, 300]]}', "0..255"),
        ('{"classes": ["a", "b"], "palette": [[1, 2, 3], [1, 2, 3]]}', "must differ"),
        ('{"classes": []}', "at least one class"),
        ("3", "expected an object"),
    ],
)
def test_bad_class_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "classes.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        read_class_file(path)
    assert str(path) in str(err.value)


def test_class_file_missing_and_too_many_classes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="class file not found"):
        read_class_file(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="at most 255 classes"):
        ClassList(tuple(f"c{i}" for i in range(256)))
    ClassList(tuple(f"c{i}" for i in range(255)))  # 0..254 and ignore 255 fit
    with pytest.raises(ValueError, match="non-empty string"):
        ClassList(("a", "", "b"))  # e.g. --set data.classes=a,,b


# --- anomaly folders -----------------------------------------------------------------------


def test_anomaly_folder_canonical_values(tmp_path: Path) -> None:
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[2:4, 2:4] = 1
    mask[0] = 255
    _one(tmp_path, mask)
    ds = FolderAnomaly(tmp_path)
    np.testing.assert_array_equal(ds[0]["label"].numpy(), mask)
    assert ds.classes == ANOMALY_CLASSES


def test_anomaly_folder_label_map_against_a_plain_loop(tmp_path: Path) -> None:
    mask = _values(4, 3) * 2  # stored 0 / 2 / 4
    _one(tmp_path, mask)
    mapping = {0: 0, 2: 1, 4: 255}
    got = FolderAnomaly(tmp_path, label_map="0:0, 2:1, 4:255")[0]["label"].numpy()
    want = np.vectorize(mapping.__getitem__)(mask)
    np.testing.assert_array_equal(got, want)


def test_anomaly_folder_value_outside_map(tmp_path: Path) -> None:
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[1, 1] = 2
    path = _one(tmp_path, mask)
    with pytest.raises(ValueError, match=r"outside the allowed set \{0, 1, 255\}: 2 \(1 px\)") as e:
        FolderAnomaly(tmp_path)[0]
    assert str(path) in str(e.value) and "label map" in str(e.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0:0,2", "expected 'stored:canonical'"),
        ("0:0,x:1", "expected 'stored:canonical'"),
        ("0:0,2:3", "maps to 3; expected 0"),
        ("0:0,256:1", "stored values are 0…255"),
        ("0:0,0:1", "mapped twice"),
        ("", "at least one"),
    ],
)
def test_bad_label_maps(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_label_map(text)


def test_label_map_forms_agree() -> None:
    want = {0: 0, 2: 1}
    assert parse_label_map("0:0,2:1") == want
    assert parse_label_map(("0:0", "2:1")) == want
    assert parse_label_map(want) == want


# --- the miniature writers -----------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 2, 19, 150, 255])
def test_fixture_class_files_are_valid_for_any_class_count(
    tmp_path: Path, num_classes: int
) -> None:
    names = tuple(f"c{k}" for k in range(num_classes))
    root = write_folder_fixture(
        tmp_path, names, splits=(("train", 1),), size=(8, 8), colour_labels=True
    )
    info = read_class_file(root / "classes.json")  # refuses repeated colours
    assert info.names == names and len(info.palette) == num_classes
    colours = np.array(info.palette)
    # well separated: any two colours differ by more than the images' noise (±10) in a channel
    gaps = np.abs(colours[:, None] - colours[None]).max(-1)
    off_diagonal = gaps[~np.eye(num_classes, dtype=bool)]
    assert off_diagonal.size == 0 or off_diagonal.min() >= 36
    assert len(FolderDataset(root, "train", info)) == 1


def test_fixture_writers_read_back_and_never_overwrite(tmp_path: Path) -> None:
    index = write_folder_fixture(tmp_path / "idx", ("a", "b"), splits=(("train", 2),))
    colour = write_folder_fixture(
        tmp_path / "rgb", ("a", "b"), splits=(("train", 2),), colour_labels=True
    )
    a = FolderDataset(index, "train", index / "classes.json")
    b = FolderDataset(colour, "train", colour / "classes.json")
    for i in range(2):
        la, lb = a[i]["label"], b[i]["label"]
        assert torch.equal(la, lb)
        assert set(la.unique().tolist()) <= {0, 1, 255} and (la == 255).any()
    with pytest.raises(FileExistsError, match="already exists"):
        write_folder_fixture(index, ("a", "b"), splits=(("train", 2),))
    ano = write_anomaly_folder_fixture(tmp_path / "ano", anomaly_value=2, void=False)
    labels = [FolderAnomaly(ano, label_map="0:0,2:1")[i]["label"] for i in range(3)]
    assert all(set(x.unique().tolist()) == {0, 1} for x in labels)
