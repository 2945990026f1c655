"""Training losses of multi-exit BERT: per-exit task losses, self-distillation, groups.

Every function takes the logits of all exits stacked in one array,
`logits: [E, B, C]` (E exits, one per encoder layer; `logits[-1]` is the final
exit, which is also the self-distillation teacher), and the labels `[B]`
(int class ids, or float targets for regression, where C = 1).

Losses are computed in float32 whatever the logits' dtype. All functions are pure,
jit-able, and have no Python control flow on array values. `example_weight` [B]
(optional, e.g. 0 for padded examples) turns every batch mean into a weighted mean
`sum_b w_b x_b / sum_b w_b`; a class label outside [0, C) contributes a zero
cross-entropy rather than NaN, so padded rows may carry any label.

RomeBERT loss (docs/methods.md), with `sg` the stop-gradient:

    L = CE(z_L, y) + sum_{i<L} [ (1-gamma) CE(z_i, y)
                                 + gamma T^2 KL( softmax(sg(z_L)/T) || softmax(z_i/T) ) ]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# KL reductions: "reference" is PyTorch `KLDivLoss()`'s default (mean over batch x
# classes, the reference code's choice, and our default); "batchmean" divides by B.
# Defined with the config's checks (still importable from here).
from rome_jax.config.choices import REDUCTIONS

Array = jax.Array


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"unknown KL reduction {reduction!r}; accepted values: " + ", ".join(repr(r) for r in REDUCTIONS)
        )


def _check_regression_logits(logits: Array) -> None:
    if logits.shape[-1] != 1:
        raise ValueError(f"regression expects one output unit per exit, got logits of shape {logits.shape}")


def _batch_mean(values: Array, example_weight: Array | None) -> Array:
    """Mean over the last (batch) axis: [..., B] -> [...], weighted if weights are given."""
    if example_weight is None:
        return jnp.mean(values, axis=-1)
    weight = jnp.asarray(example_weight, jnp.float32)
    total = jnp.maximum(jnp.sum(weight), jnp.finfo(jnp.float32).tiny)
    return jnp.sum(values * weight, axis=-1) / total


def exit_losses(
    logits: Array,
    labels: Array,
    *,
    regression: bool = False,
    example_weight: Array | None = None,
) -> Array:
    """Task loss of every exit.

    Args:
      logits: [E, B, C] exit logits (C = 1 for regression).
      labels: [B] int class ids, or float targets for regression.
      regression: mean squared error of `logits[..., 0]` instead of cross-entropy.
      example_weight: optional [B] weights of a weighted batch mean.

    Returns:
      [E] float32: the mean cross-entropy (or MSE) of each exit.
    """
    logits = logits.astype(jnp.float32)
    if regression:
        _check_regression_logits(logits)
        error = logits[..., 0] - jnp.asarray(labels, jnp.float32)  # [E, B]
        return _batch_mean(jnp.square(error), example_weight)
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [E, B, C]
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)  # [B, C]
    cross_entropy = -jnp.sum(one_hot * log_probs, axis=-1)  # [E, B]
    return _batch_mean(cross_entropy, example_weight)


def distillation_losses(
    logits: Array,
    *,
    temperature: float,
    reduction: str = "reference",
    regression: bool = False,
    example_weight: Array | None = None,
) -> Array:
    """Self-distillation term of every exit but the final one (the teacher).

    Classification: `T^2 * KL(softmax(sg(z_L)/T) || softmax(z_i/T))`, with the
    pointwise terms `p * (log p - log q)` summed and divided by B*C for
    reduction="reference" (PyTorch `KLDivLoss()` default, the reference code's;
    the effective weight is then T^2/C) or by B for "batchmean".

    Regression (our choice, see docs/methods.md): `MSE(z_i, sg(z_L))`, no temperature, no T^2;
    `reduction` is validated but unused.

    Args:
      logits: [E, B, C] exit logits; `logits[-1]` is the teacher.
      temperature: T.
      reduction: "reference" or "batchmean".
      regression: use the regression term.
      example_weight: optional [B] weights of a weighted batch mean.

    Returns:
      [E-1] float32, one term per student exit. The teacher row gets no gradient.
    """
    _check_reduction(reduction)
    logits = logits.astype(jnp.float32)
    teacher = jax.lax.stop_gradient(logits[-1])  # [B, C]
    students = logits[:-1]  # [E-1, B, C]
    if regression:
        _check_regression_logits(logits)
        error = students[..., 0] - teacher[None, :, 0]  # [E-1, B]
        return _batch_mean(jnp.square(error), example_weight)
    log_p = jax.nn.log_softmax(teacher / temperature, axis=-1)
    p = jnp.exp(log_p)
    log_q = jax.nn.log_softmax(students / temperature, axis=-1)
    # As torch.xlogy: a teacher probability that underflows to 0 contributes 0.
    pointwise = jnp.where(p > 0, p * (log_p - log_q), 0.0)  # [E-1, B, C]
    per_example = jnp.sum(pointwise, axis=-1)  # [E-1, B]
    kl = _batch_mean(per_example, example_weight)
    if reduction == "reference":
        kl = kl / logits.shape[-1]
    return temperature**2 * kl


def romebert_groups(
    logits: Array,
    labels: Array,
    *,
    gamma: float = 0.9,
    temperature: float = 3.0,
    reduction: str = "reference",
    regression: bool = False,
    example_weight: Array | None = None,
) -> tuple[Array, Array, dict[str, Array]]:
    """The RomeBERT loss split into the two groups of gradient regularization.

    Returns:
      loss_A: scalar, `CE(z_L, y)` (final exit).
      loss_B: scalar, `sum_{i<L} (1-gamma) CE(z_i, y) + gamma * distill_i`.
      aux: {"exit_loss": [E], "distill_loss": [E-1]}.
    The RomeBERT loss is `loss_A + loss_B`.
    """
    exit_loss = exit_losses(logits, labels, regression=regression, example_weight=example_weight)
    distill_loss = distillation_losses(
        logits,
        temperature=temperature,
        reduction=reduction,
        regression=regression,
        example_weight=example_weight,
    )
    loss_a = exit_loss[-1]
    loss_b = jnp.sum((1.0 - gamma) * exit_loss[:-1] + gamma * distill_loss)
    return loss_a, loss_b, {"exit_loss": exit_loss, "distill_loss": distill_loss}


def plain_groups(
    logits: Array,
    labels: Array,
    *,
    regression: bool = False,
    example_weight: Array | None = None,
) -> tuple[Array, Array, dict[str, Array]]:
    """Groups for gradient regularization without self-distillation.

    Returns:
      loss_A: scalar, final-exit CE; loss_B: scalar, sum of the CE of exits 1..E-1;
      aux: {"exit_loss": [E]}.
    """
    exit_loss = exit_losses(logits, labels, regression=regression, example_weight=example_weight)
    return exit_loss[-1], jnp.sum(exit_loss[:-1]), {"exit_loss": exit_loss}


def joint_loss(
    logits: Array,
    labels: Array,
    *,
    regression: bool = False,
    example_weight: Array | None = None,
) -> Array:
    """Scalar: the sum over all E exits of their CE (or MSE)."""
    return jnp.sum(exit_losses(logits, labels, regression=regression, example_weight=example_weight))


def pabee_loss(
    logits: Array,
    labels: Array,
    *,
    regression: bool = False,
    example_weight: Array | None = None,
) -> Array:
    """Scalar: PABEE's weighted average `sum_i i * CE_i / sum_i i`, i = 1..E."""
    exit_loss = exit_losses(logits, labels, regression=regression, example_weight=example_weight)
    depth = jnp.arange(1, exit_loss.shape[0] + 1, dtype=jnp.float32)
    return jnp.sum(depth * exit_loss) / jnp.sum(depth)


def deebert_stage2_loss(
    logits: Array,
    labels: Array,
    *,
    regression: bool = False,
    example_weight: Array | None = None,
) -> Array:
    """Scalar: DeeBERT stage 2, the SUM (not mean) of the CE of exits 1..E-1."""
    exit_loss = exit_losses(logits, labels, regression=regression, example_weight=example_weight)
    return jnp.sum(exit_loss[:-1])


def deebert_sd_stage2_loss(
    logits: Array,
    labels: Array,
    *,
    gamma: float = 0.9,
    temperature: float = 3.0,
    reduction: str = "reference",
    regression: bool = False,
    example_weight: Array | None = None,
) -> Array:
    """Scalar: DeeBERT stage 2 with self-distillation,
    `sum_{i<E} (1-gamma) CE_i + gamma * distill_i` (RomeBERT's group B)."""
    _, loss_b, _ = romebert_groups(
        logits,
        labels,
        gamma=gamma,
        temperature=temperature,
        reduction=reduction,
        regression=regression,
        example_weight=example_weight,
    )
    return loss_b
