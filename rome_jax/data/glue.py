"""The GLUE task registry: names, files, columns, labels, splits and metrics.

One `Task` per GLUE task (plus AX, the diagnostic set scored with an MNLI model).
Column names are those of the header of the original GLUE TSVs (what
`download_glue_data.py` writes) and, separately, those of the Hugging Face hub
dataset `nyu-mll/glue` (also used by tensorflow-datasets' `glue/<config>`).
Label ids follow the conventional GLUE / Hugging Face order, so a model trained
on ids from one source can be scored on another.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from rome_jax.data.built_tasks import find_task, record_task, task_key
from rome_jax.errors import DataError


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(mapping))


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything the readers and metrics need to know about one GLUE task.

    Attributes:
      name: canonical lower-case key ("sst2", "mnli", ...).
      glue_dir_name: directory of the task in the GLUE data root ("SST-2").
      text_columns: header names of the one or two text columns in the TSVs.
      label_column: header name of the label column in labelled TSVs.
      label_names: label strings in the order of label ids; None for STS-B.
      metric: primary metric, the key used to rank checkpoints.
      train_splits / dev_splits / test_splits: split names of this task.
      split_files: split -> file name inside the task directory.
      leaderboard_names: dev/test split -> name on the GLUE leaderboard (and of
        the submission file, e.g. "MNLI-m" for "MNLI-m.tsv").
      hf_config: config of `nyu-mll/glue` and of tensorflow-datasets' `glue/...`.
      hf_text_columns: the text columns' names there.
      hf_splits: our split -> the hub's split name.
      headerless_columns: for splits whose TSV has no header (CoLA train/dev),
        the column names in file order.
      alt_dir_names: other directory names the task's files are found under.
      alt_file_names: other file names of a single-split task's file.
    """

    name: str
    glue_dir_name: str
    text_columns: tuple[str, ...]
    label_column: str | None
    label_names: tuple[str, ...] | None
    metric: str
    train_splits: tuple[str, ...]
    dev_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    split_files: Mapping[str, str] = dataclasses.field(hash=False)
    leaderboard_names: Mapping[str, str] = dataclasses.field(hash=False)
    hf_config: str
    hf_text_columns: tuple[str, ...]
    hf_splits: Mapping[str, str] = dataclasses.field(hash=False)
    headerless_columns: Mapping[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}), hash=False
    )
    alt_dir_names: tuple[str, ...] = ()
    alt_file_names: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Width of the classifier head: 1 for regression (STS-B)."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        return self.train_splits + self.dev_splits + self.test_splits

    def leaderboard_name(self, split: str) -> str:
        """The leaderboard's name of a dev or test split ("MNLI-m" for "test_matched").

        Hub spellings are accepted ("validation_matched"); a split the leaderboard
        does not know (train, or MNLI's ambiguous "test") is a DataError.
        """
        canonical = check_split(self, split)
        if canonical not in self.leaderboard_names:
            raise DataError(
                f"split {canonical!r} of task {self.name} has no leaderboard name "
                f"(splits that have one: {', '.join(self.leaderboard_names)})"
            )
        return self.leaderboard_names[canonical]


def _task(
    name: str,
    glue_dir_name: str,
    text_columns: tuple[str, ...],
    label_column: str | None,
    label_names: tuple[str, ...] | None,
    metric: str,
    hf_text_columns: tuple[str, ...],
    *,
    leaderboard: str | None = None,
    **kwargs: Any,
) -> Task:
    """A task with the usual train/dev/test layout unless `kwargs` say otherwise."""
    train = kwargs.pop("train_splits", ("train",))
    dev = kwargs.pop("dev_splits", ("dev",))
    test = kwargs.pop("test_splits", ("test",))
    files = kwargs.pop("split_files", {s: f"{s}.tsv" for s in train + dev + test})
    board = kwargs.pop("leaderboard_names", {s: leaderboard or glue_dir_name for s in dev + test})
    hf_splits = kwargs.pop("hf_splits", {"train": "train", "dev": "validation", "test": "test"})
    headerless = kwargs.pop("headerless_columns", {})
    return Task(
        name=name,
        glue_dir_name=glue_dir_name,
        text_columns=text_columns,
        label_column=label_column,
        label_names=label_names,
        metric=metric,
        train_splits=train,
        dev_splits=dev,
        test_splits=test,
        split_files=_frozen(files),
        leaderboard_names=_frozen(board),
        hf_config=kwargs.pop("hf_config", name),
        hf_text_columns=hf_text_columns,
        hf_splits=_frozen(hf_splits),
        headerless_columns=types.MappingProxyType(dict(headerless)),
        **kwargs,
    )


_BINARY = ("0", "1")
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_COLA_COLUMNS = ("source", "label", "original_label", "sentence")

_MNLI_SPLITS: dict[str, Any] = dict(
    dev_splits=("dev_matched", "dev_mismatched"),
    test_splits=("test_matched", "test_mismatched"),
    leaderboard_names={
        "dev_matched": "MNLI-m",
        "dev_mismatched": "MNLI-mm",
        "test_matched": "MNLI-m",
        "test_mismatched": "MNLI-mm",
    },
    hf_splits={
        "train": "train",
        "dev_matched": "validation_matched",
        "dev_mismatched": "validation_mismatched",
        "test_matched": "test_matched",
        "test_mismatched": "test_mismatched",
    },
)

TASKS: Mapping[str, Task] = types.MappingProxyType(
    {
        t.name: t
        for t in (
            _task(
                "cola",
                "CoLA",
                ("sentence",),
                "label",
                _BINARY,
                "matthews_correlation",
                ("sentence",),
                headerless_columns={"train": _COLA_COLUMNS, "dev": _COLA_COLUMNS},
            ),
            _task("sst2", "SST-2", ("sentence",), "label", _BINARY, "accuracy", ("sentence",)),
            _task(
                "mrpc",
                "MRPC",
                ("#1 String", "#2 String"),
                "Quality",
                _BINARY,
                "accuracy_and_f1",
                ("sentence1", "sentence2"),
            ),
            _task(
                "stsb",
                "STS-B",
                ("sentence1", "sentence2"),
                "score",
                None,
                "pearson_and_spearman",
                ("sentence1", "sentence2"),
            ),
            _task(
                "qqp",
                "QQP",
                ("question1", "question2"),
                "is_duplicate",
                _BINARY,
                "accuracy_and_f1",
                ("question1", "question2"),
            ),
            _task(
                "mnli",
                "MNLI",
                ("sentence1", "sentence2"),
                "gold_label",
                _NLI3,
                "accuracy",
                ("premise", "hypothesis"),
                **_MNLI_SPLITS,
            ),
            _task("qnli", "QNLI", ("question", "sentence"), "label", _NLI2, "accuracy", ("question", "sentence")),
            _task("rte", "RTE", ("sentence1", "sentence2"), "label", _NLI2, "accuracy", ("sentence1", "sentence2")),
            _task("wnli", "WNLI", ("sentence1", "sentence2"), "label", _BINARY, "accuracy", ("sentence1", "sentence2")),
            # The diagnostic set: test only, predicted by an MNLI model (same labels) and scored
            # by the leaderboard with Matthews' correlation. download_glue_data.py writes it to
            # diagnostic/diagnostic.tsv; the leaderboard calls it AX.
            _task(
                "ax",
                "diagnostic",
                ("sentence1", "sentence2"),
                None,
                _NLI3,
                "matthews_correlation",
                ("premise", "hypothesis"),
                leaderboard="AX",
                train_splits=(),
                dev_splits=(),
                split_files={"test": "diagnostic.tsv"},
                hf_splits={"test": "test"},
                alt_dir_names=("AX",),
                alt_file_names=("AX.tsv",),
            ),
        )
    }
)

_ALIASES = {"diagnostic": "ax", "stsbenchmark": "stsb"}


def register_task(task: Task) -> None:
    """Makes `get_task(task.name)` return `task` in this process (the latest one
    recorded under that name, `rome_jax.data.built_tasks`). GLUE names cannot be
    replaced; `TASKS` does not change."""
    key = task_key(task.name)
    if _ALIASES.get(key, key) in TASKS:
        raise DataError(f"task name {task.name!r} is a GLUE task's")
    record_task(task.name, task)


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def get_task(name: str | Task) -> Task:
    """The task called `name`, in any case, with or without dashes ("SST-2", "sst2").

    A GLUE task, or one built at run time (`rome_jax.data.tasks.build_task`:
    "custom", the task described in the config); a `Task` is returned as is.
    """
    if isinstance(name, Task):
        return name
    key = task_key(str(name))
    key = _ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    built = find_task(key)
    if isinstance(built, Task):
        return built
    hint = "; or 'custom' with data.custom.* keys for your own data" if key == "custom" else ""
    raise DataError(f"unknown GLUE task {name!r} (known: {', '.join(TASKS)}{hint})")


def check_split(task: Task, split: str) -> str:
    """`split` itself if `task` has it, else DataError listing the task's splits.

    Hub spellings are accepted too ("validation" -> "dev",
    "validation_matched" -> "dev_matched").
    """
    canonical = split.strip().lower().replace("-", "_")
    if canonical not in task.splits:
        by_hub_name = {hub: ours for ours, hub in task.hf_splits.items()}
        canonical = by_hub_name.get(canonical, canonical)
    if canonical not in task.splits:
        raise DataError(f"task {task.name} has no split {split!r} (known: {', '.join(task.splits)})")
    return canonical
