"""GMMClassifier against a plain per-class / per-component implementation of the algorithm.

The algorithm is the one docs/algorithm.md states step by step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from gmmseg.em import ComponentMemory, MixtureMemory, StreamingStatistics
from gmmseg.heads import GMMClassifier, LinearClassifier


class NaiveGMMHead:
    """The algorithm written plainly: broadcast densities, loops over classes and components."""

    def __init__(self, head: GMMClassifier) -> None:
        self.head = head  # only its learnable layers (projection, norms) are used
        self.c, self.m, self.d = head.num_classes, head.num_components, head.embed_dim
        self.means = head.means.clone().double()
        self.scales = head.scales.clone().double()
        self.bank = head.memory.bank.clone().double()  # type: ignore[union-attr]
        self.ptr = [[0] * self.m for _ in range(self.c)]
        self.step = 0

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.head
        x = features if h.projection is None else h.projection(features)
        b, _, hh, ww = x.shape
        x = x.permute(0, 2, 3, 1).reshape(-1, self.d)
        x = F.normalize(h.feature_norm(x), dim=-1).double()
        mu = F.normalize(self.means, dim=-1)
        sig = self.scales
        ell = torch.empty(x.shape[0], self.c, self.m, dtype=torch.float64)
        for c in range(self.c):
            for m in range(self.m):
                diff = (x - mu[c, m]) / sig[c, m]
                ell[:, c, m] = (
                    -0.5 * self.d * math.log(2 * math.pi)
                    - torch.log(sig[c, m]).sum()
                    - 0.5 * (diff**2).sum(-1)
                )
        s = ell.max(dim=-1).values
        z = h.logit_norm(s.to(h.logit_norm.weight.dtype))
        return {"x": x, "ell": ell, "s": s, "z": z, "shape": torch.tensor([b, hh, ww])}

    def e_step(self, ell: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        eps, iters = self.head.sinkhorn_epsilon, self.head.sinkhorn_iters
        out = torch.full_like(gt, -1)
        for k in gt.unique().tolist():
            if k == 255:
                continue
            sel = gt == k
            q = ell[sel, k, :].clone()
            q = q / q.abs().max()
            big_q = torch.exp(q / eps).T  # M × N_k, as the original
            big_q = big_q / big_q.sum()
            for _ in range(iters):
                big_q = big_q / big_q.sum(dim=1, keepdim=True) / big_q.shape[0]
                big_q = big_q / big_q.sum(dim=0, keepdim=True) / big_q.shape[1]
            out[sel] = big_q.T.argmax(dim=1)
        return out

    def update(
        self, x: torch.Tensor, z: torch.Tensor, gt: torch.Tensor, assign: torch.Tensor
    ) -> None:
        h = self.head
        cap = self.bank.shape[2]
        correct = (z.argmax(dim=1) == gt) & (gt != 255)
        for k in range(self.c):
            for m in range(self.m):
                rows = torch.nonzero(correct & (gt == k) & (assign == m))[:, 0]
                n = len(rows)
                if n == 0:
                    continue
                if n > h.memory.max_per_step:  # type: ignore[union-attr,operator]
                    keep = torch.linspace(0, n - 1, h.memory.max_per_step, dtype=torch.int64)  # type: ignore[union-attr,arg-type]
                    rows = rows[keep]
                for r in rows.tolist():
                    self.bank[k, m, self.ptr[k][m]] = x[r]
                    self.ptr[k][m] = (self.ptr[k][m] + 1) % cap
        if self.step % h.update_interval == 0:
            mu = F.normalize(self.means, dim=-1)
            for k in gt.unique().tolist():
                if k == 255:
                    continue
                for m in range(self.m):
                    e = self.bank[k, m]
                    f = F.normalize(e.sum(0), dim=0)
                    mu[k, m] = h.mean_momentum * mu[k, m] + (1 - h.mean_momentum) * f
                    new_sig = torch.sqrt(((e - f) ** 2).mean(0) + h.variance_floor)
                    self.scales[k, m] = (
                        h.scale_momentum * self.scales[k, m] + (1 - h.scale_momentum) * new_sig
                    )
            self.means = mu
        else:
            self.means = F.normalize(self.means, dim=-1)
        self.step += 1


def make_head(**kw: object) -> GMMClassifier:
    defaults: dict[str, object] = {
        "embed_dim": 8,
        "num_components": 3,
        "memory_size": 40,
        "max_samples_per_component": 4,
        "update_interval": 2,
        "generator": torch.Generator().manual_seed(0),
    }
    defaults.update(kw)
    return GMMClassifier(4, 12, **defaults)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_steps_equal_plain_loop(dtype: torch.dtype) -> None:
    """float32 within its rounding; a ``.double()`` head (buffers and memory converted) runs the
    forward, E-step, losses, memory write and M-step in float64 and agrees to ~1e-12."""
    torch.manual_seed(0)
    head = make_head(mean_momentum=0.9)  # a larger step makes the M-step visible
    head.eval()  # BatchNorm in eval so both implementations see the same projection
    head.to(dtype)
    tight = dtype == torch.float64
    tol = {"atol": 1e-12, "rtol": 1e-12} if tight else {"atol": 1e-6, "rtol": 1e-5}
    ref = NaiveGMMHead(head)
    for step in range(6):
        feats = torch.randn(2, 12, 5, 6, dtype=dtype)
        target = torch.randint(0, 4, (2, 10, 12))
        target[:, :2, :3] = 255
        out = head(feats)
        r = ref.forward(feats)
        assert out.component_log_prob.dtype == out.logits.dtype == dtype
        torch.testing.assert_close(
            out.component_log_prob.permute(0, 3, 4, 1, 2).reshape(-1, 4, 3).double(),
            r["ell"],
            rtol=1e-12 if tight else 1e-5,
            atol=1e-11 if tight else 2e-4,
        )
        torch.testing.assert_close(
            out.logits.permute(0, 2, 3, 1).reshape(-1, 4),
            r["z"],
            atol=1e-11 if tight else 2e-4,
            rtol=1e-11 if tight else 1e-4,
        )
        gt = F.interpolate(target[:, None].float(), size=(5, 6), mode="nearest").long().reshape(-1)
        assign = head.e_step(out, target)
        ref_assign = ref.e_step(r["ell"], gt)
        assert torch.equal(assign, ref_assign), f"step {step}"
        # Losses: CE on upsampled logits over all label pixels + weighted component CE.
        losses = head.loss(out, target, assign)
        up = F.interpolate(out.logits, size=(10, 12), mode="bilinear", align_corners=False)
        logp = torch.log_softmax(up, 1).permute(0, 2, 3, 1).reshape(-1, 4)
        t = target.reshape(-1)
        v = t != 255
        exp_seg = -logp[v, t[v]].sum() / t.numel()
        torch.testing.assert_close(losses["loss_seg"], exp_seg)
        comp_logp = torch.log_softmax(r["ell"].reshape(-1, 12), 1)
        valid = gt != 255
        tgt = gt[valid] * 3 + ref_assign[valid]
        exp_comp = -comp_logp[valid][torch.arange(int(valid.sum())), tgt].mean() * 0.01
        torch.testing.assert_close(
            losses["loss_component"].double(),
            exp_comp,
            rtol=1e-12 if tight else 1e-4,
            atol=1e-12 if tight else 1e-6,
        )
        assert all(v.dtype == dtype for v in losses.values())
        head.update(out, target, assign)
        ref.update(r["x"], r["z"], gt, ref_assign)
        assert head.memory.bank.dtype == head.means.dtype == head.scales.dtype == dtype  # type: ignore[union-attr]
        torch.testing.assert_close(head.memory.bank.double(), ref.bank, **tol)  # type: ignore[union-attr]
        torch.testing.assert_close(head.means.double(), ref.means, **tol)
        torch.testing.assert_close(head.scales.double(), ref.scales, **tol)
    assert int(head.step) == 6


def test_float64_log_densities_equal_scipy() -> None:
    """ℓ_ncm = Σ_d log N(x_d | μ_cmd, σ_cmd) in float64, with σ ≠ 1 and unnormalised means."""
    scipy_stats = pytest.importorskip("scipy.stats")
    head = make_head().double().eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        head.means.copy_(torch.randn(head.means.shape, generator=g, dtype=torch.float64))
        head.scales.copy_(0.2 + torch.rand(head.scales.shape, generator=g, dtype=torch.float64))
    feats = torch.randn(2, 12, 3, 4, generator=g, dtype=torch.float64)
    out = head(feats)
    x = out.embeddings.permute(0, 2, 3, 1).reshape(-1, 8).detach().numpy()
    mu = F.normalize(head.means, dim=-1).numpy()
    sig = head.scales.numpy()
    expected = scipy_stats.norm.logpdf(x[:, None, None, :], mu[None], sig[None]).sum(-1)
    got = out.component_log_prob.permute(0, 3, 4, 1, 2).reshape(-1, 4, 3).detach().numpy()
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    s = torch.from_numpy(expected.max(-1))
    z = F.layer_norm(s, (4,), head.logit_norm.weight.detach(), head.logit_norm.bias.detach())
    torch.testing.assert_close(out.logits.permute(0, 2, 3, 1).reshape(-1, 4).detach(), z)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_head_computes_in_float32(dtype: torch.dtype) -> None:
    """A ``.half()`` head works on CPU: its layers run in half, densities to logits in float32."""
    head = make_head().eval()
    ref = head(torch.randn(2, 12, 3, 4, generator=torch.Generator().manual_seed(0)))
    head.to(dtype).train()
    feats = torch.randn(2, 12, 3, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = head(feats)
    assert out.component_log_prob.dtype == out.logits.dtype == torch.float32
    head.eval()
    close = head(feats)
    torch.testing.assert_close(close.class_log_prob, ref.class_log_prob, atol=0.1, rtol=0.02)
    target = torch.randint(0, 4, (2, 6, 8))
    head.train()
    for _ in range(3):  # the third step runs the M-step (update_interval 2)
        out = head(feats)
        losses = head.loss(out, target)
        sum(losses.values()).backward()  # type: ignore[union-attr]
        head.update(out, target)
    assert head.projection is not None and head.projection[0].weight.grad.dtype == dtype
    assert head.means.dtype == head.scales.dtype == head.memory.bank.dtype == dtype  # type: ignore[union-attr]
    assert bool(torch.isfinite(head.means).all() and torch.isfinite(head.scales).all())


# ------------------------------------------------------------------ dropout


def test_dropout_is_identity_in_eval_and_adds_no_state() -> None:
    plain = make_head().eval()
    dropped = make_head(dropout=0.5).eval()
    assert set(dropped.state_dict()) == set(plain.state_dict())
    dropped.load_state_dict(plain.state_dict())
    feats = torch.randn(2, 12, 3, 4)
    a, b = plain(feats), dropped(feats)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.embeddings, b.embeddings)
    assert make_head().dropout.p == 0.0  # off by default


def test_dropout_zeroes_whole_channels_in_training() -> None:
    p, b, c = 0.3, 8, 256
    head = GMMClassifier(4, c, embed_dim=8, num_components=2, memory_size=4, dropout=p).train()
    seen: list[torch.Tensor] = []
    assert head.projection is not None
    head.projection.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    torch.manual_seed(0)
    head(torch.ones(b, c, 3, 5))
    x = seen[0]
    per_channel = x.reshape(b, c, -1)
    zero = (per_channel == 0).all(-1)
    kept = torch.isclose(per_channel, torch.tensor(1 / (1 - p))).all(-1)
    assert bool((zero | kept).all())  # whole channels, survivors scaled by 1 / (1 - p)
    rate = float(zero.double().mean())
    # 2048 Bernoulli(0.3) draws: standard deviation 0.01
    assert abs(rate - p) < 0.05, rate
    seen.clear()
    head.eval()(torch.ones(b, c, 3, 5))
    assert bool((seen[0] == 1).all())


def test_dropout_applies_without_projection() -> None:
    head = GMMClassifier(3, 8, embed_dim=8, memory_size=4, dropout=0.5).train()
    assert head.projection is None
    torch.manual_seed(0)
    feats = torch.randn(4, 8, 3, 3)
    assert not torch.equal(head(feats).embeddings, head.eval()(feats).embeddings)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, True, float("nan")])
def test_dropout_validation(bad: float) -> None:
    with pytest.raises(ValueError, match=r"dropout must be a float in \[0, 1\), got"):
        make_head(dropout=bad)


@pytest.mark.parametrize("loss_average", ["all", "valid"])
def test_upsample_before_norm_loss(loss_average: str) -> None:
    """loss_seg = CE(LayerNorm(bilinear-upsampled s), y), the LayerNorm written out."""
    feats = torch.randn(2, 12, 5, 6, generator=torch.Generator().manual_seed(3))
    target = torch.randint(0, 4, (2, 10, 12), generator=torch.Generator().manual_seed(4))
    target[:, :2, :3] = 255
    losses = {}
    for option in (False, True):
        head = make_head(upsample_before_norm=option, loss_average=loss_average).eval()
        with torch.no_grad():  # a learned affine, so that its place matters
            head.logit_norm.weight.copy_(torch.tensor([0.5, 2.0, 1.0, 3.0]))
            head.logit_norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        out = head(feats)
        losses[option] = head.loss(out, target)["loss_seg"].detach()
    s = out.class_log_prob.detach().double()
    up = F.interpolate(s, size=(10, 12), mode="bilinear", align_corners=False)
    up = up.permute(0, 2, 3, 1).reshape(-1, 4)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    b = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
    t = target.reshape(-1)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(up.shape[0]):  # per label pixel
        if t[i] == 255:
            continue
        row = up[i]
        z = (row - row.mean()) / torch.sqrt(((row - row.mean()) ** 2).mean() + 1e-5) * w + b
        total -= torch.log_softmax(z, 0)[t[i]]
    denom = t.numel() if loss_average == "all" else int((t != 255).sum())
    torch.testing.assert_close(losses[True].double(), total / denom, rtol=1e-5, atol=1e-6)
    assert abs(float(losses[True]) - float(losses[False])) > 1e-3  # the option changes the loss


def test_resized_logits_at_feature_size_are_the_logits() -> None:
    """At the feature size both orders give z; at another size they differ."""
    feats = torch.randn(1, 12, 3, 4, generator=torch.Generator().manual_seed(2))
    plain, option = make_head(), make_head(upsample_before_norm=True)
    out = option(feats)
    torch.testing.assert_close(option.resized_logits(out, (3, 4)), out.logits)
    torch.testing.assert_close(plain.resized_logits(out, (3, 4)), out.logits)
    big = option.resized_logits(out, (9, 12)) - plain.resized_logits(out, (9, 12))
    assert big.abs().max() > 1e-3


def test_component_target_collision_with_ignore() -> None:
    """C·M > 255: the faithful target c·M + m == 255 is ignored; the fix counts it."""
    c, m = 52, 5  # 51·5 + 0 = 255
    kw = {
        "embed_dim": 4,
        "num_components": m,
        "memory_size": 8,
        "generator": torch.Generator().manual_seed(1),
    }
    faithful = GMMClassifier(c, 4, **kw)  # type: ignore[arg-type]
    fixed = GMMClassifier(c, 4, separate_component_ignore=True, **kw)  # type: ignore[arg-type]
    fixed.load_state_dict(faithful.state_dict())
    feats = torch.randn(1, 4, 1, 2)
    target = torch.tensor([[[51, 3]]])
    out = faithful(feats)
    assign = torch.tensor([0, 1])  # pixel 0 → target 51·5 + 0 = 255
    ell = out.component_log_prob.permute(0, 3, 4, 1, 2).reshape(2, c * m)
    ce = F.cross_entropy(ell, torch.tensor([255, 16]), reduction="none")
    got_faithful = faithful.loss(out, target, assign)["loss_component"]
    got_fixed = fixed.loss(fixed(feats), target, assign)["loss_component"]
    torch.testing.assert_close(got_faithful, 0.01 * ce[1])
    torch.testing.assert_close(got_fixed, 0.01 * ce.mean())


def test_all_ignore_gives_zero_component_loss_and_no_update() -> None:
    head = make_head()
    out = head(torch.randn(1, 12, 3, 3))
    target = torch.full((1, 3, 3), 255)
    losses = head.loss(out, target)
    assert losses["loss_component"].item() == 0.0
    assert torch.isfinite(losses["loss_seg"])
    means = head.means.clone()
    head.update(out, target)
    assert torch.equal(head.means, F.normalize(means, dim=-1))
    assert int(head.memory.filled.sum()) == 0  # type: ignore[union-attr]


def test_one_pixel_and_empty_class() -> None:
    head = make_head().eval()  # BatchNorm cannot train on one pixel
    out = head(torch.randn(1, 12, 1, 1))
    target = torch.tensor([[[2]]])
    assign = head.e_step(out, target)
    assert assign.shape == (1,)
    assert 0 <= int(assign[0]) < 3
    head.update(out, target, assign)


def test_count_only_filled_ignores_random_seed_vectors() -> None:
    head = make_head(count_only_filled=True, update_interval=1, mean_momentum=0.0)
    head.eval()
    feats = torch.randn(1, 12, 4, 4)
    out = head(feats)
    target = out.logits.argmax(1)  # every pixel correct
    assign = head.e_step(out, target)
    head.update(out, target, assign)
    emb = out.embeddings.permute(0, 2, 3, 1).reshape(-1, 8)
    t = target.reshape(-1)
    for k in t.unique().tolist():
        for m in range(3):
            rows = emb[(t == k) & (assign == m)]
            if len(rows) == 0 or len(rows) > 4:
                continue
            expected = F.normalize(rows.sum(0), dim=0)
            torch.testing.assert_close(head.means[k, m], expected, atol=1e-6, rtol=1e-5)


def test_stats_memory_runs_and_updates_present_classes() -> None:
    head = make_head(memory="stats", update_interval=1)
    out = head(torch.randn(2, 12, 3, 3))
    target = torch.zeros(2, 3, 3, dtype=torch.int64)
    before = F.normalize(head.means, dim=-1).clone()
    head.update(out, target)
    assert torch.equal(head.means[1:], before[1:])


def test_anomaly_score_is_negative_best_class_log_likelihood() -> None:
    head = make_head()
    out = head(torch.randn(2, 12, 3, 3))
    torch.testing.assert_close(head.anomaly_score(out), -out.class_log_prob.max(dim=1).values)


def test_autocast_keeps_density_float32() -> None:
    head = make_head()
    feats = torch.randn(1, 12, 3, 3)
    ref = head(feats)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(feats)
    assert out.component_log_prob.dtype == torch.float32
    assert out.class_log_prob.dtype == torch.float32
    torch.testing.assert_close(out.class_log_prob, ref.class_log_prob, atol=0.5, rtol=0.05)


def test_backward_reaches_projection_not_gmm_state() -> None:
    head = make_head()
    out = head(torch.randn(2, 12, 3, 3))
    target = torch.randint(0, 4, (2, 6, 6))
    sum(head.loss(out, target).values()).backward()  # type: ignore[union-attr]
    assert head.projection is not None
    conv = head.projection[0]
    assert conv.weight.grad is not None
    assert conv.weight.grad.abs().sum() > 0
    assert head.logit_norm.weight.grad is not None
    assert not head.means.requires_grad


def test_no_projection_when_widths_match() -> None:
    head = GMMClassifier(3, 8, embed_dim=8, memory_size=4)
    assert head.projection is None
    assert set(head.state_dict()) >= {"means", "scales", "step", "memory.bank"}


def test_persist_memory_false_drops_bank_from_state_dict() -> None:
    head = GMMClassifier(3, 8, embed_dim=8, memory_size=4, persist_memory=False)
    assert "memory.bank" not in head.state_dict()


def test_swaps_with_linear_classifier() -> None:
    feats = torch.randn(2, 12, 3, 3)
    target = torch.randint(0, 4, (2, 6, 6))
    for head in (make_head(), LinearClassifier(4, 12)):
        out = head(feats)
        loss = sum(head.loss(out, target).values())
        loss.backward()  # type: ignore[union-attr]
        head.update(out, target)
        assert head.anomaly_score(out).shape == (2, 3, 3)


def test_errors() -> None:
    head = make_head()
    with pytest.raises(ValueError, match=r"features must have shape \(B, 12, H, W\)"):
        head(torch.randn(1, 11, 2, 2))
    with pytest.raises(ValueError, match="finite"):
        head(torch.full((1, 12, 2, 2), float("nan")))
    out = head(torch.randn(1, 12, 2, 2))
    with pytest.raises(ValueError, match=r"target values must be in \[0, 4\)"):
        head.loss(out, torch.tensor([[[0, 4], [1, 2]]]))
    with pytest.raises(ValueError, match="batch size"):
        head.update(out, torch.zeros(2, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_components"):
        GMMClassifier(3, 8, num_components=0)
    with pytest.raises(ValueError, match="memory"):
        GMMClassifier(3, 8, memory="bogus")  # type: ignore[arg-type]


class _CountCalls(TorchFunctionMode):
    """Counts the torch calls made from Python (a per-class loop multiplies them by C)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(  # type: ignore[override]
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _calls_per_step(num_classes: int, seed: int) -> int:
    """Torch calls of one full training step (forward, E-step, loss, backward, update + M-step)."""
    torch.manual_seed(seed)
    head = GMMClassifier(num_classes, 16, num_components=3, memory_size=8, update_interval=1)
    features = torch.randn(1, 16, 16, 16)
    target = torch.from_numpy(np.random.default_rng(seed).integers(0, num_classes, (1, 16, 16)))
    with _CountCalls() as counter:
        out = head(features)
        assign = head.e_step(out, target)
        losses = head.loss(out, target, assign)
        sum(losses.values()).backward()  # type: ignore[union-attr]
        head.update(out, target, assign)
    assert int(head.step) == 1
    return counter.calls


def test_vectorised_paths_have_no_class_loop_cost() -> None:
    """A training step makes as many torch calls for 150 classes as for 4: no loop over classes.

    A per-class loop anywhere in the step (densities, Sinkhorn, losses, memory write or M-step)
    would add calls in proportion to the number of classes.
    """
    assert _calls_per_step(150, seed=0) == _calls_per_step(4, seed=1)


def test_validate_false_checks_shapes_only_and_check_labels_still_refuses() -> None:
    """``validate=False`` moves the value checks out of the step; ``check_labels`` keeps them."""
    head = make_head(validate=False)
    with pytest.raises(ValueError, match=r"features must have shape \(B, 12, H, W\)"):
        head(torch.randn(1, 11, 2, 2))
    head(torch.full((1, 12, 2, 2), float("nan")))  # not scanned
    out = head(torch.randn(1, 12, 2, 2))
    with pytest.raises(ValueError, match="integer"):
        head.loss(out, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"target values must be in \[0, 4\) .*\[4, 7\]"):
        head.check_labels(torch.tensor([[[0, 4], [7, 255]]]))
    head.check_labels(torch.tensor([[[0, 3], [255, 255]]]))
    head.validate = True
    with pytest.raises(ValueError, match=r"target values must be in \[0, 4\)"):
        head.e_step(out, torch.tensor([[[0, 4], [1, 2]]]))
    linear = LinearClassifier(4, 12, validate=False)
    linear(torch.full((1, 12, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"target values must be in \[0, 4\)"):
        linear.check_labels(torch.tensor([[[0, 9]]]))


@pytest.mark.parametrize("memory", ["ring", "stats"])
def test_validate_false_trains_identically(memory: str) -> None:
    torch.manual_seed(0)
    checked, unchecked = make_head(memory=memory), make_head(memory=memory, validate=False)
    unchecked.load_state_dict(checked.state_dict())
    for step in range(5):
        feats = torch.randn(2, 12, 5, 6)
        target = torch.randint(0, 4, (2, 10, 12))
        target[:, : step % 3, :4] = 255
        for head in (checked, unchecked):
            out = head(feats)
            assign = head.e_step(out, target)
            head.update(out, target, assign)
        for a, b in zip(checked.buffers(), unchecked.buffers(), strict=True):
            assert torch.equal(a, b)


def test_m_step_schedule_follows_a_loaded_step_counter() -> None:
    """The host copy of ``step`` is re-read after ``load_state_dict``."""
    torch.manual_seed(0)
    feats, target = torch.randn(1, 12, 4, 4), torch.randint(0, 4, (1, 4, 4))
    for loaded, m_step_due in ((3, False), (4, True)):
        head = make_head(update_interval=2)
        state = head.state_dict()
        state["step"] = torch.tensor(loaded)
        head.load_state_dict(state)
        before = head.scales.clone()
        out = head(feats)
        head.update(out, target)
        assert int(head.step) == loaded + 1
        assert (not torch.equal(head.scales, before)) == m_step_due


class RecordingMemory(torch.nn.Module):
    """A third :class:`~gmmseg.em.online.MixtureMemory`: records the calls, delegates them."""

    def __init__(self, inner: ComponentMemory | StreamingStatistics) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[str] = []

    def write(
        self,
        embeddings: torch.Tensor,
        groups: torch.Tensor,
        components: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        validate: bool = True,
    ) -> torch.Tensor:
        self.calls.append("write")
        return self.inner.write(embeddings, groups, components, mask, validate=validate)

    def m_step(
        self,
        means: torch.Tensor,
        scales: torch.Tensor,
        groups: torch.Tensor | Sequence[int],
        *,
        mean_momentum: float = 0.999,
        scale_momentum: float = 0.0,
        variance_floor: float = 1e-2,
        validate: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append("m_step")
        return self.inner.m_step(
            means,
            scales,
            groups,
            mean_momentum=mean_momentum,
            scale_momentum=scale_momentum,
            variance_floor=variance_floor,
            validate=validate,
        )


@pytest.mark.parametrize("memory", ["ring", "stats"])
def test_update_needs_only_the_memory_interface(memory: str) -> None:
    """``update`` uses the memory through write / m_step only: any MixtureMemory works."""
    torch.manual_seed(0)
    plain, wrapped = make_head(memory=memory), make_head(memory=memory)
    wrapped.load_state_dict(plain.state_dict())
    recorder = RecordingMemory(wrapped.memory)
    assert isinstance(recorder, MixtureMemory)
    wrapped.memory = recorder  # type: ignore[assignment]
    for _ in range(3):
        feats, target = torch.randn(2, 12, 5, 6), torch.randint(0, 4, (2, 10, 12))
        for head in (plain, wrapped):
            out = head(feats)
            head.update(out, target, head.e_step(out, target))
    # update_interval 2: the M-step runs at steps 0 and 2
    assert recorder.calls == ["write", "m_step", "write", "write", "m_step"]
    for name in ("means", "scales", "step"):
        assert torch.equal(getattr(plain, name), getattr(wrapped, name)), name
    assert all(
        torch.equal(a, b)
        for a, b in zip(plain.memory.buffers(), recorder.inner.buffers(), strict=True)
    )


#: The state_dict keys of GMMClassifier (with a projection): checkpoints written by earlier
#: versions load only while these stay.
COMMON_KEYS = {
    "feature_norm.bias",
    "feature_norm.weight",
    "logit_norm.bias",
    "logit_norm.weight",
    "means",
    "projection.0.weight",
    "projection.1.bias",
    "projection.1.num_batches_tracked",
    "projection.1.running_mean",
    "projection.1.running_var",
    "projection.1.weight",
    "scales",
    "step",
}


@pytest.mark.parametrize(
    ("kwargs", "memory_keys"),
    [
        ({}, {"memory.bank", "memory.ptr", "memory.filled"}),
        ({"persist_memory": False}, set()),
        ({"memory": "stats"}, {"memory.weight_sum", "memory.running_mean", "memory.sq_dev_sum"}),
    ],
)
def test_state_dict_keys_are_stable(kwargs: dict[str, object], memory_keys: set[str]) -> None:
    head = make_head(**kwargs)
    assert set(head.state_dict()) == COMMON_KEYS | memory_keys
