"""Check a whole recipe before anything runs: one line per mistake, naming the field.

:func:`check_recipe` is what ``gmmseg train`` (dry runs included), ``eval`` and ``anomaly`` call
first. It checks every number against its range, the inference mode against its settings, the
run's name (it becomes a folder name), and builds the recipe's real model on PyTorch's ``meta``
device (no memory, no weights) so that widths the modules refuse are refused here too. With
``training=True`` the pretrained backbone file must exist.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from gmmseg.recipes.build import build_model, num_classes_of
from gmmseg.recipes.schema import Recipe

__all__ = ["check_recipe"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _positive(field: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{field} must be > 0, got {value!r}")


def _non_negative(field: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{field} must be >= 0, got {value!r}")


def _pair(field: str, value: tuple[int, int] | None, *, optional: bool = False) -> None:
    if value is None:
        if optional:
            return
        raise ValueError(f"{field} must be set (h, w), got None")
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f"{field} must be two integers > 0, got {value!r}")


def check_recipe(recipe: Recipe, *, training: bool = False) -> None:
    """Refuse a recipe that cannot run, with one line naming the field.

    Args:
        recipe: the (overridden) recipe.
        training: also check what only training needs (the pretrained backbone file).

    Raises:
        ValueError: the first invalid field: its ``--set`` name, what was expected and what came.
        FileNotFoundError: ``training`` and ``model.pretrained`` names a missing file.
    """
    if not _NAME.match(recipe.name) or ".." in recipe.name:
        raise ValueError(
            f"name must be letters, digits, '_', '-', '.', '+' (it names the work folder), "
            f"got {recipe.name!r}"
        )
    d, t, o, e = recipe.data, recipe.train, recipe.optim, recipe.eval
    for field, value in (
        ("data.batch_size", d.batch_size),
        ("data.demo_size", d.demo_size),
        ("data.demo_train_images", d.demo_train_images),
        ("data.demo_val_images", d.demo_val_images),
        ("train.iters", t.iters),
        ("optim.lr", o.lr),
        ("optim.power", o.power),
        ("optim.warmup_ratio", o.warmup_ratio),
    ):
        _positive(field, value)
    for field, value in (
        ("data.num_workers", d.num_workers),
        ("train.log_interval", t.log_interval),
        ("train.eval_interval", t.eval_interval),
        ("train.checkpoint_interval", t.checkpoint_interval),
        ("optim.weight_decay", o.weight_decay),
        ("optim.warmup_iters", o.warmup_iters),
        ("optim.min_lr_ratio", o.min_lr_ratio),
        ("model.dropout", recipe.model.dropout),
    ):
        _non_negative(field, value)
    if not isinstance(d.batch_size, int):
        raise ValueError(f"data.batch_size must be an integer, got {d.batch_size!r}")
    _pair("data.crop_size", d.crop_size)
    _pair("data.scale", d.scale)
    _pair("data.test_scale", d.test_scale, optional=True)
    lo, hi = d.ratio_range
    if not 0 < lo <= hi:
        raise ValueError(
            f"data.ratio_range must be (low, high) with 0 < low <= high, got {d.ratio_range}"
        )
    if not 0 < d.cat_max_ratio <= 1:
        raise ValueError(f"data.cat_max_ratio must be in (0, 1], got {d.cat_max_ratio!r}")
    if not 0 <= recipe.model.dropout < 1:
        raise ValueError(f"model.dropout must be in [0, 1), got {recipe.model.dropout!r}")
    if o.grad_clip is not None:
        _positive("optim.grad_clip", o.grad_clip)
    if e.mode not in ("whole", "slide"):
        raise ValueError(f"eval.mode must be 'whole' or 'slide', got {e.mode!r}")
    if e.mode == "slide":
        if e.crop_size is None or e.stride is None:
            raise ValueError(
                "eval.mode=slide needs eval.crop_size and eval.stride, e.g. "
                "--set eval.crop_size=768,768 eval.stride=512,512"
            )
        _pair("eval.crop_size", e.crop_size)
        _pair("eval.stride", e.stride)
    if not e.scales or not all(s > 0 for s in e.scales):
        raise ValueError(f"eval.scales must be one or more factors > 0, got {e.scales!r}")
    num_classes = num_classes_of(recipe.data)  # data.classes / data.class_file of a folder
    model = dataclasses.replace(recipe.model, pretrained="")
    with torch.device("meta"):
        try:
            build_model(model, num_classes)
        except (ValueError, TypeError) as err:
            text = str(err)
            raise ValueError(text if text.startswith("model.") else f"model: {text}") from err
    if training and recipe.model.pretrained:
        path = Path(recipe.model.pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"model.pretrained: the backbone checkpoint {str(path)!r} does not exist (pass "
                "--set model.pretrained=/path/to/file, or model.pretrained= to train from scratch)"
            )
