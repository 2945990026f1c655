"""Gradient regularization: PCGrad-style projection between two loss groups.

RomeBERT's loss is split into group A (the final exit's loss) and group B (the
intermediate exits' terms); each has its own gradient, `g_A` and `g_B`. One group
is the *anchor* (its gradient `g_K` is kept), the other is *projected* (`g_P`):

    c = <g_P, g_K> / ||g_K||^2;   if c < 0:  g_P <- g_P - c * g_K;   update = g_K + g_P

so that the projected gradient no longer points against the anchor. The dot
products are taken over the *selected* parameters only, and only they are
projected; every other parameter gets the plain joint gradient `g_A + g_B`.

Selections. A selection is a pytree with the structure of the parameters whose
leaves are 0/1 float32 masks broadcastable to the matching leaf and of the same
ndim. The mask's axes of size > 1 index separate *tensors* (e.g. the stacked layer
axis: a mask of shape (L, 1, 1) on a kernel [L, H, H] makes L tensors, one per
layer, selected or not); a mask whose axes all have size 1 is one tensor. With
granularity "per_tensor" the dot products and the projection test are done per
tensor, i.e. each leaf is reduced over the axes where its mask has size 1; with
"global" (the reference's choice) over one flattened vector of all selected
elements.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import PyTreeDef

# Defined with the config's checks (still importable from here).
from rome_jax.config.choices import ANCHORS, GRANULARITIES
from rome_jax.encoder.pytree import PyTree

Array = jax.Array


def _key_name(entry: Any) -> Any:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return getattr(entry, attribute)
    return entry


def _is_encoder_kernel(path: tuple[Any, ...]) -> bool:
    """True for a `kernel` leaf below consecutive keys `layers`/`layer` (anywhere)."""
    names = [_key_name(entry) for entry in path]
    if not names or names[-1] != "kernel":
        return False
    return any(names[i : i + 2] == ["layers", "layer"] for i in range(len(names) - 1))


def reference_selection(params: PyTree, num_layers: int) -> PyTree:
    """The reference's selection: weight matrices of encoder layers 1..L-1.

    Every `kernel` under `params['layers']['layer']` (leaf [L, ...]) gets the mask
    of shape (L, 1, ..., 1) with ones for layers 0..L-2 and a zero for the last
    layer; every other leaf (embeddings, LayerNorms, biases, exit heads) gets zeros
    of shape (1,) * ndim.

    Args:
      params: the parameter pytree (arrays or anything with `.shape`).
      num_layers: L, the size of the stacked layer axis.

    Returns:
      A pytree of float32 masks with the structure of `params`.
    """

    def mask(path: tuple[Any, ...], leaf: Any) -> Array:
        shape = tuple(np.shape(leaf))
        if _is_encoder_kernel(path):
            if not shape or shape[0] != num_layers:
                raise ValueError(
                    f"{jax.tree_util.keystr(path)} has shape {shape}; expected a leading "
                    f"layer axis of size num_layers={num_layers}"
                )
            layers = np.ones((num_layers,) + (1,) * (len(shape) - 1), np.float32)
            layers[-1] = 0.0
            return jnp.asarray(layers)
        return jnp.zeros((1,) * len(shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(mask, params)


def all_selection(params: PyTree) -> PyTree:
    """Selects every parameter: a ones mask of shape (1,) * ndim per leaf (one tensor each)."""
    return jax.tree.map(lambda leaf: jnp.ones((1,) * np.ndim(leaf), jnp.float32), params)


def _safe_div(numerator: Array, denominator: Array, eps: float) -> Array:
    positive = denominator > eps
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def project_gradients(
    g_A: PyTree,
    g_B: PyTree,
    selection: PyTree,
    *,
    anchor: str = "B",
    granularity: str = "global",
    symmetric: bool = False,
    eps: float = 1e-20,
) -> tuple[PyTree, dict[str, Array]]:
    """Combine the two group gradients, projecting away their conflict.

    Args:
      g_A: gradient of group A (final exit), a pytree like the parameters.
      g_B: gradient of group B (intermediate exits), same structure.
      selection: 0/1 masks (see the module docstring), same structure.
      anchor: "A" keeps g_A and projects g_B; "B" keeps g_B and projects g_A.
      granularity: "global" (one flattened vector) or "per_tensor".
      symmetric: PCGrad both ways from the original gradients,
        `g_A' = g_A - min(0, <g_A, g_B>) / ||g_B||^2 g_B` and `g_B'` likewise;
        the update is `g_A' + g_B'`. `anchor` is then unused.
      eps: a squared anchor norm `||g_K||^2 <= eps` counts as zero (no projection).

    Returns:
      grads: the update direction, same structure and dtypes as `g_A`;
        `g_K + g_P'` on selected elements, `g_A + g_B` elsewhere.
      stats: float32 scalars, all over the selected elements unless `_total`:
        `cosine` (between g_A and g_B; 0 if either is zero), `projected` (1.0 if
        the projection fired; per_tensor: the fraction of selected tensors
        projected), `dot` (<g_A, g_B>), `norm_A`, `norm_B`, `norm_A_total`,
        `norm_B_total` (over all parameters).
    """
    if anchor not in ANCHORS:
        raise ValueError(f"unknown anchor {anchor!r}; accepted values: 'A', 'B'")
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; accepted values: 'global', 'per_tensor'")

    treedef: PyTreeDef  # named: mypy cannot resolve the name jax.tree.flatten's stub returns
    leaves_a, treedef = jax.tree.flatten(g_A)
    leaves_b = treedef.flatten_up_to(g_B)
    masks = treedef.flatten_up_to(selection)

    # Pass 1: per-tensor inner products (each leaf reduced over its mask's
    # singleton axes, keepdims, so they broadcast back onto the leaf).
    prepared = []
    for a, b, mask in zip(leaves_a, leaves_b, masks):
        a, b, mask = jnp.asarray(a), jnp.asarray(b), jnp.asarray(mask)
        if mask.ndim != a.ndim:
            raise ValueError(
                f"a selection mask of shape {mask.shape} does not match a leaf of shape "
                f"{a.shape}: masks need the leaf's ndim"
            )
        compute = jnp.promote_types(jnp.result_type(a, b), jnp.float32)
        a, b = a.astype(compute), b.astype(compute)
        selected = mask != 0
        a_sel = jnp.where(selected, a, 0.0)
        b_sel = jnp.where(selected, b, 0.0)
        axes = tuple(i for i, size in enumerate(mask.shape) if size == 1)
        products = {
            "ab": jnp.sum(a_sel * b_sel, axis=axes, keepdims=True),
            "aa": jnp.sum(a_sel * a_sel, axis=axes, keepdims=True),
            "bb": jnp.sum(b_sel * b_sel, axis=axes, keepdims=True),
        }
        prepared.append((a, b, selected, products))

    def total(key: str) -> Array:
        return sum((jnp.sum(p[key]).astype(jnp.float32) for *_, p in prepared), jnp.zeros((), jnp.float32))

    dot, norm_a2, norm_b2 = total("ab"), total("aa"), total("bb")

    def coefficients(ab: Array, aa: Array, bb: Array) -> tuple[Array, Array, Array]:
        """(coefficient on b, coefficient on a, fired) of the update a + b - c_b b - c_a a."""
        conflict = ab < 0
        if symmetric:
            fire_a = conflict & (bb > eps)  # g_A is projected off g_B
            fire_b = conflict & (aa > eps)
            c_b = jnp.where(fire_a, _safe_div(ab, bb, eps), 0.0)
            c_a = jnp.where(fire_b, _safe_div(ab, aa, eps), 0.0)
            return c_b, c_a, fire_a | fire_b
        if anchor == "A":  # g_K = g_A, g_P = g_B: g_B - c g_A
            fire = conflict & (aa > eps)
            return jnp.zeros_like(ab), jnp.where(fire, _safe_div(ab, aa, eps), 0.0), fire
        fire = conflict & (bb > eps)  # g_K = g_B, g_P = g_A: g_A - c g_B
        return jnp.where(fire, _safe_div(ab, bb, eps), 0.0), jnp.zeros_like(ab), fire

    if granularity == "global":
        c_b, c_a, fired = coefficients(dot, norm_a2, norm_b2)
        projected = fired.astype(jnp.float32)

    # Pass 2: the update.
    grads = []
    num_projected = jnp.zeros((), jnp.float32)
    num_tensors = jnp.zeros((), jnp.float32)
    for (a, b, selected, products), original in zip(prepared, leaves_a):
        if granularity == "per_tensor":
            c_b, c_a, fired = coefficients(products["ab"], products["aa"], products["bb"])
            num_projected += jnp.sum(fired & selected).astype(jnp.float32)
            num_tensors += jnp.sum(selected).astype(jnp.float32)
        joint = a + b
        projected_joint = joint - c_b.astype(a.dtype) * b - c_a.astype(a.dtype) * a
        update = jnp.where(selected, projected_joint, joint)
        grads.append(update.astype(jnp.result_type(original)))
    if granularity == "per_tensor":
        projected = num_projected / jnp.maximum(num_tensors, 1.0)

    norm_a, norm_b = jnp.sqrt(norm_a2), jnp.sqrt(norm_b2)
    square_a_total = sum(jnp.sum(jnp.square(a)).astype(jnp.float32) for a, *_ in prepared)
    square_b_total = sum(jnp.sum(jnp.square(b)).astype(jnp.float32) for _, b, *_ in prepared)
    stats = {
        "cosine": _safe_div(dot, norm_a * norm_b, 0.0),
        "projected": projected,
        "dot": dot,
        "norm_A": norm_a,
        "norm_B": norm_b,
        "norm_A_total": jnp.sqrt(square_a_total),
        "norm_B_total": jnp.sqrt(square_b_total),
    }
    stats = {key: jnp.asarray(value, jnp.float32) for key, value in stats.items()}
    return jax.tree.unflatten(treedef, grads), stats
