"""scikit-learn's own GaussianMixture tests, run against :class:`gmmseg.em.GaussianMixture`.

Nothing is copied: the installed ``sklearn/mixture/tests/test_gaussian_mixture.py`` and
``test_mixture.py`` are read from scikit-learn's wheel, the one line importing
``sklearn.mixture.GaussianMixture`` is rewritten to import gmmseg's class, and the module is
executed under a new name. Its test functions are re-exported here unchanged (assertions,
tolerances, data), so pytest collects them as gmmseg tests. The two fixtures they take from
scikit-learn's ``conftest.py`` are defined below with the same values (``global_dtype`` also
runs float32, which scikit-learn only does behind ``SKLEARN_RUN_FLOAT32_TESTS=1``).

The ``BayesianGaussianMixture`` cases of ``test_mixture.py``'s ``estimator`` parametrizations
are dropped (they test scikit-learn's class). Tests that call scikit-learn's private helpers or
its array-API dispatch, not the estimator, cannot apply to another class; they are listed in
``NOT_APPLICABLE`` with the reason (and in the docs' compatibility section) and not collected;
a test fails if a scikit-learn test is neither run nor listed.

Below, scikit-learn's ``parametrize_with_checks`` runs every ``check_estimator`` check.

The list was audited against scikit-learn 1.9; on another version the module skips, since a
new release may add, rename or change tests (gmmseg's other tests accept scikit-learn >= 1.3).
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


def _export() -> tuple[list[str], list[str]]:
    """Re-export the applicable tests here; return their names and all test names found."""
    names, found = [], []
    for module_name in _IMPORTS:
        module = _load(module_name)
        for name, value in vars(module).items():
            if not (name.startswith("test_") and inspect.isfunction(value)):
                continue
            if value.__module__ != module.__name__:
                continue
            found.append(name)
            if name in NOT_APPLICABLE:
                continue
            assert name not in globals(), f"two scikit-learn tests named {name}"
            _only_gmmseg(value)
            globals()[name] = value
            names.append(name)
    return names, found


EXPORTED, FOUND = _export()


def test_every_scikit_learn_test_runs_or_is_listed() -> None:
    assert set(NOT_APPLICABLE) <= set(FOUND), "a listed test no longer exists"
    assert len(EXPORTED) + len(NOT_APPLICABLE) == len(FOUND)
    assert len(EXPORTED) == 33  # the count the docs' compatibility section reports


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


def test_sklearn_array_api_check_with_scipy_array_api_set() -> None:
    """``check_array_api_input`` skips unless ``SCIPY_ARRAY_API`` is set before scipy loads.

    The in-process run above sees it skip; a fresh interpreter with the variable set runs it.
    """
    import os
    import subprocess
    import sys

    code = (
        "import warnings\n"
        "from sklearn.utils.estimator_checks import check_array_api_input\n"
        "from gmmseg.em import GaussianMixture\n"
        "warnings.simplefilter('ignore', UserWarning)\n"
        "check_array_api_input('GaussianMixture', GaussianMixture(), array_namespace='numpy',"
        " expect_only_array_outputs=False)\n"
        "print('checked')\n"
    )
    env = {**os.environ, "SCIPY_ARRAY_API": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("checked")
