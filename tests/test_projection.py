"""Gradient projection against a plain numpy implementation of docs/methods.md's formulas."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rome_jax.training.projection import all_selection, project_gradients, reference_selection

L, H, I, C, V, P = 3, 4, 8, 2, 10, 6


def _shapes() -> dict:
    dense = lambda n_in, n_out: {"kernel": (L, n_in, n_out), "bias": (L, n_out)}
    norm = {"scale": (L, H), "bias": (L, H)}
    return {
        "embeddings": {
            "word_embeddings": {"embedding": (V, H)},
            "position_embeddings": {"embedding": (P, H)},
            "token_type_embeddings": {"embedding": (2, H)},
            "LayerNorm": {"scale": (H,), "bias": (H,)},
        },
        "layers": {
            "layer": {
                "attention": {
                    "query": dense(H, H),
                    "key": dense(H, H),
                    "value": dense(H, H),
                    "output": {"dense": dense(H, H), "LayerNorm": dict(norm)},
                },
                "intermediate": {"dense": dense(H, I)},
                "output": {"dense": dense(I, H), "LayerNorm": dict(norm)},
            },
            "exit": {"pooler": dense(H, H), "classifier": dense(H, C)},
        },
    }


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def random_tree(seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda shape: (scale * rng.normal(size=shape)).astype(np.float32),
        _shapes(),
        is_leaf=_is_shape,
    )


def conflicting_pair(seed: int, scale: float = 1.0) -> tuple[dict, dict]:
    """g_B mostly opposes g_A, so every dot product (global and per tensor) is negative."""
    g_a = random_tree(seed, scale)
    noise = random_tree(seed + 1000, scale)
    g_b = jax.tree.map(lambda a, n: (-0.7 * a + 0.2 * n).astype(np.float32), g_a, noise)
    return g_a, g_b


def params_like() -> dict:
    return random_tree(99)


# ---------------------------------------------------------------- numpy reference


def _tensor_slices(mask: np.ndarray):
    """Index expressions of the tensors a mask selects: its non-singleton axes index tensors."""
    for index in np.ndindex(mask.shape):
        if mask[index] == 0:
            continue
        yield tuple(i if size > 1 else slice(None) for i, size in zip(index, mask.shape))


def np_project(g_a, g_b, selection, anchor="B", granularity="global", symmetric=False):
    """Returns (list of result leaves, projected fraction) in float64, from the formulas."""
    a_leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(g_a)]
    b_leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(g_b)]
    masks = [np.asarray(m) for m in jax.tree.leaves(selection)]
    out = [a + b for a, b in zip(a_leaves, b_leaves)]  # non-selected: the joint step

    def combine(a_vec, b_vec):
        """One group of selected elements -> (combined vector, fired)."""
        dot = float(a_vec @ b_vec)
        if symmetric:
            a_new, b_new = a_vec.copy(), b_vec.copy()
            if dot < 0 and b_vec @ b_vec > 0:
                a_new = a_vec - dot / (b_vec @ b_vec) * b_vec
            if dot < 0 and a_vec @ a_vec > 0:
                b_new = b_vec - dot / (a_vec @ a_vec) * a_vec
            return a_new + b_new, dot < 0
        keep, proj = (a_vec, b_vec) if anchor == "A" else (b_vec, a_vec)
        norm2 = float(keep @ keep)
        c = dot / norm2 if norm2 > 0 else 0.0
        if c < 0:
            proj = proj - c * keep
        return keep + proj, c < 0

    groups = []  # lists of (leaf index, slice) forming one vector each
    for k, mask in enumerate(masks):
        for where in _tensor_slices(mask):
            groups.append([(k, where)])
    if granularity == "global":
        groups = [list(itertools.chain.from_iterable(groups))] if groups else []
    fired_count = 0
    for group in groups:
        a_vec = np.concatenate([a_leaves[k][w].ravel() for k, w in group])
        b_vec = np.concatenate([b_leaves[k][w].ravel() for k, w in group])
        combined, fired = combine(a_vec, b_vec)
        fired_count += fired
        offset = 0
        for k, w in group:
            n = a_leaves[k][w].size
            out[k][w] = combined[offset : offset + n].reshape(a_leaves[k][w].shape)
            offset += n
    return out, fired_count / max(len(groups), 1)


def np_selected_vectors(g_a, g_b, selection):
    a_parts, b_parts = [], []
    for a, b, m in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_b), jax.tree.leaves(selection)):
        full = np.broadcast_to(np.asarray(m), a.shape) != 0
        a_parts.append(np.asarray(a, np.float64)[full])
        b_parts.append(np.asarray(b, np.float64)[full])
    return np.concatenate(a_parts), np.concatenate(b_parts)


def selected_leaves(tree, selection):
    return [
        np.where(np.broadcast_to(np.asarray(m), np.shape(x)) != 0, np.asarray(x, np.float64), 0.0)
        for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(selection))
    ]


# ---------------------------------------------------------------- selections


def test_reference_selection_masks():
    params = params_like()
    selection = reference_selection(params, L)
    assert jax.tree.structure(selection) == jax.tree.structure(params)
    flat = jax.tree_util.tree_flatten_with_path(selection)[0]
    kernels = 0
    for path, mask in flat:
        names = [p.key for p in path]
        leaf = functools.reduce(lambda t, k: t[k], names, params)
        assert mask.dtype == jnp.float32 and mask.ndim == leaf.ndim
        if names[:2] == ["layers", "layer"] and names[-1] == "kernel":
            kernels += 1
            assert mask.shape == (L,) + (1,) * (leaf.ndim - 1)
            np.testing.assert_array_equal(mask.ravel(), [1.0, 1.0, 0.0])
        else:
            assert mask.shape == (1,) * leaf.ndim
            np.testing.assert_array_equal(mask, 0.0)
    assert kernels == 6  # query, key, value, attention output, intermediate, output


def test_reference_selection_checks_layer_axis():
    with pytest.raises(ValueError, match="num_layers=4"):
        reference_selection(params_like(), 4)


def test_reference_selection_accepts_shape_structs():
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params_like())
    selection = reference_selection(abstract, L)
    mask = selection["layers"]["layer"]["intermediate"]["dense"]["kernel"]
    assert mask.shape == (L, 1, 1)


def test_all_selection():
    params = params_like()
    selection = all_selection(params)
    for mask, leaf in zip(jax.tree.leaves(selection), jax.tree.leaves(params)):
        assert mask.shape == (1,) * leaf.ndim
        np.testing.assert_array_equal(mask, 1.0)


# ---------------------------------------------------------------- projection


SETTINGS = [
    dict(anchor=anchor, granularity=granularity, symmetric=symmetric)
    for anchor in ("A", "B")
    for granularity in ("global", "per_tensor")
    for symmetric in (False, True)
]


@pytest.mark.parametrize("kind", ["reference", "all"])
@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("pair", ["conflicting", "random"])
def test_against_numpy(options, kind, pair):
    params = params_like()
    selection = reference_selection(params, L) if kind == "reference" else all_selection(params)
    g_a, g_b = conflicting_pair(1) if pair == "conflicting" else (random_tree(2), random_tree(3))
    grads, stats = project_gradients(g_a, g_b, selection, **options)
    want, fraction = np_project(g_a, g_b, selection, **options)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for got, expected in zip(jax.tree.leaves(grads), want):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert float(stats["projected"]) == pytest.approx(fraction)
    if pair == "conflicting":
        assert float(stats["projected"]) == 1.0


@pytest.mark.parametrize("granularity", ["global", "per_tensor"])
@pytest.mark.parametrize("anchor", ["A", "B"])
def test_conflict_removed_and_rest_is_joint(anchor, granularity):
    params = params_like()
    selection = reference_selection(params, L)
    g_a, g_b = conflicting_pair(5)
    grads, _ = project_gradients(g_a, g_b, selection, anchor=anchor, granularity=granularity)
    g_k = g_a if anchor == "A" else g_b
    new_p = jax.tree.map(lambda g, k: np.asarray(g, np.float64) - k, grads, g_k)
    sel_p, sel_k = selected_leaves(new_p, selection), selected_leaves(g_k, selection)
    if granularity == "global":
        assert sum(float(np.vdot(p, k)) for p, k in zip(sel_p, sel_k)) >= -1e-4
    else:
        for p, k, m in zip(sel_p, sel_k, jax.tree.leaves(selection)):
            for where in _tensor_slices(np.asarray(m)):
                assert float(np.vdot(p[where], k[where])) >= -1e-4
    # Non-selected elements: exactly the plain joint step.
    for got, a, b, m in zip(*map(jax.tree.leaves, (grads, g_a, g_b, selection))):
        off = np.broadcast_to(np.asarray(m), a.shape) == 0
        np.testing.assert_array_equal(np.asarray(got)[off], (a + b)[off])
    embedding = grads["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(
        embedding,
        g_a["embeddings"]["word_embeddings"]["embedding"] + g_b["embeddings"]["word_embeddings"]["embedding"],
    )
    last_layer = grads["layers"]["layer"]["attention"]["query"]["kernel"][-1]
    np.testing.assert_array_equal(
        last_layer,
        g_a["layers"]["layer"]["attention"]["query"]["kernel"][-1]
        + g_b["layers"]["layer"]["attention"]["query"]["kernel"][-1],
    )


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: "-".join(map(str, o.values())))
def test_empty_selection_is_the_joint_step(options):
    g_a, g_b = conflicting_pair(7)
    empty = jax.tree.map(lambda m: jnp.zeros_like(m), all_selection(g_a))
    grads, stats = project_gradients(g_a, g_b, empty, **options)
    for got, a, b in zip(*map(jax.tree.leaves, (grads, g_a, g_b))):
        np.testing.assert_array_equal(got, a + b)
    assert float(stats["projected"]) == 0.0
    assert float(stats["cosine"]) == 0.0
    assert float(stats["norm_A"]) == 0.0 and float(stats["norm_A_total"]) > 0


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: "-".join(map(str, o.values())))
def test_no_projection_when_aligned(options):
    g_a = random_tree(8)
    g_b = jax.tree.map(lambda a, n: (a + 0.1 * n).astype(np.float32), g_a, random_tree(9))
    grads, stats = project_gradients(g_a, g_b, all_selection(g_a), **options)
    for got, a, b in zip(*map(jax.tree.leaves, (grads, g_a, g_b))):
        np.testing.assert_array_equal(got, a + b)
    assert float(stats["projected"]) == 0.0
    assert float(stats["dot"]) > 0 and float(stats["cosine"]) > 0.9


@pytest.mark.parametrize("granularity", ["global", "per_tensor"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_zero_anchor_gives_no_nan(granularity, symmetric):
    g_a = random_tree(10)
    g_b = jax.tree.map(np.zeros_like, g_a)
    selection = reference_selection(g_a, L)
    grads, stats = project_gradients(g_a, g_b, selection, anchor="B", granularity=granularity, symmetric=symmetric)
    for got, a in zip(jax.tree.leaves(grads), jax.tree.leaves(g_a)):
        np.testing.assert_array_equal(got, a)
    for value in stats.values():
        assert np.isfinite(value)
    assert float(stats["cosine"]) == 0.0 and float(stats["projected"]) == 0.0


def test_per_tensor_fraction_and_independence():
    """Layer 0 conflicts, layer 1 does not: only layer 0's kernels are projected."""
    g_a = random_tree(11)
    noise = random_tree(12)

    def opposed_in_layer_0(path, a, n):
        names = [p.key for p in path]
        if names[:2] == ["layers", "layer"] and names[-1] == "kernel":
            sign = np.ones((L,) + (1,) * (a.ndim - 1), np.float32)
            sign[0] = -1.0
            return (sign * a + 0.1 * n).astype(np.float32)
        return a

    g_b = jax.tree_util.tree_map_with_path(opposed_in_layer_0, g_a, noise)
    selection = reference_selection(g_a, L)
    grads, stats = project_gradients(g_a, g_b, selection, anchor="B", granularity="per_tensor")
    assert float(stats["projected"]) == pytest.approx(0.5)  # 6 of the 12 selected tensors
    kernel = ("layers", "layer", "intermediate", "dense", "kernel")
    got = functools.reduce(lambda t, k: t[k], kernel, grads)
    a = functools.reduce(lambda t, k: t[k], kernel, g_a)
    b = functools.reduce(lambda t, k: t[k], kernel, g_b)
    np.testing.assert_array_equal(got[1:], a[1:] + b[1:])
    assert not np.allclose(got[0], a[0] + b[0])
    want, fraction = np_project(g_a, g_b, selection, anchor="B", granularity="per_tensor")
    assert fraction == pytest.approx(0.5)
    for leaf, expected in zip(jax.tree.leaves(grads), want):
        np.testing.assert_allclose(leaf, expected, rtol=1e-5, atol=1e-5)


def test_scalar_and_matrix_masks_follow_the_tensor_rule():
    """A (1, 1) mask makes one tensor; an (L, 1) mask makes L tensors."""
    rng = np.random.default_rng(0)
    g_a = {"w": rng.normal(size=(3, 5)).astype(np.float32)}
    g_b = {"w": (-g_a["w"] * np.array([[1.0], [-1.0], [1.0]]) + 0.1).astype(np.float32)}
    one = {"w": np.ones((1, 1), np.float32)}
    rows = {"w": np.ones((3, 1), np.float32)}
    _, stats_one = project_gradients(g_a, g_b, one, granularity="per_tensor")
    _, stats_rows = project_gradients(g_a, g_b, rows, granularity="per_tensor")
    assert float(stats_one["projected"]) == 1.0
    assert float(stats_rows["projected"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("kind", ["reference", "all"])
def test_stats_against_numpy(kind):
    g_a, g_b = random_tree(13), random_tree(14)
    selection = reference_selection(g_a, L) if kind == "reference" else all_selection(g_a)
    _, stats = project_gradients(g_a, g_b, selection)
    a_vec, b_vec = np_selected_vectors(g_a, g_b, selection)
    a_all = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g_a)]).astype(np.float64)
    b_all = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g_b)]).astype(np.float64)
    want = {
        "dot": a_vec @ b_vec,
        "norm_A": np.linalg.norm(a_vec),
        "norm_B": np.linalg.norm(b_vec),
        "cosine": a_vec @ b_vec / (np.linalg.norm(a_vec) * np.linalg.norm(b_vec)),
        "norm_A_total": np.linalg.norm(a_all),
        "norm_B_total": np.linalg.norm(b_all),
    }
    for key, value in want.items():
        assert stats[key].dtype == jnp.float32 and stats[key].shape == ()
        assert float(stats[key]) == pytest.approx(value, rel=1e-5, abs=1e-5), key
    if kind == "reference":
        assert a_vec.size == 2 * (4 * H * H + H * I + I * H)  # layers 1..L-1 only


JIT_SETTINGS = [
    dict(anchor="B", granularity="global", symmetric=False),
    dict(anchor="A", granularity="per_tensor", symmetric=True),
]


@pytest.mark.parametrize("options", JIT_SETTINGS, ids=lambda o: "-".join(map(str, o.values())))
def test_under_jit(options):
    g_a, g_b = conflicting_pair(15)
    selection = reference_selection(g_a, L)
    jitted = jax.jit(functools.partial(project_gradients, **options))
    grads, stats = jitted(g_a, g_b, selection)
    eager_grads, eager_stats = project_gradients(g_a, g_b, selection, **options)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(eager_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for key in eager_stats:
        np.testing.assert_allclose(stats[key], eager_stats[key], rtol=1e-5, atol=1e-6)


def test_bfloat16_leaves():
    g_a, g_b = conflicting_pair(16)
    low_a = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), g_a)
    low_b = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), g_b)
    selection = reference_selection(g_a, L)
    grads, stats = project_gradients(low_a, low_b, selection)
    want, _ = np_project(
        jax.tree.map(lambda x: np.asarray(x, np.float32), low_a),
        jax.tree.map(lambda x: np.asarray(x, np.float32), low_b),
        selection,
    )
    for got, expected in zip(jax.tree.leaves(grads), want):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=2e-2, atol=2e-2)
    assert all(v.dtype == jnp.float32 for v in stats.values())
    assert float(stats["projected"]) == 1.0


def test_bad_arguments():
    g_a = random_tree(17)
    selection = all_selection(g_a)
    with pytest.raises(ValueError, match="'A', 'B'"):
        project_gradients(g_a, g_a, selection, anchor="K")
    with pytest.raises(ValueError, match="'global', 'per_tensor'"):
        project_gradients(g_a, g_a, selection, granularity="layer")
    flat = jax.tree.map(lambda x: jnp.ones((1,)), g_a)
    with pytest.raises(ValueError, match="ndim"):
        project_gradients(g_a, g_a, flat)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    log_scale=st.floats(-3.0, 3.0),
    opposition=st.floats(-1.5, 1.5),
    anchor=st.sampled_from(["A", "B"]),
    granularity=st.sampled_from(["global", "per_tensor"]),
)
def test_property_projected_gradient_does_not_oppose_anchor(seed, log_scale, opposition, anchor, granularity):
    scale = 10.0**log_scale
    g_a = random_tree(seed, scale)
    noise = random_tree(seed + 1, scale)
    g_b = jax.tree.map(lambda a, n: (opposition * a + 0.5 * n).astype(np.float32), g_a, noise)
    selection = reference_selection(g_a, L)
    grads, stats = project_gradients(g_a, g_b, selection, anchor=anchor, granularity=granularity)
    g_k = g_a if anchor == "A" else g_b
    new_p = jax.tree.map(lambda g, k: np.asarray(g, np.float64) - k, grads, g_k)
    sel_p, sel_k = selected_leaves(new_p, selection), selected_leaves(g_k, selection)
    tolerance = 1e-5 * scale**2 * sum(p.size for p in sel_p)
    if granularity == "global":
        assert sum(float(np.vdot(p, k)) for p, k in zip(sel_p, sel_k)) >= -tolerance
    else:
        for p, k, m in zip(sel_p, sel_k, jax.tree.leaves(selection)):
            for where in _tensor_slices(np.asarray(m)):
                assert float(np.vdot(p[where], k[where])) >= -tolerance
    assert 0.0 <= float(stats["projected"]) <= 1.0
    assert -1.0 - 1e-6 <= float(stats["cosine"]) <= 1.0 + 1e-6
