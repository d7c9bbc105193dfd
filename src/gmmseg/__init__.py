"""gmmseg: semantic segmentation with a generative Gaussian-mixture classifier.

Modules compose (see the documentation): :mod:`gmmseg.distributions`, :mod:`gmmseg.sinkhorn` and
:mod:`gmmseg.em` are the numerical core; :mod:`gmmseg.heads` and :mod:`gmmseg.segmentor` build
networks; :mod:`gmmseg.metrics` and :mod:`gmmseg.data` evaluate and feed them.
"""

from gmmseg import distributions, em, sinkhorn

__version__ = "0.1.0.dev0"

__all__ = ["__version__", "distributions", "em", "sinkhorn"]
