"""The Classifier contract and the GMM head config: both heads meet it, Segmentor calls only it."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gmmseg.em.memory import ComponentMemory
from gmmseg.engine.evaluate import anomaly_score_maps
from gmmseg.engine.posthoc import segmentor_features
from gmmseg.heads import (
    Classifier,
    FCNDecoder,
    GMMClassifier,
    GMMHeadConfig,
    LinearClassifier,
    PosthocMixtures,
    ReleaseFixes,
)
from gmmseg.segmentor import Segmentor
from test_heads_gmm import NaiveGMMHead


class PointwiseBackbone(nn.Module):
    """Stride 1, 1×1 convs: the features have the images' size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.out_channels = [8]
        self.strides = [1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tanh(self.conv(x))]


def gmm_head(**options: object) -> GMMClassifier:
    config = GMMHeadConfig(embed_dim=8, num_components=2, memory_size=16, update_interval=1)
    return GMMClassifier(3, 8, config, generator=torch.Generator().manual_seed(0), **options)


def segmentor(head: nn.Module) -> Segmentor:
    torch.manual_seed(0)
    bb = PointwiseBackbone()
    dec = FCNDecoder(bb.out_channels, bb.strides, channels=8, num_convs=0, concat_input=False)
    return Segmentor(bb, dec, head)  # type: ignore[arg-type]


def make(kind: str) -> nn.Module:
    return gmm_head() if kind == "gmm" else LinearClassifier(3, 8, dropout=0.0)


# ------------------------------------------------------------------ the contract


def test_both_classifiers_meet_the_contract_and_other_modules_do_not() -> None:
    assert isinstance(gmm_head(), Classifier)
    assert isinstance(gmm_head(memory="stats"), Classifier)
    assert isinstance(LinearClassifier(3, 8), Classifier)
    assert not isinstance(nn.Conv2d(8, 3, 1), Classifier)
    assert not isinstance(
        PosthocMixtures.__new__(PosthocMixtures), Classifier
    )  # scores features, is not trained


def test_capabilities_are_attributes_of_the_contract() -> None:
    g, lin = gmm_head(), LinearClassifier(3, 8)
    assert (g.anomaly_name, g.embed_dim) == ("likelihood", 8)
    assert isinstance(g.memory_bank, ComponentMemory) and g.memory_bank is g.memory
    assert gmm_head(memory="stats").memory_bank is None
    assert (lin.anomaly_name, lin.embed_dim, lin.memory_bank) == (None, None, None)
    with pytest.raises(ValueError, match="LinearClassifier has no pixel embeddings"):
        lin.embed(torch.randn(1, 8, 2, 2))
    feats = torch.randn(2, 8, 3, 3)
    # in_channels == embed_dim: no projection, so an embedding is LayerNorm over D, then
    # L2-normalised (written here)
    x = feats.permute(0, 2, 3, 1)
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    ln = (x - mean) / (var + g.feature_norm.eps).sqrt() * g.feature_norm.weight
    ln = ln + g.feature_norm.bias
    expected = (ln / ln.norm(dim=-1, keepdim=True)).permute(0, 3, 1, 2)
    torch.testing.assert_close(g.eval().embed(feats), expected)
    # wiring: forward's embeddings are embed's (forward calls it)
    torch.testing.assert_close(g(feats).embeddings, g.embed(feats))


@pytest.mark.parametrize("kind", ["gmm", "linear"])
def test_segmentor_training_step_is_the_classifiers_loss_then_update(kind: str) -> None:
    """Through Segmentor: the losses and the state written out independently of the head.

    The GMM reference is ``NaiveGMMHead`` (the algorithm with plain loops, float64); the
    features have the labels' size (stride 1), so no resize enters the loss.
    """
    seg = segmentor(make(kind)).train()
    twin = copy.deepcopy(seg)
    images = torch.randn(2, 3, 6, 5)
    labels = torch.randint(0, 3, (2, 6, 5))
    labels[0, 0] = 255
    losses = seg.training_step(images, labels)

    clf = twin.classifier
    feats = twin.decoder(twin.backbone(images))
    after, reference = seg.state_dict(), twin.state_dict()
    if kind == "gmm":
        assert isinstance(clf, GMMClassifier) and clf.projection is None
        naive = NaiveGMMHead(clf)
        r = naive.forward(feats)
        gt = labels.reshape(-1)  # (b h w), the order of the reference's pixels
        assign = naive.e_step(r["ell"], gt)
        valid = gt != 255
        # release defaults: CE summed over valid pixels / all label pixels (void too), and the
        # component CE over the C·M components, its mean over valid pixels, times 0.01
        logp = torch.log_softmax(r["z"].double(), dim=1)
        seg_loss = -logp[valid, gt[valid]].sum() / gt.numel()
        comp_logp = torch.log_softmax(r["ell"].reshape(gt.numel(), -1), dim=1)
        target = gt[valid] * clf.num_components + assign[valid]
        comp_loss = -comp_logp[valid].gather(1, target[:, None]).mean() * 0.01
        expected = {"loss_seg": seg_loss, "loss_component": comp_loss}
        naive.update(r["x"], r["z"], gt, assign)
        assert int(after["classifier.step"]) == naive.step == 1
        tol = {"atol": 1e-6, "rtol": 1e-5}
        torch.testing.assert_close(after["classifier.means"].double(), naive.means, **tol)
        torch.testing.assert_close(after["classifier.scales"].double(), naive.scales, **tol)
        bank = after["classifier.memory.bank"].double()
        torch.testing.assert_close(bank, naive.bank, **tol)
        torch.testing.assert_close(after["classifier.memory.ptr"], torch.tensor(naive.ptr))
        written = {"step", "means", "scales", "memory.bank", "memory.ptr", "memory.filled"}
        reference = {k: v for k, v in reference.items() if k[len("classifier.") :] not in written}
        after = {k: v for k, v in after.items() if k in reference}
    else:
        # the softmax loss written here: CE summed over pixels / all label pixels (void too)
        out = clf(feats)
        per_pixel = F.cross_entropy(out.logits, labels, ignore_index=255, reduction="none")
        expected = {"loss_seg": per_pixel.sum() / labels.numel()}
    assert losses.keys() == expected.keys()
    for key in losses:
        torch.testing.assert_close(
            losses[key].double(), expected[key].double(), atol=1e-6, rtol=1e-5, msg=key
        )
    # the rest of the model (backbone, decoder, the head's layers) is as before the step
    assert after.keys() == reference.keys()
    for key in after:
        torch.testing.assert_close(after[key], reference[key], msg=key)
    if kind == "linear":  # update() is a no-op: the head's state is the initial one
        fresh = segmentor(make(kind)).state_dict()
        for key in fresh:
            torch.testing.assert_close(after[key], fresh[key], msg=key)


@pytest.mark.parametrize("kind", ["gmm", "gmm_upsample_before_norm", "linear"])
def test_segmentor_predict_reads_the_classifiers_inference_maps(kind: str) -> None:
    """At stride 1 a whole-image prediction is the head's output with its anomaly score."""
    head = gmm_head(upsample_before_norm=True) if kind.endswith("norm") else make(kind[:3])
    seg = segmentor(head).eval()
    images = torch.randn(2, 3, 5, 7)
    pred = seg.predict(images)
    out = seg(images)
    if kind.startswith("gmm"):
        s = out.class_log_prob
        norm = seg.classifier.logit_norm  # type: ignore[union-attr]
        # LayerNorm over the C class scores, written here (float64; LayerNorm over nearly
        # equal scores amplifies float32 rounding of s, hence the tolerance)
        centred = s.double() - s.double().mean(dim=1, keepdim=True)
        z = centred / (centred.pow(2).mean(dim=1, keepdim=True) + norm.eps).sqrt()
        z = z * norm.weight.double().view(1, -1, 1, 1) + norm.bias.double().view(1, -1, 1, 1)
        torch.testing.assert_close(pred.logits.double(), z, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(pred.anomaly, -s.max(dim=1).values)
    else:
        torch.testing.assert_close(pred.logits, out.logits)
        p = out.logits.softmax(dim=1)
        torch.testing.assert_close(pred.anomaly, 1.0 - p.max(dim=1).values)  # msp, by hand


def test_evaluation_and_features_follow_the_capabilities() -> None:
    images = torch.randn(1, 3, 4, 4)
    g, lin = segmentor(gmm_head()).eval(), segmentor(LinearClassifier(3, 8)).eval()
    g_pred = g.predict(images)
    g_scores = anomaly_score_maps(g, g_pred)
    assert list(g_scores) == ["likelihood", "msp", "max_logit", "energy", "entropy"]
    torch.testing.assert_close(g_scores["likelihood"], g_pred.anomaly)
    assert list(anomaly_score_maps(lin, lin.predict(images))) == [
        "msp",
        "max_logit",
        "energy",
        "entropy",
    ]
    # wiring: the embedding features are the segmentor's forward embeddings (the classifier's
    # embed, checked against a written-out LayerNorm + L2 normalisation above)
    torch.testing.assert_close(segmentor_features(g, images, "embedding"), g(images).embeddings)
    with pytest.raises(ValueError, match="space='embedding' needs a GMM classifier"):
        segmentor_features(lin, images, "embedding")


# ------------------------------------------------------------------ the GMM head's config


def test_state_dict_keys_are_unchanged() -> None:
    ring = GMMClassifier(3, 16, embed_dim=8, memory_size=4)
    core = [
        "means",
        "scales",
        "step",
        "projection.0.weight",
        "projection.1.weight",
        "projection.1.bias",
        "projection.1.running_mean",
        "projection.1.running_var",
        "projection.1.num_batches_tracked",
        "feature_norm.weight",
        "feature_norm.bias",
        "logit_norm.weight",
        "logit_norm.bias",
    ]
    assert list(ring.state_dict()) == [*core, "memory.bank", "memory.ptr", "memory.filled"]
    light = GMMClassifier(3, 16, GMMHeadConfig(embed_dim=8, fixes=ReleaseFixes.all()))
    assert list(light.state_dict()) == core
    assert list(LinearClassifier(3, 8).state_dict()) == ["classifier.weight", "classifier.bias"]


def test_config_and_keyword_options_build_the_same_head() -> None:
    config = GMMHeadConfig(
        embed_dim=8,
        num_components=2,
        memory_size=4,
        mean_momentum=0.9,
        fixes=ReleaseFixes(count_only_filled=True, loss_average="valid"),
    )
    torch.manual_seed(0)  # the projection's default init
    a = GMMClassifier(3, 16, config, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    b = GMMClassifier(
        3,
        16,
        embed_dim=8,
        num_components=2,
        memory_size=4,
        mean_momentum=0.9,
        count_only_filled=True,
        loss_average="valid",
        generator=torch.Generator().manual_seed(1),
    )
    assert a.config == b.config == config
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], msg=key)
    assert (b.count_only_filled, b.loss_average, b.separate_component_ignore) == (
        True,
        "valid",
        False,
    )
    assert b.memory.count_only_filled and b.memory.persistent  # type: ignore[union-attr]


def test_release_fixes_defaults_reproduce_the_release_and_faithful_is_a_preset() -> None:
    assert GMMHeadConfig().fixes == ReleaseFixes(
        separate_component_ignore=False,
        count_only_filled=False,
        persist_memory=True,
        loss_average="all",
    )
    assert ReleaseFixes.all() == ReleaseFixes(True, True, False, "valid")
    assert ReleaseFixes.preset(True) == ReleaseFixes()
    assert ReleaseFixes.preset(False) == ReleaseFixes.all()
    # faithful=False sets every fix; a fix named with it wins, whatever the order
    for options in (
        {"faithful": False, "persist_memory": True},
        {"persist_memory": True, "faithful": False},
    ):
        fixes = GMMHeadConfig().replace(**options).fixes
        assert fixes == dataclasses.replace(ReleaseFixes.all(), persist_memory=True)
    assert GMMHeadConfig(fixes=ReleaseFixes.all()).replace(faithful=True).fixes == ReleaseFixes()


def test_unknown_option_and_out_of_range_values_are_named() -> None:
    with pytest.raises(TypeError, match=r"unknown GMM head option\(s\) \['embed_dims'\]"):
        GMMClassifier(3, 8, embed_dims=4)
    with pytest.raises(ValueError, match="embed_dim must be a positive int, got 0"):
        GMMClassifier(3, 8, GMMHeadConfig(embed_dim=0))
    with pytest.raises(ValueError, match="loss_average must be 'all' or 'valid', got 'some'"):
        GMMClassifier(3, 8, loss_average="some")
    with pytest.raises(ValueError, match=r"dropout must be a float in \[0, 1\), got 1.0"):
        GMMClassifier(3, 8, dropout=1.0)


@pytest.mark.parametrize(
    "name", ["separate_component_ignore", "count_only_filled", "persist_memory"]
)
def test_a_fix_flag_must_be_a_bool_and_none_is_refused_by_name(name: str) -> None:
    """None meant "follow faithful" in the old keyword API; a stored None would, e.g., build a
    ComponentMemory(persistent=None) whose bank silently leaves the state_dict."""
    none = rf"{name}: expected True or False, received None \(None meant 'follow faithful'"
    with pytest.raises(ValueError, match=none):
        GMMClassifier(3, 8, **{name: None})
    with pytest.raises(ValueError, match=none):
        ReleaseFixes(**{name: None})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"{name}: expected True or False, received 1$"):
        GMMHeadConfig().replace(**{name: 1})
    with pytest.raises(ValueError, match=rf"{name}: expected True or False, received 'no'$"):
        dataclasses.replace(ReleaseFixes(), **{name: "no"})
    assert getattr(GMMClassifier(3, 8, **{name: True}).config.fixes, name) is True


def test_faithful_must_be_a_bool_and_cannot_be_combined_with_a_fixes_object() -> None:
    with pytest.raises(ValueError, match=r"faithful: expected True or False, received None$"):
        GMMClassifier(3, 8, faithful=None)
    with pytest.raises(TypeError, match="pass fixes= or faithful=, not both"):
        GMMHeadConfig().replace(faithful=True, fixes=ReleaseFixes(persist_memory=False))
    with pytest.raises(ValueError, match="fixes must be a ReleaseFixes, got dict"):
        GMMClassifier(3, 8, fixes={"persist_memory": False})
    with pytest.raises(ValueError, match="upsample_before_norm: expected True or False"):
        GMMClassifier(3, 8, upsample_before_norm=None)


def test_an_output_of_another_head_is_refused_by_name() -> None:
    g, lin = gmm_head(), LinearClassifier(3, 8)
    feats, labels = torch.randn(1, 8, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="output must be a GMMOutput, got LinearOutput"):
        g.losses_and_update(lin(feats), labels)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output must be a LinearOutput, got GMMOutput"):
        lin.losses_and_update(g(feats), labels)  # type: ignore[arg-type]
