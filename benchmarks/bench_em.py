"""Benchmark: gmmseg GaussianMixture (torch, float32) vs scikit-learn (float64 and float32).

Case: diag covariances, N=200k samples, D=64, K=10, 20 EM iterations (tol=0 so every run does
all 20), the same initial weights/means/precisions for both. gmmseg (float32 tensor) and
scikit-learn (on the float64 array, and on the same array cast to float32) are timed in
alternation (:func:`_common.interleaved_medians`): each number is the median of ``--repeats``
fits after one warm-up fit, in the same process, with 2 torch threads (and 2 BLAS threads for
numpy). The goal, >= 3x scikit-learn's default float64 fit, applies to this case; the float32
comparison (like for like) is informational.

An informational second case times ``fit_grouped`` on G=19 groups of the same data against a
Python loop of 19 separate ``fit`` calls (both gmmseg, float32, also in alternation); it has no
goal. ``fit_grouped`` is itself a loop of single fits: the row shows what it adds (validation,
stacking the results).

Run: ``python benchmarks/bench_em.py`` (writes benchmarks/results/bench_em.json).
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import numpy as np
import torch

from _common import interleaved_medians, report
from gmmseg.em.gaussian_mixture import ConvergenceWarning, GaussianMixture

GOAL = 3.0


def _data(n: int, d: int, k: int) -> tuple[np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(k, d)) * 3.0
    x = centres[rng.integers(0, k, n)] + rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, (1, d))
    inits = {
        "weights_init": np.full(k, 1.0 / k),
        "means_init": x[rng.choice(n, k, replace=False)],
        "precisions_init": np.ones((k, d)),
    }
    return x, inits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from sklearn.mixture import GaussianMixture as SkGaussianMixture
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    x, inits = _data(args.n, args.d, args.k)
    x32 = torch.as_tensor(x, dtype=torch.float32)
    kw: dict[str, Any] = {"covariance_type": "diag", "tol": 0.0, "max_iter": args.iters, **inits}

    def ours() -> None:
        gm = GaussianMixture(args.k, dtype=torch.float32, **kw).fit(x32)
        assert gm.n_iter_ == args.iters

    def reference() -> None:
        gm = SkGaussianMixture(args.k, **kw).fit(x)
        assert gm.n_iter_ == args.iters

    with warnings.catch_warnings(), threadpool_limits(limits=args.threads):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # scikit-learn's ConvergenceWarning
        x_f32 = x.astype(np.float32)
        kw32 = {
            **kw,
            **{k: np.asarray(v, dtype=np.float32) for k, v in inits.items()},
        }

        def reference32() -> None:
            gm = SkGaussianMixture(args.k, **kw32).fit(x_f32)
            assert gm.n_iter_ == args.iters

        t_ours, t_ref, t_ref32 = interleaved_medians([ours, reference, reference32], args.repeats)

        groups = 19
        gid = torch.as_tensor(np.random.default_rng(1).integers(0, groups, args.n))
        per_group = {
            "weights_init": np.full((groups, args.k), 1.0 / args.k),
            "means_init": np.stack([x[gid.numpy() == g][: args.k] for g in range(groups)]),
            "precisions_init": np.ones((groups, args.k, args.d)),
        }
        common: dict[str, Any] = {"covariance_type": "diag", "tol": 0.0, "max_iter": args.iters}

        def grouped() -> None:
            GaussianMixture(args.k, dtype=torch.float32, **common, **per_group).fit_grouped(
                x32, gid, groups
            )

        def loop() -> None:
            for g in range(groups):
                one = {name: value[g] for name, value in per_group.items()}
                GaussianMixture(args.k, dtype=torch.float32, **common, **one).fit(x32[gid == g])

        t_grouped, t_loop = interleaved_medians([grouped, loop], args.repeats)

    case = f"diag N={args.n} D={args.d} K={args.k} iters={args.iters}"
    rows = [
        {
            "case": case + " vs sklearn float64",
            "ours_s": t_ours,
            "reference_s": t_ref,
            "ratio": t_ref / t_ours,
            "ratio_meaning": "scikit-learn (numpy float64) / gmmseg (torch float32)",
            "goal": ">= 3",
            "pass": t_ref / t_ours >= GOAL,
        },
        {
            "case": case + " vs sklearn float32",
            "ours_s": t_ours,
            "reference_s": t_ref32,
            "ratio": t_ref32 / t_ours,
            "ratio_meaning": "scikit-learn on float32 input / gmmseg float32 (like for like)",
            "goal": "none",
            "pass": True,
        },
        {
            "case": f"fit_grouped G={groups} vs loop of fits",
            "ours_s": t_grouped,
            "reference_s": t_loop,
            "ratio": t_loop / t_grouped,
            "ratio_meaning": "loop of separate fits / fit_grouped (informational)",
            "goal": "none",
            "pass": True,
        },
    ]
    report("bench_em", rows)


if __name__ == "__main__":
    main()
