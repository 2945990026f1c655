"""Wall-clock seconds per example of the early-exit executors, against full depth.

`Timer` times, on a fixed set of a split's examples, the full-depth model
(`executors.all_exits`) and one criterion's early exit at batch 1
(`executors.while_loop_exit`, one compiled `lax.while_loop`) and batched
(`batched.BatchedEarlyExit`, examples leaving the batch as they exit), and
returns the exits the timed executors took so that `evaluation.evaluate_split` can
check them against the simulation. Each figure is the best of a few passes after a
compiling warm-up; the same bucket-cut batches run early exit and full depth.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from rome_jax.data import Features
from rome_jax.data.buckets import LengthBuckets, length_buckets
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import INPUT_KEYS
from rome_jax.encoder.pytree import Params
from rome_jax.exits import batched, batches, executors, outputs
from rome_jax.exits.criteria import Criterion


def _subset(features: Features, n: int) -> dict[str, np.ndarray]:
    """The first `n` examples' `INPUT_KEYS` arrays [n, T] (n <= 0: every example)."""
    n = len(features) if n <= 0 else min(n, len(features))
    return {k: getattr(features, k)[:n] for k in INPUT_KEYS}


def _clock(fn: Callable[[dict], object], batch: dict) -> float:
    """Seconds `fn(batch)` takes, its result awaited (`jax.block_until_ready`)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(batch))
    return time.perf_counter() - start


class Timer:
    """Wall-clock seconds per example of the executors on a fixed set of examples.

    Every figure is the best of `rounds` passes over the examples (after a
    compiling warm-up), so a burst of load on a shared machine spoils one pass,
    not the figure.

    buckets: a `LengthBuckets` (or a `data.buckets` value, resolved by `length_buckets`
    at the features' `max_length`). At batch 1 each example is cut to its own bucket
    (`batches.cut_to_bucket`); batched, the examples are grouped by bucket
    (`outputs.batch_plan`) and each batch cut to its bucket's length (one bucket:
    every batch padded to `max_length`).
    `batched_rows` [b] gives the example each row of `batched[b]` holds (-1: padding).
    """

    def __init__(
        self,
        config: ModelConfig,
        params: Params,
        features: Features,
        *,
        batch1_examples: int,
        batched_examples: int,
        batch_size: int,
        rounds: int = 2,
        buckets: LengthBuckets | str | Sequence[int] | None = None,
    ):
        self.config, self.params, self.rounds = config, params, rounds
        self.buckets = length_buckets(features.max_length, buckets)
        single = _subset(features, batch1_examples)
        self.singles = [
            batches.cut_to_bucket({k: v[i : i + 1] for k, v in single.items()}, self.buckets)
            for i in range(len(single["input_ids"]))
        ]
        plan = outputs.batch_plan(features, batch_size, self.buckets, batched_examples)
        self.batched = [outputs.take(features, rows, length) for rows, length in plan]
        self.batched_rows = [rows for rows, _ in plan]
        # the baseline computes the filler rows the early-exit executor computes
        row_buckets = batches.default_buckets(batch_size)
        self.baseline = [batches.fit_to_bucket(b, row_buckets) for b in self.batched]
        self.num_batched = int(sum(b["example_mask"].sum() for b in self.batched))

    def full_depth(self) -> tuple[float, float]:
        """(batch-1, batched) seconds per example of the full-depth model."""
        run = lambda b: executors.all_exits(self.config, self.params, b)
        strip = lambda b: {k: b[k] for k in INPUT_KEYS}
        for one_per_shape in {b["input_ids"].shape: b for b in self.singles}.values():
            run(one_per_shape)  # compile
        for one_per_shape in {b["input_ids"].shape: b for b in self.baseline}.values():
            run(strip(one_per_shape))
        batch1 = min(sum(_clock(run, b) for b in self.singles) for _ in range(self.rounds)) / len(self.singles)
        run_stripped = lambda b: run(strip(b))
        batched = (
            min(sum(_clock(run_stripped, b) for b in self.baseline) for _ in range(self.rounds)) / self.num_batched
        )
        return batch1, batched

    def early_exit(self, criterion: Criterion) -> tuple[float, float, np.ndarray, np.ndarray]:
        """(batch-1 s/example, batched s/example, batch-1 exits, batched exits)."""
        loop = lambda b: executors.while_loop_exit(self.config, self.params, b, criterion)
        for one_per_shape in {b["input_ids"].shape: b for b in self.singles}.values():
            loop(one_per_shape)  # compile (once for every criterion)
        batch1_seconds = float("inf")
        for _ in range(self.rounds):
            batch1_exits, seconds = [], 0.0
            for b in self.singles:
                start = time.perf_counter()
                out = jax.block_until_ready(loop(b))
                seconds += time.perf_counter() - start
                batch1_exits.append(int(np.asarray(out["exit_index"])[0]))
            batch1_seconds = min(batch1_seconds, seconds)
        executor = batched.BatchedEarlyExit(self.config, self.params, criterion)
        # run_dataset takes one sequence length a call: one call per length, in order
        groups: dict[int, list[int]] = {}
        for k, b in enumerate(self.batched):
            groups.setdefault(b["input_ids"].shape[1], []).append(k)
        for ks in groups.values():
            executor.run_dataset([self.batched[ks[0]]])  # compile the buckets
        batched_seconds = float("inf")
        for _ in range(self.rounds):
            outs, seconds = [], 0.0
            for ks in groups.values():
                start = time.perf_counter()
                outs.append(executor.run_dataset([self.batched[k] for k in ks]))
                seconds += time.perf_counter() - start
            batched_seconds = min(batched_seconds, seconds)
        batched_exits = np.zeros(self.num_batched, np.int32)
        for ks, out in zip(groups.values(), outs):
            rows = np.concatenate([self.batched_rows[k] for k in ks])
            real = rows >= 0
            batched_exits[rows[real]] = np.asarray(out["exit_index"])[real]
        return (
            batch1_seconds / len(self.singles),
            batched_seconds / self.num_batched,
            np.asarray(batch1_exits),
            batched_exits,
        )
