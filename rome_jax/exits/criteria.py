"""Exit criteria as pure functions, and the simulation of early exit over all exits.

A criterion looks at the logits of exit `i` (0-based) and says, per example, whether
to stop there. Every executor (`rome_jax.exits.executors`) and the simulation below drive
the same stateful `step`, so they all make the same decisions:

    state = init_state(criterion, batch_size, num_labels)
    for i in range(num_exits):
        state, exit_now = step(criterion, state, logits_i, i)   # [B] bool

An example answers at the first exit where `exit_now` is True; if none passes, the
last exit answers.

Criteria (`Criterion.name`):

- "entropy" (DeeBERT, RomeBERT): `H(softmax(z_i)) < threshold` (nats);
- "max_prob" (confidence): `max softmax(z_i) >= threshold`;
- "normalized_entropy" (FastBERT's "speed"): `H(softmax(z_i)) / log(C) < threshold`,
  so one setting means the same confidence for 2 or 40 classes;
- "patience" (PABEE): the prediction stayed the same for `t = threshold`
  consecutive exits. As PABEE's code: `counter = counter + 1 if pred_i == pred_{i-1}
  else 0`, exit when `counter == t`; so `t = 1` exits at the 2nd exit when exits 1
  and 2 agree. The prediction is the argmax, or for regression the output itself,
  "the same" when it moved by less than `tolerance`;
- "fixed": always answer at exit `threshold` (1-based);
- "lte" (BERxiT's learning to exit): the LTE gate's certainty `u_i >= threshold`,
  `u_i = sigmoid(w . p_i + b)` on the exit's pooler output `p_i`, one gate shared by
  every exit, fitted to predict that exit `i` is right (classification) or how close
  it is (regression) (`rome_jax.exits.gates`);
- "saturation" (CALM's state propagation): `cos(s_i, s_{i-1}) >= threshold`, `s_i`
  the layer's representation as the exit pools it (`encoder.model.exit_state`); no
  parameters; the first exit compares layer 1 with the embeddings;
- "meta" (CALM's meta classifier): the meta gate's `sigmoid(w . p_i + b) >=
  threshold`, fitted to predict that exit `i` agrees with the last exit.

The last three read `Signals` (`rome_jax.exits.signals`) that the executors compute
next to the logits; "lte" and "meta" need fitted gates (`params["exit_gates"]`).

Entropy and probabilities of a single regression output mean nothing: those criteria
raise ValueError for `regression=True`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

Array = jax.Array

CRITERIA = ("entropy", "max_prob", "normalized_entropy", "patience", "fixed", "lte", "saturation", "meta")
SIGNAL_CRITERIA = ("lte", "saturation", "meta")
"""Criteria that read `Signals` rather than the logits alone."""
GATE_CRITERIA = ("lte", "meta")
"""Criteria that need a fitted gate (`rome_jax.exits.gates`)."""
_CLASSIFICATION_ONLY = ("entropy", "max_prob", "normalized_entropy")

# PABEE's own default `regression_threshold` is 0 with a strict `<`: a regression model
# then never exits early (two float outputs are almost never identical), the same silent
# no-op as DeeBERT's default entropy threshold. Ours is 0.1 (in label units; STS-B
# labels span 0..5). Pass `tolerance=` to change it.
DEFAULT_TOLERANCE = 0.1


@dataclasses.dataclass(frozen=True)
class Criterion:
    """An exit criterion; frozen and hashable, so it can be a static jit argument.

    name: one of CRITERIA.
    threshold: entropy bound (nats) / probability / normalised-entropy bound / the
      patience `t` (an integer >= 1) / the 1-based exit of "fixed".
    regression: the model has one output unit (patience and fixed only).
    tolerance: for regression patience, outputs closer than this count as the same.
    """

    name: str
    threshold: float
    regression: bool = False
    tolerance: float = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        if self.name not in CRITERIA:
            raise ValueError(f"unknown exit criterion {self.name!r}; known: {', '.join(CRITERIA)}")
        if (
            isinstance(self.threshold, (bool, np.bool_))
            or not isinstance(self.threshold, numbers.Real)
            or not math.isfinite(self.threshold)
        ):
            raise ValueError(f"{self.name} threshold must be a finite number, not {self.threshold!r}")
        if self.name in ("entropy", "normalized_entropy") and self.threshold < 0:
            raise ValueError(
                f"{self.name} threshold must be >= 0 (an entropy is never below 0, so "
                f"nothing would exit early), not {self.threshold}"
            )
        if self.regression and self.name in _CLASSIFICATION_ONLY:
            raise ValueError(
                f"the {self.name!r} criterion needs class probabilities; "
                "a regression model can exit by 'patience' or 'fixed'"
            )
        if self.name in ("patience", "fixed") and (self.threshold != int(self.threshold) or self.threshold < 1):
            raise ValueError(f"{self.name} threshold must be an integer >= 1, not {self.threshold}")
        if self.name in ("max_prob", "lte", "meta") and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"{self.name} threshold must be in [0, 1], not {self.threshold}")
        if self.name == "saturation" and not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"saturation threshold (a cosine) must be in [-1, 1], not {self.threshold}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, not {self.tolerance}")

    @property
    def rule(self) -> Rule:
        """This criterion as arrays, for compiled code that serves every criterion."""
        # numpy scalars: jit takes them as traced arguments without eager device work.
        return Rule(
            code=np.int32(CRITERIA.index(self.name)),
            threshold=np.float32(self.threshold),
            regression=np.bool_(self.regression),
            tolerance=np.float32(self.tolerance),
        )


def check_criterion(criterion: Criterion, num_labels: int, num_exits: int | None = None) -> Criterion:
    """Raises ValueError when the criterion does not fit a model with `num_labels`
    outputs (and `num_exits` exits, when given).

    One output unit is a regression: entropy and probabilities of it are meaningless
    (an entropy threshold would silently exit every example at exit 1), and its
    patience compares outputs within `tolerance`, so needs `regression=True`.
    "fixed" beyond the last exit would silently answer at the last one.
    """
    if not isinstance(criterion, Criterion):
        raise TypeError(f"expected an exits.Criterion, e.g. Criterion('entropy', 0.1), not {criterion!r}")
    if criterion.name == "fixed" and num_exits is not None and criterion.threshold > num_exits:
        raise ValueError(f"fixed exit {int(criterion.threshold)} is beyond the model's {num_exits} exits")
    if num_labels == 1 and criterion.name in _CLASSIFICATION_ONLY:
        raise ValueError(
            f"the {criterion.name!r} criterion needs class probabilities, but the model "
            "has a single (regression) output; use Criterion('patience', t, regression=True)"
        )
    if criterion.name == "patience" and criterion.regression != (num_labels == 1):
        raise ValueError(
            f"patience with regression={criterion.regression} on a model with {num_labels} "
            f"output(s): set regression={num_labels == 1}"
        )
    return criterion


class Rule(NamedTuple):
    """A criterion as (traceable) arrays: `step_rule` takes it as an argument, so one
    compilation of an executor serves every criterion and threshold.

    code: int32 index of the name in CRITERIA; threshold, tolerance: float32;
    regression: bool. Scalars (numpy's from `Criterion.rule`, traced inside jit) or,
    stacked, [S] arrays (`simulate_sweep`).
    """

    code: ArrayLike
    threshold: ArrayLike
    regression: ArrayLike
    tolerance: ArrayLike


class ExitState(NamedTuple):
    """What a criterion carries from exit to exit.

    counter [B] int32: consecutive exits the prediction stayed the same (patience).
    previous [B, C] float32: the previous exit's logits (patience).
    previous_state [B, H] float32: the previous layer's pooled representation, for
      saturation, in the compiled executors (None where saturation is precomputed,
      as in `simulate`); the executors update it, `step_rule` passes it on.
    """

    counter: Array
    previous: Array
    previous_state: Array | None = None


class Signals(NamedTuple):
    """Per-exit values the signal criteria read, each [B] float32 (stacked: [E, B]).

    lte: the LTE gate's certainty in (0, 1) (0 without a gate).
    meta: the meta gate's probability of agreeing with the last exit (0 without one).
    saturation: cosine of this and the previous layer's pooled representations.
    """

    lte: Array | np.ndarray
    meta: Array | np.ndarray
    saturation: Array | np.ndarray


def _entropy_and_max_prob(logits: Array) -> tuple[Array, Array]:
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(log_p)
    return -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1), jnp.max(p, axis=-1)


def entropy(logits: Array) -> Array:
    """Entropy in nats of softmax(logits): [..., C] -> [...]."""
    return _entropy_and_max_prob(logits)[0]


def normalized_entropy(logits: Array) -> Array:
    """Entropy divided by its maximum log(C), in [0, 1]: [..., C] -> [...]."""
    num_classes = logits.shape[-1]
    return entropy(logits) / math.log(num_classes) if num_classes > 1 else jnp.zeros(logits.shape[:-1])


def max_prob(logits: Array) -> Array:
    """Largest softmax probability: [..., C] -> [...]."""
    return _entropy_and_max_prob(logits)[1]


def init_state(
    criterion: Criterion | Rule | None, batch_size: int, num_labels: int, state_size: int | None = None
) -> ExitState:
    """The state before exit 0: counter 0, no previous logits (nor, with
    `state_size` H, previous representation: zeros [B, H]).

    Every criterion carries the same state, so that all executors thread one pytree
    whatever the criterion.
    """
    return ExitState(
        counter=jnp.zeros((batch_size,), jnp.int32),
        previous=jnp.zeros((batch_size, num_labels), jnp.float32),
        previous_state=None if state_size is None else jnp.zeros((batch_size, state_size), jnp.float32),
    )


def step(
    criterion: Criterion, state: ExitState, logits: Array, index: Array | int, signals: Signals | None = None
) -> tuple[ExitState, Array]:
    """One exit's decision: logits [B, C] of exit `index` (0-based, may be traced),
    and this exit's `signals` (each [B]; None: zeros, for criteria that read none).

    Returns (new state, exit_now [B] bool). Pure jnp: usable in lax loops and vmap.
    ValueError for a signal criterion without `signals`.
    """
    if signals is None and criterion.name in SIGNAL_CRITERIA:
        raise ValueError(f"the {criterion.name!r} criterion reads the exit's signals: pass signals=")
    return step_rule(criterion.rule, state, logits, index, signals)


def step_rule(
    rule: Rule, state: ExitState, logits: Array, index: Array | int, signals: Signals | None = None
) -> tuple[ExitState, Array]:
    """`step` with the criterion as arrays (see `Rule`), so that it can be traced.

    Every criterion's test is computed (a few operations on [B, C]) and the rule's
    code picks one: compiled executors do not specialise on the criterion.
    """
    logits = logits.astype(jnp.float32)
    index = jnp.asarray(index)
    h, top = _entropy_and_max_prob(logits)
    same_output = jnp.all(jnp.abs(logits - state.previous) < rule.tolerance, axis=-1)
    same_class = jnp.argmax(logits, axis=-1) == jnp.argmax(state.previous, axis=-1)
    same = jnp.where(rule.regression, same_output, same_class) & (index > 0)  # exit 0: nothing before
    counter = jnp.where(same, state.counter + 1, 0)
    num_classes = logits.shape[-1]
    if signals is None:
        zero = jnp.zeros(counter.shape, jnp.float32)
        signals = Signals(zero, zero, zero)
    tests = {
        "entropy": h < rule.threshold,
        "max_prob": top >= rule.threshold,
        "normalized_entropy": (h / math.log(num_classes) if num_classes > 1 else h) < rule.threshold,
        "patience": counter >= rule.threshold,
        "fixed": jnp.broadcast_to(index + 1 >= rule.threshold, counter.shape),
        "lte": signals.lte >= rule.threshold,
        "saturation": signals.saturation >= rule.threshold,
        "meta": signals.meta >= rule.threshold,
    }
    exit_now = jnp.select([rule.code == k for k in range(len(CRITERIA))], [tests[name] for name in CRITERIA], False)
    return ExitState(counter=counter, previous=logits, previous_state=state.previous_state), exit_now


StepFn = Callable[[ExitState, Array, Array, Signals | None], tuple[ExitState, Array]]


def _simulate(
    step_fn: StepFn, all_logits: Array, example_mask: ArrayLike | None, signals: Signals | None = None
) -> tuple[Array, Array]:
    num_exits, batch_size, num_labels = all_logits.shape
    forced = jnp.zeros((batch_size,), bool) if example_mask is None else ~jnp.asarray(example_mask).astype(bool)

    def body(
        carry: tuple[ExitState, Array, Array, Array], inputs: tuple[Array, Array, Signals | None]
    ) -> tuple[tuple[ExitState, Array, Array, Array], None]:
        state, done, exit_index, answer = carry
        logits, index, exit_signals = inputs
        state, exit_now = step_fn(state, logits, index, exit_signals)
        exit_now = exit_now | forced | (index == num_exits - 1)
        newly = exit_now & ~done
        exit_index = jnp.where(newly, index, exit_index)
        answer = jnp.where(newly[:, None], logits, answer)
        return (state, done | exit_now, exit_index, answer), None

    init = (
        init_state(None, batch_size, num_labels),
        jnp.zeros((batch_size,), bool),
        jnp.full((batch_size,), num_exits - 1, jnp.int32),
        jnp.zeros((batch_size, num_labels), jnp.float32),
    )
    indices = jnp.arange(num_exits, dtype=jnp.int32)
    xs = (all_logits.astype(jnp.float32), indices, signals)
    (_, _, exit_index, answer), _ = lax.scan(body, init, xs)
    return exit_index, answer


def simulate(
    criterion: Criterion,
    all_logits: ArrayLike,
    example_mask: ArrayLike | None = None,
    signals: Signals | None = None,
) -> tuple[Array, Array]:
    """Early exit replayed on the logits of every exit (a lax.scan of `step` over E).

    all_logits [E, B, C] -> (exit_index [B] int32, 0-based; logits_at_exit [B, C]).
    Rows with `example_mask` 0 (padding) exit at exit 0. `signals` (each [E, B];
    `rome_jax.exits.signals.all_exit_signals`) are needed by SIGNAL_CRITERIA.
    """
    _check_logits(all_logits, example_mask)
    check_criterion(criterion, np.shape(all_logits)[-1], np.shape(all_logits)[0])
    return _simulate_jit(
        criterion.rule, jnp.asarray(all_logits), example_mask, _check_signals(criterion.name, all_logits, signals)
    )


def simulate_sweep(
    name: str,
    thresholds: Sequence[float] | np.ndarray,
    all_logits: ArrayLike,
    *,
    regression: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    example_mask: ArrayLike | None = None,
    signals: Signals | None = None,
) -> tuple[Array, Array]:
    """`simulate` for many thresholds of one criterion at once (vmap over thresholds).

    thresholds [S]; all_logits [E, B, C]; signals as `simulate`'s ->
    (exit_index [S, B] int32, logits_at_exit [S, B, C]).
    """
    _check_logits(all_logits, example_mask)
    criteria = [Criterion(name, float(t), regression, tolerance) for t in thresholds]  # validates
    if not criteria:
        raise ValueError("simulate_sweep needs at least one threshold")
    rules = [check_criterion(c, np.shape(all_logits)[-1], np.shape(all_logits)[0]).rule for c in criteria]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *rules)
    return _sweep_jit(stacked, jnp.asarray(all_logits), example_mask, _check_signals(name, all_logits, signals))


def _check_signals(name: str, all_logits: ArrayLike, signals: Signals | None) -> Signals | None:
    if signals is None:
        if name in SIGNAL_CRITERIA:
            raise ValueError(
                f"the {name!r} criterion reads the exits' signals: pass signals= "
                "(rome_jax.exits.signals.all_exit_signals)"
            )
        return None
    shape = np.shape(all_logits)[:2]
    for field, value in zip(Signals._fields, signals):
        if np.shape(value) != shape:
            raise ValueError(f"signals.{field} must be [exits, batch] = {shape}, got shape {np.shape(value)}")
    return Signals(*(jnp.asarray(v, jnp.float32) for v in signals))


def _check_logits(all_logits: ArrayLike, example_mask: ArrayLike | None) -> None:
    shape = np.shape(all_logits)
    if len(shape) != 3:
        raise ValueError(f"all_logits must be [exits, batch, classes], got shape {shape}")
    if example_mask is not None and np.shape(example_mask) != shape[1:2]:
        raise ValueError(f"example_mask must be [batch] = {shape[1:2]}, got shape {np.shape(example_mask)}")


@jax.jit
def _simulate_jit(
    rule: Rule, all_logits: Array, example_mask: ArrayLike | None, signals: Signals | None = None
) -> tuple[Array, Array]:
    return _simulate(lambda s, z, i, g: step_rule(rule, s, z, i, g), all_logits, example_mask, signals)


@jax.jit
def _sweep_jit(
    rules: Rule, all_logits: Array, example_mask: ArrayLike | None, signals: Signals | None = None
) -> tuple[Array, Array]:
    return jax.vmap(lambda rule: _simulate_jit(rule, all_logits, example_mask, signals))(rules)


def exit_counts(exit_index: ArrayLike, num_exits: int) -> np.ndarray:
    """How many examples answered at each exit: [N] (0-based) -> [num_exits] int."""
    return np.bincount(np.asarray(exit_index).ravel(), minlength=num_exits)
