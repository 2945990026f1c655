"""Batches: `BatchIterator`, static-shape numpy batches of `Features`, sharded over
processes and resumable from `get_state()`.

Eval batches keep the training batch shape by adding masked padding rows
(`example_mask`), so the model compiles once per batch shape. With `buckets`
(`rome_jax.data.buckets`), batches are grouped by length and each is cut to one of
a few sequence lengths: one compiled program per bucket instead of padding every
batch to `max_length`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from rome_jax.data.buckets import bucket_batches, sequence_lengths
from rome_jax.data.features import Features
from rome_jax.errors import ConfigError, DataError


class BatchIterator:
    """Static-shape batches of `features`, one process's share of each global batch.

    Each global batch holds `batch_size` rows; this process yields its contiguous
    part, rows [process_index * b, (process_index + 1) * b), with
    b = batch_size // process_count the leading dimension of every array (so the
    processes' parts, put side by side on a process-major device mesh, are exactly
    the one-process batch: the same rows at the same places, hence the same dropout):

      input_ids, attention_mask, token_type_ids: [b, T] int32
      labels: [b] int32 (float32 for regression); token labels [b, T] int32 (tagging)
        are cut with the token arrays
      example_mask: [b] bool, False for padding rows
      index: [b] int64, the example's id (-1 for padding rows)

    Training (drop_remainder=True) drops the last partial batch of each epoch.
    Evaluation (drop_remainder=False) pads the last batch with copies of the first
    example, masked out by `example_mask`, so every example appears exactly once.
    With shuffle, epoch e visits rows in `np.random.default_rng([seed, e]).permutation(N)`
    (a negative seed taken modulo 2**64, as `jax.random.PRNGKey` takes it modulo 2**32).

    num_epochs=None means forever when drop_remainder is True and one pass when
    it is False (the evaluation default); pass a number to override.

    buckets (ascending sequence lengths, the longest holding every row, none above
    T; see `rome_jax.data.buckets`): the epoch's row order above is split into
    batches by `bucket_batches` (rows grouped by length, partial batches carried up
    to the next bucket, batches shuffled with `[seed, epoch, 1]`), and each batch's
    token arrays are cut to its bucket, `[b, length]`. steps_per_epoch is the same.
    One bucket (`data.buckets="none"`: `(T,)`) gives exactly the batches of None
    (its batches are not reshuffled), cut to that length.
    Every process computes the same batches, so all take the same bucket at the
    same step. None (the default): every batch is `[b, T]`, as above.
    """

    def __init__(
        self,
        features: Features,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_remainder: bool = False,
        *,
        process_index: int = 0,
        process_count: int = 1,
        num_epochs: int | None = None,
        buckets: Sequence[int] | None = None,
    ):
        n = len(features)
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if process_count <= 0 or not 0 <= process_index < process_count:
            raise ConfigError(f"process_index {process_index} is not in [0, {process_count})")
        if batch_size % process_count:
            raise ConfigError(f"batch_size {batch_size} is not divisible by the {process_count} processes")
        if n == 0:
            raise DataError("no examples to batch")
        if drop_remainder and n < batch_size:
            raise ConfigError(
                f"batch_size {batch_size} exceeds the {n} examples: with drop_remainder no batch can be formed"
            )
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
        self.buckets: tuple[int, ...] | None = None
        self._lengths: np.ndarray | None = None
        self._batches: tuple[int, list[tuple[np.ndarray, int]]] | None = None
        if buckets is not None:
            self.buckets = tuple(int(b) for b in buckets)
            width = features.input_ids.shape[1]
            if (
                not self.buckets
                or any(b <= 0 for b in self.buckets)
                or list(self.buckets) != sorted(set(self.buckets))
                or self.buckets[-1] > width
            ):
                raise ConfigError(
                    f"buckets must be ascending positive lengths up to the features' "
                    f"{width} positions, got {list(self.buckets)}"
                )
            self._lengths = sequence_lengths(features.attention_mask)
            if int(self._lengths.max()) > self.buckets[-1]:
                raise ConfigError(
                    f"an example of {int(self._lengths.max())} tokens exceeds the longest bucket {self.buckets[-1]}"
                )

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

    def _epoch_batches(self, epoch: int) -> list[tuple[np.ndarray, int]]:
        """With buckets: the epoch's global batches, (rows, length)."""
        assert self.buckets is not None and self._lengths is not None, "only with buckets"
        if self._batches is None or self._batches[0] != epoch:
            batches = bucket_batches(
                self._epoch_order(epoch),
                self._lengths,
                self.buckets,
                self.batch_size,
                drop_remainder=self.drop_remainder,
                shuffle_seed=([self.seed % 2**64, epoch, 1] if self.shuffle and len(self.buckets) > 1 else None),
            )
            self._batches = (epoch, batches)
        return self._batches[1]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_epochs is not None and self._epoch >= self.num_epochs:
            raise StopIteration
        if self.buckets is None:
            start = self._position * self.batch_size
            rows = self._epoch_order(self._epoch)[start : start + self.batch_size]
            if len(rows) < self.batch_size:
                rows = np.concatenate([rows, np.full(self.batch_size - len(rows), -1, rows.dtype)])
            cut = slice(None)
        else:
            rows, length = self._epoch_batches(self._epoch)[self._position]
            cut = slice(0, length)
        b = self.local_batch_size
        rows = rows[self.process_index * b : (self.process_index + 1) * b]
        mask = rows >= 0
        take = np.where(mask, rows, 0)
        f = self.features
        batch = {
            "input_ids": f.input_ids[take, cut],
            "attention_mask": f.attention_mask[take, cut],
            "token_type_ids": f.token_type_ids[take, cut],
            "labels": f.labels[take, cut] if f.labels.ndim == 2 else f.labels[take],
            "example_mask": mask,
            "index": np.where(mask, np.asarray(f.index, np.int64)[take], -1),
        }
        self._position += 1
        if self._position >= self.steps_per_epoch:
            self._epoch += 1
            self._position = 0
        return batch

    def get_state(self) -> dict[str, Any]:
        """The position, as JSON-serialisable values; the same for every process."""
        state: dict[str, Any] = {
            "epoch": self._epoch,
            "position": self._position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "num_examples": self.num_examples,
        }
        if self.buckets is not None:
            state["buckets"] = list(self.buckets)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a `get_state()`: the next batch is the one that followed it."""
        for key in ("seed", "shuffle", "batch_size", "num_examples"):
            if key in state and state[key] != getattr(self, key):
                raise ConfigError(
                    f"data iterator state has {key}={state[key]!r} but this iterator has {getattr(self, key)!r}"
                )
        # A state without the key predates buckets (old checkpoints): accepted.
        if "buckets" in state and state["buckets"] != (None if self.buckets is None else list(self.buckets)):
            raise ConfigError(
                f"data iterator state has buckets={state['buckets']!r} but this iterator "
                f"has {None if self.buckets is None else list(self.buckets)!r}"
            )
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"data iterator state needs integer 'epoch' and 'position', got {state!r}") from None
        if epoch < 0 or not 0 <= position < max(self.steps_per_epoch, 1):
            raise ConfigError(
                f"data iterator state epoch={epoch} position={position} is out of "
                f"range ({self.steps_per_epoch} batches per epoch)"
            )
        self._epoch, self._position = epoch, position
