"""Whole-model checkpoint layouts of other projects → gmmseg's :class:`~gmmseg.segmentor.Segmentor`.

Four layouts are understood (names as ``layout=``):

- ``"official"``: the official GMMSeg release (an mmcv 1.x file): mmsegmentation's MiT backbone
  and ``SegformerGMMSegHead`` (SegFormer decoder, embedding projection, feature and logit
  LayerNorms, component means and standard deviations, step counter, memory bank).
- ``"mmseg"``: mmsegmentation 0.x / 1.x model-zoo files: MiT, ResNet-V1c or Swin backbones with a
  ``SegformerHead``, ``DepthwiseSeparableASPPHead`` (DeepLabV3+), ``UPerHead`` or ``FCNHead`` and
  the softmax classifier ``conv_seg``.
- ``"hf"``: Hugging Face ``SegformerForSemanticSegmentation``.
- ``"nvlabs"``: NVlabs SegFormer segmentation files.

:func:`convert_checkpoint` renames a file's tensors to gmmseg's names and describes the model they
come from (:class:`FileModel`); every tensor of the file is either converted or listed with the
reason it is dropped. The backbone is renamed by :mod:`gmmseg.backbones.converters`.
:func:`load_converted` copies a conversion into a model, strictly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from gmmseg.backbones.converters import (
    Converted,
    convert_mit,
    convert_resnet,
    convert_swin,
    detect_mit_source,
    detect_resnet_source,
    detect_swin_source,
)
from gmmseg.backbones.mit import MIT_CONFIGS
from gmmseg.backbones.swin import SWIN_CONFIGS
from gmmseg.segmentor import Segmentor

__all__ = [
    "FOREIGN_LAYOUTS",
    "Conversion",
    "ConversionReport",
    "FileModel",
    "Layout",
    "convert_checkpoint",
    "detect_layout",
    "load_converted",
]

Layout = Literal["auto", "official", "mmseg", "hf", "nvlabs"]
#: The layouts :func:`convert_checkpoint` reads.
FOREIGN_LAYOUTS = ("official", "mmseg", "hf", "nvlabs")

_AUX = "a training-only auxiliary FCN head (mmsegmentation's auxiliary loss)"
_UNUSED_CONV_SEG = (
    "created by mmsegmentation's base decode head and never used by this head "
    "(it classifies with its own layer)"
)
_BUFFER = "a buffer gmmseg recomputes from the architecture"
_MAX_LISTED = 8


# ------------------------------------------------------------------------------- description


@dataclass(frozen=True)
class FileModel:
    """The architecture a whole-model checkpoint describes, read from its tensors' names and shapes.

    Attributes:
        layout: ``"official"``, ``"mmseg"``, ``"hf"`` or ``"nvlabs"``.
        backbone_family: ``"mit"``, ``"resnet"`` or ``"swin"``.
        backbone: the gmmseg backbone name whose widths and depths the file's match
            (``"mit_b2"``, ``"resnet101_v1c"``, ``"swin_base"``), or None for a non-standard one.
        backbone_shape: widths and depths as read, for messages.
        window_size: Swin attention window (None for other backbones).
        decoder: ``"segformer"``, ``"deeplabv3plus"``, ``"upernet"`` or ``"fcn"``.
        decoder_channels: the decoder's width.
        head: ``"gmm"`` or ``"linear"``.
        num_classes: C.
        num_components: M of a GMM head (None for a linear one).
        embed_dim: D of a GMM head (None for a linear one).
        mit_norm: the MiT LayerNorm-epsilon convention the file was trained with (``"mmseg"``,
            ``"hf"``, ``"nvlabs"``; None for other backbones).
        segformer_projection: ``"conv"`` or ``"linear"`` for SegFormer decoders (None otherwise).
        memory_size: K slots per component of a GMM memory bank in the file (None without one).
    """

    layout: str
    backbone_family: str
    backbone: str | None
    backbone_shape: str
    window_size: int | None
    decoder: str
    decoder_channels: int
    head: str
    num_classes: int
    num_components: int | None = None
    embed_dim: int | None = None
    mit_norm: str | None = None
    segformer_projection: str | None = None
    memory_size: int | None = None


@dataclass
class Conversion:
    """A checkpoint's tensors under gmmseg's names.

    Attributes:
        model: what the file describes.
        state: gmmseg state-dict key → tensor (not copied: memory-mapped files stay mapped).
        sources: gmmseg key → the file key it came from (for messages).
        dropped: file key → why it is not loaded.
        unknown: file keys no rule understands (a load refuses them).
        memory: ``{"queue", "queue_ptr"}`` of a GMM memory bank, untouched (never read unless
            loaded), or empty.
    """

    model: FileModel
    state: dict[str, Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    memory: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class ConversionReport:
    """What :func:`load_converted` did.

    Attributes:
        layout: the file's layout.
        loaded: number of model tensors filled from the file.
        dropped: file key → why it was not loaded.
        memory_loaded: whether the GMM memory bank was loaded.
        settings: model settings chosen to fit the file (filled by the caller that chose them,
            e.g. :func:`~gmmseg.recipes.load_trained`): name → value.
    """

    layout: str
    loaded: int
    dropped: dict[str, str]
    memory_loaded: bool = False
    settings: dict[str, object] = field(default_factory=dict)

    def summary(self) -> str:
        """A few human-readable lines: the layout, what was loaded, dropped and chosen."""
        lines = [f"layout {self.layout!r}: {self.loaded} tensors loaded"]
        if self.settings:
            chosen = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
            lines.append(f"  settings taken from the file: {chosen}")
        by_reason: dict[str, list[str]] = {}
        for key, reason in self.dropped.items():
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in by_reason.items():
            lines.append(f"  dropped {_listing(keys)}: {reason}")
        if self.memory_loaded:
            lines.append("  GMM memory bank loaded (training continuation)")
        return "\n".join(lines)


def _listing(keys: list[str]) -> str:
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


# ----------------------------------------------------------------------------------- layouts


def detect_layout(keys: Iterable[str]) -> str:
    """The layout of a whole-model state dict, from its keys.

    Args:
        keys: the file's tensor names (wrappers removed).

    Returns:
        ``"official"``, ``"mmseg"``, ``"hf"`` or ``"nvlabs"``.

    Raises:
        ValueError: the keys fit none of them (the first keys are named).
    """
    ks = list(keys)
    s = set(ks)
    if "decode_head.means" in s and "decode_head.diagonal" in s:
        return "official"
    if any(k.startswith("segformer.") for k in ks) and any(
        k.startswith(("decode_head.linear_c.", "decode_head.linear_projections.")) for k in ks
    ):
        return "hf"
    if "decode_head.linear_pred.weight" in s or "backbone.patch_embed1.proj.weight" in s:
        return "nvlabs"
    if "decode_head.conv_seg.weight" in s and any(k.startswith("backbone.") for k in ks):
        return "mmseg"
    _refuse_gmmseg_state(ks)
    raise ValueError(
        f"unknown checkpoint layout (first keys: {ks[:4]}): not an official GMMSeg, "
        f"mmsegmentation, Hugging Face SegFormer or NVlabs SegFormer segmentation model; "
        f"name the layout if it is one of {list(FOREIGN_LAYOUTS)}"
    )


def _refuse_gmmseg_state(keys: list[str]) -> None:
    """Refuse a gmmseg :class:`Segmentor` state dict.

    That is ``backbone.``, ``decoder.`` and ``classifier.`` tensors only, some ``decoder.``
    and some ``classifier.``; checking every key keeps other files with a top-level
    ``classifier`` out (a Hugging Face ``SegformerForImageClassification`` holds
    ``segformer.*`` and ``classifier.*``; torchvision's segmentation models hold
    ``backbone.*`` and ``classifier.*`` but no ``decoder.*``).
    """
    prefixes = {k.split(".", 1)[0] for k in keys}
    if {"decoder", "classifier"} <= prefixes <= {"backbone", "decoder", "classifier"}:
        raise ValueError(
            "these tensors are a gmmseg state dict, not a whole checkpoint written by gmmseg "
            "(gmmseg train writes iter_*.pt files, which the commands take): load them in "
            "Python with Segmentor.load_state_dict on a model built from the recipe"
        )


def _split(
    tensors: Mapping[str, Tensor], prefix: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    inside = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    rest = {k: v for k, v in tensors.items() if not k.startswith(prefix)}
    return inside, rest


# ----------------------------------------------------------------------------------- backbone


def _describe_backbone(
    family: str, state: Mapping[str, Tensor]
) -> tuple[str | None, str, int | None]:
    """(registry name or None, shape description, window size) of converted backbone tensors."""

    def depths(pattern: str) -> tuple[int, ...]:
        found: dict[int, set[int]] = {}
        for k in state:
            m = re.match(pattern, k)
            if m:
                found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        return tuple(len(found[i]) for i in sorted(found))

    if family == "mit":
        widths = tuple(
            int(state[f"stages.{i}.patch_embed.proj.weight"].shape[0])
            for i in range(4)
            if f"stages.{i}.patch_embed.proj.weight" in state
        )
        ds = depths(r"stages\.(\d+)\.blocks\.(\d+)\.")
        name = next(
            (n for n, c in MIT_CONFIGS.items() if c.embed_dims == widths and c.depths == ds), None
        )
        return name, f"MiT widths {widths}, depths {ds}", None
    if family == "swin":
        dim = int(state["patch_embed.proj.weight"].shape[0])
        ds = depths(r"stages\.(\d+)\.blocks\.(\d+)\.")
        table = next(v for k, v in state.items() if k.endswith("relative_position_bias_table"))
        window = (round(float(table.shape[0]) ** 0.5) + 1) // 2
        name = next(
            (n for n, c in SWIN_CONFIGS.items() if c.embed_dim == dim and c.depths == ds), None
        )
        return name, f"Swin width {dim}, depths {ds}, window {window}", window
    ds = depths(r"layer(\d)\.(\d+)\.")
    width = int(state["layer1.0.conv1.weight"].shape[0]) if "layer1.0.conv1.weight" in state else 0
    deep = "stem.conv2.weight" in state
    known: dict[tuple[int, ...], int] = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}
    depth = known.get(ds)
    name = f"resnet{depth}_{'v1c' if deep else 'v1b'}" if depth and width == 64 else None
    stem = "deep stem" if deep else "7×7 stem"
    return name, f"ResNet blocks {ds}, base width {width}, {stem}", None


def _convert_backbone(
    tensors: Mapping[str, Tensor], prefix: str, source: str, layout: str, *, mit_only: bool = False
) -> tuple[str, Converted]:
    """Family and conversion of the ``prefix``-ed backbone tensors in the ``source`` layout.

    With ``mit_only`` (the SegFormer layouts), another family is refused before conversion.
    """
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    keys = list(state)
    if not keys:
        try:
            guess = f" (its keys look like the {detect_layout(tensors)!r} layout)"
        except ValueError:
            guess = ""
        raise ValueError(
            f"the checkpoint has no backbone tensors under {prefix!r}: it is not a {layout!r} "
            f"file{guess}"
        )
    if detect_mit_source(keys) is not None:
        return "mit", convert_mit(state, source)
    if mit_only:
        found = f"another backbone ({prefix}*, first keys {keys[:3]})"
        if detect_swin_source(keys) is not None:
            found = "a Swin"
        elif detect_resnet_source(keys) is not None:
            found = "a ResNet"
        raise ValueError(f"a {layout!r} SegFormer file must hold a MiT backbone, found {found}")
    if detect_swin_source(keys) is not None:
        return "swin", convert_swin(state, source)
    if detect_resnet_source(keys) is not None:
        deep = any(k.startswith("stem.") for k in keys)
        return "resnet", convert_resnet(state, source, deep_stem=deep)
    raise ValueError(
        f"the checkpoint's backbone ({prefix}*, first keys {keys[:3]}) is not a MiT, Swin or "
        f"ResNet in a layout gmmseg reads"
    )


# ------------------------------------------------------------------------------------ decoders

# mmcv ConvModule parts → gmmseg's ConvNormAct (conv, BN, ReLU) indices.
_CONV_MODULE = [
    (r"depthwise_conv\.", "0."),
    (r"pointwise_conv\.", "1."),
    (r"(^|\.)conv\.(weight|bias)$", r"\g<1>0.\2"),
    (r"(^|\.)bn\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r"\g<1>1.\2"),
]

# mmsegmentation head module names → gmmseg decoder module names (prefix renames).
_MMSEG_DECODER: dict[str, list[tuple[str, str]]] = {
    "segformer": [(r"^convs\.", "projections."), (r"^fusion_conv\.", "fuse.")],
    "deeplabv3plus": [
        (r"^aspp_modules\.", "aspp."),
        (r"^c1_bottleneck\.", "skip."),
        (r"^sep_bottleneck\.", "fuse."),
    ],
    "upernet": [
        (r"^psp_modules\.", "ppm."),
        (r"^bottleneck\.", "ppm_bottleneck."),
        (r"^lateral_convs\.", "laterals."),
    ],
    "fcn": [],
}
_MMSEG_DECODER_KEYS = {
    "segformer": re.compile(r"(convs\.\d+|fusion_conv)\..*"),
    "deeplabv3plus": re.compile(
        r"(image_pool\.1|aspp_modules\.\d+|bottleneck|c1_bottleneck|sep_bottleneck\.\d)\..*"
    ),
    "upernet": re.compile(
        r"(psp_modules\.\d+\.1|bottleneck|lateral_convs\.\d+|fpn_convs\.\d+|fpn_bottleneck)\..*"
    ),
    "fcn": re.compile(r"(convs\.\d+|conv_cat)\..*"),
}


def _mmseg_decoder_kind(head: Mapping[str, Tensor]) -> str:
    ks = set(head)
    if "fusion_conv.conv.weight" in ks:
        return "segformer"
    if "c1_bottleneck.conv.weight" in ks and any(k.startswith("aspp_modules.") for k in ks):
        return "deeplabv3plus"
    if "fpn_bottleneck.conv.weight" in ks and any(k.startswith("psp_modules.") for k in ks):
        return "upernet"
    if _segformer_without_fusion(head):
        raise ValueError(
            "the checkpoint's decode head has SegFormer's per-stage projections (convs.0-3, "
            "each from another input width) but no fusion_conv.*: the file is incomplete or "
            "damaged"
        )
    if "convs.0.conv.weight" in ks or "conv_cat.conv.weight" in ks:
        return "fcn"
    found = sorted({k.split(".")[0] for k in ks})
    raise ValueError(
        f"the checkpoint's decode head (modules {found}) is none of the decoders gmmseg has "
        f"(SegFormer, DeepLabV3+, UPerNet, FCN)"
    )


def _segformer_without_fusion(head: Mapping[str, Tensor]) -> bool:
    """Whether ``head`` is SegFormer's minus ``fusion_conv``.

    That is four ``convs`` whose input widths differ (an FCN's ``convs`` after the first all
    read its own width) and no FCN ``conv_cat``.
    """
    weights = [head.get(f"convs.{i}.conv.weight") for i in range(4)]
    if "conv_cat.conv.weight" in head or any(w is None or w.ndim != 4 for w in weights):
        return False
    return len({int(w.shape[1]) for w in weights[1:] if w is not None}) > 1


def _rename_mmseg_decoder(kind: str, key: str) -> str | None:
    if not _MMSEG_DECODER_KEYS[kind].fullmatch(key):
        return None
    for pattern, repl in _CONV_MODULE:
        key = re.sub(pattern, repl, key)
    for pattern, repl in _MMSEG_DECODER[kind]:
        key = re.sub(pattern, repl, key)
    return key


def _decoder_width(kind: str, state: Mapping[str, Tensor]) -> int:
    key = {
        "segformer": "fuse.0.weight",
        "deeplabv3plus": "bottleneck.0.weight",
        "upernet": "fpn_bottleneck.0.weight",
        "fcn": "convs.0.0.weight",
    }[kind]
    if key not in state and kind == "fcn":
        key = "conv_cat.0.weight"
    return int(state[key].shape[0])


# ------------------------------------------------------------------------------------ convert


def _add(conv: Conversion, target: str, source: str | None, value: Tensor) -> None:
    conv.state[target] = value
    if source is not None:
        conv.sources[target] = source


def _require(head: Mapping[str, Tensor], keys: Iterable[str], layout: str) -> None:
    """Refuse a decode head (``decode_head.*`` without the prefix) that lacks ``keys``."""
    missing = [f"decode_head.{k}" for k in keys if k not in head]
    if missing:
        raise ValueError(
            f"the checkpoint lacks {_listing(missing)}, which every {layout!r} file holds: "
            f"is it a complete segmentation model of that layout?"
        )


def _convert_mmcv(tensors: Mapping[str, Tensor], layout: str) -> Conversion:
    """Official / mmseg files: ``backbone.*`` + ``decode_head.*`` (+ ``auxiliary_head.*``)."""
    family, bb = _convert_backbone(tensors, "backbone.", "mmseg", layout)
    head, rest = _split(tensors, "decode_head.")
    kind = _mmseg_decoder_kind(head)
    if layout == "official" and kind != "segformer":
        raise ValueError(f"an official GMMSeg file with a {kind} decoder is not a known release")
    decoder: dict[str, tuple[str, Tensor]] = {}
    leftovers: dict[str, Tensor] = {}
    for key, value in head.items():
        new = _rename_mmseg_decoder(kind, key)
        if new is None:
            leftovers[key] = value
        else:
            decoder[new] = (f"decode_head.{key}", value)
    width = _decoder_width(kind, {k: v for k, (_, v) in decoder.items()})
    name, shape, window = _describe_backbone(family, bb.state_dict)
    conv = Conversion(model=FileModel(layout, family, name, shape, window, kind, width, "", 0))
    for key, value in bb.state_dict.items():
        _add(conv, f"backbone.{key}", None, value)
    for key in bb.ignored:
        conv.dropped[f"backbone.{key}"] = _BUFFER
    conv.unknown += [f"backbone.{k}" for k in bb.unknown]
    for key, (src, value) in decoder.items():
        _add(conv, f"decoder.{key}", src, value)
    for key in rest:
        if key.startswith("auxiliary_head."):
            conv.dropped[key] = _AUX
        elif not key.startswith("backbone."):
            conv.unknown.append(key)
    if layout == "official":
        _convert_gmm_head(conv, leftovers)
    else:
        _require(leftovers, ["conv_seg.weight", "conv_seg.bias"], layout)
        for key, value in leftovers.items():
            m = re.fullmatch(r"conv_seg\.(weight|bias)", key)
            if m:
                _add(conv, f"classifier.classifier.{m.group(1)}", f"decode_head.{key}", value)
            else:
                conv.unknown.append(f"decode_head.{key}")
        c = int(leftovers["conv_seg.weight"].shape[0])
        conv.model = _with(conv.model, head="linear", num_classes=c)
    if family == "mit":
        conv.model = _with(conv.model, mit_norm="mmseg")
    if kind == "segformer":
        conv.model = _with(conv.model, segformer_projection="conv")
    return conv


def _with(model: FileModel, **changes: object) -> FileModel:
    import dataclasses

    return dataclasses.replace(model, **changes)  # type: ignore[arg-type]


_GMM_KEYS = {
    "projection.conv.weight": "classifier.projection.0.weight",
    "feat_norm.weight": "classifier.feature_norm.weight",
    "feat_norm.bias": "classifier.feature_norm.bias",
    "mask_norm.weight": "classifier.logit_norm.weight",
    "mask_norm.bias": "classifier.logit_norm.bias",
    "means": "classifier.means",
    "diagonal": "classifier.scales",
}


def _convert_gmm_head(conv: Conversion, head: Mapping[str, Tensor]) -> None:
    """The official ``GMMSegHead`` state → ``classifier.*`` (and the bank, kept aside)."""
    _require(head, ["means", "diagonal", "feat_norm.weight", "mask_norm.weight"], "official")
    for key, value in head.items():
        src = f"decode_head.{key}"
        m = re.fullmatch(r"projection\.bn\.(.*)", key)
        if key in _GMM_KEYS:
            _add(conv, _GMM_KEYS[key], src, value)
        elif m:
            _add(conv, f"classifier.projection.1.{m.group(1)}", src, value)
        elif key == "iteration_counter":
            _add(conv, "classifier.step", src, value)
        elif key in ("queue", "queue_ptr"):
            conv.memory[key] = value
        elif key == "eye_matrix":
            if not bool((value == 1).all()):
                raise ValueError(
                    "decode_head.eye_matrix is not all ones: this file's variance floor is not "
                    "a constant, which gmmseg's GMM head cannot represent"
                )
            conv.dropped[src] = "all ones: the carrier of the 0.01 variance floor (no information)"
        elif key.startswith("conv_seg."):
            conv.dropped[src] = _UNUSED_CONV_SEG
        else:
            conv.unknown.append(src)
    shape = head["means"].shape
    queue = head.get("queue")
    conv.model = _with(
        conv.model,
        head="gmm",
        num_classes=int(shape[0]),
        num_components=int(shape[1]),
        embed_dim=int(shape[2]),
        memory_size=int(queue.shape[-1]) if queue is not None else None,
    )


def _convert_linear_segformer(tensors: Mapping[str, Tensor], layout: str) -> Conversion:
    """Hugging Face / NVlabs files: MiT + SegFormer decoder with per-stage Linear projections."""
    if layout == "hf":
        family, bb = _convert_backbone(tensors, "segformer.", "hf", layout, mit_only=True)
        head, rest = _split(tensors, "decode_head.")
        rules = [
            (
                r"linear_(?:c|projections)\.(\d)\.proj\.(weight|bias)",
                r"decoder.projections.\1.proj.\2",
            ),
            (r"linear_fuse\.weight", "decoder.fuse.0.weight"),
            (r"batch_norm\.(.*)", r"decoder.fuse.1.\1"),
            (r"classifier\.(weight|bias)", r"classifier.classifier.\1"),
        ]
        prefix, classifier = "segformer.", "classifier.weight"
    else:
        # The backbone converters' source "official" is NVlabs' SegFormer release (the MiT's
        # original code), not the GMMSeg release that this module's layout "official" names.
        family, bb = _convert_backbone(tensors, "backbone.", "official", layout, mit_only=True)
        head, rest = _split(tensors, "decode_head.")
        head = {
            re.sub(r"^linear_c(\d)\.", lambda m: f"linear_c.{int(m.group(1)) - 1}.", k): v
            for k, v in head.items()
        }
        rules = [
            (r"linear_c\.(\d)\.proj\.(weight|bias)", r"decoder.projections.\1.proj.\2"),
            (r"linear_fuse\.conv\.weight", "decoder.fuse.0.weight"),
            (r"linear_fuse\.bn\.(.*)", r"decoder.fuse.1.\1"),
            (r"linear_pred\.(weight|bias)", r"classifier.classifier.\1"),
        ]
        prefix, classifier = "backbone.", "linear_pred.weight"
    _require(head, [classifier], layout)
    name, shape, _ = _describe_backbone(family, bb.state_dict)
    fuse = "linear_fuse.weight" if layout == "hf" else "linear_fuse.conv.weight"
    _require(head, [fuse], layout)
    conv = Conversion(
        model=FileModel(
            layout,
            family,
            name,
            shape,
            None,
            "segformer",
            int(head[fuse].shape[0]),
            "linear",
            int(head[classifier].shape[0]),
            mit_norm="hf" if layout == "hf" else "nvlabs",
            segformer_projection="linear",
        )
    )
    for key, value in bb.state_dict.items():
        _add(conv, f"backbone.{key}", None, value)
    for key in bb.ignored:
        conv.dropped[f"{prefix}{key}"] = _BUFFER
    conv.unknown += [f"{prefix}{k}" for k in bb.unknown]
    compiled = [(re.compile(p), r) for p, r in rules]
    for key, value in head.items():
        src = f"decode_head.{key}"
        for pattern, repl in compiled:
            m = pattern.fullmatch(key)
            if m:
                _add(conv, m.expand(repl), src, value)
                break
        else:
            if key.startswith("conv_seg.") and layout == "nvlabs":
                conv.dropped[src] = _UNUSED_CONV_SEG
            else:
                conv.unknown.append(src)
    for key in rest:
        if not key.startswith(prefix):
            conv.unknown.append(key)
    return conv


def convert_checkpoint(tensors: Mapping[str, Tensor], layout: Layout = "auto") -> Conversion:
    """Rename a whole-model checkpoint's tensors to gmmseg's names.

    Args:
        tensors: the file's state dict (:attr:`~gmmseg.interop.CheckpointFile.tensors`).
        layout: one of :data:`FOREIGN_LAYOUTS`, or ``"auto"`` to detect it from the keys.

    Returns:
        The :class:`Conversion` (tensors are not copied).

    Raises:
        ValueError: an unknown layout, a backbone or decoder gmmseg does not have, or tensors
            every file of the layout holds are missing.
    """
    if layout not in ("auto", *FOREIGN_LAYOUTS):
        raise ValueError(f"layout must be 'auto' or one of {list(FOREIGN_LAYOUTS)}, got {layout!r}")
    _refuse_gmmseg_state(list(tensors))  # also when a layout is named
    found = detect_layout(tensors) if layout == "auto" else layout
    if found in ("official", "mmseg"):
        return _convert_mmcv(tensors, found)
    return _convert_linear_segformer(tensors, found)


# ---------------------------------------------------------------------------------------- load

_DATASETS_BY_CLASSES = {19: "cityscapes", 150: "ade20k", 171: "coco_stuff10k"}


def _classes_fix(c: int) -> str:
    dataset = _DATASETS_BY_CLASSES.get(c)
    if dataset is None:
        return f"the file has {c} classes, which no gmmseg dataset has"
    return f"the file has {c} classes: use --set data.dataset={dataset}"


def _shape_fix(
    key: str, have: tuple[int, ...], want: tuple[int, ...], file: FileModel, model: Segmentor
) -> str:
    """The recipe setting that makes the model's ``key`` take the file's shape, in words."""
    differs = [i for i, (a, b) in enumerate(zip(have, want, strict=False)) if a != b]
    if len(have) != len(want) or not differs:
        return "the model's architecture differs from the file's"
    first = differs[0]
    if key.startswith("classifier."):
        part = key.removeprefix("classifier.")
        if part in ("means", "scales"):  # (C, M, D)
            setting = {
                0: _classes_fix(have[0]),
                1: f"the file has {have[1]} components per class: use --set "
                f"model.gmm.num_components={have[1]}",
                2: f"the file's embedding width is {have[2]}: use --set "
                f"model.gmm.embed_dim={have[2]}",
            }
            return setting[first]
        if part.startswith(("classifier.", "logit_norm.")) and first == 0:
            return _classes_fix(have[0])
        if part.startswith(("projection.", "feature_norm.")) and first == 0:
            return (
                f"the file's embedding width is {have[0]}: use --set model.gmm.embed_dim={have[0]}"
            )
        if part.startswith(("classifier.", "projection.0.")) and first == 1:
            return (
                f"the file's decoder width is {have[1]}: use --set model.decoder_channels={have[1]}"
            )
    width = int(getattr(model.decoder, "out_channels", file.decoder_channels))
    if key.startswith("decoder.") and width != file.decoder_channels:
        return (
            f"the file's decoder width is {file.decoder_channels}: use --set "
            f"model.decoder_channels={file.decoder_channels}"
        )
    if key.endswith("relative_position_bias_table") and file.window_size is not None:
        return (
            f"the file's Swin window is {file.window_size}: use --set "
            f"model.window_size={file.window_size}"
        )
    if key.startswith("backbone.") and file.backbone is not None:
        return (
            f"the file holds a {file.backbone} backbone ({file.backbone_shape}): use --set "
            f"model.backbone={file.backbone}"
        )
    return "the model's architecture differs from the file's, and no recipe setting changes this"


def _structure_hint(key: str, file: FileModel) -> str:
    """A clause for a tensor the model lacks or the file does not fill."""
    if key.startswith("decoder.") and file.decoder == "fcn":
        return (
            " (gmmseg's FCN recipes build FCNHead with 2 convolutions and concat_input; a file "
            "with another structure loads only into an FCNDecoder built to match it)"
        )
    if key.startswith("backbone.") and file.backbone is not None:
        name = file.backbone
        return f" (the file holds a {name} backbone: use --set model.backbone={name})"
    return ""


def _optional(key: str) -> bool:
    """Model tensors a file need not fill: BatchNorm counters (unused in evaluation)."""
    return key.endswith("num_batches_tracked")


def load_converted(
    model: Segmentor, conversion: Conversion, *, memory: bool = False
) -> ConversionReport:
    """Copy a :class:`Conversion` into ``model``, strictly.

    Every tensor of the model is filled (BatchNorm counters excepted; the GMM memory bank only
    with ``memory``), every converted tensor must fit its place, and unknown file tensors are
    refused. Values are cast to the model's dtypes.

    Args:
        model: a model of the file's architecture.
        conversion: the result of :func:`convert_checkpoint`.
        memory: load the GMM memory bank (``queue``, ``queue_ptr``) too, to continue training;
            the model's memory must have the file's size. Without it, the bank is never read.

    Returns:
        The :class:`ConversionReport`.

    Raises:
        ValueError: unknown file tensors, a tensor without a place or of another shape (naming
            both keys and shapes), model tensors the file does not fill, or ``memory`` without a
            bank in the file.
    """
    if conversion.unknown:
        raise ValueError(
            f"{len(conversion.unknown)} tensors of the checkpoint have no place in a gmmseg "
            f"model: {_listing(conversion.unknown)}"
        )
    target = model.state_dict()
    classifier = model.classifier
    memory_keys = {k for k in target if k.startswith("classifier.memory.")}
    to_load: dict[str, Tensor] = {}
    for key, value in conversion.state.items():
        src = conversion.sources.get(key, f"(backbone, as {key})")
        if key == "classifier.step" and key in target:
            value = torch.tensor(int(value.reshape(-1)[0].item()), dtype=torch.int64)
        if key not in target:
            raise ValueError(
                f"checkpoint tensor {src!r} (gmmseg name {key!r}, shape {tuple(value.shape)}) "
                f"has no place in the model: the model's architecture differs from the file's"
                f"{_structure_hint(key, conversion.model)}"
            )
        if tuple(value.shape) != tuple(target[key].shape):
            have, want = tuple(value.shape), tuple(target[key].shape)
            raise ValueError(
                f"checkpoint tensor {src!r} has shape {have}, the model's {key!r} has {want}: "
                f"{_shape_fix(key, have, want, conversion.model, model)}"
            )
        to_load[key] = value
    dropped = dict(conversion.dropped)
    memory_loaded = False
    if conversion.memory:
        if memory:
            bank = classifier.memory_bank
            if bank is None:
                raise ValueError(
                    "memory=True needs a GMM classifier with a ring memory "
                    "(set model.gmm.memory=ring)"
                )
            bank.load_original(conversion.memory["queue"], conversion.memory["queue_ptr"])
            memory_loaded = True
        else:
            for key in conversion.memory:
                dropped[f"decode_head.{key}"] = (
                    "the GMM memory bank, needed only to continue training (not read)"
                )
    elif memory:
        raise ValueError("memory=True, but the checkpoint holds no GMM memory bank")
    missing = [k for k in target if k not in to_load and not _optional(k) and k not in memory_keys]
    if missing:
        raise ValueError(
            f"the checkpoint does not fill {len(missing)} tensors of the model: "
            f"{_listing(missing)}{_structure_hint(missing[0], conversion.model)}"
        )
    result = model.load_state_dict(to_load, strict=False)
    assert not result.unexpected_keys
    return ConversionReport(conversion.model.layout, len(to_load), dropped, memory_loaded)
