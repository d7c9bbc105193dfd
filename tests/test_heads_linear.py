"""LinearClassifier and the logit anomaly scores, against plain NumPy/SciPy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp, softmax
from scipy.stats import entropy

from gmmseg.heads.anomaly import (
    energy_score,
    entropy_score,
    logit_anomaly_score,
    max_logit_score,
    msp_score,
)
from gmmseg.heads.linear import LinearClassifier


@given(
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 4),
    st.sampled_from([1e-3, 1.0, 100.0]),
    st.integers(0, 2**31 - 1),
)
def test_logit_scores_match_numpy(b: int, c: int, hw: int, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    z = scale * rng.normal(size=(b, c, hw, hw))
    zt = torch.from_numpy(z)
    p = softmax(z, axis=1)
    np.testing.assert_allclose(msp_score(zt).numpy(), 1 - p.max(1), atol=1e-12)
    np.testing.assert_allclose(max_logit_score(zt).numpy(), -z.max(1))
    np.testing.assert_allclose(energy_score(zt).numpy(), -logsumexp(z, axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        energy_score(zt, temperature=2.0).numpy(), -2 * logsumexp(z / 2, axis=1), rtol=1e-12
    )
    np.testing.assert_allclose(entropy_score(zt).numpy(), entropy(p, axis=1), atol=1e-10)
    assert torch.equal(logit_anomaly_score(zt, "energy"), energy_score(zt))


def test_scores_upcast_half_precision() -> None:
    z = torch.randn(1, 3, 2, 2).bfloat16()
    assert msp_score(z).dtype == torch.float32


@pytest.mark.parametrize(
    ("logits", "match"),
    [
        (torch.zeros(3), "shape"),
        (torch.zeros(1, 2, 2, dtype=torch.int64), "floating"),
        (torch.tensor([[[[float("nan")]]]]), "finite"),
    ],
)
def test_scores_reject_bad_logits(logits: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        msp_score(logits)


def test_unknown_method_and_temperature() -> None:
    with pytest.raises(ValueError, match="method"):
        logit_anomaly_score(torch.zeros(1, 2, 1, 1), "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        energy_score(torch.zeros(1, 2, 1, 1), temperature=0.0)


def test_linear_classifier_forward_is_a_1x1_conv() -> None:
    torch.manual_seed(0)
    head = LinearClassifier(num_classes=4, in_channels=6).eval()
    x = torch.randn(2, 6, 5, 7)
    out = head(x)
    w = head.classifier.weight[:, :, 0, 0]
    assert head.classifier.bias is not None
    ref = torch.einsum("bchw,kc->bkhw", x, w) + head.classifier.bias[None, :, None, None]
    torch.testing.assert_close(out.logits, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("average", ["all", "valid"])
def test_linear_classifier_loss_matches_plain_ce(average: str, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    head = LinearClassifier(num_classes=3, in_channels=4, loss_average=average).eval()  # type: ignore[arg-type]
    head.to(dtype)
    out = head(torch.randn(2, 4, 3, 3, dtype=dtype))
    target = torch.randint(0, 3, (2, 6, 6))
    target[0, :2] = 255
    loss = head.loss(out, target)["loss_seg"]
    up = torch.nn.functional.interpolate(
        out.logits, size=(6, 6), mode="bilinear", align_corners=False
    )
    # Plain reference: per-pixel -log softmax at the label, averaged as documented.
    logp = torch.log_softmax(up, dim=1).permute(0, 2, 3, 1).reshape(-1, 3).detach().numpy()
    t = target.reshape(-1).numpy()
    valid = t != 255
    nll = -logp[np.arange(len(t))[valid], t[valid]]
    expected = nll.sum() / (len(t) if average == "all" else valid.sum())
    assert loss.dtype == dtype  # float64 logits keep a float64 loss
    np.testing.assert_allclose(
        loss.item(), expected, rtol=1e-5 if dtype == torch.float32 else 1e-13
    )


def test_linear_classifier_all_ignore_loss_is_zero_not_nan() -> None:
    head = LinearClassifier(num_classes=3, in_channels=4, loss_average="valid")
    out = head(torch.randn(1, 4, 2, 2))
    loss = head.loss(out, torch.full((1, 4, 4), 255))["loss_seg"]
    assert loss.item() == 0.0


def test_linear_classifier_errors() -> None:
    head = LinearClassifier(num_classes=3, in_channels=4)
    with pytest.raises(ValueError, match=r"features must have shape \(B, 4, H, W\)"):
        head(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match="finite"):
        head(torch.full((1, 4, 2, 2), float("nan")))
    out = head(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match=r"target values must be in \[0, 3\).*\[3, 7\]"):
        head.loss(out, torch.tensor([[[0, 3], [7, 255]]]))
    with pytest.raises(ValueError, match="integer"):
        head.loss(out, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="batch size"):
        head.loss(out, torch.zeros(2, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="dropout"):
        LinearClassifier(3, 4, dropout=1.0)


def test_linear_classifier_anomaly_score_and_update() -> None:
    """Each score against its formula written here in plain torch; update() changes nothing."""
    torch.manual_seed(0)
    head = LinearClassifier(num_classes=3, in_channels=4).eval()
    with torch.no_grad():  # logits of a useful size (the init has std 0.01)
        head.classifier.weight.normal_(0.0, 1.0)
    out = head(torch.randn(2, 4, 3, 3))
    z = out.logits.detach().double()
    p = z.exp() / z.exp().sum(dim=1, keepdim=True)
    expected = {
        "msp": 1.0 - p.max(dim=1).values,
        "max_logit": -z.max(dim=1).values,
        "energy": -z.exp().sum(dim=1).log(),
        "entropy": -(p * p.log()).sum(dim=1),
    }
    for method, reference in expected.items():
        got = head.anomaly_score(out, method)  # type: ignore[arg-type]
        assert got.shape == (2, 3, 3), method
        torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=1e-6, msg=method)
    assert float(expected["msp"].std()) > 1e-3  # the scores do vary across pixels
    torch.testing.assert_close(head.anomaly_score(out), expected["msp"].float())  # the default
    before = {k: v.clone() for k, v in head.state_dict().items()}
    head.train()
    result = head.update(out, torch.zeros(2, 3, 3, dtype=torch.int64))
    assert result is None
    after = head.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
