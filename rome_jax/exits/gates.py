"""The learned exit gates: BERxiT's learning-to-exit (LTE) and CALM's meta classifier.

Both are one linear layer and a sigmoid on an exit's pooler output p_i [H] (what the
exit's classifier reads), ONE gate shared by every exit, as BERxiT's LTE module: it
learns from every exit's rows at once and one threshold means the same certainty at
every depth (a per-exit gate would need E thresholds, and the first exits' gates see
few right answers to learn from). Scores: `rome_jax.exits.signals.gate_score`.

They are fitted AFTER the exits are trained, with the encoder and the exits frozen, on
rows the model did not train on (held-out training rows; `eval.py --fit_gates`):
BERxiT also trains its LTE module in a stage of its own after fine-tuning, but on the
training rows, where a fine-tuned exit is right far more often than on new rows, so
its certainty would be too high; CALM fits its meta classifier on held-out rows. One
fitting serves every training mode, since only the exits' outputs are read.

Targets for exit i of a row with label y (`lte_targets`, `meta_targets`):
- LTE, classification: t_i = 1[argmax z_i = y] (BERxiT's correctness);
- LTE, regression: t_i = exp(-(z_i - y)^2) (BERxiT's `1 - exp(-err^2)` uncertainty,
  as a certainty: 1 when exact, toward 0 as the error grows);
- meta: a_i = 1[argmax z_i = argmax z_E] (regression: |z_i - z_E| < tolerance),
  agreement with the last exit, for exits 1..E-1 (the last agrees with itself).
Losses (`lte_loss`, `meta_loss`): LTE, BERxiT's mean squared error between u_i and
t_i over exits and rows; meta, the mean binary cross-entropy (CALM's classifier).
`fit_gate` minimises them full-batch with Adam from zero weights (deterministic).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from rome_jax.exits.criteria import DEFAULT_TOLERANCE
from rome_jax.exits.signals import GATE_NAMES

Array = jax.Array

FIT_STEPS = 500
FIT_LEARNING_RATE = 0.05
FIT_WEIGHT_DECAY = 1e-4
"""Full-batch Adam on the frozen exits' outputs: a convex problem for meta (logistic
regression), a smooth one for LTE. tests/test_signals.py checks that the fit reaches
the optimum of a logistic regression drawn from a known gate (800 steps there;
gradient below 5e-3)."""


def lte_targets(all_logits: np.ndarray, labels: np.ndarray, regression: bool) -> np.ndarray:
    """BERxiT's targets: all_logits [E, N, C] (regression: C = 1), labels [N] ->
    [E, N] float32 (see the module doc)."""
    all_logits = np.asarray(all_logits, np.float32)
    labels = np.asarray(labels)
    if regression:
        error = all_logits[..., 0] - labels.astype(np.float32)[None]
        return np.exp(-(error**2)).astype(np.float32)
    return (all_logits.argmax(-1) == labels[None]).astype(np.float32)


def meta_targets(all_logits: np.ndarray, regression: bool, tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """CALM's agreement with the last exit: all_logits [E, N, C] -> [E - 1, N] float32
    (exits 1..E-1)."""
    all_logits = np.asarray(all_logits, np.float32)
    if regression:
        return (np.abs(all_logits[:-1, :, 0] - all_logits[-1:, :, 0]) < tolerance).astype(np.float32)
    return (all_logits[:-1].argmax(-1) == all_logits[-1:].argmax(-1)).astype(np.float32)


def _logit(gate: dict, pooled: Array) -> Array:
    return pooled @ gate["kernel"] + gate["bias"]


def lte_loss(gate: dict, pooled: Array, targets: Array) -> Array:
    """Mean squared error of sigmoid(pooled . w + b) against targets: pooled
    [..., H], targets [...] -> scalar."""
    return jnp.mean((jax.nn.sigmoid(_logit(gate, pooled)) - targets) ** 2)


def meta_loss(gate: dict, pooled: Array, targets: Array) -> Array:
    """Mean binary cross-entropy of sigmoid(pooled . w + b) against 0/1 targets:
    pooled [..., H], targets [...] -> scalar."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(_logit(gate, pooled), targets))


LOSSES = {"lte": lte_loss, "meta": meta_loss}


@functools.partial(jax.jit, static_argnames=("name", "steps"))
def _fit(name: str, pooled: Array, targets: Array, steps: int, learning_rate: float, weight_decay: float) -> dict:
    loss_fn = LOSSES[name]
    gate = {"kernel": jnp.zeros(pooled.shape[-1], jnp.float32), "bias": jnp.zeros((), jnp.float32)}
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)

    def body(carry: tuple[dict, optax.OptState], _: None) -> tuple[tuple[dict, optax.OptState], None]:
        gate, opt_state = carry
        grads = jax.grad(loss_fn)(gate, pooled, targets)
        updates, opt_state = optimizer.update(grads, opt_state, gate)
        return (optax.apply_updates(gate, updates), opt_state), None

    (gate, _), _ = lax.scan(body, (gate, optimizer.init(gate)), None, length=steps)
    return gate


def fit_gate(
    name: str,
    pooled: np.ndarray,
    targets: np.ndarray,
    *,
    steps: int = FIT_STEPS,
    learning_rate: float = FIT_LEARNING_RATE,
    weight_decay: float = FIT_WEIGHT_DECAY,
) -> dict[str, np.ndarray]:
    """One gate fitted full-batch: pooled [..., H] float32, targets [...] in [0, 1] ->
    {"kernel" [H], "bias" []} float32 numpy."""
    if name not in LOSSES:
        raise ValueError(f"unknown gate {name!r}; known: {', '.join(GATE_NAMES)}")
    pooled = np.asarray(pooled, np.float32)
    targets = np.asarray(targets, np.float32)
    if pooled.shape[:-1] != targets.shape or not targets.size:
        raise ValueError(f"{name} gate: pooled {pooled.shape} and targets {targets.shape} do not match (or are empty)")
    gate = _fit(name, jnp.asarray(pooled), jnp.asarray(targets), steps, learning_rate, weight_decay)
    return {k: np.asarray(v, np.float32) for k, v in gate.items()}


def fit_gates(
    all_logits: np.ndarray,
    pooled: np.ndarray,
    labels: np.ndarray,
    *,
    regression: bool,
    tolerance: float = DEFAULT_TOLERANCE,
    names: Sequence[str] = GATE_NAMES,
    steps: int = FIT_STEPS,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """The gates fitted on held-out rows' exit outputs: all_logits [E, N, C], pooled
    [E, N, H] (`signals.all_exit_signals`), labels [N] ->
    ({name: {"kernel" [H], "bias" []}}, {"<name>_loss": final loss, "<name>_target_mean": ...})."""
    gates: dict[str, dict[str, np.ndarray]] = {}
    report: dict[str, float] = {}
    for name in names:
        if name == "lte":
            targets, inputs = lte_targets(all_logits, labels, regression), pooled
        elif name == "meta":
            targets, inputs = meta_targets(all_logits, regression, tolerance), pooled[:-1]
        else:
            raise ValueError(f"unknown gate {name!r}; known: {', '.join(GATE_NAMES)}")
        gates[name] = fit_gate(name, inputs, targets, steps=steps)
        report[f"{name}_loss"] = float(LOSSES[name](gates[name], jnp.asarray(inputs), jnp.asarray(targets)))
        report[f"{name}_target_mean"] = float(np.mean(targets))
    return gates, report


# ------------------------------------------------------------------------- files

FILE_NAME = "rome_jax_gates.safetensors"
"""The gates beside an exported model (`MultiExitModel.save_pretrained`)."""
RUN_FILE_NAME = "exit_gates.safetensors"
"""The gates of a train.py run (WORKDIR/), with the checkpoint step they were fitted on."""


def write_gates(path: str, fitted: dict[str, dict[str, np.ndarray]], metadata: dict | None = None) -> str:
    """Writes the gates ({name: {"kernel" [H], "bias" []}}) as safetensors, `metadata`
    (JSON-able) beside them; atomically (a temporary file, then a rename)."""
    import json
    import os

    from safetensors.numpy import save_file

    tensors = {f"{name}.{k}": np.asarray(v, np.float32) for name, gate in fitted.items() for k, v in gate.items()}
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp")
    save_file(tensors, tmp, metadata={"rome_jax": json.dumps(metadata or {})})
    os.replace(tmp, path)
    return path


def read_gates(path: str) -> tuple[dict[str, dict[str, np.ndarray]], dict] | None:
    """(gates, metadata) from `write_gates`' file, or None when there is none. A file
    that is not one raises CheckpointError naming it."""
    import json
    import os

    from safetensors import safe_open

    from rome_jax.errors import CheckpointError

    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = json.loads((f.metadata() or {}).get("rome_jax", "{}"))
            fitted: dict[str, dict[str, np.ndarray]] = {}
            for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                name, _, part = key.partition(".")
                if name not in GATE_NAMES or part not in ("kernel", "bias"):
                    raise ValueError(f"unexpected tensor {key!r}")
                fitted.setdefault(name, {})[part] = f.get_tensor(key)
    except Exception as e:  # a corrupt or foreign file
        raise CheckpointError(f"{path}: not a rome_jax gates file ({e})") from None
    for name, gate in fitted.items():
        if set(gate) != {"kernel", "bias"} or gate["kernel"].ndim != 1 or gate["bias"].ndim != 0:
            raise CheckpointError(f"{path}: gate {name!r} needs a kernel [H] and a scalar bias")
    return fitted, metadata


def check_fits(fitted: dict[str, dict[str, np.ndarray]], hidden_size: int, origin: str) -> None:
    """CheckpointError when a gate's kernel is not [hidden_size]."""
    from rome_jax.errors import CheckpointError

    for name, gate in fitted.items():
        if gate["kernel"].shape != (hidden_size,):
            raise CheckpointError(
                f"{origin}: the {name} gate has a kernel of shape {gate['kernel'].shape}, the model's "
                f"pooler outputs {hidden_size} values"
            )


def fit_gates_on(
    config: Any,
    params: Any,
    features: Any,
    *,
    batch_size: int,
    buckets: Any,
    names: Sequence[str] = GATE_NAMES,
    steps: int = FIT_STEPS,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """The gates fitted on labelled rows the model did not train on: every exit's
    outputs on `features` (a `data.Features`, batched in length `buckets`), then
    `fit_gates`. The model's own gates, if any, are ignored."""
    from rome_jax.exits import outputs  # the executors: imported when a model is at hand
    from rome_jax.exits.signals import without_gates

    if not getattr(features, "has_labels", True):
        raise ValueError("fitting the exit gates needs labelled rows")
    if len(features) == 0:
        raise ValueError("fitting the exit gates needs at least one row")
    logits, _, pooled = outputs.all_exit_signals(
        config, without_gates(params), features, batch_size=batch_size, buckets=buckets, with_pooled=True
    )
    assert pooled is not None  # asked for with_pooled
    return fit_gates(
        logits, pooled, np.asarray(features.labels), regression=config.num_labels == 1, names=names, steps=steps
    )
