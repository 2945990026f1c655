"""A run's checkpoints: what one holds besides the train state (`CheckpointMeta`),
saving it (`save_checkpoint`, after `check_finite`) and resuming from the latest
(`restore_checkpoint`). The orbax store itself is rome_jax/training/checkpoints.py.

A checkpoint's state item is `state_tree(state)`: {"params", "opt_state", "step",
"rng"}; its meta item `CheckpointMeta.to_json()`. Resuming restores both, so the
loop continues with the same state, data position, logging window and evaluations.

Nothing is saved after a non-finite step: `save_checkpoint` first checks the steps
summed in the logging window, so the last checkpoint stays the last good one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from rome_jax.errors import CheckpointError, TrainingError
from rome_jax.training.best import Evaluations
from rome_jax.training.checkpoints import Checkpoints
from rome_jax.training.metrics_log import LogWindow, MetricsLog
from rome_jax.training.setup import Run
from rome_jax.training.stages import Stage
from rome_jax.training.step import Params, TrainState

logger = logging.getLogger(__name__)

_META_VERSION = 1


def state_tree(state: TrainState) -> dict[str, Any]:
    """A checkpoint's state item: {"params", "opt_state", "step", "rng"} of `state`
    (also of an abstract state: its leaves jax.ShapeDtypeStruct, a restore target)."""
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step, "rng": state.rng}


def state_from_tree(tree: dict[str, Any]) -> TrainState:
    """The train state of a checkpoint's state item (`state_tree`'s inverse)."""
    return TrainState(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"], rng=tree["rng"])


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
    def from_json(cls, meta: dict[str, Any]) -> CheckpointMeta:
        return cls(
            step=meta["step"],
            stage=meta["stage"],
            data=meta.get("data"),
            metrics_bytes=meta.get("metrics_bytes"),
            metrics_lines=meta.get("metrics_lines"),
            window=meta.get("window"),
            total_steps=meta.get("total_steps"),
            evals=Evaluations(best=meta.get("best"), stage1_best=meta.get("stage1_best"), last=meta.get("last_eval")),
        )


def restore_checkpoint(run: Run, store: Checkpoints) -> tuple[int, TrainState | None, CheckpointMeta]:
    """(start step, train state or None, meta) of the latest checkpoint; (0, None, empty) if none."""
    restored = store.restore_latest(state_tree(run.target))
    if restored is None:
        logger.info("workdir %s: starting (%d steps)", run.workdir, run.total_steps)
        return 0, None, CheckpointMeta()
    start_step, tree, meta = restored
    if meta.get("version") != _META_VERSION or meta.get("step") != start_step:
        raise CheckpointError(f"checkpoint {store.directory / str(start_step)} was not written by this trainer")
    logger.info("workdir %s: resuming from the checkpoint of step %d (of %d)", run.workdir, start_step, run.total_steps)
    return start_step, state_from_tree(tree), CheckpointMeta.from_json(meta)


def restore_params(run: Run, store: Checkpoints, step: int) -> Params:
    """The parameters of the checkpoint of `step` (replicated over the run's mesh)."""
    tree, _ = store.restore(step, state_tree(run.target))
    return state_from_tree(tree).params


def check_finite(window: LogWindow, store: Checkpoints) -> None:
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
    store: Checkpoints,
    log: MetricsLog,
    *,
    step: int,
    stage: Stage,
    state: TrainState,
    data: dict,
    window: LogWindow,
    evals: Evaluations,
) -> None:
    """Saves `state` at `step` with its meta, after checking the steps since the last check
    were finite (nothing is saved after a non-finite step). `data`: the iterator's position."""
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
        step, state_tree(state), meta.to_json(), preserve=evals.kept_steps(run.config.train.stage2_start == "best")
    )
