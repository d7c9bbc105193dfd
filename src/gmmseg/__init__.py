"""gmmseg: semantic segmentation with a generative Gaussian-mixture classifier."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
