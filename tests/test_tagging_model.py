"""Token exits: HF parity of the tagger's final exit, the export, the token losses by hand."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import tiny_hf
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import MultiExitEncoder, init_params
from rome_jax.serving.api import load_pretrained
from rome_jax.training import step as ts
from rome_jax.training.losses import exit_losses


def _token_model(path, num_labels=5, seed=0):
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    model = BertForTokenClassification(BertConfig(**tiny_hf.TINY, num_labels=num_labels))
    model.eval().save_pretrained(str(path))
    return model


def test_final_exit_is_hf_token_classification(tmp_path):
    hf = _token_model(tmp_path / "hf")
    model = load_pretrained(str(tmp_path / "hf"), 5)
    assert model.config.exit_pooling == "token"  # read from the architecture
    batch = tiny_hf.random_batch(batch=4, length=12)
    ours = np.asarray(model.exit_logits(batch))  # [E, B, T, C]
    assert ours.shape == (3, 4, 12, 5)
    want = tiny_hf.torch_logits(hf, batch)
    mask = np.asarray(batch["attention_mask"], bool)
    np.testing.assert_allclose(ours[-1][mask], want[mask], atol=2e-5)


def test_export_loads_in_transformers_as_the_final_exit(tmp_path):
    pytest.importorskip("torch")
    from transformers import AutoModelForTokenClassification

    _token_model(tmp_path / "hf", seed=1)
    model = load_pretrained(str(tmp_path / "hf"), 5)
    model.label_names = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    model.save_pretrained(str(tmp_path / "out"))
    back = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "out")).eval()
    assert type(back).__name__ == "BertForTokenClassification"
    assert back.config.id2label[1] == "B-X"
    batch = tiny_hf.random_batch(batch=4, length=12, seed=3)
    mask = np.asarray(batch["attention_mask"], bool)
    np.testing.assert_allclose(
        np.asarray(model.exit_logits(batch))[-1][mask], tiny_hf.torch_logits(back, batch)[mask], atol=2e-5
    )
    again = load_pretrained(str(tmp_path / "out"))
    assert again.config.exit_pooling == "token"  # recorded, and the intermediate exits restored
    np.testing.assert_array_equal(np.asarray(again.exit_logits(batch)), np.asarray(model.exit_logits(batch)))


def _numpy_ce(logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None], -1)[..., 0]


def test_token_losses_are_means_over_tagged_tokens():
    rng = np.random.default_rng(0)
    E, B, T, C = 3, 2, 5, 4
    logits = rng.normal(size=(E, B, T, C)).astype(np.float32)
    labels = rng.integers(0, C, size=(B, T))
    labels[0, 0] = labels[1, 0] = labels[1, 3:] = labels[0, 2] = -100  # [CLS], pieces, padding
    tagged = labels >= 0
    want = np.array([_numpy_ce(logits[e][tagged], labels[tagged]).mean() for e in range(E)])
    rows, flat, weight = ts.token_rows(jnp.asarray(logits), jnp.asarray(labels))
    got = np.asarray(exit_losses(rows, flat, example_weight=weight))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # self-distillation per token: the reference KL (mean over tokens x classes) x T^2
    settings = ts.StepSettings(mode="romebert", gamma=0.9, temperature=3.0)
    loss_a, loss_b, aux = ts.loss_groups(settings, jnp.asarray(logits), jnp.asarray(labels))
    t = 3.0
    p = np.exp(_log_softmax(logits[-1] / t))
    kl = [
        ((p * (_log_softmax(logits[-1] / t) - _log_softmax(logits[e] / t))).sum(-1)[tagged].mean() / C) * t * t
        for e in range(E - 1)
    ]
    np.testing.assert_allclose(np.asarray(aux["distill_loss"]), kl, rtol=1e-5)
    np.testing.assert_allclose(float(loss_a), want[-1], rtol=1e-5)
    np.testing.assert_allclose(float(loss_b), sum(0.1 * want[e] + 0.9 * kl[e] for e in range(E - 1)), rtol=1e-5)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_token_exits_shape_and_padding_independence():
    config = ModelConfig(
        vocab_size=50,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        intermediate_size=24,
        num_labels=3,
        exit_pooling="token",
    )
    params = init_params(config)
    ids = jnp.asarray([[2, 5, 7, 9, 0, 0]])
    mask = jnp.asarray([[1, 1, 1, 1, 0, 0]])
    out = MultiExitEncoder(config).apply({"params": params}, ids, mask)["logits"]
    short = MultiExitEncoder(config).apply({"params": params}, ids[:, :4], mask[:, :4])["logits"]
    assert out.shape == (2, 1, 6, 3)
    np.testing.assert_allclose(np.asarray(out)[:, :, :4], np.asarray(short), atol=1e-6)
