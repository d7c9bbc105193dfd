"""Run recipes: train, evaluate, evaluate anomaly segmentation, load trained models."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from gmmseg.data import Sample
from gmmseg.data.samplers import collate_samples, seed_worker
from gmmseg.data.transforms import JointTransform
from gmmseg.engine import (
    InferenceSettings,
    PolyWarmup,
    Trainer,
    TrainSettings,
    build_optimizer,
    evaluate_anomaly,
    evaluate_segmentation,
    init_distributed,
    load_checkpoint,
)
from gmmseg.engine.checkpoint import is_gmmseg_checkpoint, write_text_atomic
from gmmseg.engine.distributed import DistInfo
from gmmseg.engine.stream import AugmentedView, TrainStream
from gmmseg.heads import GMMClassifier, PosthocMixtures
from gmmseg.interop import Layout, convert_checkpoint, load_converted, read_checkpoint
from gmmseg.metrics import AnomalyResult, SegmentationResult
from gmmseg.recipes._foreign import fit_recipe, matching_recipes
from gmmseg.recipes.build import (
    build_anomaly_datasets,
    build_model,
    build_train_data,
    build_val_dataset,
    num_classes_of,
    resolve_folder_classes,
)
from gmmseg.recipes.overrides import from_dict
from gmmseg.recipes.schema import Recipe
from gmmseg.recipes.validate import check_recipe
from gmmseg.segmentor import Segmentor

__all__ = [
    "anomaly_summary",
    "evaluate_recipe",
    "evaluate_recipe_anomaly",
    "inference_settings",
    "load_trained",
    "segmentation_summary",
    "train_recipe",
]


def inference_settings(recipe: Recipe) -> InferenceSettings:
    """The recipe's eval section (an :class:`~gmmseg.engine.InferenceSettings`), scales a tuple.

    The scales of a recipe built in Python may be a list; the settings hold a tuple.
    """
    e = recipe.eval
    return dataclasses.replace(e, scales=tuple(e.scales))


def segmentation_summary(result: SegmentationResult) -> dict[str, Any]:
    """JSON-friendly mIoU, mAcc, aAcc and per-class IoU (NaN for absent classes → None)."""
    iou = [None if v != v else float(v) for v in result["IoU"].tolist()]
    return {
        "mIoU": float(result["mIoU"]),
        "mAcc": float(result["mAcc"]),
        "aAcc": float(result["aAcc"]),
        "IoU": iou,
    }


def anomaly_summary(result: AnomalyResult) -> dict[str, float]:
    """AP, AUROC and FPR95 (fractions in [0, 1])."""
    return {
        "ap": float(result["ap"]),
        "auroc": float(result["auroc"]),
        "fpr95": float(result["fpr95"]),
    }


def _seed_everything(recipe: Recipe) -> None:
    # gmmseg draws only from torch generators; numpy's and Python's global generators are
    # seeded too so that user code in transforms or hooks is reproducible, and checkpoints
    # (which store all three states) of equal runs are equal.
    torch.manual_seed(recipe.train.seed)
    np.random.seed(recipe.train.seed % 2**32)  # noqa: NPY002 - the legacy global generator
    random.seed(recipe.train.seed)
    if recipe.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def _shard(dataset: Dataset[Sample], dist: DistInfo) -> Dataset[Sample]:
    if dist.world_size == 1:
        return dataset
    n = len(dataset)  # type: ignore[arg-type]
    return Subset(dataset, range(dist.rank, n, dist.world_size))


def _eval_loader(
    dataset: Dataset[Sample], dist: DistInfo, batch_size: int = 1
) -> DataLoader[Sample]:
    return DataLoader(
        _shard(dataset, dist),
        batch_size=batch_size,
        shuffle=False,
        num_workers=0,
        collate_fn=collate_samples,
    )


def _train_loader(
    train_set: Dataset[Sample],
    transform: JointTransform,
    stream: TrainStream,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    seed: int,
) -> DataLoader[Sample]:
    """The training loader over ``stream``: batches depend on the seed, not on the workers."""
    return DataLoader(
        AugmentedView(train_set, transform, seed),
        batch_size=batch_size,
        sampler=stream,
        num_workers=num_workers,
        collate_fn=collate_samples,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        persistent_workers=num_workers > 0,
        # Its own generator: creating the iterator must not draw from the global RNG
        # (that would shift dropout after a resume, which restores the global state).
        generator=torch.Generator().manual_seed(seed),
    )


def _eval_batch(recipe: Recipe) -> int:
    """Demo scenes share one size: evaluate them in batches; real datasets one image at a time."""
    return 50 if recipe.data.dataset == "demo" else 1


def _kmeans_init_hook(
    recipe: Recipe,
    loader_factory: Callable[[int], DataLoader[Sample]],
    dist: DistInfo,
) -> Callable[[Trainer], None]:
    """At ``gmm.init_iter``: fit the GMM means to the embeddings of the first batches.

    Rank 0's fit is broadcast, so every rank starts from the same means and scales.
    """
    g = recipe.model.gmm

    def hook(trainer: Trainer) -> None:
        if trainer.iteration != g.init_iter:
            return
        model = trainer.model
        clf = model.classifier
        assert isinstance(clf, GMMClassifier)
        batches = iter(loader_factory(0))
        embeddings, labels = [], []
        with torch.no_grad():
            for _ in range(g.init_batches):
                batch = next(batches)
                out = model(batch["image"].to(dist.device))
                embeddings.append(out.embeddings)
                labels.append(batch["label"].to(dist.device))
        clf.fit_means(
            torch.cat(embeddings),
            torch.cat(labels),
            generator=torch.Generator().manual_seed(recipe.train.seed),
        )
        if dist.world_size > 1:
            torch.distributed.broadcast(clf.means, 0)
            torch.distributed.broadcast(clf.scales, 0)

    return hook


def train_recipe(
    recipe: Recipe,
    work_dir: Path | str | None,
    *,
    resume: str | None = None,
    tiny: bool = False,
    progress: bool = True,
    tensorboard: bool = False,
    progress_label: str = "",
    progress_position: int = 0,
    allow_changed_settings: bool = False,
) -> tuple[Segmentor, dict[str, Any]]:
    """Train a recipe (single process, or one rank of a ``torchrun`` launch).

    Writes ``recipe.json`` (the resolved recipe), ``log.jsonl``, checkpoints (listed in
    ``checkpoints.json``) and ``metrics.json`` into ``work_dir`` on rank 0. The recipe is checked
    whole first (:func:`~gmmseg.recipes.validate.check_recipe`).

    A resumed run must have the settings it was trained with: a different seed, learning rate,
    batch size, model or dataset is refused unless ``allow_changed_settings``; then the change is
    recorded in the run's history (``{"mode": "resume", "changed": {...}}``) and ``recipe.json``
    holds the new values. Settings that do not change what is trained (intervals, workers,
    device, data and anomaly folders, evaluation and anomaly settings) may always change.

    A folder dataset's ``data.class_file`` is read first and saved as ``data.classes``,
    ``data.palette`` and ``data.void_colors`` in ``recipe.json`` and the checkpoints: loading,
    evaluating or predicting with them needs no class file.

    On an accelerator the classifier's value checks are off while training (they would
    synchronise every step); the returned model has its classifier's ``validate`` back as it
    was built.

    Args:
        recipe: the (overridden) recipe.
        work_dir: output folder (None: write nothing).
        resume: ``"auto"`` (latest checkpoint of ``work_dir`` if any) or a checkpoint path.
        tiny: miniature model widths (dry runs).
        progress: progress bar.
        tensorboard: TensorBoard logging.
        progress_label: the bar's description.
        progress_position: the bar's line.
        allow_changed_settings: resume even if the checkpoint's recipe differs.

    Returns:
        The trained model and the final metrics.

    Raises:
        ValueError: an invalid recipe, a global batch size not divisible by the number of
            processes, or a resume whose settings changed.
    """
    check_recipe(recipe, training=True)
    # The saved recipe (recipe.json, each checkpoint's) carries the class list itself, so that
    # the checkpoint rebuilds without the class file.
    recipe = resolve_folder_classes(recipe)
    dist = init_distributed(recipe.train.device)
    _seed_everything(recipe)
    data = recipe.data
    if data.batch_size % dist.world_size:
        raise ValueError(
            f"data.batch_size={data.batch_size} is not divisible by the {dist.world_size} processes"
        )
    per_rank = data.batch_size // dist.world_size
    num_classes = num_classes_of(data)
    g = torch.Generator().manual_seed(recipe.train.seed)
    model = build_model(recipe.model, num_classes, tiny=tiny, generator=g).to(dist.device)
    # On an accelerator the classifier's value checks would synchronise every step; the trainer
    # then checks labels on the host and catches divergence from the losses it reads.
    validate_before = model.classifier.validate
    model.classifier.validate = dist.device.type == "cpu"
    if dist.world_size > 1 and dist.device.type == "cuda" and recipe.model.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
    o = recipe.optim
    optimizer = build_optimizer(
        model, o.name, o.lr, o.weight_decay, momentum=o.momentum, head_lr_mult=o.head_lr_mult
    )
    schedule = PolyWarmup(
        recipe.train.iters, o.power, o.min_lr_ratio, o.warmup_iters, o.warmup_ratio
    )
    train_set, transform = build_train_data(data)
    val_set = build_val_dataset(data)
    out = Path(work_dir) if work_dir is not None else None
    cache = str(out) if out is not None else None

    def loader_factory(start: int) -> DataLoader[Sample]:
        stream = TrainStream(
            train_set,
            seed=recipe.train.seed,
            order="class_balanced" if data.class_balanced else "shuffle",
            rank=dist.rank,
            world_size=dist.world_size,
            start=start * per_rank,
            num_classes=num_classes,
            cache_dir=cache,
        )
        return _train_loader(
            train_set,
            transform,
            stream,
            per_rank,
            data.num_workers,
            pin_memory=dist.device.type == "cuda",
            seed=recipe.train.seed,
        )

    settings = inference_settings(recipe)

    def evaluate(m: Segmentor) -> dict[str, Any]:
        loader = _eval_loader(val_set, dist, _eval_batch(recipe))
        return segmentation_summary(
            evaluate_segmentation(m, loader, num_classes, device=dist.device, settings=settings)
        )

    hooks = []
    if recipe.model.head == "gmm" and recipe.model.gmm.init_means == "kmeans":
        hooks.append(_kmeans_init_hook(recipe, loader_factory, dist))
    t = recipe.train
    trainer = Trainer(
        model,
        optimizer,
        schedule,
        loader_factory,
        TrainSettings(
            max_iters=t.iters,
            log_interval=t.log_interval,
            eval_interval=t.eval_interval,
            checkpoint_interval=t.checkpoint_interval,
            amp=t.amp,
            grad_clip=o.grad_clip,
            channels_last=t.channels_last,
            compile=t.compile,
        ),
        dist,
        work_dir=out,
        evaluate=evaluate,
        extra={"recipe": recipe.to_dict(), "tiny": tiny},
        progress=progress,
        progress_label=progress_label,
        progress_position=progress_position,
        tensorboard=tensorboard,
        hooks=hooks,
    )
    changed: dict[str, list[Any]] = {}

    def check(extra: dict[str, Any]) -> None:
        changed.update(_changed_settings(extra, recipe, tiny, allow_changed_settings))

    resumed = resume is not None and trainer.resume(resume, check=check)
    # A finished run (every step trained, its last evaluation recorded) does nothing more:
    # its recipe.json keeps the settings it was trained with, whatever this call's (allowed)
    # changes say.
    finished = resumed and trainer.finished
    if resumed and changed and not finished:
        trainer.history.append({"iter": trainer.iteration, "mode": "resume", "changed": changed})
    # Before anything is written: a new run must not land on another run's checkpoints.
    trainer.refuse_later_checkpoints(trainer.iteration)
    if out is not None and dist.is_main and not (finished and (out / "recipe.json").exists()):
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "recipe.json", json.dumps(recipe.to_dict(), indent=2) + "\n")
    try:
        metrics = trainer.fit()
    finally:
        # the caller gets the model with the checks it was built with
        model.classifier.validate = validate_before
    return model, metrics


# Recipe fields that may differ on resume: they do not change what is trained.
_RESUMABLE = (
    "description",
    "paper_result",
    "twin",
    "data.root",
    "data.num_workers",
    "model.pretrained",  # read only to initialise; a resumed run takes every weight from the file
    "train.log_interval",
    "train.eval_interval",
    "train.checkpoint_interval",
    "train.device",
    "eval.",
    "anomaly.",
)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def _changed_settings(
    extra: dict[str, Any], recipe: Recipe, tiny: bool, allow: bool
) -> dict[str, list[Any]]:
    """``{field: [checkpoint's value, this run's value]}`` of the fields a resume changes.

    Raises:
        ValueError: a field outside ``_RESUMABLE`` differs and ``allow`` is False.
    """
    if "recipe" not in extra:
        return {}
    # Through the schema, so that fields added since the checkpoint was written compare by
    # their defaults instead of as missing.
    stored_recipe = from_dict(Recipe, extra["recipe"])
    # A checkpoint written before class files were saved resolved: compare the contents (if
    # its class file is gone or bad, its data.class_file compares as written).
    with contextlib.suppress(ValueError, FileNotFoundError):
        stored_recipe = resolve_folder_classes(stored_recipe)
    stored = stored_recipe.to_dict()
    before, now = _flatten(stored), _flatten(recipe.to_dict())
    if bool(extra.get("tiny", False)) != tiny:
        before["(dry-run model)"], now["(dry-run model)"] = bool(extra.get("tiny")), tiny
    changed = {
        k: [before.get(k), now.get(k)]
        for k in sorted(set(before) | set(now))
        if before.get(k) != now.get(k)
    }
    refused = [k for k in changed if not k.startswith(_RESUMABLE)]
    if refused and not allow:
        listed = ", ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused[:6])
        more = f" (and {len(refused) - 6} more)" if len(refused) > 6 else ""
        raise ValueError(
            f"resume: the checkpoint was trained with other settings ({listed}{more}); resume "
            "with the same --set values, or pass --allow-changed-settings to continue with the "
            "new ones (the change is recorded in the run's history)"
        )
    return changed


_LOG = logging.getLogger("gmmseg")


def load_trained(
    checkpoint: Path | str,
    recipe: Recipe | None = None,
    device: str | torch.device = "cpu",
    *,
    layout: Layout | Literal["gmmseg"] = "auto",
    memory: bool = False,
    trust: bool = False,
    tiny: bool = False,
) -> tuple[Segmentor, Recipe]:
    """Rebuild a trained model and load its weights and GMM state, from gmmseg or elsewhere.

    Besides gmmseg's own checkpoints (written by :func:`train_recipe`), this reads whole models
    trained by other projects (see the page "Use a model trained elsewhere"): the official
    GMMSeg release, mmsegmentation model-zoo files, Hugging Face
    ``SegformerForSemanticSegmentation`` (a ``.bin``/``.safetensors`` file or a saved folder)
    and NVlabs SegFormer files. Such a file must fit ``recipe``: the architecture settings
    only a file can tell (MiT LayerNorm epsilons, the SegFormer projection form, the decoder
    width, the Swin window) are taken from it; a different backbone, decoder, classifier, class
    count or GMM size is refused with the ``--set`` override that fixes it. Loading is strict:
    every model tensor is filled, every file tensor is used or dropped for a stated reason; the
    report is logged (logger ``gmmseg``, level INFO).

    Inference loads need only the checkpoint: the recipe's ImageNet ``model.pretrained`` file
    is not read (the checkpoint holds every weight). Without ``memory``, a foreign GMM model
    gets a one-slot placeholder memory and the file's memory bank is never read (the official
    release's is 6.5 GiB).

    Args:
        checkpoint: a checkpoint file, or a Hugging Face ``save_pretrained`` folder.
        recipe: the recipe to build (default: the one stored in a gmmseg checkpoint; required
            for other files).
        device: where to load.
        layout: ``"auto"`` (detected from the keys), ``"gmmseg"``, or one of
            :data:`~gmmseg.interop.FOREIGN_LAYOUTS` (``"official"``, ``"mmseg"``, ``"hf"``,
            ``"nvlabs"``).
        memory: also load the GMM memory bank (of a gmmseg checkpoint or an official
            file; to continue training: the recipe's ``gmm.memory_size`` must be the file's).
            Without it the model gets a one-slot placeholder bank and the file's bank is
            never read into memory (gmmseg checkpoints are memory-mapped).
        trust: unpickle a foreign file in full when its metadata holds objects outside the
            safe allow-list (numpy arrays, scalars, dtypes). Only for files you trust.
        tiny: build the recipe's miniature model (as dry runs do), for a foreign file written
            from one.

    Returns:
        The model in eval mode, and the recipe (with the settings taken from a foreign file).

    Raises:
        FileNotFoundError: a missing checkpoint.
        ValueError: a checkpoint that does not fit the recipe, an unknown layout, a damaged
            file, or (:class:`~gmmseg.interop.UntrustedCheckpointError`) untrusted metadata.
    """
    if layout == "gmmseg" or (layout == "auto" and is_gmmseg_checkpoint(checkpoint)):
        return _load_gmmseg(Path(checkpoint), recipe, torch.device(device), memory, tiny)
    peek = read_checkpoint(checkpoint, trust=trust)
    conversion = convert_checkpoint(peek.tensors, layout)
    if recipe is None:
        fits = matching_recipes(conversion.model)
        hint = f" (recipes that fit it: {', '.join(fits)})" if fits else ""
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} is a {conversion.model.layout!r} file, which holds "
            f"no gmmseg recipe: name one{hint}"
        )
    recipe, settings = fit_recipe(recipe, conversion.model, tiny=tiny)
    cfg = dataclasses.replace(recipe.model, pretrained="")
    if cfg.head == "gmm" and not memory:
        cfg = dataclasses.replace(cfg, gmm=dataclasses.replace(cfg.gmm, memory_size=1))
    model = build_model(cfg, num_classes_of(recipe.data), tiny=tiny)
    k = conversion.model.memory_size
    bank = model.classifier.memory_bank
    if memory and k is not None and bank is not None:
        have = bank.capacity
        if have != k:
            raise ValueError(
                f"the checkpoint's memory bank has {k} slots per component, the model of recipe "
                f"{recipe.name!r} {have}: use --set model.gmm.memory_size={k}"
            )
    report = load_converted(model, conversion, memory=memory)
    report.settings.update(settings)
    _LOG.info("%s: %s", checkpoint, report.summary())
    return model.to(device).eval(), recipe


_RING = ("classifier.memory.bank", "classifier.memory.ptr", "classifier.memory.filled")


def _load_gmmseg(
    path: Path, recipe: Recipe | None, device: torch.device, memory: bool, tiny: bool
) -> tuple[Segmentor, Recipe]:
    """A gmmseg checkpoint: the model's weights only, the ring memory bank only if asked.

    The file is mapped, not read: its optimiser moments and (unless ``memory``) its bank are
    never copied, and the model is built with a one-slot placeholder bank.
    """
    state = load_checkpoint(path, map_location="cpu", mmap=True)
    extra = state.get("extra", {})
    if recipe is None:
        if "recipe" not in extra:
            raise ValueError(f"checkpoint {str(path)!r} holds no recipe; name one")
        recipe = from_dict(Recipe, extra["recipe"])
    cfg = dataclasses.replace(recipe.model, pretrained="")
    weights = dict(state["model"])
    for k, v in state.get("buffers", {}).items():  # files of earlier versions
        weights.setdefault(k, v)
    skip_bank = not memory and cfg.head == "gmm" and cfg.gmm.memory == "ring"
    if skip_bank:
        cfg = dataclasses.replace(cfg, gmm=dataclasses.replace(cfg.gmm, memory_size=1))
        weights = {k: v for k, v in weights.items() if k not in _RING}
    model = build_model(cfg, num_classes_of(recipe.data), tiny=bool(extra.get("tiny", tiny)))
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit recipe {recipe.name!r}: {e}"
        ) from e
    # Strict but for the bank left out on purpose (and buffers recomputed at construction).
    recomputed = {k for k, _ in model.named_buffers()} - set(model.state_dict())
    missing = [k for k in missing if not (skip_bank and k in _RING) and k not in recomputed]
    if missing or unexpected:
        listed = ", ".join([*missing[:5], *unexpected[:5]])
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit recipe {recipe.name!r}: "
            f"{len(missing)} model tensors missing, {len(unexpected)} unexpected ({listed})"
        )
    return model.to(device).eval(), recipe


def evaluate_recipe(
    recipe: Recipe,
    checkpoint: Path | str,
    device: str = "auto",
    *,
    layout: Layout | Literal["gmmseg"] = "auto",
    trust: bool = False,
) -> dict[str, Any]:
    """Evaluate a trained checkpoint on the recipe's validation split (mIoU, mAcc, aAcc, IoU).

    Args:
        recipe: the recipe (its data and inference settings; the model of a foreign file).
        checkpoint: a gmmseg checkpoint or a file trained elsewhere (:func:`load_trained`).
        device: where to compute.
        layout: the checkpoint's layout (:func:`load_trained`).
        trust: unpickle untrusted metadata in full (:func:`load_trained`).
    """
    check_recipe(recipe)
    dist = init_distributed(device)
    model, recipe = load_trained(checkpoint, recipe, dist.device, layout=layout, trust=trust)
    loader = _eval_loader(build_val_dataset(recipe.data), dist, _eval_batch(recipe))
    result = evaluate_segmentation(
        model,
        loader,
        num_classes_of(recipe.data),
        device=dist.device,
        settings=inference_settings(recipe),
    )
    return segmentation_summary(result)


def evaluate_recipe_anomaly(
    recipe: Recipe,
    checkpoint: Path | str | None = None,
    datasets: Sequence[str] | None = None,
    device: str = "auto",
    model: Segmentor | None = None,
    return_raw: bool = False,
    *,
    layout: Layout | Literal["gmmseg"] = "auto",
    trust: bool = False,
    posthoc: PosthocMixtures | Path | str | None = None,
) -> dict[str, dict[str, Any]]:
    """Anomaly AP / AUROC / FPR95 of every score on each of the recipe's anomaly benchmarks.

    Args:
        recipe: a recipe with an ``anomaly`` section.
        checkpoint: trained weights (or pass ``model``).
        datasets: a subset of ``recipe.anomaly.datasets``.
        device: where to compute.
        model: an already loaded model.
        return_raw: return the full :class:`~gmmseg.metrics.AnomalyResult` (with curves).
        layout: the checkpoint's layout (:func:`load_trained`).
        trust: unpickle untrusted metadata in full (:func:`load_trained`).
        posthoc: post-hoc mixtures fitted on this model, or their file
            (:func:`~gmmseg.recipes.posthoc.fit_recipe_posthoc`): adds their scores.

    Returns:
        ``{dataset: {score: {"ap", "auroc", "fpr95"}}}``.
    """
    check_recipe(recipe)
    dist = init_distributed(device)
    if model is None:
        if checkpoint is None:
            raise ValueError("pass a checkpoint or a model")
        model, recipe = load_trained(checkpoint, recipe, dist.device, layout=layout, trust=trust)
    if recipe.anomaly is None:
        raise ValueError(f"recipe {recipe.name!r} has no anomaly section")
    if posthoc is not None and not isinstance(posthoc, PosthocMixtures):
        posthoc = PosthocMixtures.load(posthoc)
    if posthoc is not None:
        posthoc = posthoc.to(dist.device)
    out: dict[str, dict[str, Any]] = {}
    for name, ds in build_anomaly_datasets(recipe, datasets).items():
        results = evaluate_anomaly(
            model,
            _eval_loader(ds, dist, _eval_batch(recipe)),
            device=dist.device,
            settings=inference_settings(recipe),
            mode=recipe.anomaly.mode,
            fpr95_rule=recipe.anomaly.fpr95_rule,
            posthoc=posthoc,
        )
        out[name] = {
            score: (r if return_raw else anomaly_summary(r)) for score, r in results.items()
        }
    return out
