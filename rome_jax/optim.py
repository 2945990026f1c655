"""The optimizer (optax AdamW, linear schedule) and the parameter masks it uses."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

Params = Any


def learning_rate_schedule(learning_rate: float, total_steps: int, warmup_steps: int = 0
                           ) -> optax.Schedule:
    """Linear warmup from 0 (if any), then linear decay to 0 at `total_steps`."""
    total_steps = max(int(total_steps), 1)
    decay = optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def weight_decay_mask(params: Params) -> Params:
    """True where AdamW's weight decay applies: never on LayerNorm or biases."""
    def decays(path, _):
        names = [getattr(p, "key", getattr(p, "name", p)) for p in path]
        return not (names[-1] == "bias" or "LayerNorm" in names)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(learning_rate: float, total_steps: int, *, warmup_steps: int = 0,
                   weight_decay: float = 0.0, eps: float = 1e-8, b1: float = 0.9,
                   b2: float = 0.999, clip_norm: float = 1.0, params: Params = None
                   ) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW, as the reference (torch AdamW, clip 1.0).

    The gradient projection happens before this transformation, so clipping
    sees the projected gradient.
    """
    schedule = learning_rate_schedule(learning_rate, total_steps, warmup_steps)
    mask = weight_decay_mask if params is None else weight_decay_mask(params)
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm and clip_norm > 0 else []
    chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask))
    return optax.chain(*chain)


def exit_mask(params: Params, *, intermediate: bool, backbone: bool, final_exit: bool) -> Params:
    """0/1 float masks (broadcastable, same ndim as each leaf) choosing what trains.

    `intermediate`: the heads of exits 1..L-1; `final_exit`: the last exit's head;
    `backbone`: embeddings and all encoder layers. DeeBERT stage 1 trains the
    backbone and final exit, stage 2 only the intermediate exits.
    """
    def mask(path, leaf):
        names = [getattr(p, "key", getattr(p, "name", p)) for p in path]
        ones = (1,) * (leaf.ndim - 1)
        if len(names) >= 2 and names[0] == "layers" and names[1] == "exit":
            L = leaf.shape[0]
            m = jnp.asarray([float(intermediate)] * (L - 1) + [float(final_exit)], jnp.float32)
            return m.reshape((L,) + ones)
        return jnp.full((1,) * leaf.ndim, float(backbone), jnp.float32)

    return jax.tree_util.tree_map_with_path(mask, params)

