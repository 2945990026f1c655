"""ModernBERT against transformers: every layer's hidden states and the final classifier
(1e-5, float32, a padded batch of 24 tokens with a local window of 8), with both
classifier poolings, the exits against a float64 reference, token exits against
`ModernBertForTokenClassification`, the export that transformers loads back, the
compiled executors with a traced layer index, and the FLOPs against XLA's count."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_flops import _unrolled_forward, _xla_flops
from test_inference import assert_agree, criteria_for, spread_exits

import rome_jax
import tiny_hf
from rome_jax.encoder import flops, modernbert
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import apply_embeddings, apply_layer_with_exit, init_params, layer_params
from rome_jax.errors import CheckpointError
from rome_jax.exits import executors

torch = pytest.importorskip("torch")

L = tiny_hf.MODERNBERT["num_hidden_layers"]


@pytest.fixture(scope="module", params=["cls", "mean"])
def hf_dir(request, tmp_path_factory):
    pooling = request.param
    path = tmp_path_factory.mktemp(f"modernbert-{pooling}")
    model = tiny_hf.make_modernbert(path, classifier_pooling=pooling)
    return pooling, path, model


def _real(x, batch):
    """x [..., B, T, H] with the padded positions zeroed (transformers' values there are
    not ours to match: only the real tokens are)."""
    return np.where(batch["attention_mask"][..., None].astype(bool), x, 0.0)


def _layer_by_layer(config, params, batch):
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}
    hidden = apply_embeddings(config, params, inputs)
    embedded, layers, logits = np.asarray(hidden), [], []
    for i in range(config.num_layers):
        hidden, z = apply_layer_with_exit(config, layer_params(params, jnp.int32(i)), hidden, inputs["attention_mask"])
        layers.append(np.asarray(hidden))
        logits.append(np.asarray(z))
    return embedded, np.stack(layers), np.stack(logits)


def _layer_norm(x, scale, bias=None, eps=1e-5):
    x = np.asarray(x, np.float64)
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * np.asarray(scale, np.float64)
    return y if bias is None else y + np.asarray(bias, np.float64)


def test_every_layer_and_the_final_exit_match_transformers(hf_dir):
    pooling, path, hf_model = hf_dir
    batch = tiny_hf.modernbert_batch()
    model = rome_jax.load_pretrained(str(path))
    config = model.config
    assert config.family == "modernbert" and config.exit_pooling == pooling and not config.has_token_types
    assert (config.global_attn_every_n_layers, config.local_attention) == (2, 8)
    assert hash(config) == hash(ModelConfig.from_json_file(str(path / "config.json")))
    want = tiny_hf.torch_hidden_states(hf_model, batch, token_types=False)  # [L + 1, B, T, H]
    embedded, layers, logits = _layer_by_layer(config, model.params, batch)
    assert layers.shape == (L, 4, 24, 64) and logits.shape == (L, 4, 3)
    # transformers' last hidden state is final_norm of the last layer's output; ours is
    # the residual stream, which every exit normalises with the same final_norm.
    final = _layer_norm(layers[-1], model.params["final_norm"]["scale"])
    diffs = {"embeddings": np.abs(_real(embedded - want[0], batch)).max()}
    diffs.update({f"layer {i}": np.abs(_real(layers[i] - want[i + 1], batch)).max() for i in range(L - 1)})
    diffs[f"layer {L - 1} + final_norm"] = np.abs(_real(final - want[L], batch)).max()
    hf_logits = tiny_hf.torch_logits(hf_model, batch, token_types=False)
    diffs["final logits"] = np.abs(logits[-1] - hf_logits).max()
    print(pooling, {k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) < 1e-5, diffs
    assert np.abs(hf_logits).max() > 0.5
    # the scanned model (all exits, jitted) equals the pieces
    scanned = model.module.apply({"params": model.params}, **{k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_allclose(_real(np.asarray(scanned["last_hidden"]), batch), _real(layers[-1], batch), atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.exit_logits(batch)), logits, atol=1e-5, rtol=0)


def test_the_local_window_and_the_rotary_thetas_matter(hf_dir):
    """Layer 1 is local (a band of +-4 tokens): a wider window or another theta changes it;
    layers 0 and 2 are global."""
    _, path, _ = hf_dir
    model = rome_jax.load_pretrained(str(path))
    batch = tiny_hf.modernbert_batch()
    _, layers, _ = _layer_by_layer(model.config, model.params, batch)
    # (random weights of std 0.02 give nearly uniform attention: a theta moves it less)
    for change, at_least in (({"local_attention": 64}, 1e-3), ({"local_rope_theta": 2.0}, 2e-5)):
        _, other, _ = _layer_by_layer(model.config.replace(**change), model.params, batch)
        np.testing.assert_array_equal(other[0], layers[0])  # global: untouched
        assert np.abs(_real(other[1] - layers[1], batch)).max() > at_least, change
    assert [bool(modernbert.is_global(model.config, i)) for i in range(L)] == [True, False, True]


def _activation_gelu(x):
    return torch.nn.functional.gelu(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("exit_pooling", ["cls", "mean"])
def test_an_exit_after_every_layer(hf_dir, exit_pooling):
    """Every exit in float64 from transformers' hidden states: the shared final_norm, the
    pooling, head dense -> GELU -> head norm, classifier; the run's exit_pooling wins
    over the checkpoint's classifier_pooling."""
    pooling, path, hf_model = hf_dir
    batch = tiny_hf.modernbert_batch()
    model = rome_jax.load_pretrained(str(path), exit_pooling=exit_pooling)
    got = np.asarray(model.exit_logits(batch))  # [L, B, C]
    want_hidden = tiny_hf.torch_hidden_states(hf_model, batch, token_types=False)
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), model.params)
    hidden = [_layer_norm(want_hidden[i + 1], p["final_norm"]["scale"]) for i in range(L - 1)] + [want_hidden[L]]
    mask = batch["attention_mask"].astype(np.float64)
    exits = p["layers"]["exit"]
    want = []
    for i, h in enumerate(hidden):
        pooled = h[:, 0] if exit_pooling == "cls" else (h * mask[..., None]).sum(1) / mask.sum(1)[:, None]
        y = _layer_norm(_activation_gelu(pooled @ exits["pooler"]["kernel"][i]), exits["head_norm"]["scale"][i])
        want.append(y @ exits["classifier"]["kernel"][i] + exits["classifier"]["bias"][i])
    np.testing.assert_allclose(got, np.stack(want), atol=1e-5, rtol=0)
    if exit_pooling == pooling:  # the final exit is transformers' classifier
        np.testing.assert_allclose(got[-1], tiny_hf.torch_logits(hf_model, batch, token_types=False), atol=1e-5)


def test_token_exits_match_token_classification(tmp_path):
    hf_model = tiny_hf.make_modernbert(tmp_path / "m", num_labels=5, token_classification=True, norm_bias=True)
    model = rome_jax.load_pretrained(str(tmp_path / "m"))
    assert model.config.token_exits and model.config.norm_bias
    batch = tiny_hf.modernbert_batch()
    got = np.asarray(model.exit_logits(batch))  # [L, B, T, C]
    assert got.shape == (L, 4, 24, 5)
    want = tiny_hf.torch_logits(hf_model, batch, token_types=False)
    diff = np.abs(_real(got[-1] - want, batch)).max()
    print("token exits: final vs transformers", f"{diff:.1e}")
    assert diff < 1e-5


def test_save_pretrained_loads_back_in_transformers(hf_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    pooling, path, _ = hf_dir
    model = rome_jax.load_pretrained(str(path), seed=3)
    model.params = jax.tree.map(lambda x: x + 0.01 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), model.params)
    model.label_names = ["a", "b", "c"]
    model.save_pretrained(str(tmp_path))
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "modernbert" and written["architectures"] == ["ModernBertForSequenceClassification"]
    assert written["classifier_pooling"] == pooling
    hf_config = AutoConfig.from_pretrained(str(tmp_path))
    assert hf_config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    assert hf_config.local_attention == 8
    hf, info = AutoModelForSequenceClassification.from_pretrained(str(tmp_path), output_loading_info=True)
    assert type(hf).__name__ == "ModernBertForSequenceClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = tiny_hf.modernbert_batch(seed=1)
    ours = np.asarray(model.exit_logits(batch))
    theirs = tiny_hf.torch_logits(hf.eval(), batch, token_types=False)
    print(pooling, "export: final exit vs transformers", f"{np.abs(theirs - ours[-1]).max():.1e}")
    np.testing.assert_allclose(theirs, ours[-1], atol=1e-5, rtol=0)
    again = rome_jax.load_pretrained(str(tmp_path))
    assert again.config == model.config
    np.testing.assert_allclose(np.asarray(again.exit_logits(batch)), ours, atol=1e-6, rtol=0)
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(model.params)):
        if a.shape != (L, 64) or not np.allclose(a[0], 1.0):  # layer 0's unused attn_norm comes back as ones
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_compiled_executors_agree_with_all_exits(hf_dir):
    _, path, _ = hf_dir
    model = rome_jax.load_pretrained(str(path))
    batch = tiny_hf.modernbert_batch(batch=8, seed=2)
    params = spread_exits(model.config, model.params, batch)
    all_logits = executors.all_exits(model.config, params, batch)
    seen = set()
    for criterion in criteria_for(all_logits)[::3]:
        seen.update(assert_agree(model.config, params, batch, criterion, all_logits=all_logits).tolist())
    assert len(seen) >= 2


def test_training_forward_drops_out_and_stays_finite(tmp_path):
    tiny_hf.make_modernbert(tmp_path / "m", attention_dropout=0.1, mlp_dropout=0.1, embedding_dropout=0.1)
    model = rome_jax.load_pretrained(str(tmp_path / "m"))
    assert (model.config.hidden_dropout, model.config.attention_dropout) == (0.1, 0.1)
    inputs = {k: jnp.asarray(v) for k, v in tiny_hf.modernbert_batch().items()}
    run = lambda seed: np.asarray(
        model.module.apply(
            {"params": model.params}, **inputs, deterministic=False, rngs={"dropout": jax.random.PRNGKey(seed)}
        )["logits"]
    )
    first = run(0)
    assert np.isfinite(first).all() and not np.allclose(first, run(1))


def test_config_reads_the_old_fields_and_refuses_other_patterns():
    base = {
        "model_type": "modernbert",
        "vocab_size": 99,
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 96,
    }
    old = ModelConfig.from_hf_dict({**base, "global_attn_every_n_layers": 3, "global_rope_theta": 8e4})
    assert (old.global_attn_every_n_layers, old.global_rope_theta, old.local_rope_theta) == (3, 8e4, 1e4)
    assert old.exit_activation == "gelu" and old.layer_norm_eps == 1e-5 and old.hidden_dropout == 0.0
    assert ModelConfig.from_hf_dict(old.to_hf_dict()) == old
    kinds = ["full_attention", "sliding_attention", "full_attention", "full_attention"]
    with pytest.raises(CheckpointError, match="^ModernBERT layer_types must be a global layer every n layers"):
        ModelConfig.from_hf_dict({**base, "layer_types": kinds})
    rope = {"full_attention": {"rope_type": "yarn", "rope_theta": 1e4}}
    with pytest.raises(CheckpointError, match="^ModernBERT rope_type 'yarn' is not supported"):
        ModelConfig.from_hf_dict({**base, "rope_parameters": rope})
    assert hash(old) == hash(old.replace())
    with pytest.raises(AttributeError):
        old.local_attention = 4  # type: ignore[misc]


def test_a_masked_lm_checkpoint_and_another_label_count(tmp_path):
    """A pretraining checkpoint (`ModernBertForMaskedLM`): its head starts every exit,
    the decoder is not read, the classifiers are fresh; a classifier for another label
    count is refused in one line unless re-initialised."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(0)
    mlm = ModernBertForMaskedLM(ModernBertConfig(**tiny_hf.MODERNBERT))
    mlm.eval().save_pretrained(str(tmp_path / "mlm"))
    model = rome_jax.load_pretrained(str(tmp_path / "mlm"), num_labels=2)
    head = mlm.head.dense.weight.detach().numpy().T
    for i in range(L):
        np.testing.assert_array_equal(np.asarray(model.params["layers"]["exit"]["pooler"]["kernel"][i]), head)
    assert np.isfinite(np.asarray(model.exit_logits(tiny_hf.modernbert_batch()))).all()
    tiny_hf.make_modernbert(tmp_path / "cls", num_labels=3)
    with pytest.raises(CheckpointError, match="3 labels.*model.reinit_classifier") as e:
        rome_jax.load_pretrained(str(tmp_path / "cls"), num_labels=5)
    assert "\n" not in str(e.value)
    fresh = rome_jax.load_pretrained(str(tmp_path / "cls"), num_labels=5, ignore_mismatched_sizes=True)
    assert fresh.params["layers"]["exit"]["classifier"]["kernel"].shape == (L, 64, 5)


@pytest.mark.slow
def test_a_romebert_train_step_lowers_the_loss():
    from test_train_step import CFG, run_steps

    from rome_jax.training import step as ts

    config = CFG.replace(family="modernbert", type_vocab_size=1, local_attention=4, global_attn_every_n_layers=2)
    *_, losses = run_steps(ts.StepSettings(mode="romebert"), config=config, steps=3, lr=3e-3)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


# ---------------------------------------------------------------- FLOPs

_SMALL = dict(vocab_size=99, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96, num_labels=5)
FLOPS_CONFIGS = {
    "modernbert": ModelConfig(family="modernbert", local_attention=8, global_attn_every_n_layers=2, **_SMALL),
    "modernbert-mean": ModelConfig(family="modernbert", local_attention=8, exit_pooling="mean", **_SMALL),
}


@pytest.mark.parametrize("name", sorted(FLOPS_CONFIGS))
def test_full_depth_flops_match_xla(name):
    config, seq_len, batch_size = FLOPS_CONFIGS[name], 32, 3
    params = jax.eval_shape(lambda: init_params(config))
    ids = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": ids}
    lowered = jax.jit(_unrolled_forward(config)).lower(params, batch)
    analytic = batch_size * flops.full_flops(config, seq_len)
    compiled = _xla_flops(lowered.compile().cost_analysis())
    before_fusion = _xla_flops(lowered.cost_analysis())
    print(name, f"compiled/analytic {compiled / analytic:.4f}, before fusion {before_fusion / analytic:.4f}")
    assert abs(compiled / analytic - 1) < 0.05, (compiled, analytic)
    assert abs(before_fusion / analytic - 1) < 0.01, (before_fusion, analytic)


def test_matmul_flops_count_the_geglu():
    config = FLOPS_CONFIGS["modernbert"]
    T, H, I = 32, 64, 96
    bert = ModelConfig(**_SMALL)
    # Wi maps to 2I (input and gate): one more H x I product a layer than BERT's intermediate
    assert flops.matmul_flops(config, T) - flops.matmul_flops(bert, T) == config.num_layers * 2 * T * H * I
