"""The checks of single config values: each returns the problem (a phrase) or None.

    check = positive(float)
    check(2e-5)      # None
    check(-1.0)      # "must be > 0, got -1.0"
    check.allowed    # "float > 0" (the "allowed" column of docs/configs.md)

The config's schema (`rome_jax.config.schema`) gives every key one of these; a
failed check becomes the one-line `ConfigError` "config KEY PROBLEM". Pure
functions of the value: rules across keys are in `rome_jax.config.run_config.validate`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from rome_jax.data.buckets import check_spec
from rome_jax.data.glue import get_task
from rome_jax.data.tagging_task import is_tagging
from rome_jax.data.tasks import is_custom
from rome_jax.errors import DataError

_KIND_NAMES = {str: "string", bool: "bool", int: "int", float: "float"}


@dataclasses.dataclass(frozen=True)
class Check:
    """A config value's check: `check(value)` is the problem or None; `allowed` says
    in words what passes."""

    test: Callable[[Any], str | None]
    allowed: str

    def __call__(self, value: Any) -> str | None:
        return self.test(value)


def shown(value: Any) -> str:
    """A value as the docs write it: `auto`, `""`, 128, 2e-5, True."""
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value))
    return str(value)


def _number(value: float) -> str:
    """1e-08 -> "1e-8", 0.0 -> "0", 3 -> "3": a bound as the docs write it."""
    return f"{value:g}".replace("e-0", "e-").replace("e+0", "e+")


def typed(kind: type, extra: Callable[[Any], str | None] | None = None, allowed: str | None = None) -> Check:
    """A value of `kind` (an int passes as a float, a bool never as a number; floats
    finite), then `extra`'s test."""

    def test(value: Any) -> str | None:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            return f"must be {kind.__name__}, got {value!r}"
        if kind is float and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        return extra(value) if extra else None

    return Check(test, allowed if allowed is not None else _KIND_NAMES.get(kind, kind.__name__))


def at_least(low: float, kind: type = int) -> Check:
    return typed(
        kind, lambda v: None if v >= low else f"must be >= {low}, got {v!r}", f"{_KIND_NAMES[kind]} >= {_number(low)}"
    )


def positive(kind: type = int) -> Check:
    return typed(kind, lambda v: None if v > 0 else f"must be > 0, got {v!r}", f"{_KIND_NAMES[kind]} > 0")


def between(low: float, high: float, *, high_open: bool = False) -> Check:
    """A float in [low, high], or [low, high) with `high_open`."""
    close = ")" if high_open else "]"

    def test(v: float) -> str | None:
        if low <= v and (v < high if high_open else v <= high):
            return None
        return f"must be in [{low}, {high}{close}, got {v!r}"

    return typed(float, test, f"[{_number(low)}, {_number(high)}{close}")


def one_of(*choices: str) -> Check:
    """One of the strings `choices` (a choice tuple of `rome_jax.config.choices`,
    `rome_jax.encoder.config` or `rome_jax.data`)."""
    return typed(
        str,
        lambda v: None if v in choices else f"must be one of {', '.join(choices)}; got {v!r}",
        ", ".join(shown(c) for c in choices),
    )


def _model_name(v: str) -> str | None:
    return None if v.strip() else "must not be empty (a local HF directory or a hub name)"


def _task(v: str) -> str | None:
    if is_custom(v) or is_tagging(v):  # described by data.custom.* / data.tagging.*: checked when built (resolve)
        return None
    try:
        task = get_task(v)
    except DataError as e:
        return str(e)
    if not task.train_splits:
        return f"task {task.name} has no training split"
    return None


model_name = typed(str, _model_name, "non-empty string")
"""model.name_or_path: a local HF directory or a hub name."""

task_name = typed(str, _task, "a GLUE task with a training split (any spelling), `custom`, `conll2003` or `tagging`")
"""data.task: a GLUE task that can be trained, "custom", or a tagging task ("conll2003", "tagging")."""

bucket_spec = Check(check_spec, '`auto`, `none`, or lengths `"32,64,128"` (each at most `data.max_length`)')
"""data.buckets (`rome_jax.data.buckets.check_spec`)."""
