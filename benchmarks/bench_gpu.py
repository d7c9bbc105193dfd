"""Benchmark: gmmseg on the GPUs the recipes target, in one run (a few minutes on one H100).

Four parts, each timed with the device synchronised around every measured call (medians):

1. **The GMM head at ADE20K scale** (C = 150 classes × M = 8 components, D = 64, 4 × 128 × 128
   pixels): the class log-densities against the naive statement of the original algorithm
   (broadcast (x − μ)/σ over pixels × classes × components × D, in pixel chunks), and the full
   head step (forward, E-step, losses, memory write, M-step when due, backward) against a bare
   (N × 2D) · (2D × C·M) matmul forward + backward pair.
2. **A SegFormer-B5 training step** (512² crops, batch 2, bf16 autocast, AdamW) through
   :class:`gmmseg.engine.Trainer`, the GMM recipe against its softmax twin: images/s and peak
   device memory.
3. **Ring memory against streaming statistics** at ADE20K scale (150 × 8, the paper's 32 000
   slots): the buffers' size and the head step time.
4. **Inference throughput** of a 512 × 1024 image, whole against sliding window (512² crops,
   stride 341), images/s.

Without a GPU it runs on the CPU at reduced sizes (MiT-B0 at 128², 16 384 pixels, 3 200 memory
slots) and says so in the JSON (``"reduced": true``); those numbers check the script, they are
not the benchmark.

Run: ``python benchmarks/bench_gpu.py`` (writes benchmarks/results/bench_gpu.json), or ``nox -s
gpu`` for the CUDA test suite and this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gmmseg.engine import DistInfo, PolyWarmup, Trainer, TrainSettings, build_optimizer
from gmmseg.heads import GMMClassifier
from gmmseg.recipes import build_model, get_recipe

RESULTS = Path(__file__).parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up (kernel selection, allocator)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


# --------------------------------------------------------------------------- 1. the head


def _inputs(
    c: int, b: int, hw: int, d: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(b, d, hw, hw, generator=g)
    coarse = torch.randint(0, c, (b, hw // 8, hw // 8), generator=g)
    labels = F.interpolate(coarse[:, None].float(), size=(hw, hw), mode="nearest")[:, 0].long()
    labels[:, :4] = 255
    return feats.to(device), labels.to(device)


def _naive_scores(head: GMMClassifier, e: torch.Tensor, chunk: int) -> torch.Tensor:
    """max_m log N(e | μ_cm, σ_cm²) by broadcasting, as the original algorithm states it."""
    mu = F.normalize(head.means, dim=-1)
    sigma = head.scales
    d = e.shape[-1]
    out = []
    for rows in e.split(chunk):
        z = (rows[:, None, None, :] - mu[None]) / sigma[None]  # n × C × M × D
        ell = -0.5 * d * math.log(2 * math.pi) - sigma.log().sum(-1)[None] - 0.5 * (z**2).sum(-1)
        out.append(ell.amax(-1))
    return torch.cat(out)


def _head_step(head: GMMClassifier, feats: torch.Tensor, labels: torch.Tensor) -> None:
    x = feats.detach().requires_grad_(True)
    out = head(x)
    assign = head.e_step(out, labels)
    losses = head.loss(out, labels, assign)
    head.update(out, labels, assign)
    sum(losses.values()).backward()  # type: ignore[union-attr]


def part_head(device: torch.device, reduced: bool, repeats: int) -> list[dict[str, Any]]:
    c, m, d = 150, 8, 64
    b, hw, k = (1, 128, 3200) if reduced else (4, 128, 32000)
    n = b * hw * hw
    head = GMMClassifier(c, d, embed_dim=d, num_components=m, memory_size=k).to(device)
    feats, labels = _inputs(c, b, hw, d, device)
    with torch.no_grad():
        e = head.embed(feats).permute(0, 2, 3, 1).reshape(-1, d)
        ours = head(feats).class_log_prob.permute(0, 2, 3, 1).reshape(-1, c)
        naive = _naive_scores(head, e, 4096)
    agree = float((ours - naive).abs().max() / naive.abs().max())
    with torch.no_grad():
        t_ours = _median_time(lambda: head(feats), device, repeats)
        t_naive = _median_time(lambda: _naive_scores(head, e, 4096), device, max(3, repeats // 3))
    a = torch.randn(n, 2 * d, device=device, requires_grad=True)
    w = torch.randn(2 * d, c * m, device=device)

    def gemm_pair() -> None:
        out = a @ w
        out.backward(torch.ones_like(out))

    t_step = _median_time(lambda: _head_step(head, feats, labels), device, repeats)
    t_gemm = _median_time(gemm_pair, device, repeats)
    return [
        {
            "case": f"class scores ({c}x{m}, D={d}, N={n}) vs naive broadcast",
            "ours_s": t_ours,
            "reference_s": t_naive,
            "ratio": t_naive / t_ours,
            "ratio_meaning": "naive / ours (speed-up)",
            "goal": "none",
            "pass": None,
            "max_relative_difference": agree,
        },
        {
            "case": f"head step ({c}x{m}, K={k}) vs bare matmul fwd+bwd pair",
            "ours_s": t_step,
            "reference_s": t_gemm,
            "ratio": t_step / t_gemm,
            "ratio_meaning": "ours / matmul pair (lower is better)",
            "goal": "none",
            "pass": None,
        },
    ]


# --------------------------------------------------------------------------- 2. training step


def _trainer(recipe_name: str, device: torch.device, reduced: bool, amp: str) -> Trainer:
    recipe = get_recipe(recipe_name)
    model_cfg = recipe.model
    if reduced:
        model_cfg = dataclasses.replace(model_cfg, backbone="mit_b0", decoder_channels=256)
    model = build_model(model_cfg, 150, generator=torch.Generator().manual_seed(0)).to(device)
    opt = build_optimizer(model, "adamw", 6e-5, 0.01, head_lr_mult=10.0)
    settings = TrainSettings(max_iters=10**6, amp=amp)  # type: ignore[arg-type]
    return Trainer(
        model,
        opt,
        PolyWarmup(10**6),
        lambda start: [],
        settings,
        DistInfo(0, 1, 0, device),
        progress=False,
    )


def part_train(device: torch.device, reduced: bool, repeats: int) -> list[dict[str, Any]]:
    size, batch_size = (128, 2) if reduced else (512, 2)
    amp = "none" if device.type == "cpu" else "bf16"
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch_size, 3, size, size, generator=g).to(device)
    labels = torch.randint(0, 150, (batch_size, size, size), generator=g).to(device)
    batch = {"image": images, "label": labels}
    measured = {}
    for name in ("segformer_b5_ade20k_gmm", "segformer_b5_ade20k_softmax"):
        trainer = _trainer(name, device, reduced, amp)
        _peak_reset(device)
        t = _median_time(lambda tr=trainer: tr.step(batch), device, repeats)
        measured[name] = (t, _peak_bytes(device))
        del trainer
    (t_gmm, peak_gmm), (t_soft, peak_soft) = measured.values()
    net = "MiT-B0" if reduced else "MiT-B5"
    return [
        {
            "case": f"SegFormer {net} training step, GMM vs softmax head "
            f"({size}^2, batch {batch_size}, amp {amp})",
            "ours_s": t_gmm,
            "reference_s": t_soft,
            "ratio": t_gmm / t_soft,
            "ratio_meaning": "GMM step / softmax step",
            "goal": "none",
            "pass": None,
            "images_per_s_gmm": batch_size / t_gmm,
            "images_per_s_softmax": batch_size / t_soft,
            "peak_device_bytes_gmm": peak_gmm,
            "peak_device_bytes_softmax": peak_soft,
        }
    ]


# --------------------------------------------------------------------------- 3. memory kinds


def part_memory(device: torch.device, reduced: bool, repeats: int) -> list[dict[str, Any]]:
    c, m, d = 150, 8, 64
    b, hw, k = (1, 128, 3200) if reduced else (4, 128, 32000)
    feats, labels = _inputs(c, b, hw, d, device)
    measured = {}
    for kind in ("ring", "stats"):
        head = GMMClassifier(
            c,
            d,
            embed_dim=d,
            num_components=m,
            memory_size=k,
            memory=kind,  # type: ignore[arg-type]
        ).to(device)
        size = sum(t.numel() * t.element_size() for t in head.memory.buffers())
        t = _median_time(lambda h=head: _head_step(h, feats, labels), device, repeats)
        measured[kind] = (t, size)
        del head
    (t_ring, bytes_ring), (t_stats, bytes_stats) = measured.values()
    return [
        {
            "case": f"head step, streaming statistics vs ring memory ({c}x{m}, K={k})",
            "ours_s": t_stats,
            "reference_s": t_ring,
            "ratio": t_stats / t_ring,
            "ratio_meaning": "stats step / ring step",
            "goal": "none",
            "pass": None,
            "memory_bytes_stats": bytes_stats,
            "memory_bytes_ring": bytes_ring,
        }
    ]


# --------------------------------------------------------------------------- 4. inference


def part_inference(device: torch.device, reduced: bool, repeats: int) -> list[dict[str, Any]]:
    recipe = get_recipe("segformer_b5_cityscapes_gmm")
    model_cfg = recipe.model
    h, w, crop, stride = (128, 256, 128, 85) if reduced else (512, 1024, 512, 341)
    if reduced:
        model_cfg = dataclasses.replace(model_cfg, backbone="mit_b0", decoder_channels=256)
    model = build_model(model_cfg, 19).to(device).eval()
    image = torch.randn(1, 3, h, w).to(device)
    times = {}
    for mode in ("whole", "slide"):
        kwargs: dict[str, Any] = {"mode": mode}
        if mode == "slide":
            kwargs.update(crop_size=(crop, crop), stride=(stride, stride))
        with torch.inference_mode():
            times[mode] = _median_time(
                lambda kw=kwargs: model.predict(image, **kw), device, repeats
            )
    return [
        {
            "case": f"predict {h}x{w}, sliding window ({crop}^2, stride {stride}) vs whole",
            "ours_s": times["slide"],
            "reference_s": times["whole"],
            "ratio": times["slide"] / times["whole"],
            "ratio_meaning": "slide / whole",
            "goal": "none",
            "pass": None,
            "images_per_s_whole": 1 / times["whole"],
            "images_per_s_slide": 1 / times["slide"],
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:1 or cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS / "bench_gpu.json"))
    args = parser.parse_args()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    reduced = device.type == "cpu"
    repeats = min(args.repeats, 3) if reduced else args.repeats
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # compare like with like: float32 GEMMs
    start = time.perf_counter()
    parts: dict[str, list[dict[str, Any]]] = {}
    for name, part in (
        ("head", part_head),
        ("train_step", part_train),
        ("memory", part_memory),
        ("inference", part_inference),
    ):
        t0 = time.perf_counter()
        parts[name] = part(device, reduced, repeats)
        print(f"{name}: {time.perf_counter() - t0:.1f} s")
        for row in parts[name]:
            print("  ", json.dumps(row))
    payload = {
        "benchmark": "bench_gpu",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "reduced": reduced,
        "note": "CPU run at reduced sizes: checks the script, not the benchmark" if reduced else "",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "statistic": "median",
        "repeats": repeats,
        "seconds": time.perf_counter() - start,
        "rows": [{"part": name, **row} for name, rows in parts.items() for row in rows],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out} ({payload['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
