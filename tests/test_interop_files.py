"""Reading foreign checkpoint files: the weights_only allow-list and its opt-in, damaged files,
legacy and safetensors formats, memory mapping, and the checkpoint-only inference load."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gmmseg.engine import save_checkpoint
from gmmseg.interop import UntrustedCheckpointError, read_checkpoint
from gmmseg.recipes import apply_overrides, build_model, get_recipe, load_trained

pytestmark = pytest.mark.cpu_only("checkpoint file formats")


class HistoryBuffer:
    """Stands for mmengine's HistoryBuffer: an arbitrary class pickled in a file's metadata."""

    def __init__(self) -> None:
        self.log = np.arange(3.0)


def mmcv_file(path: Path, meta: dict[str, object]) -> None:
    sd = {"backbone.x": torch.arange(4.0), "decode_head.conv_seg.weight": torch.ones(2, 1, 1, 1)}
    torch.save({"meta": meta, "state_dict": sd}, path)


def rewrite_pickle(path: Path, old: bytes, new: bytes) -> None:
    """Replace bytes in the pickle of a zip-format torch file (as another writer named them)."""
    src = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            out.writestr(info, data)


def test_numpy_metadata_is_allowed_under_both_numpy_names(tmp_path: Path) -> None:
    meta = {
        "CLASSES": ("road", "sidewalk"),
        "PALETTE": [[128, 64, 128], [244, 35, 232]],
        "palette": np.array([[128, 64, 128], [244, 35, 232]], dtype=np.uint8),
        "seed": np.int64(42),
        "lr": np.float32(0.5),
        "dtype": np.dtype("float64"),
    }
    path = tmp_path / "numpy2.pth"
    mmcv_file(path, meta)
    got = read_checkpoint(path)
    assert got.mapped and got.top_level == ["meta", "state_dict"]
    assert got.meta["CLASSES"] == ("road", "sidewalk")
    np.testing.assert_array_equal(got.meta["palette"], meta["palette"])
    assert got.meta["seed"] == 42
    # files written with numpy 1.x name its modules numpy.core.*
    rewrite_pickle(path, b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    old = read_checkpoint(path)
    np.testing.assert_array_equal(old.meta["palette"], meta["palette"])
    assert torch.equal(old.tensors["backbone.x"], torch.arange(4.0))


def test_other_objects_need_the_explicit_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "mmengine.pth"
    mmcv_file(path, {"message_hub": {"log_scalars": {"loss": HistoryBuffer()}}})
    with pytest.raises(UntrustedCheckpointError) as info:
        read_checkpoint(path)
    text = str(info.value)
    assert "test_interop_files.HistoryBuffer" in text
    assert "trust=True" in text and "--trust-checkpoint" in text
    assert "\n" not in text
    assert isinstance(read_checkpoint(path, trust=True).meta["message_hub"], dict)
    # as mmengine names it: refused by name; trusted, it needs the module installed
    rewrite_pickle(
        path,
        b"test_interop_files\nHistoryBuffer",
        b"mmengine.logging.history_buffer\nHistoryBuffer",
    )
    with pytest.raises(UntrustedCheckpointError, match=r"mmengine\.logging\.history_buffer"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match="needs the Python module 'mmengine'"):
        read_checkpoint(path, trust=True)
    recipe = get_recipe("deeplabv3plus_r101_cityscapes_softmax")
    with pytest.raises(UntrustedCheckpointError):
        load_trained(path, recipe, tiny=True)


@settings(max_examples=15)
@given(fraction=st.floats(0.0, 0.999))
def test_truncated_files_are_refused_in_one_line(tmp_path_factory, fraction: float) -> None:
    folder = tmp_path_factory.mktemp("cut")
    path = folder / "ckpt.pth"
    mmcv_file(path, {"iter": 1})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match=r"truncated or damaged|holds no state dict") as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)


def test_legacy_format_and_damage(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    sd = {"state_dict": {"a": torch.arange(3.0)}}
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    got = read_checkpoint(path)
    assert not got.mapped and torch.equal(got.tensors["a"], torch.arange(3.0))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_checkpoint(path)


def test_every_cut_of_a_legacy_file_is_refused_as_damaged(tmp_path: Path) -> None:
    """Cut anywhere (inside a pickle, a GLOBAL's name, the tensor bytes): damaged, one line,
    never reported as untrusted and never a raw exception from the reader."""
    path = tmp_path / "legacy.pth"
    sd = {"meta": {"iter": 1}, "state_dict": {"backbone.x": torch.arange(4.0)}}
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    for n in range(len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(ValueError, match="truncated or damaged") as info:
            read_checkpoint(path)
        assert not isinstance(info.value, UntrustedCheckpointError), n
        assert "\n" not in str(info.value), n


def test_legacy_file_with_an_untrusted_object_names_it(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    meta = {"message_hub": HistoryBuffer()}
    torch.save(
        {"meta": meta, "state_dict": {"a": torch.ones(2)}},
        path,
        _use_new_zipfile_serialization=False,
    )
    with pytest.raises(UntrustedCheckpointError, match=r"test_interop_files\.HistoryBuffer"):
        read_checkpoint(path)
    assert torch.equal(read_checkpoint(path, trust=True).tensors["a"], torch.ones(2))


@pytest.mark.parametrize("error", [KeyError("x"), TypeError("x"), AttributeError("x")])
def test_other_errors_are_not_reported_as_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """Only read and unpickling failures become "truncated or damaged"; a bug surfaces as itself."""
    path = tmp_path / "ok.pth"
    mmcv_file(path, {"iter": 1})

    def broken(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(torch, "load", broken)
    with pytest.raises(type(error)):
        read_checkpoint(path)


def test_safetensors_folders_and_missing_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(4)}, tmp_path / "model.safetensors")
    assert torch.equal(read_checkpoint(tmp_path).tensors["w"], torch.ones(4))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "model.safetensors").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_checkpoint(cut)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model weights"):
        read_checkpoint(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")


def test_gmmseg_checkpoint_loads_without_the_pretrained_file(tmp_path: Path) -> None:
    """#16: predict/eval need only the checkpoint, not the recipe's ImageNet file."""
    recipe = apply_overrides(
        get_recipe("deeplabv3plus_r101_cityscapes_softmax"),
        [f"model.pretrained={tmp_path / 'resnet101_v1c.pth'}"],
    )
    model = build_model(apply_overrides(recipe, ["model.pretrained="]).model, 19, tiny=True)
    path = save_checkpoint(
        tmp_path / "iter_00000002.pt",
        {"model": model.state_dict(), "extra": {"recipe": recipe.to_dict(), "tiny": True}},
    )
    loaded, got = load_trained(path)
    assert got.model.pretrained.endswith("resnet101_v1c.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
