"""Three early-exit executors that make the same decisions (`rome_jax.exits.criteria.step`).

- `simulated_exit`: every exit computed (`all_exits`), the exit replayed afterwards
  (`rome_jax.exits.criteria.simulate`). No saving; the reference, and what threshold sweeps use.
- `while_loop_exit`: one compiled `lax.while_loop` over the stacked layers that stops
  when every example of the batch has exited. At batch 1 it runs exactly the layers
  the example needs; in a batch, the slowest example sets the depth.
- `BatchedEarlyExit` / `per_example_exit` (`rome_jax.exits.batched`): examples leave
  the batch as they exit; the rows still running are compacted into smaller buckets
  of fixed size, each compiling one program.

All three take the same criterion step: the two compiled ones in one loop
(`rome_jax.exits.loop._exit_loop`), the reference in `simulate`. This module holds
the first two and re-exports the public names of `rome_jax.exits.batches` (reading,
checking and fitting batches) and `rome_jax.exits.batched`, so that every executor
can be imported from here.

Padding rows (`example_mask` 0 in a batch) are forced to exit at exit 0 in every
executor: they never keep a loop running and never change other rows' decisions
(`BatchedEarlyExit` drops them before layer 1; their logits are not specified).

Every executor accepts any sequence length T (up to the model's positions) and
compiles one program per shape it meets. Nothing here pads or cuts: callers cut
their batches to a few length buckets (`rome_jax.data.buckets`), e.g. with
`cut_to_bucket`, so that a batch of short sentences does not run 128 positions of
padding and the number of compiled programs stays bounded. Positions past a row's
last attended token do not change its logits (the attention mask hides them), up
to float rounding: the same sums in another order.

Batches are dicts of [B, T] int arrays `input_ids`, `attention_mask`,
`token_type_ids` (optional) and `example_mask` ([B], optional), checked first by
every executor (`check_batch`; the format in `rome_jax.exits.batches`).

With several local devices (a GPU host, a TPU VM, fake CPU devices), every executor
splits a batch whose rows divide evenly over them on a `data` mesh axis, parameters
replicated (`rome_jax.sharding.place`): data-parallel inference, the same
decisions and logits up to float rounding. With one device nothing changes.

"The same decisions" holds in float32. In bfloat16 the per-example executor computes
a row in batches of other sizes than the full forward does, which rounds differently,
so an example whose criterion value lies within rounding of the threshold can exit
one layer apart; `evaluation.evaluate_split` reports whether they agreed
(`executors_agree`).
"""

from __future__ import annotations

import functools
from typing import cast

import jax
import jax.numpy as jnp

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import INPUT_KEYS, MultiExitEncoder, apply_embeddings
from rome_jax.encoder.pytree import Params
from rome_jax.exits.batched import BatchedEarlyExit, per_example_exit
from rome_jax.exits.batches import (
    BATCH_KEYS,
    _batch_arrays,
    _model_inputs,
    _padding_rows,
    check_batch,
    cut_to_bucket,
    default_buckets,
    fit_to_bucket,
    smallest_bucket,
)
from rome_jax.exits.criteria import SIGNAL_CRITERIA, Criterion, Rule, check_criterion, simulate
from rome_jax.exits.loop import _exit_loop, start_state
from rome_jax.exits.signals import all_exit_signals, check_gates, without_gates
from rome_jax.sharding import place

__all__ = [
    "BATCH_KEYS",
    "BatchedEarlyExit",
    "all_exits",
    "check_batch",
    "cut_to_bucket",
    "default_buckets",
    "fit_to_bucket",
    "per_example_exit",
    "simulated_exit",
    "smallest_bucket",
    "while_loop_exit",
]

Array = jax.Array


# ---------------------------------------------------------------- all exits, simulated


@functools.partial(jax.jit, static_argnums=0)
def _all_exits(config: ModelConfig, params: Params, batch: dict) -> Array:
    inputs = _model_inputs(batch)
    outputs = MultiExitEncoder(config).apply(
        {"params": params},
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        token_type_ids=inputs["token_type_ids"],
    )
    return cast(dict[str, Array], outputs)["logits"]  # apply returns the output alone: no collection is mutable


def all_exits(config: ModelConfig, params: Params, batch: dict) -> Array:
    """Logits of every exit (full depth, jitted): [E, B, C] float32. The batch is
    checked first (`check_batch`)."""
    return _all_exits(config, *place(without_gates(params), _batch_arrays(check_batch(config, batch), INPUT_KEYS)))


def simulated_exit(config: ModelConfig, params: Params, batch: dict, criterion: Criterion) -> dict:
    """`all_exits` then `simulate`: dict(exit_index [B] int32, logits [B, C],
    layers_run = L, all_logits [E, B, C]). For the signal criteria (lte, saturation,
    meta) the logits and signals come from `signals.all_exit_signals`."""
    check_gates(criterion, params)
    signals = None
    if criterion.name in SIGNAL_CRITERIA:
        checked = check_batch(config, batch)
        all_logits, signals, _ = all_exit_signals(config, *place(params, _batch_arrays(checked, INPUT_KEYS)))
    else:
        all_logits = all_exits(config, params, batch)
    exit_index, logits = simulate(criterion, all_logits, batch.get("example_mask"), signals)
    return {
        "exit_index": exit_index,
        "logits": logits,
        "layers_run": jnp.int32(config.num_layers),
        "all_logits": all_logits,
    }


# ---------------------------------------------------------------- one while loop per batch


@functools.partial(jax.jit, static_argnums=0)
def _while_loop_exit(config: ModelConfig, params: Params, batch: dict, rule: Rule) -> dict:
    inputs = _model_inputs(batch)
    hidden = apply_embeddings(config, params, inputs)
    rows = hidden.shape[0]
    seg = _exit_loop(
        config,
        params,
        rule,
        hidden,
        inputs["attention_mask"],
        start_state(config, hidden, inputs["attention_mask"]),
        _padding_rows(batch),
        jnp.ones((rows,), bool),
        0,
        config.num_layers,
        0,
    )
    return {"exit_index": seg.exit_index, "logits": seg.logits, "layers_run": seg.next_layer}


def while_loop_exit(config: ModelConfig, params: Params, batch: dict, criterion: Criterion) -> dict:
    """Early exit in one jitted `lax.while_loop` over the stacked layers.

    Stops when every (non-padding) example has exited. Returns dict(exit_index [B]
    int32 0-based, logits [B, C] float32, layers_run int32 scalar: layers executed,
    carried in the loop).
    """
    check_gates(check_criterion(criterion, config.num_labels, config.num_exits), params)
    return _while_loop_exit(config, *place(params, _batch_arrays(check_batch(config, batch))), criterion.rule)
