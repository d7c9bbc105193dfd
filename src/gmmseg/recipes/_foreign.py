"""Fitting a recipe to a checkpoint made by another project (used by ``load_trained``).

Settings only a file can tell (the MiT LayerNorm-epsilon convention, the SegFormer projection
form, the decoder width, the Swin window) follow the file. Choices that define the model (backbone,
decoder, classifier, classes, GMM components and embedding width) must match the recipe; a
mismatch is refused with the ``--set`` override that fixes it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gmmseg.interop import FileModel
from gmmseg.recipes.build import num_classes_of
from gmmseg.recipes.catalog import RECIPES
from gmmseg.recipes.schema import Recipe

__all__ = ["fit_recipe", "matching_recipes"]

_DATASETS_BY_CLASSES = {19: "cityscapes", 150: "ade20k", 171: "coco_stuff10k"}


def _family(backbone: str) -> str:
    return "mit" if backbone.startswith("mit_") else backbone.split("_")[0].rstrip("0123456789")


def matching_recipes(model: FileModel) -> list[str]:
    """Names of catalogue recipes whose backbone, decoder, classifier and classes fit ``model``."""
    return [
        r.name
        for r in RECIPES.values()
        if r.model.backbone == model.backbone
        and r.model.decoder == model.decoder
        and r.model.head == model.head
        and num_classes_of(r.data) == model.num_classes
    ]


def fit_recipe(
    recipe: Recipe, model: FileModel, *, tiny: bool = False
) -> tuple[Recipe, dict[str, Any]]:
    """The recipe with the file's architecture settings, after checking that the two agree.

    Args:
        recipe: the recipe named by the user (with overrides).
        model: what the checkpoint describes.
        tiny: the recipe is built as its miniature (widths are the miniature's; the backbone
            variant and the embedding width are not compared).

    Returns:
        The adjusted recipe, and the settings changed (``"model.<field>" -> value``).

    Raises:
        ValueError: a backbone, decoder, classifier, class count or GMM size that differs, with
            the override that fixes it.
    """
    m = recipe.model
    name = recipe.name
    family_ok = _family(m.backbone) == model.backbone_family
    if not family_ok or (not tiny and m.backbone != model.backbone):
        if model.backbone is None and not tiny:
            raise ValueError(
                f"the checkpoint's backbone ({model.backbone_shape}) is none of gmmseg's "
                f"backbones, so no recipe can build it"
            )
        names = {"mit": "MiT", "resnet": "ResNet", "swin": "Swin"}
        fix = model.backbone or f"<a {names[model.backbone_family]} backbone>"
        raise ValueError(
            f"the checkpoint holds a {model.backbone or names[model.backbone_family]} backbone "
            f"({model.backbone_shape}), recipe {name!r} builds {m.backbone}: use --set "
            f"model.backbone={fix}"
        )
    if m.decoder != model.decoder:
        raise ValueError(
            f"the checkpoint holds a {model.decoder} decoder, recipe {name!r} builds "
            f"{m.decoder}: use --set model.decoder={model.decoder}"
        )
    if m.head != model.head:
        kind = {"gmm": "GMM", "linear": "softmax (linear)"}
        twin = f"its twin {recipe.twin!r} or " if recipe.twin else ""
        raise ValueError(
            f"the checkpoint holds a {kind[model.head]} classifier, recipe {name!r} a "
            f"{kind[m.head]} one: use {twin}--set model.head={model.head}"
        )
    classes = num_classes_of(recipe.data)
    if classes != model.num_classes:
        dataset = _DATASETS_BY_CLASSES.get(model.num_classes)
        fix = (
            f"use --set data.dataset={dataset}"
            if dataset
            else "no gmmseg dataset has that many classes"
        )
        raise ValueError(
            f"{model.num_classes} classes in the checkpoint, recipe {name!r} has {classes} "
            f"(dataset {recipe.data.dataset}): {fix}"
        )
    if model.head == "gmm":
        if model.num_components != m.gmm.num_components:
            raise ValueError(
                f"{model.num_components} components per class in the checkpoint, recipe "
                f"{name!r} has {m.gmm.num_components}: use --set "
                f"model.gmm.num_components={model.num_components}"
            )
        if not tiny and model.embed_dim != m.gmm.embed_dim:
            raise ValueError(
                f"embedding width {model.embed_dim} in the checkpoint, recipe {name!r} has "
                f"{m.gmm.embed_dim}: use --set model.gmm.embed_dim={model.embed_dim}"
            )
    changes: dict[str, Any] = {}
    if not tiny and m.decoder_channels != model.decoder_channels:
        changes["decoder_channels"] = model.decoder_channels
    if model.mit_norm is not None and m.mit_norm != model.mit_norm:
        changes["mit_norm"] = model.mit_norm
    if model.segformer_projection is not None and m.segformer_projection != (
        model.segformer_projection
    ):
        changes["segformer_projection"] = model.segformer_projection
    if model.window_size is not None and not tiny and m.window_size != model.window_size:
        changes["window_size"] = model.window_size
    fitted = dataclasses.replace(recipe, model=dataclasses.replace(m, **changes))
    return fitted, {f"model.{k}": v for k, v in changes.items()}
