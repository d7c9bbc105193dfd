"""Trainer: exact resume, AMP, clipping, logs, checkpoints; evaluation loops vs plain references."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor

from gmmseg.data import DemoScenes
from gmmseg.data.samplers import collate_samples
from gmmseg.engine import InferenceSettings, evaluate_anomaly, evaluate_segmentation
from gmmseg.engine.checkpoint import latest_checkpoint, load_checkpoint
from gmmseg.engine.trainer import Trainer, TrainSettings
from gmmseg.heads import GMMClassifier
from gmmseg.recipes import apply_overrides, build_model, dry_run_recipe, get_recipe, train_recipe
from gmmseg.recipes.run import load_trained

pytest.importorskip("skimage")


def tiny_demo(tmp_path: Path, head: str = "gmm", *extra: str) -> object:
    recipe = dry_run_recipe(get_recipe("demo" if head == "gmm" else "demo_softmax"), tmp_path)
    return apply_overrides(
        recipe,
        [
            "train.iters=6",
            "train.checkpoint_interval=3",
            "train.deterministic=true",
            "data.demo_train_images=12",
            "data.demo_val_images=3",
            "data.batch_size=2",
            *extra,
        ],
    )


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Interrupted(Exception):
    pass


@pytest.mark.parametrize(
    ("head", "eval_interval"), [("gmm", 0), ("linear", 0), ("gmm", 3), ("linear", 3)]
)
def test_resume_reaches_the_same_weights(
    tmp_path: Path, head: str, eval_interval: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With an evaluation at the checkpoint (recorded, so not repeated on resume): before, the
    # evaluation's DataLoader drew from torch's global generator, and the resumed run's dropout
    # masks (the linear head's dropout 0.1) differed from the uninterrupted run's.
    extra = [f"train.eval_interval={eval_interval}"] if eval_interval else []
    recipe = tiny_demo(tmp_path, head, *extra)
    straight, res_a = train_recipe(recipe, tmp_path / "a", tiny=True, progress=False)
    # The same run, killed after its iteration-3 checkpoint ...
    step = Trainer._step

    def crashing_step(self: Trainer, batch: dict[str, Any]) -> Any:
        if self.iteration == 3:
            raise Interrupted
        return step(self, batch)

    monkeypatch.setattr(Trainer, "_step", crashing_step)
    with pytest.raises(Interrupted):
        train_recipe(recipe, tmp_path / "b", tiny=True, progress=False)
    monkeypatch.setattr(Trainer, "_step", step)
    assert [p.name for p in (tmp_path / "b").glob("iter_*.pt")] == ["iter_00000003.pt"]
    # ... and resumed to the end.
    torch.manual_seed(12345)  # the global RNG is restored from the checkpoint, not reused
    resumed, res_b = train_recipe(recipe, tmp_path / "b", resume="auto", tiny=True, progress=False)
    assert res_b["iteration"] == 6
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    if head == "gmm":
        ca, cb = straight.classifier, resumed.classifier
        assert isinstance(ca, GMMClassifier) and isinstance(cb, GMMClassifier)
        torch.testing.assert_close(ca.memory.bank, cb.memory.bank, rtol=0, atol=0)
    assert res_a["eval"]["mIoU"] == res_b["eval"]["mIoU"]


def test_logs_checkpoints_and_metrics(tmp_path: Path) -> None:
    recipe = apply_overrides(tiny_demo(tmp_path), ["train.checkpoint_interval=2"])
    _, result = train_recipe(recipe, tmp_path / "w", tiny=True, progress=False)
    work = tmp_path / "w"
    # keep_checkpoints=2 prunes the oldest of iterations 2, 4, 6
    assert sorted(p.name for p in work.glob("iter_*.pt")) == [
        "iter_00000004.pt",
        "iter_00000006.pt",
    ]
    assert not list(work.glob(".*.tmp"))
    lines = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["mode"] == "train"]
    assert [x["iter"] for x in train_lines] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(x["loss"]) for x in train_lines)
    assert {"loss_seg", "loss_component", "lr_factor"} <= set(train_lines[0])
    assert [x for x in lines if x["mode"] == "eval"][-1]["mIoU"] == result["eval"]["mIoU"]
    saved = json.loads((work / "metrics.json").read_text())
    assert saved["iteration"] == 6 and saved["eval"]["mIoU"] == result["eval"]["mIoU"]
    assert json.loads((work / "recipe.json").read_text())["name"] == recipe.name  # type: ignore[attr-defined]
    _, loaded = load_trained(work / "iter_00000006.pt")
    assert loaded == recipe


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_clipping(tmp_path: Path, amp: str) -> None:
    recipe = tiny_demo(tmp_path, "gmm", f"train.amp={amp}", "optim.grad_clip=0.5", "train.iters=2")
    _, result = train_recipe(recipe, tmp_path / amp, tiny=True, progress=False)
    lines = [json.loads(x) for x in (tmp_path / amp / "log.jsonl").read_text().splitlines()]
    norms = [x["grad_norm"] for x in lines if x["mode"] == "train"]
    assert len(norms) == 2
    if amp == "bf16":
        assert all(np.isfinite(n) for n in norms)
    else:  # the gradient scaler's first steps may overflow (logged "inf", step skipped)
        assert all(isinstance(n, float) or n in ("inf", "nan") for n in norms)
    assert np.isfinite(result["train"]["loss"])


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="max_iters must be >= 1"):
        TrainSettings(max_iters=0)
    with pytest.raises(ValueError, match="amp must be"):
        TrainSettings(max_iters=1, amp="fp8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grad_clip"):
        TrainSettings(max_iters=1, grad_clip=0.0)


def test_batch_not_divisible_by_processes(tmp_path: Path) -> None:
    recipe = tiny_demo(tmp_path, "gmm", "data.batch_size=3")
    _, result = train_recipe(recipe, None, tiny=True, progress=False)  # one process: fine
    assert result["iteration"] == 6


def _demo_loader(split: str, n: int) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
    from gmmseg.data.transforms import Normalize

    ds = DemoScenes(split, num_images=n, size=64, transform=Normalize())  # type: ignore[arg-type]
    return torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_samples)


def test_evaluate_segmentation_matches_a_plain_confusion_matrix() -> None:
    torch.manual_seed(0)
    recipe = get_recipe("demo_softmax")
    model = build_model(recipe.model, 12, tiny=True).eval()
    loader = _demo_loader("val", 4)
    result = evaluate_segmentation(model, loader, 12)
    conf = np.zeros((12, 12), dtype=np.int64)
    with torch.no_grad():
        for batch in loader:
            logits = model.predict(batch["image"]).logits
            pred = logits.argmax(1).numpy().ravel()
            gt = batch["label"].numpy().ravel()
            for g, p in zip(gt, pred, strict=True):
                if g != 255:
                    conf[g, p] += 1
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    assert result["mIoU"] == pytest.approx(np.nanmean(iou), rel=1e-12)


def test_evaluate_segmentation_resizes_logits_to_the_label() -> None:
    recipe = get_recipe("demo_softmax")
    model = build_model(recipe.model, 12, tiny=True).eval()
    images = torch.randn(1, 3, 32, 32)
    labels = torch.randint(0, 12, (1, 48, 40))
    result = evaluate_segmentation(model, [{"image": images, "label": labels}], 12)
    logits = torch.nn.functional.interpolate(
        model.predict(images).logits, size=(48, 40), mode="bilinear", align_corners=False
    )
    acc = (logits.argmax(1) == labels).double().mean().item()
    assert result["aAcc"] == pytest.approx(acc, rel=1e-12)


def test_evaluate_anomaly_matches_sklearn() -> None:
    torch.manual_seed(0)
    model = build_model(get_recipe("demo").model, 12, tiny=True).eval()
    loader = _demo_loader("ood", 4)
    results = evaluate_anomaly(model, loader, settings=InferenceSettings())
    assert set(results) == {"likelihood", "msp", "max_logit", "energy", "entropy"}
    scores, labels = [], []
    with torch.no_grad():
        for batch in loader:
            pred = model.predict(batch["image"])
            scores.append(pred.anomaly.numpy().ravel())
            labels.append(batch["label"].numpy().ravel())
    s, y = np.concatenate(scores), np.concatenate(labels)
    keep = y != 255
    r = results["likelihood"]
    assert r["ap"] == pytest.approx(average_precision_score(y[keep], s[keep]), rel=1e-9)
    assert r["auroc"] == pytest.approx(roc_auc_score(y[keep], s[keep]), rel=1e-9)


def test_evaluate_anomaly_unknown_score() -> None:
    model = build_model(get_recipe("demo").model, 12, tiny=True).eval()
    with pytest.raises(ValueError, match="unknown anomaly score"):
        evaluate_anomaly(model, _demo_loader("ood", 3), scores=["odin"])


def test_evaluation_needs_labels() -> None:
    model = build_model(get_recipe("demo").model, 12, tiny=True).eval()
    batch = {"image": torch.randn(1, 3, 32, 32), "label": None, "name": ["x"]}
    with pytest.raises(ValueError, match="needs labels"):
        evaluate_segmentation(model, [batch], 12)


def test_kmeans_init_moves_means_to_the_embeddings(tmp_path: Path) -> None:
    recipe = tiny_demo(tmp_path, "gmm", "model.gmm.init_means=kmeans", "train.iters=1")
    base = tiny_demo(tmp_path, "gmm", "train.iters=1")
    assert dataclasses.replace(recipe, model=base.model) == base  # type: ignore[attr-defined, type-var]
    model_k, _ = train_recipe(recipe, None, tiny=True, progress=False)
    model_r, _ = train_recipe(base, None, tiny=True, progress=False)
    ck, cr = model_k.classifier, model_r.classifier
    assert isinstance(ck, GMMClassifier) and isinstance(cr, GMMClassifier)
    assert not torch.allclose(ck.means, cr.means)


def test_fit_means_recovers_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    head = GMMClassifier(3, 8, embed_dim=8, num_components=2, memory_size=16, generator=g)
    centres = torch.nn.functional.normalize(torch.randn(3, 2, 8, generator=g), dim=-1)
    rows, labels = [], []
    for c in range(3):
        for m in range(2):
            rows.append(centres[c, m] + 0.01 * torch.randn(300, 8, generator=g))
            labels.append(torch.full((300,), c))
    rows.append(torch.randn(5, 8, generator=g))
    labels.append(torch.full((5,), 255))  # void rows are ignored
    x, y = torch.cat(rows), torch.cat(labels)
    before = head.means.clone()
    fitted = head.fit_means(x, y, generator=torch.Generator().manual_seed(1))
    assert fitted.tolist() == [True, True, True]
    for c in range(3):
        # each true centre is matched by one fitted mean (any order)
        d = torch.cdist(centres[c], head.means[c])
        assert sorted(d.argmin(dim=1).tolist()) == [0, 1]
        assert float(d.min(dim=1).values.max()) < 0.01
        torch.testing.assert_close(head.means[c].norm(dim=-1), torch.ones(2))
        # standard deviation = sqrt(var + floor) with var ≈ 0.01²
        expected = (torch.tensor(1e-4) + head.variance_floor).sqrt()
        torch.testing.assert_close(head.scales[c], expected.expand(2, 8), rtol=0.05, atol=0)
    # a class with fewer than M rows keeps its means
    head.means.copy_(before)
    fitted = head.fit_means(x[:301], y[:301])
    assert fitted.tolist() == [True, False, False]
    torch.testing.assert_close(head.means[1:], before[1:])
    with pytest.raises(ValueError, match="D = 8"):
        head.fit_means(torch.randn(4, 5), torch.zeros(4, dtype=torch.int64))


@pytest.mark.slow
def test_channels_last_and_compile_train(tmp_path: Path) -> None:
    recipe = tiny_demo(tmp_path, "linear", "train.iters=2", "train.channels_last=true")
    _, plain = train_recipe(recipe, None, tiny=True, progress=False)
    assert np.isfinite(plain["train"]["loss"])
    compiled = apply_overrides(recipe, ["train.compile=true", "train.deterministic=false"])
    _, result = train_recipe(compiled, None, tiny=True, progress=False)
    assert np.isfinite(result["train"]["loss"])


def test_tensorboard_missing_gives_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gmmseg.engine import MetricLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ImportError, match="pip install tensorboard"):
        MetricLogger(tmp_path, tensorboard=True, progress=False)


@pytest.mark.vision  # the vision session installs tensorboard
def test_tensorboard_writes_the_numeric_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gmmseg.engine import MetricLogger

    logger = MetricLogger(tmp_path, tensorboard=True, progress=False)
    logger.log({"iter": 1, "loss": 0.5, "mIoU": 0.25, "note": "text"}, step=1)
    logger.log({"iter": 2, "loss": 0.125}, step=2)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss", "mIoU"]  # not iter, time or text
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 0.5), (2, 0.125)]
    assert [(e.step, e.value) for e in events.Scalars("mIoU")] == [(1, 0.25)]


# --------------------------------------------------------------------------- never lose work


def test_pruning_never_touches_files_the_trainer_did_not_write(tmp_path: Path) -> None:
    # Before: the last two of sorted(glob("iter_*.pt")) were kept: the user's files were
    # deleted, and with iter_best.pt / iter_final.pt present every new checkpoint was deleted
    # right after it was written (so --resume auto restarted from iteration 1).
    work = tmp_path / "w"
    work.mkdir()
    users = {name: f"mine: {name}".encode() for name in ("iter_best.pt", "iter_final.pt")}
    users["iter_00000004_keep.pt"] = b"a copy I keep"
    for name, data in users.items():
        (work / name).write_bytes(data)
    recipe = apply_overrides(tiny_demo(tmp_path), ["train.checkpoint_interval=2"])
    train_recipe(recipe, work, tiny=True, progress=False)
    for name, data in users.items():
        assert (work / name).read_bytes() == data
    assert sorted(p.name for p in work.glob("iter_0*.pt")) == [
        "iter_00000004.pt",
        "iter_00000004_keep.pt",
        "iter_00000006.pt",
    ]
    assert latest_checkpoint(work) == work / "iter_00000006.pt"
    _, result = train_recipe(recipe, work, resume="auto", tiny=True, progress=False)
    assert result["iteration"] == 6
    for name, data in users.items():
        assert (work / name).read_bytes() == data


def test_a_failing_evaluation_loses_no_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: evaluation ran before the checkpoint of its iteration was written, so a failing
    # evaluation (a truncated validation image, ...) lost all training since the last one.
    import gmmseg.recipes.run as run_module

    recipe = apply_overrides(tiny_demo(tmp_path), ["train.eval_interval=3"])
    straight, res_a = train_recipe(recipe, tmp_path / "a", tiny=True, progress=False)
    real = run_module.evaluate_segmentation

    def broken(*args: object, **kwargs: object) -> object:
        raise OSError("cannot decode image file val/0003.png: truncated")

    monkeypatch.setattr(run_module, "evaluate_segmentation", broken)
    with pytest.raises(OSError, match="truncated"):
        train_recipe(recipe, tmp_path / "b", tiny=True, progress=False)
    assert latest_checkpoint(tmp_path / "b") == tmp_path / "b" / "iter_00000003.pt"
    calls: list[int] = []

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(run_module, "evaluate_segmentation", counting)
    resumed, res_b = train_recipe(recipe, tmp_path / "b", resume="auto", tiny=True, progress=False)
    assert len(calls) == 2  # the evaluation of iteration 3 that failed, then iteration 6
    for k, v in weights(straight).items():
        torch.testing.assert_close(v, weights(resumed)[k], rtol=0, atol=0, msg=k)
    assert res_b["eval"] == res_a["eval"] and res_b["eval"]["mIoU"] >= 0


def test_resuming_a_finished_run_keeps_its_metrics(tmp_path: Path) -> None:
    # Before: --resume auto on a finished run rewrote metrics.json with empty results.
    recipe = tiny_demo(tmp_path)
    _, first = train_recipe(recipe, tmp_path / "w", tiny=True, progress=False)
    before = json.loads((tmp_path / "w" / "metrics.json").read_text())
    _, again = train_recipe(recipe, tmp_path / "w", resume="auto", tiny=True, progress=False)
    after = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert again["eval"] == first["eval"] and again["eval"]
    assert after["eval"] == before["eval"] and after["train"] == before["train"]
    assert after["train"]["loss"] == pytest.approx(first["train"]["loss"])
    # Before: "seconds" became the resumed session's (next to nothing). Now the file is left
    # as it was.
    assert after == before and again["seconds"] == before["seconds"] > 0
    state = load_checkpoint(latest_checkpoint(tmp_path / "w"))  # type: ignore[arg-type]
    assert 0 < state["seconds"] <= before["seconds"]  # written before the last evaluation


def test_seconds_count_every_session_of_a_resumed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import gmmseg.recipes.run as run_module

    recipe = apply_overrides(tiny_demo(tmp_path), ["train.eval_interval=3"])

    def broken(*args: object, **kwargs: object) -> object:
        raise OSError("evaluation failed")

    # The first session is made slow (1 s per step), so that the second, fast one alone
    # could not report as much: its result must carry the first session's seconds.
    step = Trainer._step

    def slow_step(self: Trainer, batch: dict[str, Any]) -> Any:
        time.sleep(1.0)
        return step(self, batch)

    monkeypatch.setattr(Trainer, "_step", slow_step)
    monkeypatch.setattr(run_module, "evaluate_segmentation", broken)
    start = time.perf_counter()
    with pytest.raises(OSError, match="evaluation failed"):
        train_recipe(recipe, tmp_path / "w", tiny=True, progress=False)
    first = load_checkpoint(tmp_path / "w" / "iter_00000003.pt")["seconds"]
    assert 3.0 <= first <= time.perf_counter() - start
    monkeypatch.undo()
    start = time.perf_counter()
    _, result = train_recipe(recipe, tmp_path / "w", resume="auto", tiny=True, progress=False)
    second = time.perf_counter() - start
    assert second < first  # the fast session alone
    last = load_checkpoint(tmp_path / "w" / "iter_00000006.pt")["seconds"]
    assert first < last <= result["seconds"] <= first + second
    assert json.loads((tmp_path / "w" / "metrics.json").read_text())["seconds"] == result["seconds"]


def test_resuming_a_finished_run_with_changed_settings_rewrites_nothing(tmp_path: Path) -> None:
    # Before: --allow-changed-settings on a finished run rewrote recipe.json with the new values,
    # which the run was never trained with, and recorded the change nowhere.
    recipe = tiny_demo(tmp_path)
    train_recipe(recipe, tmp_path / "w", tiny=True, progress=False)
    files = {p.name: p.read_bytes() for p in (tmp_path / "w").iterdir() if p.is_file()}
    changed = apply_overrides(recipe, ["train.seed=7"])
    _, result = train_recipe(
        changed,
        tmp_path / "w",
        resume="auto",
        tiny=True,
        progress=False,
        allow_changed_settings=True,
    )
    assert result["iteration"] == 6
    assert {p.name: p.read_bytes() for p in (tmp_path / "w").iterdir() if p.is_file()} == files


def test_resume_refuses_changed_settings_unless_told(tmp_path: Path) -> None:
    # Before: another seed / learning rate / batch size was accepted silently and the run then
    # claimed the new values throughout.
    recipe = apply_overrides(tiny_demo(tmp_path), ["train.iters=3", "train.checkpoint_interval=3"])
    train_recipe(recipe, tmp_path / "w", tiny=True, progress=False)
    saved = (tmp_path / "w" / "recipe.json").read_text()
    longer = apply_overrides(recipe, ["train.iters=6"])
    changed = apply_overrides(longer, ["train.seed=5", "optim.lr=0.5"])
    with pytest.raises(ValueError, match=r"train\.seed: 0 -> 5.*--allow-changed-settings"):
        train_recipe(changed, tmp_path / "w", resume="auto", tiny=True, progress=False)
    assert (tmp_path / "w" / "recipe.json").read_text() == saved  # nothing rewritten
    # intervals, workers and evaluation settings may change freely
    relaxed = apply_overrides(recipe, ["train.log_interval=2", "data.num_workers=0"])
    train_recipe(relaxed, tmp_path / "w", resume="auto", tiny=True, progress=False)
    _, result = train_recipe(
        changed,
        tmp_path / "w",
        resume="auto",
        tiny=True,
        progress=False,
        allow_changed_settings=True,
    )
    assert result["iteration"] == 6
    state = load_checkpoint(latest_checkpoint(tmp_path / "w"))  # type: ignore[arg-type]
    record = next(r for r in state["history"] if r["mode"] == "resume")
    assert record["iter"] == 3
    assert record["changed"]["train.seed"] == [0, 5]
    assert record["changed"]["train.iters"] == [3, 6]
    assert json.loads((tmp_path / "w" / "recipe.json").read_text())["train"]["seed"] == 5


def test_resume_from_a_checkpoint_of_another_model_is_one_line(tmp_path: Path) -> None:
    # Before: load_state_dict's multi-line RuntimeError.
    gmm = tiny_demo(tmp_path)
    train_recipe(gmm, tmp_path / "gmm", tiny=True, progress=False)
    other = apply_overrides(tiny_demo(tmp_path, "linear"), ["name=demo"])
    with pytest.raises(ValueError, match=r"iter_00000006\.pt' does not fit") as info:
        train_recipe(
            other,
            tmp_path / "x",
            resume=str(tmp_path / "gmm" / "iter_00000006.pt"),
            tiny=True,
            progress=False,
            allow_changed_settings=True,
        )
    assert "\n" not in str(info.value)
    # the load error's details (which keys are missing / unexpected), not only its heading
    assert "Missing key(s)" in str(info.value) or "Unexpected key(s)" in str(info.value)


def test_persist_memory_false_keeps_the_bank_out_of_checkpoints(tmp_path: Path) -> None:
    # Before: the docs said so, but trainer checkpoints stored every non-persistent buffer.
    for persist in (False, True):
        recipe = apply_overrides(
            tiny_demo(tmp_path), ["train.iters=2", f"model.gmm.fixes.persist_memory={persist}"]
        )
        train_recipe(recipe, tmp_path / str(persist), tiny=True, progress=False)
        state = load_checkpoint(tmp_path / str(persist) / "iter_00000002.pt")
        stored = set(state["model"]) | set(state.get("buffers", {}))
        assert ("classifier.memory.bank" in stored) is persist


def test_an_empty_batch_is_refused_instead_of_a_nan_loss(tmp_path: Path) -> None:
    recipe = tiny_demo(tmp_path, "linear")
    model = build_model(recipe.model, 12, tiny=True)  # type: ignore[attr-defined]
    trainer = _bare_trainer(model)
    batch = {"image": torch.zeros(0, 3, 32, 32), "label": torch.zeros(0, 32, 32, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"training step 1: the batch holds no images"):
        trainer.step(batch)


def test_divergence_names_the_step(tmp_path: Path) -> None:
    # Before: "features must be finite" without the iteration.
    recipe = tiny_demo(tmp_path)
    model = build_model(recipe.model, 12, tiny=True)  # type: ignore[attr-defined]
    trainer = _bare_trainer(model)
    trainer.iteration = 41
    image = torch.full((2, 3, 32, 32), float("nan"))
    batch = {"image": image, "label": torch.zeros(2, 32, 32, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"training step 42: .*finite.*lower the learning rate"):
        trainer.step(batch)


def _bare_trainer(model: torch.nn.Module) -> Trainer:
    from gmmseg.engine import PolyWarmup, build_optimizer
    from gmmseg.engine.distributed import DistInfo

    opt = build_optimizer(model, "adamw", 1e-3, 0.0)
    return Trainer(
        model,  # type: ignore[arg-type]
        opt,
        PolyWarmup(10),
        lambda start: [],
        TrainSettings(max_iters=10),
        DistInfo(0, 1, 0, torch.device("cpu")),
        progress=False,
    )


def test_a_new_run_is_refused_in_a_folder_whose_run_went_further(tmp_path: Path) -> None:
    # Found in review: a second run into the same folder had its first checkpoint pruned at
    # once (the other run's were later) and --resume auto then jumped onto the other run.
    recipe = tiny_demo(tmp_path)
    train_recipe(recipe, tmp_path / "w", tiny=True, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "w").iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"reached iteration 6 .*--resume auto"):
        train_recipe(recipe, tmp_path / "w", tiny=True, progress=False)
    # resuming from an earlier checkpoint would overwrite the later ones too
    train_recipe(
        apply_overrides(recipe, ["train.checkpoint_interval=2"]),
        tmp_path / "v",
        tiny=True,
        progress=False,
    )
    with pytest.raises(ValueError, match=r"reached iteration 6 .*resuming from .*iteration 4\)"):
        train_recipe(
            apply_overrides(recipe, ["train.checkpoint_interval=2"]),
            tmp_path / "v",
            resume=str(tmp_path / "v" / "iter_00000004.pt"),
            tiny=True,
            progress=False,
        )
    after = {p.name: p.read_bytes() for p in (tmp_path / "w").iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing deleted


def test_resume_accepts_a_recipe_written_before_new_fields_existed(tmp_path: Path) -> None:
    # Found in review: fields added since (model.mit_norm, ...) compared as None -> default.
    recipe = apply_overrides(tiny_demo(tmp_path), ["train.iters=3", "train.checkpoint_interval=3"])
    train_recipe(recipe, tmp_path / "w", tiny=True, progress=False)
    path = tmp_path / "w" / "iter_00000003.pt"
    state = load_checkpoint(path)
    old = state["extra"]["recipe"]
    del old["model"]["mit_norm"], old["model"]["gmm"]["dropout"]
    from gmmseg.engine.checkpoint import save_checkpoint

    save_checkpoint(path, {k: v for k, v in state.items() if k != "sha256"})
    _, result = train_recipe(
        apply_overrides(recipe, ["train.iters=3"]),
        tmp_path / "w",
        resume="auto",
        tiny=True,
        progress=False,
    )
    assert result["iteration"] == 3


def test_manifest_keeps_non_finite_evaluation_numbers(tmp_path: Path) -> None:
    from gmmseg.engine.checkpoint import CheckpointManifest, save_checkpoint

    m = CheckpointManifest(tmp_path)
    m.add(save_checkpoint(tmp_path / "iter_00000001.pt", {"model": {}}), 1)
    m.record_eval(1, {"mIoU": 0.5, "IoU": [float("nan"), 0.25], "x": (1, 2)})
    got = CheckpointManifest(tmp_path).eval_of(1)
    assert got is not None and np.isnan(got["IoU"][0]) and got["IoU"][1] == 0.25
    assert got["x"] == [1, 2] and got["mIoU"] == 0.5


def test_inference_loads_skip_the_memory_bank(tmp_path: Path) -> None:
    # Found in review: load_trained read a gmmseg checkpoint whole (optimiser moments and the
    # memory bank, 5.7 GiB at ADE20K scale) onto the evaluation device.
    recipe = apply_overrides(tiny_demo(tmp_path), ["train.iters=2"])
    trained, _ = train_recipe(recipe, tmp_path / "w", tiny=True, progress=False)
    path = tmp_path / "w" / "iter_00000002.pt"
    light, _ = load_trained(path)
    full, _ = load_trained(path, memory=True)
    assert isinstance(light.classifier, GMMClassifier) and isinstance(
        full.classifier, GMMClassifier
    )
    assert light.classifier.memory.bank.shape[-2] == 1
    torch.testing.assert_close(full.classifier.memory.bank, trained.classifier.memory.bank)  # type: ignore[union-attr]
    bank_keys = {"classifier.memory.bank", "classifier.memory.ptr", "classifier.memory.filled"}
    for k, v in light.state_dict().items():
        if k not in bank_keys:
            torch.testing.assert_close(v, full.state_dict()[k], rtol=0, atol=0, msg=k)
    images = torch.randn(2, 3, 32, 32)
    a, b = light.predict(images), full.predict(images)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)


def _loop_trainer(
    model: torch.nn.Module, batches: list[dict[str, Tensor]], work_dir: Path, **settings: Any
) -> Trainer:
    from gmmseg.engine import PolyWarmup, build_optimizer
    from gmmseg.engine.distributed import DistInfo

    return Trainer(
        model,  # type: ignore[arg-type]
        build_optimizer(model, "adamw", 1e-3, 0.0),
        PolyWarmup(len(batches)),
        lambda start: batches[start:],
        TrainSettings(max_iters=len(batches), **settings),
        DistInfo(0, 1, 0, torch.device("cpu")),
        work_dir=work_dir,
        progress=False,
    )


def _batches(n: int, nan_at: int | None = None) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        image = torch.randn(2, 3, 32, 32, generator=g)
        if i + 1 == nan_at:
            image[0, 0, 0, 0] = float("nan")
        out.append({"image": image, "label": torch.randint(0, 12, (2, 32, 32), generator=g)})
    return out


def test_fit_reads_losses_at_log_steps_and_logs_the_per_step_mean(tmp_path: Path) -> None:
    """The loop reads losses only at log / checkpoint steps, and logs the same means as reading
    them after every step (Trainer.step)."""
    recipe = tiny_demo(tmp_path, "linear")
    torch.manual_seed(0)
    model = build_model(recipe.model, 12, tiny=True)  # type: ignore[attr-defined]
    reference = copy.deepcopy(model)
    batches = _batches(6)
    trainer = _loop_trainer(model, batches, tmp_path / "a", log_interval=3)
    reads: list[int] = []
    read = trainer._read

    def counting(pending: Any) -> list[dict[str, float]]:
        reads.append(len(pending))
        return read(pending)

    trainer._read = counting  # type: ignore[method-assign]
    torch.manual_seed(1)  # the same dropout draws in both runs
    trainer.fit()
    assert reads == [3, 3]
    ref = _loop_trainer(reference, batches, tmp_path / "b", log_interval=3)
    torch.manual_seed(1)
    steps = [ref.step(b) for b in batches]
    logged = [r for r in trainer.history if r["mode"] == "train"]
    for record, chunk in zip(logged, (steps[:3], steps[3:]), strict=True):
        assert set(record) == {"iter", "mode", *chunk[0]}
        for key in chunk[0]:
            want = sum(s[key] for s in chunk) / 3
            assert record[key] == pytest.approx(want, rel=1e-12), key


def test_a_diverged_step_is_named_and_never_checkpointed(tmp_path: Path) -> None:
    recipe = tiny_demo(tmp_path, "linear")
    model = build_model(recipe.model, 12, tiny=True)  # type: ignore[attr-defined]
    model.classifier.validate = False  # the NaN reaches the loss (as on an accelerator)
    trainer = _loop_trainer(
        model, _batches(6, nan_at=5), tmp_path / "w", log_interval=3, checkpoint_interval=3
    )
    with pytest.raises(FloatingPointError, match=r"training step 5: non-finite loss nan"):
        trainer.fit()
    assert sorted(p.name for p in (tmp_path / "w").glob("iter_*.pt")) == ["iter_00000003.pt"]


def test_labels_are_checked_on_the_host_when_the_classifier_does_not_validate(
    tmp_path: Path,
) -> None:
    recipe = tiny_demo(tmp_path)
    model = build_model(recipe.model, 12, tiny=True)  # type: ignore[attr-defined]
    model.classifier.validate = False
    trainer = _bare_trainer(model)
    batch = _batches(1)[0]
    batch["label"][0, 0, 0] = 40
    with pytest.raises(ValueError, match=r"training step 1: target values must be in \[0, 12\)"):
        trainer.step(batch)


def test_step_refuses_a_non_finite_loss_before_the_optimiser_step(tmp_path: Path) -> None:
    recipe = tiny_demo(tmp_path, "linear")
    model = build_model(recipe.model, 12, tiny=True)  # type: ignore[attr-defined]
    model.classifier.validate = False  # the NaN reaches the loss
    trainer = _bare_trainer(model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(FloatingPointError, match=r"training step 1: non-finite loss nan"):
        trainer.step(_batches(1, nan_at=1)[0])
    assert trainer.iteration == 0
    assert not trainer.optimizer.state  # no moments were written
    for k, v in model.named_parameters():  # (BatchNorm statistics move in any forward)
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
