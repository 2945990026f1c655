"""The optimizer (optax AdamW, linear schedule) and the parameter masks it uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rome_jax.encoder.pytree import Params


def learning_rate_schedule(learning_rate: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """Linear warmup from 0 (if any), then linear decay to 0 at `total_steps`."""
    total_steps = max(int(total_steps), 1)
    decay = optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def weight_decay_mask(params: Params) -> Params:
    """True where AdamW's weight decay applies: never on LayerNorm or biases."""

    def decays(path: tuple[Any, ...], _: jax.Array) -> bool:
        names = [getattr(p, "key", getattr(p, "name", p)) for p in path]
        return not (names[-1] == "bias" or "LayerNorm" in names)

    return jax.tree_util.tree_map_with_path(decays, params)


class UncorrectedAdamWState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # int32 scalar: steps taken (a field named as optax's, over tuple.count)
    mu: Params  # first moments, float32, like the parameters
    nu: Params  # second moments


def uncorrected_adamw(
    schedule: optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    mask: Params | Callable[[Params], Params] | None = None,
) -> optax.GradientTransformation:
    """AdamW without bias correction, step for step as the `AdamW(correct_bias=False)`
    of FastBERT's code (uer; the same class as transformers 2.x):

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p <- p - lr m / (sqrt(v) + eps);  then p <- p - lr wd p   (where `mask`)

    with lr = schedule(steps taken before this one), as optax's schedules count.
    Weight decay scales the parameter after the Adam step, as that code does.
    `mask`: a tree of bools like the parameters, or a function of them.
    """

    def init(params: Params) -> UncorrectedAdamWState:
        zeros = jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params)
        return UncorrectedAdamWState(jnp.zeros((), jnp.int32), zeros, zeros)

    def update(
        grads: Params, state: UncorrectedAdamWState, params: Params = None
    ) -> tuple[Params, UncorrectedAdamWState]:
        if params is None and weight_decay:
            raise ValueError("uncorrected_adamw with weight decay needs the parameters")
        lr = schedule(state.count)
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g.astype(jnp.float32), state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g.astype(jnp.float32)), state.nu, grads)
        steps = jax.tree.map(lambda m, v: -lr * m / (jnp.sqrt(v) + eps), mu, nu)
        if weight_decay:
            decays = mask(params) if callable(mask) else mask
            decays = jax.tree.map(lambda _: True, params) if decays is None else decays
            # the new parameter p + s, decayed: (p + s)(1 - lr wd); the update is that minus p
            steps = jax.tree.map(lambda s, p, d: s - lr * weight_decay * (p + s) * d if d else s, steps, params, decays)
        updates = jax.tree.map(lambda s, g: s.astype(g.dtype), steps, grads)
        return updates, UncorrectedAdamWState(state.count + 1, mu, nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(
    learning_rate: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    b1: float = 0.9,
    b2: float = 0.999,
    clip_norm: float = 1.0,
    bias_correction: bool = True,
    params: Params = None,
) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW, as the reference (torch AdamW, clip 1.0).

    The gradient projection happens before this transformation, so clipping
    sees the projected gradient. `bias_correction=False`: `uncorrected_adamw`
    (FastBERT's optimizer) instead of optax's AdamW.
    """
    schedule = learning_rate_schedule(learning_rate, total_steps, warmup_steps)
    mask = weight_decay_mask if params is None else weight_decay_mask(params)
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm and clip_norm > 0 else []
    if bias_correction:
        chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask))
    else:
        chain.append(uncorrected_adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask))
    return optax.chain(*chain)


def exit_mask(params: Params, *, intermediate: bool, backbone: bool, final_exit: bool) -> Params:
    """0/1 float masks (broadcastable, same ndim as each leaf) choosing what trains.

    `intermediate`: the heads of exits 1..L-1; `final_exit`: the last exit's head;
    `backbone`: embeddings and all encoder layers. DeeBERT stage 1 trains the
    backbone and final exit, stage 2 only the intermediate exits.
    """

    def mask(path: tuple[Any, ...], leaf: jax.Array) -> jax.Array:
        names = [getattr(p, "key", getattr(p, "name", p)) for p in path]
        ones = (1,) * (leaf.ndim - 1)
        if len(names) >= 2 and names[0] == "layers" and names[1] == "exit":
            L = leaf.shape[0]
            m = jnp.asarray([float(intermediate)] * (L - 1) + [float(final_exit)], jnp.float32)
            return m.reshape((L,) + ones)
        return jnp.full((1,) * leaf.ndim, float(backbone), jnp.float32)

    return jax.tree_util.tree_map_with_path(mask, params)
