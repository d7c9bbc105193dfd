"""gmmseg._distributed: single-process answers, and two gloo processes against plain Python."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gmmseg import _distributed


def test_single_process_answers() -> None:
    assert not _distributed.is_initialized()
    assert not _distributed.is_distributed()
    assert _distributed.world_size() == 1
    assert _distributed.rank() == 0
    t = torch.arange(6.0).view(3, 2)
    assert _distributed.all_gather_rows(t) is t
    before = t.clone()
    _distributed.all_reduce_([t], "max")
    assert torch.equal(t, before)
    with pytest.raises(ValueError, match="op: expected 'sum', 'max' or 'min', received 'mean'"):
        _distributed.all_reduce_([t], "mean")  # type: ignore[arg-type]


def rows(rank: int) -> dict[str, torch.Tensor]:
    """Rank-dependent inputs: different row counts (rank 1 holds none of ``ints``)."""
    g = torch.Generator().manual_seed(rank)
    n = 3 + 2 * rank
    return {
        "floats": torch.randn(n, 4, generator=g),
        "bools": torch.rand(n, generator=g) < 0.5,
        "ints": torch.arange(5 * (1 - rank), dtype=torch.int64),
        "reduce": torch.tensor([1.0, -2.0, 3.0]) * (rank + 1) - rank,
    }


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        mine = rows(rank)
        out: dict[str, object] = {
            "flags": (_distributed.is_initialized(), _distributed.is_distributed()),
            "world": (_distributed.rank(), _distributed.world_size()),
        }
        for name in ("floats", "bools", "ints"):
            out[name] = _distributed.all_gather_rows(mine[name])
        for op in ("sum", "max", "min"):
            t = mine["reduce"].clone()
            _distributed.all_reduce_([t], op)  # type: ignore[arg-type]
            out[op] = t
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.cpu_only("multi-process runs with the gloo backend")
def test_two_gloo_processes(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    parts = [rows(0), rows(1)]
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got["flags"] == (True, True)
        assert got["world"] == (r, 2)
        for name in ("floats", "bools", "ints"):  # rank order, each rank's own row count
            want = torch.cat([parts[0][name], parts[1][name]])
            assert got[name].dtype == want.dtype and torch.equal(got[name], want), name
        a, b = parts[0]["reduce"].tolist(), parts[1]["reduce"].tolist()
        assert got["sum"].tolist() == [x + y for x, y in zip(a, b, strict=True)]
        assert got["max"].tolist() == [max(x, y) for x, y in zip(a, b, strict=True)]
        assert got["min"].tolist() == [min(x, y) for x, y in zip(a, b, strict=True)]
