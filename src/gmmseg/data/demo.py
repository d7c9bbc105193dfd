"""The embedded demo benchmark: scenes composed from real photographs and handwriting.

Scenes are composed deterministically from images bundled with scikit-image and scikit-learn
(the ``demo`` extra; nothing is downloaded), in the spirit of Fishyscapes Static:

* **stuff** (4 classes): the image is split into regions (Voronoi cells or half-planes of random
  lines), each filled with a crop of a real texture: scikit-image's ``grass``, ``gravel``,
  ``brick`` and ``moon`` (tinted);
* **things** (8 classes): handwritten digits 0–7 from scikit-learn's ``load_digits``, upscaled,
  thresholded into masks and tinted;
* **anomalies**, never in ``train``/``val``: split ``ood`` pastes face crops from scikit-image's
  LFW subset (elliptical masks, tinted) and crops of other photographs (astronaut, coffee,
  chelsea, rocket, Hubble deep field); split ``ood_near`` pastes held-out digits 8 and 9.

| split        | label                                        | sources                      |
| ------------ | -------------------------------------------- | ---------------------------- |
| ``train``    | train ids 0–11                               | digits 0–999; textures x<384 |
| ``val``      | train ids 0–11                               | digits 1000–1299; block A    |
| ``ood``      | 0 normal, 1 anomaly, 255 void (rings)        | digits 1300–; B; faces, photos |
| ``ood_near`` | 0 normal, 1 anomaly (digits 8, 9), 255 void  | digits 1300–; block B        |

Texture crops of ``train`` come from columns 0–383 of each 512×512 texture, ``val`` from columns
384–511 of rows 0–255 (block A) and the anomaly splits from columns 384–511 of rows 256–511
(block B), so no split shares source pixels or digit samples with another.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch.utils.data import Dataset

from gmmseg.data.base import Sample, Transform
from gmmseg.data.meta import ANOMALY_CLASSES, ANOMALY_PALETTE, IGNORE_INDEX

__all__ = ["DemoScenes"]

Split = Literal["train", "val", "ood", "ood_near"]
_SPLITS: dict[str, int] = {"train": 0, "val": 1, "ood": 2, "ood_near": 3}
_STUFF = ("grass", "gravel", "brick", "moon")
_TINTS = np.array(
    [[0.55, 1.0, 0.45], [0.95, 0.85, 0.7], [1.0, 0.55, 0.45], [0.75, 0.85, 1.0]], dtype=np.float32
)
_DIGIT_COLOURS = np.array(
    [
        [230, 25, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [250, 190, 190],
    ],
    dtype=np.float32,
)
_DIGIT_RANGES = {0: (0, 1000), 1: (1000, 1300), 2: (1300, 1797), 3: (1300, 1797)}


@functools.lru_cache(maxsize=1)
def _sources() -> dict[str, Any]:
    try:  # optional dependencies (the ``demo`` extra), imported only here
        skd = importlib.import_module("skimage.data")
        sk_datasets = importlib.import_module("sklearn.datasets")
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DemoScenes needs scikit-image and scikit-learn: pip install 'gmmseg[demo]'"
        ) from err
    digits = sk_datasets.load_digits()
    faces = np.asarray(skd.lfw_subset())[:100]  # the first 100 of the subset are faces
    photos = [np.asarray(getattr(skd, n)()) for n in ("astronaut", "coffee", "chelsea", "rocket")]
    photos.append(np.asarray(skd.hubble_deep_field()))
    return {
        "textures": [np.asarray(getattr(skd, n)(), dtype=np.float32) for n in _STUFF],
        "digit_images": np.asarray(digits.images, dtype=np.float32) / 16.0,
        "digit_targets": np.asarray(digits.target, dtype=np.int64),
        "faces": faces.astype(np.float32),
        "photos": photos,
    }


def _zoom(img: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    """Bilinear resize of a (h, w) float image to (size, size)."""
    out = Image.fromarray(img.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _texture_crop(
    rng: np.random.Generator, texture: NDArray[np.float32], split: int, size: int
) -> NDArray[np.float32]:
    if split == 0:
        y0, y1, x0, x1 = 0, 512, 0, 384
    elif split == 1:
        y0, y1, x0, x1 = 0, 256, 384, 512
    else:
        y0, y1, x0, x1 = 256, 512, 384, 512
    y = int(rng.integers(y0, y1 - size + 1))
    x = int(rng.integers(x0, x1 - size + 1))
    return texture[y : y + size, x : x + size]


def _regions(rng: np.random.Generator, size: int) -> NDArray[np.int64]:
    """A (size, size) map of region ids: Voronoi cells or half-planes of random lines."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    if rng.random() < 0.5:
        k = int(rng.integers(2, 6))
        pts = rng.uniform(0, size, (k, 2)).astype(np.float32)
        d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
        return np.asarray(d.argmin(-1), dtype=np.int64)
    n = int(rng.integers(1, 3))
    code = np.zeros((size, size), dtype=np.int64)
    for j in range(n):
        angle = rng.uniform(0, np.pi)
        c = rng.uniform(0.3, 0.7, 2) * size
        side = (xx - c[1]) * np.sin(angle) - (yy - c[0]) * np.cos(angle) > 0
        code += side.astype(np.int64) << j
    return code


def _paste(
    img: NDArray[np.float32],
    mask_canvas: NDArray[np.bool_],
    rng: np.random.Generator,
    patch: NDArray[np.float32],
    mask: NDArray[np.bool_],
) -> None:
    """Paste ``patch`` (d, d, 3) where ``mask`` at a random position; mark ``mask_canvas``."""
    size, d = img.shape[0], patch.shape[0]
    y, x = int(rng.integers(0, size - d + 1)), int(rng.integers(0, size - d + 1))
    region = img[y : y + d, x : x + d]
    region[mask] = patch[mask]
    mask_canvas[y : y + d, x : x + d] |= mask


def _ring(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    from scipy.ndimage import binary_dilation

    grown: NDArray[np.bool_] = binary_dilation(mask, iterations=1)
    return grown & ~mask


class DemoScenes(Dataset[Sample]):
    """Synthetic-composite scenes from real bundled images (needs the ``demo`` extra).

    Every frame is generated on access from ``(seed, split, index)``, so the dataset is
    deterministic, worker-safe and costs no disk. Closed-set splits (``train``, ``val``) yield
    train ids over `semantic_classes` (4 stuff + digits 0–7, no ignore pixels); anomaly
    splits (``ood``, ``ood_near``) yield the canonical anomaly label (0 normal, 1 anomaly,
    255 void: a one-pixel ring around every anomaly).

    Args:
        split: ``"train"``, ``"val"``, ``"ood"`` or ``"ood_near"``.
        num_images: Number of frames.
        size: Side of the square images, 64–128.
        seed: Seed of the composition.
        transform: Optional joint transform.

    Raises:
        ValueError: bad split, size or num_images.
        ImportError: scikit-image or scikit-learn missing.

    Examples:
        >>> ds = DemoScenes("train", num_images=100)  # doctest: +SKIP
        >>> ds[0]["image"].shape  # doctest: +SKIP
        torch.Size([3, 96, 96])
    """

    #: The 12 known classes (train ids 0–11).
    semantic_classes: ClassVar[tuple[str, ...]] = _STUFF + tuple(f"digit {d}" for d in range(8))
    #: RGB colour of each known class.
    semantic_palette: ClassVar[tuple[tuple[int, int, int], ...]] = tuple(
        tuple(int(v) for v in c)  # type: ignore[misc]
        for c in np.concatenate([_TINTS * 160, _DIGIT_COLOURS]).round()
    )
    ignore_index: ClassVar[int] = IGNORE_INDEX

    def __init__(
        self,
        split: Split = "train",
        num_images: int = 1000,
        size: int = 96,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
        if not 64 <= size <= 128:
            raise ValueError(f"size must be in [64, 128], got {size}")
        if num_images <= 0:
            raise ValueError(f"num_images must be positive, got {num_images}")
        self.split = split
        self.num_images = num_images
        self.size = size
        self.seed = seed
        self.transform = transform
        self.has_labels = True
        closed = split in ("train", "val")
        self.classes = self.semantic_classes if closed else ANOMALY_CLASSES
        self.palette = self.semantic_palette if closed else ANOMALY_PALETTE
        src = _sources()
        lo, hi = _DIGIT_RANGES[_SPLITS[split]]
        targets = src["digit_targets"]
        idx = np.arange(lo, hi)
        self._known = idx[targets[lo:hi] < 8]
        self._unknown = idx[targets[lo:hi] >= 8]

    def __len__(self) -> int:
        return self.num_images

    def file_list(self) -> list[str]:
        """Virtual file ids (the key of cached indices)."""
        return [f"demo:{self.split}:{self.seed}:{self.size}:{i}" for i in range(len(self))]

    def _digit(
        self, rng: np.random.Generator, pool: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_], int]:
        """A digit of ``pool``: (d, d, 1) shading, (d, d) mask and its value."""
        src = _sources()
        k = int(pool[int(rng.integers(0, pool.size))])
        d = int(rng.integers(self.size // 5, int(self.size / 2.2)))
        up = np.clip(_zoom(src["digit_images"][k], d), 0, 1)
        return (0.55 + 0.45 * up)[..., None], up > 0.45, int(src["digit_targets"][k])

    def _anomaly(self, rng: np.random.Generator) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        src = _sources()
        d = int(rng.integers(self.size // 5, int(self.size / 2.2)))
        yy, xx = np.mgrid[:d, :d].astype(np.float32)
        c = (d - 1) / 2
        ry, rx = c * rng.uniform(0.8, 1.0), c * rng.uniform(0.6, 0.9)
        ellipse = ((yy - c) / ry) ** 2 + ((xx - c) / rx) ** 2 <= 1.0
        if rng.random() < 0.5:
            face = src["faces"][int(rng.integers(0, len(src["faces"])))]
            grey = _zoom(face, d) * 255.0
            tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
            return grey[..., None] * tint, ellipse
        photo = src["photos"][int(rng.integers(0, len(src["photos"])))]
        crop = int(rng.integers(d, min(photo.shape[:2]) // 2))
        y = int(rng.integers(0, photo.shape[0] - crop + 1))
        x = int(rng.integers(0, photo.shape[1] - crop + 1))
        patch = np.stack(
            [_zoom(photo[y : y + crop, x : x + crop, ch].astype(np.float32), d) for ch in range(3)],
            axis=-1,
        )
        mask = ellipse if rng.random() < 0.5 else np.ones((d, d), dtype=np.bool_)
        return patch, mask

    def render(self, index: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        """Compose frame ``index``.

        Returns:
            (S, S, 3) uint8 image and (S, S) uint8 label (train ids or anomaly label).
        """
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} frames")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        src = _sources()
        s = self.size
        regions = _regions(rng, s)
        stuff = rng.integers(0, len(_STUFF), int(regions.max()) + 1)
        label = stuff[regions].astype(np.uint8)
        img = np.zeros((s, s, 3), dtype=np.float32)
        for k in np.unique(label):
            crop = _texture_crop(rng, src["textures"][int(k)], _SPLITS[self.split], s)
            sel = label == k
            img[sel] = crop[sel][:, None] * _TINTS[int(k)]
        for _ in range(int(rng.integers(1, 4))):
            pasted = np.zeros((s, s), dtype=np.bool_)
            shade, mask, digit = self._digit(rng, self._known)
            _paste(img, pasted, rng, _DIGIT_COLOURS[digit] * shade, mask)
            label[pasted] = len(_STUFF) + digit
        anomaly = np.zeros((s, s), dtype=np.bool_)
        if self.split in ("ood", "ood_near"):
            for _ in range(int(rng.integers(1, 3))):
                if self.split == "ood":
                    patch, mask = self._anomaly(rng)
                else:
                    shade, mask, _ = self._digit(rng, self._unknown)
                    patch = rng.uniform(60, 255, 3).astype(np.float32) * shade
                _paste(img, anomaly, rng, patch, mask)
            out = np.zeros((s, s), dtype=np.uint8)
            out[anomaly] = 1
            out[_ring(anomaly)] = IGNORE_INDEX
            label = out
        img += rng.normal(0, 3, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).round().astype(np.uint8), label

    def load_label(self, index: int) -> NDArray[np.uint8]:
        """(S, S) uint8 label of frame ``index`` (see `render`)."""
        return self.render(index)[1]

    def __getitem__(self, index: int) -> Sample:
        image, label = self.render(index)
        sample: Sample = {
            "image": torch.from_numpy(image).permute(2, 0, 1),
            "label": torch.from_numpy(label.astype(np.int64)),
            "name": f"{self.split}_{index:05d}",
            "image_path": "",
            "label_path": "",
            "ori_size": (self.size, self.size),
        }
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self) -> str:
        return f"DemoScenes(split={self.split!r}, {self.num_images} frames, {self.size}px)"
