"""Joint transforms: references for resampling, alignment properties, cat_max_ratio, seeding."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from gmmseg.data import Sample
from gmmseg.data import transforms as T

# A fixed colour per class (distinct), used to paint label-coloured images.
pytestmark = pytest.mark.cpu_only("joint transforms run in data-loader workers on the CPU")


COLOURS = torch.randint(0, 256, (256, 3), generator=torch.Generator().manual_seed(0)).to(
    torch.uint8
)


def make_sample(label: torch.Tensor) -> Sample:
    image = COLOURS[label].permute(2, 0, 1)
    return {
        "image": image,
        "label": label,
        "name": "x",
        "image_path": "",
        "label_path": "",
        "ori_size": (int(label.shape[0]), int(label.shape[1])),
    }


def block_label(seed: int, h: int, w: int, cell: int = 6, classes: int = 6) -> torch.Tensor:
    """Rectangular grid of cells (≥ 5 px) with random classes, a few cells ignored (255)."""
    g = torch.Generator().manual_seed(seed)
    gh, gw = -(-h // cell), -(-w // cell)
    grid = torch.randint(0, classes, (gh, gw), generator=g)
    grid[torch.rand(gh, gw, generator=g) < 0.1] = 255
    return grid.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:h, :w].contiguous()


def interior(label: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3×3 neighbourhood has one label (borders excluded)."""
    lab = label[None, None].float()
    mx = F.max_pool2d(lab, 3, 1, 0)
    mn = -F.max_pool2d(-lab, 3, 1, 0)
    out = torch.zeros_like(label, dtype=torch.bool)
    out[1:-1, 1:-1] = (mx == mn)[0, 0]
    return out


def assert_consistent(out: Sample, pad_label: int = 255) -> None:
    """At interior pixels the image colour is exactly the colour of the label."""
    image, label = out["image"], out["label"]
    assert label is not None
    assert image.shape[1:] == label.shape
    mask = interior(label) & (label != pad_label)
    got = image.permute(1, 2, 0)[mask]
    want = COLOURS[label[mask]]
    assert torch.equal(got, want)


def test_resize_matches_interpolate() -> None:
    g = torch.Generator().manual_seed(1)
    for (h, w), size in [((32, 64), (45, 90)), ((37, 53), (70, 20)), ((40, 40), (13, 77))]:
        img = torch.randint(0, 256, (3, h, w), generator=g).float()
        ref = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(T.resize_image(img, size), ref, atol=1e-3, rtol=0)
        lab = torch.randint(0, 19, (h, w), generator=g)
        got = T.resize_label(lab, size)
        loop = torch.tensor(
            [
                [
                    int(lab[(2 * i + 1) * h // (2 * size[0]), (2 * j + 1) * w // (2 * size[1])])
                    for j in range(size[1])
                ]
                for i in range(size[0])
            ]
        )
        assert torch.equal(got, loop)
        ref_l = F.interpolate(lab[None, None].float(), size=size, mode="nearest-exact")[0, 0]
        # torch computes the scale in floating point: it may differ only at exact ties.
        assert (got != ref_l.long()).float().mean() < 0.05


def test_resize_window_equals_full_crop() -> None:
    img = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8)
    for size in [(60, 100), (15, 25), (33, 47)]:
        full = T.resize_image(img, size)
        win = (2, 3, size[0] // 2, size[1] // 3)
        part = T.resize_image(img, size, win)
        assert torch.equal(part, full[:, 2 : 2 + win[2], 3 : 3 + win[3]])
    with pytest.raises(ValueError, match="window"):
        T.resize_image(img, (10, 10), (5, 5, 10, 10))
    with pytest.raises(ValueError, match="size"):
        T.resize_image(img, (0, 10))


def test_rescale_size() -> None:
    assert T.rescale_size((1024, 2048), (2048, 1024)) == (1024, 2048)
    assert T.rescale_size((1024, 2048), (1024, 512)) == (512, 1024)
    assert T.rescale_size((500, 375), (2048, 512)) == (683, 512)  # short edge → 512


def test_rescale_crop_fused_equals_composed() -> None:
    label = block_label(0, 40, 80)
    sample = make_sample(label)
    for seed in range(20):
        fused = T.RandomRescaleCrop((80, 40), (24, 32), (0.5, 2.0), cat_max_ratio=0.75)
        comp = T.Compose(
            [T.RandomRescale((80, 40), (0.5, 2.0)), T.RandomCrop((24, 32), cat_max_ratio=0.75)]
        )
        a = fused(sample, torch.Generator().manual_seed(seed))
        b = comp(sample, torch.Generator().manual_seed(seed))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])  # type: ignore[arg-type]


@given(
    seed=st.integers(0, 2**31 - 1),
    h=st.integers(16, 48),
    w=st.integers(16, 48),
    ratio=st.tuples(st.floats(0.5, 1.0), st.floats(1.0, 2.0)),
)
def test_geometric_transforms_keep_alignment(
    seed: int, h: int, w: int, ratio: tuple[float, float]
) -> None:
    """Property: a label-coloured image stays consistent with its label after every transform.

    Holds for resampling factors in [1/2, 2] (sizes ≥ 16 keep ResizeToMultiple(32) within it):
    beyond 2× upsampling, bilinear mixes a neighbour that the 3×3 label test does not see.
    """
    sample = make_sample(block_label(seed, h, w))
    g = torch.Generator().manual_seed(seed)
    steps: list[T.JointTransform] = [
        T.RandomRescale((max(h, w), min(h, w)), ratio),  # factor = ratio
        T.RandomCrop((16, 20), cat_max_ratio=0.75),
        T.RandomFlip(0.5),
        T.Pad((2 * max(h, w) * 2, 2 * max(h, w) * 2)),
    ]
    out = sample
    for step in steps:
        out = step(out, g)
        assert_consistent(out)
    fused = T.RandomRescaleCrop((max(h, w), min(h, w)), (16, 20), ratio, 0.75)(sample, g)
    assert_consistent(fused)
    for step in (T.Resize((w + 7, h + 3)), T.Resize((h + 5, w + 9), keep_ratio=False)):
        assert_consistent(step(sample, g))
    assert_consistent(T.ResizeToMultiple(32)(sample, g))


@given(seed=st.integers(0, 2**31 - 1))
def test_photometric_is_pixelwise_and_keeps_label(seed: int) -> None:
    sample = make_sample(block_label(seed, 20, 30))
    g = torch.Generator().manual_seed(seed)
    out = T.PhotoMetricDistortion()(sample, g)
    assert out["image"].dtype == torch.uint8 and out["label"] is sample["label"]
    # Equal input colours give equal output colours: colour is still a function of the label.
    label = sample["label"]
    assert label is not None
    pix = out["image"].permute(1, 2, 0)
    for k in label.unique():
        vals = pix[label == k]
        assert (vals == vals[0]).all()
    norm = T.Normalize()(out, g)
    assert norm["image"].dtype == torch.float32
    npix = norm["image"].permute(1, 2, 0)
    for k in label.unique():
        vals = npix[label == k]
        assert (vals == vals[0]).all()


def test_photometric_reference_steps() -> None:
    """Brightness/contrast against a direct computation; identity when no step fires."""
    img = torch.arange(256, dtype=torch.uint8).repeat(3, 4, 1)
    sample = make_sample(torch.zeros(4, 256, dtype=torch.long))
    sample["image"] = img
    pm = T.PhotoMetricDistortion(saturation_range=(1.0, 1.0), hue_delta=0)
    seen_change = False
    for seed in range(30):
        out = pm(sample, torch.Generator().manual_seed(seed))["image"]
        diff = out.int() - img.int()
        # Brightness shifts by ≤ 32 and contrast scales by [0.5, 1.5]: monotone per channel.
        assert (out[:, :, 1:].int() >= out[:, :, :-1].int()).all()
        seen_change |= bool(diff.abs().sum() > 0)
    assert seen_change
    hue = T.PhotoMetricDistortion(brightness_delta=0, contrast_range=(1, 1))
    grey = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    s2 = make_sample(torch.zeros(2, 2, dtype=torch.long))
    s2["image"] = grey
    for seed in range(10):  # greys have no hue and no saturation: unchanged
        assert torch.equal(hue(s2, torch.Generator().manual_seed(seed))["image"], grey)
    with pytest.raises(ValueError, match="uint8"):
        pm(T.Normalize()(sample))


def hsv_reference(rgb: Tensor, alpha: float | None, degrees: float) -> Tensor:
    """Per-pixel HSV round trip with :mod:`colorsys` (float64): scale S, rotate H, back to RGB.

    The scaled saturation is put on the 8-bit grid as OpenCV's uint8 S: ⌊clamp(255·α·s)⌋ / 255,
    with s = c / v rounded to float32 first so that the floor sees the same value as the code
    under test (a float64 s can land on the other side of an integer).
    """
    out = torch.empty(rgb.shape, dtype=torch.float64)
    for i in range(rgb.shape[1]):
        for j in range(rgb.shape[2]):
            px = [float(x) for x in rgb[:, i, j]]
            h, s, v = colorsys.rgb_to_hsv(*(x / 255.0 for x in px))
            if alpha is not None:
                c32, v32 = np.float32(max(px) - min(px)), np.float32(max(max(px), 1e-12))
                s32 = c32 / v32
                s = float(np.floor(np.clip(s32 * np.float32(255.0 * alpha), 0, 255))) / 255.0
            rgb_new = colorsys.hsv_to_rgb((h + degrees / 360.0) % 1.0, s, v)
            out[:, i, j] = torch.tensor(rgb_new, dtype=torch.float64) * 255.0
    return out


def colour_image(seed: int) -> Tensor:
    """(3, 16, 16) integer-valued float RGB with a grey pixel, pure red and two-way ties."""
    rgb = torch.randint(0, 256, (3, 16, 16), generator=torch.Generator().manual_seed(seed))
    rgb[:, 0, 0] = 77  # grey: no hue, no saturation
    rgb[:, 0, 1] = torch.tensor([255, 0, 0])  # pure red: hue 0, full saturation
    rgb[:, 0, 2] = torch.tensor([200, 200, 10])  # red and green tie for the maximum
    rgb[:, 0, 3] = torch.tensor([30, 180, 180])  # green and blue tie
    rgb[:, 0, 4] = torch.tensor([255, 255, 255])
    rgb[:, 0, 5] = torch.tensor([0, 0, 0])
    return rgb.float()


def test_saturation_in_rgb_equals_hsv_round_trip() -> None:
    rgb = colour_image(3)
    for alpha in (0.5, 0.9, 1.3, 3.0):
        ref = hsv_reference(rgb, alpha, 0.0)
        got = T._scale_saturation(rgb, alpha)
        torch.testing.assert_close(got.double(), ref, atol=1e-3, rtol=0)


def test_hue_shift_equals_hsv_round_trip() -> None:
    rgb = colour_image(4)
    for degrees in (-36.0, 0.0, 2.0, 36.0, 120.0, 180.0, 350.0, 720.0 + 10.0, -400.0):
        ref = hsv_reference(rgb, None, degrees)
        got = T._shift_hue(rgb, degrees)
        torch.testing.assert_close(got.double(), ref, atol=1e-3, rtol=0)


def test_saturation_then_hue_equals_hsv_round_trip() -> None:
    rgb = colour_image(5)
    for alpha, degrees in ((0.5, -36.0), (1.3, 2.0), (3.0, 36.0), (0.9, 0.0), (1.1, 300.0)):
        ref = hsv_reference(rgb, alpha, degrees)
        got = T._shift_hue(T._scale_saturation(rgb, alpha), degrees)
        torch.testing.assert_close(got.double(), ref, atol=1e-3, rtol=0)


@given(
    rgb=st.lists(st.integers(0, 255), min_size=3, max_size=3),
    degrees=st.floats(-720.0, 720.0, allow_nan=False),
    alpha=st.one_of(st.none(), st.floats(0.0, 4.0, allow_nan=False)),
)
def test_hsv_steps_match_colorsys_on_any_colour(
    rgb: list[int], degrees: float, alpha: float | None
) -> None:
    """One pixel at a time, any colour (ties, greys, black, saturated) and any hue shift."""
    pixel = torch.tensor(rgb, dtype=torch.float32).reshape(3, 1, 1)
    ref = hsv_reference(pixel, alpha, degrees)
    got = (
        T._shift_hue(pixel, degrees)
        if alpha is None
        else T._shift_hue(T._scale_saturation(pixel, alpha), degrees)
    )
    torch.testing.assert_close(got.double(), ref, atol=2e-3, rtol=0)
    if alpha is not None:
        torch.testing.assert_close(
            T._scale_saturation(pixel, alpha).double(),
            hsv_reference(pixel, alpha, 0.0),
            atol=2e-3,
            rtol=0,
        )


def test_cat_max_ratio_honoured() -> None:
    # Class 0 fills everything except a 20x20 block of class 1 and a 10x10 block of 255.
    label = torch.zeros(60, 60, dtype=torch.long)
    label[20:40, 20:40] = 1
    label[45:55, 5:15] = 255
    sample = make_sample(label)
    crop = T.RandomCrop((20, 20), cat_max_ratio=0.75)
    free = T.RandomCrop((20, 20), cat_max_ratio=1.0)
    ratios, free_ratios = [], []
    for seed in range(100):
        for tr, acc in ((crop, ratios), (free, free_ratios)):
            out = tr(sample, torch.Generator().manual_seed(seed))["label"]
            assert out is not None
            valid = out[out != 255]
            acc.append(float(torch.bincount(valid).max()) / valid.numel())
    # A free crop is balanced with probability p ≈ 0.3, so 11 draws all fail with ≈ 2 %.
    free_rate = sum(r < 0.75 for r in free_ratios) / 100
    rate = sum(r < 0.75 for r in ratios) / 100
    assert 0.15 < free_rate < 0.45 and rate >= 0.9
    # A single-class image: terminates and keeps the last draw.
    flat = T.RandomCrop((5, 5), cat_max_ratio=0.75)(
        make_sample(torch.zeros(9, 9, dtype=torch.long))
    )
    assert flat["image"].shape == (3, 5, 5)


@given(
    values=st.lists(st.sampled_from([0, 1, 2, 7, 254, 255]), min_size=1, max_size=40),
    ratio=st.sampled_from([0.5, 0.75, 0.9]),
    dtype=st.sampled_from([torch.uint8, torch.int64]),
)
def test_balanced_crop_rule_matches_the_unique_count_rule(
    values: list[int], ratio: float, dtype: torch.dtype
) -> None:
    """The crop check counts classes as mmsegmentation's ``np.unique(..., return_counts=True)``
    does: ignore dropped, more than one class left, and the largest below the ratio."""
    label = np.array(values)
    uniq, counts = np.unique(label, return_counts=True)
    counts = counts[uniq != 255]
    want = len(counts) > 1 and np.max(counts) / np.sum(counts) < ratio
    assert T._balanced(torch.tensor(values, dtype=dtype), ratio, 255) == want


def test_crop_smaller_image_and_pad() -> None:
    sample = make_sample(block_label(3, 10, 12))
    out = T.RandomCrop((16, 20))(sample)
    assert out["image"].shape == (3, 10, 12)
    padded = T.Pad((16, 20))(T.Normalize()(out))
    assert padded["image"].shape == (3, 16, 20) and padded["label"] is not None
    assert (padded["label"][10:] == 255).all() and (padded["label"][:, 12:] == 255).all()
    assert (padded["image"][:, 10:] == 0).all()
    with pytest.raises(ValueError, match="larger"):
        T.Pad((8, 8))(sample)


def test_flip_and_multiple() -> None:
    sample = make_sample(block_label(4, 20, 30))
    out = T.RandomFlip(1.0)(sample)
    assert torch.equal(out["label"], sample["label"].flip(-1))  # type: ignore[union-attr]
    assert T.RandomFlip(0.0)(sample) is sample
    m = T.ResizeToMultiple(32)(sample)
    assert m["image"].shape == (3, 32, 32) and m["label"] is not None
    m2 = T.ResizeToMultiple(32, resize_label=False)(sample)
    assert m2["label"] is sample["label"]


def eval_pipelines_shapes_and_determinism() -> None:
    sample = make_sample(block_label(5, 64, 128))
    pipe = T.train_pipeline(scale=(128, 64), crop_size=(32, 64))
    a = pipe(sample, torch.Generator().manual_seed(7))
    b = pipe(sample, torch.Generator().manual_seed(7))
    assert a["image"].shape == (3, 32, 64) and a["image"].dtype == torch.float32
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])  # type: ignore[arg-type]
    assert a["label"] is not None and a["label"].dtype == torch.int64
    torch.manual_seed(0)
    c = pipe(sample)
    torch.manual_seed(0)
    d = pipe(sample)
    assert torch.equal(c["image"], d["image"])
    test = T.eval_pipeline(scale=(100, 50), divisor=32)(sample)
    assert test["image"].shape == (3, 64, 128) and test["label"] is sample["label"]


def test_label_none_and_validation() -> None:
    sample = make_sample(block_label(6, 20, 30))
    unlabelled: Sample = {**sample, "label": None}
    out = T.train_pipeline(scale=(60, 30), crop_size=(16, 16))(unlabelled)
    assert out["label"] is None and out["image"].shape == (3, 16, 16)
    bad: Sample = {**sample, "label": sample["label"][:5]}  # type: ignore[index]
    with pytest.raises(ValueError, match="label"):
        T.RandomFlip()(bad)
    with pytest.raises(ValueError, match="int64"):
        T.RandomFlip()({**sample, "label": sample["label"].int()})  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="image"):
        T.RandomFlip()({**sample, "image": sample["image"][0]})
    with pytest.raises(ValueError, match="cat_max_ratio"):
        T.RandomCrop((4, 4), cat_max_ratio=0.0)
    with pytest.raises(ValueError, match="ratio_range"):
        T.RandomRescale((10, 10), (0.0, 1.0))
    with pytest.raises(ValueError, match="prob"):
        T.RandomFlip(2.0)
    with pytest.raises(ValueError, match="std"):
        T.Normalize(std=(1.0, 0.0, 1.0))
    assert "RandomFlip(prob=0.5)" in repr(T.RandomFlip())


def test_saturation_factor_one_keeps_integer_colours() -> None:
    """α = 1 changes no 8-bit colour once quantised (the saturation grid is coarser than RGB)."""
    levels = torch.arange(0, 256, 3, dtype=torch.float32)
    r, g, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    rgb = torch.stack([r, g, b]).reshape(3, -1, 1)
    out = T._scale_saturation(rgb, 1.0).clamp_(0, 255).floor_()
    assert torch.equal(out, rgb)


def test_photometric_hsv_step_rounds_instead_of_darkening() -> None:
    """Hue shift 0 and saturation factor 1: no colour may darken (truncation did, by 1 level).

    The float HSV round trip lands within 1e-4 of the integers; rounding gives them back. The
    saturation quantisation (OpenCV's uint8 S) may lower S, which can only lighten a channel.
    """
    levels = torch.arange(0, 256, 5, dtype=torch.uint8)
    r, g, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    image = torch.stack([r, g, b]).reshape(3, 1, -1)
    sample = make_sample(torch.zeros(1, image.shape[2], dtype=torch.long))
    sample["image"] = image
    pm = T.PhotoMetricDistortion(0, (1.0, 1.0), (1.0, 1.0), 0)
    fired = 0
    for seed in range(12):
        out = pm(sample, torch.Generator().manual_seed(seed))["image"]
        diff = out.int() - image.int()
        assert diff.min() >= 0 and diff.max() <= 1, seed
        fired += int(diff.any())
    assert fired > 0  # the saturation step ran and moved some colours up
    shifted = T._shift_hue(image.float(), 0.0)
    assert torch.equal((shifted + 0.5).floor(), image.float())


def test_check_pair_refuses_non_finite_ranges() -> None:
    with pytest.raises(ValueError, match="saturation_range must be a pair of finite positive"):
        T.PhotoMetricDistortion(saturation_range=(0.5, float("inf")))
    with pytest.raises(ValueError, match="ratio_range"):
        T.RandomRescale((64, 32), ratio_range=(float("nan"), 2.0))
