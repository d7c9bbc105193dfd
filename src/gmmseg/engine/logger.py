"""JSON-lines metric log, optional TensorBoard, progress bar; silent on ranks other than 0."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm import tqdm

__all__ = ["MetricLogger"]


def json_safe(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings, tensors lists, tuples lists."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, Tensor):
        return json_safe(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


class MetricLogger:
    """Appends one JSON object per :meth:`log` call to ``work_dir/log.jsonl``.

    Args:
        work_dir: output folder (None: no file).
        enabled: False on non-main ranks (everything becomes a no-op).
        total: iterations of the run, for the progress bar.
        initial: iteration the run starts at (resume).
        progress: show a tqdm progress bar with iteration rate and ETA.
        tensorboard: also write TensorBoard scalars (needs the ``tensorboard`` package).
        label: the progress bar's description.
        position: the progress bar's line (for several bars at once).

    Raises:
        ImportError: ``tensorboard=True`` without the ``tensorboard`` package.
    """

    def __init__(
        self,
        work_dir: Path | str | None,
        enabled: bool = True,
        total: int = 0,
        initial: int = 0,
        progress: bool = True,
        tensorboard: bool = False,
        label: str = "",
        position: int = 0,
    ) -> None:
        self.enabled = enabled
        self.path = Path(work_dir) / "log.jsonl" if work_dir is not None and enabled else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.bar: tqdm[Any] | None = None
        if enabled and progress:
            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="it",
                dynamic_ncols=True,
                desc=label or None,
                position=position,
            )
        self.writer: Any = None
        if enabled and tensorboard and work_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "tensorboard=True needs the 'tensorboard' package: pip install tensorboard"
                ) from e
            self.writer = SummaryWriter(str(Path(work_dir) / "tensorboard"))
        self.start = time.perf_counter()

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        """Write ``record`` (plus ``"time"``, seconds since start) as one JSON line."""
        if not self.enabled:
            return
        record = {**record, "time": round(time.perf_counter() - self.start, 3)}
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(json_safe(record)) + "\n")
        if self.writer is not None and step is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("iter", "time"):
                    self.writer.add_scalar(k, v, step)

    def advance(self, n: int = 1, postfix: dict[str, float] | None = None) -> None:
        """Move the progress bar."""
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        """Close the bar and the TensorBoard writer."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
