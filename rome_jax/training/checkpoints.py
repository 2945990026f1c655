"""Checkpoints: orbax behind one small module.

A checkpoint is a directory `<dir>/<step>/` holding two items:
  state: a pytree of arrays (the train state: params, opt_state, step, rng),
  meta:  a JSON object (the data iterator's position, the stage, the metrics-log
         length, the best evaluation so far, ...).

Saving is synchronous. Orbax writes a step into a temporary directory
(`<step>.orbax-checkpoint-tmp-*`) and renames it when complete, so a process killed
during a save leaves the previous checkpoints as they were and the partial one
invisible; `restore_latest` also falls back to the previous step if the latest
cannot be read. Retention is ours, not orbax's: after each save, the latest
`keep` steps and the steps in `preserve` (the best one) stay, the rest go.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import types
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rome_jax.encoder.params import params_mismatch, tree_mismatch  # noqa: F401 (params_mismatch: old import path)
from rome_jax.encoder.pytree import PyTree
from rome_jax.errors import CheckpointError, first_line
from rome_jax.training import distributed

logger = logging.getLogger(__name__)


def _ocp() -> types.ModuleType:
    import orbax.checkpoint as ocp  # heavy: imported on first use

    return ocp


def abstract_like(tree: PyTree) -> PyTree:
    """Shapes, dtypes and shardings of a pytree of arrays (a restore target)."""

    def leaf(x: jax.Array) -> jax.ShapeDtypeStruct:
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


class Checkpoints:
    """The checkpoints of one run, in `directory` (created on the first save)."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, read_only: bool = False):
        ocp = _ocp()
        self.directory = Path(directory).absolute()
        self.keep = max(int(keep), 1)
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoints in {self.directory} (no such directory)")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only,
            save_interval_steps=1,
        )
        # handlers named up front, so a fresh manager can read a checkpoint's metadata
        # (with bare item names it cannot until a first restore registers them)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )

    def steps(self) -> list[int]:
        """The complete checkpoints' steps, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: PyTree, meta: dict, *, preserve: Iterable[int] = ()) -> None:
        """Writes checkpoint `step` (replacing one of the same step), then prunes."""
        ocp = _ocp()
        if step in self.steps():
            self._manager.delete(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if not self._manager.save(step, args=args, force=True):
            raise CheckpointError(f"orbax declined to save step {step} in {self.directory}")
        self._manager.wait_until_finished()
        self.prune(preserve)

    def prune(self, preserve: Iterable[int] = ()) -> None:
        steps = self.steps()
        if jax.process_count() > 1:  # orbax's deletes (process 0's) wait until every process has
            distributed.barrier("checkpoints listed")  # listed the steps: a listing racing a deletion fails
        keep = set(steps[-self.keep :]) | {int(s) for s in preserve if s is not None}
        for step in steps:
            if step not in keep:
                self._manager.delete(step)

    def restore_meta(self, step: int) -> dict:
        ocp = _ocp()
        _drop_orbax_leftovers()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # a missing or unreadable item
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} cannot be read ({_first_line(e)})"
            ) from None
        return dict(restored["meta"])

    def restore(self, step: int, target: PyTree | None) -> tuple[PyTree, dict]:
        """(state, meta) of checkpoint `step`.

        `target`: the abstract state (`abstract_like`) the arrays are restored into,
        with its structure, shapes, dtypes and shardings; None restores the tree as
        saved (dicts and lists of arrays).
        """
        ocp = _ocp()
        path = self.directory / str(step)
        meta = self.restore_meta(step)  # (installs the leftover filters first)
        if target is not None:
            mismatch = self._mismatch(step, target)
            if mismatch:
                raise CheckpointError(f"checkpoint {path} does not fit this model: {mismatch}")
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        except Exception as e:
            reason = _first_line(e).split(" See full TensorStore details")[0]
            raise CheckpointError(f"checkpoint {path} cannot be restored into this model ({reason})") from None
        return restored["state"], meta

    def _mismatch(self, step: int, target: PyTree) -> str | None:
        """A description of the first difference of structure or shape, or None."""
        try:
            metadata = self._manager.item_metadata(step)["state"]
        except Exception:  # old or partial metadata: let the restore itself report
            return None
        tree = getattr(metadata, "tree", metadata)
        if tree is None:
            return None
        return tree_mismatch(tree, target)

    def local_target(self, step: int) -> PyTree | None:
        """A restore target for checkpoint `step` on this process's first device: its saved
        shapes and dtypes (a checkpoint saved by several processes cannot be restored as
        saved, onto devices this process does not have); None if the metadata is unreadable."""
        try:
            metadata = self._manager.item_metadata(step)["state"]
        except Exception:
            return None
        tree = getattr(metadata, "tree", metadata)
        if tree is None:
            return None
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
            tree,
            is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"),
        )

    def restore_latest(self, target: PyTree | None) -> tuple[int, PyTree, dict] | None:
        """(step, state, meta) of the latest readable checkpoint, or None if there is none.

        A checkpoint that cannot be read (files missing, e.g. a step directory
        damaged by hand) is skipped with a warning; one that does not fit the
        model is an error.
        """
        steps = self.steps()
        for step in reversed(steps):
            try:
                state, meta = self.restore(step, target)
            except CheckpointError as e:
                if "does not fit" in str(e) or step == steps[0]:
                    raise
                logger.warning("skipping unreadable checkpoint: %s", e)
                continue
            return step, state, meta
        return None

    def delete_all(self) -> None:
        self.close()
        if self.directory.exists():
            shutil.rmtree(self.directory)

    def close(self) -> None:
        self._manager.close()


_ORBAX_PATH = f"{os.sep}orbax{os.sep}"


def _from_orbax(code: Any) -> bool:
    return _ORBAX_PATH in getattr(code, "co_filename", "")


class _OrbaxLeftovers(logging.Filter):
    """asyncio's "Task/Future exception was never retrieved" for orbax's reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        unretrieved = message.startswith(("Task exception was never retrieved", "Future exception was never retrieved"))
        return not (unretrieved and (_ORBAX_PATH in message or "tensorstore" in message))


def _drop_orbax_leftovers() -> None:
    """Installed before the first read of a checkpoint (its meta): when a read fails
    (a damaged checkpoint; the metadata read of `_mismatch` fails first), orbax's
    pending reads still finish afterwards, on a closed asyncio loop; each prints a
    traceback ("Event loop is closed" via TensorStore's unraisable callbacks,
    "Exception ignored in <coroutine ...>", "Task/Future exception was never
    retrieved"), up to thousands of lines burying the one-line error. Those, and only
    those, are dropped; the failure itself is reported by `Checkpoints.restore`."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_orbax_leftovers", False):
        return

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        error, source = unraisable.exc_value, unraisable.object
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        if not (closed_loop or _from_orbax(getattr(source, "cr_code", None))):
            previous(unraisable)

    hook.drops_orbax_leftovers = True  # type: ignore[attr-defined]  # marks the hook installed
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_OrbaxLeftovers())
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning, r"(orbax|asyncio)\.")


def _first_line(e: BaseException) -> str:
    return first_line(e) or type(e).__name__


def load_params(directory: str | os.PathLike, step: int | str = "best") -> tuple[int, PyTree]:
    """(step, params) of a run's checkpoint, as numpy arrays, for evaluation.

    `directory` is a workdir (its `checkpoints/` is used) or a checkpoints
    directory; `step` is a number, "latest", or "best" (the checkpoint with the
    best final-exit dev metric; the latest if the run never evaluated). Check the
    result against the model with `tree_mismatch`.
    """
    if step not in ("best", "latest") and not str(step).isdigit():
        raise CheckpointError(f"checkpoint {step!r}: give best, latest or a step number")
    directory = Path(directory)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    elif (directory / "config.json").is_file():
        raise CheckpointError(f"workdir {directory} holds no checkpoints (the run saved none)")
    checkpoints = Checkpoints(directory, read_only=True)
    try:
        steps = checkpoints.steps()
        if not steps:
            raise CheckpointError(f"no complete checkpoint in {directory}")
        if step in ("best", "latest"):
            chosen = steps[-1]
            if step == "best":
                best = (checkpoints.restore_meta(chosen).get("best") or {}).get("step")
                chosen = best if best in steps else chosen
        else:
            chosen = int(step)
            if chosen not in steps:
                raise CheckpointError(
                    f"no checkpoint of step {chosen} in {directory} (steps: {', '.join(map(str, steps))})"
                )
        state, _ = checkpoints.restore(chosen, checkpoints.local_target(chosen))
    finally:
        checkpoints.close()
    return chosen, jax.tree.map(np.asarray, state["params"])
