"""The optimizers against step-by-step transcriptions of the reference code."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rome_jax.training.optim import learning_rate_schedule, make_optimizer, uncorrected_adamw


def uer_adamw(
    params, grads_per_step, lrs, *, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0, decays=None, correct_bias=False
):
    """FastBERT's `uer.utils.optimizers.AdamW.step`, transcribed to numpy (float64):
    exp_avg.mul_(b1).add_(1-b1, g); exp_avg_sq.mul_(b2).addcmul_(1-b2, g, g);
    denom = sqrt(exp_avg_sq) + eps; p.addcdiv_(-lr, exp_avg, denom); p.add_(-lr*wd, p)."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        for k in p:
            g = np.asarray(grads[k], np.float64)
            m[k] = m[k] * b1 + (1 - b1) * g
            v[k] = v[k] * b2 + (1 - b2) * g * g
            denom = np.sqrt(v[k]) + eps
            step_size = lr
            if correct_bias:
                step_size = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
            p[k] = p[k] - step_size * m[k] / denom
            if weight_decay > 0 and (decays is None or decays[k]):
                p[k] = p[k] - lr * weight_decay * p[k]
    return p


def run(tx, params, grads_per_step):
    state = tx.init(params)
    update = jax.jit(tx.update)
    for grads in grads_per_step:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_uncorrected_adamw_follows_fastberts_optimizer(weight_decay):
    rng = np.random.RandomState(0)
    params = {"kernel": rng.randn(4, 3).astype(np.float32), "bias": rng.randn(3).astype(np.float32)}
    # gradients of very different sizes across steps, and a zero gradient (eps matters)
    grads = [
        {k: (rng.randn(*v.shape) * scale).astype(np.float32) for k, v in params.items()}
        for scale in (1.0, 1e-3, 5.0, 0.0, 0.3, 1e-2)
    ]
    schedule = learning_rate_schedule(1e-2, total_steps=6, warmup_steps=2)
    lrs = [float(schedule(i)) for i in range(6)]
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1e-2)  # warmup from 0, as WarmupLinearSchedule
    decays = {"kernel": True, "bias": False}
    expected = uer_adamw(params, grads, lrs, weight_decay=weight_decay, decays=decays)
    got = run(
        uncorrected_adamw(schedule, eps=1e-6, weight_decay=weight_decay, mask=decays),
        jax.tree.map(jnp.asarray, params),
        grads,
    )
    for k in params:
        np.testing.assert_allclose(np.asarray(got[k]), expected[k], rtol=1e-6, atol=1e-7)
    moved = np.abs(expected["kernel"] - params["kernel"]).max()
    assert moved > 1e-3  # the steps really moved the parameters


def test_without_bias_correction_the_first_steps_are_larger():
    """At step 1 Adam with correction moves each weight by lr (sign of g); without it
    by lr (1 - b1) / sqrt(1 - b2) = 3.16 lr, FastBERT's larger early steps."""
    params = {"w": jnp.ones((5,), jnp.float32)}
    grads = [{"w": np.linspace(0.5, 2.0, 5).astype(np.float32)}]
    corrected = run(make_optimizer(1e-3, 10, clip_norm=0.0), params, grads)
    plain = run(make_optimizer(1e-3, 10, clip_norm=0.0, eps=1e-6, bias_correction=False), params, grads)
    np.testing.assert_allclose(1 - np.asarray(corrected["w"]), 1e-3, rtol=1e-4)
    np.testing.assert_allclose(1 - np.asarray(plain["w"]), 1e-3 * 0.1 / np.sqrt(0.001), rtol=1e-4)
