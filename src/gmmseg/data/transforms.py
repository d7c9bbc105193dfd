"""Joint image/label transforms of the GMMSeg training and test pipelines.

Every transform maps a `Sample` to a new sample (inputs are never modified in
place) and draws its randomness from the ``generator`` it is given, so a pipeline is reproducible
for a seed; with ``generator=None`` it draws from torch's default generator, which a
`DataLoader` seeds per worker (worker-safe).

Images are (3, H, W) uint8 until `Normalize` turns them into float32. Labels are (H, W)
int64 and only ever resampled with nearest neighbour (pixel-centre aligned, as
``mode="nearest-exact"``); images are resampled bilinearly (``align_corners=False``, no
antialiasing, as OpenCV and mmsegmentation do).

| transform                 | image                       | label                  |
| ------------------------- | --------------------------- | ---------------------- |
| `RandomRescale`    | bilinear, keep ratio        | nearest                |
| `RandomCrop`       | crop (``cat_max_ratio``)    | crop                   |
| `RandomRescaleCrop`| both of the above, fused    | both                   |
| `RandomFlip`       | horizontal flip             | flip                   |
| `PhotoMetricDistortion` | brightness, contrast, saturation, hue | unchanged |
| `Normalize`        | (x − mean) / std → float32  | unchanged              |
| `Pad`              | pad bottom/right with 0     | pad with 255           |
| `Resize`           | bilinear (keep ratio)       | nearest (optional)     |
| `ResizeToMultiple` | bilinear to a multiple of d | nearest (optional)     |

Examples:
    >>> g = torch.Generator().manual_seed(0)
    >>> pipeline = train_pipeline(scale=(2048, 1024), crop_size=(512, 1024))
    >>> out = pipeline(sample, g)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gmmseg.data.base import Sample
from gmmseg.data.meta import IGNORE_INDEX

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "JointTransform",
    "Normalize",
    "Pad",
    "PhotoMetricDistortion",
    "RandomCrop",
    "RandomFlip",
    "RandomRescale",
    "RandomRescaleCrop",
    "Resize",
    "ResizeToMultiple",
    "eval_pipeline",
    "rescale_size",
    "resize_image",
    "resize_label",
    "train_pipeline",
]

#: ImageNet mean of the 0–255 RGB channels.
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
#: ImageNet standard deviation of the 0–255 RGB channels.
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


# --------------------------------------------------------------------------- functional core


def _uniform(g: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))


def _randint(g: torch.Generator | None, low: int, high: int) -> int:
    """An integer in [low, high)."""
    return int(torch.randint(low, high, (), generator=g))


def _check_sample(
    sample: Sample, where: str, same_size: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Validate a sample; ``same_size=False`` for steps that leave the label geometry alone."""
    image, label = sample["image"], sample["label"]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"{where}: sample['image'] must be (3, H, W), got {tuple(image.shape)}")
    if label is not None:
        if label.ndim != 2 or (same_size and label.shape != image.shape[1:]):
            raise ValueError(
                f"{where}: sample['label'] must be (H, W) = {tuple(image.shape[1:])}, "
                f"got {tuple(label.shape)}"
            )
        if label.dtype != torch.int64:
            raise ValueError(f"{where}: sample['label'] must be int64, got {label.dtype}")
    return image, label


def _replace(sample: Sample, image: Tensor, label: Tensor | None) -> Sample:
    out = sample.copy()
    out["image"] = image
    out["label"] = label
    return out


def _linear_axis(
    in_size: int, out_size: int, start: int, length: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices and weights of output pixels ``start … start+length-1`` (bilinear)."""
    scale = in_size / out_size
    idx = torch.arange(start, start + length, device=device, dtype=torch.float64)
    pos = ((idx + 0.5) * scale - 0.5).clamp(min=0.0)
    i0 = pos.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    return i0, i1, (pos - i0).float()


def _nearest_axis(
    in_size: int, out_size: int, start: int, length: int, device: torch.device
) -> Tensor:
    """Source index of output pixels ``start … start+length-1`` (nearest, pixel-centre aligned).

    floor((i + ½) · in / out), in exact integer arithmetic (no rounding at ties).
    """
    idx = torch.arange(start, start + length, device=device, dtype=torch.int64)
    return torch.div((2 * idx + 1) * in_size, 2 * out_size, rounding_mode="floor").clamp(
        max=in_size - 1
    )


def resize_image(
    image: Tensor, size: tuple[int, int], window: tuple[int, int, int, int] | None = None
) -> Tensor:
    """Bilinear resize (``align_corners=False``, no antialias), optionally of a window only.

    Args:
        image: (3, H, W) uint8 or float.
        size: (h, w) of the full resized image.
        window: (top, left, height, width) of the part of the resized image to compute; the
            result equals ``resize_image(image, size)[:, top:top+height, left:left+width]``
            at a fraction of the cost. The whole image when None.

    Returns:
        (3, height, width) with the dtype of ``image`` (uint8 results are rounded).

    Raises:
        ValueError: non-positive size or a window outside the resized image.
    """
    _check_window(size, window)
    h, w = int(size[0]), int(size[1])
    top, left, wh, ww = (0, 0, h, w) if window is None else window
    y0, y1, wy = _linear_axis(image.shape[-2], h, top, wh, image.device)
    x0, x1, wx = _linear_axis(image.shape[-1], w, left, ww, image.device)
    ftype = image.dtype if image.is_floating_point() else torch.float32
    # Columns first, on the source rows the window needs, then rows. The operations on an output
    # pixel never depend on the window, so a window is bit-identical to the same part of the
    # full resize (what lets RandomRescaleCrop resample only its crop).
    first, last = int(y0[0]), int(y1[-1])
    rows = image[:, first : last + 1]
    left_cols = rows.index_select(2, x0).to(ftype)
    cols = (rows.index_select(2, x1).to(ftype) - left_cols).mul_(wx).add_(left_cols)
    top_rows = cols.index_select(1, y0 - first)
    out = torch.lerp(top_rows, cols.index_select(1, y1 - first), wy[:, None], out=top_rows)
    if not image.is_floating_point():
        out = out.round_().clamp_(0, 255).to(image.dtype)
    return out


def _check_window(size: tuple[int, int], window: tuple[int, int, int, int] | None) -> None:
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (h, w), got {size}")
    if window is not None:
        top, left, wh, ww = window
        if top < 0 or left < 0 or top + wh > h or left + ww > w or wh <= 0 or ww <= 0:
            raise ValueError(f"window {window} must lie inside the resized size {size}")


def resize_label(
    label: Tensor, size: tuple[int, int], window: tuple[int, int, int, int] | None = None
) -> Tensor:
    """Nearest-neighbour resize of a label map (pixel-centre aligned, = ``"nearest-exact"``).

    Args:
        label: (H, W) integer labels.
        size: (h, w) of the full resized map.
        window: (top, left, height, width) to compute only a window (see `resize_image`).

    Returns:
        (height, width) labels, same dtype.
    """
    h, w = int(size[0]), int(size[1])
    top, left, wh, ww = (0, 0, h, w) if window is None else window
    ys = _nearest_axis(label.shape[0], h, top, wh, label.device)
    xs = _nearest_axis(label.shape[1], w, left, ww, label.device)
    return label.index_select(0, ys).index_select(1, xs)


def rescale_size(size: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """Keep-ratio target size: the largest size within a (long edge, short edge) bound.

    Args:
        size: (H, W) of the image.
        scale: Bound on the edges, in any order, e.g. ``(2048, 1024)``.

    Returns:
        (h, w) = round((H, W) · f), f = min(long / max(H, W), short / min(H, W)).
    """
    long_edge, short_edge = max(scale), min(scale)
    f = min(long_edge / max(size), short_edge / min(size))
    return int(size[0] * f + 0.5), int(size[1] * f + 0.5)


def _crop_box(
    g: torch.Generator | None, size: tuple[int, int], crop: tuple[int, int]
) -> tuple[int, int, int, int]:
    h, w = size
    top = _randint(g, 0, max(h - crop[0], 0) + 1)
    left = _randint(g, 0, max(w - crop[1], 0) + 1)
    return top, left, min(crop[0], h), min(crop[1], w)


def _pad_to(x: Tensor, size: tuple[int, int], value: float) -> Tensor:
    """``x`` (…, h, w) padded at the bottom and right to ``size`` with ``value`` (x if equal).

    Raises:
        ValueError: ``x`` is larger than ``size``.
    """
    h, w = x.shape[-2:]
    if h > size[0] or w > size[1]:
        raise ValueError(f"Pad: image (H, W) = {(h, w)} is larger than size {size}")
    if (h, w) == size:
        return x
    out = x.new_full((*x.shape[:-2], *size), value)
    out[..., :h, :w] = x
    return out


def _balanced(label: Tensor, cat_max_ratio: float, ignore_index: int) -> bool:
    """Whether no single class covers ``cat_max_ratio`` or more of the labelled pixels."""
    counts = torch.bincount(label.reshape(-1))  # labels are non-negative ids
    if 0 <= ignore_index < counts.numel():
        counts[ignore_index] = 0
    counts = counts[counts > 0]
    return counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < cat_max_ratio


def _check_pair(name: str, value: Sequence[float], positive: bool = True) -> None:
    if (
        len(value) != 2
        or not all(math.isfinite(float(v)) for v in value)
        or (positive and min(value) <= 0)
    ):
        kind = "finite positive" if positive else "finite"
        raise ValueError(f"{name} must be a pair of {kind} numbers, got {value}")


# --------------------------------------------------------------------------- transforms


class JointTransform:
    """Base class: ``transform(sample, generator=None) -> sample``."""

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Apply the transform.

        Args:
            sample: Input sample (not modified).
            generator: Source of randomness; torch's default generator when None.

        Returns:
            The transformed sample.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(JointTransform):
    """Apply transforms in order with one generator.

    With ``generator=None`` a fresh generator is seeded from torch's default generator, so each
    DataLoader worker (seeded by the loader) gets its own stream.

    Args:
        transforms: The transforms.
    """

    def __init__(self, transforms: Sequence[JointTransform]) -> None:
        self.transforms = list(transforms)

    @staticmethod
    def resolve_generator(generator: torch.Generator | None) -> torch.Generator:
        """``generator``, or when None a fresh one seeded from torch's default generator.

        `__call__` starts with this draw; code that runs the steps itself calls it to consume
        exactly the same random numbers.
        """
        if generator is None:
            seed = int(torch.randint(0, 2**62, ()))
            generator = torch.Generator().manual_seed(seed)
        return generator

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Apply every transform in order (see `JointTransform`)."""
        generator = self.resolve_generator(generator)
        for t in self.transforms:
            sample = t(sample, generator)
        return sample


class RandomRescale(JointTransform):
    """Random keep-ratio rescale to a base scale times a ratio drawn from ``ratio_range``.

    As mmsegmentation's ``Resize(img_scale, ratio_range, keep_ratio=True)``: r ~ U(ratio_range),
    target bound = (r · scale[0], r · scale[1]), size from `rescale_size`.

    Args:
        scale: Base (long edge, short edge), e.g. ``(2048, 1024)`` for Cityscapes.
        ratio_range: (low, high) of the ratio, e.g. ``(0.5, 2.0)``.
    """

    def __init__(
        self, scale: tuple[int, int], ratio_range: tuple[float, float] = (0.5, 2.0)
    ) -> None:
        _check_pair("scale", scale)
        _check_pair("ratio_range", ratio_range)
        self.scale = scale
        self.ratio_range = ratio_range

    def target_size(
        self, size: tuple[int, int], generator: torch.Generator | None
    ) -> tuple[int, int]:
        """Draw the ratio and return the (h, w) of an image of (H, W) ``size``."""
        r = _uniform(generator, *self.ratio_range)
        return rescale_size(size, (int(self.scale[0] * r), int(self.scale[1] * r)))

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Rescale image (bilinear) and label (nearest)."""
        image, label = _check_sample(sample, "RandomRescale")
        size = self.target_size((image.shape[1], image.shape[2]), generator)
        return _replace(
            sample,
            resize_image(image, size),
            None if label is None else resize_label(label, size),
        )


class RandomCrop(JointTransform):
    """Random crop; with ``cat_max_ratio < 1`` retry crops dominated by one class.

    As mmsegmentation's ``RandomCrop``: the offset is uniform over the valid range (the crop is
    smaller than ``size`` when the image is); while a crop holds fewer than two non-ignored classes
    or one class covers ``cat_max_ratio`` or more of its non-ignored pixels, a new crop is drawn,
    at most ``max_tries`` times (the last draw is kept).

    Args:
        size: (h, w) of the crop.
        cat_max_ratio: Largest allowed fraction of one class (1 disables the check).
        ignore_index: Label value excluded from the class count.
        max_tries: Number of redraws.
    """

    def __init__(
        self,
        size: tuple[int, int],
        cat_max_ratio: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        max_tries: int = 10,
    ) -> None:
        _check_pair("size", size)
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.size = (int(size[0]), int(size[1]))
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.max_tries = max_tries

    def choose(
        self,
        size: tuple[int, int],
        label_window: Callable[[tuple[int, int, int, int]], Tensor] | None,
        generator: torch.Generator | None,
    ) -> tuple[int, int, int, int]:
        """Draw a crop box (top, left, h, w), applying the ``cat_max_ratio`` rule.

        Args:
            size: (H, W) of the image being cropped.
            label_window: Returns the label inside a box (None: no label, no check).
            generator: Source of randomness.

        Returns:
            The crop box.
        """
        box = _crop_box(generator, size, self.size)
        if self.cat_max_ratio < 1.0 and label_window is not None:
            for _ in range(self.max_tries):
                if _balanced(label_window(box), self.cat_max_ratio, self.ignore_index):
                    break
                box = _crop_box(generator, size, self.size)
        return box

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Crop image and label."""
        image, label = _check_sample(sample, "RandomCrop")
        small = None if self.cat_max_ratio >= 1.0 else label

        def window(b: tuple[int, int, int, int]) -> Tensor:
            assert small is not None
            return small[b[0] : b[0] + b[2], b[1] : b[1] + b[3]]

        top, left, h, w = self.choose(
            (image.shape[1], image.shape[2]), None if label is None else window, generator
        )
        return _replace(
            sample,
            image[:, top : top + h, left : left + w].contiguous(),
            None if label is None else label[top : top + h, left : left + w].contiguous(),
        )


class RandomRescaleCrop(JointTransform):
    """`RandomRescale` followed by `RandomCrop`, computing only the crop.

    Gives exactly the same result as ``Compose([RandomRescale(...), RandomCrop(...)])`` for the
    same generator state (the same draws in the same order), but resamples only the pixels of
    the crop: at ratio 2 on a 2048×1024 image that is 16× fewer pixels.

    Args:
        scale: Base (long edge, short edge).
        crop_size: (h, w) of the crop.
        ratio_range: (low, high) of the rescale ratio.
        cat_max_ratio: See `RandomCrop`.
        ignore_index: See `RandomCrop`.
        max_tries: See `RandomCrop`.
    """

    def __init__(
        self,
        scale: tuple[int, int],
        crop_size: tuple[int, int],
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        max_tries: int = 10,
    ) -> None:
        self.rescale = RandomRescale(scale, ratio_range)
        self.crop = RandomCrop(crop_size, cat_max_ratio, ignore_index, max_tries)

    def plan(
        self,
        image_size: tuple[int, int],
        label: Tensor | None,
        generator: torch.Generator | None = None,
    ) -> tuple[tuple[int, int], tuple[int, int, int, int], Tensor | None]:
        """Draw the rescaled size and the crop box, without touching the image.

        Consumes the same random numbers as `__call__`, which is ``plan`` followed by the
        resampling.

        Args:
            image_size: (H, W) of the image (and label).
            label: (H, W) integer labels, or None.
            generator: Source of randomness.

        Returns:
            ((h, w) rescaled size, (top, left, height, width) crop box in it, the cropped
            label with the dtype of ``label`` or None).
        """
        size = self.rescale.target_size(image_size, generator)

        def window(b: tuple[int, int, int, int]) -> Tensor:
            assert label is not None
            return resize_label(label, size, b)

        box = self.crop.choose(size, None if label is None else window, generator)
        return size, box, None if label is None else window(box)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Rescale and crop image and label in one pass."""
        image, label = _check_sample(sample, "RandomRescaleCrop")
        size, box, new_label = self.plan((image.shape[1], image.shape[2]), label, generator)
        return _replace(sample, resize_image(image, size, box), new_label)


class RandomFlip(JointTransform):
    """Horizontal flip of image and label with probability ``prob``.

    Args:
        prob: Flip probability in [0, 1].
    """

    def __init__(self, prob: float = 0.5) -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        self.prob = prob

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Maybe flip."""
        image, label = _check_sample(sample, "RandomFlip")
        if _uniform(generator, 0.0, 1.0) >= self.prob:
            return sample
        return _replace(sample, image.flip(-1), None if label is None else label.flip(-1))


def _rgb_to_hsv(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(3, H, W) float RGB -> hue, saturation, value planes, as :func:`colorsys.rgb_to_hsv`.

    The hue is in sixths of a turn, [0, 6) (colorsys divides it by 6); the value keeps the
    scale of the input. On ties red wins, then green; grey pixels (max = min) get hue 0 and
    saturation 0.
    """
    r, g, b = rgb.unbind(0)
    v = rgb.amax(dim=0)
    chroma = v - rgb.amin(dim=0)
    c = chroma.clamp(min=1e-12)  # grey pixels: any finite hue, their zero chroma hides it
    hue = torch.where(
        v == r, (g - b) / c, torch.where(v == g, 2.0 + (b - r) / c, 4.0 + (r - g) / c)
    )
    return torch.remainder(hue, 6.0), chroma / v.clamp(min=1e-12), v


def _hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """Inverse of `_rgb_to_hsv` (any real hue, in sixths of a turn): (3, H, W) RGB.

    Each channel is ``v − c · clamp(min(k, 4 − k), 0, 1)`` with chroma ``c = s · v`` and
    ``k = (hue + n) mod 6``, n = 5 (red), 3 (green), 1 (blue).
    """
    chroma = saturation * value
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(hue + n, 6.0)
        channels.append(value - chroma * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels)


def _shift_hue(rgb: Tensor, degrees: float) -> Tensor:
    """Rotate the HSV hue of (3, H, W) float RGB by ``degrees``, keeping saturation and value."""
    hue, saturation, value = _rgb_to_hsv(rgb)
    return _hsv_to_rgb(hue + degrees / 60.0, saturation, value)


def _quantised_saturation(s: Tensor, alpha: float) -> Tensor:
    """Saturation ``s`` scaled by ``alpha`` on the 8-bit grid: ⌊clamp(255·α·s)⌋ / 255."""
    return (s * (255.0 * alpha)).clamp(0, 255).floor() / 255.0


def _scale_saturation(rgb: Tensor, alpha: float) -> Tensor:
    """Multiply the HSV saturation by ``alpha`` (quantised to 1/255 as OpenCV's uint8 S).

    Hue and value are kept, so the HSV round trip reduces to moving every channel towards the
    value: rgb' = v − (v − rgb) · s'/s. Where s' = s (e.g. α = 1 and 255·s an integer) the ratio
    is exactly 1 and the pixel is unchanged; grey pixels have s = s' = 0, ratio 0, and stay
    grey.
    """
    _, s, v = _rgb_to_hsv(rgb)
    ratio = _quantised_saturation(s, alpha) / s.clamp(min=1e-12)
    return v - (v - rgb) * ratio


def _lookup(table: Tensor, image: Tensor) -> Tensor:
    """``table[image]`` for a uint8 image: a 256-entry table applied to every value."""
    return table[image.long()]


class PhotoMetricDistortion(JointTransform):
    """Random brightness, contrast, saturation and hue, as mmsegmentation's PhotoMetricDistortion.

    Each step happens with probability 1/2: brightness (add U(−δ_b, δ_b)); contrast (multiply by
    U(contrast_range)), either first or last (probability 1/2 each); saturation (multiply S of HSV
    by U(saturation_range)); hue (shift H by an integer in [−δ_h, δ_h] in OpenCV's 0–180 unit,
    i.e. 2° steps). Values are clipped to [0, 255] and truncated to integers after brightness
    and contrast (which run as 256-entry lookup tables), and rounded to the nearest integer
    after the saturation/hue step, as OpenCV's HSV → BGR conversion does in mmsegmentation
    (truncating there would darken by half a level on average: the float round trip lands a
    hair below the integers it should give back). Unlike mmsegmentation, there is no uint8
    rounding between the saturation and hue steps. The label is unchanged.
    The transform is pixel-wise: equal input colours give equal outputs.

    Args:
        brightness_delta: δ_b.
        contrast_range: (low, high) contrast factor.
        saturation_range: (low, high) saturation factor.
        hue_delta: δ_h in OpenCV hue units (2°).
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        _check_pair("contrast_range", contrast_range)
        _check_pair("saturation_range", saturation_range)
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    @staticmethod
    def _quantise(x: Tensor) -> Tensor:
        return x.clamp_(0, 255).floor_()

    def _draw_contrast(self, g: torch.Generator | None) -> float | None:
        return _uniform(g, *self.contrast_range) if _randint(g, 0, 2) else None

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Distort the image colours (uint8 in, uint8 out)."""
        image, label = _check_sample(sample, "PhotoMetricDistortion", False)
        if image.dtype != torch.uint8:
            raise ValueError(
                f"PhotoMetricDistortion expects a uint8 image (apply it before Normalize), "
                f"got {image.dtype}"
            )
        g = generator
        # Draw every parameter first, in mmsegmentation's order.
        beta = None
        if _randint(g, 0, 2):
            beta = _uniform(g, -float(self.brightness_delta), float(self.brightness_delta))
        contrast_first = _randint(g, 0, 2) == 1
        alpha_first = self._draw_contrast(g) if contrast_first else None
        sat = _uniform(g, *self.saturation_range) if _randint(g, 0, 2) else None
        hue = _randint(g, -self.hue_delta, self.hue_delta + 1) if _randint(g, 0, 2) else None
        alpha_last = None if contrast_first else self._draw_contrast(g)
        # Brightness and contrast act on each value alone: apply them as 256-entry tables.
        pre = torch.arange(256, dtype=torch.float32, device=image.device)
        if beta is not None:
            pre = self._quantise(pre + beta)
        if alpha_first is not None:
            pre = self._quantise(pre * alpha_first)
        if sat is None and hue is None:
            if alpha_last is not None:
                pre = self._quantise(pre * alpha_last)
            return _replace(sample, _lookup(pre.to(torch.uint8), image), label)
        img = _lookup(pre, image)
        if sat is not None:
            img = _scale_saturation(img, sat)
        if hue is not None:
            img = _shift_hue(img, 2.0 * hue)
        img = self._quantise(img + 0.5)  # round to nearest (ties up)
        if alpha_last is not None:
            img = self._quantise(img * alpha_last)
        return _replace(sample, img.to(torch.uint8), label)


class Normalize(JointTransform):
    """``(image − mean) / std`` per channel, giving float32.

    Args:
        mean: Per-channel mean on the 0–255 scale (ImageNet by default).
        std: Per-channel standard deviation on the 0–255 scale.
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must be 3 numbers with std > 0, got {mean}, {std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Normalise the image."""
        image, label = _check_sample(sample, "Normalize", False)
        mean = torch.tensor(self.mean, device=image.device)[:, None, None]
        std = torch.tensor(self.std, device=image.device)[:, None, None]
        # one float copy, normalised in place (the input is never modified)
        return _replace(sample, image.to(torch.float32, copy=True).sub_(mean).div_(std), label)


class Pad(JointTransform):
    """Pad bottom and right to ``size``: image with ``pad_value``, label with ``label_pad_value``.

    Args:
        size: (h, w) to pad to; larger images raise (crop first).
        pad_value: Image fill.
        label_pad_value: Label fill (255: ignored by the loss and metrics).
    """

    def __init__(
        self, size: tuple[int, int], pad_value: float = 0.0, label_pad_value: int = IGNORE_INDEX
    ) -> None:
        _check_pair("size", size)
        self.size = (int(size[0]), int(size[1]))
        self.pad_value = pad_value
        self.label_pad_value = label_pad_value

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Pad image and label."""
        image, label = _check_sample(sample, "Pad")
        out = _pad_to(image, self.size, self.pad_value)
        if out is image:
            return sample
        new_label = None if label is None else _pad_to(label, self.size, self.label_pad_value)
        return _replace(sample, out, new_label)


class Resize(JointTransform):
    """Deterministic resize (test time): keep-ratio to a (long, short) bound, or to exactly (h, w).

    Args:
        scale: (long edge, short edge) bound when ``keep_ratio``, else the exact (h, w).
        keep_ratio: Keep the aspect ratio.
        resize_label: Also resize the label (nearest). Keep False for evaluation, which happens
            at label resolution.
    """

    def __init__(
        self, scale: tuple[int, int], keep_ratio: bool = True, resize_label: bool = True
    ) -> None:
        _check_pair("scale", scale)
        self.scale = (int(scale[0]), int(scale[1]))
        self.keep_ratio = keep_ratio
        self.resize_label = resize_label

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Resize."""
        image, label = _check_sample(sample, "Resize", self.resize_label)
        hw = (image.shape[1], image.shape[2])
        size = rescale_size(hw, self.scale) if self.keep_ratio else self.scale
        if label is not None and self.resize_label:
            label = resize_label(label, size)
        return _replace(sample, resize_image(image, size), label)


class ResizeToMultiple(JointTransform):
    """Resize up to the next multiple of ``divisor`` in each dimension (e.g. 32).

    Args:
        divisor: The multiple.
        resize_label: Also resize the label (nearest); keep False for evaluation.
    """

    def __init__(self, divisor: int = 32, resize_label: bool = True) -> None:
        if divisor <= 0:
            raise ValueError(f"divisor must be positive, got {divisor}")
        self.divisor = divisor
        self.resize_label = resize_label

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Resize to multiples of the divisor."""
        image, label = _check_sample(sample, "ResizeToMultiple", self.resize_label)
        d = self.divisor
        size = (math.ceil(image.shape[1] / d) * d, math.ceil(image.shape[2] / d) * d)
        if size == (image.shape[1], image.shape[2]):
            return sample
        if label is not None and self.resize_label:
            label = resize_label(label, size)
        return _replace(sample, resize_image(image, size), label)


def train_pipeline(
    scale: tuple[int, int] = (2048, 1024),
    crop_size: tuple[int, int] = (512, 1024),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
) -> Compose:
    """The GMMSeg training pipeline (Cityscapes defaults).

    Rescale (ratio range) + crop (``cat_max_ratio``) fused, flip, photometric distortion,
    normalise, pad to the crop size with label 255.

    Returns:
        A `Compose`; its samples hold a (3, h, w) float32 image and (h, w) int64 label.
    """
    return Compose(
        [
            RandomRescaleCrop(scale, crop_size, ratio_range, cat_max_ratio, ignore_index),
            RandomFlip(flip_prob),
            PhotoMetricDistortion(),
            Normalize(mean, std),
            Pad(crop_size, 0.0, ignore_index),
        ]
    )


def eval_pipeline(
    scale: tuple[int, int] = (2048, 1024),
    divisor: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """The test pipeline: keep-ratio resize of the image only, optional multiple-of-``divisor``.

    Labels stay at their stored resolution (evaluation happens there).

    Returns:
        A `Compose`.
    """
    steps: list[JointTransform] = [Resize(scale, keep_ratio=True, resize_label=False)]
    if divisor is not None:
        steps.append(ResizeToMultiple(divisor, resize_label=False))
    steps.append(Normalize(mean, std))
    return Compose(steps)
