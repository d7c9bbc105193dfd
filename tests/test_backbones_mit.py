"""MiT (SegFormer) backbones: shapes, parameter counts, equivalence with Hugging Face SegformerModel
through every supported checkpoint layout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from gmmseg.backbones import load_pretrained, mit_b0
from gmmseg.backbones.mit import MIT_CONFIGS, MixVisionTransformer

transformers = pytest.importorskip("transformers")


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values everywhere (norm scales near 1) so a wrong key mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():
            noise = torch.randn(t.shape, generator=g)
            is_scale = t.dim() == 1 and name.endswith("weight")
            t.copy_(1.0 + 0.1 * noise if is_scale else 0.05 * noise)
    return module


def hf_config(name: str) -> object:
    c = MIT_CONFIGS[name]
    return transformers.SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=list(c.depths),
        sr_ratios=list(c.sr_ratios),
        hidden_sizes=list(c.embed_dims),
        patch_sizes=list(c.patch_sizes),
        strides=list(c.patch_strides),
        num_attention_heads=list(c.num_heads),
        mlp_ratios=[c.mlp_ratio] * 4,
        drop_path_rate=0.0,
    )


@pytest.fixture(scope="module")
def hf_b0() -> nn.Module:
    torch.manual_seed(0)
    model = transformers.SegformerModel(hf_config("mit_b0"))
    return randomise(model).eval()


def hf_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    return list(out.hidden_states)


def ours_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model.eval()(x))


def assert_equivalent(ours: list[torch.Tensor], ref: list[torch.Tensor], tol: float = 1e-5) -> None:
    assert len(ours) == len(ref) == 4
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        err = float((a - b).abs().max())
        assert err <= tol, f"stage {i}: max |diff| {err:.2e}"


# --- layouts built from the HF (transformers 5.x) state dict by the test, independently of the
# --- converters: the other layouts are written here the way their projects name the weights.


def to_hf4(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 4.x names (``segformer.encoder.block.*``, ``attention.self.query``)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.", r"encoder.block.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1.", k)
        for old, new in [
            ("attention.q_proj.", "attention.self.query."),
            ("attention.k_proj.", "attention.self.key."),
            ("attention.v_proj.", "attention.self.value."),
            ("attention.sequence_reduction.sequence_reduction.", "attention.self.sr."),
            ("attention.sequence_reduction.layer_norm.", "attention.self.layer_norm."),
            ("attention.o_proj.", "attention.output.dense."),
            ("mlp.fc1.", "mlp.dense1."),
            ("mlp.fc2.", "mlp.dense2."),
            ("layernorm_before.", "layer_norm_1."),
            ("layernorm_after.", "layer_norm_2."),
        ]:
            k = k.replace(old, new)
        out["segformer." + k] = v
    out["classifier.weight"] = torch.zeros(10, 256)  # an image-classification head: ignored
    return out


def to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVlabs/SegFormer ``mit_b*.pth``: patch_embed{i}, block{i}.{j}.attn.q/kv, norm{i}, head."""
    out: dict[str, torch.Tensor] = {
        "head.weight": torch.zeros(1000, 256),
        "head.bias": torch.zeros(1000),
    }
    for k, v in sd.items():
        m = re.match(r"stages\.(\d+)\.(.*)", k)
        assert m
        i, rest = int(m.group(1)) + 1, m.group(2)
        if rest.startswith("patch_embeddings."):
            rest = rest.replace("patch_embeddings.layer_norm.", "norm.")
            out[f"patch_embed{i}.{rest.replace('patch_embeddings.', '')}"] = v
        elif rest.startswith("layer_norm."):
            out[f"norm{i}.{rest[len('layer_norm.') :]}"] = v
        else:
            j, r = re.match(r"blocks\.(\d+)\.(.*)", rest).groups()  # type: ignore[union-attr]
            if "attention.k_proj" in r:
                param = r.rsplit(".", 1)[1]
                v_key = k.replace("k_proj", "v_proj")
                out[f"block{i}.{j}.attn.kv.{param}"] = torch.cat([v, sd[v_key]], 0)
                continue
            if "attention.v_proj" in r:
                continue
            for old, new in [
                ("layernorm_before.", "norm1."),
                ("layernorm_after.", "norm2."),
                ("attention.q_proj.", "attn.q."),
                ("attention.o_proj.", "attn.proj."),
                ("attention.sequence_reduction.sequence_reduction.", "attn.sr."),
                ("attention.sequence_reduction.layer_norm.", "attn.norm."),
            ]:
                r = r.replace(old, new)
            out[f"block{i}.{j}.{r}"] = v
    return out


def official_to_mmseg(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmsegmentation's MixVisionTransformer, inside a segmentor checkpoint (``backbone.``)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("head"):
            continue
        m = re.match(r"(patch_embed|block|norm)(\d)\.(.*)", k)
        assert m
        kind, i, rest = m.group(1), int(m.group(2)) - 1, m.group(3)
        if kind == "patch_embed":
            out[f"layers.{i}.0.{rest.replace('proj.', 'projection.')}"] = v
        elif kind == "norm":
            out[f"layers.{i}.2.{rest}"] = v
        else:
            j, r = rest.split(".", 1)
            pre = f"layers.{i}.1.{j}."
            if r.startswith("attn.q."):
                kv = sd[k.replace("attn.q.", "attn.kv.")]
                out[pre + "attn.attn.in_proj_" + r.rsplit(".", 1)[1]] = torch.cat([v, kv], 0)
            elif r.startswith("attn.kv."):
                continue
            elif r.startswith("attn.proj."):
                out[pre + r.replace("attn.proj.", "attn.attn.out_proj.")] = v
            elif r.startswith("mlp."):
                if r in ("mlp.fc1.weight", "mlp.fc2.weight"):
                    v = v[:, :, None, None]
                r = r.replace("mlp.fc1.", "ffn.layers.0.").replace("mlp.fc2.", "ffn.layers.4.")
                out[pre + r.replace("mlp.dwconv.dwconv.", "ffn.layers.1.")] = v
            else:
                out[pre + r] = v
    out = {"backbone." + k: v for k, v in out.items()}
    out["decode_head.conv_seg.weight"] = torch.zeros(19, 256, 1, 1)
    return {"meta": {"epoch": 1}, "state_dict": out}  # type: ignore[dict-item]


# --------------------------------------------------------------------------------------- tests


def test_shapes_channels_strides() -> None:
    net = mit_b0().eval()
    x = torch.randn(2, 3, 64, 96)
    feats = net(x)
    assert net.out_channels == (32, 64, 160, 256)
    assert net.strides == (4, 8, 16, 32)
    for f, c, s in zip(feats, net.out_channels, net.strides, strict=True):
        assert f.shape == (2, c, 64 // s, 96 // s)


@pytest.mark.parametrize(
    ("name", "count"),
    [
        # Backbone-only parameter counts (no classification head). The SegFormer paper only
        # publishes rounded encoder sizes, so the exact counts are checked against an
        # independent implementation of the published configurations: transformers'
        # SegformerModel (configs of the nvidia/mit-b0 … mit-b5 model cards).
        ("mit_b0", 3_319_392),
        ("mit_b1", 13_151_424),
        ("mit_b2", 24_196_288),
        ("mit_b3", 44_072_128),
        ("mit_b4", 60_842_688),
        ("mit_b5", 81_443_008),
    ],
)
def test_parameter_counts(name: str, count: int) -> None:
    with torch.device("meta"):
        ours = MixVisionTransformer(MIT_CONFIGS[name])
        ref = transformers.SegformerModel(hf_config(name))
    assert sum(p.numel() for p in ours.parameters()) == count
    assert sum(p.numel() for p in ref.parameters()) == count


def test_drop_path_default_and_schedule() -> None:
    net = mit_b0()
    rates = [b.drop_path.p for s in net.stages for b in s.blocks]
    assert rates[0] == 0.0
    assert rates[-1] == pytest.approx(0.1)
    assert rates == sorted(rates)


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_equivalent_to_hf_segformer(hf_b0: nn.Module, size: tuple[int, int]) -> None:
    ours = mit_b0(norm_eps=1e-5)
    report = load_pretrained(ours, hf_b0.state_dict(), source="hf")
    assert report.missing_keys == [] and report.unexpected_keys == []
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    assert_equivalent(ours_features(ours, x), hf_features(hf_b0, x))


@pytest.mark.parametrize("layout", ["hf4", "official", "mmseg"])
@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_layouts_from_files_auto_detected(
    hf_b0: nn.Module, tmp_path: Path, layout: str, suffix: str
) -> None:
    sd = {k: v.clone() for k, v in hf_b0.state_dict().items()}
    ckpt: dict[str, torch.Tensor] = {
        "hf4": to_hf4,
        "official": to_official,
        "mmseg": lambda s: official_to_mmseg(to_official(s)),
    }[layout](sd)
    path = tmp_path / f"mit{suffix}"
    if suffix == ".safetensors":
        if layout == "mmseg":
            ckpt = ckpt["state_dict"]  # type: ignore[assignment]
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file({k: v.contiguous() for k, v in ckpt.items()}, str(path))
    else:
        torch.save(ckpt, path)
    ours = mit_b0(norm_eps=1e-5)
    report = load_pretrained(ours, path)
    assert report.source == {"hf4": "hf", "official": "official", "mmseg": "mmseg"}[layout]
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert report.ignored_keys  # the head / decode head
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert_equivalent(ours_features(ours, x), hf_features(hf_b0, x))


def test_gmmseg_roundtrip(tmp_path: Path) -> None:
    a = randomise(mit_b0()).eval()
    torch.save(a.state_dict(), tmp_path / "a.pt")
    b = mit_b0().eval()
    assert load_pretrained(b, tmp_path / "a.pt").source == "gmmseg"
    x = torch.randn(1, 3, 64, 64)
    assert_equivalent(ours_features(b, x), ours_features(a, x), tol=0.0)


def test_train_mode_drop_path_changes_output_and_backward() -> None:
    torch.manual_seed(0)
    net = mit_b0(drop_path_rate=0.5).train()
    x = torch.randn(2, 3, 32, 32)
    feats = net(x)
    assert not torch.equal(net(x)[-1], feats[-1])  # stochastic depth in training
    sum(f.sum() for f in feats).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    assert torch.equal(net(x)[-1], net(x)[-1])


@pytest.mark.parametrize(
    ("name", "published_millions"),
    [
        # SegFormer paper (Xie et al., NeurIPS 2021, arXiv:2105.15203), Table 1(a), "Encoder
        # Params (M)"; consistent with its Table 2 totals (e.g. B5: 81.4 + 3.3 decoder = 84.7).
        # The paper prints one decimal without a stated rounding rule: B1 (13.15 M) and B3
        # (44.07 M) appear truncated, B0 (3.32 M) is printed as 3.4. Every variant is within
        # 0.1 M of the printed figure; the exact counts are pinned by test_parameter_counts.
        ("mit_b0", 3.4),
        ("mit_b1", 13.1),
        ("mit_b2", 24.2),
        ("mit_b3", 44.0),
        ("mit_b4", 60.8),
        ("mit_b5", 81.4),
    ],
)
def test_parameter_counts_match_the_paper(name: str, published_millions: float) -> None:
    with torch.device("meta"):
        ours = MixVisionTransformer(MIT_CONFIGS[name])
    count = sum(p.numel() for p in ours.parameters())
    assert abs(count / 1e6 - published_millions) < 0.1


# --- LayerNorm epsilon conventions. The reference is transformers' SegformerModel with the eps of
# --- its LayerNorms set, by module name, to each project's convention (transformers itself uses
# --- 1e-5 everywhere): "embed" norms are the patch embeddings' and the key/value reduction's.

CONVENTIONS = {"nvlabs": (1e-6, 1e-5), "mmseg": (1e-6, 1e-6), "hf": (1e-5, 1e-5)}


def hf_with_eps(model: nn.Module, norm_eps: float, embed_norm_eps: float) -> nn.Module:
    seen = {"embed": 0, "other": 0}
    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            is_embed = "patch_embeddings" in name or "sequence_reduction" in name
            m.eps = embed_norm_eps if is_embed else norm_eps
            seen["embed" if is_embed else "other"] += 1
    # B0: 4 patch-embedding norms + 3 reduction norms (sr_ratio 1 in the last stage: none);
    # 8 blocks x 2 norms + 4 stage norms
    assert seen == {"embed": 4 + 3 * 2, "other": 8 * 2 + 4}, seen
    return model


def test_norm_eps_conventions_table() -> None:
    from gmmseg.backbones.mit import MIT_NORM_EPS

    assert CONVENTIONS == MIT_NORM_EPS
    net = mit_b0()
    assert (net.norm_eps, net.embed_norm_eps) == MIT_NORM_EPS["nvlabs"]
    embed = [m.eps for n, m in net.named_modules() if n.endswith(("patch_embed.norm", "sr_norm"))]
    assert len(embed) == 4 + 3 * 2 and set(embed) == {1e-5}
    other = mit_b0(norm_eps=1e-6, embed_norm_eps=1e-6)
    assert {m.eps for m in other.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}


@pytest.mark.parametrize("reference", list(CONVENTIONS))
def test_norm_eps_conventions_float64(hf_b0: nn.Module, reference: str) -> None:
    """Right eps agrees with the reference to float64 rounding; either wrong eps is visible."""
    import copy

    ref = hf_with_eps(copy.deepcopy(hf_b0).double(), *CONVENTIONS[reference])
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = hf_features(ref, x)
    for name, (norm_eps, embed_norm_eps) in CONVENTIONS.items():
        ours = mit_b0(norm_eps=norm_eps, embed_norm_eps=embed_norm_eps)
        load_pretrained(ours, hf_b0.state_dict(), source="hf")
        got = ours_features(ours.double(), x)
        err = max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True))
        if name == reference:
            assert err <= 1e-12, (name, err)
        else:
            assert err > 1e-8, (name, err)  # 4 orders of magnitude above the agreement


def test_norm_eps_validation() -> None:
    with pytest.raises(ValueError, match=r"embed_norm_eps must be a finite float > 0, got 0"):
        mit_b0(embed_norm_eps=0)
    with pytest.raises(ValueError, match=r"norm_eps must be a finite float > 0, got -1e-06"):
        MixVisionTransformer(MIT_CONFIGS["mit_b0"], norm_eps=-1e-6)
