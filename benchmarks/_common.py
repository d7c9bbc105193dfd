"""Shared helpers for the benchmark scripts: timing with medians, a table, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time (s) of each function, the functions timed in alternation.

    After one warm-up call of each, every repeat times all functions once, in forward order on
    even repeats and in reverse order on odd ones, so that a change of machine speed during the
    run (frequent on a shared VM: the same fit can take 0.63 s, then 1.0 s a minute later)
    affects every function alike, and so does any order effect.
    """
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for rep in range(repeats):
        order = range(len(fns)) if rep % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _amount(row: dict[str, Any], who: str) -> str:
    """A row's ``{who}_s`` in milliseconds, or its ``{who}_gb`` (memory rows), with the unit."""
    if f"{who}_gb" in row:
        return f"{row[f'{who}_gb']:.3g} GB"
    return f"{1e3 * row[f'{who}_s']:.2f} ms"


def report(name: str, rows: list[dict[str, Any]]) -> None:
    """Print a table (case, ours, reference, ratio, goal) and write results/<name>.json.

    Each row holds times in seconds (``ours_s``, ``reference_s``) or, for a memory case,
    sizes in gigabytes (``ours_gb``, ``reference_gb``).
    """
    print(f"\n{name} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    header = f"{'case':<52} {'ours':>10} {'reference':>10} {'ratio':>8}  goal"
    print(header)
    print("-" * len(header))
    for r in rows:
        status = "ok" if r["pass"] else "MISSED"
        print(
            f"{r['case']:<52} {_amount(r, 'ours'):>10} {_amount(r, 'reference'):>10} "
            f"{r['ratio']:>8.2f}  {r['goal']} [{status}]"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "statistic": "median",
        "rows": rows,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
