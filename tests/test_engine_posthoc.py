"""Post-hoc mixtures on a Segmentor: fitting over a loader, score maps, evaluate_anomaly."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gmmseg.engine import InferenceSettings, evaluate_anomaly
from gmmseg.engine.posthoc import fit_posthoc, posthoc_score_maps, segmentor_features
from gmmseg.heads import (
    FCNDecoder,
    GMMClassifier,
    LinearClassifier,
    PosthocFitter,
    PosthocSettings,
    SegFormerDecoder,
)
from gmmseg.segmentor import Segmentor


class _Strided(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.out_channels = [8, 16]
        self.strides = [2, 4]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = torch.relu(self.c1(x))
        return [a, torch.relu(self.c2(a))]


class _Pointwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.out_channels = [8]
        self.strides = [1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tanh(self.conv(x))]


def _gmm(channels: int) -> GMMClassifier:
    return GMMClassifier(
        3, channels, embed_dim=4, num_components=2, memory_size=8,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def _strided(head: str) -> Segmentor:
    torch.manual_seed(0)
    bb = _Strided()
    dec = SegFormerDecoder(bb.out_channels, bb.strides, channels=8)
    clf = _gmm(8) if head == "gmm" else LinearClassifier(3, 8)
    return Segmentor(bb, dec, clf).eval()


def _pointwise() -> Segmentor:
    torch.manual_seed(0)
    bb = _Pointwise()
    dec = FCNDecoder(bb.out_channels, bb.strides, channels=8, num_convs=0, concat_input=False)
    return Segmentor(bb, dec, LinearClassifier(3, 8)).eval()


def _loader(n: int = 6, size: tuple[int, int] = (16, 16), seed: int = 0) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(0, n, 2):
        labels = torch.randint(0, 3, (2, *size), generator=g)
        labels[:, 0, :] = 255
        batches.append(
            {"image": torch.randn(2, 3, *size, generator=g), "label": labels, "name": [str(i)]}
        )
    return batches


@pytest.mark.parametrize(("head", "space"), [("linear", "decoder"), ("gmm", "embedding")])
def test_fit_over_a_loader_equals_the_fitter_on_the_features(head: str, space: str) -> None:
    model = _strided(head)
    s = PosthocSettings(num_components=2, max_samples_per_class=40)
    fitted = fit_posthoc(model, _loader(), space=space, settings=s)  # type: ignore[arg-type]
    width = 8 if space == "decoder" else 4
    fitter = PosthocFitter(3, width, s)
    with torch.no_grad():
        for batch in _loader():
            feats = segmentor_features(model, batch["image"], space)  # type: ignore[arg-type]
            assert feats.shape == (2, width, 8, 8)
            fitter.update_map(feats, batch["label"])
    ref = fitter.fit()
    assert torch.equal(fitted.means, ref.means)
    assert fitted.info["space"] == space and fitted.info["images"] == 6
    assert fitted.info["reservoir_bytes"] == fitter.reservoir_bytes


def test_embedding_space_needs_a_gmm_classifier() -> None:
    with pytest.raises(ValueError, match="space='embedding' needs a GMM classifier"):
        segmentor_features(_strided("linear"), torch.randn(1, 3, 8, 8), "embedding")


def test_max_images_stops_the_stream() -> None:
    model = _strided("linear")
    s = PosthocSettings(num_components=1)
    head = fit_posthoc(model, _loader(6), settings=s, max_images=3)
    ref = fit_posthoc(model, [_loader(6)[0], _half(_loader(6)[1])], settings=s)
    assert head.info["images"] == 3 and torch.equal(head.means, ref.means)


def _half(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "image": batch["image"][:1], "label": batch["label"][:1]}


def test_whole_image_maps_are_feature_resolution_scores_resized() -> None:
    model = _strided("linear")
    head = fit_posthoc(model, _loader(), settings=PosthocSettings(num_components=1))
    images = torch.randn(2, 3, 16, 16)
    maps = posthoc_score_maps(model, head, images)
    with torch.no_grad():
        small = head.score_maps(model.features(images))
    for name, m in maps.items():
        assert m.shape == (2, 16, 16)
        ref = F.interpolate(small[name][:, None], size=(16, 16), mode="bilinear")[:, 0]
        torch.testing.assert_close(m, ref)


def test_slide_scales_and_flip_equal_whole_for_a_pointwise_model() -> None:
    model = _pointwise()
    head = fit_posthoc(model, _loader(), settings=PosthocSettings(num_components=2))
    images = torch.randn(2, 3, 13, 17)
    whole = posthoc_score_maps(model, head, images)
    slide = InferenceSettings(mode="slide", crop_size=(8, 8), stride=(5, 6), flip=True)
    other = posthoc_score_maps(model, head, images, slide)
    for name in whole:
        torch.testing.assert_close(other[name], whole[name], rtol=1e-5, atol=1e-5)
    # fitting over sliding windows: overlapping pixels enter the sample once per window
    fitted = fit_posthoc(
        model, _loader(2), settings=PosthocSettings(num_components=1), inference=slide
    )
    assert fitted.info["images"] == 2


def test_a_head_of_another_width_is_refused() -> None:
    head = fit_posthoc(_strided("gmm"), _loader(), space="embedding",
                       settings=PosthocSettings(num_components=1))  # fmt: skip
    with pytest.raises(ValueError, match="fitted on 4-wide features"):
        posthoc_score_maps(_strided("linear"), head, torch.randn(1, 3, 8, 8), space="decoder")


def test_evaluate_anomaly_reports_the_posthoc_scores_beside_the_others() -> None:
    model = _strided("linear")
    head = fit_posthoc(model, _loader(), settings=PosthocSettings(num_components=1))
    g = torch.Generator().manual_seed(1)
    anomaly = [
        {
            "image": torch.randn(2, 3, 16, 16, generator=g),
            "label": torch.randint(0, 2, (2, 16, 16), generator=g),
            "name": ["a", "b"],
        }
    ]
    results = evaluate_anomaly(model, anomaly, posthoc=head)
    assert set(results) == {
        "msp", "max_logit", "energy", "entropy", "posthoc_likelihood", "posthoc_marginal",
    }  # fmt: skip
    assert 0.0 <= float(results["posthoc_marginal"]["auroc"]) <= 1.0
    assert set(evaluate_anomaly(model, anomaly)) == {"msp", "max_logit", "energy", "entropy"}
