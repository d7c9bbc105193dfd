"""Key-layout converters: a foreign checkpoint's state dict → gmmseg's parameter names.

Each converter takes the backbone's own weights only (wrappers and the ``backbone.``, ``segformer.``
or ``swin.`` prefixes already removed by :func:`gmmseg.backbones.load_pretrained`) and returns a
:class:`Converted`: the renamed tensors, the source keys deliberately dropped (classification heads,
buffers that gmmseg recomputes), the source keys it does not understand, and gmmseg keys that
the source format cannot contain (left at their initialisation).

Supported layouts (``source``):

- ``official``: SegFormer's ``mit_b*.pth`` (``patch_embed1``, ``block1``, ``norm1``); Swin's
  classification ``.pth`` (``layers.i``, final ``norm``) and its segmentation release
  (``norm0`` … ``norm3``).
- ``mmseg``: mmsegmentation / mmpretrain: MiT (``layers.i.0/1/2``), Swin (``stages.i``, ``w_msa``,
  ``ffn``, nn.Unfold-ordered patch merging), ResNet V1c (``stem.0`` … ``stem.7``, or mmpretrain's
  ``stem.k.conv/bn``) and V1b (``conv1``/``bn1``).
- ``hf``: Hugging Face ``transformers`` Segformer and Swin / SwinBackbone, with both the 4.x names
  (``encoder.block``, ``attention.self.query``) and the 5.x names (``stages``, ``q_proj``).
- ``torchvision``: torchvision ResNet (7×7 stem: fits the V1b backbones only).
- ``timm``: timm ResNet: ``resnet50c``/``resnet101c`` (deep stem, identical to V1c) and plain stems.
- ``gmmseg``: gmmseg's own ``state_dict()``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "Converted",
    "convert_mit",
    "convert_resnet",
    "convert_swin",
    "detect_mit_source",
    "detect_resnet_source",
    "detect_swin_source",
]


@dataclass
class Converted:
    """Result of a key-layout conversion.

    Attributes:
        state_dict: tensors under gmmseg's names.
        ignored: source keys dropped on purpose (heads, recomputed buffers).
        unknown: source keys the converter does not understand (reported as unexpected).
        new: gmmseg keys the source layout cannot contain (left at their initial values).
    """

    state_dict: dict[str, Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)


Rule = tuple[str, str]


def _apply_rules(
    state: Mapping[str, Tensor], rules: list[Rule], ignore: list[str], out: Converted
) -> dict[str, Tensor]:
    """Rename keys with the first matching full-match regex rule; collect ignored/unknown keys."""
    compiled = [(re.compile(p), r) for p, r in rules]
    ignored = [re.compile(p) for p in ignore]
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        if any(p.fullmatch(key) for p in ignored):
            out.ignored.append(key)
            continue
        for pattern, repl in compiled:
            m = pattern.fullmatch(key)
            if m:
                renamed[m.expand(repl)] = value
                break
        else:
            out.unknown.append(key)
    return renamed


def _merge(state: dict[str, Tensor], parts: tuple[str, ...], merged: str) -> None:
    """Concatenate ``<prefix>.<part>.<param>`` tensors along dim 0 into ``<prefix>.<merged>``."""
    first = parts[0]
    pat = re.compile(rf"(.*)\.{re.escape(first)}\.(weight|bias)")
    for key in [k for k in state if pat.fullmatch(k)]:
        m = pat.fullmatch(key)
        assert m is not None
        prefix, param = m.group(1), m.group(2)
        names = [f"{prefix}.{p}.{param}" for p in parts]
        if all(n in state for n in names):
            state[f"{prefix}.{merged}.{param}"] = torch.cat([state.pop(n) for n in names], 0)


def _normalise_old_names(state: Mapping[str, Tensor], pairs: list[Rule]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for pattern, repl in pairs:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


# --------------------------------------------------------------------------------------- MiT

# Block-level rules; groups 1 and 2 of the full pattern are the stage and block indices.
_MIT_BLOCK: dict[str, list[Rule]] = {
    "official": [
        (r"(norm1|norm2)\.(.*)", r"\3.\4"),
        (r"attn\.(q|kv|proj|sr)\.(.*)", r"attn.\3.\4"),
        (r"attn\.norm\.(.*)", r"attn.sr_norm.\3"),
        (r"mlp\.(fc1|fc2)\.(.*)", r"mlp.\3.\4"),
        (r"mlp\.dwconv\.dwconv\.(.*)", r"mlp.dwconv.\3"),
    ],
    "mmseg": [
        (r"(norm1|norm2)\.(.*)", r"\3.\4"),
        (r"attn\.attn\.in_proj_(weight|bias)", r"attn.in_proj.\3"),
        (r"attn\.attn\.out_proj\.(.*)", r"attn.proj.\3"),
        (r"attn\.sr\.(.*)", r"attn.sr.\3"),
        (r"attn\.norm\.(.*)", r"attn.sr_norm.\3"),
        (r"ffn\.layers\.0\.(.*)", r"mlp.fc1.\3"),
        (r"ffn\.layers\.1\.(.*)", r"mlp.dwconv.\3"),
        (r"ffn\.layers\.4\.(.*)", r"mlp.fc2.\3"),
    ],
    "hf": [
        (r"layernorm_before\.(.*)", r"norm1.\3"),
        (r"layernorm_after\.(.*)", r"norm2.\3"),
        (r"attention\.(q|k|v)_proj\.(.*)", r"attn.\3.\4"),
        (r"attention\.o_proj\.(.*)", r"attn.proj.\3"),
        (r"attention\.sequence_reduction\.sequence_reduction\.(.*)", r"attn.sr.\3"),
        (r"attention\.sequence_reduction\.layer_norm\.(.*)", r"attn.sr_norm.\3"),
        (r"mlp\.(fc1|fc2)\.(.*)", r"mlp.\3.\4"),
        (r"mlp\.dwconv\.dwconv\.(.*)", r"mlp.dwconv.\3"),
    ],
}

# Stage-level rules and the block prefix; the official layout counts stages from 1 and is
# renamed to ``stages1.<k>`` first, then shifted by :func:`_shift_stages`.
_MIT_STAGE: dict[str, tuple[list[Rule], str, str]] = {
    "official": (
        [
            (r"patch_embed(\d)\.(proj|norm)\.(.*)", r"stages1.\1.patch_embed.\2.\3"),
            (r"norm(\d)\.(.*)", r"stages1.\1.norm.\2"),
        ],
        r"block(\d)\.(\d+)\.",
        r"stages1.\1.blocks.\2.",
    ),
    "mmseg": (
        [
            (r"layers\.(\d)\.0\.projection\.(.*)", r"stages.\1.patch_embed.proj.\2"),
            (r"layers\.(\d)\.0\.norm\.(.*)", r"stages.\1.patch_embed.norm.\2"),
            (r"layers\.(\d)\.2\.(.*)", r"stages.\1.norm.\2"),
        ],
        r"layers\.(\d)\.1\.(\d+)\.",
        r"stages.\1.blocks.\2.",
    ),
    "hf": (
        [
            (r"stages\.(\d)\.patch_embeddings\.proj\.(.*)", r"stages.\1.patch_embed.proj.\2"),
            (r"stages\.(\d)\.patch_embeddings\.layer_norm\.(.*)", r"stages.\1.patch_embed.norm.\2"),
            (r"stages\.(\d)\.layer_norm\.(.*)", r"stages.\1.norm.\2"),
        ],
        r"stages\.(\d)\.blocks\.(\d+)\.",
        r"stages.\1.blocks.\2.",
    ),
}


# transformers 4.x names → 5.x names (applied in order).
_HF_SEGFORMER_OLD: list[Rule] = [
    (r"^encoder\.patch_embeddings\.(\d+)\.", r"stages.\1.patch_embeddings."),
    (r"^encoder\.block\.(\d+)\.", r"stages.\1.blocks."),
    (r"^encoder\.layer_norm\.(\d+)\.", r"stages.\1.layer_norm."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.self\.sr\.", "attention.sequence_reduction.sequence_reduction."),
    (r"attention\.self\.layer_norm\.", "attention.sequence_reduction.layer_norm."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"mlp\.dense1\.", "mlp.fc1."),
    (r"mlp\.dense2\.", "mlp.fc2."),
    (r"\.layer_norm_1\.", ".layernorm_before."),
    (r"\.layer_norm_2\.", ".layernorm_after."),
]


def _mit_rules(source: str) -> tuple[list[Rule], list[str]]:
    stage_rules, block_pattern, block_repl = _MIT_STAGE[source]
    rules = list(stage_rules)
    rules += [(block_pattern + p, block_repl + r) for p, r in _MIT_BLOCK[source]]
    ignore = [r"classifier\..*", r"decode_head\..*"] if source == "hf" else [r"head\..*"]
    return rules, ignore


def _shift_stages(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename 1-based ``stages1.<k>.`` keys to 0-based ``stages.<k-1>.``."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"stages1\.(\d+)\.(.*)", key)
        out[f"stages.{int(m.group(1)) - 1}.{m.group(2)}" if m else key] = value
    return out


def convert_mit(state: Mapping[str, Tensor], source: str) -> Converted:
    """Convert a Mix Transformer state dict to gmmseg's :class:`MixVisionTransformer` names.

    Args:
        state: backbone tensors in the ``source`` layout.
        source: "official", "mmseg", "hf" or "gmmseg".

    Returns:
        The conversion result.

    Raises:
        ValueError: for an unsupported ``source``.
    """
    out = Converted()
    if source == "gmmseg":
        out.state_dict = dict(state)
        return out
    if source not in _MIT_BLOCK:
        raise ValueError(
            f"source must be 'official', 'mmseg', 'hf' or 'gmmseg' for a MiT backbone, "
            f"got {source!r}"
        )
    if source == "hf":
        state = _normalise_old_names(state, _HF_SEGFORMER_OLD)
    rules, ignore = _mit_rules(source)
    renamed = _shift_stages(_apply_rules(state, rules, ignore, out))
    if source == "hf":
        _merge(renamed, ("attn.k", "attn.v"), "attn.kv")
    if source == "mmseg":
        for key in [k for k in renamed if ".attn.in_proj." in k]:
            value = renamed.pop(key)
            dim = value.shape[0] // 3
            renamed[key.replace("attn.in_proj", "attn.q")] = value[:dim]
            renamed[key.replace("attn.in_proj", "attn.kv")] = value[dim:]
        for key in [k for k in renamed if re.search(r"mlp\.fc[12]\.weight$", k)]:
            if renamed[key].dim() == 4:
                renamed[key] = renamed[key].flatten(1)
    out.state_dict = renamed
    return out


def detect_mit_source(keys: list[str]) -> str | None:
    """Guess the layout of a MiT state dict from its keys (None when unknown)."""
    ks = set(keys)
    if any(k.startswith("patch_embed1.") for k in ks):
        return "official"
    if any(k.startswith("layers.0.0.projection.") for k in ks):
        return "mmseg"
    if any(k.startswith(("encoder.patch_embeddings.", "stages.0.patch_embeddings.")) for k in ks):
        return "hf"
    if any(k.startswith("stages.0.patch_embed.") for k in ks):
        return "gmmseg"
    return None


# -------------------------------------------------------------------------------------- Swin

_HF_SWIN_OLD: list[Rule] = [
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (
        r"attention\.self\.relative_position_bias_table$",
        "attention.relative_position_bias.relative_position_bias_table",
    ),
    (r"attention\.self\.relative_position_index$", "attention.relative_position_index"),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]


def _swin_rules(source: str, num_stages: int) -> tuple[list[Rule], list[str]]:
    last = num_stages - 1
    if source == "official":
        blocks = r"layers\.(\d)\.blocks\.(\d+)\."
        rules: list[Rule] = [
            (r"patch_embed\.(proj|norm)\.(.*)", r"patch_embed.\1.\2"),
            (r"layers\.(\d)\.downsample\.(reduction|norm)\.(.*)", r"stages.\1.downsample.\2.\3"),
            (r"norm\.(weight|bias)", rf"norms.{last}.\1"),
            (r"norm(\d)\.(weight|bias)", r"norms.\1.\2"),
        ]
        block = [
            (r"(norm1|norm2)\.(.*)", r"\3.\4"),
            (r"attn\.(qkv|proj)\.(.*)", r"attn.\3.\4"),
            (r"attn\.relative_position_bias_table", r"attn.relative_position_bias_table"),
            (r"mlp\.(fc1|fc2)\.(.*)", r"mlp.\3.\4"),
        ]
        ignore = [r"head\..*", r".*relative_position_index", r".*attn_mask"]
    elif source == "mmseg":
        blocks = r"stages\.(\d)\.blocks\.(\d+)\."
        rules = [
            (r"patch_embed\.projection\.(.*)", r"patch_embed.proj.\1"),
            (r"patch_embed\.norm\.(.*)", r"patch_embed.norm.\1"),
            (r"stages\.(\d)\.downsample\.(reduction|norm)\.(.*)", r"stages.\1.downsample.\2.\3"),
            (r"norm(\d)\.(weight|bias)", r"norms.\1.\2"),
        ]
        block = [
            (r"(norm1|norm2)\.(.*)", r"\3.\4"),
            (r"attn\.w_msa\.(qkv|proj)\.(.*)", r"attn.\3.\4"),
            (r"attn\.w_msa\.relative_position_bias_table", r"attn.relative_position_bias_table"),
            (r"ffn\.layers\.0\.0\.(.*)", r"mlp.fc1.\3"),
            (r"ffn\.layers\.1\.(.*)", r"mlp.fc2.\3"),
        ]
        ignore = [r"head\..*", r".*relative_position_index"]
    else:
        blocks = r"encoder\.layers\.(\d)\.blocks\.(\d+)\."
        rules = [
            (r"embeddings\.patch_embeddings\.projection\.(.*)", r"patch_embed.proj.\1"),
            (r"embeddings\.norm\.(.*)", r"patch_embed.norm.\1"),
            (
                r"encoder\.layers\.(\d)\.downsample\.(reduction|norm)\.(.*)",
                r"stages.\1.downsample.\2.\3",
            ),
            (r"layernorm\.(weight|bias)", rf"norms.{last}.\1"),
            (r"hidden_states_norms\.stage(\d)\.(weight|bias)", r"norms.\1.\2"),
        ]
        block = [
            (r"layernorm_before\.(.*)", r"norm1.\3"),
            (r"layernorm_after\.(.*)", r"norm2.\3"),
            (r"attention\.(q|k|v)_proj\.(.*)", r"attn.\3.\4"),
            (r"attention\.o_proj\.(.*)", r"attn.proj.\3"),
            (
                r"attention\.relative_position_bias\.relative_position_bias_table",
                r"attn.relative_position_bias_table",
            ),
            (r"mlp\.(fc1|fc2)\.(.*)", r"mlp.\3.\4"),
        ]
        ignore = [
            r"classifier\..*",
            r"pooler\..*",
            r"embeddings\.mask_token",
            r".*relative_position_index",
        ]
    for p, r in block:
        rules.append((blocks + p, r"stages.\1.blocks.\2." + r))
    return rules, ignore


def _unfold_to_official(x: Tensor) -> Tensor:
    """Reorder mmseg's nn.Unfold patch-merging channels (c, row, col) to (col, row, c)."""
    c4 = x.shape[-1]
    lead = x.shape[:-1]
    y = x.reshape(*lead, c4 // 4, 2, 2)  # (..., c, row, col)
    return y.movedim(-3, -1).movedim(-3, -2).reshape(*lead, c4)  # (..., col, row, c)


def convert_swin(state: Mapping[str, Tensor], source: str, num_stages: int = 4) -> Converted:
    """Convert a Swin state dict to gmmseg's :class:`SwinTransformer` names.

    Args:
        state: backbone tensors in the ``source`` layout.
        source: "official", "mmseg", "hf" or "gmmseg".
        num_stages: stages of the target backbone (the final ``norm`` of classification
            checkpoints becomes the last stage's output norm).

    Returns:
        The conversion result; ``new`` lists output norms the source does not contain.

    Raises:
        ValueError: for an unsupported ``source``.
    """
    out = Converted()
    if source == "gmmseg":
        out.state_dict = dict(state)
        return out
    if source not in ("official", "mmseg", "hf"):
        raise ValueError(
            f"source must be 'official', 'mmseg', 'hf' or 'gmmseg' for a Swin backbone, "
            f"got {source!r}"
        )
    if source == "hf":
        state = _normalise_old_names(state, _HF_SWIN_OLD)
        # SwinBackbone names its output norms stage1…stage4 (1-based).
        state = {
            re.sub(
                r"^hidden_states_norms\.stage(\d)\.",
                lambda m: f"hidden_states_norms.stage{int(m.group(1)) - 1}.",
                k,
            ): v
            for k, v in state.items()
        }
    rules, ignore = _swin_rules(source, num_stages)
    if source == "hf" and any(k.startswith("hidden_states_norms.") for k in state):
        ignore.append(r"layernorm\..*")  # SwinBackbone: its output norms replace the final one
    renamed = _apply_rules(state, rules, ignore, out)
    if source == "hf":
        _merge(renamed, ("attn.q", "attn.k", "attn.v"), "attn.qkv")
    if source == "mmseg":
        for key in [k for k in renamed if ".downsample." in k]:
            renamed[key] = _unfold_to_official(renamed[key])
    present = {k.split(".")[1] for k in renamed if k.startswith("norms.")}
    out.new = [
        f"norms.{i}.{p}"
        for i in range(num_stages)
        if str(i) not in present
        for p in ("weight", "bias")
    ]
    out.state_dict = renamed
    return out


def detect_swin_source(keys: list[str]) -> str | None:
    """Guess the layout of a Swin state dict from its keys (None when unknown)."""
    ks = set(keys)
    if "patch_embed.projection.weight" in ks:
        return "mmseg"
    if "embeddings.patch_embeddings.projection.weight" in ks:
        return "hf"
    if any(k.startswith("layers.0.blocks.") for k in ks):
        return "official"
    if any(k.startswith("stages.0.blocks.") for k in ks):
        return "gmmseg"
    return None


# ------------------------------------------------------------------------------------ ResNet

_DEEP_STEM = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


def convert_resnet(state: Mapping[str, Tensor], source: str, deep_stem: bool) -> Converted:
    """Convert a ResNet state dict to gmmseg's :class:`ResNet` names.

    Args:
        state: backbone tensors in the ``source`` layout.
        source: "torchvision", "timm", "mmseg" (mmsegmentation or mmpretrain) or "gmmseg".
        deep_stem: whether the target backbone has the V1c deep stem.

    Returns:
        The conversion result.

    Raises:
        ValueError: for an unsupported ``source``, or a checkpoint whose stem does not fit the
            backbone's (a torchvision 7×7 stem into a V1c backbone, or the reverse).
    """
    out = Converted()
    if source == "gmmseg":
        out.state_dict = dict(state)
        return out
    if source not in ("torchvision", "timm", "mmseg"):
        raise ValueError(
            f"source must be 'torchvision', 'timm', 'mmseg' or 'gmmseg' for a ResNet backbone, "
            f"got {source!r}"
        )
    ckpt_deep = (
        any(k.startswith(("stem.", "conv1.0.", "conv1.1.")) for k in state)
        and "conv1.weight" not in state
    )
    if ckpt_deep != deep_stem:
        have = "a deep 3-conv stem (V1c)" if ckpt_deep else "a single 7×7 stem conv (V1b)"
        want = (
            "resnet50_v1c/resnet101_v1c (deep stem)"
            if deep_stem
            else "resnet50_v1b/resnet101_v1b (7×7 stem)"
        )
        fix = (
            "build resnet50_v1b/resnet101_v1b for this checkpoint, or use a V1c checkpoint "
            "(mmsegmentation's resnet50_v1c, timm's resnet50c)"
            if deep_stem
            else "build resnet50_v1c/resnet101_v1c for this checkpoint"
        )
        raise ValueError(
            f"checkpoint (source={source!r}) has {have} but the backbone is {want}: {fix}"
        )
    body = [(r"(layer[1-4]\..*)", r"\1")]
    if not deep_stem:
        stem = [(r"(conv1|bn1)\.(.*)", r"stem.\1.\2")]
    elif source == "timm":
        stem = [
            (rf"conv1\.{i}\.(.*)", f"stem.{n}.\\1")
            for i, n in zip((0, 1, 3, 4, 6), _DEEP_STEM[:5], strict=True)
        ]
        stem.append((r"bn1\.(.*)", r"stem.bn3.\1"))
    elif source == "mmseg":
        # mmpretrain's ConvModule stem (stem.k.conv / stem.k.bn) first, then mmseg's Sequential.
        stem = [
            (rf"stem\.{i // 2}\.{'conv' if i % 2 == 0 else 'bn'}\.(.*)", f"stem.{n}.\\1")
            for i, n in enumerate(_DEEP_STEM)
        ]
        stem += [
            (rf"stem\.{i}\.(.*)", f"stem.{n}.\\1")
            for i, n in zip((0, 1, 3, 4, 6, 7), _DEEP_STEM, strict=True)
        ]
    else:
        stem = []
    ignore = [r"fc\..*", r"head\..*"]
    out.state_dict = _apply_rules(state, stem + body, ignore, out)
    return out


def detect_resnet_source(keys: list[str]) -> str | None:
    """Guess the layout of a ResNet state dict from its keys (None when unknown)."""
    ks = set(keys)
    if "stem.conv1.weight" in ks:
        return "gmmseg"
    if "stem.0.weight" in ks or "stem.0.conv.weight" in ks:
        return "mmseg"
    if "conv1.0.weight" in ks:
        return "timm"
    if "conv1.weight" in ks:
        return "torchvision"
    return None
