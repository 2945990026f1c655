"""The training loop: one generic function, `train_and_evaluate(config, workdir)`.

It reads top to bottom: `set_up` (config, workdir, tokenizer, data, model, mesh:
a `Run`), `restore_checkpoint` (the train state and its `CheckpointMeta`), then for
each stage `start_stage` and `train_stage` (the steps, `evaluate` on the dev splits,
`record_evaluation`, `save_checkpoint`), and `export_model`. What changes while
training is passed and returned (`StageRun`, `LogWindow`, `Evaluations`), never
rebound in place.

Every mode goes through the same loop; two-stage modes (DeeBERT, FastBERT) run it
over two stages (rome_jax/training/stages.py), stage 2 with a fresh optimizer and
schedule, their steps counted in one global step number. Stage 2 starts from stage
1's last step, or with `train.stage2_start="best"` from its best evaluation (the
first of equal final-exit scores, as FastBERT's script keeps it).

The pieces, one module each (all in rome_jax/training/):
    setup.py        `set_up` -> `Run`: what the stages read, unchanged while training
    stages.py       `Stage`, `plan_stages`, `make_stage_optimizer`, `is_eval_step`
    workdir.py      `prepare_workdir`, and the workdir's layout (what a run writes;
                    eval.py reads it)
    compiled.py     `StepPerLength`: the train step compiled once per batch length
    metrics_log.py  `MetricsLog` (metrics.jsonl, TensorBoard), `LogWindow`, `train_record`
    evaluate.py     `evaluate`: every exit on every dev split
    best.py         the best-checkpoint rule (`Evaluations`, `update_best`)
    resume.py       `CheckpointMeta`, `save_checkpoint`, `restore_checkpoint`
    checkpoints.py  the orbax store
    preemption.py   `StopSignals` (SIGTERM/SIGINT), `PREEMPTED_EXIT_CODE`

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

import contextlib
import dataclasses
import functools
import logging
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from tqdm import tqdm

from rome_jax.data import BatchIterator
from rome_jax.serving.api import MultiExitModel
from rome_jax.sharding import replicate, shard_batch
from rome_jax.training import step as ts
from rome_jax.training.best import Evaluations, record_evaluation
from rome_jax.training.checkpoints import Checkpoints
from rome_jax.training.compiled import StepPerLength
from rome_jax.training.evaluate import evaluate, make_eval_fn
from rome_jax.training.metrics_log import LogWindow, MetricsLog, log_padding, train_record
from rome_jax.training.preemption import PREEMPTED_EXIT_CODE, StopSignals
from rome_jax.training.resume import check_finite, restore_checkpoint, restore_params, save_checkpoint
from rome_jax.training.setup import Run, set_up
from rome_jax.training.stages import Stage, is_eval_step, make_stage_optimizer
from rome_jax.training.step import Params, TrainState

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "Result",
    "StageRun",
    "export_model",
    "start_stage",
    "train_and_evaluate",
    "train_stage",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Result:
    """What `train_and_evaluate` returns."""

    step: int  # global steps done
    preempted: bool = False  # stopped by a signal after saving a checkpoint
    final_eval: dict | None = None  # the last evaluation's records, by split
    best: dict | None = None  # {"step", "score", "metric"} of the best checkpoint


# --------------------------------------------------------------------- the loop


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, overwrite: bool = False, progress: bool = True
) -> Result:
    """Trains (or resumes) the run described by `config` in `workdir`; see the module doc.

    Raises ConfigError / DataError / CheckpointError for what the user can fix and
    TrainingError for a non-finite loss. Returns a `Result`; `preempted` is True
    when a signal stopped the run after saving a checkpoint.
    """
    run, params = set_up(config, workdir, overwrite=overwrite)
    log_padding(run)
    store = Checkpoints(run.workdir / "checkpoints", keep=run.config.train.keep_checkpoints)
    step, state, meta = restore_checkpoint(run, store)  # step 0 and no state: a fresh start
    if state is not None:
        params = state.params
    log = MetricsLog(
        run.workdir,
        resume_bytes=None if state is None else meta.metrics_bytes,
        resume_step=step,
        enabled=run.is_writer,
    )
    evals = meta.evals
    eval_fn = make_eval_fn(run.model.config, run.mesh)
    with (
        contextlib.closing(store),
        contextlib.closing(log),
        _progress_bar(run.total_steps, step, enabled=progress and run.is_writer) as bar,
    ):
        with StopSignals() as signals:
            for stage in run.stages:
                if step >= stage.last_step:
                    continue  # done before the checkpoint resumed from
                tx, schedule = make_stage_optimizer(run.config, stage, params)
                iterator = run.iterator(stage.number)
                if step > stage.first_step:  # resuming mid-stage: continue it
                    assert state is not None and meta.data is not None  # both restored with the checkpoint
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
                    StageRun(stage, state, max(step, stage.first_step), iterator, window, evals),
                    train_step=train_step,
                    schedule=schedule,
                    eval_fn=eval_fn,
                    log=log,
                    store=store,
                    signals=signals,
                    bar=bar,
                )
                step, state, evals = sr.step, sr.state, sr.evals
                if sr.preempted:
                    logger.warning(
                        "stopped at step %d after saving a checkpoint; run the same command again to resume", step
                    )
                    return Result(step=step, preempted=True, final_eval=evals.last, best=evals.best)
                params = state.params

        assert state is not None  # restored, or trained by the stages
        bar.close()  # before the export's log line
        if run.is_writer:
            export_model(run, state.params)
        return Result(step=run.total_steps, final_eval=evals.last, best=evals.best)


# ---------------------------------------------------------------- the pieces of a stage


def start_stage(
    run: Run,
    stage: Stage,
    params: Params,
    tx: optax.GradientTransformation,
    store: Checkpoints,
    stage1_best: dict | None,
) -> TrainState:
    """A fresh train state for `stage` (step `stage.first_step`), replicated over the mesh.

    It starts from `params`, or in stage 2 with `train.stage2_start="best"` from the
    checkpoint of stage 1's best evaluation.
    """
    if (
        stage.number == 2
        and run.config.train.stage2_start == "best"
        and stage1_best is not None
        and stage1_best["step"] != stage.first_step
    ):
        params = restore_params(run, store, stage1_best["step"])
        logger.info(
            "stage 2 starts from stage 1's best evaluation: step %d (%s %.4f)",
            stage1_best["step"],
            stage1_best["metric"],
            stage1_best["score"],
        )
    fresh = ts.create_train_state(params, tx, run.config.train.seed)
    fresh = dataclasses.replace(fresh, step=jnp.asarray(stage.first_step, jnp.int32))
    state = replicate(fresh, run.mesh)
    del fresh, params
    if stage.number > 1:
        logger.info("stage %d: %d steps, fresh optimizer", stage.number, stage.num_steps)
    return state


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
    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]],
    schedule: optax.Schedule,
    eval_fn: Callable,
    log: MetricsLog,
    store: Checkpoints,
    signals: StopSignals,
    bar: tqdm,
) -> StageRun:
    """Runs `sr.stage`'s remaining steps: logging, evaluations, checkpoints; stops early
    (`preempted`) after saving a checkpoint when a signal arrived.

    `train_step(state, batch)` -> (state, metrics), the batch {name: [B, L]} sharded over
    the mesh; `eval_fn` as `make_eval_fn` returns it; `schedule` the stage's learning rate.
    """
    t, stage = run.config.train, sr.stage
    state, step, window, evals = sr.state, sr.step, sr.window, sr.evals
    last_log_time, last_log_step = time.time(), step
    while step < stage.last_step:
        if t.debug_nan_at_step and step + 1 == t.debug_nan_at_step:
            state = dataclasses.replace(state, params=jax.tree.map(lambda p: p * jnp.nan, state.params))
        batch = next(sr.iterator)
        batch = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
        state, metrics = train_step(state, shard_batch(batch, run.mesh))
        step += 1
        window = window.add(metrics, step)
        bar.update(1)

        if step % t.log_every == 0 or step == stage.last_step:
            check_finite(window, store)
            record = train_record(stage, step, window, schedule)
            now = time.time()
            rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
            last_log_time, last_log_step = now, step
            log.write(record, board_prefix="train", extra_scalars={"perf/steps_per_sec": rate})
            window = LogWindow()
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


# --------------------------------------------------------------------- the edges


def export_model(run: Run, params: Params) -> None:
    """Writes the final model (every exit) and the tokenizer as an HF directory: workdir/model."""
    MultiExitModel(run.model.config, jax.device_get(params), run.model.tokenizer, run.label_names).save_pretrained(
        str(run.workdir / "model")
    )
    logger.info("wrote the final model to %s", run.workdir / "model")


def _progress_bar(total: int, initial: int, *, enabled: bool) -> tqdm:
    """The steps' progress bar on stderr (a silent one when not `enabled`)."""
    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5 if _is_tty() else 15.0,
        desc="train",
        disable=not enabled,
    )


def _is_tty() -> bool:
    return sys.stderr.isatty()
