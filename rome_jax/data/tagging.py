"""Sequence-labelling data: readers of tagged sentences, the tag set, and the alignment
of words to sub-tokens.

- `read_conll` (one `WORD ... TAG` a line, a blank line between sentences),
  `read_jsonl` (`{"tokens": [...], "tags": [...]}` a line), `read_hf` (a Hugging Face
  dataset) and `read_tagged_file` (by extension) give `TaggedSentences`;
- `tag_set` gives the tags of a training set ("O", then "B-T", "I-T" per type in
  sorted order), `check_tags` checks sentences against a tag set;
- `align` tokenizes the words with a fast tokenizer into `TaggingFeatures`: the tag id
  of each word at its first sub-token, `TOKEN_IGNORE` at every other position;
- `word_predictions` takes per-position model outputs back to one value per word.

Decisions:

- Strict IOB2. `check_tags` (and so `align`) refuses an "I-X" that does not continue
  an entity of type X (after "O", "B-Y", "I-Y" or at the start of a sentence): the
  training labels would teach tags that the strict entity metric
  (`rome_jax.data.entities`) never counts as entities. IOB1 data (where "I-" opens
  entities) is converted first with `rome_jax.data.entities.iob1_to_iob2`.
- Truncation, not dropping. A sentence longer than `max_length` sub-tokens keeps its
  first words (those whose first sub-token fits); the words past the limit get no
  position, one warning counts them, and `word_predictions` gives them the `fill`
  value (the id of "O"), so that metrics still count every word of every sentence.
- A word the tokenizer maps to no sub-token at all (a control or zero-width
  character) could carry no label: a `DataError` naming its file and line.

Every bad-input error is one line naming the file (or dataset) and the 1-based line
(row for a Hugging Face dataset).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rome_jax.data.features import Features
from rome_jax.errors import ConfigError, DataError, first_line
from rome_jax.files import read_lines

logger = logging.getLogger(__name__)

TOKEN_IGNORE = -100
"""The label of positions that carry no tag (non-first sub-tokens, specials, padding)."""

EXTENSIONS = {".txt": "conll", ".conll": "conll", ".tsv": "conll", ".iob": "conll", ".jsonl": "jsonl", ".json": "jsonl"}
_TAG = re.compile(r"^[BI]-.+$")
_CHUNK = 4096
Words = tuple[tuple[str, ...], ...]
_TRUNCATED = "%s: %d of %d sentences are longer than max_length %d sub-tokens; their last %d words get no position"


@dataclasses.dataclass(frozen=True, eq=False)
class TaggedSentences:
    """N sentences of words, with or without tags.

    words: N tuples of words; tags: N tuples of tags (one per word), or None
      (unlabelled).
    index: [N] int64 sentence ids (0..N-1 as read; `subset` keeps them).
    source: the file or dataset read.
    lines: N 1-based lines of each sentence's first word in `source`; 0 where the
      sentences do not come from a text file.
    format: "conll" (one word a line: word k of sentence i is on line lines[i] + k),
      "jsonl" (one sentence a line) or "" (a dataset: rows, no lines).
    """

    words: Words
    tags: Words | None
    index: np.ndarray
    source: str
    lines: tuple[int, ...]
    format: str = ""

    def __post_init__(self) -> None:
        n = len(self.words)
        if len(self.index) != n or len(self.lines) != n or (self.tags is not None and len(self.tags) != n):
            raise ValueError(f"{self.source}: words, tags, index and lines need one entry per sentence ({n})")

    def __len__(self) -> int:
        return len(self.words)

    def subset(self, rows: Sequence[int] | np.ndarray) -> TaggedSentences:
        """The sentences at positions `rows` [M], in that order (their ids kept)."""
        rows = [int(r) for r in np.asarray(rows).reshape(-1)]
        return dataclasses.replace(
            self,
            words=tuple(self.words[r] for r in rows),
            tags=None if self.tags is None else tuple(self.tags[r] for r in rows),
            index=np.asarray(self.index, np.int64)[rows],
            lines=tuple(self.lines[r] for r in rows),
        )

    def where(self, row: int, word: int = 0) -> str:
        """Where word `word` of sentence `row` (positions) is, for messages:
        "file, line L", or "dataset, row R" (R = the sentence id + 1) without lines."""
        if self.format == "conll" and self.lines[row]:
            return f"{self.source}, line {self.lines[row] + word}"
        if self.lines[row]:
            return f"{self.source}, line {self.lines[row]}"
        return f"{self.source}, row {int(self.index[row]) + 1}"


# ------------------------------------------------------------------------- readers


def _numbered(words: Words, tags: Words | None, source: str, lines: Sequence[int], format: str) -> TaggedSentences:
    return TaggedSentences(words, tags, np.arange(len(words), dtype=np.int64), source, tuple(lines), format)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"missing tagged data file {path}")
    return path


def read_conll(path: str | os.PathLike, *, tag_column: int = -1) -> TaggedSentences:
    """A CoNLL-style file: whitespace-separated columns, the word first and the tag in
    column `tag_column` (0-based; negative from the end), a blank line between
    sentences; `-DOCSTART-` lines are skipped. A file whose lines all have one column
    is unlabelled (tags None). N sentences, `lines` the line of each first word."""
    path = _existing(path)
    if tag_column == 0:
        raise ConfigError(f"{path}: tag_column 0 is the word's column; the tag is in another one (-1: the last)")
    rows = [(number, line.split()) for number, line in enumerate(read_lines(path), start=1)]
    labelled = any(len(fields) > 1 and fields[0] != "-DOCSTART-" for _, fields in rows)
    words: list[tuple[str, ...]] = []
    tags: list[tuple[str, ...]] = []
    lines: list[int] = []
    sentence: list[str] = []
    sentence_tags: list[str] = []
    for number, fields in [*rows, (0, [])]:
        if not fields or fields[0] == "-DOCSTART-":
            if sentence:
                words.append(tuple(sentence))
                tags.append(tuple(sentence_tags))
                sentence, sentence_tags = [], []
            continue
        if not sentence:
            lines.append(number)
        sentence.append(fields[0])
        if labelled:
            column = tag_column if tag_column > 0 else len(fields) + tag_column
            if not 1 <= column < len(fields):
                raise DataError(
                    f"{path}, line {number}: no tag in {' '.join(fields)[:80]!r} ({len(fields)} column(s), tag_column "
                    f"{tag_column}); in a labelled file every word needs one"
                )
            sentence_tags.append(fields[column])
    if not words:
        raise DataError(f"{path}: no sentence (CoNLL: one 'WORD TAG' a line, a blank line between sentences)")
    return _numbered(tuple(words), tuple(tags) if labelled else None, str(path), lines, "conll")


def _sentence(
    tokens: Any, tags: Any, tag_names: Sequence[str] | None, where: str, keys: tuple[str, str]
) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """One sentence's tokens and tags (names), checked; DataError at `where`."""
    if not isinstance(tokens, (list, tuple)):
        raise DataError(f"{where}: {keys[0]!r} must be a list of words, got {type(tokens).__name__}")
    if not tokens:
        raise DataError(f"{where}: empty sentence ({keys[0]!r} is [])")
    for k, token in enumerate(tokens):
        if not isinstance(token, str) or not token.strip():
            raise DataError(f"{where}: word {k + 1} ({token!r}) of {keys[0]!r} is not a non-empty string")
    if tags is None:
        return tuple(tokens), None
    if not isinstance(tags, (list, tuple)) or len(tags) != len(tokens):
        size = len(tags) if isinstance(tags, (list, tuple)) else type(tags).__name__
        raise DataError(f"{where}: {len(tokens)} words in {keys[0]!r} but {size} tags in {keys[1]!r}")
    names = []
    for k, tag in enumerate(tags):
        if isinstance(tag, (int, np.integer)) and not isinstance(tag, bool):
            if tag_names is None:
                raise DataError(f"{where}: tag {k + 1} is the number {tag}; give tag_names to map ids to tags")
            if not 0 <= tag < len(tag_names):
                raise DataError(f"{where}: tag {k + 1} is {tag}, outside the {len(tag_names)} tag names")
            names.append(tag_names[int(tag)])
        elif isinstance(tag, str) and tag.strip():
            names.append(tag.strip())
        else:
            raise DataError(f"{where}: tag {k + 1} ({tag!r}) is not a tag name or id")
    return tuple(tokens), tuple(names)


def _collect(
    records: list[tuple[str, dict[str, Any]]], keys: tuple[str, str], tag_names: Sequence[str] | None
) -> tuple[Words, Words | None]:
    """Words and tags of (where, record) pairs; labelled when any record has tags."""
    labelled = any(record.get(keys[1]) is not None for _, record in records)
    words, tags = [], []
    for where, record in records:
        if keys[0] not in record:
            raise DataError(f"{where}: no key {keys[0]!r} (keys there: {', '.join(map(repr, record)) or 'none'})")
        if labelled and record.get(keys[1]) is None:
            raise DataError(f"{where}: no {keys[1]!r} (other sentences have them)")
        w, t = _sentence(record[keys[0]], record.get(keys[1]), tag_names, where, keys)
        words.append(w)
        tags.append(t or ())
    return tuple(words), tuple(tags) if labelled else None


def read_jsonl(
    path: str | os.PathLike,
    *,
    tokens_key: str = "tokens",
    tags_key: str = "tags",
    tag_names: Sequence[str] | None = None,
) -> TaggedSentences:
    """A JSON Lines file, one `{"tokens": [...], "tags": [...]}` object a sentence (blank
    lines skipped). Tags are names, or ids into `tag_names`; a file with no tags key
    on any line is unlabelled. N sentences, `lines` the line of each."""
    path = _existing(path)
    records: list[tuple[str, dict[str, Any]]] = []
    lines = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not valid JSON ({e.msg}): {line[:80]!r}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {line[:80]!r}")
        records.append((f"{path}, line {number}", record))
        lines.append(number)
    if not records:
        raise DataError(f"{path}: no sentence (JSON Lines: one object with {tokens_key!r} and {tags_key!r} a line)")
    words, tags = _collect(records, (tokens_key, tags_key), tag_names)
    return _numbered(words, tags, str(path), lines, "jsonl")


def read_hf(
    dataset_or_path: str | os.PathLike,
    split: str,
    *,
    tokens_column: str = "tokens",
    tags_column: str = "ner_tags",
    config_name: str = "",
    tag_names: Sequence[str] | None = None,
) -> tuple[TaggedSentences, tuple[str, ...] | None]:
    """One split of a Hugging Face dataset: a hub name or local data files read by
    `datasets.load_dataset`, or a directory written by `save_to_disk` (a single saved
    `Dataset` is used whatever `split` is named). Returns N sentences (lines all 0)
    and the ClassLabel names of the tag column, if it has them (None otherwise);
    int tags are mapped through those names, else through `tag_names`. A dataset
    without the tag column is unlabelled."""
    import datasets  # heavy: only data read from a Hugging Face dataset needs it

    name = str(dataset_or_path)
    try:
        if Path(name, "dataset_dict.json").is_file() or Path(name, "state.json").is_file():
            loaded = datasets.load_from_disk(name)
        else:
            loaded = datasets.load_dataset(name, config_name or None)
    except Exception as e:
        raise DataError(f"cannot load the dataset {name} ({type(e).__name__}: {first_line(e)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"dataset {name} has no split {split!r} (it has {', '.join(loaded)})")
        loaded = loaded[split]
    source = f"{name} {split}"
    columns = list(loaded.column_names)
    if tokens_column not in columns:
        raise DataError(f"{source}: no column {tokens_column!r} (columns there: {', '.join(map(repr, columns))})")
    class_names = None
    if tags_column in columns:
        inner = getattr(loaded.features[tags_column], "feature", None)
        names = getattr(inner, "names", None)
        class_names = tuple(names) if names else None
    data = loaded.to_dict()
    keep = [tokens_column] + ([tags_column] if tags_column in columns else [])
    records = [(f"{source}, row {r + 1}", {k: data[k][r] for k in keep}) for r in range(loaded.num_rows)]
    if not records:
        raise DataError(f"{source}: no sentence")
    words, tags = _collect(records, (tokens_column, tags_column), class_names or tag_names)
    return _numbered(words, tags, source, (0,) * len(words), ""), class_names


def read_tagged_file(path: str | os.PathLike, format: str = "") -> TaggedSentences:
    """A tagged data file as `read_conll` (.txt, .conll, .tsv, .iob) or `read_jsonl`
    (.jsonl, .json) reads it, or as `format` ("conll" or "jsonl") says."""
    if format:
        kind = format.strip().lower().lstrip(".")
        if kind not in ("conll", "jsonl"):
            raise ConfigError(f"unknown tagged data format {format!r} (known: conll, jsonl; empty: from the extension)")
    else:
        suffix = Path(path).suffix.lower()
        if suffix not in EXTENSIONS:
            raise ConfigError(
                f"{path}: unknown tagged data format {suffix or '(no extension)'!r} (known: "
                f"{', '.join(EXTENSIONS)}); give format 'conll' or 'jsonl'"
            )
        kind = EXTENSIONS[suffix]
    return read_conll(path) if kind == "conll" else read_jsonl(path)


# ------------------------------------------------------------------------- tags


def _labelled(sentences: TaggedSentences) -> tuple[tuple[str, ...], ...]:
    if sentences.tags is None:
        raise DataError(f"{sentences.source}: the sentences have no tags (unlabelled data)")
    return sentences.tags


def tag_set(sentences: TaggedSentences) -> tuple[str, ...]:
    """The tags of labelled sentences: "O", then "B-T", "I-T" for each entity type T in
    sorted order (both, even where "I-T" never occurs). DataError for a tag that is
    not "O", "B-T" or "I-T"."""
    types = set()
    for row, tags in enumerate(_labelled(sentences)):
        for k, tag in enumerate(tags):
            if tag == "O":
                continue
            if not _TAG.match(tag):
                raise DataError(f"{sentences.where(row, k)}: tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
            types.add(tag[2:])
    return ("O",) + tuple(f"{p}-{t}" for t in sorted(types) for p in "BI")


def check_tags(sentences: TaggedSentences, tag_names: Sequence[str]) -> None:
    """Check that every tag is in `tag_names` and that the tags are strict IOB2 (an
    "I-X" only after "B-X" or "I-X"); DataError naming the file and line. Unlabelled
    sentences pass."""
    if sentences.tags is None:
        return
    known = set(tag_names)
    for row, tags in enumerate(sentences.tags):
        previous = ""
        for k, tag in enumerate(tags):
            where = sentences.where(row, k)
            if tag not in known:
                raise DataError(f"{where}: tag {tag!r} is not in the tag set ({', '.join(tag_names)})")
            if tag.startswith("I-") and previous not in (f"B-{tag[2:]}", f"I-{tag[2:]}"):
                after = f"follows {previous}" if previous else "opens the sentence"
                raise DataError(
                    f"{where}: {tag} {after}; IOB2 needs B-{tag[2:]} to open an entity "
                    "(IOB1 data: convert it first, rome_jax.data.entities.iob1_to_iob2)"
                )
            previous = tag


# ------------------------------------------------------------------------- alignment


@dataclasses.dataclass
class TaggingFeatures:
    """Tokenized sentences (N rows, T = max_length positions).

    features: `Features` whose `labels` are [N, T] int32: the tag id at each word's
      first sub-token, `TOKEN_IGNORE` elsewhere (every position when unlabelled,
      `has_labels` False); `index` [N] int64 the sentence ids.
    word_ids: [N, T] int32, the word whose sub-token each position is (-1: special
      token or padding).
    num_words: [N] int32 words of each sentence; kept_words: [N] int32 words whose
      first sub-token fits (the first kept_words words; < num_words when truncated).
    truncated: how many sentences lost words.
    """

    features: Features
    word_ids: np.ndarray
    num_words: np.ndarray
    kept_words: np.ndarray
    truncated: int

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, rows: np.ndarray) -> TaggingFeatures:
        """The rows at positions `rows` [M], in that order."""
        rows = np.asarray(rows)
        kept, num = self.kept_words[rows], self.num_words[rows]
        return TaggingFeatures(self.features.subset(rows), self.word_ids[rows], num, kept, int(np.sum(kept < num)))


def _first_subtokens(word_ids: np.ndarray) -> np.ndarray:
    """[N, T] bool: the positions that hold a word's first sub-token."""
    previous = np.concatenate([np.full((word_ids.shape[0], 1), -1, word_ids.dtype), word_ids[:, :-1]], axis=1)
    return (word_ids >= 0) & (word_ids != previous)


def _empty_word(sentences: TaggedSentences, row: int, candidates: Sequence[int], tokenizer: Any) -> None:
    """DataError for the first word among `candidates` that has no sub-token."""
    words = sentences.words[row]
    pieces = tokenizer([[words[k]] for k in candidates], is_split_into_words=True, add_special_tokens=False)
    for k, ids in zip(candidates, pieces["input_ids"]):
        if not ids:
            raise DataError(
                f"{sentences.where(row, k)}: word {k + 1} {words[k]!r} maps to no sub-token of the tokenizer "
                "(a control or zero-width character?); remove or replace it"
            )


def align(sentences: TaggedSentences, tokenizer: Any, tag_names: Sequence[str], max_length: int) -> TaggingFeatures:
    """Tokenize each sentence's words (a fast tokenizer, `is_split_into_words`),
    truncated and padded to `max_length` = T; the tag id of each word goes to its first
    sub-token, `TOKEN_IGNORE` to every other position. Labelled sentences are checked
    with `check_tags` first. Words past the limit get no position (one warning counts
    them); no sentence is dropped. Returns N rows of [T] arrays."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"tagging needs a fast tokenizer (word_ids); got {type(tokenizer).__name__}")
    if max_length < 3:
        raise ConfigError(
            f"max_length must be at least 3 for tagging (two special tokens and a word), got {max_length}"
        )
    labelled = sentences.tags is not None
    if labelled:
        check_tags(sentences, tag_names)
    ids = {name: i for i, name in enumerate(tag_names)}
    n = len(sentences)
    arrays = {k: np.zeros((n, max_length), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    word_ids = np.full((n, max_length), -1, np.int32)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        encoded = tokenizer(
            [list(w) for w in sentences.words[start:stop]],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            padding="max_length",
            return_attention_mask=True,
        )
        for key, out in arrays.items():
            if key in encoded:
                out[start:stop] = np.asarray(encoded[key], np.int32)
        for i in range(stop - start):
            word_ids[start + i] = [-1 if w is None else w for w in encoded.word_ids(i)]
    num_words = np.asarray([len(w) for w in sentences.words], np.int32).reshape(n)
    kept_words = (word_ids.max(axis=1, initial=-1) + 1).astype(np.int32)
    first = _first_subtokens(word_ids)
    for row in range(n):
        present = word_ids[row, first[row]]
        if len(present) < kept_words[row]:  # a word inside the kept ones has no position
            _empty_word(sentences, row, sorted(set(range(kept_words[row])) - set(present.tolist())), tokenizer)
        if kept_words[row] < num_words[row]:  # truncated, or trailing words with no sub-token
            _empty_word(sentences, row, range(kept_words[row], num_words[row]), tokenizer)
    labels = np.full((n, max_length), TOKEN_IGNORE, np.int32)
    if labelled:
        tags = _labelled(sentences)
        rows, positions = np.nonzero(first)
        labels[rows, positions] = [ids[tags[r][word_ids[r, p]]] for r, p in zip(rows, positions)]
    truncated = int(np.sum(kept_words < num_words))
    if truncated:
        cut = int(np.sum(num_words - kept_words))
        logger.warning(_TRUNCATED, sentences.source, truncated, n, max_length, cut)
    features = Features(
        labels=labels, index=np.asarray(sentences.index, np.int64), has_labels=labelled and n > 0, **arrays
    )
    return TaggingFeatures(features, word_ids, num_words, kept_words, truncated)


def word_predictions(token_values: np.ndarray, tagging: TaggingFeatures, fill: Any) -> list[np.ndarray]:
    """Per-position values [N, T, ...] (predicted tag ids, probabilities, exit layers)
    back to words: N arrays [num_words_i, ...], each word's value at its first
    sub-token, `fill` (e.g. the id of "O") for words cut by truncation."""
    values = np.asarray(token_values)
    if values.shape[:2] != tagging.word_ids.shape:
        raise ValueError(f"values of shape {values.shape} for tagged features of shape {tagging.word_ids.shape}")
    first = _first_subtokens(tagging.word_ids)
    dtype = np.result_type(values, fill)
    out = []
    for row in range(len(values)):
        words = np.full((int(tagging.num_words[row]), *values.shape[2:]), fill, dtype)
        positions = np.flatnonzero(first[row])
        words[tagging.word_ids[row, positions]] = values[row, positions]
        out.append(words)
    return out
