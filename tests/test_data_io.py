"""Decoding and loading: the windowed resize equals the full one, seeded loading equals decoding
then transforming, and broken files raise errors naming them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gmmseg.data import Cityscapes, Sample
from gmmseg.data import transforms as T
from gmmseg.data._io import read_image
from gmmseg.engine.stream import AugmentedView, draw_seed
from gmmseg.testing import write_fixture

pytestmark = pytest.mark.cpu_only("file decoding runs on the CPU")


@settings(max_examples=60, deadline=None)
@given(
    src=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    size=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    floating=st.booleans(),
    channels_last=st.booleans(),
    data=st.data(),
)
def test_windowed_resize_equals_the_full_resize(
    src: tuple[int, int],
    size: tuple[int, int],
    floating: bool,
    channels_last: bool,
    data: st.DataObject,
) -> None:
    """Any window of the resize is bit-identical to the same part of the full resize (for uint8
    and float images, contiguous or a channels-last view); float agrees with F.interpolate."""
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
    if floating:
        image = image.float()
    if channels_last:  # what decoding an (H, W, 3) array gives
        image = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    whole = T.resize_image(image, size)
    part = T.resize_image(image, size, window)
    assert part.dtype == image.dtype
    assert torch.equal(part, whole[:, top : top + window[2], left : left + window[3]])
    if floating:
        ref = torch.nn.functional.interpolate(
            image[None], size=size, mode="bilinear", align_corners=False
        )[0]
        torch.testing.assert_close(whole, ref, atol=1e-3, rtol=0)


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
    """Explicit generator: same sample and same draws as transforming the decoded sample."""
    pipe = T.train_pipeline((192, 96), (48, 80), ratio)
    plain = Cityscapes(cityscapes, "train")
    for seed in range(12):
        i = seed % len(plain)
        g_got, g_want = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        got = plain.load_transformed(i, pipe, g_got)
        want = pipe(plain[i], g_want)
        _assert_same_sample(got, want, seed)
        assert torch.equal(torch.rand(3, generator=g_got), torch.rand(3, generator=g_want))
    # The dataset's own transform is not applied.
    flip = T.Compose([T.RandomFlip(1.0)])
    own = Cityscapes(cityscapes, "train", transform=T.Normalize())
    got = own.load_transformed(1, flip, torch.Generator().manual_seed(0))
    _assert_same_sample(got, flip(plain[1]), "flip")
    with pytest.raises(IndexError, match="index 4 out of range"):
        plain.load_transformed(4, flip)


def test_augmented_view_equals_seeded_transform(cityscapes: Path) -> None:
    """The training stream's samples are the pipeline applied to the decoded samples."""
    pipe = T.train_pipeline((192, 96), (48, 80))
    plain = Cityscapes(cityscapes, "train")
    view = AugmentedView(plain, pipe, seed=3)
    for draw in range(8):
        key = (draw, draw % len(plain))
        want = pipe(plain[key[1]], torch.Generator().manual_seed(draw_seed(3, draw)))
        _assert_same_sample(view[key], want, draw)
    # A dataset with a transform of its own: transform(dataset[i], g).
    own = Cityscapes(cityscapes, "train", transform=T.Compose([T.RandomFlip(1.0)]))
    got = AugmentedView(own, pipe, seed=3)[(0, 0)]
    want = pipe(own[0], torch.Generator().manual_seed(draw_seed(3, 0)))
    _assert_same_sample(got, want, "own transform")


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep", [0.3, 0.97])
def test_truncated_image_named(tmp_path: Path, keep: float) -> None:
    root = write_fixture("cityscapes", tmp_path, num_images=2, size=(96, 192))
    ds = Cityscapes(root, "train", transform=T.train_pipeline((192, 96), (24, 40), (0.5, 0.6)))
    path = ds.frames[0].image_path
    _truncate(path, keep)
    for seed in range(4):
        torch.manual_seed(seed)
        with pytest.raises(OSError, match=re.escape(path.name)):
            ds[0]
    with pytest.raises(OSError, match=re.escape(path.name)):
        Cityscapes(root, "train")[0]


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


def test_float_images_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "depth.tiff"
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(path)
    with pytest.raises(ValueError, match=r"depth\.tiff has mode 'F'"):
        read_image(path)
