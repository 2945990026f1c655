"""Length buckets: batches cut to a few static sequence lengths instead of one.

Features are tokenized to `max_length` T, padded on the right. A batch whose
longest example has n tokens only needs its first n positions: the attention mask
makes the rest irrelevant. Cutting every batch to exactly its longest example would
compile one program per length met; cutting it to the smallest of a few fixed
lengths (the buckets, by default the powers of two from 16 up to T, and T) bounds
compilation to one program per bucket and still drops most of the padding.

How rows become batches (`bucket_batches`), for an order of the rows (an epoch's
seeded permutation in training, the file's order in evaluation):

1. in training (`drop_remainder`), the last `N mod batch_size` rows of the order are
   left out of the epoch, as batches padded to one length leave them out: the order
   is the epoch's seeded permutation, so these are random rows of every length, and
   an epoch has N // batch_size batches that visit every other row once;
2. each row goes to the smallest bucket that holds its length, keeping the order;
3. buckets are filled from the shortest: full batches of `batch_size` rows are cut
   from each, and a bucket's partial batch is carried up into the next bucket (its
   rows fit there), so only the longest bucket can be left with a partial batch:
   never in training (the rows left add up to whole batches); in evaluation it is
   padded with masked rows;
4. in training, the batches' order is then shuffled (seeded by the epoch), so
   consecutive steps mix lengths.

Everything here is a pure function of its arguments: every process of a multi-host
run computes the same batches, so all take the same bucket at the same step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from rome_jax.errors import ConfigError

MIN_BUCKET = 16
"""The shortest automatic bucket."""

BUCKET_SPECS = ("auto", "none")
"""The named values of `data.buckets`; it also takes a list of lengths, "32,64,128"."""


class LengthBuckets(tuple[int, ...]):
    """The sequence lengths batches are cut to: ascending, distinct, positive; the
    last is `max_length` and holds every row.

    The one form of the `data.buckets` setting below the edges that read it (the
    config, eval.py's --buckets, `MultiExitModel.predict`), made by `length_buckets`.
    A tuple, so it is used wherever lengths are: `for length in buckets`,
    `buckets[-1]`, `np.asarray(buckets)`. "none" is `(max_length,)`: one bucket,
    every batch padded to `max_length` (`padded`).
    """

    __slots__ = ()

    def __new__(cls, lengths: Iterable[int]) -> LengthBuckets:
        values = tuple(int(v) for v in lengths)
        if not values or any(v <= 0 for v in values) or list(values) != sorted(set(values)):
            raise ConfigError(f"length buckets must be ascending distinct positive lengths, got {list(values)}")
        return super().__new__(cls, values)

    @classmethod
    def none(cls, max_length: int) -> LengthBuckets:
        """One bucket: every batch padded to `max_length`."""
        return cls((max_length,))

    @property
    def max_length(self) -> int:
        """The longest bucket, the length the features are padded to."""
        return self[-1]

    @property
    def padded(self) -> bool:
        """True for one bucket ("none"): every batch runs all `max_length` positions."""
        return len(self) == 1

    def __repr__(self) -> str:
        return f"LengthBuckets({list(self)})"


def length_buckets(max_length: int, spec: str | Sequence[int] | None = "auto") -> LengthBuckets:
    """The sequence lengths batches are cut to, ascending; the last is `max_length`.

    spec: "auto" (the powers of two from 16 below `max_length`, then `max_length`:
      128 -> (16, 32, 64, 128), 100 -> (16, 32, 64, 100)); "none" or None (one
      shape: `(max_length,)`, every batch padded to it); or lengths, as a sequence or
      a comma-separated string ("32,64"), to which `max_length` is added. A
      `LengthBuckets` is returned as it is when it ends at `max_length`.
    """
    if isinstance(spec, LengthBuckets):
        if spec.max_length != max_length:
            raise ConfigError(f"length buckets {list(spec)} end at {spec.max_length}, not at max_length {max_length}")
        return spec
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "none"):
        return LengthBuckets.none(max_length)
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        lengths = []
        size = MIN_BUCKET
        while size < max_length:
            lengths.append(size)
            size *= 2
        return LengthBuckets((*lengths, int(max_length)))
    if isinstance(spec, str):
        try:
            values = [int(part) for part in spec.replace(" ", "").split(",") if part]
        except ValueError:
            raise ConfigError(f"data.buckets must be auto, none or lengths like 32,64,128; got {spec!r}") from None
    else:
        values = [int(v) for v in spec]
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"data.buckets lengths must be positive; got {spec!r}")
    if any(v > max_length for v in values):
        raise ConfigError(f"data.buckets {spec!r} has a length above data.max_length {max_length}")
    return LengthBuckets(sorted(set(values) | {int(max_length)}))


def check_spec(spec: object) -> str | None:
    """None when `spec` is a valid `data.buckets` value (lengths not checked against
    max_length), else the problem."""
    if not isinstance(spec, str):
        return f"must be a string (auto, none or lengths like 32,64,128); got {spec!r}"
    try:
        length_buckets(1 << 30, spec)
    except ConfigError as e:
        return str(e).removeprefix("data.buckets ")
    return None


def sequence_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """[N] int64: one past each row's last attended position (0 for an empty row).

    attention_mask: [N, T]. Not the mask's sum, so a mask with holes still keeps
    every attended position inside the cut.
    """
    mask = np.asarray(attention_mask) != 0
    if mask.ndim != 2:
        raise ValueError(f"attention_mask must be [N, T], got shape {mask.shape}")
    width = mask.shape[1]
    last = width - np.argmax(mask[:, ::-1], axis=1)
    return np.where(mask.any(axis=1), last, 0).astype(np.int64)


def bucket_index(lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    """[N] int64: the index in `buckets` (ascending) of the smallest that holds each length."""
    lengths = np.asarray(lengths)
    index = np.searchsorted(np.asarray(buckets), lengths, side="left")
    if len(lengths) and index.max() >= len(buckets):
        raise ValueError(f"a row of length {int(lengths.max())} exceeds the longest bucket {buckets[-1]}")
    return index.astype(np.int64)


def bucket_batches(
    order: np.ndarray,
    lengths: np.ndarray,
    buckets: Sequence[int],
    batch_size: int,
    *,
    drop_remainder: bool,
    shuffle_seed: Sequence[int] | None = None,
) -> list[tuple[np.ndarray, int]]:
    """The batches of one pass over `order`, as (rows [batch_size] int64, length).

    order: [M] row numbers in visiting order; lengths: [N] each row's length
    (`sequence_lengths`); buckets: ascending, the last holding every row. `rows`
    are row numbers, -1 for the padding of the last partial batch (only without
    `drop_remainder`, which first leaves out the order's last `M mod batch_size`
    rows); `length` is the bucket the batch is cut to. Rows keep their
    relative order within a batch. With `shuffle_seed`, the batches' order is a
    permutation drawn from `np.random.default_rng(shuffle_seed)`; else batches come
    shortest bucket first. See the module docstring for the rule.
    """
    order = np.asarray(order, np.int64)
    if drop_remainder:  # the rows padded batches would leave out, whatever their length
        order = order[: len(order) // batch_size * batch_size]
    of_row = bucket_index(np.asarray(lengths)[order], buckets)
    batches: list[tuple[np.ndarray, int]] = []
    carried = np.zeros(0, np.int64)
    for k, length in enumerate(buckets):
        pool = np.concatenate([carried, order[of_row == k]])
        full = len(pool) // batch_size * batch_size
        batches.extend((pool[i : i + batch_size], int(length)) for i in range(0, full, batch_size))
        carried = pool[full:]
    if len(carried) and not drop_remainder:
        pad = np.full(batch_size - len(carried), -1, np.int64)
        batches.append((np.concatenate([carried, pad]), int(buckets[-1])))
    if shuffle_seed is not None and len(batches) > 1:
        permutation = np.random.default_rng(list(shuffle_seed)).permutation(len(batches))
        batches = [batches[i] for i in permutation]
    return batches


def padded_share(lengths: np.ndarray, batches: Sequence[tuple[np.ndarray, int]]) -> float:
    """The share of computed token positions that are padding, over `batches`
    (rows -1 count as wholly padding)."""
    lengths = np.asarray(lengths)
    computed = real = 0
    for rows, length in batches:
        computed += len(rows) * length
        real += int(lengths[rows[rows >= 0]].sum())
    return 1.0 - real / computed if computed else 0.0
