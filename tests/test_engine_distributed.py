"""Two-process gloo training through train_recipe: identical GMM state and weights on all ranks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("skimage")


pytestmark = pytest.mark.cpu_only("multi-process runs with the gloo backend")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    from gmmseg.engine import cleanup_distributed
    from gmmseg.recipes import apply_overrides, dry_run_recipe, get_recipe, train_recipe

    recipe = apply_overrides(
        dry_run_recipe(get_recipe("demo"), Path(root) / "fx"),
        ["train.iters=3", "data.batch_size=4", "data.demo_train_images=16", "train.device=cpu"],
    )
    model, result = train_recipe(recipe, Path(root) / "work", tiny=True, progress=False)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["bank"] = model.classifier.memory.bank.clone()  # type: ignore[union-attr]
    torch.save({"state": state, "result": result}, Path(root) / f"rank{rank}.pt")
    cleanup_distributed()


@pytest.mark.slow
def test_two_ranks_end_identical(tmp_path: Path) -> None:
    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    a = torch.load(tmp_path / "rank0.pt", weights_only=False)
    b = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert a["result"]["iteration"] == b["result"]["iteration"] == 3
    for k in a["state"]:
        # BatchNorm running statistics are per rank between DDP's buffer broadcasts (on GPU
        # the recipes use SyncBatchNorm); parameters and the GMM state must agree exactly.
        if "running_" in k or "num_batches_tracked" in k:
            continue
        torch.testing.assert_close(a["state"][k], b["state"][k], rtol=0, atol=0, msg=k)
    assert {"classifier.means", "classifier.scales", "bank"} <= set(a["state"])
    # the evaluation is all-reduced: both ranks report the same mIoU
    assert a["result"]["eval"]["mIoU"] == b["result"]["eval"]["mIoU"]
    # only rank 0 writes
    assert (tmp_path / "work" / "iter_00000003.pt").is_file()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gpu0", "device 'gpu0' is not a device name"),
        ("mps", "device 'mps' is not supported: expected auto, cpu, cuda or cuda:N"),
        ("meta", "device 'meta' is not supported"),
        ("xpu", "device 'xpu' is not supported"),
    ],
)
def test_select_device_refuses_unsupported_names(name: str, message: str) -> None:
    from gmmseg.engine.distributed import select_device

    with pytest.raises(ValueError, match=message):
        select_device(name)


def test_select_device_refuses_a_cuda_index_past_the_last_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gmmseg.engine.distributed import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda:1") == torch.device("cuda", 1)
    assert select_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"'cuda:2': this machine has 2 CUDA device\(s\), cuda:0"):
        select_device("cuda:2")
    assert select_device("cpu") == torch.device("cpu")
