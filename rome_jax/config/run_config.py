"""The run's training config: checking, resolving, comparing and loading `ml_collections` configs.

The configs themselves are code (`configs/*.py`, each with `get_config()`, starting
from `configs/default.py`, which is `rome_jax.config.schema.default_config()`); the
schema declares every key they may hold with its check (`KEYS`), so a config is
rejected at start with one `ConfigError` line naming the key rather than failing
later inside the training loop. This module adds the rules across keys
(`validate`), the "auto" conventions (`resolve`), the comparison with a workdir's
stored config (`differences`) and the loading of config files and workdirs.

    config = run_config.load("configs/glue.py:rte", {"train.learning_rate": 3e-5})
    config = run_config.resolve(config)             # "auto" values made explicit
    run_config.validate(config, num_devices=8)      # ConfigError naming the key

A config file that takes `TASK[,MODE]` (configs/glue.py, configs/ablation.py,
configs/tiny.py) reads it with `parse_task_mode`; a program that builds such an
argument uses `task_mode_spec`.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from rome_jax.config.choices import STAGE2_STARTS, TWO_STAGE_MODES
from rome_jax.config.schema import (
    ADDED_KEYS,
    KEYS,
    RUN_ONLY_KEYS,
    SCHEMA,
    flatten,
    nest,
    with_added_keys,
)
from rome_jax.data.buckets import length_buckets
from rome_jax.data.glue import get_task
from rome_jax.data.tagging_task import (
    TAGGING_DEFAULTS,
    build_tagging_task,
    is_tagging,
    resolved_tagging_settings,
    tagging_settings,
)
from rome_jax.data.tasks import CUSTOM, CUSTOM_DEFAULTS, build_task, custom_settings, is_custom, resolved_settings
from rome_jax.errors import ConfigError, DataError

__all__ = [  # with the schema's tables, importable from here as before they moved
    "ADDED_KEYS",
    "KEYS",
    "RUN_ONLY_KEYS",
    "STAGE2_STARTS",
    "add_config_root",
    "check_model_fit",
    "differences",
    "find_config_file",
    "flatten",
    "from_dict",
    "load",
    "parse_task_mode",
    "read_workdir_config",
    "reference_anchor",
    "resolve",
    "set_value",
    "source_checkout",
    "suggest",
    "task_mode_spec",
    "to_json",
    "validate",
]


# ------------------------------------------------------------------------- helpers


def suggest(key: str, known: Iterable[str] = KEYS) -> str:
    """' (did you mean train.learning_rate?)' or ''."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in known}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)]
    return f" (did you mean {close[0]}?)" if close else ""


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def from_dict(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(values))


# ------------------------------------------------------------------------ checking


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None, process_count: int = 1) -> None:
    """Raises ConfigError (one line naming the key) for unknown, missing or impossible values.

    With `num_devices`, also checks that the global batch splits into
    `grad_accum_steps` micro-batches, each divisible by the device count.
    """
    flat = flatten(config)
    for key in flat:
        if key not in KEYS:
            raise ConfigError(f"unknown config key {key}{suggest(key)}")
    for key, check in KEYS.items():
        if key not in flat:
            raise ConfigError(f"config key {key} is missing (start from configs/default.py)")
        problem = check(flat[key])
        if problem:
            raise ConfigError(f"config {key} {problem}")
    if config.model.attention == "cudnn" and config.model.dtype != "bfloat16":
        raise ConfigError(
            "config model.attention 'cudnn' needs model.dtype bfloat16 "
            f"(cuDNN's flash attention has no float32 form); got {config.model.dtype!r}"
        )
    train = config.train
    if train.batch_size % train.grad_accum_steps:
        raise ConfigError(
            f"config train.batch_size {train.batch_size} is not divisible by "
            f"train.grad_accum_steps {train.grad_accum_steps}"
        )
    if process_count > 1 and train.batch_size % process_count:
        raise ConfigError(
            f"config train.batch_size {train.batch_size} is not divisible by the {process_count} processes"
        )
    if num_devices:
        micro = train.batch_size // train.grad_accum_steps
        if micro % num_devices:
            raise ConfigError(
                f"config train.batch_size {train.batch_size} must be a multiple of the device "
                f"count ({num_devices}) x train.grad_accum_steps ({train.grad_accum_steps})"
            )
        if train.eval_batch_size % num_devices:
            raise ConfigError(
                f"config train.eval_batch_size {train.eval_batch_size} is not "
                f"divisible by the device count ({num_devices})"
            )
    if train.mode not in TWO_STAGE_MODES:
        for key in ("stage2_lr_scale", "stage2_start"):
            if train[key] != SCHEMA[f"train.{key}"].default:
                raise ConfigError(
                    f"config train.{key} is for the two-stage modes ({', '.join(TWO_STAGE_MODES)}), not {train.mode!r}"
                )
    if config.data.stage2_unlabeled and train.mode != "fastbert":
        raise ConfigError(
            f"config data.stage2_unlabeled is for train.mode fastbert (its stage 2 needs no labels), not {train.mode!r}"
        )
    try:
        length_buckets(config.data.max_length, config.data.buckets)  # lengths above max_length
    except ConfigError as e:
        raise ConfigError(f"config {e}") from None
    tagged = is_tagging(config.data.task)
    if tagged and config.model.exit_pooling != "token":
        raise ConfigError(
            f"config model.exit_pooling {config.model.exit_pooling!r} does not fit the tagging task "
            f"{config.data.task!r}: its exits tag every token (use token)"
        )
    if not tagged and config.model.exit_pooling == "token":
        raise ConfigError(
            f"config model.exit_pooling 'token' is for tagging tasks (conll2003, tagging), not {config.data.task!r}"
        )
    if tagged and train.mode == "fastbert":
        raise ConfigError(
            "config train.mode 'fastbert' does not train tagging tasks (its label-free stage 2 has no token "
            "mask); use deebert, joint, pabee, sd, gr or romebert"
        )
    if "tagging" in config.data:
        moved = [k for k, v in TAGGING_DEFAULTS.items() if k != "dir" and config.data.tagging[k] != v]
        if moved and not tagged:
            raise ConfigError(
                f"config data.tagging.{moved[0]} is for data.task 'tagging' or 'conll2003', not {config.data.task!r}"
            )
    custom = [k for k, v in CUSTOM_DEFAULTS.items() if config.data.custom[k] != v]
    if custom and not is_custom(config.data.task):
        raise ConfigError(f"config data.custom.{custom[0]} is for data.task 'custom', not {config.data.task!r}")
    # A custom task reads its own files (resolve() built it): data.source/dir are unused.
    if (
        config.data.source == "dir"
        and config.data.dir
        and not os.path.isdir(config.data.dir)
        and not is_custom(config.data.task)
        and not tagged
    ):
        raise DataError(
            f"GLUE data directory {config.data.dir} does not exist "
            "(config data.dir; an empty string reads the Hugging Face hub)"
        )


def check_model_fit(config: ml_collections.ConfigDict, model_config: Any) -> None:
    """Values that depend on the model: the sequence length fits its position table."""
    positions = model_config.max_length
    if config.data.max_length > positions:
        raise ConfigError(
            f"config data.max_length {config.data.max_length} exceeds the model's "
            f"{positions} positions ({config.model.name_or_path})"
        )


def reference_anchor(task: str) -> str:
    """The reference code's anchor: "A" (final exit kept) for MNLI and QQP, else "B"."""
    return "A" if get_task(task).name in ("mnli", "qqp") else "B"


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with the "auto"/0 conventions made explicit (what config.json records).

    train.anchor "auto" -> "A"/"B" per task; train.stage2_epochs 0 -> num_epochs;
    data.source "dir" with an empty data.dir -> "hf" (the hub); data.task in its
    canonical spelling ("SST-2" -> "sst2"). data.task "custom": the task is built
    from data.custom.* (reading the training file for label names: a DataError or
    ConfigError names a problem), and data.custom records absolute file paths, the
    label names (a JSON list) and the metric. A tagging task ("conll2003", "tagging")
    is built from data.tagging.* (its tag names recorded) and its exits tag every
    token (`model.exit_pooling` "cls", the default, becomes "token").
    """
    resolved = ml_collections.ConfigDict(config.to_dict())
    try:
        if is_tagging(resolved.data.task):
            name = "".join(c for c in str(resolved.data.task).lower() if c.isalnum())
            resolved.data.task = name
            if "tagging" in resolved.data:  # else validate() names the missing keys
                settings = tagging_settings(resolved.data)
                task = build_tagging_task(name, settings)
                resolved.data.tagging = ml_collections.ConfigDict(resolved_tagging_settings(task, settings))
            if resolved.model.get("exit_pooling") == "cls":  # the default: a tagger's exits tag every token
                resolved.model.exit_pooling = "token"
        elif is_custom(resolved.data.task):
            resolved.data.task = CUSTOM
            if "custom" in resolved.data:  # else validate() names the missing keys
                settings = custom_settings(resolved.data)
                resolved.data.custom = ml_collections.ConfigDict(resolved_settings(build_task(settings), settings))
        else:
            resolved.data.task = get_task(resolved.data.task).name
    except (DataError, AttributeError, TypeError) as e:
        if isinstance(e, DataError) and (is_custom(resolved.data.get("task")) or is_tagging(resolved.data.get("task"))):
            raise
        return resolved  # validate() names the problem
    if resolved.train.get("anchor") == "auto":
        resolved.train.anchor = reference_anchor(resolved.data.task)
    if resolved.train.get("stage2_epochs") == 0:
        resolved.train.stage2_epochs = resolved.train.num_epochs
    if resolved.data.get("source") == "dir" and resolved.data.get("dir") == "":
        resolved.data.source = "hf"
    resolved.lock()
    return resolved


def differences(
    stored: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = RUN_ONLY_KEYS
) -> list[str]:
    """'key: old -> new' for each differing key (both flattened or nested); a key that
    `stored` lacks compares as its `ADDED_KEYS` value."""
    a, b = with_added_keys(stored), flatten(current)
    ignore = set(ignore)
    changed = []
    for key in sorted(set(a) | set(b)):
        if key in ignore or a.get(key, "<absent>") == b.get(key, "<absent>"):
            continue
        changed.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return changed


# ------------------------------------------------------------------ TASK[,MODE]


def parse_task_mode(arg: str | None, file: str, *, default_task: str | None = None) -> tuple[str, str | None]:
    """(canonical task name, mode or None) from a config file's `TASK[,MODE]` argument.

    `file` names the config file in the messages ("configs/glue.py"). Without an
    argument, `default_task` is the task; with neither, ConfigError. An unknown task
    is the DataError of `rome_jax.data.glue.get_task`; the mode is checked by `validate`.
    """
    if not arg:
        if default_task is None:
            raise ConfigError(f"{file} needs a task: --config={file}:rte (or {file}:rte,deebert)")
        arg = default_task
    parts = [p.strip() for p in arg.split(",")]
    if len(parts) > 2:
        raise ConfigError(f"{file} takes TASK[,MODE], got {arg!r}")
    mode = parts[1] if len(parts) == 2 else None
    if is_tagging(parts[0]):
        return "".join(c for c in parts[0].lower() if c.isalnum()), mode
    return get_task(parts[0]).name, mode


def task_mode_spec(config_file: str, task: str, mode: str | None = None) -> str:
    """`config_file:TASK[,MODE]`, the `--config=` value `parse_task_mode` reads back."""
    return f"{config_file}:{task}" + (f",{mode}" if mode else "")


# ------------------------------------------------------------------------- loading


def load(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """A config from `path[:arg]` (as `--config=` takes it) with dotted overrides.

    For programs and tests; train.py uses `ml_collections.config_flags` instead.
    The config file may import its siblings (`from configs import default`).
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist")
    add_config_root(path)
    module_spec = importlib.util.spec_from_file_location(f"_rome_config_{Path(path).stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"config file {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    for key, value in (overrides or {}).items():
        set_value(config, key, value)
    return config


def add_config_root(path: str | os.PathLike) -> None:
    """Puts the config file's grandparent directory first on sys.path, so that the
    file's `from configs import default` finds its siblings from any directory."""
    root = str(Path(path).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)


def source_checkout() -> Path | None:
    """The rome_jax source checkout beside this package (the directory holding
    rome_jax/ and configs/), or None for an installed package."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "configs" / "default.py").is_file() else None


def find_config_file(path: str) -> str:
    """The absolute path of config file `path`: as given (a relative path against the
    current directory), else against the source checkout beside the package.

    ConfigError (one line) when neither exists.
    """
    given = Path(path).expanduser()
    if given.is_file():
        return str(given.resolve())
    checkout = source_checkout()
    if checkout is not None and not given.is_absolute() and (checkout / given).is_file():
        return str((checkout / given).resolve())
    where = (
        ""
        if given.is_absolute()
        else " in the current directory" + (f" or in the rome_jax source checkout {checkout}" if checkout else "")
    )
    hint = given.as_posix() if len(given.parts) > 1 and given.parts[0] == "configs" else f"configs/{given.name}"
    raise ConfigError(f"config file {path} not found{where}: pass --config=path/to/{hint}")


def set_value(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """config[key] = value for a dotted key; ConfigError for an unknown key or a bad type."""
    *parents, leaf = key.split(".")
    node = config
    try:
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(leaf)
        node[leaf] = value
    except (KeyError, AttributeError):
        raise ConfigError(f"unknown config key {key}{suggest(key)}") from None
    except TypeError as e:
        raise ConfigError(f"config {key}: {str(e).splitlines()[0]}") from None


def read_workdir_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The resolved config a training run wrote to `workdir/config.json`, with each key
    added since at the value the run computed with (`schema.ADDED_KEYS`): readers
    take every key of the schema as it is."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist (not a train.py workdir?)")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: not a JSON object of config sections")
    return from_dict(nest(with_added_keys(values)))
