"""Decoding: partial PNG decoding equals a full decode, the loaders' crop-first path equals
decoding everything then transforming, and broken files raise errors naming them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gmmseg.data import Cityscapes, Sample, base, write_fixture
from gmmseg.data import transforms as T
from gmmseg.data._io import read_image, read_image_region
from gmmseg.engine.stream import AugmentedView, draw_seed

H, W = 150, 330  # noise RGB: ~150 kB of PNG data, several IDAT chunks


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("io")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgb[: H // 2] //= 7  # some structure: the filters and compression vary along the image
    paths = {
        "png": root / "a.png",
        "interlaced": root / "b.png",
        "jpg": root / "c.jpg",
        "rgba": root / "d.png",
        "palette": root / "e.png",
    }
    Image.fromarray(rgb).save(paths["png"])
    Image.fromarray(rgb).save(paths["interlaced"], interlace=1)
    Image.fromarray(rgb).save(paths["jpg"], quality=90)
    rgba = np.concatenate([rgb, rgb[..., :1]], axis=2)
    Image.fromarray(rgba).save(paths["rgba"])
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(paths["palette"])
    return paths


def test_fixture_png_has_several_idat_chunks(images: dict[str, Path]) -> None:
    data = images["png"].read_bytes()
    assert data.count(b"IDAT") >= 2


boxes = st.tuples(
    st.integers(0, H - 1), st.integers(0, W - 1), st.integers(1, H), st.integers(1, W)
).map(lambda b: (b[0], b[1], min(b[2], H - b[0]), min(b[3], W - b[1])))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(box=boxes, kind=st.sampled_from(["png", "interlaced", "jpg", "rgba", "palette"]))
def test_region_equals_full_decode_cropped(
    images: dict[str, Path], box: tuple[int, int, int, int], kind: str
) -> None:
    path = images[kind]
    seen: list[tuple[int, int]] = []

    def region_of(size: tuple[int, int]) -> tuple[int, int, int, int]:
        seen.append(size)
        return box

    region, size = read_image_region(path, region_of)
    top, left, h, w = box
    full = read_image(path)
    assert seen == [size] == [(H, W)]
    assert region.dtype == np.uint8 and region.shape == (h, w, 3)
    np.testing.assert_array_equal(region, full[top : top + h, left : left + w])


def test_region_outside_image_rejected(images: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"must lie inside the image .*a\.png"):
        read_image_region(images["png"], lambda size: (H - 1, 0, 2, 1))
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        read_image_region(images["png"].with_name("nope.png"), lambda size: (0, 0, 1, 1))


@settings(max_examples=60, deadline=None)
@given(
    src=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    size=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    data=st.data(),
)
def test_resize_region_equals_resize_image(
    src: tuple[int, int], size: tuple[int, int], data: st.DataObject
) -> None:
    top = data.draw(st.integers(0, size[0] - 1))
    left = data.draw(st.integers(0, size[1] - 1))
    window = (
        top,
        left,
        data.draw(st.integers(1, size[0] - top)),
        data.draw(st.integers(1, size[1] - left)),
    )
    g = torch.Generator().manual_seed(src[0] * 100 + src[1])
    image = torch.randint(0, 256, (3, *src), generator=g, dtype=torch.uint8)
    want = T.resize_image(image, size, window)
    r0, c0, rh, rw = T.source_window(src, size, window)
    assert r0 >= 0 and r0 + rh <= src[0] and c0 >= 0 and c0 + rw <= src[1]
    region = image.permute(1, 2, 0)[r0 : r0 + rh, c0 : c0 + rw]
    assert torch.equal(T.resize_region(region, src, (r0, c0), size, window), want)
    # A larger region at another origin gives the same result.
    assert torch.equal(T.resize_region(image.permute(1, 2, 0), src, (0, 0), size, window), want)
    if rh > 1:
        with pytest.raises(ValueError, match="does not hold the source rows"):
            T.resize_region(region[1:], src, (r0 + 1, c0), size, window)


@given(
    src=st.tuples(st.integers(1, 30), st.integers(1, 30)),
    size=st.tuples(st.integers(1, 50), st.integers(1, 50)),
    rows_per_block=st.integers(1, 7),
    floating=st.booleans(),
    data=st.data(),
)
def test_resize_region_blocks_change_no_bit(
    src: tuple[int, int],
    size: tuple[int, int],
    rows_per_block: int,
    floating: bool,
    data: st.DataObject,
) -> None:
    """Row blocks of any height give the single-block result, for whole images and windows of
    a source region at an offset; float agrees with F.interpolate."""
    g = torch.Generator().manual_seed(src[0] * 100 + src[1])
    image = torch.randint(0, 256, (3, *src), generator=g, dtype=torch.uint8)
    if floating:
        image = image.float()
    top = data.draw(st.integers(0, size[0] - 1))
    left = data.draw(st.integers(0, size[1] - 1))
    window = (top, left, data.draw(st.integers(1, size[0] - top)), size[1] - left)
    r0, c0, rh, rw = T.source_window(src, size, window)
    region = image.permute(1, 2, 0)[r0 : r0 + rh, c0 : c0 + rw]
    default = T._RESIZE_BLOCK_BYTES
    try:
        T._RESIZE_BLOCK_BYTES = 1 << 40
        whole = T.resize_image(image, size)
        part = T.resize_region(region, src, (r0, c0), size, window)
        T._RESIZE_BLOCK_BYTES = 4 * 3 * window[3] * rows_per_block
        blocked_part = T.resize_region(region, src, (r0, c0), size, window)
        T._RESIZE_BLOCK_BYTES = 4 * 3 * size[1] * rows_per_block
        blocked = T.resize_image(image, size)
    finally:
        T._RESIZE_BLOCK_BYTES = default
    assert torch.equal(blocked, whole)
    assert torch.equal(blocked_part, part)
    if floating:
        ref = torch.nn.functional.interpolate(
            image[None], size=size, mode="bilinear", align_corners=False
        )[0]
        torch.testing.assert_close(blocked, ref, atol=1e-3, rtol=0)


def test_plan_draws_like_call() -> None:
    label = torch.randint(0, 4, (40, 60), generator=torch.Generator().manual_seed(1))
    step = T.RandomRescaleCrop((60, 40), (16, 24), (0.5, 2.0), cat_max_ratio=0.75)
    sample = {
        "image": torch.zeros(3, 40, 60, dtype=torch.uint8),
        "label": label,
        "name": "x",
        "image_path": "",
        "label_path": "",
        "ori_size": (40, 60),
    }
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = step(sample, g1)  # type: ignore[arg-type]
    _, box, crop = step.plan((40, 60), label, g2)
    assert crop is not None and torch.equal(crop, out["label"])
    assert out["image"].shape[1:] == (box[2], box[3])
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cs")
    return write_fixture("cityscapes", root, num_images=4, size=(96, 192))


@pytest.mark.parametrize("ratio", [(0.5, 2.0), (0.2, 0.4), (1.5, 3.0)])
def test_crop_first_loader_equals_decode_then_transform(
    cityscapes: Path, ratio: tuple[float, float]
) -> None:
    pipe = T.train_pipeline((192, 96), (48, 80), ratio)
    fused = Cityscapes(cityscapes, "train", transform=pipe)
    plain = Cityscapes(cityscapes, "train")
    assert fused._crops_first(pipe) and not plain._crops_first(None)
    for seed in range(16):
        i = seed % len(plain)
        torch.manual_seed(seed)
        got = fused[i]
        sample = plain[i]
        torch.manual_seed(seed)
        want = pipe(sample)
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                other = got[key]  # type: ignore[literal-required]
                assert isinstance(other, torch.Tensor) and other.dtype == value.dtype
                assert torch.equal(other, value), (seed, key)
            else:
                assert got[key] == value  # type: ignore[literal-required]
        # The default generator advanced identically.
        assert torch.equal(torch.rand(3), (torch.manual_seed(seed), pipe(sample), torch.rand(3))[2])


def test_other_pipelines_are_not_crop_first(cityscapes: Path) -> None:
    steps = T.train_pipeline((192, 96), (48, 80)).transforms
    ds = Cityscapes(cityscapes, "train")
    assert not ds._crops_first(T.Compose(steps[1:]))
    assert not ds._crops_first(T.eval_pipeline((192, 96)))

    class MyCompose(T.Compose):
        pass

    assert not ds._crops_first(MyCompose(steps))


def _assert_same_sample(got: Sample, want: Sample, context: object) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        other = got[key]  # type: ignore[literal-required]
        if isinstance(value, torch.Tensor):
            assert isinstance(other, torch.Tensor) and other.dtype == value.dtype
            assert torch.equal(other, value), (context, key)
        else:
            assert other == value, (context, key)


@pytest.mark.parametrize("ratio", [(0.5, 2.0), (1.5, 3.0)])
def test_load_transformed_equals_transform_of_the_full_sample(
    cityscapes: Path, ratio: tuple[float, float]
) -> None:
    """Explicit generator, the crop-first path: same sample and same draws as the plain path."""
    pipe = T.train_pipeline((192, 96), (48, 80), ratio)
    plain = Cityscapes(cityscapes, "train")
    for seed in range(12):
        i = seed % len(plain)
        g_got, g_want = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        got = plain.load_transformed(i, pipe, g_got)
        want = pipe(plain[i], g_want)
        _assert_same_sample(got, want, seed)
        assert torch.equal(torch.rand(3, generator=g_got), torch.rand(3, generator=g_want))
    # Another pipeline takes the plain path; the dataset's own transform is not applied.
    flip = T.Compose([T.RandomFlip(1.0)])
    own = Cityscapes(cityscapes, "train", transform=T.Normalize())
    got = own.load_transformed(1, flip, torch.Generator().manual_seed(0))
    _assert_same_sample(got, flip(plain[1]), "flip")
    with pytest.raises(IndexError, match="index 4 out of range"):
        plain.load_transformed(4, flip)


def test_augmented_view_decodes_only_the_crop(
    cityscapes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training stream's samples are unchanged by the crop-first path, which it now takes."""
    pipe = T.train_pipeline((192, 96), (48, 80))
    plain = Cityscapes(cityscapes, "train")
    regions: list[str] = []

    def counting(path: Path, region_of: Any) -> Any:
        regions.append(path.name)
        return read_image_region(path, region_of)

    monkeypatch.setattr(base, "read_image_region", counting)
    view = AugmentedView(plain, pipe, seed=3)
    for draw in range(8):
        key = (draw, draw % len(plain))
        want = pipe(plain[key[1]], torch.Generator().manual_seed(draw_seed(3, draw)))
        _assert_same_sample(view[key], want, draw)
    assert regions == [plain.frames[d % len(plain)].image_path.name for d in range(8)]
    # A dataset with a transform of its own keeps the old path: transform(dataset[i], g).
    own = Cityscapes(cityscapes, "train", transform=T.Compose([T.RandomFlip(1.0)]))
    regions.clear()
    got = AugmentedView(own, pipe, seed=3)[(0, 0)]
    want = pipe(own[0], torch.Generator().manual_seed(draw_seed(3, 0)))
    _assert_same_sample(got, want, "own transform")
    assert regions == []


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep", [0.3, 0.97])
def test_truncated_image_named(tmp_path: Path, keep: float) -> None:
    root = write_fixture("cityscapes", tmp_path, num_images=2, size=(96, 192))
    ds = Cityscapes(root, "train", transform=T.train_pipeline((192, 96), (24, 40), (0.5, 0.6)))
    path = ds.frames[0].image_path
    _truncate(path, keep)
    # Tiny crops near the top need only the first rows: the truncation is still refused.
    for seed in range(4):
        torch.manual_seed(seed)
        with pytest.raises(OSError, match=re.escape(path.name)):
            ds[0]
    with pytest.raises(OSError, match=re.escape(path.name)):
        Cityscapes(root, "train")[0]


def test_missing_iend_refused(tmp_path: Path, images: dict[str, Path]) -> None:
    data = images["png"].read_bytes()
    assert data.endswith(b"IEND\xaeB`\x82")
    path = tmp_path / "no_iend.png"
    path.write_bytes(data[:-12])
    with pytest.raises(OSError, match=r"no_iend\.png.*no IEND chunk"):
        read_image_region(path, lambda size: (0, 0, 1, 1))


def test_corrupt_image_and_label_named(tmp_path: Path) -> None:
    root = write_fixture("cityscapes", tmp_path, num_images=2, size=(96, 192))
    ds = Cityscapes(root, "train", transform=T.train_pipeline((192, 96), (48, 80)))
    frame = ds.frames[0]
    assert frame.label_path is not None
    data = bytearray(frame.label_path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 2 : start + 40] = bytes(38)  # garbage in the zlib stream
    frame.label_path.write_bytes(bytes(data))
    with pytest.raises(OSError, match="label file .*" + re.escape(frame.label_path.name)):
        ds[0]
    frame.image_path.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    with pytest.raises(OSError, match="image file .*" + re.escape(frame.image_path.name)):
        Cityscapes(root, "train")[0]


def test_decompression_bombs_are_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: PIL's DecompressionBombError traceback.
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2 x 100
    with pytest.raises(ValueError, match=r"huge\.png is larger than Pillow's decompression-bomb"):
        read_image(path)
    with pytest.raises(ValueError, match="decompression-bomb"):
        read_image_region(path, lambda hw: (0, 0, 8, 8))


def test_16_bit_greyscale_is_rescaled_not_clipped(tmp_path: Path) -> None:
    # Before: Pillow's convert("RGB") clipped every value above 255 to 255.
    grey = np.array([[0, 128, 257, 32767, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "wide.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode == "I;16"
    want = np.array([[0, 0, 1, 127, 128, 255]], dtype=np.uint8)  # round(v * 255 / 65535)
    assert np.array_equal(
        want[0], np.round(grey[0].astype(np.float64) * 255 / 65535).astype(np.uint8)
    )
    got = read_image(path)
    assert np.array_equal(got, np.repeat(want[..., None], 3, axis=2))
    region, size = read_image_region(path, lambda hw: (0, 2, 1, 3))
    assert size == (1, 6) and np.array_equal(region, got[:, 2:5])


def test_float_images_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "depth.tiff"
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(path)
    with pytest.raises(ValueError, match=r"depth\.tiff has mode 'F'"):
        read_image(path)
