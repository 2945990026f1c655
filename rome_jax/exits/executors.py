"""Three early-exit executors that make the same decisions (`rome_jax.exits.criteria.step`).

- `simulated_exit`: every exit computed (`all_exits`), the exit replayed afterwards
  (`rome_jax.exits.criteria.simulate`). No saving; the reference, and what threshold sweeps use.
- `while_loop_exit`: one compiled `lax.while_loop` over the stacked layers that stops
  when every example of the batch has exited. At batch 1 it runs exactly the layers
  the example needs; in a batch, the slowest example sets the depth.
- `BatchedEarlyExit` / `per_example_exit`: examples leave the batch as they exit.
  The rows still running are kept in a bucket of fixed size (by default the batch
  size, and the powers of two and 1.5 x powers of two below it). The same compiled loop runs the bucket down
  the layers until so few rows still run that they fit the next smaller bucket;
  the host then gathers them into it and continues. Each bucket size compiles one
  program, with layer indices and the criterion traced, so shapes, not layers or
  criteria, drive compilation; a batch costs one launch per bucket it passes
  through, not one per layer. `run_dataset` streams batches and can park a batch's
  few slow examples until the next batch reaches their layer (`regroup=True`), so
  small tails ride along with full batches.

All three drive `_exit_loop` (or, for the reference, `simulate`) with the same
criterion step.

Padding rows (`example_mask` 0 in a batch) are forced to exit at exit 0 in every
executor: they never keep a loop running and never change other rows' decisions
(`BatchedEarlyExit` drops them before layer 1; their logits are not specified).

Every executor accepts any sequence length T (up to the model's positions) and
compiles one program per shape it meets. Nothing here pads or cuts: callers cut
their batches to a few length buckets (`rome_jax.data.buckets`), e.g. with
`cut_to_bucket`, so that a batch of short sentences does not run 128 positions of
padding and the number of compiled programs stays bounded. Positions past a row's
last attended token do not change its logits (the attention mask hides them), up
to float rounding: the same sums in another order.

Batches are dicts of [B, T] int arrays `input_ids`, `attention_mask`,
`token_type_ids` (optional) and `example_mask` ([B], optional); other keys are
ignored, except one that looks like a missing key misspelt or under another
codebase's name (`input_mask`, `segment_ids`, `attention_masks`): that is refused,
since the model would silently read no mask. Every executor checks a batch first
(`check_batch`: keys, shapes, dtypes, ids in range; about 25 microseconds on the host).

With several local devices (a GPU host, a TPU VM, fake CPU devices), every executor
splits a batch whose rows divide evenly over them on a `data` mesh axis, parameters
replicated (`rome_jax.sharding.place`): data-parallel inference, the same
decisions and logits up to float rounding. With one device nothing changes.

"The same decisions" holds in float32. In bfloat16 the per-example executor computes
a row in batches of other sizes than the full forward does, which rounds differently,
so an example whose criterion value lies within rounding of the threshold can exit
one layer apart; `evaluation.evaluate_split` reports whether they agreed
(`executors_agree`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rome_jax.data.buckets import bucket_index, sequence_lengths
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import INPUT_KEYS, MultiExitEncoder, apply_embeddings, apply_layer_with_exit, layer_params
from rome_jax.encoder.pytree import Params, PyTree
from rome_jax.exits.criteria import Criterion, ExitState, Rule, check_criterion, init_state, simulate, step_rule
from rome_jax.sharding import place, replicate_params, shard_rows

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


# ---------------------------------------------------------------- all exits, simulated


@functools.partial(jax.jit, static_argnums=0)
def _all_exits(config: ModelConfig, params: Params, batch: dict) -> Array:
    inputs = _model_inputs(batch)
    outputs = MultiExitEncoder(config).apply(
        {"params": params},
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        token_type_ids=inputs["token_type_ids"],
    )
    return cast(dict[str, Array], outputs)["logits"]  # apply returns the output alone: no collection is mutable


def all_exits(config: ModelConfig, params: Params, batch: dict) -> Array:
    """Logits of every exit (full depth, jitted): [E, B, C] float32. The batch is
    checked first (`check_batch`)."""
    return _all_exits(config, *place(params, _batch_arrays(check_batch(config, batch), INPUT_KEYS)))


def simulated_exit(config: ModelConfig, params: Params, batch: dict, criterion: Criterion) -> dict:
    """`all_exits` then `simulate`: dict(exit_index [B] int32, logits [B, C],
    layers_run = L, all_logits [E, B, C])."""
    all_logits = all_exits(config, params, batch)
    exit_index, logits = simulate(criterion, all_logits, batch.get("example_mask"))
    return {
        "exit_index": exit_index,
        "logits": logits,
        "layers_run": jnp.int32(config.num_layers),
        "all_logits": all_logits,
    }


# ---------------------------------------------------------------- the early-exit loop


class _Segment(NamedTuple):
    """What `_exit_loop` returns for a batch (or bucket) of b rows.

    next_layer: the layer it stopped before (int32 scalar).
    hidden [b, T, H], state: to continue from `next_layer`.
    running [b] bool: rows that have not exited.
    exit_index [b] int32: the exit where a row exited in this segment, else -1.
    logits [b, C] float32: the answers of the rows that exited in this segment.
    """

    next_layer: Array
    hidden: Array
    state: ExitState
    running: Array
    exit_index: Array
    logits: Array


def _exit_loop(
    config: ModelConfig,
    params: Params,
    rule: Rule,
    hidden: Array,
    attention_mask: Array,
    state: ExitState,
    padding: Array,
    running: Array,
    start: Array | int,
    stop_layer: Array | int,
    stop_running: Array | int,
) -> _Segment:
    """A `lax.while_loop` over layers `start, start+1, ...` (indices traced), each
    followed by its exit and the criterion's step. Stops before `stop_layer`, or once
    at most `stop_running` rows still run (0: when every row has exited).

    Exited rows stay in the arrays (their results are frozen); padding rows exit at
    the first layer they run; everyone exits at the last layer.
    """
    num_layers = config.num_layers

    def cond(seg: _Segment):
        return (seg.next_layer < stop_layer) & (seg.next_layer < num_layers) & (jnp.sum(seg.running) > stop_running)

    def body(seg: _Segment) -> _Segment:
        index = seg.next_layer
        hidden, logits = apply_layer_with_exit(config, layer_params(params, index), seg.hidden, attention_mask)
        state, exit_now = step_rule(rule, seg.state, logits, index)
        newly = seg.running & (exit_now | padding | (index == num_layers - 1))
        return _Segment(
            index + 1,
            hidden,
            state,
            seg.running & ~newly,
            jnp.where(newly, index, seg.exit_index),
            jnp.where(newly[:, None], logits, seg.logits),
        )

    rows = hidden.shape[0]
    first = _Segment(
        jnp.asarray(start, jnp.int32),
        hidden,
        state,
        running,
        jnp.full((rows,), -1, jnp.int32),
        jnp.zeros((rows, config.num_labels), jnp.float32),
    )
    return lax.while_loop(cond, body, first)


# ---------------------------------------------------------------- one while loop per batch


@functools.partial(jax.jit, static_argnums=0)
def _while_loop_exit(config: ModelConfig, params: Params, batch: dict, rule: Rule) -> dict:
    inputs = _model_inputs(batch)
    hidden = apply_embeddings(config, params, inputs)
    rows = hidden.shape[0]
    seg = _exit_loop(
        config,
        params,
        rule,
        hidden,
        inputs["attention_mask"],
        init_state(rule, rows, config.num_labels),
        _padding_rows(batch),
        jnp.ones((rows,), bool),
        0,
        config.num_layers,
        0,
    )
    return {"exit_index": seg.exit_index, "logits": seg.logits, "layers_run": seg.next_layer}


def while_loop_exit(config: ModelConfig, params: Params, batch: dict, criterion: Criterion) -> dict:
    """Early exit in one jitted `lax.while_loop` over the stacked layers.

    Stops when every (non-padding) example has exited. Returns dict(exit_index [B]
    int32 0-based, logits [B, C] float32, layers_run int32 scalar: layers executed,
    carried in the loop).
    """
    check_criterion(criterion, config.num_labels, config.num_exits)
    return _while_loop_exit(config, *place(params, _batch_arrays(check_batch(config, batch))), criterion.rule)


# ---------------------------------------------------------------- per example inside batches


@functools.partial(jax.jit, static_argnums=0)
def _embed(config: ModelConfig, params: Params, batch: dict) -> tuple[Array, Array, Array]:
    """-> (hidden [B, T, H], attention_mask [B, T], padding [B])."""
    inputs = _model_inputs(batch)
    return apply_embeddings(config, params, inputs), inputs["attention_mask"], _padding_rows(batch)


_segment = jax.jit(_exit_loop, static_argnums=0)


@jax.jit
def _gather(tree: PyTree, rows: Array) -> PyTree:
    return jax.tree.map(lambda x: x[rows], tree)


def _concat(trees: Sequence[PyTree]) -> PyTree:
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *trees)


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


@dataclasses.dataclass
class _Group:
    """Rows that run the same layer next: device arrays and host bookkeeping.

    slots [b] int64: the example id of each row; -1 marks a row whose example has
    exited, a padding row, or a filler keeping a bucket's shape: it is computed (until
    the next compaction), then ignored.
    """

    hidden: Array  # [b, T, H]
    attention_mask: Array  # [b, T]
    state: ExitState  # counter [b], previous [b, C]
    padding: Array  # [b] bool
    slots: np.ndarray
    next_layer: int

    @property
    def live(self) -> np.ndarray:
        return np.flatnonzero(self.slots >= 0)

    def arrays(self) -> tuple[Array, Array, ExitState, Array]:
        """(hidden, attention_mask, state, padding): the device arrays, rows first."""
        return self.hidden, self.attention_mask, self.state, self.padding

    def gather(self, rows: np.ndarray, slots: np.ndarray) -> _Group:
        hidden, attention_mask, state, padding = _gather(self.arrays(), jnp.asarray(rows, jnp.int32))
        return _Group(hidden, attention_mask, state, padding, slots=slots, next_layer=self.next_layer)

    def only_live(self) -> _Group:
        live = self.live
        return self if len(live) == len(self.slots) else self.gather(live, self.slots[live])


class _Results:
    """Per-example answers, grown batch by batch, and the work counters.

    example_layers: layers run summed over real examples (= sum(exit_index + 1) over
      the rows that are not padding).
    row_layers: layers run summed over bucket rows, exited and filler rows included
      (what was computed).
    layer_steps: (layer, bucket) steps run.
    launches: compiled programs launched (one runs several layer steps).
    """

    def __init__(self, num_layers: int, num_labels: int):
        self.num_layers = num_layers
        self.size = 0
        self.exit_index = np.zeros(0, np.int32)
        self.logits = np.zeros((0, num_labels), np.float32)
        self.real = np.zeros(0, bool)
        self.row_layers = self.layer_steps = self.launches = 0

    def grow(self, real: np.ndarray) -> int:
        """Room for `len(real)` more examples (capacity doubles; `real` [b] bool: not
        padding); returns the first new id."""
        first, self.size = self.size, self.size + len(real)
        if self.size > len(self.exit_index):
            extra = max(self.size, 2 * len(self.exit_index)) - len(self.exit_index)
            self.exit_index = np.concatenate([self.exit_index, np.zeros(extra, np.int32)])
            self.logits = np.concatenate([self.logits, np.zeros((extra, self.logits.shape[1]), np.float32)])
            self.real = np.concatenate([self.real, np.zeros(extra, bool)])
        self.exit_index[first : self.size] = np.where(real, self.num_layers - 1, 0)  # padding: exit 0
        self.real[first : self.size] = real
        return first

    def as_dict(self) -> dict:
        n = self.size
        return {
            "exit_index": self.exit_index[:n].copy(),
            "logits": self.logits[:n].copy(),
            "example_layers": int((self.exit_index[:n] + 1)[self.real[:n]].sum()),
            "row_layers": self.row_layers,
            "layer_steps": self.layer_steps,
            "launches": self.launches,
        }


class BatchedEarlyExit:
    """Per-example early exit inside batches: exited examples leave the batch.

    config, params: the model. criterion: the exit criterion.
    buckets: the row counts the compiled loop may run with (default:
      `default_buckets(batch size)`; batch sizes met are always added). Each size
      compiles one program, used for every layer and criterion.
    """

    def __init__(self, config: ModelConfig, params: Params, criterion: Criterion, buckets: Sequence[int] | None = None):
        self.config = config
        self.params = replicate_params(params)  # on every local device, where there are several
        self.criterion = check_criterion(criterion, config.num_labels, config.num_exits)
        self._rule = criterion.rule
        self.buckets = None if buckets is None else tuple(sorted(set(buckets), reverse=True))
        self._batch_sizes: set[int] = set()

    def _buckets(self, capacity: int) -> set[int]:
        return set(self.buckets or default_buckets(capacity)) | self._batch_sizes

    def _bucket(self, rows: int, capacity: int) -> int:
        return smallest_bucket(rows, self._buckets(capacity))

    def _start(self, batch: dict, results: _Results) -> _Group:
        hidden, attention_mask, padding = _embed(self.config, self.params, shard_rows(_batch_arrays(batch)))
        size = hidden.shape[0]
        self._batch_sizes.add(size)
        real = (
            np.ones(size, bool)
            if "example_mask" not in batch
            else np.asarray(jax.device_get(batch["example_mask"])).astype(bool)
        )
        first = results.grow(real)
        # padding rows (example_mask 0) never run: the first `_fit` drops them
        slots = np.where(real, np.arange(first, first + size), -1)
        return _Group(
            hidden, attention_mask, init_state(self.criterion, size, self.config.num_labels), padding, slots, 0
        )

    def _run_segment(
        self, group: _Group, results: _Results, parked: dict[int, list[_Group]], capacity: int, park_limit: int
    ) -> _Group:
        """Runs the group's bucket down the layers in one launch, until compacting into
        the next smaller bucket pays (or parking, or parked rows wait at the next
        layer), and records the examples that exit."""
        size, start = len(group.slots), group.next_layer
        smaller = max([b for b in self._buckets(capacity) if b < size], default=0)
        stop_layer = min([layer for layer in parked if layer > start], default=self.config.num_layers)
        running = group.slots >= 0
        seg = _segment(
            self.config,
            self.params,
            self._rule,
            group.hidden,
            group.attention_mask,
            group.state,
            group.padding,
            running,
            np.int32(start),
            np.int32(stop_layer),
            np.int32(max(smaller, park_limit)),
        )
        next_layer, exit_index, logits = jax.device_get((seg.next_layer, seg.exit_index, seg.logits))
        layers = int(next_layer) - start
        results.launches += 1
        results.layer_steps += layers
        results.row_layers += size * layers
        leaving = running & (exit_index >= 0)
        if leaving.any():
            ids = group.slots[leaving]
            results.exit_index[ids] = exit_index[leaving]
            results.logits[ids] = logits[leaving]
        slots = np.where(leaving, -1, group.slots)
        return _Group(seg.hidden, group.attention_mask, seg.state, group.padding, slots, int(next_layer))

    def _fit(self, group: _Group, capacity: int) -> _Group:
        """The group's live rows in the smallest bucket that holds them (filler rows
        repeat a live row); unchanged when it already has that size."""
        live = group.live
        size = self._bucket(len(live), capacity)
        if size == len(group.slots):
            return group
        filler = size - len(live)
        rows = np.concatenate([live, np.full(filler, live[0])])
        return group.gather(rows, np.concatenate([group.slots[live], np.full(filler, -1)]))

    def _join(self, group: _Group, parked: dict[int, list[_Group]], capacity: int) -> _Group:
        """Adds to `group` the parked rows waiting at its layer, as many as fit."""
        waiting = parked.pop(group.next_layer, [])
        room = capacity - len(group.live)
        taken, left = [], []
        for other in waiting:
            if len(other.slots) <= room:
                taken.append(other)
                room -= len(other.slots)
            else:
                left.append(other)
        if left:
            parked[group.next_layer] = left
        if not taken:
            return group
        merged = [group.only_live(), *taken]
        hidden, attention_mask, state, padding = _concat([g.arrays() for g in merged])
        return _Group(
            hidden,
            attention_mask,
            state,
            padding,
            slots=np.concatenate([g.slots for g in merged]),
            next_layer=group.next_layer,
        )

    def _descend(
        self, group: _Group, results: _Results, parked: dict[int, list[_Group]], capacity: int, park_below: float | None
    ) -> None:
        """Runs a group down the layers until its examples have exited or it is parked."""
        # Parking when fewer than park_below * capacity rows run: at most park_limit.
        park_limit = 0 if park_below is None else max(math.ceil(park_below * capacity) - 1, 0)
        if not len(group.live):  # a batch of padding alone
            return
        while True:
            group = self._fit(self._join(group, parked, capacity), capacity)
            group = self._run_segment(group, results, parked, capacity, park_limit)
            live = len(group.live)
            if not live or group.next_layer >= self.config.num_layers:
                return
            if live <= park_limit:
                parked.setdefault(group.next_layer, []).append(group.only_live())
                return

    def __call__(self, batch: dict) -> dict:
        """One batch: dict(exit_index [B] int32, logits [B, C] float32,
        example_layers, row_layers, layer_steps, launches)."""
        return self.run_dataset([batch], regroup=False)

    def run_dataset(self, batches: Iterable[dict], regroup: bool = True, park_below: float = 0.25) -> dict:
        """Streams batches (all of one sequence length); results in input order.

        regroup: when fewer than `park_below` x batch size examples of a batch are
          still running, they are parked at their layer and join a later batch when it
          reaches that layer, so their layers run in a full cohort. At the end, parked
          cohorts run shallowest first, picking up deeper ones on the way.
        Returns dict(exit_index [N] int32, logits [N, C] float32, example_layers,
        row_layers, layer_steps, launches) (see `_Results`). Padding rows (a batch's
        `example_mask` 0) are not run: their exit_index is 0, as in the other
        executors and `exits.simulate`, their logits 0.
        """
        results = _Results(self.config.num_layers, self.config.num_labels)
        parked: dict[int, list[_Group]] = {}
        capacity = 1
        length = None
        for k, batch in enumerate(batches):
            batch = check_batch(self.config, batch)
            if length is None:
                length = batch["input_ids"].shape[1]
            elif batch["input_ids"].shape[1] != length:
                raise ValueError(
                    f"batch {k} has sequence length {batch['input_ids'].shape[1]}, the first "
                    f"{length}: run_dataset needs one length (pad every batch to it)"
                )
            group = self._start(batch, results)
            capacity = max(capacity, len(group.slots))
            self._descend(group, results, parked, capacity, park_below if regroup else None)
        while parked:
            layer = min(parked)
            first, *rest = parked.pop(layer)
            if rest:
                parked[layer] = rest
            self._descend(first, results, parked, capacity, None)
        return results.as_dict()


def per_example_exit(
    config: ModelConfig, params: Params, batch: dict, criterion: Criterion, buckets: Sequence[int] | None = None
) -> dict:
    """Per-example early exit of one batch (see `BatchedEarlyExit`).

    Returns dict(exit_index [B] int32, logits [B, C] float32, example_layers,
    row_layers, layer_steps, launches).
    """
    return BatchedEarlyExit(config, params, criterion, buckets)(batch)
