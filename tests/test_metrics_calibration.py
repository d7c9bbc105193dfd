"""Expected calibration error and reliability-diagram data against a plain per-pixel loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gmmseg.metrics import expected_calibration_error, reliability_diagram


def reference_ece(probs: np.ndarray, labels: np.ndarray, num_bins: int, ignore: int = 255):
    """Per-pixel loop with bins (i/M, (i+1)/M] (0 goes to the first bin)."""
    conf_sum = [0.0] * num_bins
    acc_sum = [0.0] * num_bins
    count = [0] * num_bins
    for p, y in zip(probs.tolist(), labels.tolist(), strict=True):
        if y == ignore:
            continue
        conf = max(p)
        pred = p.index(conf)
        b = 0
        while b < num_bins - 1 and conf > (b + 1) / num_bins:
            b += 1
        conf_sum[b] += conf
        acc_sum[b] += float(pred == y)
        count[b] += 1
    n = sum(count)
    ece = sum(abs(a - c) for a, c in zip(acc_sum, conf_sum, strict=True)) / n
    return ece, count


def test_hand_case() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 255])
    # bins of width 0.1: conf 0.9 correct → (0.8, 0.9]; 0.6 wrong → (0.5, 0.6]; 0.8 correct
    rd = reliability_diagram(probs, labels, num_bins=10)
    assert rd.ece == pytest.approx((0.1 + 0.6 + 0.2) / 3)
    assert rd.counts.tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 1, 0]
    assert rd.accuracy[5] == 0 and rd.accuracy[8] == 1 and math.isnan(rd.accuracy[0])
    assert rd.confidence[7] == pytest.approx(0.8)
    assert rd.bin_edges.tolist() == [i / 10 for i in range(11)]


@given(
    st.integers(1, 40),
    st.integers(2, 6),
    st.integers(1, 20),
    st.integers(0, 2**31 - 1),
)
def test_matches_loop(n: int, c: int, num_bins: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, c, size=n)
    labels[rng.random(n) < 0.2] = 255
    if (labels == 255).all():
        with pytest.raises(ValueError, match="no valid pixel"):
            expected_calibration_error(probs, labels, num_bins)
        return
    ece, count = reference_ece(probs, labels, num_bins)
    rd = reliability_diagram(probs, labels, num_bins)
    assert rd.ece == pytest.approx(ece, rel=1e-12, abs=1e-15)
    assert rd.counts.tolist() == count


def test_image_layout_equals_flat_layout() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 5, 4, 3, generator=g), dim=1)
    labels = torch.randint(0, 5, (2, 4, 3), generator=g)
    flat = expected_calibration_error(probs.permute(0, 2, 3, 1).reshape(-1, 5), labels.reshape(-1))
    assert expected_calibration_error(probs, labels) == pytest.approx(flat, rel=1e-15)


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.long), "not logits"),
        (torch.full((4, 3), 0.3), torch.zeros(4, dtype=torch.long), "sum to 1"),
        (torch.full((4, 3), 1 / 3), torch.zeros(5, dtype=torch.long), "matching sizes"),
        (torch.full((4, 3), 1 / 3), torch.full((4,), 3), r"\[0, 3\).*3 \(4 px\)"),
        (torch.full((4, 3), 1 / 3), torch.zeros(4), "integer"),
        (torch.full((4, 3), math.nan), torch.zeros(4, dtype=torch.long), "finite"),
        (torch.full((4, 3), 1 / 3), torch.full((4,), 255), "no valid pixel"),
    ],
)
def test_errors(probs: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, labels)


def test_num_bins_error() -> None:
    with pytest.raises(ValueError, match="num_bins"):
        expected_calibration_error(torch.full((1, 2), 0.5), torch.zeros(1, dtype=torch.long), 0)
