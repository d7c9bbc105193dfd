"""The official GMMSeg release's file layout through ``load_trained``: the GMM state gives the
release head's class scores, logits and anomaly score; the memory bank is read only on request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gmmseg.recipes import build_model, get_recipe, load_trained
from interop_helpers import (
    add_prefix,
    gmmseg_decoder_to_mmseg,
    hf_features,
    hf_mit_config,
    hf_mit_to_mmseg,
    max_rel,
    official_gmm_head,
    randomise_module,
    randomise_state,
    segformer_head,
    set_mit_eps,
    strip,
)

transformers = pytest.importorskip("transformers")

RECIPE = "segformer_b5_cocostuff10k_gmm"
TINY_MIT = ((8, 16, 24, 32), (1, 1, 1, 1), (1, 1, 1, 1))


def official_file(
    path: Path, *, d: int = 8, width: int = 16, k: int = 64, seed: int = 0, mit: tuple = TINY_MIT
) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """Write a release-layout file (171 classes, M = 5); returns its state dict and the
    transformers MiT (mmseg eps) that is its backbone reference."""
    torch.manual_seed(seed)
    hf = transformers.SegformerModel(hf_mit_config(transformers, *mit))
    set_mit_eps(hf, 1e-6, 1e-6)
    hf = randomise_module(hf, seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    c, m = 171, 5
    recipe = get_recipe(RECIPE)
    twin = (
        build_model(
            recipe.model.__class__(**{**recipe.model.__dict__, "head": "linear"}), c, tiny=True
        )
        if width == 16
        else None
    )
    if twin is not None:
        dec = strip(randomise_state(twin.state_dict(), seed + 2), "decoder.")
    else:
        from gmmseg.heads import SegFormerDecoder

        dec_mod = SegFormerDecoder(mit[0], (4, 8, 16, 32), channels=width)
        dec = randomise_state(dec_mod.state_dict(), seed + 2)
    sd = add_prefix(hf_mit_to_mmseg(hf.state_dict()), "backbone.")
    sd.update(add_prefix(gmmseg_decoder_to_mmseg("segformer", dec), "decode_head."))
    head = {
        "projection.conv.weight": torch.randn(d, width, 1, 1, generator=g) * width**-0.5,
        "projection.bn.weight": 1 + 0.1 * torch.randn(d, generator=g),
        "projection.bn.bias": 0.1 * torch.randn(d, generator=g),
        "projection.bn.running_mean": 0.1 * torch.randn(d, generator=g),
        "projection.bn.running_var": 0.5 + torch.rand(d, generator=g),
        "projection.bn.num_batches_tracked": torch.tensor(1000),
        "feat_norm.weight": 1 + 0.1 * torch.randn(d, generator=g),
        "feat_norm.bias": 0.1 * torch.randn(d, generator=g),
        "mask_norm.weight": 1 + 0.1 * torch.randn(c, generator=g),
        "mask_norm.bias": 0.1 * torch.randn(c, generator=g),
        "means": torch.randn(c, m, d, generator=g),  # the release re-normalises before use
        "diagonal": 0.3 + torch.rand(c, m, d, generator=g),
        "eye_matrix": torch.ones(d),
        "iteration_counter": torch.tensor([79999.0]),
        "queue": F.normalize(torch.randn(c * m, d, k, generator=g), dim=1),
        "queue_ptr": torch.randint(0, k, (c * m,), generator=g),
        "conv_seg.weight": torch.randn(c, width, 1, 1, generator=g),
        "conv_seg.bias": torch.zeros(c),
    }
    sd.update(add_prefix(head, "decode_head."))
    meta = {"mmcv_version": "1.4.0", "CLASSES": tuple(f"c{i}" for i in range(c)), "iter": 80000}
    torch.save({"meta": meta, "state_dict": sd, "optimizer": {"state": {}}}, path)
    return sd, hf


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("release") / "gmmseg_segformer_b5_cocostuff10k.pth"
    sd, hf = official_file(path)
    return path, sd, hf


def reference(sd, hf, x: torch.Tensor, dtype: torch.dtype):
    w = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    fused = segformer_head(w, hf_features(hf.to(dtype), x))
    return official_gmm_head(w, fused)


def test_class_scores_logits_and_anomaly_equal_the_release_head(release) -> None:
    path, sd, hf = release
    model, recipe = load_trained(path, get_recipe(RECIPE), tiny=True)
    assert recipe.model.mit_norm == "mmseg"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(x)
        z_ref, s_ref = reference(sd, hf, x, torch.float32)
        assert max_rel(out.logits, z_ref) <= 2e-5
        assert max_rel(out.class_log_prob, s_ref) <= 2e-5
        anomaly = model.classifier.anomaly_score(out)
        assert max_rel(anomaly, -s_ref.amax(1)) <= 2e-5
        # the image-level prediction: logits resized bilinearly (align_corners=False)
        pred = model.predict(x)
        up = F.interpolate(z_ref, size=(64, 64), mode="bilinear", align_corners=False)
        assert max_rel(pred.logits, up) <= 2e-5
        out64 = model.double()(x.double())
        z64, s64 = reference(sd, hf, x.double(), torch.float64)
        assert max_rel(out64.logits, z64) <= 1e-10
        assert max_rel(out64.class_log_prob, s64) <= 1e-10
    assert int(model.classifier.step) == 79999


def test_inference_load_leaves_the_bank_out(release, caplog) -> None:
    path, _, _ = release
    with caplog.at_level("INFO", logger="gmmseg"):
        model, _ = load_trained(path, get_recipe(RECIPE), tiny=True)
    # a one-slot placeholder (C, M, 1, D), not the file's 64 slots; that the file's bank is
    # never read is measured by test_inference_load_never_reads_the_bank
    assert tuple(model.classifier.memory.bank.shape) == (171, 5, 1, 8)
    for reason in ("memory bank, needed only to continue training", "eye_matrix", "conv_seg"):
        assert reason in caplog.text


def test_training_continuation_loads_the_bank_in_gmmseg_layout(release) -> None:
    path, sd, _ = release
    model, _ = load_trained(path, get_recipe(RECIPE), tiny=True, memory=True)
    mem = model.classifier.memory
    queue, ptr = sd["decode_head.queue"], sd["decode_head.queue_ptr"]
    # a plain loop over (class, component) rings and slots
    for ring in (0, 7, 854):
        c, m = divmod(ring, 5)
        for slot in (0, 31, 63):
            assert torch.equal(mem.bank[c, m, slot], queue[ring, :, slot])
        assert int(mem.ptr[c, m]) == int(ptr[ring])


def test_memory_size_mismatch_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "k32.pth"
    official_file(path, k=32)
    with pytest.raises(ValueError, match=r"32 slots per component.*model.gmm.memory_size=32"):
        load_trained(path, get_recipe(RECIPE), tiny=True, memory=True)


def test_wrong_dataset_names_the_setting(release) -> None:
    path, _, _ = release
    with pytest.raises(
        ValueError,
        match=r"171 classes in the checkpoint, recipe 'segformer_b5_cityscapes_gmm' has 19 "
        r"\(dataset cityscapes\): use --set data.dataset=coco_stuff10k",
    ):
        load_trained(path, get_recipe("segformer_b5_cityscapes_gmm"), tiny=True)


def test_pretrained_file_is_not_needed(release, tmp_path: Path) -> None:
    """#16: an inference load reads only the checkpoint, not the recipe's ImageNet file."""
    from gmmseg.recipes import apply_overrides

    path, _, _ = release
    recipe = apply_overrides(get_recipe(RECIPE), [f"model.pretrained={tmp_path / 'gone.pth'}"])
    load_trained(path, recipe, tiny=True)


_RSS_SCRIPT = """
import json, sys
import torch
from gmmseg.recipes import get_recipe, load_trained

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

before = rss_kib()
model, _ = load_trained(sys.argv[1], get_recipe("segformer_b5_cocostuff10k_gmm"), tiny=True)
if len(sys.argv) > 2:  # the control: read the bank
    bank = torch.load(sys.argv[1], weights_only=True)["state_dict"]["decode_head.queue"]
print(json.dumps({"grew_kib": rss_kib() - before}))
"""


def grown_mb(path: Path, *extra: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(path), *extra],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["grew_kib"]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_inference_load_never_reads_the_bank(tmp_path: Path) -> None:
    """A 350 MB bank in the file: loading for inference grows the process by far less."""
    path = tmp_path / "big_bank.pth"
    official_file(path, k=12800)  # 855 × 8 × 12800 float32 = 350 MB
    assert path.stat().st_size > 300e6
    grew = grown_mb(path)
    assert grew < 100, grew
    assert grown_mb(path, "control") > 300  # the measurement sees a bank that is read


@pytest.mark.parametrize(
    ("d", "overrides", "message"),
    [
        (
            8,
            ["model.gmm.num_components=3"],
            r"'decode_head\.means' has shape \(171, 5, 8\), the model's 'classifier\.means' has "
            r"\(171, 3, 8\): the file has 5 components per class: use --set "
            r"model.gmm.num_components=5$",
        ),
        (
            16,
            [],
            r"'decode_head\.projection\.conv\.weight' has shape \(16, 16, 1, 1\), the model's "
            r"'classifier\.projection\.0\.weight' has \(8, 16, 1, 1\): the file's embedding width "
            r"is 16: use --set model.gmm.embed_dim=16$",
        ),
    ],
    ids=["components", "embed_dim"],
)
def test_gmm_shape_mismatch_names_the_setting(
    tmp_path: Path, d: int, overrides: list[str], message: str
) -> None:
    """load_converted (the loader under load_trained) names the GMM setting that fixes a shape."""
    from gmmseg.interop import convert_checkpoint, load_converted, read_checkpoint
    from gmmseg.recipes import apply_overrides

    path = tmp_path / "release.pth"
    official_file(path, d=d, k=4)
    recipe = apply_overrides(get_recipe(RECIPE), ["model.mit_norm=mmseg", *overrides])
    model = build_model(recipe.model, 171, tiny=True)  # the miniature's embedding width is 8
    conversion = convert_checkpoint(read_checkpoint(path).tensors)
    with pytest.raises(ValueError, match=message):
        load_converted(model, conversion)


# ------------------------------------------------------------------------------------ refusals


def rewritten(release, tmp_path: Path, change) -> Path:
    """The release file with its state dict changed by ``change(sd)`` (a new dict)."""
    _, sd, _ = release
    path = tmp_path / "changed.pth"
    torch.save({"meta": {"mmcv_version": "1.4.0"}, "state_dict": change(dict(sd))}, path)
    return path


def refused(path: Path, match: str, recipe=None, **kw) -> None:
    """``load_trained`` refuses the file with a one-line ValueError matching ``match``."""
    with pytest.raises(ValueError, match=match) as info:
        load_trained(path, recipe or get_recipe(RECIPE), tiny=True, **kw)
    assert "\n" not in str(info.value)


def test_a_release_file_lacking_gmm_tensors_names_them(release, tmp_path: Path) -> None:
    def cut(sd):
        del sd["decode_head.feat_norm.weight"], sd["decode_head.mask_norm.weight"]
        return sd

    # the file's own names (before: "lacks feat_norm.weight, ...", without decode_head.)
    refused(
        rewritten(release, tmp_path, cut),
        r"^the checkpoint lacks decode_head\.feat_norm\.weight, decode_head\.mask_norm\.weight, "
        r"which every 'official' file holds",
    )


def test_a_release_file_with_another_decoder_is_not_a_known_release(
    release, tmp_path: Path
) -> None:
    def deeplab(sd):
        head = ("decode_head.convs.", "decode_head.fusion_conv.")
        sd = {k: v for k, v in sd.items() if not k.startswith(head)}
        sd["decode_head.c1_bottleneck.conv.weight"] = torch.zeros(48, 8, 1, 1)
        sd["decode_head.aspp_modules.0.conv.weight"] = torch.zeros(16, 32, 1, 1)
        return sd

    refused(
        rewritten(release, tmp_path, deeplab),
        r"^an official GMMSeg file with a deeplabv3plus decoder is not a known release$",
    )


def test_an_eye_matrix_not_all_ones_is_refused(release, tmp_path: Path) -> None:
    def floor(sd):
        sd["decode_head.eye_matrix"] = torch.ones(8).index_fill(0, torch.tensor([3]), 2.0)
        return sd

    refused(
        rewritten(release, tmp_path, floor),
        r"^decode_head\.eye_matrix is not all ones: this file's variance floor is not a constant",
    )


def test_memory_needs_a_bank_in_the_file(release, tmp_path: Path) -> None:
    def no_bank(sd):
        return {k: v for k, v in sd.items() if not k.startswith("decode_head.queue")}

    path = rewritten(release, tmp_path, no_bank)
    load_trained(path, get_recipe(RECIPE), tiny=True)  # an inference load needs no bank
    refused(path, r"^memory=True, but the checkpoint holds no GMM memory bank$", memory=True)


def test_memory_needs_a_ring_memory_in_the_recipe(release) -> None:
    from gmmseg.recipes import apply_overrides

    path, _, _ = release
    recipe = apply_overrides(get_recipe(RECIPE), ["model.gmm.memory=stats"])
    load_trained(path, recipe, tiny=True)  # an inference load reads no bank
    refused(
        path,
        r"^memory=True needs a GMM classifier with a ring memory \(set model\.gmm\.memory=ring\)$",
        recipe,
        memory=True,
    )
