"""Predictions for a file of texts, streamed: readers (TSV, CSV, JSON Lines), writers
(JSON Lines, CSV, TSV) and the loop that predicts chunk by chunk (`predict_file`).

The command `predict.py` (rome_jax/commands/predict.py) is flags around
`predict_file`; its docstring says what goes in and out.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from rome_jax.errors import DataError

if TYPE_CHECKING:  # for annotations only: this module stays free of JAX (commands/predict.py imports it first)
    from rome_jax.exits.criteria import Criterion
    from rome_jax.serving.api import MultiExitModel
    from rome_jax.serving.predict import Predictions

CHUNK_ROWS = 4096
"""Rows read, predicted and written at a time."""

FORMATS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
ID_COLUMNS = ("id", "index")
DEFAULT_TEXT_COLUMNS = ("sentence", "text")


# ------------------------------------------------------------------------- reading


def input_format(path: str, first_line: str, given: str | None = None) -> str:
    """tsv, csv or jsonl: `given`, else the extension, else the first line (a JSON
    object, a tab, else csv)."""
    if given:
        return given
    ext = os.path.splitext(path)[1].lower() if path != "-" else ""
    if ext in FORMATS:
        return FORMATS[ext]
    stripped = first_line.lstrip("\ufeff").lstrip()
    return "jsonl" if stripped.startswith("{") else "tsv" if "\t" in first_line else "csv"


def _lines(stream: TextIO, origin: str) -> Iterator[str]:
    """The stream's lines; a UTF-8 error is a DataError naming the line."""
    count = 0
    try:
        for line in stream:
            count += 1
            yield line
    except UnicodeDecodeError as e:
        raise DataError(f"{origin}, line {count + 1}: not valid UTF-8 ({e.reason})") from None


class Rows:
    """The rows of a TSV, CSV or JSON Lines stream as dicts, lazily.

    Iterating yields (line, {column: value}); `columns` is the header (JSON Lines:
    the first object's keys). A malformed row raises DataError naming `origin` and
    its line.
    """

    def __init__(self, stream: TextIO, origin: str, fmt: str | None = None):
        self.origin = origin
        lines = _lines(stream, origin)
        first = next(lines, None)
        if first is None:
            raise DataError(f"{origin}: empty (a header row is needed)")
        first = first.removeprefix("\ufeff")
        self.format = input_format(origin, first, fmt)
        self._lines = itertools.chain([first], lines)
        if self.format == "jsonl":
            self._first = self._json(first, 1)
            self.columns = list(self._first) if self._first is not None else []
        else:
            if self.format == "tsv":  # tab-separated, no quoting (texts may hold bare quotes)
                source = (line.rstrip("\n").rstrip("\r") for line in self._lines)
                self._reader = csv.reader(source, delimiter="\t", quoting=csv.QUOTE_NONE)
            else:
                self._reader = csv.reader(self._lines, delimiter=",", quoting=csv.QUOTE_MINIMAL)
            try:
                header = next(self._reader)
            except csv.Error as e:
                raise DataError(f"{origin}, line 1: {e}") from None
            self.columns = [c.strip() for c in header]

    def _json(self, line: str, number: int) -> dict | None:
        if not line.strip():
            return None
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{self.origin}, line {number}: not a JSON object ({e.msg})") from None
        if not isinstance(value, dict):
            raise DataError(f"{self.origin}, line {number}: a JSON object expected, got {type(value).__name__}")
        return value

    def find(self, name: str) -> str | None:
        """The column called `name` (case and spaces ignored), or None."""
        if name in self.columns:
            return name
        lowered = {c.strip().lower(): c for c in self.columns}
        return lowered.get(name.strip().lower())

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        if self.format == "jsonl":
            if self._first is not None:
                yield 1, self._first
            for number, line in enumerate(self._lines, start=1):
                if number == 1:
                    continue
                value = self._json(line, number)
                if value is not None:
                    yield number, value
            return
        width = len(self.columns)
        while True:
            try:
                fields = next(self._reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(f"{self.origin}, line {self._reader.line_num}: {e}") from None
            number = self._reader.line_num
            if not fields or fields == [""]:
                continue
            if len(fields) != width:
                raise DataError(f"{self.origin}, line {number}: {len(fields)} fields, the header has {width}")
            yield number, dict(zip(self.columns, fields))


def text_columns(
    rows: Rows, text_a: str | None, text_b: str | None, task_columns: Sequence[str] = ()
) -> tuple[str, str | None]:
    """The columns read: those given, else the task's, else `sentence` or `text`.
    DataError naming the file and its columns when one is absent."""

    def need(name: str, what: str) -> str:
        found = rows.find(name)
        if found is None:
            raise DataError(
                f"{rows.origin}: no column {name!r} ({what}); columns there: "
                f"{', '.join(map(repr, rows.columns)) or 'none'}"
            )
        return found

    if text_a:
        a = need(text_a, "--text_a")
    elif task_columns:
        a = need(task_columns[0], "the task's first text column; or give --text_a")
    else:
        found = next((rows.find(n) for n in DEFAULT_TEXT_COLUMNS if rows.find(n)), None)
        if found is None:
            raise DataError(
                f"{rows.origin}: no column 'sentence' or 'text'; give --text_a (columns there: "
                f"{', '.join(map(repr, rows.columns)) or 'none'})"
            )
        a = found
    if text_b:
        b = need(text_b, "--text_b")
    elif not text_a and len(task_columns) > 1:
        b = need(task_columns[1], "the task's second text column; or give --text_b")
    else:
        b = None
    return a, b


def _text(rows: Rows, line: int, row: dict, column: str) -> str:
    value = row.get(column)
    if value is None:
        raise DataError(f"{rows.origin}, line {line}: no {column!r} value")
    if not isinstance(value, str):
        raise DataError(f"{rows.origin}, line {line}: {column!r} is {json.dumps(value)[:40]}, not a text")
    if not value.strip():
        raise DataError(f"{rows.origin}, line {line}: empty {column!r}")
    return value


# ------------------------------------------------------------------------- writing


class Writer:
    """Writes prediction rows as JSON Lines, CSV or TSV, a chunk at a time (complete
    lines, flushed)."""

    def __init__(self, stream: TextIO, fmt: str, label_names: Sequence[str] | None, num_labels: int):
        self.stream, self.format = stream, fmt
        self.regression = num_labels == 1
        self.names = [str(n) for n in label_names] if label_names else [str(i) for i in range(num_labels)]
        self._header = fmt != "jsonl"

    def _fields(self) -> list[str]:
        middle = ["score"] if self.regression else [f"p_{n}" for n in self.names]
        return ["id", "label", *middle, "exit_layer"]

    def write(self, ids: Sequence[Any], predictions: Predictions | _NoPredictions) -> None:
        buffer = io.StringIO()
        if self.format == "jsonl":
            for i, row in zip(ids, predictions.rows()):
                out = {"id": i, "label": row["label"]}
                if self.regression:
                    out["score"] = row["score"]
                else:
                    out["probabilities"] = dict(zip(self.names, row["probabilities"]))
                out["exit_layer"] = row["exit_layer"]
                buffer.write(json.dumps(out, ensure_ascii=False) + "\n")
        else:
            writer = csv.writer(buffer, delimiter="\t" if self.format == "tsv" else ",", lineterminator="\n")
            if self._header:
                writer.writerow(self._fields())
                self._header = False
            for i, row in zip(ids, predictions.rows()):
                middle = [row["score"]] if self.regression else row["probabilities"]
                writer.writerow([i, row["label"], *middle, row["exit_layer"]])
        self.stream.write(buffer.getvalue())
        self.stream.flush()

    def finish(self) -> None:
        if self._header:  # no rows: still a header
            self.write([], _NoPredictions())


class _NoPredictions:
    def rows(self) -> Iterator[dict]:
        return iter(())


def output_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower() if path and path != "-" else ""
    return {".csv": "csv", ".tsv": "tsv"}.get(ext, "jsonl")


# ------------------------------------------------------------------------- predicting


def _chunks(rows: Rows, size: int) -> Iterator[tuple[list, DataError | None]]:
    """Lists of (line, row) of at most `size`; a DataError ends the iteration with
    the rows read before it, paired with the error."""
    chunk: list = []
    iterator = iter(rows)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            if chunk:
                yield chunk, None
            return
        except DataError as e:
            yield chunk, e
            return
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk, None
            chunk = []


def predict_stream(
    model: MultiExitModel,
    rows: Rows,
    writer: Writer,
    *,
    text_a: str | None = None,
    text_b: str | None = None,
    task_columns: Sequence[str] = (),
    criterion: Criterion | str | None = "auto",
    batch_size: int = 64,
    max_length: int | None = None,
    progress: bool = False,
) -> dict:
    """Predicts every row of `rows` chunk by chunk (`CHUNK_ROWS`) and writes them.

    Returns {"examples", "seconds", "examples_per_s", "mean_layers", "num_layers",
    "criterion"}. A bad row raises DataError after the rows before it are written.
    """
    from rome_jax.serving import predict as predict_lib  # JAX: loaded when predicting, not on import

    column_a, column_b = text_columns(rows, text_a, text_b, task_columns)
    id_column = next((rows.find(n) for n in ID_COLUMNS if rows.find(n)), None)
    chosen = predict_lib.resolve_criterion(criterion, model.config, model.calibration)
    length = predict_lib.default_max_length(model.config, model.calibration) if max_length is None else max_length
    bar = None
    if progress:
        bar = tqdm(unit="ex", file=sys.stderr, dynamic_ncols=True, desc="predicting")
    start = time.perf_counter()
    count, layers, row_number = 0, 0, 0
    try:
        for chunk, error in _chunks(rows, CHUNK_ROWS):
            texts_a: list[str] = []
            texts_b: list[str] | None = [] if column_b else None
            ids: list[Any] = []
            good = 0
            for line, row in chunk:
                try:
                    texts_a.append(_text(rows, line, row, column_a))
                    if column_b and texts_b is not None:
                        texts_b.append(_text(rows, line, row, column_b))
                except DataError as e:  # predict the rows before it, then stop
                    error = e
                    texts_a = texts_a[:good]
                    texts_b = texts_b[:good] if texts_b is not None else None
                    break
                ids.append(row.get(id_column, row_number) if id_column else row_number)
                row_number += 1
                good += 1  # noqa: SIM113 - also counts across the break above
            if texts_a:
                out = predict_lib.predict(
                    model, texts_a, texts_b, criterion=chosen, batch_size=batch_size, max_length=length
                )
                writer.write(ids, out)
                count += len(out)
                layers += int(out.exit_layer.sum())
                if bar is not None:
                    bar.update(len(out))
            if error is not None:
                raise DataError(f"{error} ({count} rows before it predicted and written)")
        writer.finish()
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    return {
        "examples": count,
        "seconds": seconds,
        "examples_per_s": count / seconds if seconds else 0.0,
        "mean_layers": layers / count if count else float("nan"),
        "num_layers": model.config.num_layers,
        "criterion": predict_lib.describe(chosen),
    }


def summary_line(summary: dict) -> str:
    return (
        f"predicted {summary['examples']} examples in {summary['seconds']:.1f} s "
        f"({summary['examples_per_s']:.1f} examples/s), mean layers {summary['mean_layers']:.2f} of "
        f"{summary['num_layers']}, criterion {summary['criterion']}"
    )


def predict_file(
    model: MultiExitModel,
    input_path: str,
    output_path: str = "-",
    *,
    input_format: str | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    **options: Any,
) -> dict:
    """`predict_stream` from a file (or `-`: `stdin`) to a file (or `-`: `stdout`);
    the options are `predict_stream`'s. Returns its summary."""
    if input_path == "-":
        in_stream, origin, close_in = (stdin or sys.stdin), "<stdin>", False
    else:
        if not os.path.isfile(input_path):
            raise DataError(f"{input_path}: no such file")
        # only "\n" ends a line (a CSV's quoted texts may hold line breaks, a TSV's a bare "\r")
        in_stream = open(input_path, encoding="utf-8", newline="\n")  # noqa: SIM115 - closed below
        origin, close_in = input_path, True
    try:
        rows = Rows(in_stream, origin, input_format)
        if output_path in ("-", "", None):
            out_stream, close_out = (stdout or sys.stdout), False
        else:
            out_stream, close_out = open(output_path, "w", encoding="utf-8", newline=""), True  # noqa: SIM115
        try:
            writer = Writer(out_stream, output_format(output_path), model.label_names, model.config.num_labels)
            return predict_stream(model, rows, writer, **options)
        finally:
            if close_out:
                out_stream.close()
    finally:
        if close_in:
            in_stream.close()


# ------------------------------------------------------------------ calibration rows


def read_calibration_rows(
    path: str,
    *,
    task_columns: Sequence[str] = (),
    label_column: str | None = "label",
    label_names: Sequence[str] | None = None,
    regression: bool = False,
    text_a: str | None = None,
    text_b: str | None = None,
) -> tuple[list[str], list[str] | None, list[Any] | None]:
    """The texts (and labels, where the file has them) of a calibration file: TSV, CSV or
    JSON Lines with a header, read whole.

    Text columns as `text_columns` finds them (those given, else the task's, else
    `sentence` / `text`). Labels: the `label_column` when the file has it (a label
    name of `label_names`, or its id; a number for regression), else None: an
    unlabelled file calibrates the consistency target only. A row with a missing or
    unknown label is a DataError naming the file and line.
    -> (texts_a, texts_b or None, labels or None).
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such calibration file")
    with open(path, encoding="utf-8", newline="") as stream:
        rows = Rows(stream, path)
        a, b = text_columns(rows, text_a, text_b, task_columns)
        found = rows.find(label_column) if label_column else None
        texts_a: list[str] = []
        texts_b: list[str] = []
        labels: list[Any] = []
        for line, row in rows:
            texts_a.append(_text(rows, line, row, a))
            if b is not None:
                texts_b.append(_text(rows, line, row, b))
            if found is not None:
                labels.append(_label(rows.origin, line, row.get(found), label_names, regression))
    if not texts_a:
        raise DataError(f"{path}: no rows below the header")
    return texts_a, (texts_b if b is not None else None), (labels if found is not None else None)


def _label(origin: str, line: int, value: Any, names: Sequence[str] | None, regression: bool) -> Any:
    text = "" if value is None else str(value).strip()
    if not text:
        raise DataError(f"{origin}, line {line}: no label (leave the label column out to calibrate without labels)")
    if regression:
        try:
            return float(text)
        except ValueError:
            raise DataError(f"{origin}, line {line}: label {text!r} is not a number") from None
    if names and text in names:
        return list(names).index(text)
    if text.lstrip("-").isdigit() and (not names or 0 <= int(text) < len(names)):
        return int(text)
    known = ", ".join(map(repr, names or ()))
    raise DataError(f"{origin}, line {line}: unknown label {text!r} (labels: {known or 'integer ids'})")
