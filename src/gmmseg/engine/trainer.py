"""The iteration-based training loop."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from gmmseg.engine.checkpoint import (
    CheckpointManifest,
    checkpoint_path,
    checkpoints_in,
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    remove_stale_temporaries,
    save_checkpoint,
    set_rng_state,
    write_text_atomic,
)
from gmmseg.engine.distributed import DistInfo
from gmmseg.engine.logger import MetricLogger, json_safe
from gmmseg.engine.optim import PolyWarmup
from gmmseg.segmentor import Segmentor

__all__ = ["TrainSettings", "Trainer"]

AmpMode = Literal["none", "bf16", "fp16"]

# Most steps whose losses wait on the device before the loop reads them.
_READ_EVERY = 100


@dataclass(frozen=True)
class TrainSettings:
    """Loop settings of :class:`Trainer`.

    Attributes:
        max_iters: optimisation steps of the run.
        log_interval: steps between log records.
        eval_interval: steps between evaluations (0: only at the end).
        checkpoint_interval: steps between checkpoints (0: only at the end).
        keep_checkpoints: most recent checkpoints kept on disk (0: keep all). Only checkpoints
            this trainer wrote (listed in ``work_dir/checkpoints.json``) are ever deleted.
        amp: ``"none"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast + gradient scaler).
        grad_clip: max global gradient norm (None: no clipping).
        channels_last: convert the model and images to channels-last memory format.
        compile: ``torch.compile`` the forward.
    """

    max_iters: int
    log_interval: int = 50
    eval_interval: int = 0
    checkpoint_interval: int = 0
    keep_checkpoints: int = 2
    amp: AmpMode = "none"
    grad_clip: float | None = None
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {self.max_iters}")
        for name in ("log_interval", "eval_interval", "checkpoint_interval", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")


def _one_line(error: BaseException, limit: int = 400) -> str:
    """``error``'s message on one line (load_state_dict's lists its problems one per line)."""
    parts = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = "; ".join(parts) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Trainer:
    """Trains a :class:`~gmmseg.segmentor.Segmentor` for a fixed number of iterations.

    One step: forward (through DDP when distributed), the classifier's losses and state update
    (GMM E-step, memory, M-step: identical on every rank because the update gathers from all
    ranks), backward, optional gradient clipping, optimiser step, learning-rate schedule. The
    trainer logs on rank 0 only, evaluates every ``eval_interval`` steps, and writes atomic,
    hashed checkpoints (the model's ``state_dict``, optimiser, scaler, iteration, RNG states,
    history and ``extra``). At an iteration that has both, the checkpoint is written before the
    evaluation runs, so a failing evaluation loses no training; a resumed run evaluates an
    iteration whose evaluation did not finish before it trains on. Evaluation leaves the random
    generators (Python's, numpy's, torch's) as it found them, so a resumed run draws the same
    dropout masks as an uninterrupted one whether or not it repeats an evaluation.

    The loop reads the losses on the host only at log, checkpoint and evaluation steps (and at
    least every 100 steps), in one synchronisation, and stops with a ``FloatingPointError``
    naming the first step whose loss is not finite; a checkpoint is written only after every
    step before it was read. When the classifier's ``validate`` is off (no value checks on the
    device), each batch's labels are checked on the host before they are moved
    (``classifier.check_labels``), so a label outside the classes is still refused at its step.

    Buffers a module keeps out of its ``state_dict`` are not saved (a GMM memory bank built with
    ``persist_memory=False`` starts afresh on resume; Swin's index tables are recomputed).

    Args:
        model: the segmentor, already on ``dist.device``.
        optimizer: built on ``model``'s parameters (e.g. :func:`build_optimizer`).
        schedule: learning-rate factor per iteration.
        loader_factory: ``start -> iterable of batches``; ``start`` is the number of batches
            this rank already consumed (0, or the resumed iteration). Batches are dicts with
            ``image`` (B, 3, H, W) float and ``label`` (B, H, W) int64.
        settings: loop settings.
        dist: rank, world size and device (:func:`init_distributed`).
        work_dir: where logs, checkpoints and ``metrics.json`` go (None: nowhere).
        evaluate: ``model -> {name: number}``, run at evaluation points.
        extra: stored in every checkpoint (e.g. the resolved recipe).
        progress: show a progress bar on rank 0.
        progress_label: the bar's description.
        progress_position: the bar's line (several trainers in parallel).
        tensorboard: also log to TensorBoard.
        hooks: called as ``hook(trainer)`` before every step (e.g. a one-off initialisation
            at a given ``trainer.iteration``).
    """

    def __init__(
        self,
        model: Segmentor,
        optimizer: torch.optim.Optimizer,
        schedule: PolyWarmup,
        loader_factory: Callable[[int], Iterable[dict[str, Any]]],
        settings: TrainSettings,
        dist: DistInfo,
        *,
        work_dir: Path | str | None = None,
        evaluate: Callable[[Segmentor], dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        progress: bool = True,
        progress_label: str = "",
        progress_position: int = 0,
        tensorboard: bool = False,
        hooks: Sequence[Callable[[Trainer], None]] = (),
    ) -> None:
        self.model = model
        self.hooks = list(hooks)
        self.optimizer = optimizer
        self.schedule = schedule
        self.loader_factory = loader_factory
        self.settings = settings
        self.dist = dist
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.evaluate = evaluate
        self.extra = extra or {}
        self.progress = progress
        self.progress_label = progress_label
        self.progress_position = progress_position
        self.tensorboard = tensorboard
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        # Training time of the earlier sessions (from the checkpoint) and the start of this
        # one's fit, so that metrics.json reports the whole run's time, not the last session's.
        self.seconds = 0.0
        self._fit_started: float | None = None
        device_type = dist.device.type
        self.scaler = torch.amp.GradScaler(device_type, enabled=settings.amp == "fp16")
        if settings.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        forward: nn.Module = self.model
        if dist.world_size > 1:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            forward = DistributedDataParallel(self.model, device_ids=ids)
        self.forward: Callable[[Tensor], Any] = (
            torch.compile(forward) if settings.compile else forward
        )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "rng": get_rng_state(),
            "history": self.history,
            "seconds": self.elapsed(),
            "extra": self.extra,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        load_model_state(self.model, state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.history = list(state.get("history", []))
        self.seconds = float(state.get("seconds", 0.0))  # absent from older checkpoints
        set_rng_state(state["rng"])

    def elapsed(self) -> float:
        """Seconds of training in this run, over all its sessions.

        Returns:
            The earlier sessions' seconds as of the checkpoint resumed, plus the current
            :meth:`fit`'s so far.
        """
        if self._fit_started is None:
            return self.seconds
        return self.seconds + time.perf_counter() - self._fit_started

    def resume(
        self,
        checkpoint: Path | str | Literal["auto"],
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> bool:
        """Load a checkpoint; ``"auto"`` takes the latest one in ``work_dir`` if any.

        Args:
            checkpoint: a path, or ``"auto"``.
            check: called with the checkpoint's ``extra`` before anything is restored (e.g.
                to refuse a run whose settings changed); raise to refuse.

        Returns:
            True if a checkpoint was loaded.

        Raises:
            FileNotFoundError: an explicit checkpoint path that does not exist.
            ValueError: an unreadable or corrupt checkpoint, or one that does not fit the model.
        """
        if checkpoint == "auto":
            if self.work_dir is None:
                return False
            found = latest_checkpoint(self.work_dir)
            if found is None:
                return False
            checkpoint = found
        state = load_checkpoint(checkpoint, map_location=self.dist.device)
        if check is not None:
            check(dict(state.get("extra", {})))
        self.refuse_later_checkpoints(int(state["iteration"]), str(checkpoint))
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} does not fit this run's model or optimiser "
                f"(was it written by another recipe? resume with the recipe and --set "
                f"overrides it was trained with): {_one_line(e)}"
            ) from e
        record = None
        if self.work_dir is not None and self.dist.is_main:
            record = CheckpointManifest(self.work_dir).eval_of(self.iteration)
        # Rank 0 owns the manifest: every rank must take the same decision about re-running
        # an evaluation (a collective), shared file system or not.
        record = self._from_main(record)
        if record is not None and not self._evaluated(self.iteration):
            self.history.append({"iter": self.iteration, "mode": "eval", **record})
        return True

    def _from_main(self, obj: Any) -> Any:
        """``obj`` as rank 0 has it (broadcast when several processes train)."""
        if self.dist.world_size == 1 or not torch.distributed.is_initialized():
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def refuse_later_checkpoints(self, iteration: int, what: str = "this run") -> None:
        """Refuse to train from ``iteration`` in a work folder whose run went further.

        Training on would overwrite that run's later checkpoints and mix its manifest and logs
        with this one's. Checkpoints are those listed in ``checkpoints.json`` or, in a folder
        of an earlier version without one, the ``iter_<digits>.pt`` files.

        Raises:
            ValueError: the folder holds a checkpoint of a later iteration.
        """
        message = None
        if self.work_dir is not None and self.dist.is_main:
            later = [(it, name) for it, name in checkpoints_in(self.work_dir) if it > iteration]
            if later:
                it, name = max(later)
                start = (
                    "training a new run"
                    if what == "this run"
                    else f"resuming from {what} (iteration {iteration})"
                )
                message = (
                    f"work folder {str(self.work_dir)!r} holds a run that reached iteration {it} "
                    f"({name}): {start} there would overwrite its later checkpoints; "
                    "continue it with --resume auto, or use another --work-dir"
                )
        message = self._from_main(message)
        if message is not None:
            raise ValueError(message)

    def save(self) -> Path | None:
        """Write ``work_dir/iter_{iteration:08d}.pt`` on rank 0 and prune old ones.

        The file is listed in ``work_dir/checkpoints.json``; pruning keeps the
        ``keep_checkpoints`` most recent listed files and deletes nothing else.
        """
        if self.work_dir is None or not self.dist.is_main:
            return None
        # The checkpoint first: a problem with the manifest must not cost the training.
        path = save_checkpoint(checkpoint_path(self.work_dir, self.iteration), self.state_dict())
        manifest = CheckpointManifest(self.work_dir)
        manifest.add(path, self.iteration)
        manifest.prune(self.settings.keep_checkpoints)
        return path

    # ------------------------------------------------------------------ loop

    def _autocast(self) -> AbstractContextManager[Any]:
        amp = self.settings.amp
        if amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(self.dist.device.type, dtype=dtype)

    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step on ``batch``; returns the losses and the learning rate.

        Reads the losses on the host (one synchronisation) and refuses a non-finite loss before
        the optimiser step, so the model and optimiser are left as they were; :meth:`fit`
        defers that read to its log, checkpoint and evaluation steps.
        """
        return self._read([self._step(batch, check_now=True)])[0]

    def _step(
        self, batch: dict[str, Any], check_now: bool = False
    ) -> tuple[int, dict[str, Tensor], float]:
        """One optimisation step: (its number, device losses, lr factor).

        Without ``check_now`` nothing is read on the host; with it, a non-finite loss is
        refused before backward and the optimiser step.
        """
        device = self.dist.device
        if batch["image"].shape[0] == 0:
            # A mean over no pixels is NaN: refuse instead of training on it.
            raise ValueError(
                f"training step {self.iteration + 1}: the batch holds no images (B = 0); "
                "check the data loader and data.batch_size"
            )
        classifier = self.model.classifier
        try:
            if not classifier.validate:  # the labels are still on the host: no device sync
                classifier.check_labels(batch["label"])
            images: Tensor = batch["image"].to(device, non_blocking=True)
            labels: Tensor = batch["label"].to(device, non_blocking=True)
            if self.settings.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            factor = self.schedule.apply(self.optimizer, self.iteration)
            self.model.train()
            with self._autocast():
                out = self.forward(images)
                losses = self.model.losses_and_update(out, labels)
        except ValueError as e:
            # e.g. "features must be finite": the run diverged; say where, and what to try.
            hint = (
                " (if the inputs are finite, the run diverged: lower the learning rate, enable "
                "gradient clipping, or resume from an earlier checkpoint)"
                if "finite" in str(e)
                else ""
            )
            raise ValueError(f"training step {self.iteration + 1}: {e}{hint}") from e
        loss = sum(losses.values(), torch.zeros((), device=device))
        if check_now:
            detached = {k: v.detach() for k, v in losses.items()}
            self._read([(self.iteration + 1, {**detached, "loss": loss.detach()}, factor)])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        record = {k: v.detach() for k, v in losses.items()}
        if self.settings.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
            record["grad_norm"] = norm.detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        record["loss"] = loss.detach()
        return self.iteration, record, factor

    @staticmethod
    def _read(pending: Sequence[tuple[int, dict[str, Tensor], float]]) -> list[dict[str, float]]:
        """The host values of the steps' losses, read in one synchronisation.

        Raises:
            FloatingPointError: at the first step whose loss is not finite (a checkpoint is
                never written after such a step: :meth:`fit` reads before every save).
        """
        if not pending:
            return []
        keys = list(pending[0][1])
        values = torch.stack(
            [torch.stack([r[k].to(torch.float64) for k in keys]) for _, r, _ in pending]
        ).tolist()
        out = []
        for (iteration, _, factor), row in zip(pending, values, strict=True):
            record = dict(zip(keys, row, strict=True))
            if not math.isfinite(record["loss"]):
                parts = {k: v for k, v in record.items() if k not in ("loss", "grad_norm")}
                raise FloatingPointError(
                    f"training step {iteration}: non-finite loss {record['loss']} {parts} (the "
                    "run diverged: lower the learning rate, enable gradient clipping, or resume "
                    "from an earlier checkpoint)"
                )
            record["lr_factor"] = factor
            out.append(record)
        return out

    @property
    def finished(self) -> bool:
        """Whether :meth:`fit` has nothing left to do.

        That is, every step trained and the evaluation due at the last one (if any) recorded.
        """
        evaluation_pending = (
            self.evaluate is not None
            and self._eval_due(self.iteration)
            and not self._evaluated(self.iteration)
        )
        return self.iteration >= self.settings.max_iters and not evaluation_pending

    def _evaluated(self, iteration: int) -> bool:
        return any(r.get("mode") == "eval" and r.get("iter") == iteration for r in self.history)

    def _eval_due(self, iteration: int) -> bool:
        s = self.settings
        return iteration > 0 and (
            (s.eval_interval > 0 and iteration % s.eval_interval == 0) or iteration == s.max_iters
        )

    def _checkpoint_due(self, iteration: int) -> bool:
        s = self.settings
        return (s.checkpoint_interval > 0 and iteration % s.checkpoint_interval == 0) or (
            iteration == s.max_iters
        )

    def _run_eval(self, logger: MetricLogger) -> dict[str, Any]:
        if self.evaluate is None:
            return {}
        # Evaluation must not move the random generators training draws from (a DataLoader
        # draws its base seed from torch's global generator, which dropout also uses): a run
        # resumed from a checkpoint, whose evaluation is not repeated, then draws exactly what
        # an uninterrupted run draws.
        rng = get_rng_state()
        try:
            result = self.evaluate(self.model)
        finally:
            set_rng_state(rng)
        record = {"iter": self.iteration, "mode": "eval", **result}
        logger.log(record, step=self.iteration)
        self.history.append(record)
        if self.work_dir is not None and self.dist.is_main:
            CheckpointManifest(self.work_dir).record_eval(self.iteration, result)
        return result

    def _recorded_result(self) -> dict[str, Any] | None:
        """``metrics.json`` as written when this run reached its iteration, if it is readable."""
        if self.work_dir is None:
            return None
        try:
            recorded = json.loads((self.work_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(recorded, dict) or recorded.get("iteration") != self.iteration:
            return None
        return recorded

    def _last(self, mode: str) -> dict[str, Any]:
        for r in reversed(self.history):
            if r.get("mode") == mode:
                return {k: v for k, v in r.items() if k not in ("iter", "mode")}
        return {}

    def fit(self) -> dict[str, Any]:
        """Train from the current iteration to ``max_iters``.

        At an iteration due for both, the checkpoint is written first, then the evaluation
        runs. A resumed run first completes an evaluation that was due at its iteration and is
        not recorded (e.g. one that failed). Resuming a finished run trains nothing, leaves
        ``metrics.json`` as it is and returns what it records.

        Returns:
            ``{"iteration", "seconds", "train": last logged losses, "eval": last evaluation}``,
            also written (atomically) to ``work_dir/metrics.json`` on rank 0. ``seconds`` is the
            run's time over all its sessions: the earlier ones as recorded in the checkpoint
            resumed (written before that iteration's evaluation), plus this call's.
        """
        s = self.settings
        self.refuse_later_checkpoints(self.iteration)
        if self.finished:
            recorded = self._recorded_result()
            if recorded is not None:
                # A finished run resumed: nothing to train or evaluate, so no file is written
                # (no log, no event file) and metrics.json, which also counts the last
                # evaluation's time, stays as it is.
                return recorded
        if self.work_dir is not None and self.dist.is_main:
            remove_stale_temporaries(self.work_dir)
        logger = MetricLogger(
            self.work_dir,
            enabled=self.dist.is_main,
            total=s.max_iters,
            initial=self.iteration,
            progress=self.progress,
            tensorboard=self.tensorboard,
            label=self.progress_label,
            position=self.progress_position,
        )
        self._fit_started = time.perf_counter()
        sums: dict[str, float] = {}
        count = 0
        # Losses stay on the device until a log, checkpoint or evaluation step (or every
        # _READ_EVERY steps) reads them in one synchronisation.
        pending: list[tuple[int, dict[str, Tensor], float]] = []
        try:
            if self._eval_due(self.iteration) and not self._evaluated(self.iteration):
                self._run_eval(logger)
            batches: Iterator[dict[str, Any]] | None = None
            while self.iteration < s.max_iters:
                if batches is None:
                    batches = iter(self.loader_factory(self.iteration))
                for hook in self.hooks:
                    hook(self)
                pending.append(self._step(next(batches)))
                logger.advance(1)
                log_due = (
                    s.log_interval > 0 and self.iteration % s.log_interval == 0
                ) or self.iteration == s.max_iters
                checkpoint_due = self._checkpoint_due(self.iteration)
                eval_due = self._eval_due(self.iteration)
                if log_due or checkpoint_due or eval_due or len(pending) >= _READ_EVERY:
                    records = self._read(pending)
                    pending = []
                    for record in records:
                        for k, v in record.items():
                            sums[k] = sums.get(k, 0.0) + v
                    count += len(records)
                    logger.advance(0, {"loss": records[-1]["loss"]})
                if log_due and count:
                    averages = {k: v / count for k, v in sums.items()}
                    train_record = {"iter": self.iteration, "mode": "train", **averages}
                    logger.log(train_record, self.iteration)
                    self.history.append(train_record)
                    sums, count = {}, 0
                if checkpoint_due:
                    self.save()
                if eval_due:
                    self._run_eval(logger)
        finally:
            logger.close()
            self.seconds = self.elapsed()
            self._fit_started = None
        result = {
            "iteration": self.iteration,
            "seconds": self.seconds,
            "train": self._last("train"),
            "eval": self._last("eval"),
        }
        if self.work_dir is not None and self.dist.is_main:
            write_text_atomic(
                self.work_dir / "metrics.json", json.dumps(json_safe(result), indent=2) + "\n"
            )
        return result
