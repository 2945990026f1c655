"""What the signal criteria read besides the logits: LTE certainty, meta agreement and
state saturation (`rome_jax.exits.criteria.Signals`).

For exit `i` (0-based) of a batch:
- `lte` = sigmoid(p_i . w + b), BERxiT's learning-to-exit gate on the exit's pooler
  output p_i [B, H] (what its classifier reads); one gate shared by every exit;
- `meta` = sigmoid(p_i . w' + b'), CALM's meta classifier, the same form, fitted to
  predict agreement with the last exit;
- `saturation` = cos(s_i, s_{i-1}), CALM's state propagation, s_i the layer's
  representation as the exit pools it (`encoder.model.exit_state`: the first token,
  or the attended tokens' mean); at exit 0 the previous one is the embeddings'.

The gates live in the parameters as `params["exit_gates"] = {"lte": {"kernel" [H],
"bias" []}, "meta": {...}}` (either may be missing), fitted after training by
`rome_jax.exits.gates`. A missing gate scores 0, so an executor compiled with or
without gates runs every criterion; `check_gates` refuses a gate criterion whose gate
is missing before anything runs.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import apply_embeddings, apply_layer_with_exit_pooled, exit_state, layer_params
from rome_jax.encoder.pytree import Params
from rome_jax.exits.batches import _model_inputs
from rome_jax.exits.criteria import GATE_CRITERIA, SIGNAL_CRITERIA, Criterion, Signals

Array = jax.Array

GATES_KEY = "exit_gates"
"""The top-level parameter entry that holds the fitted gates."""

GATE_NAMES = GATE_CRITERIA
"""The gates: "lte" and "meta"."""

GATE_COST = {"lte": 1, "meta": 1}
"""Multiply-adds per hidden unit of one gate at one exit (a dot product with [H])."""


def gates_of(params: Params) -> dict[str, Any]:
    """The fitted gates in `params` ({} without any)."""
    gates = params.get(GATES_KEY) if hasattr(params, "get") else None
    return dict(gates) if gates else {}


def without_gates(params: Params) -> Params:
    """`params` without its gates (what the encoder and its exits read)."""
    if not hasattr(params, "get") or GATES_KEY not in params:
        return params
    return {k: v for k, v in params.items() if k != GATES_KEY}


def with_gates(params: Params, gates: dict[str, Any] | None) -> Params:
    """`params` with `gates` ({name: {"kernel" [H], "bias" []}}) in place of its own."""
    params = dict(without_gates(params))
    if gates:
        params[GATES_KEY] = {name: dict(gates[name]) for name in GATE_NAMES if name in gates}
    return params


def check_gates(criterion: Criterion, params: Params) -> Criterion:
    """Raises ValueError when `criterion` needs a gate `params` does not hold."""
    if criterion.name in GATE_CRITERIA and criterion.name not in gates_of(params):
        raise ValueError(
            f"the {criterion.name!r} criterion needs a fitted {criterion.name} gate, and this model has none: "
            "fit it with `python eval.py --workdir=RUN --fit_gates` (or exits.gates.fit_gates)"
        )
    return criterion


def gate_score(gate: Any, pooled: Array) -> Array:
    """sigmoid(pooled . kernel + bias): pooled [..., H] -> [...] float32; zeros when
    `gate` is None."""
    if not gate:
        return jnp.zeros(pooled.shape[:-1], jnp.float32)
    z = pooled.astype(jnp.float32) @ jnp.asarray(gate["kernel"], jnp.float32) + jnp.asarray(gate["bias"], jnp.float32)
    return jax.nn.sigmoid(z)


def cosine(a: Array, b: Array) -> Array:
    """Cosine similarity of the last axes: [..., H] x [..., H] -> [...] float32; 0 where
    either vector is zero."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.where(norms > 0, jnp.sum(a * b, axis=-1) / jnp.where(norms > 0, norms, 1.0), 0.0)


def signals_of(params: Params, pooled: Array, state: Array, previous_state: Array) -> Signals:
    """One exit's signals: pooled (the exit's pooler output) [B, H], its layer's pooled
    representation `state` [B, H] and the previous layer's [B, H] (the embeddings' at
    exit 0)."""
    gates = gates_of(params)
    return Signals(
        lte=gate_score(gates.get("lte"), pooled),
        meta=gate_score(gates.get("meta"), pooled),
        saturation=cosine(state, previous_state),
    )


@functools.partial(jax.jit, static_argnums=0)
def _all_exit_outputs(config: ModelConfig, params: Params, batch: dict) -> tuple[Array, Signals, Array]:
    inputs = _model_inputs(batch)
    hidden = apply_embeddings(config, params, inputs)
    mask = inputs["attention_mask"]

    def body(carry: tuple[Array, Array], index: Array) -> tuple[tuple[Array, Array], tuple[Array, Signals, Array]]:
        hidden, previous = carry
        hidden, logits, pooled = apply_layer_with_exit_pooled(config, layer_params(params, index), hidden, mask)
        state = exit_state(config, hidden, mask)
        return (hidden, state), (logits.astype(jnp.float32), signals_of(params, pooled, state, previous), pooled)

    start = (hidden, exit_state(config, hidden, mask))
    _, (logits, signals, pooled) = lax.scan(body, start, jnp.arange(config.num_layers, dtype=jnp.int32))
    return logits, signals, pooled.astype(jnp.float32)


def all_exit_signals(config: ModelConfig, params: Params, batch: dict) -> tuple[Array, Signals, Array]:
    """Every exit's logits [E, B, C] float32, signals (each [E, B]) and pooler outputs
    [E, B, H] float32 (what the gates read) of a batch of [B, T] arrays (`INPUT_KEYS`),
    in one pass over the layers (jitted; the inference pieces the executors run)."""
    if config.token_exits:
        raise ValueError(f"{', '.join(SIGNAL_CRITERIA)} are sequence-level criteria; this model tags tokens")
    return _all_exit_outputs(config, params, batch)


def criterion_flops(config: ModelConfig, name: str, seq_len: int) -> int:
    """FLOPs a criterion adds at each exit it reads, beyond the exit's head: a gate's
    dot product, bias and sigmoid (lte, meta: 2H + 5); saturation's pooled
    representation (the mean over T tokens: T H + H; the first token: free) and cosine
    (three dot products and the division: 6H + 4), plus once per example the
    embeddings' pooling (`criterion_start_flops`). The confidence criteria's few
    operations on C logits are not counted (nor are they for the others)."""
    H = config.hidden_size
    if name in GATE_NAMES:
        return 2 * H + 5
    if name == "saturation":
        pooling = seq_len * H + H if config.exit_pooling == "mean" else 0
        return pooling + 6 * H + 4
    return 0


def criterion_start_flops(config: ModelConfig, name: str, seq_len: int) -> int:
    """FLOPs a criterion spends once per example before the first exit: saturation's
    pooling of the embeddings (T H + H for the mean, free for the first token)."""
    if name == "saturation" and config.exit_pooling == "mean":
        return seq_len * config.hidden_size + config.hidden_size
    return 0
