"""Type names for the trees of arrays the library passes around (annotations only).

JAX types a pytree as `Any` (any nesting of dicts, lists and tuples, with arrays at the
leaves), and so do these aliases: they name what a value is; they check nothing.
"""

from __future__ import annotations

from typing import Any, TypeAlias

PyTree: TypeAlias = Any
"""Nested dicts, lists and tuples with arrays (or anything with a `.shape`) at the leaves."""

Params: TypeAlias = PyTree
"""A model's parameters, the `params` collection of `rome_jax.encoder.model.MultiExitEncoder`:
{'embeddings': {...}, 'layers': {'layer': {...}, 'exit': {...}}} with a leading layer axis
[L, ...] on every leaf under 'layers' (and 'shared_layer' for ALBERT)."""
