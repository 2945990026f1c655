"""The training loop: one generic function, `train_and_evaluate(config, workdir)`.

It reads top to bottom: `set_up` (config, workdir, tokenizer, data, model, mesh:
a `Run`), `restore_checkpoint` (the train state and its `CheckpointMeta`), then for
each stage `start_stage` and `train_stage` (the steps, `evaluate` on the dev splits,
`update_best`, `save_checkpoint`), and `export_model`. What changes while training
is passed and returned (`StageRun`, `LogWindow`, `Evaluations`), never rebound in
place.

Every mode goes through the same loop; two-stage modes (DeeBERT, FastBERT) run it
over two stages, stage 2 with a fresh optimizer and schedule (peak rate
`learning_rate x train.stage2_lr_scale`), their steps counted in one global step
number (stage 2's first step is stage 1's last + 1). Stage 2 starts from stage 1's
last step, or with `train.stage2_start="best"` from its best evaluation (the first of
equal final-exit scores, as FastBERT's script keeps it).

The workdir's layout (what a run writes; eval.py reads it) is described in
rome_jax/training/workdir.py.

Never losing work: checkpoints are written after every evaluation, every
`train.checkpoint_every` steps, at the end of each stage and on SIGTERM/SIGINT.
Re-running the same command resumes from the latest complete checkpoint: the train
state, the data iterator's position and the logging window are restored,
metrics.jsonl is truncated to its length at that checkpoint, and dropout keys are
`fold_in(PRNGKey(seed), step)`, so a run killed at any moment (even `kill -9`) and
re-run ends with exactly the parameters and metrics.jsonl of an uninterrupted one.

Host round-trips: the step's metrics stay on the device and are summed there; they
are fetched every `train.log_every` steps (and before an evaluation or a save).
The finiteness check rides on the same fetch: a non-finite loss is detected at
the next log step (or evaluation, or save) at the latest, and the state was not
updated by it (the step returns the old state when its loss is not finite).
Nothing is saved after a non-finite step: the last checkpoint stays the last good one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rome_jax.errors import TrainingError
from rome_jax.training import checkpoints as checkpoints_lib
from rome_jax.training.best import Evaluations, record_evaluation
from rome_jax.training.compiled import StepPerLength
from rome_jax.training.evaluate import evaluate, make_eval_fn
from rome_jax.training.preemption import PREEMPTED_EXIT_CODE, StopSignals
from rome_jax.training.setup import Run, set_up
from rome_jax.training.stages import Stage, is_eval_step, make_stage_optimizer

if TYPE_CHECKING:
    from rome_jax.data import BatchIterator
    from rome_jax.training.step import TrainState

__all__ = ["PREEMPTED_EXIT_CODE", "Result", "train_and_evaluate"]

logger = logging.getLogger(__name__)

_META_VERSION = 1


@dataclasses.dataclass
class Result:
    """What `train_and_evaluate` returns."""

    step: int  # global steps done
    preempted: bool = False  # stopped by a signal after saving a checkpoint
    final_eval: dict | None = None  # the last evaluation's records, by split
    best: dict | None = None  # {"step", "score", "metric"} of the best checkpoint


# ------------------------------------------------------------------- pure pieces


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


# ------------------------------------------------------------------- the edges


def _summary_writer_class() -> type:
    """tensorboardX's `SummaryWriter`, imported without PyTorch where PyTorch is
    installed but not yet imported: tensorboardX imports it only to accept torch
    tensors (we log floats), which cost about 4 s at every train.py start."""
    import sys

    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile
    try:
        from tensorboardX import SummaryWriter
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """metrics.jsonl and TensorBoard (process 0 writes; the others only count)."""

    def __init__(self, workdir: Path, *, resume_bytes: int | None, resume_step: int, enabled: bool):
        self.path = workdir / "metrics.jsonl"
        self.enabled = enabled
        self.size = 0
        self.lines = 0
        self._file = None
        self._board = None
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
        if not self.enabled:
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
        if self.enabled:
            self._file.flush()
            self._board.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._board.close()


def _state_tree(state) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step, "rng": state.rng}


def _state_from_tree(tree: dict):
    from rome_jax.training.step import TrainState

    return TrainState(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"], rng=tree["rng"])


def _fetch(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


# ------------------------------------------------- what a checkpoint remembers


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
        return _fetch(self.arrays["sum"])

    def to_meta(self) -> dict | None:
        if self.arrays is None or not self.count:
            return None
        return {"count": self.count, "sum": {k: float(v) for k, v in self.sums().items()}}


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint's meta item: where the run stands besides its train state.

    The JSON layout (`to_json`, version `_META_VERSION`) is what older workdirs hold:
    {"version", "step", "stage", "data" (the iterator's position), "metrics_bytes",
    "metrics_lines" (metrics.jsonl's length), "window" (`LogWindow.to_meta`), "best",
    "last_eval", "total_steps", "stage1_best"}.
    """

    step: int = 0
    stage: int = 1
    data: dict | None = None
    metrics_bytes: int | None = None
    metrics_lines: int | None = None
    window: dict | None = None
    evals: Evaluations = Evaluations()
    total_steps: int | None = None

    def to_json(self) -> dict:
        return {
            "version": _META_VERSION,
            "step": self.step,
            "stage": self.stage,
            "data": self.data,
            "metrics_bytes": self.metrics_bytes,
            "metrics_lines": self.metrics_lines,
            "window": self.window,
            "best": self.evals.best,
            "last_eval": self.evals.last,
            "total_steps": self.total_steps,
            "stage1_best": self.evals.stage1_best,
        }

    @classmethod
    def from_json(cls, meta: dict) -> CheckpointMeta:
        return cls(
            step=meta.get("step"),
            stage=meta.get("stage"),
            data=meta.get("data"),
            metrics_bytes=meta.get("metrics_bytes"),
            metrics_lines=meta.get("metrics_lines"),
            window=meta.get("window"),
            total_steps=meta.get("total_steps"),
            evals=Evaluations(best=meta.get("best"), stage1_best=meta.get("stage1_best"), last=meta.get("last_eval")),
        )


def restore_checkpoint(run: Run, store: checkpoints_lib.Checkpoints) -> tuple[int, Any, CheckpointMeta]:
    """(start step, train state or None, meta) of the latest checkpoint; (0, None, empty) if none."""
    restored = store.restore_latest(_state_tree(run.target))
    if restored is None:
        logger.info("workdir %s: starting (%d steps)", run.workdir, run.total_steps)
        return 0, None, CheckpointMeta()
    start_step, tree, meta = restored
    if meta.get("version") != _META_VERSION or meta.get("step") != start_step:
        raise checkpoints_lib.CheckpointError(
            f"checkpoint {store.directory / str(start_step)} was not written by this trainer"
        )
    logger.info("workdir %s: resuming from the checkpoint of step %d (of %d)", run.workdir, start_step, run.total_steps)
    return start_step, _state_from_tree(tree), CheckpointMeta.from_json(meta)


def check_finite(window: LogWindow, store: checkpoints_lib.Checkpoints) -> None:
    """Raises TrainingError if a step summed in `window` had a non-finite loss."""
    first_bad = window.first_nonfinite()
    if first_bad is not None:
        latest = store.latest_step()
        kept = (
            f"the last good checkpoint is step {latest} in {store.directory}"
            if latest is not None
            else "no checkpoint was saved before it"
        )
        raise TrainingError(
            f"the loss is not finite (NaN or infinity) at step {first_bad}: training "
            f"stopped; {kept}; try a lower train.learning_rate (in another --workdir, or with "
            "--overwrite)"
        )


def save_checkpoint(
    run: Run,
    store: checkpoints_lib.Checkpoints,
    log: MetricsLog,
    *,
    step: int,
    stage: Stage,
    state: Any,
    data: dict,
    window: LogWindow,
    evals: Evaluations,
) -> None:
    """Saves `state` at `step` with its meta, after checking the steps since the last check
    were finite (nothing is saved after a non-finite step)."""
    check_finite(window, store)
    log.flush()
    meta = CheckpointMeta(
        step=step,
        stage=stage.number,
        data=data,
        metrics_bytes=log.size,
        metrics_lines=log.lines,
        window=window.to_meta(),
        evals=evals,
        total_steps=run.total_steps,
    )
    store.save(
        step, _state_tree(state), meta.to_json(), preserve=evals.kept_steps(run.config.train.stage2_start == "best")
    )


# ---------------------------------------------------------------- the pieces of a stage


def start_stage(
    run: Run, stage: Stage, params: Any, tx: Any, store: checkpoints_lib.Checkpoints, stage1_best: dict | None
) -> TrainState:
    """A fresh train state for `stage` (step `stage.first_step`), replicated over the mesh.

    It starts from `params`, or in stage 2 with `train.stage2_start="best"` from the
    checkpoint of stage 1's best evaluation.
    """
    from rome_jax.training import step as ts

    if (
        stage.number == 2
        and run.config.train.stage2_start == "best"
        and stage1_best is not None
        and stage1_best["step"] != stage.first_step
    ):
        tree, _ = store.restore(stage1_best["step"], _state_tree(run.target))
        params = _state_from_tree(tree).params
        logger.info(
            "stage 2 starts from stage 1's best evaluation: step %d (%s %.4f)",
            stage1_best["step"],
            stage1_best["metric"],
            stage1_best["score"],
        )
    fresh = ts.create_train_state(params, tx, run.config.train.seed)
    fresh = fresh.replace(step=jnp.asarray(stage.first_step, jnp.int32))
    state = ts.replicate(fresh, run.mesh)
    del fresh, params
    if stage.number > 1:
        logger.info("stage %d: %d steps, fresh optimizer", stage.number, stage.num_steps)
    return state


def train_record(stage: Stage, step: int, window: LogWindow, schedule: Any) -> dict:
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


@dataclasses.dataclass(frozen=True)
class StageRun:
    """One stage's moving parts: what `train_stage` advances (and returns)."""

    stage: Stage
    state: TrainState  # replicated over the mesh
    step: int  # global steps done
    iterator: BatchIterator
    window: LogWindow
    evals: Evaluations
    preempted: bool = False


def train_stage(
    run: Run,
    sr: StageRun,
    *,
    train_step: Any,
    schedule: Any,
    eval_fn: Any,
    log: MetricsLog,
    store: checkpoints_lib.Checkpoints,
    signals: StopSignals,
    bar: Any,
) -> StageRun:
    """Runs `sr.stage`'s remaining steps: logging, evaluations, checkpoints; stops early
    (`preempted`) after saving a checkpoint when a signal arrived."""
    from rome_jax.training import step as ts

    t, stage = run.config.train, sr.stage
    state, step, window, evals = sr.state, sr.step, sr.window, sr.evals
    last_log_time, last_log_step = time.time(), step
    while step < stage.last_step:
        if t.debug_nan_at_step and step + 1 == t.debug_nan_at_step:
            state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
        batch = next(sr.iterator)
        batch = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
        state, metrics = train_step(state, ts.shard_batch(batch, run.mesh))
        step += 1
        window = window.add(metrics, step)
        if bar is not None:
            bar.update(1)

        if step % t.log_every == 0 or step == stage.last_step:
            check_finite(window, store)
            record = train_record(stage, step, window, schedule)
            now = time.time()
            rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
            last_log_time, last_log_step = now, step
            log.write(record, board_prefix="train", extra_scalars={"perf/steps_per_sec": rate})
            window = LogWindow()
            if bar is not None:
                bar.set_postfix(stage=stage.number, loss=f"{record['loss']:.4f}", refresh=False)

        evaluated = is_eval_step(run.config, stage, step)
        if evaluated:
            check_finite(window, store)
            records = evaluate(run, eval_fn, state.params, step=step, stage=stage, log=log)
            evals = record_evaluation(evals, records, run, step=step, stage=stage)
        checkpoint = functools.partial(
            save_checkpoint, run, store, log, step=step, stage=stage, state=state, window=window, evals=evals
        )
        saved = evaluated or bool(t.checkpoint_every and step % t.checkpoint_every == 0)
        if saved:
            checkpoint(data=sr.iterator.get_state())
        if signals.should_stop(step):
            if not saved:
                checkpoint(data=sr.iterator.get_state())
            return dataclasses.replace(sr, state=state, step=step, window=window, evals=evals, preempted=True)
    return dataclasses.replace(sr, state=state, step=step, window=window, evals=evals)


def log_padding(run: Run) -> None:
    """One info line: the share of padded token positions in an epoch of training
    batches, with the run's length buckets and with every batch padded to max_length."""
    from rome_jax.data import bucket_batches, padded_share, sequence_lengths

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


# --------------------------------------------------------------------- the loop


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, overwrite: bool = False, progress: bool = True
) -> Result:
    """Trains (or resumes) the run described by `config` in `workdir`; see the module doc.

    Raises ConfigError / DataError / CheckpointError for what the user can fix and
    TrainingError for a non-finite loss. Returns a `Result`; `preempted` is True
    when a signal stopped the run after saving a checkpoint.
    """
    from rome_jax.training import step as ts

    run, params = set_up(config, workdir, overwrite=overwrite)
    log_padding(run)
    store = checkpoints_lib.Checkpoints(run.workdir / "checkpoints", keep=run.config.train.keep_checkpoints)
    start_step, state, meta = restore_checkpoint(run, store)
    resuming = state is not None
    if resuming:
        params = state.params
    log = MetricsLog(
        run.workdir,
        resume_bytes=meta.metrics_bytes if resuming else None,
        resume_step=start_step,
        enabled=run.is_writer,
    )
    evals = meta.evals
    eval_fn = make_eval_fn(run.model.config, run.mesh)
    bar = None
    try:
        with StopSignals() as signals:
            if progress and run.is_writer:
                bar = _progress_bar(run.total_steps, start_step)
            for stage in run.stages:
                if start_step >= stage.last_step:
                    continue
                tx, schedule = make_stage_optimizer(run.config, stage, params)
                iterator = run.iterator(stage.number)
                if resuming and start_step > stage.first_step:  # continue the stage
                    iterator.set_state(meta.data)
                    window = LogWindow.from_meta(meta.window)
                else:
                    state = start_stage(run, stage, params, tx, store, evals.stage1_best)
                    window = LogWindow()
                params = None  # the run's parameters live in `state`
                train_step = StepPerLength(
                    ts.compile_train_step(run.model.config, stage.settings, tx, run.mesh, state.params)
                )
                sr = train_stage(
                    run,
                    StageRun(stage, state, max(start_step, stage.first_step), iterator, window, evals),
                    train_step=train_step,
                    schedule=schedule,
                    eval_fn=eval_fn,
                    log=log,
                    store=store,
                    signals=signals,
                    bar=bar,
                )
                state, evals = sr.state, sr.evals
                if sr.preempted:
                    logger.warning(
                        "stopped at step %d after saving a checkpoint; run the same command again to resume", sr.step
                    )
                    return Result(step=sr.step, preempted=True, final_eval=evals.last, best=evals.best)
                start_step, params, resuming = sr.step, state.params, False

        if bar is not None:
            bar.close()
            bar = None
        if run.is_writer:
            export_model(run, state.params)
        return Result(step=run.total_steps, final_eval=evals.last, best=evals.best)
    finally:
        if bar is not None:
            bar.close()
        log.close()
        store.close()


def export_model(run: Run, params: Any) -> None:
    """Writes the final model (every exit) and the tokenizer as an HF directory: workdir/model."""
    from rome_jax.serving.api import MultiExitModel

    MultiExitModel(run.model.config, jax.device_get(params), run.model.tokenizer, run.label_names).save_pretrained(
        str(run.workdir / "model")
    )
    logger.info("wrote the final model to %s", run.workdir / "model")


def _progress_bar(total: int, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5 if _is_tty() else 15.0,
        desc="train",
    )


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
