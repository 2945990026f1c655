"""Per-example early exit inside batches: exited examples leave the batch.

`BatchedEarlyExit` (and `per_example_exit`, one batch): the rows still running are
kept in a bucket of fixed size (by default the batch size, and the powers of two and
1.5 x powers of two below it: `rome_jax.exits.batches.default_buckets`). The same
compiled loop (`rome_jax.exits.loop._exit_loop`) runs the bucket down the layers
until so few rows still run that they fit the next smaller bucket; the host then
gathers them into it and continues. Each bucket size compiles one program, with
layer indices and the criterion traced, so shapes, not layers or criteria, drive
compilation; a batch costs one launch per bucket it passes through, not one per
layer. `run_dataset` streams batches and can park a batch's few slow examples until
the next batch reaches their layer (`regroup=True`), so small tails ride along with
full batches.

Padding rows (`example_mask` 0) are dropped before layer 1 and exit at exit 0, as
in the other executors (`rome_jax.exits.executors`); their logits are 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import apply_embeddings
from rome_jax.encoder.pytree import Params, PyTree
from rome_jax.exits.batches import (
    _batch_arrays,
    _model_inputs,
    _padding_rows,
    check_batch,
    default_buckets,
    smallest_bucket,
)
from rome_jax.exits.criteria import Criterion, ExitState, check_criterion
from rome_jax.exits.loop import _exit_loop, start_state
from rome_jax.exits.signals import check_gates
from rome_jax.sharding import replicate_params, shard_rows

Array = jax.Array


@functools.partial(jax.jit, static_argnums=0)
def _embed(config: ModelConfig, params: Params, batch: dict) -> tuple[Array, Array, Array, ExitState]:
    """-> (hidden [B, T, H], attention_mask [B, T], padding [B], the criterion's start state)."""
    inputs = _model_inputs(batch)
    hidden = apply_embeddings(config, params, inputs)
    mask = inputs["attention_mask"]
    return hidden, mask, _padding_rows(batch), start_state(config, hidden, mask)


_segment = jax.jit(_exit_loop, static_argnums=0)


@jax.jit
def _gather(tree: PyTree, rows: Array) -> PyTree:
    return jax.tree.map(lambda x: x[rows], tree)


def _concat(trees: Sequence[PyTree]) -> PyTree:
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *trees)


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
        self.criterion = check_gates(check_criterion(criterion, config.num_labels, config.num_exits), params)
        self._rule = criterion.rule
        self.buckets = None if buckets is None else tuple(sorted(set(buckets), reverse=True))
        self._batch_sizes: set[int] = set()

    def _buckets(self, capacity: int) -> set[int]:
        return set(self.buckets or default_buckets(capacity)) | self._batch_sizes

    def _bucket(self, rows: int, capacity: int) -> int:
        return smallest_bucket(rows, self._buckets(capacity))

    def _start(self, batch: dict, results: _Results) -> _Group:
        hidden, attention_mask, padding, state = _embed(self.config, self.params, shard_rows(_batch_arrays(batch)))
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
            hidden,
            attention_mask,
            state,
            padding,
            slots,
            0,
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

    def compile(self, lengths: Iterable[int], capacity: int, keys: Sequence[str] = ("token_type_ids",)) -> int:
        """Compiles now every program that batches of at most `capacity` rows at these
        sequence lengths can need, without regrouping: for each length and each bucket
        size, the embeddings and the layer loop, and the gathers from each bucket into
        every smaller one. A server calls it at start so that no request waits for
        XLA. Runs the programs on masked dummy rows (the jit caches hold programs, not
        lowered text); returns how many (length, bucket) shapes it ran.

        keys: the token arrays beside `input_ids` and `attention_mask` that the
        batches will carry (their presence changes the programs)."""
        sizes = sorted({b for b in self._buckets(capacity) if b <= capacity}, reverse=True)
        shapes = 0
        for length in sorted(set(lengths)):
            for size in sizes:
                batch: dict[str, np.ndarray] = {k: np.zeros((size, length), np.int32) for k in ("input_ids", *keys)}
                batch["attention_mask"] = np.ones((size, length), np.int32)
                batch["example_mask"] = np.ones(size, bool)
                results = _Results(self.config.num_layers, self.config.num_labels)
                group = self._start(batch, results)
                # every row runs one segment (a stop at layer 1 of `size` rows: the same program)
                self._run_segment(group, results, {}, capacity, park_limit=0)
                for smaller in sizes:
                    if smaller < size:
                        rows = np.arange(smaller) % size
                        jax.block_until_ready(group.gather(rows, np.full(smaller, -1)).hidden)
                shapes += 1
        return shapes

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
