"""Pixel anomaly metrics against the spec's hand examples, scikit-learn and the pairwise form."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from gmmseg.metrics import AnomalyMetrics

RULES = ("first_ge", "nearest", "first_gt", "interp")

# (score, #positives, #negatives) groups of the spec's §2.6 examples
EXAMPLE_A = [(0.9, 90, 0), (0.8, 4, 1), (0.7, 3, 3), (0.6, 3, 3), (0.5, 0, 3)]
EXAMPLE_B = [(0.9, 18, 0), (0.8, 1, 2), (0.7, 0, 3), (0.6, 1, 5)]


def groups_to_frame(groups: list[tuple[float, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    scores: list[float] = []
    labels: list[int] = []
    for s, p, n in groups:
        scores += [s] * (p + n)
        labels += [1] * p + [0] * n
    return torch.tensor([scores], dtype=torch.float64), torch.tensor([labels])


def run(scores, labels, **kwargs):
    m = AnomalyMetrics(**kwargs)
    m.update(scores, labels)
    return m.compute()


# ----------------------------------------------------------------- references


def sk_valid(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    valid = labels != 255
    return labels[valid].ravel(), scores[valid].ravel()


def fpr95_reference(y: np.ndarray, s: np.ndarray, rule: str) -> float:
    """Each rule as the projects compute it, on scikit-learn's roc_curve."""
    if rule in ("first_ge", "nearest"):
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)  # origin + every threshold
        if rule == "first_ge":
            return float(fpr[np.argmax(tpr >= 0.95)])
        tpr, fpr = tpr[1:], fpr[1:]
        last = int(np.argmax(tpr == 1.0))
        d = np.abs(tpr[: last + 1] - 0.95)
        return float(fpr[np.flatnonzero(d == d.min())[-1]])
    fpr, tpr, _ = roc_curve(y, s)  # the reduced curve
    if rule == "first_gt":
        return float(fpr[tpr > 0.95][0])
    return float(np.interp(0.95, tpr, fpr))  # ood-metrics' fpr_at_95_tpr


def pairwise_auroc(y: np.ndarray, s: np.ndarray) -> Fraction:
    pos, neg = s[y == 1], s[y == 0]
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return Fraction(2 * int(gt) + int(eq), 2 * pos.size * neg.size)


def raw_loglik(rng: np.random.Generator, shape, ties: str, dtype=np.float32):
    """Scores like −log p of magnitude ~1e3, optionally quantised to create heavy ties."""
    labels = (rng.random(shape) < 0.07).astype(np.int64)
    scores = 1000.0 + 30 * rng.standard_normal(shape) + 25 * labels
    if ties == "heavy":
        scores = np.round(scores / 20) * 20
    elif ties == "moderate":
        scores = np.round(scores, 0)
    labels[rng.random(shape) < 0.1] = 255
    return scores.astype(dtype), labels


# ----------------------------------------------------------------- hand cases


@pytest.mark.parametrize("mode", ["exact", "binned", "smiyc_binned"])
def test_example_a_every_rule(mode: str) -> None:
    s, y = groups_to_frame(EXAMPLE_A)
    expected = {"first_ge": 0.4, "nearest": 0.1, "first_gt": 0.7, "interp": 0.2}
    for rule in RULES if mode != "smiyc_binned" else ("first_ge",):
        res = run(s, y, mode=mode, fpr95_rule=rule)
        assert res["fpr95"] == pytest.approx(expected[rule], abs=1e-15), rule
        assert res["fpr95_rule"] == rule
        assert res["ap"] == pytest.approx(102299797 / 102666500, rel=1e-15)
        assert res["auroc"] == pytest.approx(0.974, rel=1e-15)
        assert (res["num_positives"], res["num_negatives"]) == (100, 10)


def test_example_b_every_rule() -> None:
    s, y = groups_to_frame(EXAMPLE_B)
    expected = {"first_ge": 0.2, "nearest": 0.5, "first_gt": 1.0, "interp": 0.5}
    for rule in RULES:
        res = run(s, y, fpr95_rule=rule)
        assert res["fpr95"] == expected[rule], rule
        assert res["ap"] == pytest.approx(0.9 + 0.05 * 19 / 21 + 0.05 * 20 / 30, rel=1e-15)
        assert res["auroc"] == 0.9575


@pytest.mark.parametrize("example", [EXAMPLE_A, EXAMPLE_B])
def test_hand_examples_match_sklearn_and_the_project_rules(example) -> None:
    s, y = groups_to_frame(example)
    yy, ss = y.numpy().ravel(), s.numpy().ravel()
    for rule in RULES:
        assert run(s, y, fpr95_rule=rule)["fpr95"] == pytest.approx(
            fpr95_reference(yy, ss, rule), abs=1e-15
        )


def test_curve_has_every_distinct_threshold() -> None:
    s, y = groups_to_frame(EXAMPLE_A)
    curve = run(s, y)["curve"]
    assert curve.thresholds.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert curve.tp.tolist() == [90, 94, 97, 100, 100]
    assert curve.fp.tolist() == [0, 1, 4, 7, 10]
    fpr, tpr = curve.roc()
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    precision, recall = curve.pr()
    assert precision[1] == pytest.approx(94 / 95) and recall[-1] == 1


def test_best_f1_takes_the_first_maximum() -> None:
    # threshold 0.9: TP 1, FP 0 → F1 2/3; threshold 0.5: TP 2, FP 2 → F1 2/3 again.
    s = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.1]])
    y = torch.tensor([[1, 1, 0, 0, 0]])
    for mode in ("exact", "binned", "smiyc_binned"):
        res = run(s, y, mode=mode)
        assert res["best_f1"] == pytest.approx(2 / 3)
        assert res["best_f1_threshold"] == pytest.approx(0.9, abs=1e-4), mode


# ----------------------------------------------------------- random references


@pytest.mark.parametrize("ties", ["none", "moderate", "heavy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_equals_sklearn_on_raw_logliks(ties: str, dtype) -> None:
    rng = np.random.default_rng(7)
    scores, labels = raw_loglik(rng, (4, 60, 70), ties, dtype)
    y, s = sk_valid(scores, labels)
    m = AnomalyMetrics()
    for f in range(4):
        m.update(scores[f], labels[f])
    res = m.compute()
    assert res["auroc"] == pytest.approx(roc_auc_score(y, s), rel=1e-13)
    assert res["ap"] == pytest.approx(average_precision_score(y, s), rel=1e-13)
    for rule in RULES:
        m.fpr95_rule = rule
        assert m.compute()["fpr95"] == pytest.approx(fpr95_reference(y, s, rule), abs=1e-13)


@given(
    st.integers(1, 60),
    st.integers(1, 6),
    st.floats(0.0, 0.9),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["float16", "float32", "float64"]),
)
def test_exact_matches_sklearn_and_pairwise_form(
    n: int, levels: int, void_frac: float, seed: int, dtype: str
) -> None:
    rng = np.random.default_rng(seed)
    scores = (rng.integers(0, levels, size=(2, n)) * 1e3 - 5e2).astype(dtype)  # heavy ties
    labels = rng.integers(0, 2, size=(2, n))
    labels[rng.random((2, n)) < void_frac] = 255
    labels[0, 0], scores[0, 0] = 255, np.nan  # NaN on void is allowed and never ranked
    y, s = sk_valid(scores, labels)
    if y.sum() == 0 or (y == 0).sum() == 0:
        with pytest.raises(ValueError, match="need both classes"):
            run(torch.from_numpy(scores), torch.from_numpy(labels))
        return
    res = run(torch.from_numpy(scores), torch.from_numpy(labels))
    assert res["auroc"] == float(pairwise_auroc(y, s))  # exact rational, rounded once
    assert res["auroc"] == pytest.approx(roc_auc_score(y, s), rel=1e-12)
    assert res["ap"] == pytest.approx(average_precision_score(y, s), rel=1e-12)
    for rule in RULES:
        got = run(torch.from_numpy(scores), torch.from_numpy(labels), fpr95_rule=rule)["fpr95"]
        assert got == pytest.approx(fpr95_reference(y, s, rule), abs=1e-12), rule


def test_streaming_equals_one_call_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    scores, labels = raw_loglik(rng, (6, 40, 50), "moderate")
    whole = run(torch.from_numpy(scores), torch.from_numpy(labels))
    m = AnomalyMetrics()
    m.update(scores[:2], labels[:2])
    other = AnomalyMetrics()
    for f in range(2, 6):
        other.update(scores[f], labels[f])
    m.merge(other)
    streamed = m.compute()
    for key in ("auroc", "ap", "fpr95", "best_f1", "best_f1_threshold"):
        assert streamed[key] == whole[key], key
    assert torch.equal(streamed["curve"].tp, whole["curve"].tp)
    assert m.num_frames == 6


def test_scores_are_ranked_in_the_given_precision() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(400)
    scores = 1.0 + base * 1e-9  # distinct in float64, all equal to 1.0 in float32
    labels = (base > 0.5).astype(np.int64)
    res = run(torch.from_numpy(scores[None]), torch.from_numpy(labels[None]))
    assert res["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert res["auroc"] == 1.0  # a float32 cast would tie everything and give 0.5
    res32 = run(torch.from_numpy(scores[None].astype(np.float32)), torch.from_numpy(labels[None]))
    assert res32["auroc"] == 0.5


def test_skip_frames_without_anomaly() -> None:
    s = torch.tensor([[[0.9, 0.2]], [[0.95, 0.1]]])
    y = torch.tensor([[[1, 0]], [[0, 0]]])  # frame 1 has no anomaly
    assert run(s, y)["auroc"] == pytest.approx(2 / 3)  # 0.9 beats 0.2 and 0.1, not 0.95
    res = run(s, y, skip_frames_without_anomaly=True)
    assert res["auroc"] == 1.0 and res["num_negatives"] == 1


# --------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.long), r"identical shapes.*\(2, 3\)"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), "floating"),
        (torch.zeros(2, 3), torch.zeros(2, 3), "labels must be an integer"),
        (torch.zeros(1, 3), torch.tensor([[0, 2, 2]]), r"frame 0.*2 \(2 px\).*map 2 -> 1"),
        (torch.zeros(1, 3), torch.tensor([[0, 7, 1]]), r"\{0, 1, 255\}.*7 \(1 px\)"),
        (torch.tensor([[0.0, math.nan, 1.0]]), torch.tensor([[0, 1, 1]]), r"finite.*nan \(1 px\)"),
        (torch.tensor([[0.0, math.inf]]), torch.tensor([[0, 1]]), "finite"),
    ],
)
def test_input_errors(scores, labels, match: str) -> None:
    m = AnomalyMetrics()
    with pytest.raises(ValueError, match=match):
        m.update(scores, labels)
    assert m.num_frames == 0


@pytest.mark.parametrize("mode", ["exact", "binned", "smiyc_binned"])
def test_one_class_only_raises(mode: str) -> None:
    m = AnomalyMetrics(mode=mode)
    with pytest.raises(ValueError, match="N\\+ = 0"):
        m.compute()
    m.update(torch.tensor([[0.3, 0.5]]), torch.tensor([[0, 255]]))
    with pytest.raises(ValueError, match="N\\+ = 0 anomaly and N- = 1"):
        m.compute()


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="fpr95_rule must be one of"):
        AnomalyMetrics(fpr95_rule="closest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode must be one of"):
        AnomalyMetrics(mode="smiyc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="first_ge"):
        AnomalyMetrics(mode="smiyc_binned", fpr95_rule="nearest")
    with pytest.raises(ValueError, match="num_bins is not used"):
        AnomalyMetrics(num_bins=10)
    with pytest.raises(ValueError, match="num_bins must be an int >= 2"):
        AnomalyMetrics(mode="binned", num_bins=1)
    with pytest.raises(ValueError, match="score_dtype"):
        AnomalyMetrics(score_dtype=torch.float16)
    with pytest.raises(ValueError, match="ignore_index"):
        AnomalyMetrics(ignore_index=1)


# --------------------------------------------------------------------- binned


def floored_exact(scores: np.ndarray, labels: np.ndarray, exp: int) -> dict:
    """Exact metrics of the scores floored to the dyadic grid k·2^exp (plain NumPy)."""
    floored = np.floor(scores.astype(np.float64) / 2.0**exp) * 2.0**exp
    return run(torch.from_numpy(floored), torch.from_numpy(labels))


@pytest.mark.parametrize("num_bins", [16, 1000, 1 << 16])
def test_binned_is_exact_on_the_floored_scores_in_any_order(num_bins: int) -> None:
    rng = np.random.default_rng(num_bins)
    scores, labels = raw_loglik(rng, (5, 30, 40), "none")
    scores[3] -= 400  # a later frame widens the range: the grid coarsens
    scores[4] += 900
    m = AnomalyMetrics(mode="binned", num_bins=num_bins)
    for f in range(5):
        m.update(scores[f], labels[f])
    res = m.compute()
    ref = floored_exact(scores, labels, m._exp)
    for key in ("auroc", "ap", "fpr95", "best_f1", "best_f1_threshold"):
        assert res[key] == pytest.approx(ref[key], rel=1e-14, abs=1e-14), key
    # merging instances fed in another order lands on a grid at least as fine
    a, b = (
        AnomalyMetrics(mode="binned", num_bins=num_bins),
        AnomalyMetrics(mode="binned", num_bins=num_bins),
    )
    a.update(scores[4], labels[4])
    for f in (2, 0, 1, 3):
        b.update(scores[f], labels[f])
    a.merge(b)
    merged = a.compute()
    ref = floored_exact(scores, labels, a._exp)
    assert merged["auroc"] == pytest.approx(ref["auroc"], rel=1e-14)
    assert merged["ap"] == pytest.approx(ref["ap"], rel=1e-14)
    assert m._hist is not None and tuple(m._hist.shape) == (2, num_bins)


@pytest.mark.parametrize("ties", ["none", "moderate", "heavy"])
def test_binned_error_within_reported_bound_and_1e3(ties: str) -> None:
    rng = np.random.default_rng(11)
    scores, labels = raw_loglik(rng, (8, 64, 64), ties)
    exact, binned = AnomalyMetrics(), AnomalyMetrics(mode="binned")
    for f in range(8):
        exact.update(scores[f], labels[f])
        binned.update(scores[f], labels[f])
    e, b = exact.compute(), binned.compute()
    assert abs(b["auroc"] - e["auroc"]) <= b["auroc_error_bound"] + 1e-15
    assert abs(b["ap"] - e["ap"]) <= b["ap_error_bound"] + 1e-15
    assert abs(b["auroc"] - e["auroc"]) <= 1e-3
    assert abs(b["ap"] - e["ap"]) <= 1e-3
    assert abs(b["fpr95"] - e["fpr95"]) <= 1e-3
    if ties == "none":
        assert b["auroc_error_bound"] <= 1e-3 and b["ap_error_bound"] <= 1e-3


def test_binned_bound_is_honest_with_an_outlier() -> None:
    rng = np.random.default_rng(5)
    scores, labels = raw_loglik(rng, (2, 50, 50), "none", np.float64)
    scores[1, 0, 0], labels[1, 0, 0] = 1e9, 0  # one extreme score coarsens the grid
    exact, binned = AnomalyMetrics(), AnomalyMetrics(mode="binned", num_bins=64)
    for f in range(2):
        exact.update(scores[f], labels[f])
        binned.update(scores[f], labels[f])
    e, b = exact.compute(), binned.compute()
    assert abs(b["auroc"] - e["auroc"]) > 1e-3  # a real loss of resolution...
    assert abs(b["auroc"] - e["auroc"]) <= b["auroc_error_bound"]  # ...that the bound reports
    assert abs(b["ap"] - e["ap"]) <= b["ap_error_bound"]


def test_binned_constant_scores_then_spread() -> None:
    m = AnomalyMetrics(mode="binned", num_bins=8)
    m.update(torch.full((1, 4), -3.0), torch.tensor([[0, 1, 0, 1]]))
    m.update(torch.tensor([[5.0, -100.0]]), torch.tensor([[1, 0]]))
    res = m.compute()
    s = np.array([-3.0] * 4 + [5.0, -100.0])
    y = np.array([0, 1, 0, 1, 1, 0])
    ref = floored_exact(s[None], y[None], m._exp)
    assert res["auroc"] == ref["auroc"] and res["num_positives"] == 3


# ---------------------------------------------------------------------- SMIYC


def spec_quantiles(values: np.ndarray, levels: int) -> list[float]:
    """§3 step 2 as the toolkit calls it: numpy's quantiles at linspace's own levels."""
    k = min(levels, values.size)
    return np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, k)).tolist()


def old_quantiles(values: np.ndarray, levels: int) -> list[float]:
    """The levels i/(k − 1) that gmmseg used before (not the toolkit's), level by level."""
    x = sorted(values.tolist())
    n = len(x)
    k = min(levels, n)
    out = []
    for i in range(k):
        q = i / (k - 1) if k > 1 else 0.0
        h = q * (n - 1)
        lo = math.floor(h)
        nxt = x[min(lo + 1, n - 1)]
        out.append(x[lo] + (h - lo) * (nxt - x[lo]))
    return out


def smiyc_reference(frames: list[tuple[np.ndarray, np.ndarray]], levels: int = 384):
    """The §3 binning with a per-pixel loop: b(s) = max{e in E_f : e <= s}."""
    ys, bs = [], []
    for s, y in frames:
        valid = y != 255
        s, y = s[valid].astype(np.float64), y[valid]
        edges: set[float] = set()
        for part in (s[y == 1], s[y == 0]):
            if part.size:
                edges.update(spec_quantiles(part, levels))
        bs.extend(max(e for e in edges if e <= v) for v in s.tolist())
        ys.append(y)
    return np.concatenate(ys), np.array(bs)


def test_smiyc_few_values_every_edge_is_a_score() -> None:
    # 17 = 2^4 + 1 scores per class and frame: the levels i/16 and h = 16·q are exact, so every
    # quantile is an order statistic, each score is its own bin edge and the result is exact.
    rng = np.random.default_rng(2)
    s = rng.normal(size=(3, 2, 17)).round(2)
    y = np.stack([rng.permutation([1] * 17 + [0] * 17).reshape(2, 17) for _ in range(3)])
    a = run(torch.from_numpy(s), torch.from_numpy(y), mode="smiyc_binned")
    b = run(torch.from_numpy(s), torch.from_numpy(y))
    for key in ("auroc", "ap", "fpr95", "best_f1", "best_f1_threshold"):
        assert a[key] == b[key], key


def test_smiyc_frames_share_thresholds_and_match_reference() -> None:
    rng = np.random.default_rng(9)
    frames = []
    for f in range(4):
        s = np.round(rng.normal(f % 2, 1, size=(30, 40)), 1)  # many shared values across frames
        y = (rng.random((30, 40)) < 0.2).astype(np.int64)
        y[rng.random((30, 40)) < 0.1] = 255
        frames.append((s, y))
    frames.append((rng.random((20, 20)), np.zeros((20, 20), dtype=np.int64)))  # no positives
    frames.append((rng.random((30, 30)), rng.integers(0, 2, (30, 30))))  # > 384 per class
    m = AnomalyMetrics(mode="smiyc_binned")
    for s, y in frames:
        m.update(s, y)
    res = m.compute()
    y, b = smiyc_reference(frames)
    assert res["ap"] == pytest.approx(average_precision_score(y, b), rel=1e-12)
    assert res["auroc"] == pytest.approx(roc_auc_score(y, b), rel=1e-12)
    assert res["fpr95"] == pytest.approx(fpr95_reference(y, b, "first_ge"), abs=1e-12)
    ref_thr = run(torch.from_numpy(b[None]), torch.from_numpy(y[None]))
    assert res["best_f1_threshold"] == ref_thr["best_f1_threshold"]
    assert math.isnan(res["auroc_error_bound"])


def test_smiyc_float16_emulation() -> None:
    rng = np.random.default_rng(4)
    s = rng.normal(0, 3, size=(2, 30, 30))
    y = rng.integers(0, 2, size=(2, 30, 30))
    a = run(
        torch.from_numpy(s), torch.from_numpy(y), mode="smiyc_binned", score_dtype=torch.float16
    )
    s16 = torch.from_numpy(s).half()
    b = run(s16, torch.from_numpy(y), mode="smiyc_binned")
    assert a["ap"] == b["ap"] and a["best_f1_threshold"] == b["best_f1_threshold"]
    m = AnomalyMetrics(mode="smiyc_binned", score_dtype=torch.float16)
    with pytest.raises(ValueError, match=r"overflow float16.*70000"):
        m.update(torch.tensor([[70000.0, 1.0]]), torch.tensor([[1, 0]]))


@given(
    st.integers(0, 2**31 - 1),
    st.integers(2, 300),
    st.sampled_from([1e-3, 1.0, 1e3, 1e6]),
    st.sampled_from(["float32", "float64"]),
)
def test_binned_equals_floored_exact_property(seed: int, num_bins: int, scale: float, dtype: str):
    rng = np.random.default_rng(seed)
    frames = [
        (
            (rng.normal(rng.normal() * scale, scale * rng.random(), size=(3, 5))).astype(dtype),
            rng.integers(0, 2, size=(3, 5)),
        )
        for _ in range(3)
    ]
    m = AnomalyMetrics(mode="binned", num_bins=num_bins)
    for s, y in frames:
        m.update(s, y)
    s = np.stack([f[0] for f in frames])
    y = np.stack([f[1] for f in frames])
    if y.all() or not y.any():
        return
    res = m.compute()
    ref = floored_exact(s, y, m._exp)
    assert res["auroc"] == ref["auroc"] and res["ap"] == pytest.approx(ref["ap"], rel=1e-14)
    assert res["num_positives"] + res["num_negatives"] == s.size
    assert len(res["curve"].thresholds) <= num_bins


def test_input_types_and_precisions() -> None:
    s = torch.tensor([[0.5, 0.25, 0.75, 0.125]])
    y = torch.tensor([[1, 0, 1, 0]], dtype=torch.uint8)
    ref = run(s, y)["auroc"]
    assert ref == 1.0
    assert run(s.numpy(), y.numpy())["auroc"] == ref
    assert run(s.bfloat16(), y)["auroc"] == ref
    assert run(s.half(), y.int())["auroc"] == ref
    m = AnomalyMetrics()
    m.update(s.half(), y)
    m.update(s.double(), y)  # frames in different precisions are promoted exactly
    assert m.compute()["num_positives"] == 4


@pytest.mark.parametrize("mode", ["exact", "binned", "smiyc_binned"])
def test_all_reduce_is_noop_without_process_group(mode: str) -> None:
    s, y = groups_to_frame(EXAMPLE_B)
    m = AnomalyMetrics(mode=mode)
    m.update(s, y)
    before = m.compute()["ap"]
    m.all_reduce()
    assert m.compute()["ap"] == before
    m.reset()
    assert m.num_frames == 0


def test_binned_tiny_and_huge_magnitudes() -> None:
    for s in ([[1e-300, 2e-300, 3e-300, 4e-300]], [[-1e300, 1e299, 1e300, 2e300]]):
        m = AnomalyMetrics(mode="binned")
        m.update(torch.tensor(s, dtype=torch.float64), torch.tensor([[0, 0, 1, 1]]))
        assert m.compute()["auroc"] == 1.0


def test_error_names_the_frame_of_a_batch() -> None:
    m = AnomalyMetrics()
    m.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    y = torch.zeros(3, 2, 2, dtype=torch.long)
    y[2, 0, 0] = 5
    with pytest.raises(ValueError, match=r"frame 3 \(batch index 2\)"):
        m.update(torch.zeros(3, 2, 2), y)


def test_smiyc_frame_without_valid_pixels_contributes_nothing() -> None:
    s, y = groups_to_frame(EXAMPLE_B)
    m = AnomalyMetrics(mode="smiyc_binned")
    m.update(s, y)
    m.update(torch.rand(4, 4), torch.full((4, 4), 255))
    assert m.compute()["auroc"] == 0.9575 and m.num_frames == 2


def test_merge_rejects_other_config() -> None:
    with pytest.raises(ValueError, match="same \\(mode, num_bins"):
        AnomalyMetrics().merge(AnomalyMetrics(mode="binned"))


# ------------------------------------------------- SMIYC levels (toolkit parity)


def smiyc_curve_reference(frames, quantiles=spec_quantiles, levels: int = 384):
    """Pooled (threshold, #pos, #neg) of the binned scores, by a plain dictionary count."""
    y, b = smiyc_reference_with(frames, quantiles, levels)
    counts: dict[float, list[int]] = {}
    for v, lab in zip(b.tolist(), y.tolist(), strict=True):
        counts.setdefault(v, [0, 0])[0 if lab == 1 else 1] += 1
    thr = sorted(counts, reverse=True)
    return thr, [counts[t][0] for t in thr], [counts[t][1] for t in thr]


def smiyc_reference_with(frames, quantiles, levels):
    ys, bs = [], []
    for s, y in frames:
        valid = y != 255
        s, y = s[valid].astype(np.float64), y[valid]
        edges: set[float] = set()
        for part in (s[y == 1], s[y == 0]):
            if part.size:
                edges.update(quantiles(part, levels))
        bs.extend(max(e for e in edges if e <= v) for v in s.tolist())
        ys.append(y)
    return np.concatenate(ys), np.array(bs)


def metric_curve(m: AnomalyMetrics):
    c = m.compute()["curve"]
    tp, fp = c.tp.numpy(), c.fp.numpy()
    return (
        c.thresholds.tolist(),
        np.diff(tp, prepend=0).tolist(),
        np.diff(fp, prepend=0).tolist(),
    )


@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 8), min_size=1, max_size=60),  # quantised positive scores
            st.lists(st.integers(0, 8), min_size=1, max_size=60),  # quantised negative scores
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([3.0, 7.0, 10.0]),
)
def test_smiyc_binning_small_counts_equals_numpy_quantile_at_linspace_levels(parts, div):
    # Fewer than 384 pixels per class and frame: every level matters, and ties are everywhere.
    frames = []
    for pos, neg in parts:
        s = np.array(pos + neg, dtype=np.float64)[None] / div
        y = np.array([1] * len(pos) + [0] * len(neg))[None]
        frames.append((s, y))
    m = AnomalyMetrics(mode="smiyc_binned")
    for s, y in frames:
        m.update(s, y)
    assert metric_curve(m) == smiyc_curve_reference(frames)


def test_smiyc_levels_are_linspace_not_i_over_k_minus_1() -> None:
    # 6 positives with ties: level i/(k−1) and linspace's float differ in the last bit, and
    # numpy's quantile at linspace's level is 0.7500000000000001 where i/(k−1) gives 0.75; the
    # other frame has 0.75 itself as an edge, so the pooled curves differ.
    pos = np.sort(np.random.default_rng(5).integers(0, 5, 6).astype(np.float64) / 4)
    old, new = old_quantiles(pos, 384), spec_quantiles(pos, 384)
    assert old != new  # the two level conventions give different edges here
    frames = [
        (np.concatenate([pos, [0.5, 0.25]])[None], np.array([[1] * 6 + [0, 0]])),
        (np.array([[0.5, 0.5, 0.75, 0.0]]), np.array([[1, 0, 0, 0]])),
    ]
    m = AnomalyMetrics(mode="smiyc_binned")
    for s, y in frames:
        m.update(s, y)
    got = metric_curve(m)
    assert got == smiyc_curve_reference(frames, spec_quantiles)
    assert got != smiyc_curve_reference(frames, old_quantiles)


def toolkit_frame_bins(scores: np.ndarray, labels: np.ndarray, levels: int = 384):
    """The SMIYC toolkit's per-frame binning ("percentiles" strategy), restated.

    On the array as read from the submission file (float16): edges = the outer pair
    v_min − ε, v_max + ε and ``np.quantile`` of each class at linspace levels, deduplicated;
    ``np.histogram`` counts each class per bin. Returns (lower edge, #pos, #neg) of every bin.
    """
    roi = labels < 255
    prob, gt = scores[roi], labels[roi].astype(bool)
    vmin, vmax = float(np.min(prob)), float(np.max(prob))
    eps = max((vmax - vmin) * 1e-2, 1e-2)  # float64 scalars under the toolkit's NumPy 1.23
    bins = [np.array([vmin - eps, vmax + eps])]
    for x in (prob[gt], prob[~gt]):
        if x.size:
            bins.append(np.quantile(x, np.linspace(0, 1, min(levels, x.size))))
    edges = np.unique(np.concatenate(bins))
    tp_rel, _ = np.histogram(prob[gt], bins=edges)
    fp_rel, _ = np.histogram(prob[~gt], bins=edges)
    return edges[:-1], tp_rel, fp_rel


def test_smiyc_float16_edges_are_the_toolkits_float16_quantiles() -> None:
    # numpy interpolates a quantile as x_i + γ·(x_{i+1} − x_i) with the difference computed in
    # the array's dtype: on the float16 array the toolkit reads, wide gaps between consecutive
    # scores give other edge values (thresholds, hence δ) than on a float64 copy.
    assert np.quantile(np.array([0.001, 1000], np.float16), [0.3])[0] == pytest.approx(
        300.0010004, abs=1e-7
    )
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(2):
        pos = 1e-3 * 2.5 ** rng.integers(0, 20, 400) * rng.uniform(1, 1.2, 400)
        neg = rng.uniform(0, 60000, 3000)
        s = np.concatenate([pos, neg]).astype(np.float16)[None]
        y = np.r_[np.ones(400, np.int64), np.zeros(3000, np.int64)][None]
        y[0, ::97] = 255
        frames.append((s, y))
    counts: dict[float, list[int]] = {}
    for s, y in frames:
        for e, p, n in zip(*toolkit_frame_bins(s[0], y[0]), strict=True):
            if p + n:
                c = counts.setdefault(float(e), [0, 0])
                c[0] += int(p)
                c[1] += int(n)
    thr = sorted(counts, reverse=True)
    want = (thr, [counts[t][0] for t in thr], [counts[t][1] for t in thr])
    for score_dtype, given_dtype in ((torch.float16, np.float64), (None, np.float16)):
        m = AnomalyMetrics(mode="smiyc_binned", score_dtype=score_dtype)
        for s, y in frames:
            m.update(s.astype(given_dtype), y)
        assert metric_curve(m) == want
    # The quantiles of a float64 copy (the rule before) give other thresholds on this data.
    float64_copy = [(s.astype(np.float64), y) for s, y in frames]
    assert want != smiyc_curve_reference(float64_copy, spec_quantiles)


def test_smiyc_float16_quantile_overflow_is_an_error() -> None:
    # Consecutive scores 60000 apart with opposite signs: their float16 difference overflows,
    # numpy's quantile returns inf / NaN edges (the toolkit's histogram would be garbage).
    s = np.array([[-40000.0] * 200 + [40000.0] * 250 + [0.0] * 10], np.float16)
    y = np.array([[1] * 450 + [0] * 10])
    m = AnomalyMetrics(mode="smiyc_binned", score_dtype=torch.float16)
    with pytest.raises(ValueError, match=r"frame 0 \(batch index 0\): a SMIYC bin edge is not"):
        m.update(s, y)
    assert m.num_frames == 0
