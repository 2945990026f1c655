"""A task described in the config (`CustomTask`) and its examples.

Files with a header row, the format from the extension or `data.custom.format`:

- csv: comma-separated, RFC 4180 quoting ("a, b" and "" inside quotes);
- tsv: tab-separated, no quoting (as the GLUE TSVs: texts may hold bare quotes);
- jsonl: one JSON object per line (JSON Lines; .json is read the same way);
- parquet: any Parquet file (pyarrow).

Or a Hugging Face dataset (`data.custom.hf_dataset`: a hub name, or a local
directory of data files read offline). Every problem is a `DataError` naming the
file, the row (1 = the first row after the header; "line" for text formats) and
the value: a missing column (with the columns the file has), an empty text, a
label the training labels lack, a regression label that is not a number.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rome_jax.data.glue import Task
from rome_jax.data.rows import Examples
from rome_jax.errors import ConfigError, DataError, first_line
from rome_jax.files import read_lines

FORMATS = ("csv", "tsv", "jsonl", "parquet")
EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}

HF_SPLITS = {"train": ("train",), "dev": ("validation", "dev", "valid"), "test": ("test",)}
"""Our split -> the dataset split names tried, in order, for data.custom.hf_dataset."""


@dataclasses.dataclass(frozen=True)
class CustomTask(Task):
    """A task read from your own files (or a Hugging Face dataset) as the config describes it
    (`rome_jax.data.tasks.build_task` makes one).

    data_files: split ("train", "dev", "test") -> path; empty with `hf_dataset`.
    data_format: csv, tsv, jsonl or parquet; "" to take each file's extension.
    hf_dataset: a hub dataset name or a local dataset directory ("" with files).
    label_source: where the label names came from (for messages).
    """

    label_column: str  # a task from the config always has labels (possibly not in its test file)
    data_files: Mapping[str, str] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}), hash=False)
    data_format: str = ""
    hf_dataset: str = ""
    label_source: str = "data.custom.label_names"

    def file_format(self, path: str) -> str:
        return file_format(path, self.data_format)


def file_format(path: str, given: str = "") -> str:
    """csv, tsv, jsonl or parquet: `given` if set, else from the file's extension."""
    if given:
        name = given.strip().lower().lstrip(".")
        name = {"json": "jsonl", "ndjson": "jsonl", "tab": "tsv", "pq": "parquet"}.get(name, name)
        if name not in FORMATS:
            raise ConfigError(
                f"config data.custom.format must be one of {', '.join(FORMATS)} "
                f"(or empty: from the extension); got {given!r}"
            )
        return name
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise ConfigError(
            f"{path}: unknown data format {suffix or '(no extension)'!r} (known: "
            f"{', '.join(EXTENSIONS)}); set data.custom.format to one of "
            f"{', '.join(FORMATS)}"
        )
    return EXTENSIONS[suffix]


def label_order(values: Iterable[str]) -> tuple[str, ...]:
    """Label names read from a training file, in a deterministic order: numeric when every
    label is an integer ("2" before "10"), else sorted as strings."""
    distinct = set(values)
    try:
        return tuple(sorted(distinct, key=lambda v: (int(v), v)))
    except ValueError:
        return tuple(sorted(distinct))


class _Table:
    """Columns of one split: names in file order, values per column, and where each row is."""

    def __init__(
        self,
        origin: str,
        columns: list[str],
        data: dict[str, list[Any]],
        lines: list[int] | None = None,
        class_names: dict[str, list[str]] | None = None,
    ):
        self.origin, self.columns, self.data, self.lines = origin, columns, data, lines
        self.class_names = class_names or {}  # HF ClassLabel columns: id -> name

    def __len__(self) -> int:
        return len(next(iter(self.data.values()))) if self.data else 0

    def where(self, row: int) -> str:
        line = f" (line {self.lines[row]})" if self.lines else ""
        return f"{self.origin}, row {row + 1}{line}"

    def find(self, name: str) -> str | None:
        if name in self.data:
            return name
        lowered = {c.strip().lstrip("\ufeff").lower(): c for c in self.columns}
        return lowered.get(name.strip().lower())

    def classes(self, name: str) -> list[str] | None:
        """The class names of a HF ClassLabel column (its values are ids into them), or None."""
        found = self.find(name)
        return None if found is None else self.class_names.get(found)

    def column(self, name: str, key: str) -> list[Any]:
        found = self.find(name)
        if found is None:
            raise DataError(
                f"{self.origin}: no column {name!r} (config data.custom.{key}); "
                f"columns there: {', '.join(map(repr, self.columns)) or 'none'}"
            )
        return self.data[found]


# ------------------------------------------------------------------------- reading


def _read_csv(path: Path, delimiter: str) -> _Table:
    if delimiter == "\t":  # no quoting: split lines on tabs
        lines = read_lines(path)
        records = [(n, line.split("\t")) for n, line in enumerate(lines, start=1) if line]
    else:
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.reader(f)
                records, start = [], 1
                for fields in reader:
                    if fields:
                        records.append((start, fields))
                    start = reader.line_num + 1
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 ({e.reason})") from None
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
    if not records:
        raise DataError(f"{path}: empty file, expected a header row")
    header = [c.strip() for c in records[0][1]]
    header[0] = header[0].lstrip("\ufeff")
    kind = "tab" if delimiter == "\t" else "comma"
    data: dict[str, list[Any]] = {c: [] for c in header}
    if len(data) != len(header):
        twice = next(c for c in header if header.count(c) > 1)
        raise DataError(f"{path}, line 1: the header names column {twice!r} twice")
    line_numbers: list[int] = []
    for number, fields in records[1:]:
        if len(fields) != len(header):
            raise DataError(
                f"{path}, row {len(line_numbers) + 1} (line {number}): expected "
                f"{len(header)} {kind}-separated fields ({', '.join(header)}), "
                f"found {len(fields)}"
            )
        for name, value in zip(header, fields):
            data[name].append(value)
        line_numbers.append(number)
    return _Table(str(path), header, data, line_numbers)


def _read_jsonl(path: Path) -> _Table:
    columns: list[str] = []
    rows: list[dict[str, Any]] = []
    line_numbers: list[int] = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}, row {len(rows) + 1} (line {number}): not valid JSON ({e.msg}): {line[:80]!r}"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, row {len(rows) + 1} (line {number}): expected a JSON object, got {line[:80]!r}")
        columns.extend(k for k in row if k not in columns)
        rows.append(row)
        line_numbers.append(number)
    if not rows:
        raise DataError(f"{path}: no rows (JSON Lines: one object per line)")
    data = {c: [row.get(c) for row in rows] for c in columns}
    return _Table(str(path), columns, data, line_numbers)


def _read_parquet(path: Path) -> _Table:
    try:
        import pyarrow.parquet as pq  # optional: only Parquet files need it

        table = pq.read_table(path)
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read it as Parquet ({type(e).__name__}: {first_line(e)})") from None
    return _Table(str(path), list(table.column_names), table.to_pydict())


_TABLES: dict[tuple, _Table] = {}


def read_table(path: str | os.PathLike, data_format: str) -> _Table:
    """A data file's header and rows (the last few read are kept while unchanged)."""
    path = Path(path)
    if not path.is_file():
        parent = path.parent
        try:
            there = ", ".join(sorted(p.name for p in parent.iterdir() if p.is_file())) or "nothing"
        except OSError:
            there = f"{parent} does not exist"
        raise DataError(f"missing data file {path}; files there: {there}")
    stat = path.stat()
    key = (str(path.absolute()), data_format, stat.st_mtime_ns, stat.st_size)
    if key in _TABLES:
        return _TABLES[key]
    if data_format == "csv":
        table = _read_csv(path, ",")
    elif data_format == "tsv":
        table = _read_csv(path, "\t")
    elif data_format == "jsonl":
        table = _read_jsonl(path)
    else:
        table = _read_parquet(path)
    while len(_TABLES) >= 4:
        _TABLES.pop(next(iter(_TABLES)))
    _TABLES[key] = table
    return table


_HF_CACHE: dict[tuple[str, str], Any] = {}


def _hf_table(task: CustomTask, split: str) -> _Table:
    key = (task.hf_dataset, task.hf_config)
    if key not in _HF_CACHE:
        import datasets  # heavy: only a task read from a Hugging Face dataset needs it

        try:
            _HF_CACHE[key] = datasets.load_dataset(task.hf_dataset, task.hf_config or None)
        except Exception as e:
            raise DataError(
                f"cannot load the dataset {task.hf_dataset}"
                f"{'/' + task.hf_config if task.hf_config else ''} (data.custom.hf_dataset; "
                f"{type(e).__name__}: {first_line(e)}); offline, point it at a local "
                "directory of data files, or use data.custom.train_file/dev_file"
            ) from None
    splits = _HF_CACHE[key]
    name = next((n for n in HF_SPLITS[split] if n in splits), None)
    if name is None:
        raise DataError(
            f"dataset {task.hf_dataset} has no {split} split (tried "
            f"{', '.join(HF_SPLITS[split])}; it has {', '.join(splits)})"
        )
    dataset = splits[name]
    class_names = {}
    for column, feature in dataset.features.items():
        names = getattr(feature, "names", None)
        if names:
            class_names[column] = list(names)
    return _Table(f"{task.hf_dataset} {name}", list(dataset.column_names), dataset.to_dict(), class_names=class_names)


def split_table(task: CustomTask, split: str) -> _Table:
    if task.hf_dataset:
        return _hf_table(task, split)
    if split not in task.data_files:
        raise DataError(f"task {task.name} has no {split} file (config data.custom.{split}_file)")
    path = task.data_files[split]
    return read_table(path, task.file_format(path))


# ------------------------------------------------------------------------ values


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def label_key(value: Any) -> str:
    """A label value as the name it is matched by: "1" for 1, 1.0 and " 1 "."""
    if _is_missing(value):
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value).strip()


def _labels(table: _Table, task: CustomTask) -> list[Any]:
    values = table.column(task.label_column, "label")
    names = table.classes(task.label_column)
    if names:  # a HF ClassLabel column holds ids: give their names (-1: no label)
        return [None if v is None or v < 0 else names[v] for v in values]
    return values


def training_label_names(task: CustomTask) -> tuple[str, ...]:
    """The label names of the training data: a ClassLabel's own order, else `label_order`."""
    table = split_table(task, "train")
    raw = table.column(task.label_column, "label")
    names = table.classes(task.label_column)
    if names:
        return tuple(names)
    keys = []
    for row, value in enumerate(raw):
        key = label_key(value)
        if not key:
            raise DataError(f"{table.where(row)}: empty label (column {task.label_column!r})")
        keys.append(key)
    if not keys:
        raise DataError(f"{table.origin}: no rows")
    return label_order(keys)


def _text(value: Any) -> str:
    if _is_missing(value):
        return ""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_custom(task: CustomTask, split: str) -> Examples:
    """One split ("train", "dev" or "test") of a task described in the config."""
    if split not in task.splits:
        raise DataError(f"task {task.name} has no split {split!r} (known: {', '.join(task.splits)})")
    table = split_table(task, split)
    n = len(table)
    keys = ("text_a", "text_b")
    texts = []
    for column, key in zip(task.text_columns, keys):
        raw_texts = table.column(column, key)
        values = [_text(v) for v in raw_texts]
        for row, text in enumerate(values):
            if not text.strip():
                raise DataError(f"{table.where(row)}: empty text in column {column!r} (value {_show(raw_texts[row])})")
        texts.append(values)

    regression = task.is_regression
    labels = np.full(n, np.nan, np.float32) if regression else np.full(n, -1, np.int32)
    has_labels = False
    present = table.find(task.label_column) is not None
    raw = _labels(table, task) if present else None
    if raw is not None and split in task.test_splits and all(not label_key(v) for v in raw):
        raw = None  # a test file with an empty label column: unlabeled
    if raw is None and split not in task.test_splits:
        table.column(task.label_column, "label")  # the missing-column error
    if raw is not None:
        ids = {name: i for i, name in enumerate(task.label_names or ())}
        for row, value in enumerate(raw):
            key = label_key(value)
            if not key:
                raise DataError(f"{table.where(row)}: empty label (column {task.label_column!r})")
            if regression:
                try:
                    score = float(key)
                except ValueError:
                    score = math.nan
                if not math.isfinite(score):
                    raise DataError(
                        f"{table.where(row)}: label {_show(value)} is not a number (data.custom.regression is True)"
                    )
                labels[row] = score
            elif key in ids:
                labels[row] = ids[key]
            else:
                raise DataError(
                    f"{table.where(row)}: label {_show(value)} is not one of the "
                    f"task's labels ({', '.join(task.label_names or ())})"
                )
        has_labels = n > 0
    index = np.arange(n, dtype=np.int64)
    files = () if task.hf_dataset else (table.origin,)
    return Examples(
        text_a=texts[0],
        text_b=texts[1] if len(texts) == 2 else None,
        labels=labels,
        index=index,
        has_labels=has_labels,
        source_files=files,
        task=task.name,
        split=split,
    )


def _show(value: Any) -> str:
    return repr(value if not isinstance(value, str) else value[:80])


def parse_label_names(value: Any, key: str = "data.custom.label_names") -> tuple[str, ...] | None:
    """Label names from "a,b,c", '["a", "b"]' or a list; None for ""/None.

    ConfigError for an empty name or a name given twice.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                names = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"config {key} is not a valid JSON list ({e.msg}): {value!r}") from None
            if not isinstance(names, list):
                raise ConfigError(f"config {key} must be a list of names, got {value!r}")
        else:
            names = text.split(",")
    elif isinstance(value, (list, tuple)):
        names = list(value)
    else:
        raise ConfigError(f"config {key} must be a comma list or a JSON list, got {value!r}")
    names = [str(n).strip() for n in names]
    if any(not n for n in names):
        raise ConfigError(f"config {key} has an empty label name: {value!r}")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"config {key} lists label {n!r} twice: {value!r}")
        seen.add(n)
    return tuple(names)
