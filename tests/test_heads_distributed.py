"""Two gloo processes holding half a batch each end with the same GMM state as one process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gmmseg.heads import GMMClassifier

pytestmark = pytest.mark.cpu_only("multi-process runs with the gloo backend")


STEPS = 4


def make_head() -> GMMClassifier:
    # in_channels == embed_dim: no BatchNorm, whose batch statistics would differ per rank.
    return GMMClassifier(
        5,
        8,
        embed_dim=8,
        num_components=3,
        memory_size=30,
        max_samples_per_component=3,
        update_interval=2,
        mean_momentum=0.9,
        generator=torch.Generator().manual_seed(0),
    )


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 8, 3, 4, generator=g), torch.randint(0, 5, (4, 6, 8), generator=g))
        for _ in range(STEPS)
    ]


def state(head: GMMClassifier) -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in head.state_dict().items() if not k.startswith(("feature", "logit"))
    }


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        head = make_head()
        for feats, target in batches():
            half = slice(2 * rank, 2 * rank + 2)
            out = head(feats[half])
            assign = head.e_step(out, target[half])
            head.update(out, target[half], assign)
        torch.save(state(head), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_match_single_process(tmp_path: Path) -> None:
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")

    torch.manual_seed(0)
    ref = make_head()
    for feats, target in batches():
        out = ref(feats)
        # Each rank runs the E-step on its own pixels (as the original); the gathered order is
        # rank 0's pixels then rank 1's, i.e. the whole batch in (b, h, w) order.
        halves = [ref.e_step(ref(feats[i : i + 2]), target[i : i + 2]) for i in (0, 2)]
        ref.update(out, target, torch.cat(halves))
    expected = state(ref)
    assert set(r0) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(r0[key], value, msg=key)
        torch.testing.assert_close(r1[key], r0[key], rtol=0, atol=0, msg=key)
    assert int(r0["step"]) == STEPS
