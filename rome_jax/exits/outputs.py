"""Every exit's outputs for a dataset, in input order: the one batching path of
training's evaluation, eval.py, `predict` and the GLUE runner.

How (`exit_outputs`): the rows, in input order, are cut into batches of
`batch_size` rows by `bucket_batches` (each row goes to the smallest length bucket
holding it, rows keep their order inside a bucket, a bucket's partial batch is
carried up, the last batch is padded with masked rows: `batch_plan`); each batch is
cut to its bucket's length (`take`) and run; the outputs are scattered back to
their rows. With one bucket (`LengthBuckets.none`) the batches are the rows in
input order, padded to `max_length`.

Devices: the variants run on this process's devices (`executors`, which split a
batch over them where its rows divide) or, for training, on the global mesh of
every process (`gathered_exit_logits`): each process passes its share of every
batch's rows (rows [p * b, (p + 1) * b), b = batch_size // process_count, as
`data.BatchIterator` does) and the jitted forward (`mesh_forward`) returns the
whole batch's logits to every process, so every process ends with every row.

The variants:
- `all_exit_logits`: every exit's logits [E, N, C] on this process's devices;
- `gathered_exit_logits`: the same over the global mesh, in several processes;
- `all_exit_signals`: every exit's logits [E, N, C], signals (each [E, N]) and,
  optionally, pooler outputs [E, N, H], on this process's devices
  (`rome_jax.exits.signals.all_exit_signals`);
- `early_exits`: one criterion's per-example early exit (`BatchedEarlyExit`,
  one `run_dataset` per bucket length): exit layers and the answering logits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rome_jax import sharding
from rome_jax.data.buckets import LengthBuckets, bucket_batches, sequence_lengths
from rome_jax.data.features import Features
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import INPUT_KEYS, MultiExitEncoder
from rome_jax.encoder.pytree import Params
from rome_jax.errors import ConfigError, DataError
from rome_jax.exits import batched, executors, signals
from rome_jax.exits.criteria import Criterion, Signals

Inputs = Features | Mapping[str, np.ndarray]
"""A dataset: `Features`, or tokenized arrays `input_ids` [N, T] and optionally
`attention_mask`, `token_type_ids` [N, T] (right-padded)."""

Plan = list[tuple[np.ndarray, int]]
"""Batches as (rows [batch_size] int64, -1 for padding; the length they are cut to)."""

RunBatches = Callable[[list[dict[str, np.ndarray]]], Mapping[str, Any]]
"""Batches (all of one length) -> {name: [rows, ...]}, the rows of the batches
side by side (every process's rows, in several processes)."""


def _arrays(inputs: Inputs) -> dict[str, np.ndarray]:
    if isinstance(inputs, Features):
        return {k: getattr(inputs, k) for k in INPUT_KEYS}
    return {k: np.asarray(inputs[k]) for k in INPUT_KEYS if k in inputs}


def _check_buckets(buckets: LengthBuckets, width: int) -> None:
    if not isinstance(buckets, LengthBuckets):
        raise TypeError(f"buckets: a data.buckets.LengthBuckets (see length_buckets), not {buckets!r}")
    if buckets.max_length > width:
        raise ConfigError(f"length buckets {list(buckets)} exceed the inputs' {width} positions")


def batch_plan(inputs: Inputs, batch_size: int, buckets: LengthBuckets, limit: int = 0) -> Plan:
    """The batches of the first `limit` rows (0: all) in input order, as
    `bucket_batches` cuts them without dropping a remainder. A row without
    `attention_mask` counts as `T` long."""
    arrays = _arrays(inputs)
    ids = arrays["input_ids"]
    _check_buckets(buckets, ids.shape[1])
    n = len(ids) if limit <= 0 else min(limit, len(ids))
    mask = arrays.get("attention_mask")
    lengths = sequence_lengths(mask) if mask is not None else np.full(len(ids), ids.shape[1], np.int64)
    return bucket_batches(np.arange(n), lengths, buckets, batch_size, drop_remainder=False)


def take(inputs: Inputs, rows: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """The batch of `rows` (-1: a masked copy of the batch's first real row) with its
    token arrays cut to `length`: the inputs' keys of `INPUT_KEYS` [b, length] and
    `example_mask` [b] bool."""
    arrays = _arrays(inputs)
    real = rows >= 0
    picked = np.where(real, rows, rows[real][0] if real.any() else 0)
    batch = {k: v[picked, :length] for k, v in arrays.items()}
    batch["example_mask"] = real
    return batch


def exit_outputs(
    run: RunBatches,
    inputs: Inputs,
    *,
    batch_size: int,
    buckets: LengthBuckets,
    per_length: bool = False,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """`run`'s outputs for every row of `inputs`, in input order: {name: [N, ...]}
    ({} for no rows).

    The rows are batched by `batch_plan` and cut by `take`; `run` is called with one
    batch, or with `per_length` with every batch of one length (in the plan's
    order, shortest length first: `BatchedEarlyExit.run_dataset` takes one length
    a call). In several processes each passes its share of every batch's rows
    (`batch_size` divides over `process_count`) and `run` must return every
    process's rows (see the module doc). Padding rows' outputs are dropped.
    """
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ConfigError(f"process_index {process_index} is not in [0, {process_count})")
    if batch_size % process_count:
        raise ConfigError(f"batch_size {batch_size} is not divisible by the {process_count} processes")
    arrays = _arrays(inputs)
    n = len(arrays["input_ids"])
    plan = batch_plan(arrays, batch_size, buckets)
    calls: list[tuple[list[np.ndarray], int]] = []
    if per_length:
        by_length: dict[int, list[np.ndarray]] = {}
        for rows, length in plan:
            by_length.setdefault(length, []).append(rows)
        calls = [(rows, length) for length, rows in by_length.items()]
    else:
        calls = [([rows], length) for rows, length in plan]
    share = slice(process_index * batch_size // process_count, (process_index + 1) * batch_size // process_count)
    out: dict[str, np.ndarray] = {}
    for batch_rows, length in calls:
        got = run([take(arrays, rows[share], length) for rows in batch_rows])
        rows = np.concatenate(batch_rows)
        real = rows >= 0
        for name, value in got.items():
            value = np.asarray(value)
            if name not in out:
                out[name] = np.zeros((n, *value.shape[1:]), value.dtype)
            out[name][rows[real]] = value[real]
    return out


# ---------------------------------------------------------------- the variants


def _full_width(logits: np.ndarray, width: int) -> np.ndarray:
    """Rows' token logits [b, E, t, C] (token exits, a batch cut to length t) padded with
    zeros to the inputs' `width` positions, so batches of every length stack; sequence
    logits [b, E, C] as they are."""
    if logits.ndim != 4 or logits.shape[2] == width:
        return logits
    return np.pad(logits, ((0, 0), (0, 0), (0, width - logits.shape[2]), (0, 0)))


def all_exit_logits(
    config: ModelConfig, params: Params, inputs: Inputs, *, batch_size: int, buckets: LengthBuckets
) -> np.ndarray:
    """Every exit's logits on every row, in input order: [E, N, C] float32 (token exits:
    [E, N, T, C], zeros past a row's bucket), on this process's devices (`executors.all_exits`)."""
    width = _arrays(inputs)["input_ids"].shape[1]

    def run(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        (batch,) = batches
        logits = executors.all_exits(config, params, {k: batch[k] for k in INPUT_KEYS if k in batch})
        return {"logits": _full_width(np.moveaxis(np.asarray(logits, np.float32), 1, 0), width)}

    out = exit_outputs(run, inputs, batch_size=batch_size, buckets=buckets)
    if "logits" not in out:
        return np.zeros((config.num_exits, 0, config.num_labels), np.float32)
    return np.ascontiguousarray(np.moveaxis(out["logits"], 0, 1))


def all_exit_signals(
    config: ModelConfig,
    params: Params,
    inputs: Inputs,
    *,
    batch_size: int,
    buckets: LengthBuckets,
    with_pooled: bool = False,
) -> tuple[np.ndarray, Signals, np.ndarray | None]:
    """Every exit's logits [E, N, C] float32 and signals (`Signals`, each [E, N]
    float32) on every row, in input order, and with `with_pooled` the exits' pooler
    outputs [E, N, H] float32 (what the gates read; else None)."""
    names = ("logits", *Signals._fields, *(("pooled",) if with_pooled else ()))

    def run(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        (batch,) = batches
        logits, sig, pooled = signals.all_exit_signals(config, params, {k: batch[k] for k in INPUT_KEYS if k in batch})
        values = (logits, *sig, *((pooled,) if with_pooled else ()))
        return {name: np.moveaxis(np.asarray(v, np.float32), 1, 0) for name, v in zip(names, values)}

    out = exit_outputs(run, inputs, batch_size=batch_size, buckets=buckets)
    L = config.num_exits
    if "logits" not in out:
        empty = np.zeros((L, 0), np.float32)
        pooled = np.zeros((L, 0, config.hidden_size), np.float32) if with_pooled else None
        return np.zeros((L, 0, config.num_labels), np.float32), Signals(empty, empty, empty), pooled
    moved = {name: np.ascontiguousarray(np.moveaxis(out[name], 0, 1)) for name in names}
    return moved["logits"], Signals(*(moved[f] for f in Signals._fields)), moved.get("pooled")


def _forward(config: ModelConfig, params: Params, batch: dict) -> jax.Array:
    """Every exit's logits [E, B, C] float32 of a batch of [B, T] `INPUT_KEYS` arrays."""
    inputs = {k: batch[k] for k in INPUT_KEYS}
    outputs = MultiExitEncoder(config).apply({"params": params}, **inputs)
    logits = cast(dict[str, jax.Array], outputs)["logits"]  # apply returns the output alone: no collection is mutable
    return logits.astype(jnp.float32)


def mesh_forward(config: ModelConfig, mesh: Mesh) -> Callable[[Params, dict], jax.Array]:
    """(params, batch) -> every exit's logits [E, B, C] float32, jitted over `mesh`:
    params replicated, the batch's rows split on the `data` axis, the logits
    replicated (every process receives every row's)."""
    return jax.jit(
        functools.partial(_forward, config),
        in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )


def gathered_exit_logits(
    forward: Callable[[Params, dict], jax.Array],
    params: Params,
    inputs: Inputs,
    *,
    batch_size: int,
    buckets: LengthBuckets,
    mesh: Mesh,
) -> np.ndarray:
    """Every exit's logits on every row, in input order, [E, N, C] float32 (token exits:
    [E, N, T, C], zeros past a row's bucket), with `forward` (`mesh_forward(config,
    mesh)`) on the global `mesh`: this process passes its share of every batch's rows
    and receives all of them."""
    width = _arrays(inputs)["input_ids"].shape[1]

    def run(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        (batch,) = batches
        logits = forward(params, sharding.shard_batch({k: batch[k] for k in INPUT_KEYS}, mesh))
        return {"logits": _full_width(np.moveaxis(np.asarray(jax.device_get(logits)), 1, 0), width)}

    out = exit_outputs(
        run,
        inputs,
        batch_size=batch_size,
        buckets=buckets,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if "logits" not in out:
        raise DataError("no examples to evaluate")
    return np.ascontiguousarray(np.moveaxis(out["logits"], 0, 1))


def early_exits(
    config: ModelConfig,
    params: Params,
    inputs: Inputs,
    criterion: Criterion,
    *,
    batch_size: int,
    buckets: LengthBuckets,
) -> tuple[np.ndarray, np.ndarray]:
    """One criterion's per-example early exit on every row, in input order:
    (exit_index [N] int32 0-based, logits [N, C] float32 of the exit that answered).

    `BatchedEarlyExit.run_dataset` runs every batch of one bucket length in one call
    (its rows may regroup across those batches)."""
    executor = batched.BatchedEarlyExit(config, params, criterion)

    def run(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        # a lone batch's slow rows have no later batch to join: parking them would only
        # add shapes (and compilations) to a server's calls
        out = executor.run_dataset(batches, regroup=len(batches) > 1)
        return {"exit_index": out["exit_index"], "logits": out["logits"]}

    out = exit_outputs(run, inputs, batch_size=batch_size, buckets=buckets, per_length=True)
    n = len(_arrays(inputs)["input_ids"])
    exit_index = out.get("exit_index", np.zeros(n, np.int32)).astype(np.int32, copy=False)
    logits = out.get("logits", np.zeros((n, config.num_labels), np.float32)).astype(np.float32, copy=False)
    return exit_index, logits
