"""Optimisers with parameter groups, and the poly learning-rate schedule with linear warm-up."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["PolyWarmup", "build_optimizer", "parameter_groups"]

OptimizerName = Literal["adamw", "sgd"]

#: Parameter-name fragments that never get weight decay (as in SegFormer's and Swin's configs).
NO_DECAY_KEYWORDS: tuple[str, ...] = (
    "norm",
    "pos_block",
    "absolute_pos_embed",
    "relative_position_bias_table",
)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    head_lr_mult: float = 1.0,
    head_prefixes: Sequence[str] = ("decoder.", "classifier."),
    no_decay_keywords: Iterable[str] = NO_DECAY_KEYWORDS,
) -> list[dict[str, Any]]:
    """Split trainable parameters into (head or not) × (decayed or not) groups.

    A parameter gets no weight decay when it belongs to a normalisation layer (BatchNorm,
    GroupNorm, LayerNorm), is a 1-d bias of one, or its name contains one of
    ``no_decay_keywords``. Parameters whose name starts with one of ``head_prefixes`` get the
    learning rate multiplied by ``head_lr_mult`` (the decode head's ``lr_mult=10`` of SegFormer).
    Frozen parameters (``requires_grad=False``) are left out.

    Args:
        model: the network (e.g. a :class:`~gmmseg.segmentor.Segmentor`).
        weight_decay: decay of the decayed groups.
        head_lr_mult: learning-rate multiplier of the head groups.
        head_prefixes: name prefixes of head parameters.
        no_decay_keywords: name fragments of parameters without decay.

    Returns:
        Up to four non-empty groups, each ``{"params", "weight_decay", "lr_mult", "name"}``.
    """
    keywords = tuple(no_decay_keywords)
    norm_params: set[int] = set()
    for module in model.modules():
        if _is_norm(module):
            norm_params.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = name.startswith(tuple(head_prefixes))
        no_decay = id(p) in norm_params or any(k in name for k in keywords)
        groups.setdefault((head, no_decay), []).append(p)
    out = []
    for (head, no_decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_mult": head_lr_mult if head else 1.0,
                "name": f"{'head' if head else 'body'}{'_no_decay' if no_decay else ''}",
            }
        )
    return out


def build_optimizer(
    model: nn.Module,
    name: OptimizerName,
    lr: float,
    weight_decay: float,
    *,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    head_lr_mult: float = 1.0,
) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`parameter_groups`; each group's ``initial_lr`` is lr × lr_mult.

    Args:
        model: the network.
        name: ``"adamw"`` or ``"sgd"``.
        lr: base learning rate.
        weight_decay: decay of the decayed groups.
        momentum: SGD momentum.
        betas: AdamW betas.
        head_lr_mult: learning-rate multiplier of decoder and classifier.

    Returns:
        The optimiser.

    Raises:
        ValueError: unknown ``name``, non-positive ``lr``, negative ``weight_decay``, or a model
            without trainable parameters.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    groups = parameter_groups(model, weight_decay, head_lr_mult)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
        g["initial_lr"] = g["lr"]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer name must be 'adamw' or 'sgd', got {name!r}")


class PolyWarmup:
    """mmsegmentation's poly schedule with linear warm-up, as a learning-rate factor.

    At iteration t (0-based, the number of steps already taken) the regular factor is
    ``(1 - min_lr_ratio) · (1 - t / max_iters) ** power + min_lr_ratio``; during the first
    ``warmup_iters`` iterations it is multiplied by
    ``1 - (1 - t / warmup_iters) · (1 - warmup_ratio)``. Apply it to an optimiser with
    :meth:`apply` (every group gets ``initial_lr · factor``).

    Args:
        max_iters: length of the schedule.
        power: poly exponent (1.0 for SegFormer/Swin, 0.9 for DeepLabV3+).
        min_lr_ratio: final learning rate relative to the initial one.
        warmup_iters: warm-up length (0: none).
        warmup_ratio: factor at iteration 0 of the warm-up.

    Example:
        >>> sched = PolyWarmup(max_iters=100, power=1.0, warmup_iters=10, warmup_ratio=0.1)
        >>> round(sched.factor(0), 3), round(sched.factor(10), 3), sched.factor(100)
        (0.1, 0.9, 0.0)
    """

    def __init__(
        self,
        max_iters: int,
        power: float = 1.0,
        min_lr_ratio: float = 0.0,
        warmup_iters: int = 0,
        warmup_ratio: float = 1e-6,
    ) -> None:
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        if not power >= 0:
            raise ValueError(f"power must be >= 0, got {power}")
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        if not 0 <= warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
        self.max_iters = max_iters
        self.power = power
        self.min_lr_ratio = min_lr_ratio
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio

    def factor(self, iteration: int) -> float:
        """Learning-rate factor at ``iteration`` (clamped to ``[0, max_iters]``)."""
        t = min(max(iteration, 0), self.max_iters)
        f = (1.0 - self.min_lr_ratio) * float((1.0 - t / self.max_iters) ** self.power)
        f += self.min_lr_ratio
        if t < self.warmup_iters:
            f *= 1.0 - (1.0 - t / self.warmup_iters) * (1.0 - self.warmup_ratio)
        return f

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set every group's ``lr`` to ``initial_lr · factor(iteration)``; returns the factor.

        A group without ``initial_lr`` gets its current ``lr`` as ``initial_lr`` first (as torch's
        schedulers do), so repeated calls never compound.
        """
        f = self.factor(iteration)
        for g in optimizer.param_groups:
            g["lr"] = float(g.setdefault("initial_lr", g["lr"])) * f
        return float(f)
