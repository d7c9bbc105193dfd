"""Compose a GMMSeg model from a custom backbone, train it by hand, predict and evaluate.

Runs in a few seconds on a CPU with random toy data:

    python examples/custom_backbone.py

The numbers it prints come from a few dozen steps on synthetic scenes; they show that the
pieces fit together, not how well GMMSeg segments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmmseg.heads import (
    GMMClassifier,
    GMMHeadConfig,
    LinearClassifier,
    ReleaseFixes,
    SegFormerDecoder,
)
from gmmseg.metrics import AnomalyMetrics, SegmentationMetrics
from gmmseg.segmentor import Segmentor

NUM_CLASSES = 4


# --8<-- [start:backbone]
class TinyBackbone(nn.Module):
    """Any module that maps images to a list of feature maps can be a backbone.

    The decoders are built from two attributes, one entry per returned map: ``out_channels``
    (channels) and ``strides`` (downsampling factor with respect to the input image).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32)) -> None:
        super().__init__()
        stages, c_in = [], 3
        for w in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c_in, w, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = w
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths
        self.strides = tuple(2 ** (i + 1) for i in range(len(widths)))  # (2, 4)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) images → one (B, out_channels[i], H/strides[i], W/strides[i]) map each."""
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


# --8<-- [end:backbone]


# --8<-- [start:data]
def toy_batch(batch: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Blocky scenes: each class has its own colour; some frames hold an unseen-colour square.

    Returns:
        images (B, 3, H, W) float, labels (B, H, W) int64 with 255 = void, and anomaly labels
        (B, H, W) int64 (0 normal, 1 anomaly, 255 void).
    """
    coarse = torch.randint(0, NUM_CLASSES, (batch, 1, size // 8, size // 8), generator=generator)
    labels = F.interpolate(coarse.float(), size=(size, size), mode="nearest")[:, 0].long()
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    images = colours[labels].permute(0, 3, 1, 2).contiguous()
    images += 0.2 * torch.randn(images.shape, generator=generator)
    anomaly = torch.zeros_like(labels)
    k = size // 4
    for b in range(0, batch, 2):  # every other frame: a magenta square, void for the classes
        y, x = torch.randint(0, size - k, (2,), generator=generator).tolist()
        images[b, :, y : y + k, x : x + k] = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)
        labels[b, y : y + k, x : x + k] = 255
        anomaly[b, y : y + k, x : x + k] = 1
    return images, labels, anomaly


# --8<-- [end:data]


def main() -> None:
    """Build, train, predict and evaluate a GMMSeg model and its softmax twin."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    # --8<-- [start:build]
    backbone = TinyBackbone(widths=(16, 32))
    decoder = SegFormerDecoder(backbone.out_channels, backbone.strides, channels=32)
    config = GMMHeadConfig(
        embed_dim=16,  # D (64 in the paper)
        num_components=3,  # M per class (5 in the paper)
        memory_size=512,  # ring slots per (class, component) (32000 in the paper)
        update_interval=1,  # M-step every step: this run is short (paper: every 5 steps)
        mean_momentum=0.9,  # fast-moving means for a short run (paper: 0.999)
        fixes=ReleaseFixes.all(),  # the fixes of the original release (see "The algorithm")
    )
    head = GMMClassifier(NUM_CLASSES, decoder.out_channels, config)
    model = Segmentor(backbone, decoder, head)
    # --8<-- [end:build]

    # --8<-- [start:train]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(30):
        images, labels, _ = toy_batch(4, 32, generator)
        out = model(images)  # GMMOutput at feature resolution (stride 2 here)
        assignments = head.e_step(out, labels)  # Sinkhorn: pixel → component of its class
        losses = head.loss(out, labels, assignments)  # {"loss_seg", "loss_component"}
        head.update(out, labels, assignments)  # memory write + momentum M-step (no grad)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.3f}")
    # --8<-- [end:train]

    # --8<-- [start:evaluate]
    model.eval()
    seg_metrics = SegmentationMetrics(num_classes=NUM_CLASSES)
    anomaly_metrics = AnomalyMetrics()  # exact, pooled, fpr95_rule="first_ge"
    for _ in range(4):
        images, labels, anomaly = toy_batch(4, 32, generator)
        pred = model.predict(images)  # logits (B, C, H, W), anomaly (B, H, W) at input size
        seg_metrics.update(pred.logits.argmax(dim=1), labels)
        anomaly_metrics.update(pred.anomaly, anomaly)  # GMM: −max_c log p(x | c)
    seg = seg_metrics.compute()
    ood = anomaly_metrics.compute()
    print(
        f"GMM      mIoU {seg['mIoU']:.3f}  AP {ood['ap']:.3f}  AUROC {ood['auroc']:.3f}  "
        f"FPR95 {ood['fpr95']:.3f}"
    )
    # --8<-- [end:evaluate]

    # --8<-- [start:twin]
    twin = Segmentor(
        TinyBackbone(widths=(16, 32)),
        SegFormerDecoder((16, 32), (2, 4), channels=32),
        LinearClassifier(NUM_CLASSES, 32),
        logit_anomaly="max_logit",  # anomaly score of predict(): msp, max_logit, energy, entropy
    )
    optimizer = torch.optim.AdamW(twin.parameters(), lr=3e-3)
    twin.train()
    for _ in range(30):
        images, labels, _ = toy_batch(4, 32, generator)
        losses = twin.training_step(images, labels)  # forward + loss + update (no-op here)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    twin.eval()
    images, labels, anomaly = toy_batch(8, 32, generator)
    pred = twin.predict(images)
    seg = SegmentationMetrics(NUM_CLASSES)
    seg.update(pred.logits.argmax(dim=1), labels)
    ood_metrics = AnomalyMetrics()
    ood_metrics.update(pred.anomaly, anomaly)
    print(f"softmax  mIoU {seg.compute()['mIoU']:.3f}  AP {ood_metrics.compute()['ap']:.3f}")
    # --8<-- [end:twin]


if __name__ == "__main__":
    main()
