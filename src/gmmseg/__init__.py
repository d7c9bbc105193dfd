"""gmmseg: semantic segmentation with a generative Gaussian-mixture classifier.

The package is organised as small modules that compose (see the documentation):
:mod:`gmmseg.distributions`, :mod:`gmmseg.sinkhorn` and :mod:`gmmseg.em` form the numerical core.
"""

from gmmseg import distributions, em, sinkhorn

__version__ = "0.1.0.dev0"

__all__ = ["__version__", "distributions", "em", "sinkhorn"]
