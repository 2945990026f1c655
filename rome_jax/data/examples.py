"""GLUE examples from three sources: `Examples` and the readers that make them.

`load_examples` picks a source: "dir" (`read_glue_dir`, the original GLUE TSVs),
"hf" (`read_hf_datasets`, Hugging Face `datasets`: the hub or local
.parquet/.csv/.tsv files) or "tfds" (`read_tfds`, tensorflow-datasets).
`read_text_file` reads unlabeled sentences, one per line. Every reader returns
`Examples` (`rome_jax.data.rows`): columns of texts, label ids (or scores) and row ids.
"""

from __future__ import annotations

import csv
import math
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from rome_jax.data.custom import CustomTask, read_custom
from rome_jax.data.glue import Task, check_split, get_task
from rome_jax.data.rows import Examples
from rome_jax.errors import ConfigError, DataError, first_line
from rome_jax.files import read_lines

SOURCES = ("dir", "hf", "tfds")


def _unlabeled(task: Task, n: int) -> np.ndarray:
    if task.is_regression:
        return np.full(n, np.nan, np.float32)
    return np.full(n, -1, np.int32)


def _label_parser(task: Task) -> Callable[[str], float | int]:
    """A function from a label string to its id (or score); raises ValueError."""
    if task.is_regression:

        def parse_score(text: str) -> float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value

        return parse_score
    ids = {name: i for i, name in enumerate(task.label_names or ())}
    return lambda text: ids[text.strip()]


def _describe_label_error(task: Task, value: str) -> str:
    if task.is_regression:
        return f"score {value!r} is not a finite number"
    return f"unknown label {value!r} (known: {', '.join(task.label_names or ())})"


def _listing(directory: Path, *, dirs: bool) -> str:
    try:
        entries = sorted(p.name for p in directory.iterdir() if p.is_dir() == dirs)
    except OSError:
        entries = []
    return ", ".join(entries) if entries else "nothing"


def _task_directory(task: Task, data_dir: Path) -> Path:
    names = (task.glue_dir_name, *task.alt_dir_names)
    for name in names:
        if (data_dir / name).is_dir():
            return data_dir / name
    # data_dir may be the task's own directory.
    if data_dir.name.lower() in {n.lower() for n in names} and data_dir.is_dir():
        return data_dir
    if not data_dir.is_dir():
        raise DataError(f"GLUE data directory {data_dir} does not exist")
    raise DataError(
        f"no directory for task {task.name} in {data_dir}: expected "
        f"{' or '.join(str(data_dir / n) for n in names)}; "
        f"directories there: {_listing(data_dir, dirs=True)}"
    )


def _split_file(task: Task, split: str, data_dir: str | os.PathLike) -> Path:
    directory = _task_directory(task, Path(data_dir))
    candidates = (task.split_files[split], *task.alt_file_names)
    for name in candidates:
        if (directory / name).is_file():
            return directory / name
    raise DataError(
        f"missing {split} file of task {task.name}: expected {directory / candidates[0]}; "
        f"files there: {_listing(directory, dirs=False)}"
    )


def _find_column(columns: list[str], name: str) -> int | None:
    lowered = [c.strip().lower() for c in columns]
    try:
        return lowered.index(name.lower())
    except ValueError:
        return None


def read_glue_dir(task: Task | str, split: str, data_dir: str | os.PathLike) -> Examples:
    """One split of a task from the original GLUE layout (`data_dir/RTE/dev.tsv`, ...).

    Fields are split on tabs with no quoting (GLUE texts hold unbalanced quotes).
    Columns are found by header name; CoLA train/dev have no header.
    """
    task = get_task(task)
    split = check_split(task, split)
    path = _split_file(task, split, data_dir)
    lines = read_lines(path)
    headerless = task.headerless_columns.get(split)
    if headerless is not None:
        columns, first = list(headerless), 0
    else:
        if not lines:
            raise DataError(f"{path}, line 1: empty file, expected a header")
        columns, first = lines[0].split("\t"), 1

    def required(name: str) -> int:
        position = _find_column(columns, name)
        if position is None:
            raise DataError(f"{path}, line 1: header has no column {name!r} (columns: {', '.join(columns)})")
        return position

    text_pos = [required(name) for name in task.text_columns]
    label_pos = None if task.label_column is None else _find_column(columns, task.label_column)
    if label_pos is None and split not in task.test_splits and task.label_column is not None:
        required(task.label_column)
    index_pos = (
        None
        if headerless
        else next((p for p in (_find_column(columns, n) for n in ("index", "id")) if p is not None), None)
    )

    parse_label = _label_parser(task)
    texts: list[list[str]] = [[] for _ in text_pos]
    labels: list[Any] = []
    index: list[int] = []
    for lineno in range(first + 1, len(lines) + 1):
        line = lines[lineno - 1]
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise DataError(
                f"{path}, line {lineno}: expected {len(columns)} tab-separated fields "
                f"({', '.join(columns)}), found {len(fields)}"
            )
        for column, position in zip(texts, text_pos):
            column.append(fields[position])
        if label_pos is not None:
            try:
                labels.append(parse_label(fields[label_pos]))
            except (KeyError, ValueError):
                raise DataError(f"{path}, line {lineno}: {_describe_label_error(task, fields[label_pos])}") from None
        if index_pos is None:
            index.append(len(index))
        else:
            try:
                index.append(int(fields[index_pos]))
            except ValueError:
                raise DataError(f"{path}, line {lineno}: index {fields[index_pos]!r} is not an integer") from None

    n = len(texts[0])
    if label_pos is None:
        label_array = _unlabeled(task, n)
    else:
        label_array = np.asarray(labels, np.float32 if task.is_regression else np.int32)
    return Examples(
        text_a=texts[0],
        text_b=texts[1] if len(texts) == 2 else None,
        labels=label_array.reshape(n),
        index=np.asarray(index, np.int64).reshape(n),
        has_labels=label_pos is not None,
        source_files=(str(path),),
        task=task.name,
        split=split,
    )


# ------------------------------------------------------------- hub / tfds style columns


def _column(columns: dict[str, list], names: Sequence[str]) -> list | None:
    lowered = {k.strip().lstrip("\ufeff").lower(): v for k, v in columns.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def _to_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _label_id(task: Task, value: Any) -> float | int | None:
    """The label id (or score) of one hub/tfds/csv value; None for "no label" (-1)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        text = value.strip()
        if task.label_names is not None and text in task.label_names:
            return task.label_names.index(text)
        value = float(text)  # ValueError is reported by the caller
    if value is None:
        raise ValueError
    value = float(value)
    if value == -1:
        return None
    if task.is_regression:
        if not math.isfinite(value):
            raise ValueError
        return value
    if value != int(value) or not 0 <= value < task.num_labels:
        raise ValueError
    return int(value)


def _from_columns(
    task: Task, split: str, columns: dict[str, list], origin: str, source_files: tuple[str, ...] = ()
) -> Examples:
    """Examples from named columns as the hub, tfds or a csv/parquet file give them."""
    texts = []
    for hub_name, tsv_name in zip(task.hf_text_columns, task.text_columns):
        column = _column(columns, (hub_name, tsv_name))
        if column is None:
            raise DataError(f"{origin}: no column {hub_name!r} for task {task.name} (columns: {', '.join(columns)})")
        texts.append([_to_str(v) for v in column])
    n = len(texts[0])
    raw_labels = _column(columns, ("label",) + ((task.label_column,) if task.label_column else ()))
    raw_index = _column(columns, ("idx", "index", "id"))

    labels = _unlabeled(task, n)
    has_labels = False
    if raw_labels is not None:
        ids = []
        for row, value in enumerate(raw_labels):
            try:
                ids.append(_label_id(task, value))
            except (TypeError, ValueError):
                raise DataError(f"{origin}, row {row + 1}: {_describe_label_error(task, _to_str(value))}") from None
        missing = sum(i is None for i in ids)
        if 0 < missing < n:
            row = ids.index(None)
            raise DataError(f"{origin}, row {row + 1}: label -1 (none) in a split whose other rows have labels")
        if n and missing == 0:
            labels = np.asarray(ids, labels.dtype)
            has_labels = True
    if raw_index is None:
        index = np.arange(n, dtype=np.int64)
    else:
        try:
            index = np.asarray([int(_to_str(v)) for v in raw_index], np.int64).reshape(n)
        except ValueError:
            raise DataError(f"{origin}: index column holds a value that is not an integer") from None
    return Examples(
        text_a=texts[0],
        text_b=texts[1] if len(texts) == 2 else None,
        labels=labels,
        index=index,
        has_labels=has_labels,
        source_files=source_files,
        task=task.name,
        split=split,
    )


def _local_files(data_files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    given = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    if not given:
        raise DataError("data_files is empty")
    paths = [Path(p) for p in given]
    for path in paths:
        if not path.is_file():
            raise DataError(f"missing data file {path}; files there: {_listing(path.parent, dirs=False)}")
    return paths


def _load_local(paths: list[Path], task: Task, cache_dir: str | None) -> Any:
    import datasets  # heavy: only this source needs it

    kinds = {p.suffix.lower() for p in paths}
    if len(kinds) != 1 or kinds.pop() not in (".parquet", ".csv", ".tsv"):
        raise DataError(f"data_files must all be .parquet, .csv or .tsv: {', '.join(map(str, paths))}")
    suffix = paths[0].suffix.lower()
    files = [str(p) for p in paths]
    if suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache_dir)

    sep = "\t" if suffix == ".tsv" else ","
    with open(paths[0], encoding="utf-8-sig", newline="") as f:
        first = f.readline().rstrip("\r\n")
    names = first.split("\t") if sep == "\t" else next(csv.reader([first]), [])
    options: dict[str, Any] = {}
    wanted = {n.lower() for n in (*task.text_columns, *task.hf_text_columns)}
    headerless = next(iter(task.headerless_columns.values()), None)
    if headerless and not wanted & {n.strip().lower() for n in names} and len(names) == len(headerless):
        names, options = list(headerless), {"column_names": list(headerless), "header": None}
    # Every column as a string: pandas would turn "007" or "null" into numbers / NaN.
    features = datasets.Features({n: datasets.Value("string") for n in names})
    if sep == "\t":
        options.update(delimiter="\t", quoting=3)  # no quoting: GLUE texts hold bare quotes
    return datasets.load_dataset(
        "csv",
        data_files=files,
        split="train",
        cache_dir=cache_dir,
        features=features,
        keep_default_na=False,
        na_filter=False,
        lineterminator="\n",
        encoding="utf-8",
        **options,
    )


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception of `error`'s `raise ... from` chain (itself if none)."""
    seen = {id(error)}
    while True:
        inner = error.__cause__
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (its host name does not resolve), or
    None: when it may be. Skipped (None) in offline mode (`HF_HUB_OFFLINE`), where
    `datasets` reads its local cache."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"{host} does not resolve: {e.strerror or e}"
    return None


def read_hf_datasets(
    task: Task | str,
    split: str,
    *,
    data_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    cache_dir: str | None = None,
) -> Examples:
    """One split through Hugging Face `datasets`.

    With `data_files` (local .parquet, .csv or .tsv files; hub or GLUE column
    names) nothing is downloaded and `split` only names the result; without,
    the split is loaded from the hub dataset `nyu-mll/glue`.
    """
    task = get_task(task)
    split = check_split(task, split)
    if data_files is not None:
        paths = _local_files(data_files)
        try:
            dataset = _load_local(paths, task, cache_dir)
        except DataError:
            raise
        except Exception as e:  # pandas/arrow parse errors
            cause = _root_cause(e)  # datasets wraps them in "An error occurred while generating"
            raise DataError(
                f"cannot read {', '.join(map(str, paths))}: {type(cause).__name__}: {first_line(cause)}"
            ) from None
        origin, files = ", ".join(map(str, paths)), tuple(map(str, paths))
    else:
        import datasets  # heavy: only this source needs it

        hub_split = task.hf_splits[split]
        try:
            unreachable = _hub_unreachable()
            if unreachable:  # fail now, not after the hub client's ~25 s of retries
                raise ConnectionError(unreachable)
            dataset = datasets.load_dataset("nyu-mll/glue", task.hf_config, split=hub_split, cache_dir=cache_dir)
        except Exception as e:
            raise DataError(
                f"cannot load nyu-mll/glue {task.hf_config}/{hub_split} from the Hugging "
                f"Face hub ({type(e).__name__}: {first_line(e)}); point it at a local "
                "copy of GLUE: --config.data.dir=/path/to/glue with data.source=dir (or "
                "GLUE_DIR=/path/to/glue), or pass data_files"
            ) from None
        origin, files = f"nyu-mll/glue {task.hf_config}/{hub_split}", ()
    return _from_columns(task, split, dataset.to_dict(), origin, files)


def read_tfds(task: Task | str, split: str, *, data_dir: str | None = None) -> Examples:
    """One split from tensorflow-datasets' `glue/<config>` (needs TensorFlow)."""
    task = get_task(task)
    split = check_split(task, split)
    try:  # optional, and heavy: only this source needs TensorFlow
        import tensorflow  # noqa: F401
    except ImportError:
        raise DataError(
            "tensorflow-datasets' GLUE needs TensorFlow: pip install tensorflow (or use data.source=dir)"
        ) from None
    import tensorflow_datasets as tfds  # heavy: only this source needs it

    name, tfds_split = f"glue/{task.hf_config}", task.hf_splits[split]
    try:
        dataset = tfds.load(name, split=tfds_split, data_dir=data_dir)
    except Exception as e:
        raise DataError(
            f"cannot load tensorflow-datasets {name} split {tfds_split} ({type(e).__name__}: {first_line(e)})"
        ) from None
    columns: dict[str, list] = {}
    for row in tfds.as_numpy(dataset):
        for key, value in row.items():
            columns.setdefault(key, []).append(value.item() if isinstance(value, np.generic) else value)
    if not columns:
        raise DataError(f"tensorflow-datasets {name} split {tfds_split} is empty")
    return _from_columns(task, split, columns, f"tensorflow-datasets {name}/{tfds_split}")


def read_text_file(task: Task | str, path: str | os.PathLike) -> Examples:
    """Unlabeled examples, one per line (a tab separates a sentence pair), e.g.
    for FastBERT's self-distillation, which needs no labels."""
    task = get_task(task)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such text file")
    pairs = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) > len(task.text_columns):
            raise DataError(
                f"{path}, line {number}: {len(fields)} tab-separated fields, but task "
                f"{task.name} takes {len(task.text_columns)}"
            )
        pairs.append(fields)
    if not pairs:
        raise DataError(f"{path}: no examples (one per line)")
    lines = pairs
    text_b = [f[1] if len(f) > 1 else "" for f in pairs] if task.is_pair else None
    return Examples(
        text_a=[f[0] for f in pairs],
        text_b=text_b,
        labels=_unlabeled(task, len(lines)),
        index=np.arange(len(lines)),
        has_labels=False,
        source_files=(str(path),),
        task=task.name,
        split="unlabeled",
    )


def load_examples(
    task_name: Task | str,
    split: str,
    *,
    source: str = "dir",
    data_dir: str | os.PathLike | None = None,
    data_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    max_examples: int = 0,
) -> Examples:
    """The examples of one split from `source` ("dir", "hf" or "tfds").

    A task described in the config (`rome_jax.data.tasks.CustomTask`) reads its own
    files (`rome_jax.data.custom`) whatever the source. Otherwise
    source="dir" reads `data_dir` (default: the GLUE_DIR environment variable);
    "hf" reads `data_files` or the hub; "tfds" reads tensorflow-datasets with
    `data_dir` as its data directory. `max_examples > 0` keeps the first rows.
    """
    if max_examples < 0:
        raise ConfigError(f"max_examples must be >= 0, got {max_examples}")
    task = get_task(task_name)
    if isinstance(task, CustomTask):  # the config names its files: source and data_dir unused
        examples = read_custom(task, check_split(task, split))
    elif source == "dir":
        if data_dir is None:
            data_dir = os.environ.get("GLUE_DIR")
            if not data_dir:
                raise ConfigError("data.source=dir needs data_dir (or the GLUE_DIR environment variable)")
        examples = read_glue_dir(task_name, split, data_dir)
    elif source == "hf":
        examples = read_hf_datasets(task_name, split, data_files=data_files)
    elif source == "tfds":
        examples = read_tfds(task_name, split, data_dir=None if data_dir is None else str(data_dir))
    else:
        raise ConfigError(f"unknown data.source {source!r} (known: {', '.join(SOURCES)})")
    if max_examples:
        examples = examples.head(max_examples)
    if not len(examples):
        raise DataError(
            f"split {examples.split} of task {examples.task} has no examples "
            f"({', '.join(examples.source_files) or source})"
        )
    return examples
