"""Fit post-hoc class-conditional mixtures for a recipe and a trained checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from torch.utils.data import DataLoader

from gmmseg.data.samplers import collate_samples
from gmmseg.engine import init_distributed
from gmmseg.engine.posthoc import FeatureSpace, fit_posthoc
from gmmseg.heads import PosthocMixtures, PosthocSettings
from gmmseg.interop import Layout
from gmmseg.recipes.build import _closed_set, _eval_transform
from gmmseg.recipes.schema import Recipe
from gmmseg.recipes.validate import check_recipe
from gmmseg.segmentor import Segmentor

__all__ = ["default_posthoc_path", "fit_recipe_posthoc", "posthoc_space", "train_fit_loader"]


def default_posthoc_path(checkpoint: Path | str) -> Path:
    """Where the post-hoc mixtures of a checkpoint are written by default: beside it.

    ``work/iter_01200.pt`` → ``work/iter_01200.posthoc.pt``; a Hugging Face folder
    ``models/segformer`` → ``models/segformer.posthoc.pt``.
    """
    path = Path(checkpoint)
    stem = path.name if path.is_dir() else path.stem
    return path.parent / f"{stem}.posthoc.pt"


def posthoc_space(model: Segmentor, space: FeatureSpace | Literal["auto"] = "auto") -> FeatureSpace:
    """``"auto"``: the classifier's pixel embeddings if it has some (GMM), else the decoder's."""
    if space != "auto":
        return space
    return "decoder" if model.classifier.embed_dim is None else "embedding"


def train_fit_loader(recipe: Recipe, batch_size: int | None = None) -> DataLoader[Any]:
    """The training split with the test-time transform (no augmentation), in file order."""
    dataset = _closed_set(recipe.data, recipe.data.train_split)
    dataset.transform = _eval_transform(recipe.data)  # type: ignore[attr-defined]
    if batch_size is None:
        batch_size = 50 if recipe.data.dataset == "demo" else 1
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_samples
    )


def fit_recipe_posthoc(
    recipe: Recipe,
    checkpoint: Path | str | None = None,
    out: Path | str | None = None,
    *,
    model: Segmentor | None = None,
    space: FeatureSpace | Literal["auto"] = "auto",
    settings: PosthocSettings | None = None,
    max_images: int | None = None,
    device: str = "auto",
    layout: Layout | Literal["gmmseg"] = "auto",
    trust: bool = False,
) -> tuple[PosthocMixtures, Path | None]:
    """Fit post-hoc mixtures on the recipe's training split for a trained model, and save them.

    The images are the training split's, with the test-time transform (no augmentation) and the
    recipe's inference windows (``eval.mode``, ``crop_size``, ``stride``).

    Args:
        recipe: the recipe (data, inference settings; the model of a foreign file).
        checkpoint: a gmmseg checkpoint or a file trained elsewhere
            (:func:`~gmmseg.recipes.load_trained`), or pass ``model``.
        out: the file to write (default: :func:`default_posthoc_path` of ``checkpoint``;
            nothing is written for a ``model`` without ``out``).
        model: an already loaded model.
        space: ``"decoder"``, ``"embedding"`` or ``"auto"`` (:func:`posthoc_space`).
        settings: the fit's settings.
        max_images: fit on the first images only.
        device: where to compute.
        layout: the checkpoint's layout.
        trust: unpickle untrusted checkpoint metadata in full.

    Returns:
        The head (on the CPU) and the file written (or ``None``).
    """
    from gmmseg.recipes.run import inference_settings, load_trained

    check_recipe(recipe)
    dist = init_distributed(device)
    if model is None:
        if checkpoint is None:
            raise ValueError("pass a checkpoint or a model")
        model, recipe = load_trained(checkpoint, recipe, dist.device, layout=layout, trust=trust)
    chosen = posthoc_space(model, space)
    info: dict[str, Any] = {"recipe": recipe.name}
    if checkpoint is not None:
        info["checkpoint"] = Path(checkpoint).name
    head = fit_posthoc(
        model,
        train_fit_loader(recipe),
        space=chosen,
        settings=settings,
        inference=inference_settings(recipe),
        device=dist.device,
        max_images=max_images,
        info=info,
    ).to("cpu")
    target = Path(out) if out is not None else None
    if target is None and checkpoint is not None:
        target = default_posthoc_path(checkpoint)
    if target is not None:
        head.save(target)
    return head, target
