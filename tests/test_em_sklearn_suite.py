"""scikit-learn's own GaussianMixture tests, run against :class:`gmmseg.em.GaussianMixture`.

Nothing is copied: the installed ``sklearn/mixture/tests/test_gaussian_mixture.py`` and
``test_mixture.py`` are read from scikit-learn's wheel, the one line importing
``sklearn.mixture.GaussianMixture`` is rewritten to import gmmseg's class, and the module is
executed under a new name. Its test functions are re-exported here unchanged (assertions,
tolerances, data), so pytest collects them as gmmseg tests. The two fixtures they take from
scikit-learn's ``conftest.py`` are defined below with the same values (``global_dtype`` also
runs float32, which scikit-learn only does behind ``SKLEARN_RUN_FLOAT32_TESTS=1``).

Tests that call scikit-learn's private helpers, not the estimator, cannot apply to another
class; they are listed in ``NOT_APPLICABLE`` with the reason (and in the docs' compatibility
section), and are not collected.

The list was audited against scikit-learn 1.9; on another version the module skips, since a
new release may add, rename or change tests.
"""

from __future__ import annotations

import importlib.util
import inspect
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

AUDITED = "1.9"
if not sklearn.__version__.startswith(AUDITED + "."):
    pytest.skip(
        f"scikit-learn's mixture tests were audited against scikit-learn {AUDITED}.x; "
        f"installed {sklearn.__version__} (re-audit NOT_APPLICABLE to run them)",
        allow_module_level=True,
    )

from gmmseg.em import GaussianMixture  # noqa: E402

# Tests of scikit-learn's private functions or internals, not of the estimator's public API.
_PRIVATE = "calls scikit-learn's private function {} directly; no estimator is involved"
NOT_APPLICABLE: dict[str, str] = {
    "test_suffstat_sk_full": _PRIVATE.format("_estimate_gaussian_covariances_full"),
    "test_suffstat_sk_tied": _PRIVATE.format("_estimate_gaussian_covariances_tied"),
    "test_suffstat_sk_diag": _PRIVATE.format("_estimate_gaussian_covariances_diag"),
    "test_gaussian_suffstat_sk_spherical": _PRIVATE.format(
        "_estimate_gaussian_covariances_spherical"
    ),
    "test_compute_log_det_cholesky": _PRIVATE.format("_compute_log_det_cholesky"),
    "test_gaussian_mixture_log_probabilities": _PRIVATE.format("_estimate_log_gaussian_prob"),
    "test_gaussian_mixture_precisions_init": (
        "calls the estimator's private methods _set_parameters and _initialize(X, resp)"
    ),
    "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters": (
        "monkeypatches scikit-learn's private _estimate_gaussian_parameters and counts its "
        "calls, which another implementation never makes"
    ),
    "test_gaussian_mixture_array_api_compliance": (
        "tests scikit-learn's array-API dispatch (config_context(array_api_dispatch=True)); "
        "gmmseg takes torch tensors directly"
    ),
    "test_gaussian_mixture_raises_where_array_api_not_implemented": (
        "expects NotImplementedError for k-means initialisation under scikit-learn's "
        "array-API dispatch, a scikit-learn limitation gmmseg does not have"
    ),
}

_IMPORTS = {
    "test_gaussian_mixture": (
        "from sklearn.mixture import GaussianMixture\n",
        "from gmmseg.em import GaussianMixture\n",
    ),
    "test_mixture": (
        "from sklearn.mixture import BayesianGaussianMixture, GaussianMixture\n",
        "from sklearn.mixture import BayesianGaussianMixture\n"
        "from gmmseg.em import GaussianMixture\n",
    ),
}


def _load(name: str) -> types.ModuleType:
    """scikit-learn's test module ``name`` with gmmseg's ``GaussianMixture`` imported instead."""
    spec = importlib.util.find_spec(f"sklearn.mixture.tests.{name}")
    assert spec is not None and spec.origin is not None, f"scikit-learn ships no {name}.py"
    source = Path(spec.origin).read_text(encoding="utf-8")
    old, new = _IMPORTS[name]
    assert source.count(old) == 1, f"{spec.origin}: expected one line {old!r}"
    module = types.ModuleType(f"gmmseg_sklearn_suite_{name}")
    module.__file__ = spec.origin
    exec(compile(source.replace(old, new), spec.origin, "exec"), module.__dict__)
    assert module.GaussianMixture is GaussianMixture
    return module


def _only_gmmseg(function: Any) -> None:
    """Keep only gmmseg's estimator in an ``estimator`` parametrization (not Bayesian's)."""
    marks = getattr(function, "pytestmark", [])
    for i, mark in enumerate(marks):
        if mark.name == "parametrize" and mark.args[0] == "estimator":
            values = [v for v in mark.args[1] if isinstance(v, GaussianMixture)]
            marks[i] = pytest.mark.parametrize("estimator", values).mark


def _export() -> list[str]:
    names = []
    for module_name in _IMPORTS:
        module = _load(module_name)
        for name, value in vars(module).items():
            if not (name.startswith("test_") and inspect.isfunction(value)):
                continue
            if value.__module__ != module.__name__ or name in NOT_APPLICABLE:
                continue
            assert name not in globals(), f"two scikit-learn tests named {name}"
            _only_gmmseg(value)
            globals()[name] = value
            names.append(name)
    return names


EXPORTED = _export()


@pytest.fixture(params=[np.float32, np.float64])
def global_dtype(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
def global_random_seed() -> int:
    return 42  # scikit-learn's default (SKLEARN_TESTS_GLOBAL_RANDOM_SEED unset)


# -- scikit-learn's estimator checks ---------------------------------------------------------

from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

with warnings.catch_warnings():
    # gmmseg does not depend on scikit-learn, so its estimator cannot inherit BaseEstimator;
    # it implements the protocol (get_params, set_params, __sklearn_tags__) instead.
    warnings.filterwarnings("ignore", "Estimator GaussianMixture does not inherit", UserWarning)
    _ESTIMATOR_CHECKS = parametrize_with_checks([GaussianMixture()])


@_ESTIMATOR_CHECKS
def test_sklearn_estimator_check(estimator: Any, check: Any) -> None:
    check(estimator)


def test_clone_pipeline_and_grid_search() -> None:
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.RandomState(0)
    x = np.r_[rng.randn(60, 2), rng.randn(60, 2) + 6]
    gm = GaussianMixture(2, covariance_type="diag", random_state=rng)
    twin = clone(gm)
    assert twin is not gm and twin.get_params()["covariance_type"] == "diag"
    pipe = make_pipeline(StandardScaler(), GaussianMixture(random_state=0)).fit(x)
    assert pipe.predict(x).shape == (120,)
    search = GridSearchCV(GaussianMixture(random_state=0), {"n_components": [1, 2, 3]}, cv=3)
    search.fit(x)
    assert search.best_params_["n_components"] >= 2  # two separated blobs
    assert isinstance(search.best_estimator_, GaussianMixture)
