"""Benchmark gmmseg.sinkhorn: segmented vs a per-group loop, and dense vs POT.

Run: ``python benchmarks/bench_sinkhorn.py``. Prints a table and writes
``benchmarks/results/bench_sinkhorn.json``.

Cases
-----
segmented: the GMMSeg E-step setting (G=150 classes, N=32768 pixels, M=5 components, float32,
    3 rounds, epsilon=0.05, scores in [-1, 1]). Ours: one ``segmented_sinkhorn`` call. Reference:
    a Python loop over groups of ``sinkhorn(scores[ids == k], ...)`` (row selection + call; the
    write-back into original order is *not* timed, which favours the reference). Goal: >= 10x.
dense: one 4096x5 float64 problem, 100 rounds. Ours: ``sinkhorn``. Reference: POT
    ``ot.sinkhorn(..., method="sinkhorn_log")`` with the same number of rounds (numpy backend).
    No goal; reported for context.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gmmseg.sinkhorn import segmented_sinkhorn, sinkhorn

RESULTS = Path(__file__).resolve().parent / "results" / "bench_sinkhorn.json"
THREADS = 2


@dataclass
class Row:
    case: str
    reference: str
    ours_ms: float
    reference_ms: float
    ours_min_ms: float
    reference_min_ms: float
    goal: float | None
    details: dict[str, int]

    @property
    def ratio(self) -> float:
        return self.reference_ms / self.ours_ms

    @property
    def passed(self) -> bool | None:
        return None if self.goal is None else self.ratio >= self.goal

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "ratio": self.ratio, "pass": self.passed}


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median and minimum wall time of ``fn`` in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def skewed_segment_ids(n: int, g: int, generator: torch.Generator) -> torch.Tensor:
    """Class ids with a Zipf-like frequency law; every 10th class never occurs (empty group)."""
    weights = 1.0 / torch.arange(1, g + 1, dtype=torch.float64) ** 1.1
    weights[9::10] = 0.0
    weights = weights[torch.randperm(g, generator=generator)]
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def bench_segmented(repeats: int) -> Row:
    g, n, m, eps, n_iters = 150, 32768, 5, 0.05, 3
    gen = torch.Generator().manual_seed(0)
    ids = skewed_segment_ids(n, g, gen)
    scores = torch.rand(n, m, generator=gen) * 2 - 1

    def ours() -> torch.Tensor:
        return segmented_sinkhorn(scores, ids, g, eps, n_iters)

    def loop() -> list[torch.Tensor]:
        return [sinkhorn(scores[ids == k], eps, n_iters) for k in range(g)]

    # Same answer (checked once, outside the timing).
    plan = ours()
    for k, part in enumerate(loop()):
        torch.testing.assert_close(plan[ids == k], part, rtol=1e-4, atol=1e-6)

    t_ours, min_ours = time_ms(ours, repeats)
    t_ref, min_ref = time_ms(loop, repeats)
    counts = torch.bincount(ids, minlength=g)
    return Row(
        case=f"segmented G={g} N={n} M={m} float32 n_iters={n_iters}",
        reference="python loop of sinkhorn(scores[ids == k]) over groups",
        ours_ms=t_ours,
        reference_ms=t_ref,
        ours_min_ms=min_ours,
        reference_min_ms=min_ref,
        goal=10.0,
        details={"groups_nonempty": int((counts > 0).sum()), "largest_group": int(counts.max())},
    )


def bench_dense(repeats: int) -> Row | None:
    try:
        import ot  # type: ignore[import-untyped]
    except ImportError:  # POT is a test extra
        return None
    n, m, eps, n_iters = 4096, 5, 0.05, 100
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(n, m, generator=gen, dtype=torch.float64) * 2 - 1
    a = torch.full((n,), 1.0 / n, dtype=torch.float64).numpy()
    b = torch.full((m,), 1.0 / m, dtype=torch.float64).numpy()
    cost = (-scores).numpy()

    def ours() -> torch.Tensor:
        return sinkhorn(scores, eps, n_iters)

    def pot() -> object:
        return ot.sinkhorn(
            a, b, cost, eps, method="sinkhorn_log", numItermax=n_iters, stopThr=0.0, warn=False
        )

    torch.testing.assert_close(ours(), torch.as_tensor(pot()), rtol=1e-6, atol=1e-9)
    t_ours, min_ours = time_ms(ours, repeats)
    t_ref, min_ref = time_ms(pot, repeats)
    return Row(
        case=f"dense N={n} M={m} float64 n_iters={n_iters}",
        reference="POT ot.sinkhorn(method='sinkhorn_log'), numpy backend",
        ours_ms=t_ours,
        reference_ms=t_ref,
        ours_min_ms=min_ours,
        reference_min_ms=min_ref,
        goal=None,
        details={},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats (median)")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = [bench_segmented(args.repeats)]
    dense = bench_dense(args.repeats)
    if dense is not None:
        rows.append(dense)
    header = f"{'case':<46} {'ours (ms)':>10} {'ref (ms)':>10} {'ratio':>8} {'goal':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        goal = "-" if row.goal is None else f">={row.goal:g}"
        print(
            f"{row.case:<46} {row.ours_ms:>10.3f} {row.reference_ms:>10.3f} "
            f"{row.ratio:>8.1f} {goal:>6}"
        )
    print(f"(medians of {args.repeats} runs; 1-min load average before: {load_before})")

    report = {
        "benchmark": "sinkhorn",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "repeats": args.repeats,
        "load_average_1min_before": load_before,
        "results": [row.as_json() for row in rows],
    }
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
