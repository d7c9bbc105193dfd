"""Checkpoint safety: content hash, unreadable files, the trainer's manifest, stale temporaries."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gmmseg.engine.checkpoint import (
    CheckpointManifest,
    checkpoint_path,
    content_hash,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)


def _state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "model": {"w": torch.randn(64, 32, generator=g), "b": torch.zeros(32)},
        "iteration": 7,
        "history": [{"iter": 5, "mode": "train", "loss": 0.25}],
        "extra": {"recipe": {"name": "demo", "crop": (64, 64)}, "tiny": True},
    }


def _flip_bit_in_tensor(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit inside the stored bytes of ``tensor`` (found by its content)."""
    data = bytearray(path.read_bytes())
    needle = tensor.numpy().tobytes()
    at = data.find(needle)
    assert at >= 0, "tensor bytes not found in the file"
    data[at + len(needle) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_weight_is_refused(tmp_path: Path) -> None:
    # Before: one flipped bit turned a weight into 5e37 and the file still loaded.
    state = _state()
    path = save_checkpoint(tmp_path / "iter_00000007.pt", state)
    assert torch.equal(load_checkpoint(path)["model"]["w"], state["model"]["w"])
    _flip_bit_in_tensor(path, state["model"]["w"])
    damaged = torch.load(path, weights_only=True)  # the zip container itself is intact
    assert not torch.equal(damaged["model"]["w"], state["model"]["w"])
    with pytest.raises(ValueError, match=r"iter_00000007\.pt.*corrupt.*hash"):
        load_checkpoint(path)
    assert load_checkpoint(path, verify=False)["iteration"] == 7  # explicit opt-out


def test_the_hash_is_of_the_content_and_does_not_touch_the_callers_dict(tmp_path: Path) -> None:
    state = _state()
    save_checkpoint(tmp_path / "a.pt", state)
    assert "sha256" not in state
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert loaded["sha256"] == content_hash(state) == content_hash(loaded)
    # an independent statement of one tensor's part of the encoding
    t = torch.arange(6, dtype=torch.int16).reshape(2, 3)
    h = hashlib.sha256(b"D1|str:'x'|" + f"T{t.dtype}{(2, 3)}|".encode() + t.numpy().tobytes())
    assert content_hash({"x": t}) == h.hexdigest()


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=8),
    index=st.integers(0, 7),
)
def test_any_changed_value_changes_the_hash(values: list[float], index: int) -> None:
    a = {"model": {"w": torch.tensor(values)}, "n": len(values)}
    b = {"model": {"w": torch.tensor(values)}, "n": len(values)}
    assert content_hash(a) == content_hash(b)
    i = index % len(values)
    b["model"]["w"].view(torch.int32)[i] ^= 1  # the lowest bit of one value
    assert content_hash(a) != content_hash(b)
    assert content_hash(a) != content_hash({**a, "n": len(values) + 1})
    # lists and tuples encode alike (torch.load may return either)
    assert content_hash({"x": [1, 2]}) == content_hash({"x": (1, 2)})


def test_content_hash_refuses_unknown_types() -> None:
    with pytest.raises(TypeError, match="cannot hash a object"):
        content_hash({"x": object()})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"PK\x03\x04 not really a zip", "cannot be read"),
        (b"\x80\x04garbage", "cannot be read"),
    ],
)
def test_unreadable_checkpoints_are_one_value_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    # Before: RuntimeError / bare EOFError / UnpicklingError tracebacks.
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_checkpoint(path)
    assert "bad.pt" in str(info.value) and "\n" not in str(info.value)


def test_a_truncated_checkpoint_is_one_value_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "iter_00000001.pt", _state())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"iter_00000001\.pt.*cannot be read"):
        load_checkpoint(path)


def test_a_failed_write_names_the_file_and_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: a full disk was reported as "unexpected pos 11950144 vs 11950032".
    path = save_checkpoint(tmp_path / "iter_00000001.pt", _state())
    before = path.read_bytes()

    def full_disk(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 11950144")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        OSError, match=r"could not write checkpoint .*iter_00000001\.pt' \(the disk is full\?\)"
    ):
        save_checkpoint(path, _state())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_manifest_prunes_only_the_files_it_lists(tmp_path: Path) -> None:
    # Before: sorted(glob("iter_*.pt"))[:-2] was deleted, users' files included.
    users = ["iter_best.pt", "iter_final.pt", "iter_00000004_keep.pt", "iter_00000001.pt"]
    for name in users:
        (tmp_path / name).write_bytes(f"user data {name}".encode())
    manifest = CheckpointManifest(tmp_path)
    written = []
    for it in (2, 4, 6, 8):
        p = save_checkpoint(checkpoint_path(tmp_path, it), {"model": {}, "iteration": it})
        manifest.add(p, it)
        written.append(p)
        manifest.prune(2)
    for name in users:
        assert (tmp_path / name).read_bytes() == f"user data {name}".encode(), name
    assert not written[0].exists() and not written[1].exists()
    assert written[2].exists() and written[3].exists()
    assert latest_checkpoint(tmp_path) == written[3]
    reread = CheckpointManifest(tmp_path)
    assert [e["iteration"] for e in reread] == [6, 8]


def test_manifest_records_evaluations_and_survives_a_reload(tmp_path: Path) -> None:
    p = save_checkpoint(checkpoint_path(tmp_path, 3), {"model": {}})
    m = CheckpointManifest(tmp_path)
    m.add(p, 3)
    assert m.eval_of(3) is None
    m.record_eval(3, {"mIoU": 0.5})
    assert CheckpointManifest(tmp_path).eval_of(3) == {"mIoU": 0.5}
    assert CheckpointManifest(tmp_path).eval_of(4) is None


def test_a_damaged_manifest_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoints.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"checkpoints\.json.*damaged.*move it away"):
        latest_checkpoint(tmp_path)


def test_latest_checkpoint_skips_listed_files_that_are_gone(tmp_path: Path) -> None:
    m = CheckpointManifest(tmp_path)
    for it in (1, 2):
        m.add(save_checkpoint(checkpoint_path(tmp_path, it), {"model": {}}), it)
    checkpoint_path(tmp_path, 2).unlink()
    (tmp_path / "iter_00000009.pt").write_bytes(b"not listed: not ours")
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 1)


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".iter_00000004.pt.{dead_pid}.tmp"
    stale_manifest = tmp_path / f".checkpoints.json.{dead_pid}.tmp"
    mine = tmp_path / f".iter_00000005.pt.{os.getpid()}.tmp"
    users = [
        tmp_path / ".iter_00000004.pt.tmp",
        tmp_path / f"iter_4.pt.{dead_pid}.tmp",
        tmp_path / "x.tmp",
    ]
    for p in (stale, stale_manifest, mine, *users):
        p.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale, stale_manifest])
    assert mine.exists() and all(p.exists() for p in users)


def test_a_failed_write_does_not_guess_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unpicklable(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("cannot pickle 'generator' object")

    monkeypatch.setattr(torch, "save", unpicklable)
    with pytest.raises(OSError, match="cannot pickle") as info:
        save_checkpoint(tmp_path / "iter_00000001.pt", _state())
    assert "disk" not in str(info.value)


def test_rng_state_leaves_cuda_alone_unless_the_process_uses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gmmseg.engine.checkpoint import get_rng_state, set_rng_state

    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(3)] * 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: calls.append(("set", i)))
    # a CPU run on a machine with a GPU: CUDA not started, so neither read nor written
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    state = get_rng_state()
    assert "cuda" not in state
    set_rng_state({**state, "cuda": [torch.zeros(3)] * 3})
    assert calls == []
    # a CUDA run: saved, and restored for the devices this machine has (3 saved, 2 here)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    state = get_rng_state()
    assert len(state["cuda"]) == 2
    set_rng_state({**state, "cuda": [torch.zeros(3)] * 3})
    assert calls == [("set", 0), ("set", 1)]
