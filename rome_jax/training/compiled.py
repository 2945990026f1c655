"""`StepPerLength`: the train step compiled ahead of time once per batch length.

With length buckets (data.buckets) a stage's batches come in a few sequence lengths;
each is compiled at its first batch and reused by every later one.

train_step = StepPerLength(step.compile_train_step(model_config, settings, tx, mesh, params))
state, metrics = train_step(state, batch)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rome_jax.training.step import TrainState

logger = logging.getLogger(__name__)


class StepPerLength:
    """A jitted train step compiled ahead of time once per sequence length (one per
    length bucket), each compilation logged once; the stage's steps reuse them.

    `jitted(state, batch)` as `train_step.compile_train_step` returns it (state
    donated, shardings fixed): `.lower(state, batch).compile()` for each new length.
    """

    def __init__(self, jitted: Callable[[TrainState, dict], tuple[TrainState, dict]]):
        self.jitted = jitted
        self.compiled: dict[int, Callable[[TrainState, dict], tuple[TrainState, dict]]] = {}

    def __call__(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One step on `batch` ({name: [B, L] array}, L its length): (new state, metrics)."""
        length = batch["input_ids"].shape[1]
        step = self.compiled.get(length)
        if step is None:
            if hasattr(self.jitted, "lower"):
                start = time.time()
                step = self.jitted.lower(state, batch).compile()
                logger.info("compiled the train step for length %d in %.1f s", length, time.time() - start)
            else:  # a plain function (tests wrap the step): called as it is
                step = self.jitted
            self.compiled[length] = step
        return step(state, batch)
