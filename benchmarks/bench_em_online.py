"""Online EM: vectorised ring-memory writes and momentum M-step vs the original's per-(class,
component) Python loops, and the streaming statistics as the small-memory alternative.

Case: Cityscapes scale, G = 19 classes, M = 5 components, D = 64, K = 32000 slots, a gathered
batch of N = 65536 correctly-predicted pixels spread over 15 classes, float32, CPU.

Goals: enqueue ≥ 3× faster than the loop; M-step no slower than 1.5× the loop (same arithmetic);
streaming update (all N samples, no sub-sampling) ≥ 2× faster than a per-(class, component) loop
computing the same batch moments.
Threads: 2, or ``GMMSEG_BENCH_THREADS`` (1 gives steadier numbers on a shared machine).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from _common import interleaved_medians, report
from gmmseg.em.memory import ComponentMemory
from gmmseg.em.momentum import momentum_m_step
from gmmseg.em.streaming import StreamingStatistics

torch.set_num_threads(int(os.environ.get("GMMSEG_BENCH_THREADS", "2")))
G, M, D, K, N, S = 19, 5, 64, 32000, 65536, 20


def loop_enqueue(
    queue: torch.Tensor, ptr: torch.Tensor, x: torch.Tensor, g: torch.Tensor, m: torch.Tensor
) -> None:
    """The original's rule: one (class, component) at a time, slices with wrap-around."""
    for c in torch.unique(g).tolist():
        in_c = g == c
        xc, mc = x[in_c], m[in_c]
        for q in range(M):
            sel = xc[mc == q]
            n = sel.shape[0]
            if n == 0:
                continue
            if n > S:
                sel = sel[torch.linspace(0, n - 1, S, dtype=torch.int64)]
                n = S
            p = int(ptr[c, q])
            if p + n >= K:
                first = K - p
                queue[c, q, p:] = sel[:first]
                queue[c, q, : n - first] = sel[first:]
            else:
                queue[c, q, p : p + n] = sel
            ptr[c, q] = (p + n) % K


def loop_m_step(
    means: torch.Tensor, scales: torch.Tensor, bank: torch.Tensor, groups: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    mu, sigma = means.clone(), scales.clone()
    for c in groups:
        for q in range(M):
            e = bank[c, q]
            f = F.normalize(e.sum(0), dim=-1)
            mu[c, q] = 0.999 * mu[c, q] + 0.001 * f
            sigma[c, q] = ((e - f).square().mean(0) + 0.01).sqrt()
    return mu, sigma


def loop_moments(
    x: torch.Tensor, g: torch.Tensor, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-(class, component) count, mean and centred sum of squares of one batch."""
    w, mean, sq = torch.zeros(G, M), torch.zeros(G, M, D), torch.zeros(G, M, D)
    for c in torch.unique(g).tolist():
        in_c = g == c
        xc, mc = x[in_c], m[in_c]
        for q in range(M):
            e = xc[mc == q]
            if e.shape[0] == 0:
                continue
            w[c, q] = e.shape[0]
            mean[c, q] = e.mean(0)
            sq[c, q] = (e - mean[c, q]).square().sum(0)
    return w, mean, sq


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(N, D, generator=gen), dim=1)
    present = torch.randperm(G, generator=gen)[:15]
    g = present[torch.randint(0, 15, (N,), generator=gen)]
    m = torch.randint(0, M, (N,), generator=gen)
    mem = ComponentMemory(G, M, D, capacity=K, max_per_step=S, init="zeros")
    queue = torch.zeros(G, M, K, D)
    ptr = torch.zeros(G, M, dtype=torch.int64)
    stats = StreamingStatistics(G, M, D)

    ours_enq, ref_enq = interleaved_medians(
        [lambda: mem.write(x, g, m), lambda: loop_enqueue(queue, ptr, x, g, m)], repeats=15
    )
    assert torch.equal(mem.bank, queue) and torch.equal(mem.ptr, ptr)
    ours_stream, ref_stream = interleaved_medians(
        [lambda: stats.write(x, g, m), lambda: loop_moments(x, g, m)], repeats=15
    )

    bank = F.normalize(torch.randn(G, M, K, D, generator=gen), dim=-1)
    means = F.normalize(torch.randn(G, M, D, generator=gen), dim=-1)
    scales = torch.ones(G, M, D)
    groups = present.sort().values.tolist()
    ours_m, ref_m = interleaved_medians(
        [
            lambda: momentum_m_step(means, scales, bank, groups),
            lambda: loop_m_step(means, scales, bank, groups),
        ],
        repeats=5,
    )
    a, b = momentum_m_step(means, scales, bank, groups), loop_m_step(means, scales, bank, groups)
    err = max((a[0] - b[0]).abs().max().item(), (a[1] - b[1]).abs().max().item())
    print(f"max |ours - loop| M-step: {err:.2e}")
    bank_mib = mem.bank.numel() * mem.bank.element_size() / 2**20
    stats_mib = sum(t.numel() * t.element_size() for t in stats.buffers()) / 2**20
    print(f"memory: ring bank {bank_mib:.0f} MiB, streaming statistics {stats_mib:.2f} MiB")

    case = f"G={G} M={M} D={D} K={K}"
    rows = [
        {
            "case": f"enqueue N={N} {case}",
            "ours_s": ours_enq,
            "reference_s": ref_enq,
            "ratio": ref_enq / ours_enq,
            "ratio_meaning": "loop time / ours (speed-up, higher is better)",
            "goal": ">= 3",
            "pass": ref_enq / ours_enq >= 3,
        },
        {
            "case": f"momentum M-step 15 groups {case}",
            "ours_s": ours_m,
            "reference_s": ref_m,
            "ratio": ours_m / ref_m,
            "ratio_meaning": "ours / loop time (lower is better)",
            "goal": "<= 1.5",
            "pass": ours_m / ref_m <= 1.5,
        },
        {
            "case": f"streaming update N={N} G={G} M={M} D={D}",
            "ours_s": ours_stream,
            "reference_s": ref_stream,
            "ratio": ref_stream / ours_stream,
            "ratio_meaning": "per-(class, component) loop time / ours (higher is better)",
            "goal": ">= 2",
            "pass": ref_stream / ours_stream >= 2,
            "bank_mib": bank_mib,
            "streaming_mib": stats_mib,
        },
    ]
    report("bench_em_online", rows)


if __name__ == "__main__":
    main()
