"""Losses against hand-written numpy versions and PyTorch's KLDivLoss."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rome_jax.training import losses

E, B, C = 4, 5, 3
T = 3.0


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _np_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[E, B, C], [B] -> [E], with explicit loops."""
    out = np.zeros(logits.shape[0])
    for e in range(logits.shape[0]):
        log_probs = _np_log_softmax(logits[e])
        out[e] = -np.mean([log_probs[b, labels[b]] for b in range(logits.shape[1])])
    return out


def _np_kl(logits: np.ndarray, temperature: float, divide_by_classes: bool) -> np.ndarray:
    """[E, B, C] -> [E-1]: T^2 KL(softmax(z_L/T) || softmax(z_i/T)), loops."""
    n_exits, batch, classes = logits.shape
    log_p = _np_log_softmax(logits[-1] / temperature)
    out = np.zeros(n_exits - 1)
    for e in range(n_exits - 1):
        log_q = _np_log_softmax(logits[e] / temperature)
        total = 0.0
        for b in range(batch):
            for c in range(classes):
                total += math.exp(log_p[b, c]) * (log_p[b, c] - log_q[b, c])
        out[e] = total / (batch * classes if divide_by_classes else batch)
    return temperature**2 * out


def _np_mse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((pred.astype(np.float64) - target.astype(np.float64)) ** 2))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(E, B, C)).astype(np.float32) * 2
    labels = rng.integers(0, C, size=B).astype(np.int32)
    return logits, labels


@pytest.fixture
def regression_data():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(E, B, 1)).astype(np.float32)
    labels = rng.uniform(0, 5, size=B).astype(np.float32)
    return logits, labels


def test_exit_losses_cross_entropy(data):
    logits, labels = data
    got = losses.exit_losses(jnp.asarray(logits), jnp.asarray(labels))
    assert got.shape == (E,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, _np_cross_entropy(logits, labels), rtol=1e-5)


def test_exit_losses_bfloat16_computed_in_float32(data):
    logits, labels = data
    low = jnp.asarray(logits, jnp.bfloat16)
    got = losses.exit_losses(low, jnp.asarray(labels))
    assert got.dtype == jnp.float32
    want = _np_cross_entropy(np.asarray(low.astype(jnp.float32)), labels)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_exit_losses_regression(regression_data):
    logits, labels = regression_data
    got = losses.exit_losses(jnp.asarray(logits), jnp.asarray(labels), regression=True)
    want = [_np_mse(logits[e, :, 0], labels) for e in range(E)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_regression_needs_one_unit(data):
    logits, labels = data
    with pytest.raises(ValueError, match="one output unit"):
        losses.exit_losses(jnp.asarray(logits), jnp.asarray(labels, jnp.float32), regression=True)


def test_example_weight_is_weighted_mean(data):
    logits, labels = data
    weight = np.array([1, 0, 2, 1, 0], np.float32)
    bad_labels = labels.copy()
    bad_labels[1] = -1  # padded rows may carry any label
    got = losses.exit_losses(jnp.asarray(logits), jnp.asarray(bad_labels), example_weight=jnp.asarray(weight))
    per_example = -np.stack([_np_log_softmax(logits[e])[np.arange(B), labels] for e in range(E)])  # [E, B]
    want = (per_example * weight).sum(-1) / weight.sum()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    ones = losses.distillation_losses(jnp.asarray(logits), temperature=T, example_weight=jnp.ones(B))
    np.testing.assert_allclose(ones, losses.distillation_losses(jnp.asarray(logits), temperature=T), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["reference", "batchmean"])
def test_distillation_against_numpy(data, reduction):
    logits, _ = data
    got = losses.distillation_losses(jnp.asarray(logits), temperature=T, reduction=reduction)
    assert got.shape == (E - 1,)
    want = _np_kl(logits, T, divide_by_classes=reduction == "reference")
    np.testing.assert_allclose(got, want, rtol=1e-5)


# PyTorch warns that KLDivLoss's default 'mean' divides by batch x classes: that is
# exactly the reference behaviour under test.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("reduction", ["reference", "batchmean"])
def test_distillation_against_torch_kldivloss(data, reduction):
    logits, _ = data
    got = losses.distillation_losses(jnp.asarray(logits), temperature=T, reduction=reduction)
    z = torch.from_numpy(logits)
    if reduction == "reference":
        criterion = torch.nn.KLDivLoss()  # the reference's call: default reduction 'mean'
    else:
        criterion = torch.nn.KLDivLoss(reduction="batchmean")
    target = torch.softmax(z[-1] / T, dim=-1)
    want = [float(criterion(torch.log_softmax(z[e] / T, dim=-1), target)) * T**2 for e in range(E - 1)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_teacher_gets_no_gradient_from_distillation(data):
    logits, _ = data
    grad = jax.grad(lambda z: jnp.sum(losses.distillation_losses(z, temperature=T)))(jnp.asarray(logits))
    np.testing.assert_array_equal(grad[-1], 0.0)
    assert np.all(np.abs(np.asarray(grad[:-1])).sum(axis=(1, 2)) > 0)
    grad_reg = jax.grad(lambda z: jnp.sum(losses.distillation_losses(z, temperature=T, regression=True)))(
        jnp.asarray(logits[..., :1])
    )
    np.testing.assert_array_equal(grad_reg[-1], 0.0)
    assert np.all(np.abs(np.asarray(grad_reg[:-1])) > 0)


def test_distillation_regression(regression_data):
    logits, _ = regression_data
    got = losses.distillation_losses(jnp.asarray(logits), temperature=T, regression=True)
    want = [_np_mse(logits[e, :, 0], logits[-1, :, 0]) for e in range(E - 1)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_unknown_reduction_names_accepted_values(data):
    logits, _ = data
    with pytest.raises(ValueError, match="'reference', 'batchmean'"):
        losses.distillation_losses(jnp.asarray(logits), temperature=T, reduction="mean")


def test_hand_computed_tiny_case():
    # One example, two classes, two exits. Student logits (0, 0), teacher (ln 3, 0), T = 1:
    # p = (3/4, 1/4), q = (1/2, 1/2); KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120...
    # reference reduction divides by B*C = 2; label 0: CE_student = ln 2, CE_teacher = ln(4/3).
    logits = jnp.array([[[0.0, 0.0]], [[math.log(3.0), 0.0]]])
    labels = jnp.array([0])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl == pytest.approx(0.1308120, abs=1e-7)
    np.testing.assert_allclose(losses.distillation_losses(logits, temperature=1.0), [0.0654060], atol=1e-6)
    np.testing.assert_allclose(
        losses.distillation_losses(logits, temperature=1.0, reduction="batchmean"),
        [0.1308120],
        atol=1e-6,
    )
    loss_a, loss_b, aux = losses.romebert_groups(logits, labels, gamma=0.9, temperature=1.0)
    assert float(loss_a) == pytest.approx(0.2876821, abs=1e-6)  # ln(4/3)
    # 0.1 * ln 2 + 0.9 * 0.0654060
    assert float(loss_b) == pytest.approx(0.1281801, abs=1e-6)
    np.testing.assert_allclose(aux["exit_loss"], [0.6931472, 0.2876821], atol=1e-6)


def test_romebert_groups(data):
    logits, labels = data
    gamma = 0.9
    loss_a, loss_b, aux = losses.romebert_groups(jnp.asarray(logits), jnp.asarray(labels), gamma=gamma, temperature=T)
    ce = _np_cross_entropy(logits, labels)
    kl = _np_kl(logits, T, divide_by_classes=True)
    np.testing.assert_allclose(loss_a, ce[-1], rtol=1e-5)
    want_b = sum((1 - gamma) * ce[e] + gamma * kl[e] for e in range(E - 1))
    np.testing.assert_allclose(loss_b, want_b, rtol=1e-5)
    np.testing.assert_allclose(aux["exit_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(aux["distill_loss"], kl, rtol=1e-5)


def test_romebert_groups_regression(regression_data):
    logits, labels = regression_data
    loss_a, loss_b, _ = losses.romebert_groups(jnp.asarray(logits), jnp.asarray(labels), gamma=0.5, regression=True)
    mse = [_np_mse(logits[e, :, 0], labels) for e in range(E)]
    distill = [_np_mse(logits[e, :, 0], logits[-1, :, 0]) for e in range(E - 1)]
    np.testing.assert_allclose(loss_a, mse[-1], rtol=1e-5)
    np.testing.assert_allclose(loss_b, sum(0.5 * m + 0.5 * d for m, d in zip(mse, distill)), rtol=1e-5)


def test_single_exit_groups(data):
    logits, labels = data
    loss_a, loss_b, aux = losses.romebert_groups(jnp.asarray(logits[-1:]), jnp.asarray(labels))
    assert float(loss_b) == 0.0 and aux["distill_loss"].shape == (0,)
    np.testing.assert_allclose(loss_a, _np_cross_entropy(logits[-1:], labels)[0], rtol=1e-5)


def test_plain_and_joint(data):
    logits, labels = data
    ce = _np_cross_entropy(logits, labels)
    loss_a, loss_b, aux = losses.plain_groups(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(loss_a, ce[-1], rtol=1e-5)
    np.testing.assert_allclose(loss_b, ce[:-1].sum(), rtol=1e-5)
    np.testing.assert_allclose(aux["exit_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(losses.joint_loss(jnp.asarray(logits), jnp.asarray(labels)), ce.sum(), rtol=1e-5)


def test_pabee_weights(data):
    logits, labels = data
    ce = _np_cross_entropy(logits, labels)
    want = (1 * ce[0] + 2 * ce[1] + 3 * ce[2] + 4 * ce[3]) / 10
    np.testing.assert_allclose(losses.pabee_loss(jnp.asarray(logits), jnp.asarray(labels)), want, rtol=1e-5)


def test_pabee_regression(regression_data):
    logits, labels = regression_data
    mse = [_np_mse(logits[e, :, 0], labels) for e in range(E)]
    want = sum((e + 1) * m for e, m in enumerate(mse)) / sum(range(1, E + 1))
    got = losses.pabee_loss(jnp.asarray(logits), jnp.asarray(labels), regression=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_deebert_stage2_is_a_sum_without_the_final_exit(data):
    logits, labels = data
    ce = _np_cross_entropy(logits, labels)
    got = losses.deebert_stage2_loss(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got, ce[0] + ce[1] + ce[2], rtol=1e-5)
    assert float(got) > ce[:-1].mean() * 2  # a sum, not a mean


def test_deebert_sd_stage2(data):
    logits, labels = data
    ce = _np_cross_entropy(logits, labels)
    kl = _np_kl(logits, T, divide_by_classes=False)
    got = losses.deebert_sd_stage2_loss(
        jnp.asarray(logits), jnp.asarray(labels), gamma=0.7, temperature=T, reduction="batchmean"
    )
    np.testing.assert_allclose(got, sum(0.3 * ce[e] + 0.7 * kl[e] for e in range(E - 1)), rtol=1e-5)


def test_regression_variants_of_sums(regression_data):
    logits, labels = regression_data
    mse = np.array([_np_mse(logits[e, :, 0], labels) for e in range(E)])
    z, y = jnp.asarray(logits), jnp.asarray(labels)
    np.testing.assert_allclose(losses.joint_loss(z, y, regression=True), mse.sum(), rtol=1e-5)
    np.testing.assert_allclose(losses.deebert_stage2_loss(z, y, regression=True), mse[:-1].sum(), rtol=1e-5)


def test_losses_jit(data):
    logits, labels = data
    fn = jax.jit(lambda z, y: losses.romebert_groups(z, y)[:2])
    loss_a, loss_b = fn(jnp.asarray(logits), jnp.asarray(labels))
    ref_a, ref_b, _ = losses.romebert_groups(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose([loss_a, loss_b], [ref_a, ref_b], rtol=1e-6)


def test_training_evaluation_logs_the_training_loss(data):
    """The dev loss of training's evaluation is `exit_losses` on the rows kept, equal to
    the loop-written cross-entropy (and MSE for regression)."""
    from rome_jax.data.glue import get_task
    from rome_jax.training.evaluate import exit_metrics

    logits, labels = data
    keep = np.array([True, True, False, True, True])
    record = exit_metrics(get_task("mnli"), logits, labels, keep)
    expected = _np_cross_entropy(logits[:, keep], labels[keep])
    for i in range(E):
        assert record[f"exit_{i + 1}/loss"] == pytest.approx(expected[i], rel=1e-5)
    scores = logits[..., :1]
    targets = np.linspace(0.0, 5.0, B).astype(np.float32)
    record = exit_metrics(get_task("stsb"), scores, targets, keep)
    for i in range(E):
        assert record[f"exit_{i + 1}/loss"] == pytest.approx(_np_mse(scores[i, keep, 0], targets[keep]), rel=1e-5)
