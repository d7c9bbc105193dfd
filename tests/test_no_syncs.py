"""A GMMSeg training step of the Segmentor makes no host-device synchronisation.

On the CPU nothing synchronises, so :mod:`sync_check` flags every Python-level torch call that
would synchronise on an accelerator (a value read on the host, an output sized by the data). With
CUDA available, the same step also runs under ``torch.cuda.set_sync_debug_mode("error")``.

Allowed (each at most once per M-step, never in a step without one):

* ``em/momentum.py:_group_indices``, ``nonzero``: the M-step lists the classes present in the
  batch (a (C,) mask built on the device) as indices; their number sizes the bank read, which
  is then over the present classes only (reading all C classes instead would cost far more on
  a GPU than one synchronisation every ``update_interval`` steps, and would change the
  chunked sums' rounding).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from gmmseg.heads import GMMClassifier
from gmmseg.recipes import get_recipe
from gmmseg.recipes.build import build_model
from gmmseg.segmentor import Segmentor
from sync_check import Sync, detect_syncs

#: (file, function, call) -> why; each may occur at most once per M-step.
ALLOWED_PER_M_STEP = {
    ("src/gmmseg/em/momentum.py", "_group_indices", "nonzero"): (
        "the M-step's list of present classes sizes its read of the bank"
    ),
}


def _allowed(sync: Sync) -> bool:
    return any(
        sync.file == f and sync.function == fn and call in sync.call
        for f, fn, call in ALLOWED_PER_M_STEP
    )


def _segmentor(memory: str, validate: bool) -> Segmentor:
    cfg = get_recipe("segformer_b5_ade20k_gmm").model
    cfg = dataclasses.replace(cfg, gmm=dataclasses.replace(cfg.gmm, memory=memory))
    seg = build_model(cfg, 150, tiny=True, generator=torch.Generator().manual_seed(0))
    assert isinstance(seg.classifier, GMMClassifier)
    seg.classifier.validate = validate
    return seg.train()


def _batch(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=gen, device="cpu")
    labels = torch.randint(0, 150, (2, 64, 64), generator=gen, device="cpu")
    labels[:, :6] = 255
    labels[1, 20:40, 20:40] = 7  # a large region: more than max_samples_per_component per ring
    return images.to(device), labels.to(device)


def _step(seg: Segmentor, images: torch.Tensor, labels: torch.Tensor) -> None:
    losses = seg.training_step(images, labels)
    sum(losses.values(), torch.zeros((), device=images.device)).backward()


def test_detector_flags_the_syncing_calls() -> None:
    x = torch.arange(6.0)
    mask = x > 2
    with detect_syncs() as log:
        x.sum().item()
        bool(x.any())
        int(x[0])
        float(x[1])
        x.tolist()
        torch.nonzero(mask)
        torch.unique(x)
        torch.bincount(x.long(), minlength=8)
        x[mask]
        x.clone()[mask] = 0.0
        torch.repeat_interleave(x, x.long())
        torch.equal(x, x)
        # none of these synchronise
        torch.repeat_interleave(x, x.long(), output_size=15)
        x[x.long() % 2]
        torch.where(mask, x, 0.0).sum()
    calls = [s.call for s in log.syncs]
    assert len(calls) == 12, calls
    assert any("repeat_interleave" in c for c in calls)
    assert sum("bool mask" in c for c in calls) == 2


@pytest.mark.parametrize("memory", ["ring", "stats"])
def test_training_step_has_no_host_syncs(memory: str) -> None:
    """Forward, E-step, losses, memory write, M-step when due, backward: no synchronisation."""
    seg = _segmentor(memory, validate=False)
    classifier = seg.classifier
    assert isinstance(classifier, GMMClassifier)
    images, labels = _batch(next(seg.parameters()).device)
    interval = classifier.update_interval
    for step in range(interval + 1):  # steps 0 and `interval` run the M-step
        with detect_syncs() as log:
            _step(seg, images, labels)
        m_step = step % interval == 0
        unexpected = [str(s) for s in log.syncs if not (m_step and _allowed(s))]
        assert not unexpected, f"step {step}: {unexpected}"
        per_site = Counter((s.file, s.function) for s in log.syncs)
        assert all(n <= 1 for n in per_site.values()), per_site
    assert int(classifier.step) == interval + 1
    if torch.cuda.is_available():
        _check_under_cuda_sync_debug_mode(memory)


def _check_under_cuda_sync_debug_mode(memory: str) -> None:
    """The detector's claim on a real GPU: ``set_sync_debug_mode("error")`` between M-steps."""
    seg = _segmentor(memory, validate=False).cuda()
    classifier = seg.classifier
    assert isinstance(classifier, GMMClassifier)
    images, labels = _batch("cuda")
    _step(seg, images, labels)  # step 0 (M-step; first use also initialises CUDA libraries)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    try:
        torch.cuda.set_sync_debug_mode("error")
        for _ in range(1, classifier.update_interval):  # steps without an M-step: none at all
            _step(seg, images, labels)
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _step(seg, images, labels)  # an M-step: at most the allowed one
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= len(ALLOWED_PER_M_STEP), [str(w.message) for w in syncs]


def test_bad_input_still_gets_a_clear_error() -> None:
    """With ``validate`` (the default) the step refuses bad values; without it, check_labels."""
    seg = _segmentor("ring", validate=True)
    classifier = seg.classifier
    assert isinstance(classifier, GMMClassifier)
    images, labels = _batch(next(seg.parameters()).device)
    labels[0, 10, 10] = 150
    with pytest.raises(ValueError, match=r"target values must be in \[0, 150\).*\[150\]"):
        seg.training_step(images, labels)
    with pytest.raises(ValueError, match="features must be finite"):
        classifier(torch.full((1, classifier.in_channels, 4, 4), float("nan")))
    classifier.validate = False
    with pytest.raises(ValueError, match=r"target values must be in \[0, 150\)"):
        classifier.check_labels(labels)


def test_trainer_loop_reads_the_device_only_at_its_read_steps(tmp_path: Path) -> None:
    """The Trainer around the step: with the classifier's device checks off (as train_recipe
    sets them on accelerators), a step adds no synchronisation; the labels are checked while
    they are still host tensors, and the losses are read in Trainer._read only.

    SGD rather than AdamW: AdamW reads its step counters with ``item()``, which the detector
    flags, but PyTorch keeps those counters on the host unless the optimiser is ``capturable``.
    """
    from gmmseg.engine import PolyWarmup, build_optimizer
    from gmmseg.engine.distributed import DistInfo
    from gmmseg.engine.trainer import Trainer, TrainSettings

    seg = _segmentor("ring", validate=False)
    classifier = seg.classifier
    assert isinstance(classifier, GMMClassifier)
    images, labels = _batch()
    batches = [{"image": images, "label": labels}] * 3
    trainer = Trainer(
        seg,
        build_optimizer(seg, "sgd", 1e-4, 0.0, momentum=0.9),
        PolyWarmup(3),
        lambda start: batches[start:],
        TrainSettings(max_iters=3, log_interval=3),
        DistInfo(0, 1, 0, torch.device("cpu")),
        work_dir=tmp_path,
        progress=False,
    )
    pending = [trainer._step(batches[0])]  # step 0 runs the M-step; steps 1 and 2 do not
    for _ in range(2):
        with detect_syncs() as log:
            pending.append(trainer._step(batches[0]))
        # The only reads are of the host labels (checked before they are moved).
        assert all(s.function == "check_target" for s in log.syncs), [str(s) for s in log.syncs]
        assert log.syncs, "expected the host label check"
    with detect_syncs() as log:
        records = trainer._read(pending)
    assert [s.function for s in log.syncs] == ["_read"]
    assert len(records) == 3 and all(sorted(r) == sorted(records[0]) for r in records)
