"""Shape checks of parameter trees: does a saved tree fit the model a config describes?"""

from __future__ import annotations

from typing import Any

import jax

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import init_params
from rome_jax.encoder.pytree import Params, PyTree


def params_mismatch(params: Params, config: ModelConfig) -> str | None:
    """`tree_mismatch` of `params` against the parameters a `ModelConfig` needs
    (shapes only: nothing is initialised)."""
    return tree_mismatch(params, jax.eval_shape(lambda: init_params(config, 0)))


def tree_mismatch(saved: PyTree, wanted: PyTree) -> str | None:
    """The first difference of structure or shape between a saved tree and the one a
    model needs (leaves: anything with `.shape`), said for the user, or None."""
    params_first = lambda item: (not item[0].startswith("params"), item[0])
    saved = dict(sorted(_leaves_by_path(saved), key=params_first))
    wanted = dict(sorted(_leaves_by_path(wanted), key=params_first))
    for name in wanted:
        if name not in saved:
            return f"it has no {name}"
    for name in saved:
        if name not in wanted:
            return f"it holds {name}, which this model does not have"
    for name, leaf in wanted.items():
        got = tuple(getattr(saved[name], "shape", ()) or ())
        if tuple(leaf.shape) != got:
            return f"{name} has shape {got}, this model needs {tuple(leaf.shape)}"
    return None


def _leaves_by_path(tree: PyTree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, (dict, list, tuple))
    )
    return [(_path_name(path), leaf) for path, leaf in flat]


def _path_name(path: tuple[Any, ...]) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)
