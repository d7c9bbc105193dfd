"""Swin backbones: shapes, parameter counts, equivalence with Hugging Face SwinBackbone/SwinModel
through the HF, official and mmsegmentation checkpoint layouts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from gmmseg.backbones import SwinConfig, SwinTransformer, load_pretrained, swin_tiny
from gmmseg.backbones.swin import SWIN_CONFIGS, relative_position_index, shift_mask

transformers = pytest.importorskip("transformers")

STAGES = ["stage1", "stage2", "stage3", "stage4"]


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():
            noise = torch.randn(t.shape, generator=g)
            is_scale = t.dim() == 1 and name.endswith("weight")
            t.copy_(1.0 + 0.1 * noise if is_scale else 0.05 * noise)
    return module


def hf_config(cfg: SwinConfig, **kw: object) -> object:
    return transformers.SwinConfig(
        embed_dim=cfg.embed_dim,
        depths=list(cfg.depths),
        num_heads=list(cfg.num_heads),
        window_size=cfg.window_size,
        drop_path_rate=0.0,
        **kw,
    )


def assert_equivalent(ours: list[torch.Tensor], ref: list[torch.Tensor], tol: float = 1e-5) -> None:
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        err = float((a - b).abs().max())
        assert err <= tol, f"stage {i}: max |diff| {err:.2e}"


TINY = SWIN_CONFIGS["swin_tiny"]
SMALL_W12 = SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=12)


@pytest.fixture(scope="module")
def hf_tiny() -> nn.Module:
    torch.manual_seed(0)
    model = transformers.SwinBackbone(hf_config(TINY, out_features=STAGES))
    return randomise(model).eval()


def hf_backbone_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model(pixel_values=x).feature_maps)


def ours_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model.eval()(x))


# --- other layouts, written from the HF (5.x) names the way each project names its weights.


def hf_to_official(sd: dict[str, torch.Tensor], seg_norms: bool) -> dict[str, torch.Tensor]:
    """microsoft/Swin-Transformer ``.pth`` (classification: final ``norm`` + ``head``) or its
    segmentation release (``norm0`` … ``norm3``)."""
    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        k = key.removeprefix("swin.")
        m = re.fullmatch(r"hidden_states_norms\.stage(\d)\.(.*)", k)
        if m:
            if seg_norms:
                out[f"norm{int(m.group(1)) - 1}.{m.group(2)}"] = v
            elif m.group(1) == "4":
                out[f"norm.{m.group(2)}"] = v
            continue
        if "k_proj" in k or "v_proj" in k or k.startswith("layernorm."):
            continue  # (SwinBackbone's final layernorm is unused)
        if "q_proj" in k:
            kv = [sd[key.replace("q_proj", p)] for p in ("k_proj", "v_proj")]
            v = torch.cat([v, *kv], 0)
            k = k.replace("attention.q_proj", "attn.qkv")
        for old, new in [
            ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
            ("embeddings.norm.", "patch_embed.norm."),
            ("encoder.layers.", "layers."),
            ("layernorm_before.", "norm1."),
            ("layernorm_after.", "norm2."),
            ("attention.o_proj.", "attn.proj."),
            (
                "attention.relative_position_bias.relative_position_bias_table",
                "attn.relative_position_bias_table",
            ),
        ]:
            k = k.replace(old, new)
        out[k] = v
        if k.endswith("relative_position_bias_table"):
            w = int(((v.shape[0]) ** 0.5 + 1) / 2)
            out[k.replace("table", "index").replace("bias_index", "index")] = (
                relative_position_index(w)
            )
    if not seg_norms:
        out["head.weight"] = torch.zeros(1000, 768)
    return out


def official_to_mmseg(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmsegmentation's SwinTransformer: w_msa, ffn, stages, and nn.Unfold-ordered merging."""

    def unfold_order(x: torch.Tensor) -> torch.Tensor:
        # blocks (x0, x1, x2, x3) = (row, col) (0,0), (1,0), (0,1), (1,1) → Unfold's (c, row, col)
        c4 = x.shape[-1]
        lead = x.shape[:-1]
        y = x.reshape(*lead, 4, c4 // 4)[..., [0, 2, 1, 3], :]
        return y.transpose(-1, -2).reshape(*lead, c4)

    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("layers."):
            if "downsample" in k:
                v = unfold_order(v)
            k = k.replace("attn.", "attn.w_msa.").replace("mlp.fc1.", "ffn.layers.0.0.")
            k = k.replace("mlp.fc2.", "ffn.layers.1.").replace("layers.", "stages.", 1)
        k = k.replace("patch_embed.proj.", "patch_embed.projection.")
        out["backbone." + k] = v
    return out


# --------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("name", "window", "published"),
    [
        # Published totals with the 1000-class head (timm's model table / Swin paper:
        # swin_tiny_patch4_window7_224 28.29M, swin_small_patch4_window7_224 49.61M,
        # swin_base_patch4_window7_224 87.77M, swin_base_patch4_window12_384 87.90M). The
        # backbone has no head and three extra output norms (stages 1–3).
        ("swin_tiny", 7, 28_288_354),
        ("swin_small", 7, 49_606_258),
        ("swin_base", 7, 87_768_224),
        ("swin_base", 12, 87_903_584),
    ],
)
def test_parameter_counts(name: str, window: int, published: int) -> None:
    base = SWIN_CONFIGS[name]
    with torch.device("meta"):
        net = SwinTransformer(SwinConfig(base.embed_dim, base.depths, base.num_heads, window))
    n = sum(p.numel() for p in net.parameters())
    extra_norms = sum(p.numel() for p in net.norms[:3].parameters())
    head = net.out_channels[-1] * 1000 + 1000
    assert n - extra_norms + head == published
    assert round((n - extra_norms + head) / 1e6, 2) == round(published / 1e6, 2)


def test_shapes_channels_strides() -> None:
    net = swin_tiny().eval()
    feats = net(torch.randn(1, 3, 64, 96))
    assert net.out_channels == (96, 192, 384, 768)
    assert net.strides == (4, 8, 16, 32)
    for f, c, s in zip(feats, net.out_channels, net.strides, strict=True):
        assert f.shape == (1, c, 64 // s, 96 // s)


def test_shift_mask_against_loop() -> None:
    hp, wp, ws, s = 14, 21, 7, 3
    label = torch.zeros(hp, wp, dtype=torch.long)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            label[hs, wsl] = cnt
            cnt += 1
    mask = shift_mask(hp, wp, ws, s, torch.device("cpu"))
    n = 0
    for bh in range(hp // ws):
        for bw in range(wp // ws):
            win = label[bh * ws : (bh + 1) * ws, bw * ws : (bw + 1) * ws].reshape(-1)
            expected = torch.where(win[:, None] == win[None, :], 0.0, -100.0)
            assert torch.equal(mask[n], expected)
            n += 1
    assert n == mask.shape[0]


@pytest.mark.parametrize("size", [(64, 64), (72, 100)])
def test_equivalent_to_hf_swin_backbone(hf_tiny: nn.Module, size: tuple[int, int]) -> None:
    ours = swin_tiny()
    report = load_pretrained(ours, hf_tiny.state_dict(), source="hf")
    assert report.missing_keys == [] and report.unexpected_keys == [] and report.new_keys == []
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    assert_equivalent(ours_features(ours, x), hf_backbone_features(hf_tiny, x))


def test_equivalent_to_hf_window12_odd_sizes() -> None:
    torch.manual_seed(0)
    hf = randomise(transformers.SwinBackbone(hf_config(SMALL_W12, out_features=STAGES))).eval()
    ours = SwinTransformer(SMALL_W12)
    load_pretrained(ours, hf.state_dict())
    x = torch.randn(1, 3, 90, 130)  # odd maps at every stage: patch and merge padding
    assert_equivalent(ours_features(ours, x), hf_backbone_features(hf, x))


def test_hf_swin_model_layout_final_norm_only() -> None:
    """SwinModel (no backbone norms): its final ``layernorm`` is the stage-4 norm; the other
    output norms are new (left at their initial values), and strict loading accepts that."""
    torch.manual_seed(0)
    hf = randomise(transformers.SwinModel(hf_config(SMALL_W12), add_pooling_layer=False)).eval()
    ours = SwinTransformer(SMALL_W12)
    report = load_pretrained(ours, hf.state_dict())
    assert report.source == "hf"
    assert report.new_keys == [f"norms.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = hf(pixel_values=x, always_partition=True).last_hidden_state  # (B, h·w, C)
    last = ours_features(ours, x)[-1]
    assert_equivalent([last.flatten(2).transpose(1, 2)], [ref])


@pytest.mark.parametrize("layout", ["official", "official_seg", "mmseg"])
def test_official_and_mmseg_layouts(hf_tiny: nn.Module, tmp_path: Path, layout: str) -> None:
    sd = dict(hf_tiny.state_dict())
    official = hf_to_official(sd, seg_norms=layout != "official")
    ckpt = official_to_mmseg(official) if layout == "mmseg" else {"model": official}
    torch.save(ckpt, tmp_path / "swin.pth")
    ours = swin_tiny()
    report = load_pretrained(ours, tmp_path / "swin.pth")
    assert report.source == ("mmseg" if layout == "mmseg" else "official")
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert any("relative_position_index" in k for k in report.ignored_keys)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    feats, ref = ours_features(ours, x), hf_backbone_features(hf_tiny, x)
    if layout == "official":  # classification checkpoint: only the last output norm is loaded
        assert report.new_keys == [f"norms.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
        feats, ref = feats[3:], ref[3:]
    assert_equivalent(feats, ref)


def test_window_mismatch_names_the_key() -> None:
    src = SwinTransformer(SwinConfig(16, (2, 2, 2, 2), (1, 2, 2, 4), window_size=7))
    dst = SwinTransformer(SwinConfig(16, (2, 2, 2, 2), (1, 2, 2, 4), window_size=12))
    with pytest.raises(ValueError, match=r"relative_position_bias_table.*\(169, 1\).*\(529, 1\)"):
        load_pretrained(dst, src.state_dict())


def test_backward_and_drop_path() -> None:
    torch.manual_seed(0)
    net = SwinTransformer(SMALL_W12, drop_path_rate=0.5).train()
    feats = net(torch.randn(2, 3, 64, 64))
    sum(f.sum() for f in feats).backward()
    assert all(p.grad is not None for p in net.parameters())
