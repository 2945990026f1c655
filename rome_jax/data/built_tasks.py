"""Tasks built at run time, found by name: a task described in the config.

`rome_jax.data.tasks.build_task` records each task it builds here (the latest one
under its name), and `rome_jax.data.glue.get_task` looks here for a name that is not
a GLUE task's: so `get_task("custom")` finds the run's own task while the GLUE
registry (`rome_jax.data.glue.TASKS`) stays the same. This module sits below
`glue`, which imports it: it holds the tasks as `object`s and `get_task` checks
their type.
"""

from __future__ import annotations

_BUILT: dict[str, object] = {}


def task_key(name: str) -> str:
    """The key a task name is found by: lower case, letters and digits only ("SST-2" -> "sst2")."""
    return "".join(c for c in name.lower() if c.isalnum())


def record_task(name: str, task: object) -> None:
    """Makes `find_task(name)` return `task` in this process (replacing the task recorded before)."""
    _BUILT[task_key(name)] = task


def find_task(name: str) -> object | None:
    """The task last recorded under `name` (in any spelling), or None."""
    return _BUILT.get(task_key(name))
