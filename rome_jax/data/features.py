"""Tokenized features: `Features` ([N, max_length] int32 arrays) and the on-disk cache.

`tokenize_examples` turns `Examples` into `Features`, every row padded to
`max_length` (the model then compiles once per batch shape); with a `cache_dir`
the arrays are stored as an .npz keyed by the tokenizer's fingerprint
(`tokenizer_fingerprint`), max_length and a digest of the rows, and loaded from
there next time. `tokenize_texts` is the tokenizer call both use, also used on
raw sentences by the inference API.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rome_jax.data.rows import Examples
from rome_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 1
_TOKENIZE_CHUNK = 4096


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

    def subset(self, rows: np.ndarray) -> Features:
        """The features of `rows` [M] (positions, in that order); all rows: self."""
        rows = np.asarray(rows)
        if len(rows) == len(self) and np.array_equal(rows, np.arange(len(self))):
            return self
        return Features(**{k: v[rows] for k, v in self.arrays().items()}, has_labels=self.has_labels)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides the tokenizer's output (not its transient padding state)."""
    h = hashlib.sha256()
    settings = [
        type(tokenizer).__name__,
        str(getattr(tokenizer, "name_or_path", "")),
        str(getattr(tokenizer, "truncation_side", "")),
        str(getattr(tokenizer, "padding_side", "")),
        str(getattr(tokenizer, "pad_token_id", "")),
        list(getattr(tokenizer, "model_input_names", [])),
    ]
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


def tokenize_texts(
    tokenizer: Any, text_a: Sequence[str], text_b: Sequence[str] | None, max_length: int
) -> dict[str, np.ndarray]:
    """HF fast tokenizer on sentences or pairs, truncated ("longest_first" for pairs)
    and padded to `max_length`: int32 `input_ids`, `attention_mask`,
    `token_type_ids` [N, max_length] (zeros where the tokenizer has no types)."""
    if isinstance(text_a, str) or isinstance(text_b, str):
        one = text_a if isinstance(text_a, str) else str(text_b)
        raise ValueError(f"give lists of sentences (one string would be read one character a sentence): [{one[:40]!r}]")
    first = list(text_a)
    second = None if text_b is None else list(text_b)
    n = len(first)
    if second is not None and len(second) != n:
        raise ValueError(f"pairs need as many second sentences as first ones: {len(second)} against {n}")
    out = {k: np.zeros((n, max_length), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for start in range(0, n, _TOKENIZE_CHUNK):
        stop = min(n, start + _TOKENIZE_CHUNK)
        encoded = tokenizer(
            first[start:stop],
            None if second is None else second[start:stop],
            max_length=max_length,
            truncation="longest_first" if second is not None else True,
            padding="max_length",
            return_attention_mask=True,
            return_tensors="np",
        )
        for key in out:
            if key in encoded:
                value = np.asarray(encoded[key])
                if value.shape != (stop - start, max_length):
                    raise DataError(
                        f"tokenizer returned {key} of shape {value.shape}, expected {(stop - start, max_length)}"
                    )
                out[key][start:stop] = value
    return out


def tokenize_examples(
    examples: Examples, tokenizer: Any, max_length: int, *, cache_dir: str | os.PathLike | None = None
) -> Features:
    """Tokenize every row to exactly `max_length` tokens (pairs truncated longest-first).

    With `cache_dir`, the arrays are stored as an .npz keyed by the tokenizer's
    fingerprint, max_length and a digest of the rows (texts, labels, ids), and a
    later call with the same inputs loads them without tokenizing.
    """
    minimum = 3 if examples.text_b is not None else 2
    if max_length < minimum:
        raise ConfigError(f"max_length must be at least {minimum} for task {examples.task or '?'}, got {max_length}")
    path: Path | None = None
    key = ""
    if cache_dir is not None:
        key = hashlib.sha256(
            json.dumps(
                [_CACHE_FORMAT, tokenizer_fingerprint(tokenizer), int(max_length), _examples_digest(examples)]
            ).encode()
        ).hexdigest()
        name = f"{examples.task or 'examples'}-{examples.split or 'split'}-{key[:24]}.npz"
        path = Path(cache_dir) / name
        cached = _load_cache(path, key, len(examples), max_length)
        if cached is not None:
            logger.info("loaded features from %s", path)
            return cached

    arrays = _tokenize(examples, tokenizer, max_length)
    features = Features(
        labels=examples.labels.copy(),
        index=np.asarray(examples.index, np.int64),
        has_labels=examples.has_labels,
        **arrays,
    )
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
            features = Features(
                **{k: z[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels", "index")},
                has_labels=bool(z["has_labels"]),
            )
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
            arrays = {"cache_key": np.asarray(key), "has_labels": np.asarray(features.has_labels), **features.arrays()}
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **arrays as maybe allow_pickle
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
