"""GLUE examples from three sources, tokenized features with a disk cache, and batches.

Pipeline: `load_examples` (original GLUE TSVs, Hugging Face `datasets`, or
tensorflow-datasets) -> `Examples` (columns of texts, label ids, row ids) ->
`tokenize_examples` -> `Features` ([N, max_length] int32 arrays, cached as .npz) ->
`BatchIterator` (static-shape numpy batches, sharded over processes, resumable).

Every row is padded to `max_length` rather than bucketed by length: the model then
compiles once per batch shape, and eval batches keep that shape by adding masked
padding rows (`example_mask`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rome_jax.errors import ConfigError, DataError, first_line
from rome_jax.glue import Task, check_split, get_task

logger = logging.getLogger(__name__)

SOURCES = ("dir", "hf", "tfds")
_CACHE_FORMAT = 1
_TOKENIZE_CHUNK = 4096


# ----------------------------------------------------------------------------- examples


@dataclasses.dataclass
class Examples:
    """The rows of one split, column by column (N rows).

    text_a / text_b: the texts, exactly as in the source (no stripping);
      text_b is None for single-sentence tasks.
    labels: [N] int32 label ids, or float32 scores for STS-B; -1 / NaN where the
      split has no labels (`has_labels` False).
    index: [N] int64, the source's index/id column where there is one, else the
      0-based row number.
    source_files: the files read (empty for the hub).
    """

    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray
    index: np.ndarray
    has_labels: bool = True
    source_files: tuple[str, ...] = ()
    task: str = ""
    split: str = ""

    def __len__(self) -> int:
        return len(self.text_a)

    def head(self, n: int) -> Examples:
        """The first `n` rows."""
        return dataclasses.replace(
            self, text_a=self.text_a[:n], text_b=None if self.text_b is None else self.text_b[:n],
            labels=self.labels[:n], index=self.index[:n])


def _unlabeled(task: Task, n: int) -> np.ndarray:
    if task.is_regression:
        return np.full(n, np.nan, np.float32)
    return np.full(n, -1, np.int32)


def _label_parser(task: Task):
    """A function from a label string to its id (or score); raises ValueError."""
    if task.is_regression:
        def parse_score(text: str) -> float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        return parse_score
    ids = {name: i for i, name in enumerate(task.label_names)}
    return lambda text: ids[text.strip()]


def _describe_label_error(task: Task, value: str) -> str:
    if task.is_regression:
        return f"score {value!r} is not a finite number"
    return f"unknown label {value!r} (known: {', '.join(task.label_names)})"


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
    raise DataError(f"no directory for task {task.name} in {data_dir}: expected "
                    f"{' or '.join(str(data_dir / n) for n in names)}; "
                    f"directories there: {_listing(data_dir, dirs=True)}")


def _split_file(task: Task, split: str, data_dir: str | os.PathLike) -> Path:
    directory = _task_directory(task, Path(data_dir))
    candidates = (task.split_files[split], *task.alt_file_names)
    for name in candidates:
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"missing {split} file of task {task.name}: expected {directory / candidates[0]}; "
                    f"files there: {_listing(directory, dirs=False)}")


def _read_lines(path: Path) -> list[str]:
    """The file's lines. Only "\\n" ends a line: texts may hold other line breaks."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 ({e.reason})") from None
    text = text.removeprefix("\ufeff")  # MRPC train/dev headers start with a BOM
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


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
    lines = _read_lines(path)
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
            raise DataError(f"{path}, line 1: header has no column {name!r} "
                            f"(columns: {', '.join(columns)})")
        return position

    text_pos = [required(name) for name in task.text_columns]
    label_pos = None if task.label_column is None else _find_column(columns, task.label_column)
    if label_pos is None and split not in task.test_splits:
        required(task.label_column)
    index_pos = None if headerless else next(
        (p for p in (_find_column(columns, n) for n in ("index", "id")) if p is not None), None)

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
            raise DataError(f"{path}, line {lineno}: expected {len(columns)} tab-separated fields "
                            f"({', '.join(columns)}), found {len(fields)}")
        for column, position in zip(texts, text_pos):
            column.append(fields[position])
        if label_pos is not None:
            try:
                labels.append(parse_label(fields[label_pos]))
            except (KeyError, ValueError):
                raise DataError(f"{path}, line {lineno}: "
                                f"{_describe_label_error(task, fields[label_pos])}") from None
        if index_pos is None:
            index.append(len(index))
        else:
            try:
                index.append(int(fields[index_pos]))
            except ValueError:
                raise DataError(f"{path}, line {lineno}: index {fields[index_pos]!r} "
                                "is not an integer") from None

    n = len(texts[0])
    if label_pos is None:
        label_array = _unlabeled(task, n)
    else:
        label_array = np.asarray(labels, np.float32 if task.is_regression else np.int32)
    return Examples(text_a=texts[0], text_b=texts[1] if len(texts) == 2 else None,
                    labels=label_array.reshape(n), index=np.asarray(index, np.int64).reshape(n),
                    has_labels=label_pos is not None, source_files=(str(path),),
                    task=task.name, split=split)


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
        if not task.is_regression and text in task.label_names:
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


def _from_columns(task: Task, split: str, columns: dict[str, list], origin: str,
                  source_files: tuple[str, ...] = ()) -> Examples:
    """Examples from named columns as the hub, tfds or a csv/parquet file give them."""
    texts = []
    for hub_name, tsv_name in zip(task.hf_text_columns, task.text_columns):
        column = _column(columns, (hub_name, tsv_name))
        if column is None:
            raise DataError(f"{origin}: no column {hub_name!r} for task {task.name} "
                            f"(columns: {', '.join(columns)})")
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
                raise DataError(f"{origin}, row {row + 1}: "
                                f"{_describe_label_error(task, _to_str(value))}") from None
        missing = sum(i is None for i in ids)
        if 0 < missing < n:
            row = ids.index(None)
            raise DataError(f"{origin}, row {row + 1}: label -1 (none) in a split whose other "
                            "rows have labels")
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
    return Examples(text_a=texts[0], text_b=texts[1] if len(texts) == 2 else None,
                    labels=labels, index=index, has_labels=has_labels,
                    source_files=source_files, task=task.name, split=split)


def _local_files(data_files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    paths = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    if not paths:
        raise DataError("data_files is empty")
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.is_file():
            raise DataError(f"missing data file {path}; files there: "
                            f"{_listing(path.parent, dirs=False)}")
    return paths


def _load_local(paths: list[Path], task: Task, cache_dir: str | None):
    import datasets  # heavy; only this source needs it

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
        "csv", data_files=files, split="train", cache_dir=cache_dir, features=features,
        keep_default_na=False, na_filter=False, lineterminator="\n", encoding="utf-8", **options)


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception of `error`'s `raise ... from` chain (itself if none)."""
    seen = {id(error)}
    while True:
        inner = error.__cause__
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def read_hf_datasets(task: Task | str, split: str, *,
                     data_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                     cache_dir: str | None = None) -> Examples:
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
            raise DataError(f"cannot read {', '.join(map(str, paths))}: "
                            f"{type(cause).__name__}: {first_line(cause)}") from None
        origin, files = ", ".join(map(str, paths)), tuple(map(str, paths))
    else:
        import datasets

        hub_split = task.hf_splits[split]
        try:
            dataset = datasets.load_dataset("nyu-mll/glue", task.hf_config, split=hub_split,
                                            cache_dir=cache_dir)
        except Exception as e:
            raise DataError(f"cannot load nyu-mll/glue {task.hf_config}/{hub_split} from the Hugging "
                            f"Face hub ({type(e).__name__}: {first_line(e)}); pass a local GLUE "
                            "directory (data.source=dir) or data_files") from None
        origin, files = f"nyu-mll/glue {task.hf_config}/{hub_split}", ()
    return _from_columns(task, split, dataset.to_dict(), origin, files)


def read_tfds(task: Task | str, split: str, *, data_dir: str | None = None) -> Examples:
    """One split from tensorflow-datasets' `glue/<config>` (needs TensorFlow)."""
    task = get_task(task)
    split = check_split(task, split)
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise DataError("tensorflow-datasets' GLUE needs TensorFlow: pip install tensorflow "
                        "(or use data.source=dir)") from None
    import tensorflow_datasets as tfds

    name, tfds_split = f"glue/{task.hf_config}", task.hf_splits[split]
    try:
        dataset = tfds.load(name, split=tfds_split, data_dir=data_dir)
    except Exception as e:
        raise DataError(f"cannot load tensorflow-datasets {name} split {tfds_split} "
                        f"({type(e).__name__}: {first_line(e)})") from None
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
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) > len(task.text_columns):
            raise DataError(f"{path}, line {number}: {len(fields)} tab-separated fields, but task "
                            f"{task.name} takes {len(task.text_columns)}")
        pairs.append(fields)
    if not pairs:
        raise DataError(f"{path}: no examples (one per line)")
    lines = pairs
    text_b = [f[1] if len(f) > 1 else "" for f in pairs] if task.is_pair else None
    return Examples(text_a=[f[0] for f in pairs], text_b=text_b, labels=_unlabeled(task, len(lines)),
                    index=np.arange(len(lines)), has_labels=False, source_files=(str(path),),
                    task=task.name, split="unlabeled")


def load_examples(task_name: Task | str, split: str, *, source: str = "dir",
                  data_dir: str | os.PathLike | None = None,
                  data_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                  max_examples: int = 0) -> Examples:
    """The examples of one split from `source` ("dir", "hf" or "tfds").

    source="dir" reads `data_dir` (default: the GLUE_DIR environment variable);
    "hf" reads `data_files` or the hub; "tfds" reads tensorflow-datasets with
    `data_dir` as its data directory. `max_examples > 0` keeps the first rows.
    """
    if max_examples < 0:
        raise ConfigError(f"max_examples must be >= 0, got {max_examples}")
    if source == "dir":
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
        raise DataError(f"split {examples.split} of task {examples.task} has no examples "
                        f"({', '.join(examples.source_files) or source})")
    return examples


# ----------------------------------------------------------------------------- features


@dataclasses.dataclass
class Features:
    """Tokenized examples, every row padded to max_length T.

    input_ids / attention_mask / token_type_ids: [N, T] int32 (token_type_ids are
      zeros for tokenizers without them, e.g. RoBERTa).
    labels: [N] int32 ids or float32 scores (-1 / NaN when `has_labels` is False).
    index: [N] int64 row ids from `Examples.index`.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    has_labels: bool = True

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_length(self) -> int:
        return int(self.input_ids.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "has_labels"}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides the tokenizer's output (not its transient padding state)."""
    h = hashlib.sha256()
    settings = [type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")),
                str(getattr(tokenizer, "truncation_side", "")), str(getattr(tokenizer, "padding_side", "")),
                str(getattr(tokenizer, "pad_token_id", "")),
                list(getattr(tokenizer, "model_input_names", []))]
    h.update(json.dumps(settings).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # A call with truncation/padding leaves them set on the backend; they are ours.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(repr(sorted(getattr(tokenizer, "init_kwargs", {}).items())).encode())
    return h.hexdigest()


def _examples_digest(examples: Examples) -> str:
    h = hashlib.md5()
    for column in (examples.text_a, examples.text_b):
        h.update(b"\x01" if column is None else f"\x02{len(column)}".encode())
        for text in column or ():
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
    h.update(np.ascontiguousarray(examples.labels).tobytes())
    h.update(examples.labels.dtype.str.encode())
    h.update(np.ascontiguousarray(examples.index, np.int64).tobytes())
    h.update(b"1" if examples.has_labels else b"0")
    return h.hexdigest()


def _tokenize(examples: Examples, tokenizer: Any, max_length: int) -> dict[str, np.ndarray]:
    return tokenize_texts(tokenizer, examples.text_a, examples.text_b, max_length)


def tokenize_texts(tokenizer: Any, text_a: Sequence[str], text_b: Sequence[str] | None,
                   max_length: int) -> dict[str, np.ndarray]:
    """HF fast tokenizer on sentences or pairs, truncated ("longest_first" for pairs)
    and padded to `max_length`: int32 `input_ids`, `attention_mask`,
    `token_type_ids` [N, max_length] (zeros where the tokenizer has no types)."""
    if isinstance(text_a, str) or isinstance(text_b, str):
        raise ValueError("give lists of sentences (one string would be read one character a sentence): "
                         f"[{(text_a if isinstance(text_a, str) else text_b)[:40]!r}]")
    text_a = list(text_a)
    n = len(text_a)
    if text_b is not None and len(text_b := list(text_b)) != n:
        raise ValueError(f"pairs need as many second sentences as first ones: {len(text_b)} against {n}")
    out = {k: np.zeros((n, max_length), np.int32)
           for k in ("input_ids", "attention_mask", "token_type_ids")}
    pair = text_b is not None
    text_b = list(text_b) if pair else None
    for start in range(0, n, _TOKENIZE_CHUNK):
        stop = min(n, start + _TOKENIZE_CHUNK)
        encoded = tokenizer(
            text_a[start:stop], text_b[start:stop] if pair else None,
            max_length=max_length, truncation="longest_first" if pair else True,
            padding="max_length", return_attention_mask=True, return_tensors="np")
        for key in out:
            if key in encoded:
                value = np.asarray(encoded[key])
                if value.shape != (stop - start, max_length):
                    raise DataError(f"tokenizer returned {key} of shape {value.shape}, "
                                    f"expected {(stop - start, max_length)}")
                out[key][start:stop] = value
    return out


def tokenize_examples(examples: Examples, tokenizer: Any, max_length: int, *,
                      cache_dir: str | os.PathLike | None = None) -> Features:
    """Tokenize every row to exactly `max_length` tokens (pairs truncated longest-first).

    With `cache_dir`, the arrays are stored as an .npz keyed by the tokenizer's
    fingerprint, max_length and a digest of the rows (texts, labels, ids), and a
    later call with the same inputs loads them without tokenizing.
    """
    minimum = 3 if examples.text_b is not None else 2
    if max_length < minimum:
        raise ConfigError(f"max_length must be at least {minimum} for task {examples.task or '?'}, "
                          f"got {max_length}")
    path = key = None
    if cache_dir is not None:
        key = hashlib.sha256(json.dumps(
            [_CACHE_FORMAT, tokenizer_fingerprint(tokenizer), int(max_length),
             _examples_digest(examples)]).encode()).hexdigest()
        name = f"{examples.task or 'examples'}-{examples.split or 'split'}-{key[:24]}.npz"
        path = Path(cache_dir) / name
        cached = _load_cache(path, key, len(examples), max_length)
        if cached is not None:
            logger.info("loaded features from %s", path)
            return cached

    arrays = _tokenize(examples, tokenizer, max_length)
    features = Features(labels=examples.labels.copy(), index=np.asarray(examples.index, np.int64),
                        has_labels=examples.has_labels, **arrays)
    if path is not None:
        _save_cache(path, key, features)
        logger.info("saved features to %s", path)
    return features


def _load_cache(path: Path, key: str, n: int, max_length: int) -> Features | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["cache_key"]) != key:
                return None
            features = Features(**{k: z[k] for k in ("input_ids", "attention_mask", "token_type_ids",
                                                     "labels", "index")},
                                has_labels=bool(z["has_labels"]))
    except Exception as e:  # a truncated or foreign file: tokenize again and overwrite it
        logger.warning("ignoring unreadable feature cache %s (%s)", path, e)
        return None
    if features.input_ids.shape != (n, max_length):
        return None
    return features


def _save_cache(path: Path, key: str, features: Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, cache_key=np.asarray(key), has_labels=np.asarray(features.has_labels),
                     **features.arrays())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------ batches


class BatchIterator:
    """Static-shape batches of `features`, one process's share of each global batch.

    Each global batch holds `batch_size` rows; this process yields rows
    [process_index::process_count] of it, so every array has leading dimension
    b = batch_size // process_count:

      input_ids, attention_mask, token_type_ids: [b, T] int32
      labels: [b] int32 (float32 for regression)
      example_mask: [b] bool, False for padding rows
      index: [b] int64, the example's id (-1 for padding rows)

    Training (drop_remainder=True) drops the last partial batch of each epoch.
    Evaluation (drop_remainder=False) pads the last batch with copies of the first
    example, masked out by `example_mask`, so every example appears exactly once.
    With shuffle, epoch e visits rows in `np.random.default_rng([seed, e]).permutation(N)`
    (a negative seed taken modulo 2**64, as `jax.random.PRNGKey` takes it modulo 2**32).

    num_epochs=None means forever when drop_remainder is True and one pass when
    it is False (the evaluation default); pass a number to override.
    """

    def __init__(self, features: Features, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_remainder: bool = False, *, process_index: int = 0, process_count: int = 1,
                 num_epochs: int | None = None):
        n = len(features)
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if process_count <= 0 or not 0 <= process_index < process_count:
            raise ConfigError(f"process_index {process_index} is not in [0, {process_count})")
        if batch_size % process_count:
            raise ConfigError(f"batch_size {batch_size} is not divisible by the "
                              f"{process_count} processes")
        if n == 0:
            raise DataError("no examples to batch")
        if drop_remainder and n < batch_size:
            raise ConfigError(f"batch_size {batch_size} exceeds the {n} examples: with "
                              "drop_remainder no batch can be formed")
        if num_epochs is not None and num_epochs < 0:
            raise ConfigError(f"num_epochs must be >= 0, got {num_epochs}")
        self.features = features
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_remainder = bool(drop_remainder)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.num_epochs = num_epochs if num_epochs is not None else (None if drop_remainder else 1)
        self._epoch = 0
        self._position = 0
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def num_examples(self) -> int:
        return len(self.features)

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch."""
        if self.drop_remainder:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    @property
    def epoch(self) -> int:
        return self._epoch

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed % 2**64, epoch]).permutation(self.num_examples)
            else:
                order = np.arange(self.num_examples)
            self._order = (epoch, order)
        return self._order[1]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_epochs is not None and self._epoch >= self.num_epochs:
            raise StopIteration
        start = self._position * self.batch_size
        rows = self._epoch_order(self._epoch)[start:start + self.batch_size]
        if len(rows) < self.batch_size:
            rows = np.concatenate([rows, np.full(self.batch_size - len(rows), -1, rows.dtype)])
        rows = rows[self.process_index::self.process_count]
        mask = rows >= 0
        take = np.where(mask, rows, 0)
        f = self.features
        batch = {
            "input_ids": f.input_ids[take],
            "attention_mask": f.attention_mask[take],
            "token_type_ids": f.token_type_ids[take],
            "labels": f.labels[take],
            "example_mask": mask,
            "index": np.where(mask, np.asarray(f.index, np.int64)[take], -1),
        }
        self._position += 1
        if self._position >= self.steps_per_epoch:
            self._epoch += 1
            self._position = 0
        return batch

    def get_state(self) -> dict[str, int | bool]:
        """The position, as JSON-serialisable values; the same for every process."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed,
                "shuffle": self.shuffle, "batch_size": self.batch_size,
                "num_examples": self.num_examples}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a `get_state()`: the next batch is the one that followed it."""
        for key in ("seed", "shuffle", "batch_size", "num_examples"):
            if key in state and state[key] != getattr(self, key):
                raise ConfigError(f"data iterator state has {key}={state[key]!r} but this iterator "
                                  f"has {getattr(self, key)!r}")
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"data iterator state needs integer 'epoch' and 'position', "
                              f"got {state!r}") from None
        if epoch < 0 or not 0 <= position < max(self.steps_per_epoch, 1):
            raise ConfigError(f"data iterator state epoch={epoch} position={position} is out of "
                              f"range ({self.steps_per_epoch} batches per epoch)")
        self._epoch, self._position = epoch, position
