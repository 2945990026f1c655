"""The device mesh: one `data` axis, batches split on their rows, parameters replicated.

Two meshes, one axis name:

- the global mesh of training (`make_mesh()`: every device of every process,
  process by process), on which a host batch is split with `shard_batch` (each
  process passes its own rows) and the train state is `replicate`d;
- the local mesh of inference (`local_mesh()`: this process's devices, None with
  one), on which the executors split a batch with `shard_rows` and replicate the
  parameters with `replicate_params` (`place` does both). A batch whose rows do not
  divide over the local devices (batch 1, say) runs on one device instead, as it
  would without the mesh, rather than every device running the same rows.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
"""The mesh's one axis: batch rows are split on it."""


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A one-axis mesh `data` over the given devices (default: all, every host), process
    by process: each process's devices hold a contiguous part of the batch (its own)."""
    devices = jax.devices() if devices is None else devices
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays split on their leading (row) axis over the mesh."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Arrays held whole by every device of the mesh."""
    return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Puts a host batch of numpy arrays on the mesh, split on the leading axis.

    With several hosts each passes its own shard (`process_count` rows fewer)
    and the global array is assembled from the hosts' pieces.
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A replicated copy on the mesh (a copy: the train step donates its state).

    `device_put(may_alias=False)` alone is not enough: with several devices the
    array already on the first one becomes that device's shard, and donating the
    result would delete the caller's array.
    """
    return jax.device_put(jax.tree.map(lambda x: jnp.array(x, copy=True), tree), replicated(mesh))


# ---------------------------------------------------------------- this process's devices


@functools.lru_cache(maxsize=1)
def local_mesh() -> Mesh | None:
    """A one-axis `data` mesh over this process's devices, or None with one device."""
    devices = jax.local_devices()
    return make_mesh(devices) if len(devices) > 1 else None


def shard_rows(arrays: dict) -> dict:
    """Batch arrays (each [B, ...]) split on their rows over every local device where
    there are several and B divides evenly; else unchanged (one device runs them)."""
    mesh = local_mesh()
    if mesh is None or not arrays:
        return arrays
    rows = next(iter(arrays.values())).shape[0]
    if rows % mesh.size:
        return arrays
    return jax.device_put(arrays, batch_sharding(mesh))


_REPLICATED: dict[int, tuple[Any, Any]] = {}


def replicate_params(params: Any) -> Any:
    """`params` replicated on every local device (cached: the latest few trees), or
    unchanged with one device."""
    mesh = local_mesh()
    if mesh is None:
        return params
    hit = _REPLICATED.get(id(params))
    if hit is not None and hit[0] is params:
        return hit[1]
    if len(_REPLICATED) >= 4:
        _REPLICATED.pop(next(iter(_REPLICATED)))
    copy = jax.device_put(params, replicated(mesh))
    _REPLICATED[id(params)] = (params, copy)
    return copy


def place(params: Any, arrays: dict) -> tuple[Any, dict]:
    """(params, batch) for a jitted function: split and replicated over the local
    devices when the batch's rows divide evenly, else as given (one device runs it,
    e.g. batch 1, rather than every device the same rows)."""
    sharded = shard_rows(arrays)
    return (params, arrays) if sharded is arrays else (replicate_params(params), sharded)
