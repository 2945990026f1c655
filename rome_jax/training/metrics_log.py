"""What training logs: metrics.jsonl and TensorBoard (`MetricsLog`), the training
metrics summed on the device between two train records (`LogWindow`), the train
record itself (`train_record`) and the padding line logged at the start (`log_padding`).

Host round-trips: the step's metrics stay on the device and are summed there
(`LogWindow.add`); they are fetched every `train.log_every` steps (and before an
evaluation or a save). The window also remembers the first step whose loss was not
finite, read on the same fetch.

log = MetricsLog(workdir, resume_bytes=None, resume_step=0, enabled=True)
window = LogWindow().add(metrics, step)          # each step
log.write(train_record(stage, step, window, schedule), board_prefix="train")
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rome_jax.data import bucket_batches, padded_share, sequence_lengths
from rome_jax.training.setup import Run
from rome_jax.training.stages import Stage

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter

logger = logging.getLogger(__name__)


# ------------------------------------------------------------ metrics.jsonl and TensorBoard


def _summary_writer_class() -> type[SummaryWriter]:
    """tensorboardX's `SummaryWriter`, imported without PyTorch where PyTorch is
    installed but not yet imported: tensorboardX imports it only to accept torch
    tensors (we log floats), which cost about 4 s at every train.py start."""
    # Imported here, not at the top, because of that: `import torch` is made to fail first.
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError meanwhile
    try:
        from tensorboardX import SummaryWriter
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """metrics.jsonl and TensorBoard (process 0 writes; the others only count).

    `resume_bytes`: metrics.jsonl's length at the checkpoint resumed from (the file is
    truncated to it), or None for a fresh start (metrics.jsonl and tensorboard/ are
    deleted). `size` and `lines` follow the file's length, for the next checkpoint.
    """

    def __init__(self, workdir: Path, *, resume_bytes: int | None, resume_step: int, enabled: bool):
        self.path = workdir / "metrics.jsonl"
        self.enabled = enabled
        self.size = 0
        self.lines = 0
        self._file: IO[bytes] | None = None
        self._board: SummaryWriter | None = None
        if not enabled:
            return
        tensorboard = workdir / "tensorboard"
        if resume_bytes is None:  # a fresh start: what is there came from a run never saved
            self.path.unlink(missing_ok=True)
            shutil.rmtree(tensorboard, ignore_errors=True)
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held for the run, closed by close()
        if resume_bytes is not None:
            self._file.seek(0, os.SEEK_END)
            if self._file.tell() < resume_bytes:
                logger.warning(
                    "%s is shorter than at the checkpoint (%d < %d bytes)", self.path, self._file.tell(), resume_bytes
                )
            self._file.truncate(resume_bytes)
        self._file.seek(0, os.SEEK_END)
        self.size = self._file.tell()
        self._file.seek(0)
        self.lines = self._file.read().count(b"\n")
        self._file.seek(0, os.SEEK_END)
        writer = _summary_writer_class()
        self._board = writer(str(tensorboard), purge_step=resume_step + 1 if resume_step else None, flush_secs=30)

    def write(self, record: dict, *, board_prefix: str, extra_scalars: dict | None = None) -> None:
        """Appends `record` (with a "step") to metrics.jsonl and its numbers to
        TensorBoard as `<board_prefix>/<key>`, with `extra_scalars` ({tag: value})."""
        if self._file is None or self._board is None:  # not the writer
            return
        line = (json.dumps(record, allow_nan=True) + "\n").encode()
        self._file.write(line)
        self._file.flush()
        self.size += len(line)
        self.lines += 1
        step = int(record["step"])
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, (int, float)):
                self._board.add_scalar(f"{board_prefix}/{key}", value, step)
        for key, value in (extra_scalars or {}).items():
            self._board.add_scalar(key, value, step)

    def flush(self) -> None:
        if self._file is not None and self._board is not None:
            self._file.flush()
            self._board.flush()

    def close(self) -> None:
        if self._file is not None and self._board is not None:
            self._file.close()
            self._board.close()


# ------------------------------------------------------------ the window, on the device


@functools.partial(jax.jit, donate_argnums=0)
def _accumulate(window: dict, metrics: dict, step: jax.Array) -> dict:
    """Adds one step's metrics to the logging window; remembers the first non-finite step."""
    bad = (metrics["finite"] == 0) & (window["first_nonfinite"] < 0)
    return {
        "sum": jax.tree.map(jnp.add, window["sum"], metrics),
        "first_nonfinite": jnp.where(bad, step, window["first_nonfinite"]),
    }


@jax.jit
def _new_window(metrics: dict) -> dict:
    return {"sum": jax.tree.map(jnp.zeros_like, metrics), "first_nonfinite": jnp.asarray(-1, jnp.int32)}


def _empty_window(metrics: dict, sums: dict | None = None) -> dict:
    """A logging window on the metrics' devices: zeros, or the sums saved in a checkpoint."""
    window = _new_window(metrics)
    if sums is not None:
        window["sum"] = {k: jax.device_put(np.float32(sums[k]), v.sharding) for k, v in metrics.items()}
    return window


def _fetch(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


@dataclasses.dataclass(frozen=True)
class LogWindow:
    """The training metrics summed on the device since the last train record.

    `arrays`: {"sum": {name: f32 scalar}, "first_nonfinite": i32 scalar (-1: none)} once a
    step was added, None before; `count`: the steps summed; `saved_sums`: {name: float},
    the sums of a window restored from a checkpoint, which the first `add` starts from.
    `add` donates `arrays`: use only the window it returns.
    """

    count: int = 0
    arrays: dict | None = None
    saved_sums: dict | None = None

    @classmethod
    def from_meta(cls, meta: dict | None) -> LogWindow:
        """The window saved in a checkpoint's meta ({"count", "sum"} or None)."""
        return cls(count=int(meta["count"]), saved_sums=meta["sum"]) if meta else cls()

    def add(self, metrics: dict, step: int) -> LogWindow:
        """The window with one step's metrics (scalars on the device) added."""
        arrays = self.arrays
        if arrays is None:
            arrays = _empty_window(metrics, self.saved_sums if self.count else None)
        return LogWindow(count=self.count + 1, arrays=_accumulate(arrays, metrics, np.int32(step)))

    def first_nonfinite(self) -> int | None:
        """The first step summed whose loss was not finite (a host round-trip)."""
        if self.arrays is None:
            return None
        first = int(jax.device_get(self.arrays["first_nonfinite"]))
        return first if first >= 0 else None

    def sums(self) -> dict:
        """{name: the sum as a numpy scalar} (a host round-trip)."""
        assert self.arrays is not None, "an empty window has no sums"
        return _fetch(self.arrays["sum"])

    def to_meta(self) -> dict | None:
        """{"count", "sum": {name: float}} for a checkpoint's meta; None when empty."""
        if self.arrays is None or not self.count:
            return None
        return {"count": self.count, "sum": {k: float(v) for k, v in self.sums().items()}}


# ------------------------------------------------------------ records and log lines


def train_record(stage: Stage, step: int, window: LogWindow, schedule: optax.Schedule) -> dict:
    """The train record of `step`: the window's means and the step's learning rate."""
    sums = window.sums()
    record = {
        "step": step,
        "stage": stage.number,
        "split": "train",
        "epoch": round((step - stage.first_step) / stage.steps_per_epoch, 4),
    }
    record.update({k: float(v) / window.count for k, v in sums.items() if k != "finite"})
    record["learning_rate"] = float(schedule(step - stage.first_step - 1))
    return record


def log_padding(run: Run) -> None:
    """One info line: the share of padded token positions in an epoch of training
    batches, with the run's length buckets and with every batch padded to max_length."""
    lengths = sequence_lengths(run.train_features.attention_mask)
    order = np.arange(len(lengths))

    def share(buckets: Sequence[int]) -> float:
        batches = bucket_batches(order, lengths, buckets, run.config.train.batch_size, drop_remainder=True)
        return 100 * padded_share(lengths, batches)

    logger.info(
        "padded token positions per training epoch: %.1f%% with length buckets %s, %.1f%% "
        "with every batch padded to %d",
        share(run.buckets),
        ",".join(map(str, run.buckets)),
        share((run.config.data.max_length,)),
        run.config.data.max_length,
    )
