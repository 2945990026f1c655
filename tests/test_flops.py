"""Analytic FLOPs against XLA's own count of the full-depth forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rome_jax.encoder import flops
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import apply_embeddings, apply_layer_with_exit, init_params, layer_params

MINILM = ModelConfig(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)
SMALL = ModelConfig(
    vocab_size=99,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    num_labels=5,
)
# ALBERT: narrow factorised embeddings mapped to the hidden size (a matrix product every exit pays).
ALBERT = ModelConfig(
    family="albert",
    vocab_size=99,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    num_labels=5,
    embedding_size=48,
)


def _unrolled_forward(config):
    """Every layer and exit, unrolled: XLA's cost analysis counts a loop body once,
    so the scanned model would be under-counted by a factor of about L."""

    def forward(params, batch):
        hidden = apply_embeddings(config, params, batch)
        logits = []
        for i in range(config.num_layers):
            hidden, z = apply_layer_with_exit(config, layer_params(params, i), hidden, batch["attention_mask"])
            logits.append(z)
        return jnp.stack(logits)

    return forward


def _xla_flops(cost) -> float:
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list in some jax versions
    return float(cost["flops"])


@pytest.mark.parametrize(
    "config, seq_len, batch_size",
    [(MINILM, 128, 1), (SMALL, 32, 3), (ALBERT, 32, 3)],
    ids=["minilm-T128", "small-T32-B3", "albert-T32-B3"],
)
def test_full_depth_flops_match_xla(config, seq_len, batch_size):
    params = jax.eval_shape(lambda: init_params(config))  # shapes suffice to compile
    ids = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": ids, "token_type_ids": ids}
    lowered = jax.jit(_unrolled_forward(config)).lower(params, batch)
    analytic = batch_size * flops.full_flops(config, seq_len)
    compiled = _xla_flops(lowered.compile().cost_analysis())
    assert abs(compiled / analytic - 1) < 0.05, (compiled, analytic)
    # The program before XLA's fusion passes, which may duplicate elementwise work.
    assert abs(_xla_flops(lowered.cost_analysis()) / analytic - 1) < 0.01


def test_matmuls_dominate_and_attention_is_counted():
    T, H, I = 128, 384, 1536
    matmuls = 4 * 2 * T * H * H + 2 * 2 * T * H * I + 2 * 2 * T * T * H
    layer = flops.layer_flops(MINILM, T)
    assert matmuls < layer < 1.05 * matmuls
    # Attention's T^2 terms: doubling T more than doubles the layer's cost.
    quadratic = flops.layer_flops(MINILM, 2 * T) - 2 * layer
    assert quadratic == 2 * (2 * 2 * T * T * H) + 8 * MINILM.num_heads * 2 * T * T


def test_flops_to_exit_and_speedup():
    T, L = 64, MINILM.num_layers
    per_exit = flops.layer_flops(MINILM, T) + flops.exit_flops(MINILM)
    assert flops.exit_flops(MINILM) == 2 * 384 * 384 + 384 + 2 * 384 * 2 + 2
    assert flops.flops_to_exit(MINILM, T, 0) == flops.embedding_flops(MINILM, T) + per_exit
    steps = flops.flops_to_exit(MINILM, T, np.arange(L))
    assert steps.shape == (L,) and np.all(np.diff(steps) == per_exit)
    assert steps[-1] == flops.full_flops(MINILM, T)
    assert flops.flops_speedup(MINILM, T, [L - 1] * 4) == 1.0
    everyone_first = flops.flops_speedup(MINILM, T, [0, 0])
    assert 5.0 < everyone_first < L  # the embeddings are paid by every example
    mixed = flops.flops_speedup(MINILM, T, [0, L - 1])
    np.testing.assert_allclose(mixed, steps[-1] / ((steps[0] + steps[-1]) / 2))


def test_training_flops_are_the_usual_mfu_count():
    """bert-base, T=128, counted by hand: 6 x (matmul weights) x T + 12 L T^2 H + 6 x heads."""
    bert_base = ModelConfig()
    T, H, I, L, C = 128, 768, 3072, 12, 2
    weights = L * (4 * H * H + 2 * H * I)  # Q, K, V, attention output, FFN in and out
    heads = L * (H * H + H * C)  # each exit's pooler and classifier, on [CLS] alone
    hand = 6 * weights * T + 12 * L * T * T * H + 6 * heads
    assert hand == 67_084_333_056
    assert flops.training_flops(bert_base, T) == hand
    assert flops.training_flops(bert_base, T) == 3 * flops.matmul_flops(bert_base, T)
    # The analytic forward count adds the elementwise work: about 1.6% more at bert-base.
    assert 1.01 < 3 * flops.full_flops(bert_base, T) / hand < 1.02
    # ALBERT's embedding mapping is a matrix product too.
    assert flops.matmul_flops(ALBERT, 32) - flops.matmul_flops(ALBERT.replace(family="bert"), 32) == 2 * 32 * 48 * 64
