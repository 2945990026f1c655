"""Token-level early exit (TOKEE) with finished sentences leaving the batch.

`token_early_exit` (`rome_jax.exits.tokens`) runs a batch down the layers until its
last active token has exited: every sentence of the batch computes every layer that
the slowest one needs. `compacted_token_exit` gives the same answers (per token:
exit index, logits, final hidden state) while sentences whose tokens have all
exited leave: the rows still running are kept in a bucket of fixed size (the batch
size and the powers of two and 1.5 x powers of two below it,
`rome_jax.exits.batches.default_buckets`), and one compiled loop runs the bucket
down the layers until so few sentences are left that they fit the next smaller
bucket; the host then gathers them into it (filler rows copy a running sentence,
with no active token: they compute, and change nothing). Sentences are independent
(attention stays inside a sentence, and the window rule reads one sentence's
words), so moving a sentence to another row or batch does not change its answers.

This is what turns the token-level rule's FLOPs into seconds: the dense loop's cost
is the batch size times the deepest sentence's layers; here it is about the sum of
each sentence's own layers (`row_layers`, with the buckets' filler rows).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.pytree import Params, PyTree
from rome_jax.exits.batches import default_buckets, smallest_bucket
from rome_jax.exits.criteria import Criterion, Rule
from rome_jax.exits.tokens import _Carry, _check_token_batch, _layer_step, _prepare, _Words

Array = jax.Array


# -> (attention_mask [B, T], the words, the state before layer 1)
_start = jax.jit(_prepare, static_argnums=(0, 3))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _segment(
    config: ModelConfig, params: Params, rule: Rule, mask: Array, words: _Words, carry: _Carry, min_rows: Array
) -> _Carry:
    """Layers from `carry.layer` on, while more than `min_rows` sentences have an
    active token (and layers are left)."""

    def cond(c: _Carry) -> Array:
        running = jnp.sum(jnp.any(c.active, axis=-1))
        return (c.layer < config.num_layers) & (running > min_rows)

    return lax.while_loop(cond, lambda c: _layer_step(config, params, rule, mask, words, c), carry)


@jax.jit
def _gather(tree: PyTree, rows: Array, keep: Array) -> PyTree:
    """Rows `rows` of every [B, ...] array of `(mask, words, carry)`; the rows where
    `keep` [b] is False get no active token (fillers)."""
    mask, words, carry = tree
    take = lambda x: x[rows]
    mask, words = take(mask), jax.tree.map(take, words)
    carry = carry._replace(
        hidden=take(carry.hidden),
        active=take(carry.active) & keep[:, None],
        logits=take(carry.logits),
        exit_index=take(carry.exit_index),
        state=jax.tree.map(take, carry.state),
    )
    return mask, words, carry


def compacted_token_exit(
    config: ModelConfig,
    params: Params,
    batch: dict,
    criterion: Criterion,
    window: int = 0,
    buckets: Sequence[int] | None = None,
) -> dict:
    """TOKEE as `token_early_exit`, finished sentences leaving the batch (module doc).

    batch: `input_ids`, `attention_mask`, `token_type_ids`, `word_ids` [B, T] (and
    `example_mask` [B]: padding rows, 0, never run; they report exit 0 and zeros).
    buckets: the row counts the compiled loop may run with (default
    `default_buckets(B)`; B is always one). Returns dict(exit_index [B, T] int32,
    logits [B, T, C] float32, hidden [B, T, H] (as `token_early_exit`'s),
    layers_run [B] int32 (the layers each sentence ran), row_layers (layers run
    summed over bucket rows, fillers included: what was computed; the dense loop
    computes B x max(layers_run)), launches (compiled loops run)).
    """
    batch = _check_token_batch(config, batch, criterion, window)
    keys = ("input_ids", "attention_mask", "token_type_ids", "word_ids")
    mask, words, carry = _start(config, params, {k: batch[k] for k in keys if k in batch}, window)
    B, T = mask.shape
    real = np.ones(B, bool) if "example_mask" not in batch else np.asarray(batch["example_mask"]).astype(bool)
    if not real.all():  # padding rows never run
        carry = carry._replace(active=carry.active & jnp.asarray(real)[:, None])
    ladder = sorted(set(buckets or default_buckets(B)) | {B})
    exit_index = np.full((B, T), -1, np.int32)
    logits = np.zeros((B, T, config.num_labels), np.float32)
    hidden = np.zeros((B, T, config.hidden_size), np.float32)
    layers_run = np.zeros(B, np.int32)
    slots = np.arange(B)  # the sentence of each row; -1: a filler or a finished sentence
    row_layers = launches = 0
    while True:
        running = np.asarray(jax.device_get(jnp.any(carry.active, axis=-1))) & (slots >= 0)
        done = (slots >= 0) & ~running
        if done.any():
            got = jax.device_get((carry.exit_index, carry.logits, carry.hidden, carry.layer))
            ids = slots[done]
            exit_index[ids], logits[ids], hidden[ids] = got[0][done], got[1][done], got[2][done]
            layers_run[ids] = int(got[3])
            slots = np.where(done, -1, slots)
        live = np.flatnonzero(slots >= 0)
        if not len(live):
            break
        if int(carry.layer) >= config.num_layers:  # the last exit takes every token: never
            raise RuntimeError(f"{len(live)} sentences still running after the last layer")
        size = smallest_bucket(len(live), ladder)
        if size != len(slots):
            filler = size - len(live)
            rows = np.concatenate([live, np.full(filler, live[0])])
            keep = np.arange(size) < len(live)
            mask, words, carry = _gather((mask, words, carry), jnp.asarray(rows, jnp.int32), jnp.asarray(keep))
            slots = np.concatenate([slots[live], np.full(filler, -1)])
        smaller = max([b for b in ladder if b < size], default=0)
        start = int(carry.layer)
        carry = _segment(config, params, criterion.rule, mask, words, carry, jnp.int32(smaller))
        launches += 1
        row_layers += size * (int(carry.layer) - start)
    exit_index[~real] = 0
    return {
        "exit_index": exit_index,
        "logits": logits,
        "hidden": hidden,
        "layers_run": layers_run,
        "row_layers": row_layers,
        "launches": launches,
    }
