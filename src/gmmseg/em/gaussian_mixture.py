"""Gaussian mixtures fitted by expectation-maximisation, scikit-learn compatible.

:class:`GaussianMixture` mirrors :class:`sklearn.mixture.GaussianMixture` (same constructor
arguments, methods and fitted attributes, same EM iterations, same convergence test, same
``n_init`` selection), computing in torch on any device. It is a scikit-learn estimator
(``get_params``, ``set_params``, tags; numpy in, numpy out; scikit-learn's exception classes and
messages) that passes scikit-learn's own mixture tests and ``check_estimator``; the API page's
compatibility section lists what differs. With the same initialisation its fitted
parameters equal scikit-learn's to rounding. :meth:`GaussianMixture.fit_grouped` fits one
mixture per group of rows (one per class, the common case in segmentation) and returns a
:class:`GroupedGaussianMixture`.

The formulas (E-step, M-step per covariance type, precision factors) live in
``gmmseg.em._steps``, one function each; the input checks in ``gmmseg.em._validation``; the
k-means initialisers in ``gmmseg.em._kmeans``. This module holds the estimator and its EM loop.

Shapes (K components, D features, G groups; a leading G on every grouped attribute):

| ``covariance_type`` | ``covariances_`` / ``precisions_`` / ``precisions_cholesky_`` |
| ------------------- | ------------------------------------------------------------- |
| ``"full"``          | (K, D, D)                                                     |
| ``"tied"``          | (D, D)                                                        |
| ``"diag"``          | (K, D)                                                        |
| ``"spherical"``     | (K,)                                                          |

Numerics. Inside a fit the rows are shifted by their (weighted) mean, which changes no
estimate but removes the bulk of the cancellation of the expanded quadratic forms in float32.
Variances are *centred* estimates ``Σ r (x − μ)² / n_k`` (scikit-learn's one-pass
``E[x²] − μ²`` cancels catastrophically for a tight component far from the data mean in
float32: a variance of 0.1 can come out as 112, or negative).

Sample weights. ``fit(X, sample_weight=w)`` runs weighted EM: responsibilities are multiplied by
``w`` in the M-step, so integer weights equal repeated rows, and ``lower_bound_`` is the
*weighted* mean log-likelihood ``Σ w_n log p(x_n) / Σ w_n``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeAlias, get_args, overload

import numpy as np
import torch
from torch import Tensor

from gmmseg.distributions import CovarianceType, log_prob_from_precision_cholesky, sample_mixture
from gmmseg.em._kmeans import draw_distinct_rows, kmeans_labels, kmeans_plusplus, uniform_draws
from gmmseg.em._steps import (
    compute_precision_cholesky,
    covariances_from_cholesky,
    diag_features,
    estimate_gaussian_parameters,
    estimate_log_prob_resp,
    n_parameters,
    precision_cholesky_from_precisions,
    precisions_from_cholesky,
    responsibilities,
)
from gmmseg.em._validation import (
    Inits,
    as_array,
    check_group_ids,
    check_inits,
    check_sample_weight,
    check_x,
    float_dtype,
    is_int,
    is_real,
    to_float,
)

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "ConvergenceWarning",
    "GaussianMixture",
    "GroupedGaussianMixture",
    "InitParams",
    "NotFittedError",
]

InitParams = Literal["kmeans", "k-means++", "random", "random_from_data"]
_INIT_PARAMS: tuple[str, ...] = get_args(InitParams)
_COVARIANCE_TYPES: tuple[str, ...] = get_args(CovarianceType)
_ARRAY_ATTRIBUTES = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")
ArrayOut: TypeAlias = "Tensor | npt.NDArray[Any]"


if TYPE_CHECKING:
    _WarningBase = UserWarning

    class _NotFittedBase(ValueError, AttributeError):
        pass

else:
    try:  # subclassing scikit-learn's classes lets its except clauses and filters catch ours
        from sklearn.exceptions import ConvergenceWarning as _WarningBase
        from sklearn.exceptions import NotFittedError as _NotFittedBase
    except Exception:  # not installed, or an installation that cannot import
        _WarningBase = UserWarning

        class _NotFittedBase(ValueError, AttributeError):
            pass


class ConvergenceWarning(_WarningBase):
    """Warned when the best EM run stopped at ``max_iter`` before converging.

    A subclass of :class:`sklearn.exceptions.ConvergenceWarning` when scikit-learn is
    installed (of :class:`UserWarning` otherwise), so scikit-learn's warning filters apply.
    """


class NotFittedError(_NotFittedBase):
    """Raised when a fitted-model method is called before :meth:`GaussianMixture.fit`.

    A subclass of :class:`sklearn.exceptions.NotFittedError` when scikit-learn is installed
    (of ``ValueError`` and ``AttributeError`` otherwise).
    """


class _Params(NamedTuple):
    """Mixture parameters during a fit; means are relative to the data's weighted mean."""

    weights: Tensor  # (K,)
    means: Tensor  # (K, D)
    covariances: Tensor  # module table
    precisions_cholesky: Tensor  # same shape as covariances


RandomStateLike = int | np.random.RandomState | torch.Generator | None


def _generator(random_state: RandomStateLike) -> torch.Generator | None:
    """A torch generator for ``random_state`` (``None``: torch's global generator).

    A ``numpy.random.RandomState`` seeds a new generator with one draw, so it advances at every
    call, as scikit-learn's ``check_random_state`` does with it.
    """
    if isinstance(random_state, torch.Generator) or random_state is None:
        return random_state
    if isinstance(random_state, np.random.RandomState):
        random_state = int(random_state.randint(np.iinfo(np.int32).max))
    return torch.Generator().manual_seed(int(random_state))


def _weighted_mean(values: Tensor, w: Tensor) -> float:
    """``Σ w v / Σ w`` in float64 (rows of weight 0 do not count, even where v = −inf)."""
    w64 = w.to(torch.float64)
    terms = torch.where(w64 > 0, w64 * values.to(torch.float64), torch.zeros_like(w64))
    return float(terms.sum() / w64.sum())


def _to_numpy(t: Tensor) -> npt.NDArray[Any]:
    return t.detach().cpu().numpy()


class GaussianMixture:
    """Gaussian mixture fitted by EM, a drop-in for :class:`sklearn.mixture.GaussianMixture`.

    Computation runs in torch on ``device`` (default: the input tensor's device, the CPU for
    numpy input) in ``dtype`` (default: the input's float32/float64 dtype; float64 for other
    numpy dtypes and integer tensors, as scikit-learn; float32 for half tensors).

    Numpy in, numpy out: fitted on a numpy array (or a list, ...), the fitted array attributes
    are numpy arrays in the computation dtype, as scikit-learn's; fitted on a tensor, they are
    tensors on the computation device. Methods return numpy arrays for numpy input and tensors
    (on the model's device) for tensor input, whatever the fit's input was. Scalars (``n_iter_``,
    ``lower_bound_``, ``score``, ``bic``, ``aic``) are Python numbers.

    The hyper-parameters are stored as given and checked by :meth:`fit` (scikit-learn's
    convention, so :meth:`set_params`, ``clone`` and grid searches work). :meth:`get_params`,
    :meth:`set_params` and ``__sklearn_tags__`` make it a scikit-learn estimator (``Pipeline``,
    ``GridSearchCV``, ``check_estimator``) without scikit-learn being a dependency.

    Args:
        n_components: K, the number of mixture components (>= 1).
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"`` (module table).
        tol: convergence threshold on the change of the lower bound (>= 0).
        reg_covar: non-negative value added to the covariance diagonals.
        max_iter: maximum EM iterations per initialisation (>= 0; 0 only initialises).
        n_init: number of initialisations; the one with the best lower bound is kept.
        init_params: ``"kmeans"`` (this module's torch k-means, k-means++ seeded),
            ``"k-means++"`` (seeds only), ``"random"`` (uniform responsibilities) or
            ``"random_from_data"`` (K distinct rows). Used for whatever ``*_init`` is missing.
        weights_init: (K,) initial weights, summing to 1 (``fit_grouped``: (K,) or (G, K)).
        means_init: (K, D) initial means (``fit_grouped``: also (G, K, D)).
        precisions_init: initial precisions (inverse covariances), shaped as the module table
            (``fit_grouped``: also with a leading G).
        random_state: int seed, ``numpy.random.RandomState`` (seeds a torch generator with one
            draw, advancing it), ``torch.Generator`` or ``None`` (torch's global generator).
        warm_start: if true, a second ``fit`` starts from the previous solution (``n_init`` is
            then 1 and the lower bound continues from ``lower_bound_``).
        verbose: 0 silent, 1 prints each initialisation and every ``verbose_interval``-th
            iteration, 2 also the time and the change of the lower bound.
        verbose_interval: iterations between two printed lines.
        device: computation device (``None``: follow the input).
        dtype: computation dtype, ``torch.float32`` or ``torch.float64`` (``None``: see above).
        chunk_size: rows per chunk of the log-density temporaries (``None``: a 64 MiB budget).

    Attributes:
        weights_: (K,) mixture weights.
        means_: (K, D) means.
        covariances_: covariances, shape by ``covariance_type``.
        precisions_: inverse covariances, same shape.
        precisions_cholesky_: upper Cholesky factors of the precisions, same shape.
        converged_: whether the best run converged.
        n_iter_: EM iterations of the best run.
        lower_bound_: (weighted) mean log-likelihood of the best run's last E-step.
        lower_bounds_: lower bound at every iteration of the best run.
        n_features_in_: D.
        dtype_: the computation dtype of the fit.
        device_: the computation device of the fit.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g) + 5])
        >>> gm = GaussianMixture(2, random_state=0).fit(x)
        >>> sorted(gm.predict(x).bincount().tolist())
        [50, 50]
        >>> gm.fit(x.numpy()).predict(x.numpy()).dtype
        dtype('int64')
    """

    # Tensors when fitted on a tensor, numpy arrays otherwise (see the class docstring).
    weights_: ArrayOut
    means_: ArrayOut
    covariances_: ArrayOut
    precisions_: ArrayOut
    precisions_cholesky_: ArrayOut
    converged_: bool
    n_iter_: int
    lower_bound_: float
    lower_bounds_: list[float]
    n_features_in_: int
    dtype_: torch.dtype
    device_: torch.device
    _last_said: float  # time of the last verbose line

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: CovarianceType = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: InitParams = "kmeans",
        weights_init: Tensor | npt.ArrayLike | None = None,
        means_init: Tensor | npt.ArrayLike | None = None,
        precisions_init: Tensor | npt.ArrayLike | None = None,
        random_state: RandomStateLike = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size

    def __repr__(self) -> str:
        defaults = GaussianMixture.__init__.__kwdefaults__ or {}
        shown = [f"n_components={self.n_components}"] if self.n_components != 1 else []
        for name, default in defaults.items():
            value = getattr(self, name)
            if isinstance(value, (Tensor, np.ndarray)):
                shown.append(f"{name}=<array>")
            elif not (value is default or (type(value) is type(default) and value == default)):
                shown.append(f"{name}={value!r}")
        return f"GaussianMixture({', '.join(shown)})"

    # -- scikit-learn estimator protocol --------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as scikit-learn's ``BaseEstimator.get_params``.

        Args:
            deep: ignored (no parameter is an estimator).

        Returns:
            ``{name: value}`` for every ``__init__`` argument.
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> GaussianMixture:
        """Set constructor arguments (checked by the next :meth:`fit`, as in scikit-learn).

        Args:
            **params: ``name=value`` for ``__init__`` arguments.

        Returns:
            ``self``.

        Raises:
            ValueError: for a name that is not an ``__init__`` argument.
        """
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {self}. Valid parameters are: "
                    f"{sorted(valid)!r}."
                )
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's estimator tags: a density estimator with no target (needs sklearn)."""
        utils = importlib.import_module("sklearn.utils")
        return utils.Tags(
            estimator_type="density_estimator",
            target_tags=utils.TargetTags(required=False),
            input_tags=utils.InputTags(),
        )

    # -- validation ---------------------------------------------------------------------------

    def _check_hyperparameters(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(
                f"The {name!r} parameter of GaussianMixture must be {expected}. Got "
                f"{getattr(self, name)!r} instead."
            )

        if not is_int(self.n_components) or self.n_components < 1:
            raise bad("n_components", "an int in the range [1, inf)")
        if self.covariance_type not in _COVARIANCE_TYPES:
            raise bad("covariance_type", f"a str among {set(_COVARIANCE_TYPES)}")
        if not is_real(self.tol) or not self.tol >= 0:
            raise bad("tol", "a float in the range [0.0, inf)")
        if not is_real(self.reg_covar) or not 0 <= self.reg_covar < math.inf:
            raise bad("reg_covar", "a finite float in the range [0.0, inf)")
        if not is_int(self.max_iter) or self.max_iter < 0:
            raise bad("max_iter", "an int in the range [0, inf)")
        if not is_int(self.n_init) or self.n_init < 1:
            raise bad("n_init", "an int in the range [1, inf)")
        if self.init_params not in _INIT_PARAMS:
            raise bad("init_params", f"a str among {set(_INIT_PARAMS)}")
        rs = self.random_state
        if not (
            rs is None
            or isinstance(rs, (np.random.RandomState, torch.Generator))
            or (is_int(rs) and 0 <= rs < 2**32)
        ):
            raise bad(
                "random_state",
                "None, an int in the range [0, 4294967295], a numpy.random.RandomState or a "
                "torch.Generator",
            )
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise bad("warm_start", "a bool")
        if not is_int(self.verbose) or self.verbose < 0:
            raise bad("verbose", "an int in the range [0, inf)")
        if not is_int(self.verbose_interval) or self.verbose_interval < 1:
            raise bad("verbose_interval", "an int in the range [1, inf)")
        if self.dtype not in (None, torch.float32, torch.float64):
            raise bad("dtype", "None, torch.float32 or torch.float64")
        if self.chunk_size is not None and (not is_int(self.chunk_size) or self.chunk_size < 1):
            raise bad("chunk_size", "None or an int in the range [1, inf)")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as err:
                raise bad("device", "None, a torch.device or a device string") from err

    def _convert(self, X: object) -> tuple[Tensor, bool]:
        """``X`` in the computation dtype and device, and whether it was not a tensor.

        Results go back as numpy when the flag is true.
        """
        t = as_array("X", X)
        numpy = not isinstance(X, Tensor)
        dtype = self.dtype if self.dtype is not None else float_dtype(t, numpy_input=numpy)
        device = torch.device(self.device) if self.device is not None else t.device
        return check_x(t, dtype, device), numpy

    def _check_fit_data(self, X: object, sample_weight: object) -> tuple[Tensor, Tensor, bool]:
        """Validated (N, D) samples and (N,) weights in the computation dtype and device."""
        x, numpy = self._convert(X)
        k = int(self.n_components)
        if x.shape[0] < k:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = {k}, "
                f"n_samples = {x.shape[0]}"
            )
        w = check_sample_weight(sample_weight, x)
        positive = int((w > 0).sum())
        if positive < k:
            raise ValueError(
                f"sample_weight must have at least n_components={k} non-zero (positive) "
                f"weights, got {positive}"
            )
        return x, w, numpy

    def _chunk_size(self) -> int | None:
        """``chunk_size`` as a Python int (numpy integers are valid parameters too)."""
        return None if self.chunk_size is None else int(self.chunk_size)

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "precisions_cholesky_"):
            raise NotFittedError(
                "This GaussianMixture instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator."
            )

    # -- EM -----------------------------------------------------------------------------------

    def fit(
        self,
        X: Tensor | npt.ArrayLike,
        y: object = None,
        sample_weight: Tensor | npt.ArrayLike | None = None,
    ) -> GaussianMixture:
        """Estimate the parameters with EM (``n_init`` runs, keep the best lower bound).

        Args:
            X: (N, D) samples, N >= n_components.
            y: ignored (scikit-learn API compatibility).
            sample_weight: (N,) non-negative weights, at least ``n_components`` positive.

        Returns:
            ``self``, fitted.

        Raises:
            ValueError: on invalid input, hyper-parameters or initial values, or an ill-defined
                covariance during EM (the message names the component).
            TypeError: for scipy sparse input.

        Warns:
            ConvergenceWarning: if the best run did not converge within ``max_iter``.
        """
        self._check_hyperparameters()
        x, w, numpy = self._check_fit_data(X, sample_weight)
        warm = self.warm_start and hasattr(self, "precisions_cholesky_")
        if warm and x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features, but GaussianMixture is expecting "
                f"{self.n_features_in_} features as input (warm start)."
            )
        inits = check_inits(
            self.weights_init,
            self.means_init,
            self.precisions_init,
            n_components=int(self.n_components),
            covariance_type=self.covariance_type,
            groups=None,
            like=x,
        )
        self._fit_em(x, w, inits, warm=warm)
        if numpy:
            for name in _ARRAY_ATTRIBUTES:
                setattr(self, name, _to_numpy(getattr(self, name)))
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data "
                f"(max_iter={self.max_iter}).",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _fit_em(self, x: Tensor, w: Tensor, inits: Inits, *, warm: bool, where: str = "") -> None:
        """The EM loop on validated data, as scikit-learn's ``BaseMixture.fit_predict``.

        For each of the ``n_init`` initialisations (one when warm-starting): E-step, M-step,
        until the lower bound changes by less than ``tol`` or ``max_iter`` iterations; the run
        with the best final lower bound is kept and its parameters become the fitted attributes.

        Args:
            x: (N, D) samples.
            w: (N,) sample weights.
            inits: the user's initial values (leading dimension 1).
            warm: start from the fitted attributes instead of initialising.
            where: appended to the component named in an ill-defined-covariance error.
        """
        # Shifting the rows by their weighted mean changes no estimate, but keeps the expanded
        # quadratic forms of the densities and of the GEMM M-step accurate in float32.
        centre = (w @ x) / w.sum()
        xc = x - centre
        diagonal = self.covariance_type in ("diag", "spherical")
        features = diag_features(xc) if diagonal else None  # [x², x], read by both steps
        generator = _generator(self.random_state)
        best: tuple[_Params, int, bool, list[float]] | None = None
        max_lower_bound = -math.inf
        for init in range(1 if warm else self.n_init):
            self._say(f"Initialization {init}", restart=True)
            if warm:
                params = self._warm_params(centre)
                lower_bound = self.lower_bound_
            else:
                params = self._initialize(xc, w, centre, inits, generator, where)
                lower_bound = -math.inf
            history: list[float] = []
            converged = False
            for n_iter in range(1, self.max_iter + 1):
                previous = lower_bound
                log_prob_norm, log_resp = self._e_step(xc, params, features)
                params = self._m_step(xc, w, log_resp, where, features)
                lower_bound = _weighted_mean(log_prob_norm, w)
                history.append(lower_bound)
                if n_iter % self.verbose_interval == 0:
                    change = lower_bound - previous
                    self._say(f"  Iteration {n_iter}", f"\t ll change {change:.5f}")
                if abs(lower_bound - previous) < self.tol:
                    converged = True
                    break
            if self.max_iter == 0:
                lower_bound = -math.inf
            else:
                status = "converged" if converged else "did not converge"
                self._say(f"Initialization {status}.", f"\t lower bound {lower_bound:.5f}.")
            if best is None or lower_bound > max_lower_bound or max_lower_bound == -math.inf:
                max_lower_bound = lower_bound
                best = (params, len(history), converged, history)
        assert best is not None
        params, self.n_iter_, self.converged_, self.lower_bounds_ = best
        self.lower_bound_ = max_lower_bound
        self._set_fitted(
            params.weights, params.means + centre, params.covariances, params.precisions_cholesky
        )

    def _say(self, line: str, detail: str = "", *, restart: bool = False) -> None:
        """Print ``line`` if ``verbose`` >= 1, as scikit-learn's verbose output.

        At ``verbose`` >= 2 the line also shows the time since the previous line (``restart``
        starts the clock) and ``detail``.
        """
        if not self.verbose:
            return
        now = time.perf_counter()
        if self.verbose >= 2 and not restart:
            line += f"\t time lapse {now - self._last_said:.5f}s{detail}"
        print(line)
        self._last_said = now

    def _e_step(self, x: Tensor, params: _Params, features: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(log_prob_norm (N,), log_resp (N, K))`` of the centred rows."""
        return estimate_log_prob_resp(
            x,
            params.weights,
            params.means,
            params.precisions_cholesky,
            self.covariance_type,
            self._chunk_size(),
            features,
        )

    def _m_step(
        self, x: Tensor, w: Tensor, log_resp: Tensor, where: str, features: Tensor | None
    ) -> _Params:
        """New parameters from the log-responsibilities (weighted by ``w``)."""
        resp = responsibilities(log_resp) * w[:, None]
        nk, means, covariances = estimate_gaussian_parameters(
            x, resp, self.reg_covar, self.covariance_type, features
        )
        prec_chol = compute_precision_cholesky(covariances, self.covariance_type, where)
        return _Params(nk / nk.sum(), means, covariances, prec_chol)

    def _initial_resp(self, x: Tensor, w: Tensor, generator: torch.Generator | None) -> Tensor:
        """(N, K) initial responsibilities by ``init_params`` (a test hook: override freely)."""
        n, k = x.shape[0], int(self.n_components)
        if self.init_params == "random":
            resp = uniform_draws((n, k), generator, x)
            return resp / resp.sum(dim=1, keepdim=True)
        if self.init_params == "kmeans":
            labels = kmeans_labels(x, w, k, generator)
            return torch.nn.functional.one_hot(labels, k).to(x.dtype)
        if self.init_params == "k-means++":
            rows = kmeans_plusplus(x, w, k, generator)
        else:
            rows = draw_distinct_rows(w, k, generator)
        resp = x.new_zeros((n, k))
        resp[rows, torch.arange(k, device=rows.device)] = 1.0
        return resp

    def _initialize(
        self,
        x: Tensor,
        w: Tensor,
        centre: Tensor,
        inits: Inits,
        generator: torch.Generator | None,
        where: str,
    ) -> _Params:
        """Initial parameters: an M-step from the initial responsibilities, then ``*_init``."""
        ct = self.covariance_type
        weights = means = covariances = None
        if inits.weights is None or inits.means is None or inits.precisions is None:
            resp = self._initial_resp(x, w, generator) * w[:, None]
            nk, means, covariances = estimate_gaussian_parameters(x, resp, self.reg_covar, ct)
            weights = nk / w.sum()
        if inits.weights is not None:
            weights = inits.weights[0]
        if inits.means is not None:
            means = inits.means[0] - centre
        assert weights is not None and means is not None
        if inits.precisions is None:
            assert covariances is not None
            prec_chol = compute_precision_cholesky(covariances, ct, where)
        else:
            prec_chol = precision_cholesky_from_precisions(inits.precisions[0], ct)
            covariances = covariances_from_cholesky(prec_chol, ct)
        return _Params(weights, means, covariances, prec_chol)

    def _warm_params(self, centre: Tensor) -> _Params:
        """The fitted attributes as starting parameters, relative to ``centre``."""

        def to(name: str) -> Tensor:
            return self._fitted(name).to(dtype=centre.dtype, device=centre.device)

        return _Params(
            to("weights_"), to("means_") - centre, to("covariances_"), to("precisions_cholesky_")
        )

    def _fitted(self, name: str) -> Tensor:
        """A fitted array attribute as a tensor of the fit's dtype and device."""
        return torch.as_tensor(getattr(self, name), dtype=self.dtype_, device=self.device_)

    def _set_fitted(
        self, weights: Tensor, means: Tensor, covariances: Tensor, prec_chol: Tensor
    ) -> None:
        self.weights_ = weights
        self.means_ = means
        self.covariances_ = covariances
        self.precisions_cholesky_ = prec_chol
        self.precisions_ = precisions_from_cholesky(prec_chol, self.covariance_type)
        self.n_features_in_ = int(means.shape[1])
        self.dtype_ = means.dtype
        self.device_ = means.device

    # -- public API ---------------------------------------------------------------------------

    @overload
    def fit_predict(
        self, X: Tensor, y: object = None, sample_weight: Tensor | npt.ArrayLike | None = None
    ) -> Tensor: ...
    @overload
    def fit_predict(
        self,
        X: npt.ArrayLike,
        y: object = None,
        sample_weight: Tensor | npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.int64]: ...
    def fit_predict(
        self,
        X: Tensor | npt.ArrayLike,
        y: object = None,
        sample_weight: Tensor | npt.ArrayLike | None = None,
    ) -> Tensor | npt.NDArray[np.int64]:
        """Fit, then return the component of each sample (``fit(X).predict(X)``).

        Args:
            X: (N, D) samples.
            y: ignored.
            sample_weight: (N,) non-negative weights.

        Returns:
            (N,) int64 component labels (numpy for numpy input).
        """
        return self.fit(X, y, sample_weight).predict(X)

    def fit_grouped(
        self,
        X: Tensor | npt.ArrayLike,
        group_ids: Tensor | npt.ArrayLike,
        num_groups: int,
        sample_weight: Tensor | npt.ArrayLike | None = None,
    ) -> GroupedGaussianMixture:
        """Fit G independent mixtures, one per group of rows.

        Each group is fitted as :meth:`fit` would fit that group's rows alone, with the same
        hyper-parameters and the group's initial values (``*_init`` may be shared (K, …) or
        per group (G, K, …)). Random initialisations draw from one generator made from
        ``random_state``, group after group, so they differ from separate fits with the same
        seed. ``warm_start`` does not apply; ``self`` is not modified.

        Args:
            X: (N, D) samples.
            group_ids: (N,) integer group of each sample, in [0, num_groups).
            num_groups: G >= 1; every group needs at least ``n_components`` samples. A
                class absent from the data is not fitted silently as garbage: remap the
                present classes to ``0..G'-1`` first (e.g. ``torch.unique(ids,
                return_inverse=True)``).
            sample_weight: (N,) non-negative weights.

        Returns:
            The fitted :class:`GroupedGaussianMixture` (attributes with a leading G).

        Raises:
            ValueError: on invalid input (naming the group that has too few samples).

        Warns:
            ConvergenceWarning: listing the groups whose best run did not converge.
        """
        self._check_hyperparameters()
        x, _ = self._convert(X)
        dtype, device = x.dtype, x.device
        ids = check_group_ids(group_ids, num_groups, x.shape[0], device)
        w = check_sample_weight(sample_weight, x)
        k = int(self.n_components)
        counts = torch.bincount(ids, minlength=num_groups)
        positive = torch.bincount(ids, weights=(w > 0).to(torch.float64), minlength=num_groups)
        for what, per_group in (("samples", counts), ("positive sample weights", positive)):
            short = torch.nonzero(per_group < k)
            if short.numel():
                gi = int(short[0, 0])
                raise ValueError(
                    f"group {gi} has {int(per_group[gi])} {what}, fewer than "
                    f"n_components={k}; every group needs at least n_components"
                )
        inits = check_inits(
            self.weights_init,
            self.means_init,
            self.precisions_init,
            n_components=k,
            covariance_type=self.covariance_type,
            groups=num_groups,
            like=x,
        )
        generator = _generator(self.random_state)
        fits = []
        for g in range(num_groups):
            rows = ids == g
            gm = GaussianMixture(
                k,
                covariance_type=self.covariance_type,
                tol=self.tol,
                reg_covar=self.reg_covar,
                max_iter=self.max_iter,
                n_init=self.n_init,
                init_params=self.init_params,
                random_state=generator,
                dtype=dtype,
                device=device,
                chunk_size=self._chunk_size(),
            )
            gm._fit_em(x[rows], w[rows], inits.group(g), warm=False, where=f" of group {g}")
            fits.append(gm)
        failed = [g for g, gm in enumerate(fits) if not gm.converged_]
        if self.max_iter > 0 and failed:
            warnings.warn(
                f"The best initialization of group(s) {failed} did not converge within "
                f"max_iter={self.max_iter} iterations. Try different init parameters, or "
                "increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return GroupedGaussianMixture(
            covariance_type=self.covariance_type,
            weights_=torch.stack([gm._fitted("weights_") for gm in fits]),
            means_=torch.stack([gm._fitted("means_") for gm in fits]),
            covariances_=torch.stack([gm._fitted("covariances_") for gm in fits]),
            precisions_=torch.stack([gm._fitted("precisions_") for gm in fits]),
            precisions_cholesky_=torch.stack([gm._fitted("precisions_cholesky_") for gm in fits]),
            lower_bound_=torch.tensor(
                [gm.lower_bound_ for gm in fits], dtype=torch.float64, device=device
            ),
            n_iter_=torch.tensor([gm.n_iter_ for gm in fits], dtype=torch.int64, device=device),
            converged_=torch.tensor([gm.converged_ for gm in fits], device=device),
            chunk_size=self._chunk_size(),
        )

    def _check_new_x(self, X: object) -> tuple[Tensor, bool]:
        """New samples in the fit's dtype and device, and whether ``X`` was not a tensor."""
        self._check_is_fitted()
        numpy = not isinstance(X, Tensor)
        x = check_x(X, self.dtype_, self.device_)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features, but GaussianMixture is expecting "
                f"{self.n_features_in_} features as input."
            )
        return x, numpy

    def _estimate_weighted_log_prob(self, x: Tensor) -> Tensor:
        """(N, K) ``log N(x | μ_k, Σ_k) + log w_k``."""
        log_prob = log_prob_from_precision_cholesky(
            x,
            self._fitted("means_"),
            self._fitted("precisions_cholesky_"),
            self.covariance_type,
            chunk_size=self._chunk_size(),
        )
        return log_prob + torch.log(self._fitted("weights_"))

    @overload
    def score_samples(self, X: Tensor) -> Tensor: ...
    @overload
    def score_samples(self, X: npt.ArrayLike) -> npt.NDArray[np.floating[Any]]: ...
    def score_samples(self, X: Tensor | npt.ArrayLike) -> ArrayOut:
        """Log-likelihood of each sample under the mixture.

        Args:
            X: (N, D) samples.

        Returns:
            (N,) ``log p(x_n)`` (numpy for numpy input).

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: if ``X`` is not finite or has a different D than in :meth:`fit`.
        """
        x, numpy = self._check_new_x(X)
        scores = torch.logsumexp(self._estimate_weighted_log_prob(x), dim=1)
        return _to_numpy(scores) if numpy else scores

    def score(self, X: Tensor | npt.ArrayLike, y: object = None) -> float:
        """Mean log-likelihood of the samples.

        Args:
            X: (N, D) samples (numpy array or tensor).
            y: ignored (scikit-learn compatibility).

        Returns:
            ``mean_n log p(x_n)`` as a float.

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: if ``X`` is not finite or has a different D than in :meth:`fit`.
        """
        x, _ = self._check_new_x(X)
        return float(torch.logsumexp(self._estimate_weighted_log_prob(x), dim=1).mean())

    @overload
    def predict(self, X: Tensor) -> Tensor: ...
    @overload
    def predict(self, X: npt.ArrayLike) -> npt.NDArray[np.int64]: ...
    def predict(self, X: Tensor | npt.ArrayLike) -> Tensor | npt.NDArray[np.int64]:
        """Most probable component of each sample.

        Args:
            X: (N, D) samples.

        Returns:
            (N,) int64 component indices, ``argmax_k w_k N(x_n | μ_k, Σ_k)`` (numpy for numpy
            input).

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: if ``X`` is not finite or has a different D than in :meth:`fit`.
        """
        x, numpy = self._check_new_x(X)
        labels = torch.argmax(self._estimate_weighted_log_prob(x), dim=1)
        return _to_numpy(labels) if numpy else labels

    @overload
    def predict_proba(self, X: Tensor) -> Tensor: ...
    @overload
    def predict_proba(self, X: npt.ArrayLike) -> npt.NDArray[np.floating[Any]]: ...
    def predict_proba(self, X: Tensor | npt.ArrayLike) -> ArrayOut:
        """Posterior probability of each component (the responsibilities).

        Args:
            X: (N, D) samples.

        Returns:
            (N, K) probabilities, rows summing to 1 (numpy for numpy input).

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: if ``X`` is not finite or has a different D than in :meth:`fit`.
        """
        x, numpy = self._check_new_x(X)
        weighted = self._estimate_weighted_log_prob(x)
        proba = torch.exp(weighted - torch.logsumexp(weighted, dim=1, keepdim=True))
        return _to_numpy(proba) if numpy else proba

    def sample(self, n_samples: int = 1) -> tuple[ArrayOut, ArrayOut]:
        """Draw samples from the fitted mixture, ordered by component as scikit-learn does.

        An int ``random_state`` gives the same samples at every call; a ``torch.Generator`` or
        a ``numpy.random.RandomState`` advances.

        Args:
            n_samples: number of samples (>= 1).

        Returns:
            ``(X, y)``: (n_samples, D) samples and their (n_samples,) int64 components, sorted
            by component; numpy arrays if the model was fitted on numpy input, tensors on the
            model's device otherwise.

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: if ``n_samples`` is not an int >= 1.
        """
        self._check_is_fitted()
        if not is_int(n_samples) or n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples!r} . The sampling requires at "
                "least one sample."
            )
        generator = _generator(self.random_state)
        where = generator.device if generator is not None else torch.device("cpu")
        weights = self._fitted("weights_")
        x, y = sample_mixture(
            int(n_samples),
            self._fitted("means_").to(where),
            self._fitted("covariances_").to(where),
            torch.log(weights / weights.sum()).to(where),
            self.covariance_type,
            generator=generator,
        )
        order = torch.argsort(y, stable=True)
        x, y = x[order].to(self.device_), y[order].to(self.device_)
        if isinstance(self.means_, Tensor):
            return x, y
        return _to_numpy(x), _to_numpy(y)

    def _n_parameters(self) -> int:
        return n_parameters(int(self.n_components), self.n_features_in_, self.covariance_type)

    def bic(self, X: Tensor | npt.ArrayLike) -> float:
        """Bayesian information criterion ``−2 N·score(X) + p log N`` (lower is better).

        Args:
            X: (N, D) samples.

        Returns:
            The criterion as a float; ``p`` is the number of free parameters.
        """
        n = self._check_new_x(X)[0].shape[0]
        return -2.0 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X: Tensor | npt.ArrayLike) -> float:
        """Akaike information criterion ``−2 N·score(X) + 2p`` (lower is better).

        Args:
            X: (N, D) samples.

        Returns:
            The criterion as a float; ``p`` is the number of free parameters.
        """
        n = self._check_new_x(X)[0].shape[0]
        return -2.0 * self.score(X) * n + 2.0 * self._n_parameters()


@dataclass(frozen=True, eq=False)
class GroupedGaussianMixture:
    """G Gaussian mixtures fitted together by :meth:`GaussianMixture.fit_grouped`.

    Every attribute is the single-mixture attribute with a leading G dimension; row ``g``
    equals a separate fit on group ``g``'s rows.

    Attributes:
        covariance_type: shared covariance type.
        weights_: (G, K) weights.
        means_: (G, K, D) means.
        covariances_: (G, K, D, D) full, (G, D, D) tied, (G, K, D) diag or (G, K) spherical.
        precisions_: inverse covariances, same shape.
        precisions_cholesky_: upper Cholesky factors of the precisions, same shape.
        lower_bound_: (G,) float64 (weighted) mean log-likelihood of each group's best run.
        n_iter_: (G,) int64 EM iterations of each group's best run.
        converged_: (G,) bool.
        chunk_size: rows per chunk when scoring.
    """

    covariance_type: CovarianceType
    weights_: Tensor
    means_: Tensor
    covariances_: Tensor
    precisions_: Tensor
    precisions_cholesky_: Tensor
    lower_bound_: Tensor
    n_iter_: Tensor
    converged_: Tensor
    chunk_size: int | None = None

    @property
    def num_groups(self) -> int:
        """G, the number of mixtures."""
        return int(self.means_.shape[0])

    @property
    def n_components(self) -> int:
        """K, components per mixture."""
        return int(self.means_.shape[1])

    @property
    def n_features_in_(self) -> int:
        """D, the number of features."""
        return int(self.means_.shape[2])

    def mixture(self, group: int) -> GaussianMixture:
        """The fitted :class:`GaussianMixture` of one group.

        Args:
            group: index in [0, G).

        Returns:
            A fitted single mixture sharing this group's parameter tensors.
        """
        if not is_int(group) or not 0 <= group < self.num_groups:
            raise ValueError(f"group must be an int in [0, {self.num_groups}), got {group!r}")
        gm = GaussianMixture(
            self.n_components,
            covariance_type=self.covariance_type,
            chunk_size=self.chunk_size,
            dtype=self.means_.dtype,
            device=self.means_.device,
        )
        gm._set_fitted(
            self.weights_[group],
            self.means_[group],
            self.covariances_[group],
            self.precisions_cholesky_[group],
        )
        gm.converged_ = bool(self.converged_[group])
        gm.n_iter_ = int(self.n_iter_[group])
        gm.lower_bound_ = float(self.lower_bound_[group])
        gm.lower_bounds_ = []
        return gm

    def score_samples(self, X: Tensor | npt.ArrayLike) -> Tensor:
        """Log-likelihood of every sample under every group's mixture, ``log p(x | g)``.

        Args:
            X: (N, D) samples.

        Returns:
            (N, G) log-densities (e.g. class-conditional scores).
        """
        x = to_float("X", X, self.means_.dtype, self.means_.device)
        g, k, d = self.means_.shape
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"X must have shape (N, {d}), got shape {tuple(x.shape)}")
        pc: Any = self.precisions_cholesky_
        ct: CovarianceType = self.covariance_type
        if ct == "tied":
            pc, ct = pc.unsqueeze(1).expand(g, k, d, d), "full"
        log_prob = log_prob_from_precision_cholesky(
            x,
            self.means_.reshape(g * k, d),
            pc.reshape(g * k, *pc.shape[2:]),
            ct,
            chunk_size=self.chunk_size,
        )
        weighted = log_prob.reshape(-1, g, k) + torch.log(self.weights_)
        return torch.logsumexp(weighted, dim=-1)
