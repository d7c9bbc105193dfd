"""``gmmseg predict --recipe ... --checkpoint FILE`` once per foreign layout, with full-size
MiT-B0 files (the backbone variant and the decoder width are read from the file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gmmseg.cli import main
from gmmseg.heads import SegFormerDecoder
from interop_helpers import add_prefix, gmmseg_decoder_to_mmseg, hf_mit_to_mmseg, randomise_state

transformers = pytest.importorskip("transformers")

from test_interop_official import official_file  # noqa: E402
from test_interop_segformer import hf_segformer, nvlabs_state  # noqa: E402

B0 = ((32, 64, 160, 256), (2, 2, 2, 2), (1, 2, 5, 8))
SMALL = ["data.test_scale=none", "eval.mode=whole", "model.backbone=mit_b0"]


def mmseg_b0(path: Path) -> None:
    hf = hf_segformer(seed=3, width=256, mit=B0)
    sd = add_prefix(
        hf_mit_to_mmseg(
            {
                k.removeprefix("segformer."): v
                for k, v in hf.state_dict().items()
                if "segformer." in k
            }
        ),
        "backbone.",
    )
    dec = randomise_state(SegFormerDecoder(B0[0], (4, 8, 16, 32), channels=256).state_dict())
    sd.update(add_prefix(gmmseg_decoder_to_mmseg("segformer", dec), "decode_head."))
    sd["decode_head.conv_seg.weight"] = torch.randn(19, 256, 1, 1)
    sd["decode_head.conv_seg.bias"] = torch.zeros(19)
    torch.save({"meta": {"CLASSES": tuple(range(19))}, "state_dict": sd}, path)


def write(layout: str, folder: Path) -> tuple[Path, str]:
    if layout == "official":
        path = folder / "official.pth"
        official_file(path, d=64, width=256, k=4, mit=B0)
        return path, "segformer_b5_cocostuff10k_gmm"
    if layout == "mmseg":
        path = folder / "mmseg.pth"
        mmseg_b0(path)
        return path, "segformer_b5_cityscapes_softmax"
    hf = hf_segformer(seed=4, width=256, mit=B0)
    if layout == "hf":
        hf.save_pretrained(folder / "hf")
        return folder / "hf", "segformer_b5_cityscapes_softmax"
    path = folder / "nvlabs.pth"
    torch.save({"state_dict": nvlabs_state(hf)}, path)
    return path, "segformer_b5_cityscapes_softmax"


@pytest.mark.parametrize(
    ("layout", "settings"),
    [
        # the paper's SegFormer recipes already use mmsegmentation's MiT epsilons
        ("official", "settings taken from the file: model.decoder_channels=256"),
        ("mmseg", "settings taken from the file: model.decoder_channels=256"),
        ("hf", "model.mit_norm='hf', model.segformer_projection='linear'"),
        ("nvlabs", "model.mit_norm='nvlabs', model.segformer_projection='linear'"),
    ],
)
def test_predict_with_a_foreign_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str, settings: str
) -> None:
    checkpoint, recipe = write(layout, tmp_path)
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)).save(image)
    out = tmp_path / "out"
    argv = ["predict", "--recipe", recipe, "--checkpoint", str(checkpoint), str(image)]
    code = main([*argv, "--out", str(out), "--set", *SMALL])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"layout {layout!r}" in err and settings in err and "model.decoder_channels=256" in err
    assert (out / "scene_seg.png").is_file() and (out / "scene_anomaly.png").is_file()


def test_predict_without_a_recipe_names_the_fitting_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, _ = write("mmseg", tmp_path)
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(checkpoint), str(image)]) == 2
    err = capsys.readouterr().err
    assert "holds no gmmseg recipe: name one" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.filterwarnings("ignore:classes absent from the labels")  # a 2-image fixture
def test_eval_with_the_official_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gmmseg.testing import write_fixture

    checkpoint, recipe = write("official", tmp_path)
    root = write_fixture("coco_stuff10k", tmp_path / "data", size=(64, 96))
    argv = ["eval", recipe, "--checkpoint", str(checkpoint), "--device", "cpu", "--set"]
    code = main([*argv, f"data.root={root}", "data.test_scale=none", "model.backbone=mit_b0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "layout 'official'" in captured.err and '"mIoU"' in captured.out


def test_anomaly_with_the_official_release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The release's COCO-Stuff model (171 classes) on a Road Anomaly fixture."""
    import json

    from gmmseg.testing import write_fixture

    checkpoint, _ = write("official", tmp_path)
    root = write_fixture("road_anomaly", tmp_path / "data")
    argv = ["anomaly", "anomaly_segformer_b5_cityscapes", "--checkpoint", str(checkpoint)]
    argv += ["--datasets", "road_anomaly", "--device", "cpu", "--set", *SMALL]
    argv += ["data.dataset=coco_stuff10k", f"anomaly.road_anomaly_root={root}"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "layout 'official'" in captured.err
    likelihood = json.loads(captured.out)["road_anomaly"]["likelihood"]
    assert 0.0 <= likelihood["ap"] <= 1.0 and 0.0 <= likelihood["auroc"] <= 1.0


class Untrusted:
    """An arbitrary class pickled in a file's metadata (as mmengine's HistoryBuffer is)."""


def test_eval_takes_the_loading_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gmmseg.testing import write_fixture

    path = tmp_path / "mmseg.pth"
    mmseg_b0(path)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "meta": {"message_hub": Untrusted()}}, path)
    root = write_fixture("cityscapes", tmp_path / "data", size=(64, 96))
    argv = ["eval", "segformer_b5_cityscapes_softmax", "--checkpoint", str(path), "--set"]
    sets = [f"data.root={root}", *SMALL]
    code = main([*argv, *sets])
    err = capsys.readouterr().err
    assert code == 2 and "--trust-checkpoint" in err and "Untrusted" in err
    code = main([*argv, *sets, "--trust-checkpoint", "--layout", "mmseg"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "layout 'mmseg'" in captured.err and '"mIoU"' in captured.out
    code = main([*argv, *sets, "--layout", "hf", "--trust-checkpoint"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "the checkpoint has no backbone tensors under 'segformer.': it is not a 'hf' file "
        "(its keys look like the 'mmseg' layout)"
    ) in err
