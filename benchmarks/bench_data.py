"""Training data pipeline at Cityscapes size: gmmseg vs an equivalent PIL-only pipeline.

Both pipelines read the same 2048×1024 PNG fixtures (RGB image + mode L/P train-id label) and
apply the GMMSeg training transforms: random keep-ratio rescale to (2048, 1024) × U(0.5, 2.0)
(bilinear image, nearest label), random 512×1024 crop with cat_max_ratio 0.75, horizontal flip,
photometric distortion (brightness, contrast, saturation, hue), ImageNet normalisation, pad to
the crop.

- PIL reference (the usual implementation): ``Image.open(image).convert("RGB")`` and
  ``Image.open(label).load()`` decode both files whole; PIL resizes the whole image and label,
  then the crop is drawn (cat_max_ratio on the resized label) and cut, then flip and the colour
  steps with PIL/numpy, normalise and pad with numpy.
- gmmseg: ``Cityscapes(root, "train", transform=train_pipeline(...))``: the loader decodes
  image and label whole (public Pillow calls), then the transform draws the rescale ratio and
  the crop, resamples only the pixels of the crop (a windowed bilinear resize, bit-identical to
  resizing everything and cropping: tests/test_data_io), flips, distorts the colours, normalises
  and pads with torch.

Throughput is measured through a DataLoader (batch 1) with 0 and 2 workers, draining one sampler
of 24 draws of the 4 frames (the same shuffled order for both pipelines), as iteration-based
training draws from one long sampler (with short epochs, one worker waits for the other at each
epoch's end). The two pipelines are timed
alternately (ours, reference, ours, …) so that load changes on a shared machine hit both alike;
each number is the median over the repeats.

With workers, every sample also crosses processes (the float32 image and the int64 label, for
both pipelines alike).

Goal: not slower than the PIL-only pipeline (ratio ≥ 1).
Run: ``cd benchmarks && python bench_data.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset

from _common import interleaved_medians, median_time, report
from gmmseg.data import Cityscapes, build_dataloader
from gmmseg.data import transforms as T
from gmmseg.testing import write_fixture

torch.set_num_threads(1)
SCALE, CROP, NUM_FRAMES = (2048, 1024), (512, 1024), 4
MEAN = np.array(T.IMAGENET_MEAN, dtype=np.float32)
STD = np.array(T.IMAGENET_STD, dtype=np.float32)


class PILPipeline(Dataset[dict[str, torch.Tensor]]):
    """The same steps written with PIL and numpy only."""

    def __init__(self, ds: Cityscapes) -> None:
        self.frames = ds.frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        frame = self.frames[i]
        img = Image.open(frame.image_path).convert("RGB")
        lab = Image.open(frame.label_path)  # type: ignore[arg-type]
        lab.load()
        return self.transform(img, lab, np.random.default_rng())

    @staticmethod
    def transform(
        img: Image.Image, lab: Image.Image, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        r = rng.uniform(0.5, 2.0)
        w, h = img.size
        f = min(SCALE[0] * r / max(w, h), SCALE[1] * r / min(w, h))
        size = (int(w * f + 0.5), int(h * f + 0.5))
        img = img.resize(size, Image.Resampling.BILINEAR)
        lab = lab.resize(size, Image.Resampling.NEAREST)
        lab_np = np.asarray(lab)
        for _ in range(11):
            top = int(rng.integers(0, max(size[1] - CROP[0], 0) + 1))
            left = int(rng.integers(0, max(size[0] - CROP[1], 0) + 1))
            crop = lab_np[top : top + CROP[0], left : left + CROP[1]]
            vals, cnt = np.unique(crop, return_counts=True)
            cnt = cnt[vals != 255]
            if len(cnt) > 1 and cnt.max() / cnt.sum() < 0.75:
                break
        box = (left, top, left + min(CROP[1], size[0]), top + min(CROP[0], size[1]))
        img, lab = img.crop(box), lab.crop(box)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            lab = lab.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            beta = rng.uniform(-32, 32)
            img = img.point(lambda v: max(0, min(255, int(v + beta))))
        mode = rng.integers(2)
        if mode == 1 and rng.random() < 0.5:
            alpha = rng.uniform(0.5, 1.5)
            img = img.point(lambda v: max(0, min(255, int(v * alpha))))
        if rng.random() < 0.5:
            img = ImageEnhance.Color(img).enhance(rng.uniform(0.5, 1.5))
        if rng.random() < 0.5:
            hsv = np.array(img.convert("HSV"))
            hsv[..., 0] = (
                hsv[..., 0].astype(np.int32) + int(rng.integers(-18, 19)) * 256 // 180
            ) % 256
            img = Image.fromarray(hsv, "HSV").convert("RGB")
        if mode == 0 and rng.random() < 0.5:
            alpha = rng.uniform(0.5, 1.5)
            img = img.point(lambda v: max(0, min(255, int(v * alpha))))
        arr = (np.asarray(img, dtype=np.float32) - MEAN) / STD
        out = np.zeros((*CROP, 3), dtype=np.float32)
        out[: arr.shape[0], : arr.shape[1]] = arr
        lab_out = np.full(CROP, 255, dtype=np.int64)
        lab_arr = np.asarray(lab)
        lab_out[: lab_arr.shape[0], : lab_arr.shape[1]] = lab_arr
        return {
            "image": torch.from_numpy(out).permute(2, 0, 1),
            "label": torch.from_numpy(lab_out),
        }


def drain(loader: DataLoader[object]) -> None:
    for _batch in loader:
        pass


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        run(Path(tmp))


def run(tmp: Path) -> None:
    t0 = time.perf_counter()
    root = write_fixture("cityscapes", tmp, num_images=NUM_FRAMES, size=(1024, 2048))
    print(f"wrote {NUM_FRAMES} 2048x1024 frames per split in {time.perf_counter() - t0:.1f} s")
    ours_ds = Cityscapes(root, "train", transform=T.train_pipeline(SCALE, CROP))
    ref_ds = PILPipeline(Cityscapes(root, "train"))
    n_images = 24
    order = (
        torch.randperm(n_images, generator=torch.Generator().manual_seed(0)) % NUM_FRAMES
    ).tolist()
    rows = []
    for workers in (0, 2):
        ours_loader = build_dataloader(
            ours_ds,
            1,
            sampler=order,  # type: ignore[arg-type]  (any iterable of indices)
            num_workers=workers,
            pin_memory=False,
        )
        ref_loader: DataLoader[object] = DataLoader(
            ref_ds, batch_size=1, sampler=order, num_workers=workers, persistent_workers=workers > 0
        )
        ours, ref = interleaved_medians(
            [
                lambda: drain(ours_loader),  # noqa: B023
                lambda: drain(ref_loader),  # noqa: B023
            ],
            repeats=15,  # the 2-worker timing varies by ~10 % between runs on a 2-core VM
        )
        rows.append(
            {
                "case": f"train pipeline 2048x1024 -> 512x1024, {workers} workers (per image)",
                "ours_s": ours / n_images,
                "reference_s": ref / n_images,
                "ours_images_per_s": n_images / ours,
                "reference_images_per_s": n_images / ref,
                "ratio": ref / ours,
                "ratio_meaning": "PIL-only time / gmmseg time (higher is better)",
                "goal": ">= 1",
                "pass": ref / ours >= 1.0,
            }
        )
    # Where the time goes: a full decode alone (both pipelines decode everything) and the
    # transforms alone on decoded inputs.
    plain = Cityscapes(root, "train")
    decode = median_time(lambda: plain[0], repeats=9)
    samples = [plain[i] for i in range(NUM_FRAMES)]
    pils = [
        (Image.open(f.image_path).convert("RGB"), Image.open(f.label_path)) for f in plain.frames
    ]  # type: ignore[arg-type]
    for _, lab in pils:
        lab.load()
    pipe = T.train_pipeline(SCALE, CROP)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    ours_t, ref_t = interleaved_medians(
        [
            lambda: [pipe(s, g) for s in samples],
            lambda: [PILPipeline.transform(i, la, rng) for i, la in pils],
        ],
        repeats=7,
    )
    print(f"full decode of image+label: {1e3 * decode:.1f} ms per image")
    rows.append(
        {
            "case": "transforms only (decoded input), 0 workers (per image)",
            "ours_s": ours_t / NUM_FRAMES,
            "reference_s": ref_t / NUM_FRAMES,
            "ratio": ref_t / ours_t,
            "ratio_meaning": "PIL-only time / gmmseg time (higher is better)",
            "goal": ">= 1 (informative)",
            "pass": ref_t / ours_t >= 1.0,
        }
    )
    for r in rows:
        r["decode_s"] = decode
    report("bench_data", rows)


if __name__ == "__main__":
    sys.exit(main())
