"""Early exit for sequence labelling (token exits): SENTEE and TOKEE.

Li et al., ACL 2021, "Accelerating BERT Inference for Sequence Labeling via
Early-Exit". The model has token exits (`ModelConfig(exit_pooling="token")`): exit
`i` (0-based) tags every token, logits [B, T, C]. A batch holds `input_ids`,
`attention_mask`, `token_type_ids` and `word_ids` [B, T] int (the index of the word
a sub-token belongs to; -1 for [CLS], [SEP] and padding).

**Word positions** (`word_positions`): the first sub-token of each word, where a
word's tag is read: attended, `word_ids[t] >= 0` and `word_ids[t] != word_ids[t-1]`
(`t = 0` counts as following a -1). The other sub-tokens of a word follow it
contiguously; they belong to the word position at or before them.

**A token fires** at exit `i` by the sequence criteria's tests (`Criterion`,
`rome_jax.exits.criteria`), applied to each token's own logits: entropy
`H < S`, `max_prob >= p`, normalised entropy `H / log C < S`; patience `t`: a
per-token PABEE counter (`counter + 1` when the token's argmax equals its argmax at
the previous exit, else 0; fires when `counter >= t`); fixed `t`: every token fires
at exit `t` (1-based). Tagging is classification: regression criteria are refused.

**Sentence-level exit (SENTEE, `sentence_exit_layers`)**: a sentence exits at the
first exit where every one of its word positions fires (patience: every word's
counter has reached `t` at that exit); at the last exit if none; at exit 0 if it has
no word position. All its tokens answer with that exit's logits. A whole sentence
leaves together, so the layers before are those of the full model: the rule reads
the full-depth logits, no re-run is needed.

**Token-level exit (TOKEE, window `k`)**, at each exit `i` in turn:

- a word position still active EXITS at `i` when it and every word position within
  `k` words on each side in the same sentence (by word order; `k = 0`: itself) have
  fired at `i` or exited before (an exited word counts as confident);
- the other sub-tokens of a word exit with its first sub-token;
- special tokens ([CLS], [SEP]) and padding stay active until every word of the
  sentence has exited, and exit at that exit: they carry the sentence's context.
  Padding is never attended and never a word, so it never holds anything up;
- at the last exit every token still active exits.

An exited token's hidden state is frozen at its exit's layer output (later layers do
not update it) and it answers with its exit's logits; the tokens still active keep
attending to the frozen states (each later layer computes their keys and values
from them). So TOKEE's decisions change later logits, unlike SENTEE's:
`token_early_exit` runs the model; `token_exit_reference` is the same rule as a
plain numpy loop over eagerly applied layers (the tests' oracle).
`token_exit_from_logits` applies the rule to full-depth logits WITHOUT freezing: an
approximation (what the decisions would be if exited tokens kept being updated),
for fast sweeps.

Results per token: `exit_index` [B, T] int32 (0-based; special tokens and padding
report the sentence's last exit) and `logits` [B, T, C] float32 (the answering
exit's). FLOPs: `rome_jax.exits.token_flops`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import apply_embeddings, apply_layer_with_exit, layer_params
from rome_jax.encoder.pytree import Params
from rome_jax.exits.batches import _model_inputs, check_batch
from rome_jax.exits.criteria import SIGNAL_CRITERIA, Criterion, ExitState, Rule, check_criterion, step_rule

Array = jax.Array


# ---------------------------------------------------------------- words and token criteria


def word_positions(word_ids: ArrayLike, attention_mask: ArrayLike | None = None) -> Array:
    """The first sub-token of each word: word_ids [..., T] (attention_mask [..., T])
    -> [..., T] bool."""
    ids = jnp.asarray(word_ids)
    before = jnp.concatenate([jnp.full_like(ids[..., :1], -1), ids[..., :-1]], axis=-1)
    first = (ids >= 0) & (ids != before)
    return first if attention_mask is None else first & jnp.asarray(attention_mask).astype(bool)


def _check_token_criterion(criterion: Criterion, num_labels: int, num_exits: int | None = None) -> None:
    check_criterion(criterion, num_labels, num_exits)
    if criterion.regression or num_labels < 2:
        raise ValueError("token exits tag classes: a regression criterion or a 1-output model does not apply")
    if criterion.name in SIGNAL_CRITERIA:
        raise ValueError(
            f"the {criterion.name!r} criterion reads a sentence's pooled representation; token exits "
            "take entropy, max_prob, normalized_entropy, patience or fixed"
        )


def init_token_state(shape: tuple[int, ...], num_labels: int) -> ExitState:
    """Per-token criterion state before exit 0: counter [*shape] int32 (patience),
    previous logits [*shape, C] float32."""
    return ExitState(jnp.zeros(shape, jnp.int32), jnp.zeros((*shape, num_labels), jnp.float32))


def token_step(
    criterion: Criterion | Rule, state: ExitState, logits: Array, index: Array | int
) -> tuple[ExitState, Array]:
    """One exit's per-token test: logits [..., C] of exit `index` (0-based, may be
    traced), state from `init_token_state(logits.shape[:-1], C)` -> (state, fired
    [...] bool). `criteria.step_rule` is shape-generic: each token is one "example"."""
    rule = criterion.rule if isinstance(criterion, Criterion) else criterion
    return step_rule(rule, state, logits, index)


def token_confidence(criterion: Criterion, logits: ArrayLike) -> Array:
    """Whether each token's own logits pass a stateless criterion (entropy, max_prob,
    normalized_entropy) at one exit: [..., C] -> [...] bool. Patience and fixed depend
    on the exit: use `token_step` or `token_fires`."""
    _check_token_criterion(criterion, np.shape(logits)[-1])
    if criterion.name in ("patience", "fixed"):
        raise ValueError(f"{criterion.name!r} depends on the exit index: use token_step or token_fires")
    z = jnp.asarray(logits, jnp.float32)
    return token_step(criterion, init_token_state(z.shape[:-1], z.shape[-1]), z, 0)[1]


@jax.jit
def _fires(rule: Rule, all_logits: Array) -> Array:
    def body(state: ExitState, inputs: tuple[Array, Array]) -> tuple[ExitState, Array]:
        return step_rule(rule, state, inputs[0], inputs[1])

    index = jnp.arange(all_logits.shape[0], dtype=jnp.int32)
    init = init_token_state(all_logits.shape[1:-1], all_logits.shape[-1])
    return lax.scan(body, init, (all_logits.astype(jnp.float32), index))[1]


def token_fires(criterion: Criterion, all_logits: ArrayLike) -> Array:
    """Every exit's per-token test, the patience counter carried over exits (no token
    exits: the counter of an undecided token): all_logits [E, ..., C] -> [E, ...] bool."""
    shape = np.shape(all_logits)
    _check_token_criterion(criterion, shape[-1], shape[0])
    return _fires(criterion.rule, jnp.asarray(all_logits))


# ---------------------------------------------------------------- SENTEE


def _check_per_token(all_logits: ArrayLike, *per_token: ArrayLike) -> None:
    shape = np.shape(all_logits)
    if len(shape) != 4:
        raise ValueError(f"all_logits must be [exits, sentences, length, classes], got shape {shape}")
    for array in per_token:
        if np.shape(array) != shape[1:3]:
            raise ValueError(f"expected [sentences, length] = {shape[1:3]} per token, got shape {np.shape(array)}")


def sentence_exit_layers(all_logits: ArrayLike, word_pos: ArrayLike, criterion: Criterion) -> Array:
    """Sentence-level exit: all_logits [E, N, T, C], word_pos [N, T] bool (from
    `word_positions`) -> exit index [N] int32 (0-based): the first exit where every
    word position fires, the last if none, 0 for a sentence without words."""
    _check_per_token(all_logits, word_pos)
    fired = token_fires(criterion, all_logits)  # [E, N, T]
    every = jnp.all(fired | ~jnp.asarray(word_pos, bool)[None], axis=-1)  # [E, N]
    every = every.at[-1].set(True)
    return jnp.argmax(every, axis=0).astype(jnp.int32)


def sentence_exit(all_logits: ArrayLike, word_pos: ArrayLike, criterion: Criterion) -> tuple[Array, Array]:
    """`sentence_exit_layers` and the answers: (exit index [N] int32, logits [N, T, C]
    of each sentence's exit for all its tokens)."""
    exits = sentence_exit_layers(all_logits, word_pos, criterion)
    z = jnp.asarray(all_logits, jnp.float32)
    return exits, jnp.take_along_axis(z, exits[None, :, None, None], axis=0)[0]


# ---------------------------------------------------------------- TOKEE: the rule


class _Words(NamedTuple):
    """A batch's words, for the window rule (all [B, T] unless said).

    word_pos: the word positions. owner int32: the word position a token follows
    (-1: special tokens and padding). near [B, T, T]: `near[b, t, s]`, both word
    positions and at most `window` words apart.
    """

    word_pos: Array
    owner: Array
    near: Array


def _words(word_ids: Array, attention_mask: Array, window: int) -> _Words:
    word_pos = word_positions(word_ids, attention_mask)
    T = word_ids.shape[-1]
    in_word = (word_ids >= 0) & attention_mask.astype(bool)
    owner = lax.cummax(jnp.where(word_pos, jnp.arange(T, dtype=jnp.int32), -1), axis=word_ids.ndim - 1)
    owner = jnp.where(in_word, owner, -1)
    rank = jnp.cumsum(word_pos, axis=-1)
    both = word_pos[..., :, None] & word_pos[..., None, :]
    near = both & (jnp.abs(rank[..., :, None] - rank[..., None, :]) <= window)
    return _Words(word_pos, owner, near)


def _decide(words: _Words, active: Array, fired: Array, last: Array | bool) -> Array:
    """The tokens that exit now: active, fired [B, T] bool -> newly exiting [B, T]."""
    done = words.word_pos & ~active
    blocking = words.word_pos & ~(done | fired)
    blocked = jnp.any(words.near & blocking[..., None, :], axis=-1)
    word_exits = words.word_pos & active & (~blocked | last)
    follows = jnp.take_along_axis(word_exits, jnp.maximum(words.owner, 0), axis=-1) & (words.owner >= 0)
    sentence_done = jnp.all(~words.word_pos | done | word_exits, axis=-1, keepdims=True)
    return active & (follows | ((words.owner < 0) & sentence_done) | last)


def exit_layers_from_fires(fired: ArrayLike, word_ids: ArrayLike, attention_mask: ArrayLike, window: int = 0) -> Array:
    """The TOKEE rule on a given fire pattern: fired [E, N, T] bool, word_ids,
    attention_mask [N, T] -> exit index [N, T] int32 (0-based)."""
    return _from_fires(jnp.asarray(fired, bool), jnp.asarray(word_ids), jnp.asarray(attention_mask), window)


@functools.partial(jax.jit, static_argnums=3)
def _from_fires(fired: Array, word_ids: Array, attention_mask: Array, window: int) -> Array:
    words = _words(word_ids, attention_mask, window)
    last = fired.shape[0] - 1

    def body(carry: tuple[Array, Array], inputs: tuple[Array, Array]) -> tuple[tuple[Array, Array], None]:
        active, exit_index = carry
        fired_i, i = inputs
        newly = _decide(words, active, fired_i, i == last)
        return (active & ~newly, jnp.where(newly, i, exit_index)), None

    init = (jnp.ones(word_ids.shape, bool), jnp.full(word_ids.shape, last, jnp.int32))
    index = jnp.arange(fired.shape[0], dtype=jnp.int32)
    return lax.scan(body, init, (fired, index))[0][1]


def token_exit_from_logits(
    all_logits: ArrayLike, word_ids: ArrayLike, attention_mask: ArrayLike, criterion: Criterion, window: int = 0
) -> tuple[Array, Array]:
    """The TOKEE rule on full-depth logits WITHOUT freezing: an approximation (exited
    tokens' states keep being updated here, which changes the later layers' logits of
    the others), for fast sweeps. all_logits [E, N, T, C]; word_ids, attention_mask
    [N, T] -> (exit index [N, T] int32, logits [N, T, C] of each token's exit)."""
    _check_per_token(all_logits, word_ids, attention_mask)
    fired = token_fires(criterion, all_logits)
    exits = exit_layers_from_fires(fired, word_ids, attention_mask, window)
    z = jnp.asarray(all_logits, jnp.float32)
    return exits, jnp.take_along_axis(z, exits[None, :, :, None], axis=0)[0]


# ---------------------------------------------------------------- TOKEE: the compiled loop


class _Carry(NamedTuple):
    layer: Array  # int32 scalar: the next layer
    hidden: Array  # [B, T, H]
    active: Array  # [B, T] bool
    logits: Array  # [B, T, C] float32: the answers of exited tokens
    exit_index: Array  # [B, T] int32, -1 until a token exits
    state: ExitState  # per token: counter [B, T], previous [B, T, C]


def _prepare(config: ModelConfig, params: Params, batch: dict, window: int) -> tuple[Array, _Words, _Carry]:
    """A token-exit batch -> (attention_mask [B, T], its words, the loop's state before
    layer 1: the embeddings, every token active)."""
    inputs = _model_inputs(batch)
    mask = inputs["attention_mask"]
    words = _words(jnp.asarray(batch["word_ids"], jnp.int32), mask, window)
    hidden = apply_embeddings(config, params, inputs)
    B, T = mask.shape
    carry = _Carry(
        jnp.int32(0),
        hidden,
        jnp.ones((B, T), bool),
        jnp.zeros((B, T, config.num_labels), jnp.float32),
        jnp.full((B, T), -1, jnp.int32),
        init_token_state((B, T), config.num_labels),
    )
    return mask, words, carry


def _layer_step(config: ModelConfig, params: Params, rule: Rule, mask: Array, words: _Words, c: _Carry) -> _Carry:
    """Layer `c.layer` and its exit for every row, the active tokens' states kept and
    the window rule applied (the loop body of both TOKEE executors)."""
    i = c.layer
    new, logits = apply_layer_with_exit(config, layer_params(params, i), c.hidden, mask)
    hidden = jnp.where(c.active[..., None], new, c.hidden)  # exited tokens stay frozen
    state, fired = step_rule(rule, c.state, logits, i)
    newly = _decide(words, c.active, fired, i == config.num_layers - 1)
    return _Carry(
        i + 1,
        hidden,
        c.active & ~newly,
        jnp.where(newly[..., None], logits, c.logits),
        jnp.where(newly, i, c.exit_index),
        state,
    )


@functools.partial(jax.jit, static_argnums=(0, 4))
def _token_early_exit(config: ModelConfig, params: Params, batch: dict, rule: Rule, window: int) -> dict:
    mask, words, first = _prepare(config, params, batch, window)
    L = config.num_layers

    def cond(c: _Carry) -> Array:
        return (c.layer < L) & jnp.any(c.active)

    def body(c: _Carry) -> _Carry:
        return _layer_step(config, params, rule, mask, words, c)

    c = lax.while_loop(cond, body, first)
    return {"exit_index": c.exit_index, "logits": c.logits, "layers_run": c.layer, "hidden": c.hidden}


def _check_token_batch(config: ModelConfig, batch: dict, criterion: Criterion, window: int) -> dict:
    if not config.token_exits:
        raise ValueError(f"token exits need ModelConfig(exit_pooling='token'), not {config.exit_pooling!r}")
    _check_token_criterion(criterion, config.num_labels, config.num_exits)
    if not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an integer >= 0, not {window!r}")
    if "word_ids" not in batch:
        raise ValueError("a token-exit batch needs word_ids [B, T] (-1 for special tokens and padding)")
    word_ids = batch["word_ids"] if hasattr(batch["word_ids"], "shape") else np.asarray(batch["word_ids"])
    batch = check_batch(config, {k: v for k, v in batch.items() if k != "word_ids"})
    if tuple(np.shape(word_ids)) != tuple(np.shape(batch["input_ids"])):
        raise ValueError(f"word_ids has shape {np.shape(word_ids)}, input_ids {np.shape(batch['input_ids'])}")
    if not np.issubdtype(np.dtype(word_ids.dtype), np.integer):
        raise ValueError(f"word_ids must be integers, not {word_ids.dtype}")
    return {**batch, "word_ids": word_ids}


def token_early_exit(config: ModelConfig, params: Params, batch: dict, criterion: Criterion, window: int = 0) -> dict:
    """TOKEE in one jitted `lax.while_loop` over the layers (config and window static,
    the criterion traced: one program per shape and window serves every criterion).

    Each iteration runs layer i and exit i for the whole batch (dense), keeps the new
    states of active tokens only and applies the window rule; it stops when no token
    of the batch is active, or after the last layer. batch: `input_ids`,
    `attention_mask`, `token_type_ids`, `word_ids` [B, T]. Returns dict(exit_index
    [B, T] int32 0-based, logits [B, T, C] float32 (the answering exit's), layers_run
    int32 scalar (layers the batch ran), hidden [B, T, H] (final states: an exited
    token's is its exit layer's output)).
    """
    batch = _check_token_batch(config, batch, criterion, window)
    keys = ("input_ids", "attention_mask", "token_type_ids", "word_ids")
    return _token_early_exit(config, params, {k: batch[k] for k in keys if k in batch}, criterion.rule, window)


# ---------------------------------------------------------------- TOKEE: the numpy oracle


def _numpy_fired(
    criterion: Criterion, logits: np.ndarray, counter: np.ndarray, previous: np.ndarray | None, i: int
) -> tuple[np.ndarray, np.ndarray]:
    z = logits.astype(np.float64)
    log_p = z - z.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    p = np.exp(log_p)
    h = -np.sum(np.where(p > 0, p * log_p, 0.0), axis=-1)
    same = np.zeros(counter.shape, bool) if previous is None else z.argmax(-1) == previous.argmax(-1)
    counter = np.where(same, counter + 1, 0)
    t = criterion.threshold
    fired = {
        "entropy": lambda: h < t,
        "max_prob": lambda: p.max(-1) >= t,
        "normalized_entropy": lambda: h / math.log(z.shape[-1]) < t,
        "patience": lambda: counter >= t,
        "fixed": lambda: np.full(counter.shape, i + 1 >= t),
    }[criterion.name]()
    return fired, counter


def token_exit_reference(
    config: ModelConfig, params: Params, batch: dict, criterion: Criterion, window: int = 0, freeze: bool = True
) -> dict:
    """The TOKEE rule as a plain loop: layers applied eagerly one at a time
    (`apply_layer_with_exit`), every decision in numpy and Python, written apart from
    `token_early_exit` (the test oracle). `freeze=False` keeps updating exited tokens
    (what `token_exit_from_logits` assumes). Returns `token_early_exit`'s dict as
    numpy arrays, plus hidden_per_layer [L', B, T, H] (the state after each layer run).
    """
    batch = _check_token_batch(config, batch, criterion, window)
    mask = np.asarray(batch.get("attention_mask", np.ones_like(batch["input_ids"])))
    wid = np.asarray(batch["word_ids"])
    B, T = mask.shape
    L = config.num_layers
    hidden = np.asarray(apply_embeddings(config, params, {k: jnp.asarray(v) for k, v in batch.items()}))
    active = np.ones((B, T), bool)
    answer = np.zeros((B, T, config.num_labels), np.float32)
    exit_index = np.full((B, T), -1, np.int32)
    counter: np.ndarray = np.zeros((B, T), np.int64)
    previous: np.ndarray | None = None
    per_layer = []
    i = 0
    while i < L and active.any():
        out = apply_layer_with_exit(config, layer_params(params, i), jnp.asarray(hidden), jnp.asarray(mask))
        new, logits = np.asarray(out[0]), np.asarray(out[1])
        hidden = np.where(active[..., None], new, hidden) if freeze else new
        per_layer.append(hidden)
        fired, counter = _numpy_fired(criterion, logits, counter, previous, i)
        previous = logits
        leaving = np.zeros((B, T), bool)
        for n in range(B):
            words = [t for t in range(T) if mask[n, t] and wid[n, t] >= 0 and (t == 0 or wid[n, t] != wid[n, t - 1])]
            confident = [not active[n, t] or fired[n, t] for t in words]
            exiting = {
                t
                for j, t in enumerate(words)
                if active[n, t] and (i == L - 1 or all(confident[max(0, j - window) : j + window + 1]))
            }
            current = -1  # the word position of the word being read
            for t in range(T):
                if t in words:
                    current = t
                if mask[n, t] and wid[n, t] >= 0 and current in exiting:
                    leaving[n, t] = True
            if all(not active[n, t] or t in exiting for t in words):  # every word has exited
                leaving[n] |= active[n]
        if i == L - 1:
            leaving |= active
        answer[leaving] = logits[leaving]
        exit_index[leaving] = i
        active &= ~leaving
        i += 1
    return {
        "exit_index": exit_index,
        "logits": answer,
        "layers_run": np.int32(i),
        "hidden": hidden,
        "hidden_per_layer": np.stack(per_layer),
    }
