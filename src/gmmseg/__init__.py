"""gmmseg: semantic segmentation with a generative Gaussian-mixture classifier.

The names a user starts from are importable from the top level::

    from gmmseg import GMMClassifier, Segmentor, build_backbone, get_recipe, load_trained

Everything else lives in the modules, which compose (see the documentation):
:mod:`gmmseg.distributions`, :mod:`gmmseg.sinkhorn` and :mod:`gmmseg.em` are the numerical core;
:mod:`gmmseg.heads`, :mod:`gmmseg.backbones` and :mod:`gmmseg.segmentor` build networks;
:mod:`gmmseg.metrics` and :mod:`gmmseg.data` evaluate and feed them; :mod:`gmmseg.engine` and
:mod:`gmmseg.recipes` train and evaluate the paper's configurations.

The top-level names and the modules are imported on first use, so ``import gmmseg`` stays cheap
and importing one module does not import the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gmmseg.backbones import build_backbone
    from gmmseg.em import GaussianMixture
    from gmmseg.heads import GMMClassifier, LinearClassifier
    from gmmseg.metrics import AnomalyMetrics, SegmentationMetrics
    from gmmseg.recipes import get_recipe, list_recipes, load_trained
    from gmmseg.segmentor import Segmentor

__version__ = "0.1.0.dev0"

# name -> the module that defines it
_NAMES = {
    "AnomalyMetrics": "gmmseg.metrics",
    "GMMClassifier": "gmmseg.heads",
    "GaussianMixture": "gmmseg.em",
    "LinearClassifier": "gmmseg.heads",
    "SegmentationMetrics": "gmmseg.metrics",
    "Segmentor": "gmmseg.segmentor",
    "build_backbone": "gmmseg.backbones",
    "get_recipe": "gmmseg.recipes",
    "list_recipes": "gmmseg.recipes",
    "load_trained": "gmmseg.recipes",
}
_MODULES = (
    "backbones",
    "data",
    "distributions",
    "em",
    "engine",
    "heads",
    "interop",
    "metrics",
    "recipes",
    "segmentor",
    "sinkhorn",
    "submit",
    "testing",
    "viz",
)

__all__ = [
    "AnomalyMetrics",
    "GMMClassifier",
    "GaussianMixture",
    "LinearClassifier",
    "SegmentationMetrics",
    "Segmentor",
    "__version__",
    "build_backbone",
    "get_recipe",
    "list_recipes",
    "load_trained",
]


def __getattr__(name: str) -> Any:
    """Import a top-level name or a module on first access (PEP 562)."""
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        return importlib.import_module(f"gmmseg.{name}")
    raise AttributeError(f"module 'gmmseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES, *_MODULES})
