"""Benchmark: the cost of gmmseg's checkpoint content hash.

Case: the state of a SegFormer-B5-sized training run (a MiT-B5 + decoder + GMM head: about 85M
float32 parameters and two AdamW moments, 1 GB), without a memory bank. ``save_checkpoint``
(torch.save to a temporary file + SHA-256 of the content + rename) is timed against a bare
``torch.save`` of the same state to the same folder, and ``load_checkpoint`` (torch.load +
hash check) against a bare ``torch.load(weights_only=True)``. Medians of ``--repeats`` runs,
timed in alternation in this process. There is no goal: the number is what the docs quote as
the price of detecting a damaged checkpoint.

Run: ``python benchmarks/bench_checkpoint.py`` (writes benchmarks/results/bench_checkpoint.json).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from _common import interleaved_medians, report
from gmmseg.engine.checkpoint import load_checkpoint, save_checkpoint


def _state(params: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    sizes = [params // 64] * 64
    model = {f"layer{i}.weight": torch.randn(n, generator=g) for i, n in enumerate(sizes)}
    moments = {
        i: {"exp_avg": torch.randn(n, generator=g), "exp_avg_sq": torch.rand(n, generator=g)}
        for i, n in enumerate(sizes)
    }
    return {
        "model": model,
        "optimizer": {"state": moments, "param_groups": [{"lr": 6e-5, "params": list(range(64))}]},
        "iteration": 8000,
        "history": [{"iter": i, "mode": "train", "loss": 1.0 / (i + 1)} for i in range(160)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=85_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    state = _state(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        ours, bare = Path(tmp) / "iter_00000001.pt", Path(tmp) / "bare.pt"
        save_ours, save_bare = interleaved_medians(
            [lambda: save_checkpoint(ours, state), lambda: torch.save(state, bare)],
            args.repeats,
        )
        load_ours, load_bare = interleaved_medians(
            [lambda: load_checkpoint(ours), lambda: torch.load(bare, weights_only=True)],
            args.repeats,
        )
    gb = 3 * args.params * 4 / 1e9
    rows = [
        {
            "case": f"save, {gb:.2f} GB state (hash + atomic rename)",
            "ours_s": save_ours,
            "reference_s": save_bare,
            "ratio": save_ours / save_bare,
            "goal": "none",
            "pass": True,
        },
        {
            "case": f"load, {gb:.2f} GB state (hash check)",
            "ours_s": load_ours,
            "reference_s": load_bare,
            "ratio": load_ours / load_bare,
            "goal": "none",
            "pass": True,
        },
    ]
    report("bench_checkpoint", rows)


if __name__ == "__main__":
    main()
