"""Loading pretrained checkpoints into gmmseg's backbones.

:func:`load_pretrained` reads a ``.pth``/``.pt``/``.bin`` (``torch.load``) or ``.safetensors`` file,
unwraps the usual containers (``state_dict``, ``model``, ``module``, DDP's ``module.`` prefix),
keeps the backbone's tensors (``backbone.`` in mmsegmentation/mmpretrain checkpoints,
``segformer.``/``swin.`` in Hugging Face ones), converts their names with
:mod:`gmmseg.backbones.converters` and copies them into the backbone. By default it is strict:
any backbone tensor missing from the checkpoint, or any checkpoint tensor it cannot place, raises.
A tensor whose shape differs from the backbone's always raises, naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from gmmseg.backbones.converters import (
    Converted,
    convert_mit,
    convert_resnet,
    convert_swin,
    detect_mit_source,
    detect_resnet_source,
    detect_swin_source,
)
from gmmseg.backbones.mit import MixVisionTransformer
from gmmseg.backbones.resnet import DeepStem, ResNet
from gmmseg.backbones.swin import SwinTransformer

__all__ = ["LoadReport", "Source", "load_pretrained", "read_state_dict"]

Source = Literal["auto", "gmmseg", "official", "mmseg", "hf", "torchvision", "timm"]
_SOURCES = ("auto", "gmmseg", "official", "mmseg", "hf", "torchvision", "timm")
_WRAPPERS = ("state_dict", "model", "module", "model_state_dict", "model_ema")
_BACKBONE_PREFIXES = ("backbone.", "segformer.", "swin.")
_MAX_LISTED = 10


class LoadReport(NamedTuple):
    """What :func:`load_pretrained` did.

    Attributes:
        source: the layout used (the detected one when ``source="auto"``).
        missing_keys: backbone tensors the checkpoint did not provide (left unchanged).
        unexpected_keys: checkpoint tensors that could not be placed (source names).
        ignored_keys: checkpoint tensors dropped on purpose: other parts of a model (heads,
            decoders) and buffers gmmseg recomputes (``relative_position_index``, ``attn_mask``).
        new_keys: backbone tensors the source layout cannot contain (e.g. the output norms of
            Swin stages 1–3 when loading a classification checkpoint); left at initialisation.
    """

    source: str
    missing_keys: list[str]
    unexpected_keys: list[str]
    ignored_keys: list[str]
    new_keys: list[str]


def read_state_dict(path: str | os.PathLike[str], weights_only: bool = True) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``name -> tensor`` dict.

    Args:
        path: ``.safetensors`` (needs the ``safetensors`` package) or anything ``torch.load``
            reads (``.pth``, ``.pt``, ``.bin``, ``.ckpt``).
        weights_only: passed to ``torch.load``; set False only for a file you trust whose
            metadata holds arbitrary Python objects.

    Returns:
        The unwrapped state dict (CPU tensors).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file does not hold a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {str(p)!r}")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"reading {str(p)!r} needs the 'safetensors' package: pip install safetensors"
            ) from err
        return dict(load_file(str(p), device="cpu"))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=weights_only)
    except Exception as err:
        if not weights_only:
            raise
        raise ValueError(
            f"torch.load(weights_only=True) could not read {str(p)!r} ({err}); if you trust the "
            f"file, pass weights_only=False"
        ) from err
    return unwrap_state_dict(obj, name=str(p))


def unwrap_state_dict(obj: object, name: str = "state_dict") -> dict[str, Tensor]:
    """Descend ``state_dict``/``model``/``module`` wrappers and drop DDP's ``module.`` prefix.

    Args:
        obj: a loaded checkpoint object.
        name: how to name ``obj`` in errors.

    Returns:
        The flat dict of tensors (non-tensor entries are dropped).

    Raises:
        ValueError: if no mapping of tensors is found.
    """
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{name} does not contain a state dict (a mapping of names to tensors)")
    out = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _select_backbone(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Keep the backbone's tensors of a whole-model checkpoint; return them and the dropped keys."""
    for prefix in _BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            kept = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            dropped = [k for k in state if not k.startswith(prefix)]
            if prefix == "swin.":
                # SwinBackbone keeps its output norms outside the ``swin.`` module.
                kept.update({k: state[k] for k in dropped if k.startswith("hidden_states_norms.")})
                dropped = [k for k in dropped if not k.startswith("hidden_states_norms.")]
            return kept, dropped
    return dict(state), []


def _convert(backbone: nn.Module, state: dict[str, Tensor], source: str) -> tuple[Converted, str]:
    keys = list(state)
    if isinstance(backbone, MixVisionTransformer):
        src = detect_mit_source(keys) if source == "auto" else source
        family = "MiT"
        if src is not None:
            return convert_mit(state, src), src
    elif isinstance(backbone, SwinTransformer):
        src = detect_swin_source(keys) if source == "auto" else source
        family = "Swin"
        if src is not None:
            return convert_swin(state, src, len(backbone.stages)), src
    elif isinstance(backbone, ResNet):
        src = detect_resnet_source(keys) if source == "auto" else source
        family = "ResNet"
        if src is not None:
            return convert_resnet(state, src, isinstance(backbone.stem, DeepStem)), src
    else:
        if source not in ("auto", "gmmseg"):
            raise ValueError(
                f"source={source!r} is only defined for gmmseg's MiT, Swin and ResNet backbones, "
                f"got a {type(backbone).__name__}; use source='gmmseg'"
            )
        return Converted(state_dict=dict(state)), "gmmseg"
    raise ValueError(
        f"could not recognise the key layout of this {family} checkpoint (first keys: "
        f"{keys[:5]}); pass source= one of {list(_SOURCES[1:])}"
    )


def _listing(keys: list[str]) -> str:
    more = f" … and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def load_pretrained(
    backbone: nn.Module,
    checkpoint: str | os.PathLike[str] | Mapping[str, Tensor],
    source: Source = "auto",
    strict: bool = True,
    weights_only: bool = True,
) -> LoadReport:
    """Load a pretrained checkpoint into a backbone, converting its key layout.

    Args:
        backbone: a gmmseg backbone (MiT, Swin, ResNet) or any module for ``source="gmmseg"``.
        checkpoint: path to a checkpoint file, or an already loaded state dict.
        source: the checkpoint's layout: "official" (SegFormer MiT ``.pth``, Swin ``.pth``),
            "mmseg" (mmsegmentation / mmpretrain), "hf" (Hugging Face ``transformers``),
            "torchvision", "timm", "gmmseg", or "auto" to detect it from the keys.
        strict: raise when a backbone tensor is missing from the checkpoint or a checkpoint
            tensor cannot be placed. ``num_batches_tracked`` counters are never required.
        weights_only: passed to ``torch.load`` when ``checkpoint`` is a path.

    Returns:
        A :class:`LoadReport` of missing, unexpected, ignored and new keys.

    Raises:
        FileNotFoundError: if the checkpoint file does not exist.
        ValueError: for an unknown ``source``, an unrecognised layout, a stem that does not fit
            (ResNet), a tensor whose shape differs from the backbone's (naming the key), or, with
            ``strict``, missing or unexpected keys.

    Example:
        ```python
        net = mit_b0()
        report = load_pretrained(net, "mit_b0.pth", source="official")
        assert not report.missing_keys and not report.unexpected_keys
        ```
    """
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {list(_SOURCES)}, got {source!r}")
    if isinstance(checkpoint, Mapping):
        raw = unwrap_state_dict(checkpoint)
    else:
        raw = read_state_dict(checkpoint, weights_only=weights_only)
    state, dropped = _select_backbone(raw)
    converted, used = _convert(backbone, state, source)
    target = backbone.state_dict()
    new = [k for k in converted.new if k in target]
    ignored = dropped + converted.ignored
    unexpected = list(converted.unknown)
    to_load: dict[str, Tensor] = {}
    for key, value in converted.state_dict.items():
        if key not in target:
            (ignored if _is_counter(key) else unexpected).append(key)
            continue
        if tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(
                f"checkpoint tensor for {key!r} has shape {tuple(value.shape)}, the backbone "
                f"expects {tuple(target[key].shape)} (source={used!r}); is it the same variant "
                f"(depth, width, window size)?"
            )
        to_load[key] = value
    missing = [k for k in target if k not in to_load and k not in new and not _is_counter(k)]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        raise ValueError(
            f"checkpoint does not match the {type(backbone).__name__} (source={used!r}): "
            + "; ".join(parts)
            + ". Pass strict=False to load the matching tensors anyway."
        )
    backbone.load_state_dict(to_load, strict=False)
    return LoadReport(used, missing, unexpected, ignored, new)
