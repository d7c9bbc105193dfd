"""Training throughput through the engine: GMM head vs softmax head, and the demo end to end.

1. A MiT-B0 + SegFormer-decoder Segmentor (recipe widths: decoder 256 channels, GMM 64-d
   embedding, 19 classes, M = 5, the paper's EM settings) trained by ``gmmseg.engine.Trainer``
   on 512×512 batches of 2 on the CPU, one step at a time, GMM and softmax steps interleaved so
   that machine load hits both alike. Reported: images/s of each and the GMM overhead
   (GMM step time / softmax step time − 1). Goal: ≤ 15 %.
2. ``gmmseg demo`` end to end (both models, evaluation, figures), as measured by the demo itself,
   with ``--quick`` (CI size) unless ``--full`` is given.

Run: ``python benchmarks/bench_train.py [--full] [--threads N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from typing import Any

import torch

from _common import report
from gmmseg.engine import DistInfo, PolyWarmup, Trainer, TrainSettings, build_optimizer
from gmmseg.recipes import build_model, get_recipe

IMAGE, BATCH, CLASSES = 512, 2, 19


def make_trainer(head: str) -> Trainer:
    recipe = get_recipe("segformer_b5_cityscapes_gmm")
    cfg = dataclasses.replace(
        recipe.model, backbone="mit_b0", decoder_channels=256, head=head, sync_bn=False
    )
    torch.manual_seed(0)
    model = build_model(cfg, CLASSES)
    o = recipe.optim
    opt = build_optimizer(model, o.name, o.lr, o.weight_decay, head_lr_mult=o.head_lr_mult)
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(BATCH, 3, IMAGE, IMAGE, generator=g),
        "label": torch.randint(0, CLASSES, (BATCH, IMAGE, IMAGE), generator=g),
    }

    def batches(start: int) -> Any:
        while True:
            yield batch

    return Trainer(
        model,
        opt,
        PolyWarmup(1000, warmup_iters=10),
        batches,
        TrainSettings(max_iters=1000),
        DistInfo(0, 1, 0, torch.device("cpu")),
        progress=False,
    )


def step_times(repeats: int) -> tuple[float, float]:
    trainers = {h: make_trainer(h) for h in ("gmm", "linear")}
    batch = next(iter(trainers["gmm"].loader_factory(0)))
    for t in trainers.values():  # warm-up (allocator, first M-step)
        for _ in range(2):
            t.step(batch)
    times: dict[str, list[float]] = {"gmm": [], "linear": []}
    for _ in range(repeats):
        for head, t in trainers.items():
            t0 = time.perf_counter()
            t.step(batch)
            times[head].append(time.perf_counter() - t0)
    return statistics.median(times["gmm"]), statistics.median(times["linear"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="time the full demo, not --quick")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gmm_s, soft_s = step_times(args.repeats)
    rows: list[dict[str, Any]] = [
        {
            "case": f"MiT-B0 training step {IMAGE}x{IMAGE} batch {BATCH}: GMM vs softmax",
            "ours_s": gmm_s,
            "reference_s": soft_s,
            "ours_images_per_s": BATCH / gmm_s,
            "reference_images_per_s": BATCH / soft_s,
            "ratio": gmm_s / soft_s,
            "ratio_meaning": "GMM step time / softmax step time (overhead = ratio - 1)",
            "goal": "<= 1.15",
            "pass": gmm_s / soft_s <= 1.15,
        }
    ]
    from gmmseg.demo import run_demo

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        metrics = run_demo(out, quick=not args.full, progress=False)
        wall = time.perf_counter() - t0
    budget = 300.0 if args.full else 60.0
    rows.append(
        {
            "case": f"gmmseg demo{'' if args.full else ' --quick'} end to end (both models)",
            "ours_s": wall,
            "reference_s": budget,
            "ratio": wall / budget,
            "ratio_meaning": "wall time / budget (5 min full, 1 min --quick)",
            "goal": "<= 1",
            "pass": wall <= budget,
            "train_seconds": metrics["train_seconds"],
            "gmmseg_mIoU": metrics["gmmseg"]["mIoU"],
            "softmax_mIoU": metrics["softmax"]["mIoU"],
        }
    )
    report("bench_train", rows)


if __name__ == "__main__":
    main()
