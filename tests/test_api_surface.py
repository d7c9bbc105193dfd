"""The public surface: the top-level names, lazy imports, and what each module exports."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import gmmseg


def test_top_level_names_are_the_modules_objects() -> None:
    from gmmseg.backbones import build_backbone
    from gmmseg.em import GaussianMixture
    from gmmseg.heads import GMMClassifier, LinearClassifier
    from gmmseg.metrics import AnomalyMetrics, SegmentationMetrics
    from gmmseg.recipes import get_recipe, list_recipes, load_trained
    from gmmseg.segmentor import Segmentor

    expected = {
        "AnomalyMetrics": AnomalyMetrics,
        "GMMClassifier": GMMClassifier,
        "GaussianMixture": GaussianMixture,
        "LinearClassifier": LinearClassifier,
        "SegmentationMetrics": SegmentationMetrics,
        "Segmentor": Segmentor,
        "build_backbone": build_backbone,
        "get_recipe": get_recipe,
        "list_recipes": list_recipes,
        "load_trained": load_trained,
    }
    assert sorted(gmmseg.__all__) == sorted(["__version__", *expected])
    for name, obj in expected.items():
        assert getattr(gmmseg, name) is obj
        assert name in dir(gmmseg)
    assert gmmseg.em is sys.modules["gmmseg.em"]


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'GMMHead'"):
        gmmseg.GMMHead  # noqa: B018


def test_import_gmmseg_imports_no_module_until_used() -> None:
    code = (
        "import sys, gmmseg\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('gmmseg.'))\n"
        "assert loaded == [], loaded\n"
        "from gmmseg import sinkhorn\n"
        "assert 'gmmseg.recipes' not in sys.modules and 'gmmseg.engine' not in sys.modules\n"
        "gmmseg.Segmentor\n"
        "assert 'gmmseg.segmentor' in sys.modules and 'gmmseg.recipes' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


PACKAGES = [
    "gmmseg.backbones",
    "gmmseg.data",
    "gmmseg.em",
    "gmmseg.engine",
    "gmmseg.heads",
    "gmmseg.interop",
    "gmmseg.metrics",
    "gmmseg.recipes",
    "gmmseg.submit",
    "gmmseg.testing",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_exists_and_is_documented(name: str) -> None:
    module = importlib.import_module(name)
    for attr in module.__all__:
        obj = getattr(module, attr)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert (obj.__doc__ or "").strip(), f"{name}.{attr} has no docstring"


@pytest.mark.parametrize(
    ("name", "plumbing"),
    [
        ("gmmseg.data", ["write_fixture", "write_broken_fixture", "write_folder_fixture"]),
        ("gmmseg.engine", ["draw_seed", "get_rng_state", "set_rng_state", "TrainStream"]),
        ("gmmseg.recipes", ["parse_value", "recipes_markdown", "num_classes_of"]),
    ],
)
def test_plumbing_is_not_exported(name: str, plumbing: list[str]) -> None:
    """Helpers for the library's own machinery stay importable from their modules, not from the
    package (the fixture writers live in gmmseg.testing)."""
    module = importlib.import_module(name)
    assert not set(plumbing) & set(module.__all__)
    assert not [p for p in plumbing if hasattr(module, p) and p in vars(module)]


def test_the_training_path_does_not_import_scikit_learn() -> None:
    """Only the offline estimator imports scikit-learn (for its exception classes): building and
    training a model, the CLI included, never loads it."""
    code = (
        "import sys\n"
        "import gmmseg.cli, gmmseg.engine, gmmseg.recipes, gmmseg.segmentor\n"
        "from gmmseg.em import ComponentMemory, StreamingStatistics\n"
        "assert 'sklearn' not in sys.modules\n"
        "assert 'gmmseg.em.gaussian_mixture' not in sys.modules\n"
        "from gmmseg.em import GaussianMixture, NotFittedError\n"
        "assert GaussianMixture.__module__ == 'gmmseg.em.gaussian_mixture'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
