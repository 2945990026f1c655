"""Tasks described in the config: your own data, not only GLUE.

`data.task = "custom"` reads the task from the `data.custom.*` keys (see
`CUSTOM_DEFAULTS` and docs/custom_data.md):

    data.custom.train_file / dev_file / test_file   CSV, TSV, JSON Lines or Parquet
    data.custom.format        "" (from the extension) or csv, tsv, jsonl, parquet
    data.custom.hf_dataset    instead of files: a hub dataset or a local directory
    data.custom.hf_config     its config name ("" for none)
    data.custom.text_a / text_b / label   column names (text_b "" for one text)
    data.custom.label_names   "neg,pos" or '["neg", "pos"]'; "": read from the
                              training file (see `label_order`)
    data.custom.regression    one output and float labels
    data.custom.metric        "" : accuracy (classification), pearson_and_spearman
                              (regression); else one of `rome_jax.data.metrics.METRIC_NAMES`

`task_from_config` builds a `CustomTask` (`rome_jax.data.custom`: a
`rome_jax.data.glue.Task` with the files and format added), recorded under its name
(`rome_jax.data.built_tasks`) so that `get_task("custom")` (what the metrics, the
evaluation and the leaderboard-free paths call) returns it. The GLUE registry
itself is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rome_jax.data.built_tasks import record_task
from rome_jax.data.custom import (
    EXTENSIONS,
    FORMATS,
    HF_SPLITS,
    CustomTask,
    file_format,
    label_order,
    parse_label_names,
    training_label_names,
)
from rome_jax.data.glue import Task, get_task
from rome_jax.data.metrics import METRIC_NAMES, REGRESSION_METRICS
from rome_jax.data.tagging_task import build_tagging_task, is_tagging, tagging_settings
from rome_jax.errors import ConfigError

__all__ = [
    "CUSTOM",
    "CUSTOM_DEFAULTS",
    "EXTENSIONS",
    "FORMATS",
    "HF_SPLITS",
    "CustomTask",
    "build_task",
    "custom_settings",
    "default_metric",
    "file_format",
    "is_custom",
    "label_order",
    "parse_label_names",
    "resolved_settings",
    "task_from_config",
]

CUSTOM = "custom"
"""The `data.task` value that reads the task from `data.custom.*`."""

CUSTOM_DEFAULTS: Mapping[str, Any] = types.MappingProxyType(
    {
        "train_file": "",
        "dev_file": "",
        "test_file": "",
        "format": "",
        "hf_dataset": "",
        "hf_config": "",
        "text_a": "sentence",
        "text_b": "",
        "label": "label",
        "label_names": "",
        "regression": False,
        "metric": "",
    }
)
"""Every `data.custom.*` key and its default (configs/default.py holds the same)."""

_SPLIT_KEYS = {"train": "train_file", "dev": "dev_file", "test": "test_file"}


def is_custom(name: Any) -> bool:
    return isinstance(name, CustomTask) or (isinstance(name, str) and name.strip().lower() == CUSTOM)


def custom_settings(data: Any) -> dict[str, Any]:
    """The `data.custom` keys of a data config (ConfigDict or dict), defaults filled in."""
    custom = data.get("custom") if hasattr(data, "get") else None
    values = dict(CUSTOM_DEFAULTS)
    if custom is not None:
        values.update({k: custom[k] for k in custom.keys()} if hasattr(custom, "keys") else custom)  # noqa: SIM118
    unknown = sorted(set(values) - set(CUSTOM_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config key data.custom.{unknown[0]} (known: {', '.join(CUSTOM_DEFAULTS)})")
    return values


def default_metric(regression: bool) -> str:
    return "pearson_and_spearman" if regression else "accuracy"


def _check_metric(metric: str, regression: bool, num_labels: int) -> None:
    if metric not in METRIC_NAMES:
        raise ConfigError(
            f"config data.custom.metric must be one of {', '.join(METRIC_NAMES)} "
            f"(or empty: the default); got {metric!r}"
        )
    if regression != (metric in REGRESSION_METRICS):
        kind = "a regression" if regression else "a classification"
        fitting = [m for m in METRIC_NAMES if (m in REGRESSION_METRICS) == regression]
        raise ConfigError(
            f"config data.custom.metric {metric!r} does not fit {kind} task (use one of {', '.join(fitting)})"
        )
    if metric in ("f1", "accuracy_and_f1") and num_labels != 2:
        raise ConfigError(
            f"config data.custom.metric {metric!r} is binary F1 and needs 2 labels, "
            f"the task has {num_labels}; use f1_macro"
        )


def _sources(settings: Mapping[str, Any]) -> dict[str, str]:
    files = {split: str(settings[key]).strip() for split, key in _SPLIT_KEYS.items() if str(settings[key]).strip()}
    files = {split: os.path.expandvars(os.path.expanduser(path)) for split, path in files.items()}
    hf = str(settings["hf_dataset"]).strip()
    if hf and files:
        raise ConfigError(
            "config data.custom: give either data files (train_file, dev_file, test_file) or hf_dataset, not both"
        )
    if not hf:
        for split in ("train", "dev"):
            if split not in files:
                raise ConfigError(
                    f"config data.custom.{_SPLIT_KEYS[split]} is empty: data.task "
                    f"'custom' needs a {split} file (or data.custom.hf_dataset)"
                )
        for path in files.values():
            file_format(path, str(settings["format"]))  # an unknown format fails now, not later
    return files


def build_task(settings: Mapping[str, Any], *, register: bool = True) -> CustomTask:
    """The `CustomTask` of `data.custom` settings (a dict of `CUSTOM_DEFAULTS`' keys).

    Without label names (classification), the training data's labels give them
    (`label_order`; a Hugging Face ClassLabel column gives its own order). With
    `register`, `rome_jax.data.glue.get_task(task.name)` finds the task afterwards
    (`rome_jax.data.built_tasks`).
    """
    settings = {**CUSTOM_DEFAULTS, **settings}
    files = _sources(settings)
    text_a, text_b = str(settings["text_a"]).strip(), str(settings["text_b"]).strip()
    label = str(settings["label"]).strip()
    if not text_a:
        raise ConfigError("config data.custom.text_a is empty: name the text column")
    if not label:
        raise ConfigError("config data.custom.label is empty: name the label column")
    if text_b == text_a:
        raise ConfigError(f"config data.custom.text_b names the same column as text_a ({text_a!r})")
    regression = settings["regression"]
    if not isinstance(regression, bool):
        raise ConfigError(f"config data.custom.regression must be bool, got {regression!r}")
    names = parse_label_names(settings["label_names"])
    if regression and names:
        raise ConfigError("config data.custom.label_names is for classification, but data.custom.regression is True")
    text_columns = (text_a, text_b) if text_b else (text_a,)
    hf = str(settings["hf_dataset"]).strip()
    test = ("test",) if ("test" in files or hf) else ()
    task = CustomTask(
        name=CUSTOM,
        glue_dir_name="",
        text_columns=text_columns,
        label_column=label,
        label_names=None if regression else (names or ("?",)),
        metric="accuracy",
        train_splits=("train",),
        dev_splits=("dev",),
        test_splits=test,
        split_files=types.MappingProxyType(dict(files)),
        leaderboard_names=types.MappingProxyType({}),
        hf_config=str(settings["hf_config"]).strip(),
        hf_text_columns=text_columns,
        hf_splits=types.MappingProxyType({s: HF_SPLITS[s][0] for s in ("train", "dev") + test}),
        data_files=types.MappingProxyType(dict(files)),
        data_format=str(settings["format"]).strip(),
        hf_dataset=hf,
    )
    if not regression:
        if not names:
            names = training_label_names(task)
            task = dataclasses.replace(task, label_source="the training labels")
        task = dataclasses.replace(task, label_names=tuple(names))
        if len(names) < 2:
            raise ConfigError(
                f"a classification task needs at least 2 labels, {task.label_source} "
                f"give {len(names)}: {', '.join(names)} (or set data.custom.regression)"
            )
    metric = str(settings["metric"]).strip() or default_metric(regression)
    _check_metric(metric, regression, task.num_labels)
    task = dataclasses.replace(task, metric=metric)
    if register:
        record_task(task.name, task)
    return task


def task_from_config(config: Any) -> Task:
    """The task of a run config (or of its `data` part): a GLUE task, a `CustomTask`,
    or a `TaggingTask` (`rome_jax.data.tagging_task`)."""
    data = config["data"] if "data" in config else config  # noqa: SIM401 - ConfigDict.get differs
    name = data["task"]
    if is_tagging(name):
        return build_tagging_task(name, tagging_settings(data))
    if is_custom(name):
        return build_task(custom_settings(data))
    return get_task(name)


def resolved_settings(task: CustomTask, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`data.custom` as config.json records it: absolute file paths, the label names
    (a JSON list, also when read from the training file) and the metric."""
    out = {**CUSTOM_DEFAULTS, **settings}
    for split, key in _SPLIT_KEYS.items():
        if split in task.data_files:
            out[key] = str(Path(task.data_files[split]).absolute())
    out["label_names"] = "" if task.is_regression else json.dumps(list(task.label_names or ()))
    out["metric"] = task.metric
    return out
