"""DemoScenes: determinism, disjoint sources per split, masks aligned with the pasted pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from gmmseg.data import demo
from gmmseg.data.demo import DemoScenes
from gmmseg.data.samplers import ClassBalancedSampler

pytestmark = pytest.mark.cpu_only("the demo scenes are generated with numpy on the CPU")


def test_deterministic_for_seed() -> None:
    a, b = DemoScenes("train", 8, seed=1), DemoScenes("train", 8, seed=1)
    c = DemoScenes("train", 8, seed=2)
    for i in range(8):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(
            a[i]["label"], b[i]["label"]
        )  # type: ignore[arg-type]
    assert any(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(8))
    s = a[0]
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 96, 96)
    assert s["label"] is not None and s["label"].dtype == torch.int64 and s["name"] == "train_00000"


def test_disjoint_sources() -> None:
    src = demo._sources()
    splits = {sp: DemoScenes(sp, 1) for sp in ("train", "val", "ood", "ood_near")}
    known = {sp: set(ds._known.tolist()) for sp, ds in splits.items()}
    assert not known["train"] & known["val"]
    assert not (known["train"] | known["val"]) & known["ood"]
    assert known["ood"] == known["ood_near"]
    for ds in splits.values():
        assert set(src["digit_targets"][ds._known].tolist()) <= set(range(8))
        assert set(src["digit_targets"][ds._unknown].tolist()) == {8, 9}
    # Texture crops: train, val and the anomaly splits read disjoint pixel blocks.
    tex = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    used: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    rng = np.random.default_rng(0)
    for split in used:
        for _ in range(50):
            used[split] |= set(demo._texture_crop(rng, tex, split, 64).ravel().astype(int).tolist())
    assert not used[0] & used[1] and not used[0] & used[2] and not used[1] & used[2]


def test_closed_set_masks_follow_pixels() -> None:
    ds = DemoScenes("val", 20, size=128)
    assert len(ds.classes) == 12 and ds.classes[4] == "digit 0"
    for i in range(20):
        image, label = ds.render(i)
        assert set(np.unique(label).tolist()) <= set(range(12))
        for k in set(np.unique(label).tolist()) - set(range(4)):
            pix = image[label == k].astype(np.float64)
            colour = demo._DIGIT_COLOURS[k - 4]
            cos = (pix @ colour) / (np.linalg.norm(pix, axis=1) * np.linalg.norm(colour) + 1e-9)
            assert np.median(cos) > 0.97  # the labelled pixels carry the digit's tint


@pytest.mark.parametrize("split", ["ood", "ood_near"])
def test_anomaly_masks(split: str) -> None:
    from scipy.ndimage import binary_dilation

    ds = DemoScenes(split, 20, size=64)
    assert ds.classes == ("in-distribution", "anomaly")
    for i in range(20):
        label = ds.load_label(i)
        assert set(np.unique(label).tolist()) <= {0, 1, 255}
        anomaly = label == 1
        assert anomaly.any()
        ring = binary_dilation(anomaly) & ~anomaly
        assert (label[ring] == 255).all() and (label[label == 255] != 1).all()


def test_no_anomaly_in_closed_splits() -> None:
    # Closed-set frames use only known classes and never ignore.
    ds = DemoScenes("train", 30)
    values = set().union(*(np.unique(ds.load_label(i)).tolist() for i in range(30)))
    assert values <= set(range(12)) and 255 not in values


def test_sampler_and_errors() -> None:
    ds = DemoScenes("train", 40, size=64)
    sampler = ClassBalancedSampler(ds, 100, torch.Generator().manual_seed(0))
    assert len(list(sampler)) == 100 and sampler.index.present.numel() == 12
    assert len(ds.file_list()) == 40 and "DemoScenes" in repr(ds)
    with pytest.raises(ValueError, match="split"):
        DemoScenes("test", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        DemoScenes("train", 5, size=32)
    with pytest.raises(ValueError, match="num_images"):
        DemoScenes("train", 0)
    with pytest.raises(IndexError):
        ds[40]
