"""Batches as the early-exit executors read them: keys, checks, padding rows, buckets.

Batches are dicts of [B, T] int arrays `input_ids`, `attention_mask`,
`token_type_ids` (optional) and `example_mask` ([B], optional); other keys are
ignored, except one that looks like a missing key misspelt or under another
codebase's name (`input_mask`, `segment_ids`, `attention_masks`): that is refused,
since the model would silently read no mask. Every executor checks a batch first
(`check_batch`: keys, shapes, dtypes, ids in range; about 25 microseconds on the host).

Padding rows (`example_mask` 0) are found inside jit by `_padding_rows`; the
executors force them to exit at exit 0.

Buckets, two kinds:

- length buckets: `cut_to_bucket` cuts a batch's token arrays to the smallest
  sequence length (of `rome_jax.data.buckets`) that holds its longest row, so that a
  batch of short sentences does not run 128 positions of padding;
- row buckets: the row counts the per-example executor runs with
  (`default_buckets`, `smallest_bucket`); `fit_to_bucket` cuts a padded batch to the
  bucket that holds its real rows, for a full-depth baseline that computes what the
  per-example executor computes.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rome_jax.data.buckets import bucket_index, sequence_lengths
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import INPUT_KEYS

Array = jax.Array

BATCH_KEYS = INPUT_KEYS + ("example_mask",)

# Other codebases' names for the keys (Google's BERT, fairseq, HF's encoder-decoders).
_KEY_ALIASES = {
    "input_mask": "attention_mask",
    "mask": "attention_mask",
    "masks": "attention_mask",
    "segment_ids": "token_type_ids",
    "type_ids": "token_type_ids",
    "token_types": "token_type_ids",
    "segments": "token_type_ids",
}


@functools.lru_cache(maxsize=64)
def _misread_key(keys: tuple[str, ...]) -> tuple[str, str] | None:
    """(key, meant) for the first key of a batch that looks like a `BATCH_KEYS` key
    the batch lacks, misspelt or under another name ('input_mask' for
    'attention_mask'); None when there is none. Case and '-' vs '_' count as misspelt."""
    present = set(keys)
    for key in keys:
        if key in BATCH_KEYS or key in ("labels", "index"):
            continue
        norm = str(key).lower().replace("-", "_")
        meant = _KEY_ALIASES.get(norm) or (norm if norm in BATCH_KEYS else None)
        if meant is None:
            close = difflib.get_close_matches(norm, BATCH_KEYS, n=1, cutoff=0.8)
            meant = close[0] if close else None
        if meant is not None and meant not in present:
            return key, meant
    return None


def _batch_arrays(batch: dict, keys: tuple[str, ...] = BATCH_KEYS) -> dict:
    """The keys the executors read, unconverted: jit converts them on dispatch, which
    costs less than eager conversions (it matters at batch 1)."""
    return {k: batch[k] for k in keys if k in batch}


def check_batch(config: ModelConfig, batch: Mapping[str, Any]) -> dict:
    """Raises ValueError, naming the key, for a batch the model cannot read; returns
    the batch with lists made numpy arrays.

    Checks: no key that looks like a missing one misspelt (`_misread_key`);
    `input_ids` [B, T] with T within the model's positions; the other keys
    of `BATCH_KEYS` [B, T] (`example_mask` [B]); integer dtypes (bool for masks);
    and, for numpy arrays, ids within the vocabulary and token types within
    `type_vocab_size` (out-of-range ids would read NaN embeddings). Device arrays
    are not copied to the host for the value checks.
    """
    misread = _misread_key(tuple(batch)) if isinstance(batch, Mapping) else None
    if misread is not None:
        raise ValueError(
            f"batch key {misread[0]!r} is not read: did you mean {misread[1]!r}? (keys read: {', '.join(BATCH_KEYS)})"
        )
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ValueError(
            "a batch is a dict with int arrays input_ids [B, T] (and attention_mask, "
            f"token_type_ids [B, T], example_mask [B]); got {type(batch).__name__}"
            + (f" with keys {sorted(batch, key=str)}" if isinstance(batch, Mapping) else "")
        )
    batch = {k: (np.asarray(v) if k in BATCH_KEYS and not hasattr(v, "shape") else v) for k, v in batch.items()}
    shape = tuple(batch["input_ids"].shape)
    if len(shape) != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {shape}")
    if shape[1] > config.max_length:
        raise ValueError(f"input_ids of length {shape[1]} exceed the model's {config.max_length} positions")
    for key in BATCH_KEYS:
        if key not in batch:
            continue
        value = batch[key]
        expected = shape[:1] if key == "example_mask" else shape
        if tuple(value.shape) != expected:
            raise ValueError(f"{key} has shape {tuple(value.shape)}; input_ids {shape} make it {expected}")
        dtype = np.dtype(value.dtype)
        masks = key in ("attention_mask", "example_mask")
        if not (np.issubdtype(dtype, np.integer) or (masks and dtype == np.bool_)):
            raise ValueError(f"{key} must be integers{' or booleans' if masks else ''}, not {dtype}")
    limits = {"input_ids": config.vocab_size, "token_type_ids": config.type_vocab_size}
    for key, limit in limits.items():
        value = batch.get(key)
        if not (isinstance(value, np.ndarray) and value.size):
            continue
        low, high = value.min(), value.max()
        if low < 0 or high >= limit:
            raise ValueError(f"{key} holds {low if low < 0 else high}, outside the model's 0..{limit - 1}")
    return batch


def _model_inputs(batch: dict) -> dict[str, Array]:
    """Inside jit: int32 `input_ids`, `attention_mask`, `token_type_ids` [B, T], defaults filled."""
    ids = jnp.asarray(batch["input_ids"], jnp.int32)
    mask = jnp.asarray(batch["attention_mask"], jnp.int32) if "attention_mask" in batch else jnp.ones_like(ids)
    types = jnp.asarray(batch["token_type_ids"], jnp.int32) if "token_type_ids" in batch else jnp.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _padding_rows(batch: dict) -> Array:
    """Inside jit: [B] bool, True where `example_mask` marks a padding row."""
    if "example_mask" not in batch:
        return jnp.zeros((jnp.shape(batch["input_ids"])[0],), bool)
    return ~jnp.asarray(batch["example_mask"]).astype(bool)


def cut_to_bucket(batch: Mapping[str, Any], buckets: Sequence[int]) -> dict:
    """The batch with its token arrays cut to the smallest length bucket that holds
    its longest row.

    batch: `input_ids` [B, T] and optionally `attention_mask`, `token_type_ids`
      [B, T] (padded on the right) and other keys; buckets: sequence lengths (e.g.
      `rome_jax.data.buckets.length_buckets(T, "auto")`). Returns a new dict whose
      `input_ids`, `attention_mask`, `token_type_ids` are [B, T'] with T' the
      smallest bucket >= the longest row (`sequence_lengths` of the mask; T without
      a mask), capped at T; other keys are passed through. ValueError when the
      longest row exceeds every bucket.
    """
    ids = np.asarray(batch["input_ids"])
    width = ids.shape[-1]
    if "attention_mask" in batch:
        longest = int(sequence_lengths(np.asarray(batch["attention_mask"])).max(initial=0))
    else:
        longest = width
    ascending = sorted(int(b) for b in buckets)
    length = min(ascending[int(bucket_index(np.array([longest]), ascending)[0])], width)
    return {k: (np.asarray(v)[:, :length] if k in INPUT_KEYS else v) for k, v in batch.items()}


def default_buckets(batch_size: int) -> tuple[int, ...]:
    """`batch_size` and the powers of two and 1.5 x powers of two below it, largest
    first: 64 -> (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1).

    The finer the ladder, the fewer filler rows a bucket computes (at most a third
    of it here, against half with powers of two alone), at one compilation per size.
    """
    sizes = {batch_size}
    for k in range(batch_size.bit_length()):
        sizes |= {size for size in (1 << k, 3 << k >> 1) if 0 < size < batch_size}
    return tuple(sorted(sizes, reverse=True))


def smallest_bucket(rows: int, buckets: Iterable[int]) -> int:
    """The smallest of `buckets` that holds `rows` rows (ValueError if none does)."""
    buckets = sorted(buckets)
    fitting = [b for b in buckets if b >= rows]
    if not fitting:
        raise ValueError(f"no bucket holds {rows} rows (buckets {buckets})")
    return fitting[0]


def fit_to_bucket(batch: dict, buckets: Sequence[int]) -> dict:
    """A padded batch cut to the smallest bucket that holds its real rows.

    `batch`: [B, ...] arrays with an `example_mask` [B] (1 for real rows); returns
    the real rows, in order, followed by masked copies of the first one up to the
    bucket's size. A full-depth baseline run on these batches computes the filler
    rows `BatchedEarlyExit` computes, not a whole padded batch: without it, a
    partly padded last batch makes early exit look faster than it is.
    """
    real = np.flatnonzero(np.asarray(batch["example_mask"]).astype(bool))
    size = smallest_bucket(max(len(real), 1), buckets)
    rows = np.concatenate([real, np.full(size - len(real), real[0] if len(real) else 0)]).astype(int)
    out = {k: np.asarray(v)[rows] for k, v in batch.items()}
    out["example_mask"] = (np.arange(size) < len(real)).astype(np.asarray(batch["example_mask"]).dtype)
    return out
