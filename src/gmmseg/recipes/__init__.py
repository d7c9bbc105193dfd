"""Typed recipes reproducing the paper's configurations, by name, and the functions that run them.

``list_recipes()`` names every configuration; ``get_recipe(name)`` returns a frozen
:class:`Recipe`; ``apply_overrides(recipe, ["optim.lr=1e-4", ...])`` changes fields with type
checking; ``train_recipe`` / ``evaluate_recipe`` / ``evaluate_recipe_anomaly`` run them.
"""

from gmmseg.recipes.build import build_model, dry_run_recipe
from gmmseg.recipes.catalog import RECIPES, get_recipe, list_recipes
from gmmseg.recipes.overrides import OverrideError, apply_overrides, from_dict
from gmmseg.recipes.run import (
    evaluate_recipe,
    evaluate_recipe_anomaly,
    load_trained,
    train_recipe,
)
from gmmseg.recipes.schema import (
    AnomalyConfig,
    DataConfig,
    EvalConfig,
    GMMConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    TrainConfig,
)
from gmmseg.recipes.validate import check_recipe

__all__ = [
    "RECIPES",
    "AnomalyConfig",
    "DataConfig",
    "EvalConfig",
    "GMMConfig",
    "ModelConfig",
    "OptimConfig",
    "OverrideError",
    "Recipe",
    "TrainConfig",
    "apply_overrides",
    "build_model",
    "check_recipe",
    "dry_run_recipe",
    "evaluate_recipe",
    "evaluate_recipe_anomaly",
    "from_dict",
    "get_recipe",
    "list_recipes",
    "load_trained",
    "train_recipe",
]
