"""all_reduce over 2 gloo processes equals one process that sees every frame."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from gmmseg.metrics import AnomalyMetrics, ComponentMetrics, SegmentationMetrics

pytestmark = pytest.mark.cpu_only("multi-process runs with the gloo backend")


FRAMES = 6


def data():
    rng = np.random.default_rng(0)
    seg_y = rng.integers(0, 4, size=(FRAMES, 8, 9))
    seg_y[rng.random(seg_y.shape) < 0.1] = 255
    seg_p = rng.integers(0, 5, size=(FRAMES, 8, 9))
    an_y = (rng.random((FRAMES, 20, 24)) < 0.2).astype(np.int64)
    an_y[rng.random(an_y.shape) < 0.1] = 255
    scores = np.round(rng.normal(size=an_y.shape) + an_y, 2).astype(np.float32)
    scores[2] *= 50  # one rank sees a much wider range: the binned grids differ before merging
    return seg_p, seg_y, scores, an_y


def evaluate(frames: range) -> dict:
    seg_p, seg_y, scores, an_y = data()
    seg = SegmentationMetrics(5)
    anomaly = {m: AnomalyMetrics(mode=m) for m in ("exact", "binned", "smiyc_binned")}
    comp = ComponentMetrics("obstacle", threshold=0.8, min_pred_size=2, min_gt_size=2)
    for f in frames:
        seg.update(seg_p[f], seg_y[f])
        for m in anomaly.values():
            m.update(scores[f], an_y[f])
        comp.update(scores[f], an_y[f])
    seg.all_reduce()
    comp.all_reduce()
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["seg"] = {k: np.asarray(v) for k, v in seg.compute().items()}
        out["comp"] = {k: np.asarray(v) for k, v in comp.compute().items()}
    for name, m in anomaly.items():
        m.all_reduce()
        res = m.compute()
        out[name] = {k: res[k] for k in ("auroc", "ap", "fpr95", "best_f1", "best_f1_threshold")}
        out[name]["exp"] = m._exp
    return out


def worker(rank: int, init: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        result = evaluate(range(rank, FRAMES, 2))
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"{rank}.pkl").write_bytes(pickle.dumps(result))


@pytest.mark.slow
def test_two_process_gloo_all_reduce_equals_single_process(tmp_path: Path) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(worker, args=(init, str(tmp_path)), nprocs=2, join=True)
    single = evaluate(range(FRAMES))
    for rank in range(2):
        got = pickle.loads((tmp_path / f"{rank}.pkl").read_bytes())
        for group in ("exact", "smiyc_binned"):  # one global sort: bit for bit
            assert got[group] == single[group], group
        for group in ("seg", "comp"):  # sums of floats: summation order differs across ranks
            for key, value in single[group].items():
                if value.dtype.kind in "fc":
                    np.testing.assert_allclose(got[group][key], value, rtol=1e-14, err_msg=key)
                else:
                    np.testing.assert_array_equal(got[group][key], value, err_msg=key)
        # binned: the merged grid is the single-process grid or a coarser one; exact equality
        # holds when the grids agree, which the frame with the widest range forces here.
        assert got["binned"]["exp"] == single["binned"]["exp"]
        for key in ("auroc", "ap", "fpr95"):
            assert got["binned"][key] == pytest.approx(single["binned"][key], rel=1e-14)
