"""Builders of checkpoints in other projects' published layouts, and their reference forwards.

Used by tests/test_interop_*.py. A file is built from random weights and renamed here to the
foreign layout's names; each reference forward reads those foreign names and follows the foreign
module's semantics (mmsegmentation's ConvModule = conv without bias + BatchNorm + ReLU, its heads'
resize/concatenation order, the official GMMSeg head's log-density formula), written from those
projects' code, not by calling gmmseg's modules. Backbone references are transformers' own
SegformerModel / SwinBackbone (with each convention's LayerNorm eps) or a plain ResNet-V1c.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Sd = dict[str, Tensor]


def randomise_state(sd: Sd, seed: int = 0) -> Sd:
    """Random values for every float tensor (scales near 1, running variances > 0)."""
    g = torch.Generator().manual_seed(seed)
    out: Sd = {}
    for name, t in sd.items():
        if not t.is_floating_point():
            out[name] = t.clone()
            continue
        noise = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
        if name.endswith("running_var"):
            out[name] = 0.5 + 0.5 * noise.abs()
        elif name.endswith("running_mean") or (t.dim() == 1 and name.endswith("bias")):
            out[name] = 0.1 * noise
        elif t.dim() == 1 or name.endswith(("means", "scales")):
            out[name] = 1.0 + 0.1 * noise
        else:
            fan_in = max(1, t[0].numel())
            out[name] = noise * (1.0 / fan_in) ** 0.5
    return out


def randomise_module(module: nn.Module, seed: int = 0) -> nn.Module:
    module.load_state_dict(randomise_state(module.state_dict(), seed))
    return module


# ------------------------------------------------------------------------ mmcv building blocks


def conv_module(
    sd: Sd, p: str, x: Tensor, *, pad: int = 0, dil: int = 1, groups: int = 1, act: bool = True
) -> Tensor:
    """mmcv ConvModule(conv without bias, BN, ReLU) with weights ``p.conv.*`` / ``p.bn.*``."""
    y = F.conv2d(x, sd[p + ".conv.weight"], None, 1, pad, dil, groups)
    y = F.batch_norm(
        y,
        sd[p + ".bn.running_mean"],
        sd[p + ".bn.running_var"],
        sd[p + ".bn.weight"],
        sd[p + ".bn.bias"],
        False,
        0.0,
        1e-5,
    )
    return F.relu(y) if act else y


def resize(x: Tensor, size: tuple[int, ...], align_corners: bool = False) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def conv_seg(sd: Sd, x: Tensor, prefix: str = "decode_head.conv_seg") -> Tensor:
    return F.conv2d(x, sd[prefix + ".weight"], sd[prefix + ".bias"])


# -------------------------------------------------------------------------- mmseg decode heads


def segformer_head(sd: Sd, feats: list[Tensor], p: str = "decode_head") -> Tensor:
    """mmseg SegformerHead (and the GMMSeg release's): convs.i, resize to c1, cat c1..c4, fuse."""
    size = feats[0].shape[-2:]
    outs = [resize(conv_module(sd, f"{p}.convs.{i}", f), size) for i, f in enumerate(feats)]
    return conv_module(sd, f"{p}.fusion_conv", torch.cat(outs, 1))


def sep_conv_module(sd: Sd, p: str, x: Tensor, dil: int = 1) -> Tensor:
    """mmcv DepthwiseSeparableConvModule, 3×3 depthwise (padding = dilation) then 1×1."""
    y = conv_module(sd, p + ".depthwise_conv", x, pad=dil, dil=dil, groups=x.shape[1])
    return conv_module(sd, p + ".pointwise_conv", y)


def deeplabv3plus_head(
    sd: Sd,
    feats: list[Tensor],
    dilations: tuple[int, ...] = (1, 12, 24, 36),
    p: str = "decode_head",
) -> Tensor:
    """mmseg DepthwiseSeparableASPPHead (in_index 3, c1 from level 0)."""
    x = feats[3]
    pooled = conv_module(sd, f"{p}.image_pool.1", F.adaptive_avg_pool2d(x, 1))
    outs = [resize(pooled, x.shape[-2:])]
    for i, d in enumerate(dilations):
        if d == 1:
            outs.append(conv_module(sd, f"{p}.aspp_modules.{i}", x))
        else:
            outs.append(sep_conv_module(sd, f"{p}.aspp_modules.{i}", x, d))
    out = conv_module(sd, f"{p}.bottleneck", torch.cat(outs, 1), pad=1)
    c1 = conv_module(sd, f"{p}.c1_bottleneck", feats[0])
    out = torch.cat([resize(out, c1.shape[-2:]), c1], 1)
    out = sep_conv_module(sd, f"{p}.sep_bottleneck.0", out)
    return sep_conv_module(sd, f"{p}.sep_bottleneck.1", out)


def fcn_head(sd: Sd, feats: list[Tensor], num_convs: int = 2, p: str = "decode_head") -> Tensor:
    """mmseg FCNHead (in_index 3, kernel 3, concat_input)."""
    x = feats[3]
    out = x
    for i in range(num_convs):
        out = conv_module(sd, f"{p}.convs.{i}", out, pad=1)
    return conv_module(sd, f"{p}.conv_cat", torch.cat([x, out], 1), pad=1)


def uper_head(
    sd: Sd, feats: list[Tensor], scales: tuple[int, ...] = (1, 2, 3, 6), p: str = "decode_head"
) -> Tensor:
    """mmseg UPerHead: PPM on the last level, FPN top-down, fpn_convs, fpn_bottleneck."""
    x = feats[-1]
    ppm = [x] + [
        resize(conv_module(sd, f"{p}.psp_modules.{i}.1", F.adaptive_avg_pool2d(x, s)), x.shape[-2:])
        for i, s in enumerate(scales)
    ]
    laterals = [conv_module(sd, f"{p}.lateral_convs.{i}", f) for i, f in enumerate(feats[:-1])]
    laterals.append(conv_module(sd, f"{p}.bottleneck", torch.cat(ppm, 1), pad=1))
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
    outs = [
        conv_module(sd, f"{p}.fpn_convs.{i}", laterals[i], pad=1) for i in range(len(laterals) - 1)
    ]
    outs.append(laterals[-1])
    outs = [outs[0]] + [resize(o, outs[0].shape[-2:]) for o in outs[1:]]
    return conv_module(sd, f"{p}.fpn_bottleneck", torch.cat(outs, 1), pad=1)


# -------------------------------------------------------------------- official GMMSeg head


def official_gmm_head(sd: Sd, fused: Tensor, p: str = "decode_head") -> tuple[Tensor, Tensor]:
    """The release's GMMSegHead at inference: logits and class scores, (B, C, H, W) each.

    projection (ConvModule) → LayerNorm(D) (feat_norm) → L2 → per component
    −D/2·log 2π − Σ log σ − ½ Σ ((x − μ)/σ)² with unit-normalised μ → max over components →
    LayerNorm(C) (mask_norm).
    """
    e = conv_module(sd, f"{p}.projection", fused)
    b, d, h, w = e.shape
    x = e.permute(0, 2, 3, 1).reshape(-1, d)
    x = F.layer_norm(x, (d,), sd[f"{p}.feat_norm.weight"], sd[f"{p}.feat_norm.bias"])
    x = F.normalize(x, p=2, dim=-1)
    means = F.normalize(sd[f"{p}.means"], p=2, dim=-1)  # (C, M, D)
    sigma = sd[f"{p}.diagonal"]
    c = means.shape[0]
    diff = (x[:, None, None, :] - means[None]) / sigma[None]  # (N, C, M, D)
    logp = -0.5 * d * math.log(2 * math.pi) - sigma.log().sum(-1)[None] - 0.5 * diff.pow(2).sum(-1)
    s = logp.amax(-1)  # (N, C)
    z = F.layer_norm(s, (c,), sd[f"{p}.mask_norm.weight"], sd[f"{p}.mask_norm.bias"])

    def grid(t: Tensor) -> Tensor:
        return t.reshape(b, h, w, c).permute(0, 3, 1, 2)

    return grid(z), grid(s)


# --------------------------------------------------------------------------------- ResNet-V1c

OS8 = ((1, 2, 1, 1), (1, 1, 2, 4))


def resnet_v1c(sd: Sd, x: Tensor, blocks: tuple[int, ...], p: str = "backbone") -> list[Tensor]:
    """mmseg ResNetV1c (deep stem, style pytorch, d8, contract_dilation) on mmseg names."""

    def bn(t: Tensor, q: str) -> Tensor:
        return F.batch_norm(
            t,
            sd[q + ".running_mean"],
            sd[q + ".running_var"],
            sd[q + ".weight"],
            sd[q + ".bias"],
            False,
            0.0,
            1e-5,
        )

    def conv(t: Tensor, q: str, stride: int = 1, pad: int = 0, dil: int = 1) -> Tensor:
        return F.conv2d(t, sd[q + ".weight"], None, stride, pad, dil)

    y = F.relu(bn(conv(x, f"{p}.stem.0", 2, 1), f"{p}.stem.1"))
    y = F.relu(bn(conv(y, f"{p}.stem.3", 1, 1), f"{p}.stem.4"))
    y = F.relu(bn(conv(y, f"{p}.stem.6", 1, 1), f"{p}.stem.7"))
    y = F.max_pool2d(y, 3, 2, 1)
    strides, dilations = OS8
    feats = []
    for i, n in enumerate(blocks):
        for j in range(n):
            q = f"{p}.layer{i + 1}.{j}"
            s = strides[i] if j == 0 else 1
            d = dilations[i] // 2 if j == 0 and dilations[i] > 1 else dilations[i]
            out = F.relu(bn(conv(y, q + ".conv1"), q + ".bn1"))
            out = F.relu(bn(conv(out, q + ".conv2", s, d, d), q + ".bn2"))
            out = bn(conv(out, q + ".conv3"), q + ".bn3")
            idn = bn(conv(y, q + ".downsample.0", s), q + ".downsample.1") if j == 0 else y
            y = F.relu(out + idn)
        feats.append(y)
    return feats


def gmmseg_resnet_to_mmseg(sd: Sd) -> Sd:
    """gmmseg ResNet names → mmseg ResNetV1c names (``stem.0/1/3/4/6/7``)."""
    stem = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4, "conv3": 6, "bn3": 7}
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"stem\.(\w+?)\.(.*)", k)
        out[f"stem.{stem[m.group(1)]}.{m.group(2)}" if m else k] = v
    return out


# --------------------------------------------------------------------- gmmseg decoder → mmseg

_CONV_PART = {"0": "conv", "1": "bn"}


def _convnormact(rest: str) -> str:
    """``0.weight`` → ``conv.weight``; ``1.running_mean`` → ``bn.running_mean``."""
    idx, param = rest.split(".", 1)
    return f"{_CONV_PART[idx]}.{param}"


def gmmseg_decoder_to_mmseg(kind: str, sd: Sd) -> Sd:
    """A gmmseg decoder state dict (no prefix) → mmseg head names (no prefix)."""
    out: Sd = {}
    for k, v in sd.items():
        if kind == "segformer":
            m = re.fullmatch(r"projections\.(\d+)\.(\d\..*)", k)
            name = (
                f"convs.{m.group(1)}.{_convnormact(m.group(2))}"
                if m
                else "fusion_conv." + _convnormact(k.removeprefix("fuse."))
            )
        elif kind == "fcn":
            m = re.fullmatch(r"convs\.(\d+)\.(\d\..*)", k)
            name = (
                f"convs.{m.group(1)}.{_convnormact(m.group(2))}"
                if m
                else "conv_cat." + _convnormact(k.removeprefix("conv_cat."))
            )
        elif kind == "upernet":
            m = re.fullmatch(
                r"(ppm\.\d+\.1|ppm_bottleneck|laterals\.\d+|fpn_convs\.\d+|"
                r"fpn_bottleneck)\.(\d\..*)",
                k,
            )
            assert m, k
            mod = (
                m.group(1)
                .replace("ppm_bottleneck", "bottleneck")
                .replace("ppm.", "psp_modules.")
                .replace("laterals.", "lateral_convs.")
            )
            name = f"{mod}.{_convnormact(m.group(2))}"
        else:  # deeplabv3plus
            m = re.fullmatch(r"aspp\.(\d+)\.(\d)\.(\d)\.(.*)", k)
            f = re.fullmatch(r"fuse\.(\d)\.(\d)\.(\d\..*)", k)
            if m:
                part = "depthwise_conv" if m.group(2) == "0" else "pointwise_conv"
                tail = _convnormact(m.group(3) + "." + m.group(4))
                name = f"aspp_modules.{m.group(1)}.{part}.{tail}"
            elif f:
                part = "depthwise_conv" if f.group(2) == "0" else "pointwise_conv"
                name = f"sep_bottleneck.{f.group(1)}.{part}.{_convnormact(f.group(3))}"
            else:
                g = re.fullmatch(r"(image_pool\.1|aspp\.0|bottleneck|skip)\.(\d\..*)", k)
                assert g, k
                mod = {"aspp.0": "aspp_modules.0", "skip": "c1_bottleneck"}.get(
                    g.group(1), g.group(1)
                )
                name = f"{mod}.{_convnormact(g.group(2))}"
        out[name] = v
    return out


def strip(sd: Sd, prefix: str) -> Sd:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def add_prefix(sd: Sd, prefix: str) -> Sd:
    return {prefix + k: v for k, v in sd.items()}


# ------------------------------------------------------------------------------------- MiT (HF)


def hf_mit_config(
    transformers: object,
    embed_dims: tuple[int, ...],
    depths: tuple[int, ...],
    num_heads: tuple[int, ...],
    **kw: object,
) -> object:
    return transformers.SegformerConfig(  # type: ignore[attr-defined]
        num_channels=3,
        num_encoder_blocks=4,
        depths=list(depths),
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=list(embed_dims),
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        num_attention_heads=list(num_heads),
        mlp_ratios=[4] * 4,
        drop_path_rate=0.0,
        **kw,
    )


def set_mit_eps(model: nn.Module, norm_eps: float, embed_eps: float) -> None:
    """Give a transformers Segformer encoder another LayerNorm-epsilon convention."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.LayerNorm):
            is_embed = "patch_embeddings" in name or "sequence_reduction" in name
            mod.eps = embed_eps if is_embed else norm_eps


def hf_mit_to_mmseg(sd: Sd) -> Sd:
    """transformers 5.x in-memory MiT names (no ``segformer.``) → mmseg MixVisionTransformer."""
    out: Sd = {}
    for k, v in sd.items():
        m = re.fullmatch(r"stages\.(\d)\.(.*)", k)
        assert m, k
        i, rest = m.group(1), m.group(2)
        if rest.startswith("patch_embeddings."):
            rest = rest.replace("patch_embeddings.proj.", "0.projection.")
            out[f"layers.{i}.{rest.replace('patch_embeddings.layer_norm.', '0.norm.')}"] = v
            continue
        if rest.startswith("layer_norm."):
            out[f"layers.{i}.2.{rest.removeprefix('layer_norm.')}"] = v
            continue
        j, r = re.fullmatch(r"blocks\.(\d+)\.(.*)", rest).groups()  # type: ignore[union-attr]
        pre = f"layers.{i}.1.{j}."
        if r.startswith("attention.q_proj."):
            param = r.rsplit(".", 1)[1]
            kk = sd[k.replace("q_proj", "k_proj")]
            vv = sd[k.replace("q_proj", "v_proj")]
            out[pre + "attn.attn.in_proj_" + param] = torch.cat([v, kk, vv], 0)
            continue
        if r.startswith(("attention.k_proj.", "attention.v_proj.")):
            continue
        for old, new in [
            ("layernorm_before.", "norm1."),
            ("layernorm_after.", "norm2."),
            ("attention.o_proj.", "attn.attn.out_proj."),
            ("attention.sequence_reduction.sequence_reduction.", "attn.sr."),
            ("attention.sequence_reduction.layer_norm.", "attn.norm."),
            ("mlp.dwconv.dwconv.", "ffn.layers.1."),
        ]:
            r = r.replace(old, new)
        if r.startswith("mlp.fc1.") or r.startswith("mlp.fc2."):
            idx = "0" if r.startswith("mlp.fc1.") else "4"
            if r.endswith("weight"):
                v = v[:, :, None, None]
            r = f"ffn.layers.{idx}.{r.rsplit('.', 1)[1]}"
        out[pre + r] = v
    return out


def hf_mit_to_nvlabs(sd: Sd) -> Sd:
    """transformers 5.x in-memory MiT names → NVlabs mix_transformer names."""
    out: Sd = {}
    for k, v in sd.items():
        m = re.fullmatch(r"stages\.(\d)\.(.*)", k)
        assert m, k
        i, rest = int(m.group(1)) + 1, m.group(2)
        if rest.startswith("patch_embeddings."):
            rest = rest.replace("patch_embeddings.layer_norm.", "norm.")
            out[f"patch_embed{i}.{rest.replace('patch_embeddings.', '')}"] = v
            continue
        if rest.startswith("layer_norm."):
            out[f"norm{i}.{rest.removeprefix('layer_norm.')}"] = v
            continue
        j, r = re.fullmatch(r"blocks\.(\d+)\.(.*)", rest).groups()  # type: ignore[union-attr]
        if r.startswith("attention.k_proj."):
            param = r.rsplit(".", 1)[1]
            out[f"block{i}.{j}.attn.kv.{param}"] = torch.cat(
                [v, sd[k.replace("k_proj", "v_proj")]], 0
            )
            continue
        if r.startswith("attention.v_proj."):
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


def hf_features(model: nn.Module, x: Tensor) -> list[Tensor]:
    with torch.no_grad():
        return list(model(pixel_values=x, output_hidden_states=True).hidden_states)


def max_rel(a: Tensor, b: Tensor) -> float:
    """max |a − b| relative to the largest |b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


Ref = Callable[[Tensor], Tensor]
