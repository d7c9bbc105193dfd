"""Segmentor: composition, training step, whole/slide/multi-scale/flip inference, compile, DDP."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from gmmseg.heads import FCNDecoder, GMMClassifier, LinearClassifier, SegFormerDecoder
from gmmseg.segmentor import Segmentor


class TinyBackbone(nn.Module):
    """Two strided levels; enough to exercise decoders."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.out_channels = [8, 16]
        self.strides = [2, 4]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = torch.relu(self.c1(x))
        return [a, torch.relu(self.c2(a))]


class PointwiseBackbone(nn.Module):
    """Stride 1, 1×1 convs: each output pixel depends on its input pixel only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.out_channels = [8]
        self.strides = [1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tanh(self.conv(x))]


def gmm(
    num_classes: int = 3, channels: int = 8, upsample_before_norm: bool = False
) -> GMMClassifier:
    return GMMClassifier(
        num_classes,
        channels,
        upsample_before_norm=upsample_before_norm,
        embed_dim=8,
        num_components=2,
        memory_size=16,
        generator=torch.Generator().manual_seed(0),
    )


def pointwise_segmentor(classifier: nn.Module) -> Segmentor:
    torch.manual_seed(0)
    bb = PointwiseBackbone()
    dec = FCNDecoder(bb.out_channels, bb.strides, channels=8, num_convs=0, concat_input=False)
    return Segmentor(bb, dec, classifier).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [lambda: gmm(), lambda: LinearClassifier(3, 16)])
def test_training_step_runs_and_swaps(make: object) -> None:
    torch.manual_seed(0)
    bb = TinyBackbone()
    dec = SegFormerDecoder(
        bb.out_channels, bb.strides, channels=16 if not isinstance(make(), GMMClassifier) else 8
    )  # type: ignore[operator]
    seg = Segmentor(bb, dec, make())  # type: ignore[operator]
    images = torch.randn(2, 3, 16, 16)
    labels = torch.randint(0, 3, (2, 16, 16))
    losses = seg.training_step(images, labels)
    sum(losses.values()).backward()  # type: ignore[union-attr]
    assert bb.c1.weight.grad is not None
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("classifier", ["gmm", "linear"])
def test_slide_flip_and_scales_equal_whole_for_pointwise_model(classifier: str) -> None:
    seg = pointwise_segmentor(gmm() if classifier == "gmm" else LinearClassifier(3, 8))
    images = torch.randn(2, 3, 13, 17)
    whole = seg.predict(images)
    assert whole.logits.shape == (2, 3, 13, 17)
    assert whole.anomaly.shape == (2, 13, 17)
    for kwargs in (
        {"mode": "slide", "crop_size": (5, 6), "stride": (3, 4)},
        {"mode": "slide", "crop_size": (32, 32), "stride": (16, 16)},
        {"flip": True},
        {"scales": (1.0, 1.0)},
    ):
        pred = seg.predict(images, **kwargs)  # type: ignore[arg-type]
        # GEMM blocking differs with the crop size; LayerNorm(C) over nearly equal class scores
        # amplifies that float32 rounding (~1e-6 on s) to ~1e-4 on z.
        torch.testing.assert_close(pred.logits, whole.logits, atol=3e-4, rtol=1e-4, msg=str(kwargs))
        torch.testing.assert_close(
            pred.anomaly, whole.anomaly, atol=1e-5, rtol=1e-5, msg=str(kwargs)
        )


def test_gmm_anomaly_is_negative_best_class_log_likelihood() -> None:
    seg = pointwise_segmentor(gmm())
    images = torch.randn(1, 3, 5, 5)
    out = seg(images)
    torch.testing.assert_close(seg.predict(images).anomaly, seg.classifier.anomaly_score(out))  # type: ignore[arg-type]


def test_gmm_anomaly_is_resized_after_the_max_over_classes() -> None:
    """At a stride-2 feature map, the score is −max_c s per feature pixel, then bilinear."""
    torch.manual_seed(0)
    bb = TinyBackbone()
    dec = FCNDecoder(bb.out_channels, bb.strides, channels=8, num_convs=0, concat_input=False)
    seg = Segmentor(bb, dec, gmm(channels=dec.out_channels)).eval()  # type: ignore[arg-type]
    images = torch.randn(2, 3, 16, 16)
    out = seg(images)
    assert out.class_log_prob.shape[-1] < 16  # the features are coarser than the image
    score = -out.class_log_prob.amax(dim=1, keepdim=True)  # type: ignore[union-attr]
    expected = F.interpolate(score, size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(seg.predict(images).anomaly, expected)


def plain_layer_norm(s: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over dim 1 of (B, C, H, W) written out (biased variance, as nn.LayerNorm)."""
    mean = s.mean(dim=1, keepdim=True)
    var = ((s - mean) ** 2).mean(dim=1, keepdim=True)
    w, b = norm.weight.detach()[None, :, None, None], norm.bias.detach()[None, :, None, None]
    return (s - mean) / torch.sqrt(var + norm.eps) * w + b


def gmm_segmentor(upsample_before_norm: bool) -> tuple[Segmentor, GMMClassifier]:
    """A stride-2 GMM segmentor whose logit LayerNorm has a non-trivial affine (so its place
    matters)."""
    torch.manual_seed(0)
    bb = TinyBackbone()
    dec = FCNDecoder(bb.out_channels, bb.strides, channels=8, num_convs=0, concat_input=False)
    head = gmm(channels=dec.out_channels, upsample_before_norm=upsample_before_norm)
    with torch.no_grad():
        head.logit_norm.weight.uniform_(0.5, 3.0)
        head.logit_norm.bias.normal_()
    return Segmentor(bb, dec, head).eval(), head  # type: ignore[arg-type]


@pytest.mark.parametrize("upsample_before_norm", [False, True])
def test_gmm_logits_follow_upsample_before_norm(upsample_before_norm: bool) -> None:
    """Predicted logits: up(LayerNorm(s)) by default, LayerNorm(up(s)) with the option."""
    seg, head = gmm_segmentor(upsample_before_norm)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = seg(images)
    s = out.class_log_prob  # type: ignore[union-attr]

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False)

    after = plain_layer_norm(up(s), head.logit_norm)
    before = up(plain_layer_norm(s, head.logit_norm))
    pred = seg.predict(images)
    torch.testing.assert_close(
        pred.logits, after if upsample_before_norm else before, rtol=1e-4, atol=2e-4
    )
    assert (after - before).abs().max() > 0.1  # the two orders differ on this input
    torch.testing.assert_close(pred.anomaly, up(-s.amax(dim=1, keepdim=True))[:, 0])


def test_gmm_upsample_before_norm_averages_scores_then_normalises() -> None:
    """Scales, flips and sliding windows average s; the LayerNorm comes once, at the end."""
    seg, head = gmm_segmentor(upsample_before_norm=True)
    images = torch.randn(1, 3, 16, 20)

    def up(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

    with torch.no_grad():
        total = torch.zeros(1, 3, 16, 20)
        for scale in (1.0, 0.75):
            size = (round(16 * scale), round(20 * scale))
            x = images if scale == 1.0 else up(images, size)
            for flipped in (False, True):
                xi = x.flip(-1) if flipped else x
                s = up(seg(xi).class_log_prob, size)  # type: ignore[union-attr]
                s = s.flip(-1) if flipped else s
                total += up(s, (16, 20))
    pred = seg.predict(images, scales=(1.0, 0.75), flip=True)
    expected = plain_layer_norm(total / 4, head.logit_norm)
    torch.testing.assert_close(pred.logits, expected, rtol=1e-4, atol=2e-4)
    # sliding windows: the average of each crop's upsampled s, normalised once
    slide = seg.predict(images, mode="slide", crop_size=(16, 12), stride=(16, 8))
    with torch.no_grad():
        s_sum = torch.zeros(1, 3, 16, 20)
        count = torch.zeros(1, 1, 16, 20)
        for x1 in (0, 8):
            crop = images[:, :, :, x1 : x1 + 12]
            s_sum[..., x1 : x1 + 12] += up(seg(crop).class_log_prob, (16, 12))  # type: ignore[union-attr]
            count[..., x1 : x1 + 12] += 1
    expected = plain_layer_norm(s_sum / count, head.logit_norm)
    torch.testing.assert_close(slide.logits, expected, rtol=1e-4, atol=2e-4)


def test_slide_counts_overlaps() -> None:
    """Sliding windows average overlapping crops: a plain loop over crops as reference."""
    torch.manual_seed(0)
    bb = TinyBackbone()
    seg = Segmentor(
        bb, SegFormerDecoder(bb.out_channels, bb.strides, channels=16), LinearClassifier(3, 16)
    ).eval()
    images = torch.randn(1, 3, 20, 24)
    pred = seg.predict(images, mode="slide", crop_size=(12, 12), stride=(8, 8))
    total = torch.zeros(1, 3, 20, 24)
    count = torch.zeros(1, 1, 20, 24)
    for y1 in (0, 8):
        for x1 in (0, 8, 12):
            crop = images[:, :, y1 : y1 + 12, x1 : x1 + 12]
            with torch.no_grad():
                z = seg(crop).logits
            total[:, :, y1 : y1 + 12, x1 : x1 + 12] += torch.nn.functional.interpolate(
                z, size=(12, 12), mode="bilinear"
            )
            count[:, :, y1 : y1 + 12, x1 : x1 + 12] += 1
    torch.testing.assert_close(pred.logits, total / count)


def test_predict_errors() -> None:
    seg = pointwise_segmentor(LinearClassifier(3, 8))
    images = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="crop_size and stride"):
        seg.predict(images, mode="slide")
    with pytest.raises(ValueError, match="mode"):
        seg.predict(images, mode="tile")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scales"):
        seg.predict(images, scales=(0.0,))
    with pytest.raises(ValueError, match="images must be"):
        seg(torch.randn(3, 4, 4))


@pytest.mark.slow
def test_torch_compile_forward_eval() -> None:
    seg = pointwise_segmentor(gmm())
    images = torch.randn(1, 3, 8, 8)
    ref = seg(images)
    compiled = torch.compile(seg)
    with torch.no_grad():
        out = compiled(images)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.class_log_prob, ref.class_log_prob, atol=1e-3, rtol=1e-4)


def ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        bb = TinyBackbone()
        seg = Segmentor(bb, SegFormerDecoder(bb.out_channels, bb.strides, channels=8), gmm())
        # SyncBatchNorm needs GPU modules; on CPU/gloo plain BatchNorm is used.
        ddp = nn.parallel.DistributedDataParallel(seg)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(1 + rank)
        for _ in range(3):
            images = torch.randn(2, 3, 16, 16, generator=g)
            labels = torch.randint(0, 3, (2, 16, 16), generator=g)
            losses = seg.losses_and_update(ddp(images), labels)
            opt.zero_grad()
            sum(losses.values()).backward()  # type: ignore[union-attr]
            opt.step()
        torch.save(
            {k: v.detach().clone() for k, v in seg.state_dict().items()},
            os.path.join(out_dir, f"r{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_training_keeps_ranks_identical(tmp_path: Path) -> None:
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "r0.pt"), torch.load(tmp_path / "r1.pt")
    for key in r0:
        if key.endswith(("running_mean", "running_var")):
            continue  # BatchNorm statistics are per rank on CPU (SyncBatchNorm needs CUDA)
        torch.testing.assert_close(r0[key], r1[key], msg=key)
    assert int(r0["classifier.step"]) == 3


@pytest.mark.parametrize("classifier", ["gmm", "linear"])
def test_float64_model_trains_and_predicts_in_float64(classifier: str) -> None:
    """``.double()`` works end to end, and no step downcasts: slide / flip / multi-scale equal
    whole-image inference of a pointwise model to float64 rounding (float32 gives ~1e-4)."""
    torch.manual_seed(0)
    bb = TinyBackbone()
    dec = SegFormerDecoder(bb.out_channels, bb.strides, channels=8)
    head = gmm() if classifier == "gmm" else LinearClassifier(3, 8)
    seg = Segmentor(bb, dec, head).double()  # type: ignore[arg-type]
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 16, 16))
    for _ in range(2):
        losses = seg.training_step(images, labels)
        assert all(v.dtype == torch.float64 and torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()  # type: ignore[union-attr]
    assert bb.c1.weight.grad is not None and bb.c1.weight.grad.dtype == torch.float64
    pred = seg.eval().predict(images, mode="slide", crop_size=(8, 8), stride=(6, 6), flip=True)
    assert pred.logits.dtype == pred.anomaly.dtype == torch.float64

    point = pointwise_segmentor(gmm() if classifier == "gmm" else LinearClassifier(3, 8)).double()
    images = torch.randn(2, 3, 13, 17, dtype=torch.float64)
    whole = point.predict(images)
    assert whole.logits.dtype == whole.anomaly.dtype == torch.float64
    if classifier == "gmm":
        out = point(images)
        torch.testing.assert_close(whole.anomaly, point.classifier.anomaly_score(out))  # type: ignore[arg-type]
    for kwargs in (
        {"mode": "slide", "crop_size": (5, 6), "stride": (3, 4)},
        {"flip": True},
        {"scales": (1.0, 1.0)},
    ):
        pred = point.predict(images, **kwargs)  # type: ignore[arg-type]
        torch.testing.assert_close(pred.logits, whole.logits, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(pred.anomaly, whole.anomaly, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("classifier", ["gmm", "linear"])
def test_half_model_trains_and_predicts_on_cpu(classifier: str, dtype: torch.dtype) -> None:
    """A ``.half()`` model: layers in half, losses and predictions in float32."""
    torch.manual_seed(0)
    bb = TinyBackbone()
    dec = SegFormerDecoder(bb.out_channels, bb.strides, channels=8)
    head = gmm() if classifier == "gmm" else LinearClassifier(3, 8)
    seg = Segmentor(bb, dec, head).to(dtype)  # type: ignore[arg-type]
    images = torch.randn(2, 3, 16, 16).to(dtype)
    labels = torch.randint(0, 3, (2, 16, 16))
    losses = seg.training_step(images, labels)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()  # type: ignore[union-attr]
    assert bb.c1.weight.grad is not None and bb.c1.weight.grad.dtype == dtype
    pred = seg.eval().predict(images, mode="slide", crop_size=(8, 8), stride=(6, 6))
    assert pred.logits.dtype == pred.anomaly.dtype == torch.float32
    assert bool(torch.isfinite(pred.logits).all() and torch.isfinite(pred.anomaly).all())
