"""The early-exit loop both compiled executors drive: `_exit_loop`.

A `lax.while_loop` over the stacked layers, each followed by its exit and the
criterion's step (`rome_jax.exits.criteria.step_rule`), with the layer indices and
the criterion traced. `rome_jax.exits.executors.while_loop_exit` runs it once per
batch, from layer 0 until every row has exited; `rome_jax.exits.batched` runs it
per bucket, from a layer to where compacting into a smaller bucket pays. The
exported predictor (`rome_jax.serving.export`) compiles the per-batch one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import apply_layer_with_exit_pooled, exit_state, layer_params
from rome_jax.encoder.pytree import Params
from rome_jax.exits.criteria import ExitState, Rule, init_state, step_rule
from rome_jax.exits.signals import signals_of

Array = jax.Array


class _Segment(NamedTuple):
    """What `_exit_loop` returns for a batch (or bucket) of b rows.

    next_layer: the layer it stopped before (int32 scalar).
    hidden [b, T, H], state: to continue from `next_layer`.
    running [b] bool: rows that have not exited.
    exit_index [b] int32: the exit where a row exited in this segment, else -1.
    logits [b, C] float32: the answers of the rows that exited in this segment.
    """

    next_layer: Array
    hidden: Array
    state: ExitState
    running: Array
    exit_index: Array
    logits: Array


def start_state(config: ModelConfig, hidden: Array, attention_mask: Array) -> ExitState:
    """The criterion state before layer 0 of embeddings hidden [b, T, H]: no previous
    logits, and as the previous representation the embeddings pooled as the exits pool
    (so saturation at exit 1 compares layer 1 with them)."""
    state = init_state(None, hidden.shape[0], config.num_labels, config.hidden_size)
    return state._replace(previous_state=exit_state(config, hidden, attention_mask))


def _exit_loop(
    config: ModelConfig,
    params: Params,
    rule: Rule,
    hidden: Array,
    attention_mask: Array,
    state: ExitState,
    padding: Array,
    running: Array,
    start: Array | int,
    stop_layer: Array | int,
    stop_running: Array | int,
) -> _Segment:
    """A `lax.while_loop` over layers `start, start+1, ...` (indices traced), each
    followed by its exit, its signals (`rome_jax.exits.signals`) and the criterion's
    step; `state.previous_state` must be [b, H] (`init_state(..., config.hidden_size)`).
    Stops before `stop_layer`, or once at most `stop_running` rows still run (0: when
    every row has exited).

    Exited rows stay in the arrays (their results are frozen); padding rows exit at
    the first layer they run; everyone exits at the last layer.
    """
    num_layers = config.num_layers

    def cond(seg: _Segment):
        return (seg.next_layer < stop_layer) & (seg.next_layer < num_layers) & (jnp.sum(seg.running) > stop_running)

    def body(seg: _Segment) -> _Segment:
        index = seg.next_layer
        hidden, logits, pooled = apply_layer_with_exit_pooled(
            config, layer_params(params, index), seg.hidden, attention_mask
        )
        layer_state = exit_state(config, hidden, attention_mask)
        previous = seg.state.previous_state
        assert previous is not None  # init_state(..., config.hidden_size)
        signals = signals_of(params, pooled, layer_state, previous)
        state, exit_now = step_rule(rule, seg.state, logits, index, signals)
        state = state._replace(previous_state=layer_state)
        newly = seg.running & (exit_now | padding | (index == num_layers - 1))
        return _Segment(
            index + 1,
            hidden,
            state,
            seg.running & ~newly,
            jnp.where(newly, index, seg.exit_index),
            jnp.where(newly[:, None], logits, seg.logits),
        )

    rows = hidden.shape[0]
    first = _Segment(
        jnp.asarray(start, jnp.int32),
        hidden,
        state,
        running,
        jnp.full((rows,), -1, jnp.int32),
        jnp.zeros((rows, config.num_labels), jnp.float32),
    )
    return lax.while_loop(cond, body, first)
