"""Expectation-maximisation for Gaussian mixtures: offline (batched) and online (momentum)."""
