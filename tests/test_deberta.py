"""DeBERTa-v2/v3 against transformers: every layer's hidden states and the final
classifier (1e-5, float32, a padded batch of 20 tokens with 8 position buckets), the
exits with both poolings against a float64 reference, token exits against
`DebertaV2ForTokenClassification`, the export that transformers loads back, the
compiled executors, the config's refusals, and the FLOPs against XLA's count."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_flops import _unrolled_forward, _xla_flops
from test_inference import assert_agree, criteria_for, spread_exits

import rome_jax
import tiny_hf
from rome_jax.encoder import deberta, flops
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import apply_embeddings, apply_layer_with_exit, init_params, layer_params
from rome_jax.errors import CheckpointError
from rome_jax.exits import executors

torch = pytest.importorskip("torch")

L = tiny_hf.DEBERTA["num_hidden_layers"]
HEAD_SCALE = 10.0  # the head's weights scaled up: logits O(1), so that its GELU shows
# v2-style variations: absolute positions added to the input, two token types, an
# embedding projection (16 -> 32), c2p only, no LayerNorm of the relative embeddings.
VARIANT = dict(
    position_biased_input=True, type_vocab_size=2, embedding_size=16, pos_att_type=["c2p"], norm_rel_ebd="none"
)


def _make(path, **overrides):
    model = tiny_hf.make_deberta(path, **overrides)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.startswith(("classifier.", "pooler.")) and name.endswith("weight"):
                weight.mul_(HEAD_SCALE)
    model.save_pretrained(str(path))
    return model


@pytest.fixture(scope="module", params=["v3", "variant"])
def hf_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"deberta-{request.param}")
    model = _make(path, **(VARIANT if request.param == "variant" else {}))
    return request.param, path, model


def _batch(kind, batch=4, seed=0):
    out = tiny_hf.deberta_batch(batch=batch, seed=seed)
    if kind == "variant":  # a second segment
        out["token_type_ids"][:, 10:] = 1
        out["token_type_ids"][out["attention_mask"] == 0] = 0
    return out


def _token_types(kind):
    return kind == "variant"


def _layer_by_layer(config, params, batch):
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}
    hidden = apply_embeddings(config, params, inputs)
    embedded, layers, logits = np.asarray(hidden), [], []
    for i in range(config.num_layers):
        hidden, z = apply_layer_with_exit(config, layer_params(params, jnp.int32(i)), hidden, inputs["attention_mask"])
        layers.append(np.asarray(hidden))
        logits.append(np.asarray(z))
    return embedded, np.stack(layers), np.stack(logits)


def test_relative_positions_are_transformers_buckets():
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    for buckets, max_position in ((8, 64), (256, 512), (-1, 64)):
        config = ModelConfig(family="deberta-v2", position_buckets=buckets, max_position_embeddings=max_position)
        x = torch.zeros(1, 300, 4)
        want = build_relative_position(x, x, bucket_size=buckets, max_position=max_position)[0].numpy()
        np.testing.assert_array_equal(deberta.relative_positions(config, 300), want)


def test_every_layer_and_the_final_exit_match_transformers(hf_dir):
    kind, path, hf_model = hf_dir
    batch = _batch(kind)
    model = rome_jax.load_pretrained(str(path), num_labels=3)
    config = model.config
    assert config.family == config.model_type == "deberta-v2"
    assert config.has_token_types == config.position_biased_input == (kind == "variant")
    assert hash(config) == hash(ModelConfig.from_json_file(str(path / "config.json"), num_labels=3))
    want = tiny_hf.torch_hidden_states(hf_model, batch, token_types=_token_types(kind))  # [L + 1, B, T, H]
    embedded, layers, logits = _layer_by_layer(config, model.params, batch)
    assert layers.shape == (L, 4, 20, 32) and logits.shape == (L, 4, 3)
    diffs = {"embeddings": np.abs(embedded - want[0]).max()}
    diffs.update({f"layer {i}": np.abs(layers[i] - want[i + 1]).max() for i in range(L)})
    hf_logits = tiny_hf.torch_logits(hf_model, batch, token_types=_token_types(kind))
    diffs["final logits"] = np.abs(logits[-1] - hf_logits).max()
    print(kind, {k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) < 1e-5, diffs
    assert np.abs(hf_logits).max() > 0.5  # the head's activation matters at this scale
    # the scanned model (all exits, jitted) equals the pieces
    scanned = model.module.apply({"params": model.params}, **{k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_allclose(np.asarray(scanned["last_hidden"]), layers[-1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(model.exit_logits(batch)), logits, atol=1e-5, rtol=0)


def test_the_relative_positions_matter(hf_dir):
    """The relative embeddings in reverse order (i - j read as j - i) change the first
    layer: the position terms are computed, and their direction is transformers'."""
    kind, path, hf_model = hf_dir
    model = rome_jax.load_pretrained(str(path))
    batch = _batch(kind)
    params = dict(model.params, rel_embeddings={"embedding": model.params["rel_embeddings"]["embedding"][::-1]})
    want = tiny_hf.torch_hidden_states(hf_model, batch, token_types=_token_types(kind))
    _, layers, _ = _layer_by_layer(model.config, params, batch)
    assert np.abs(layers[0] - want[1]).max() > 1e-3


def _gelu(x):
    return torch.nn.functional.gelu(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_an_exit_after_every_layer_with_both_poolings(hf_dir, pooling):
    """Every exit against transformers' hidden states through the pooling, `ContextPooler`'s
    dense and GELU, and the classifier, in float64."""
    kind, path, hf_model = hf_dir
    batch = _batch(kind)
    model = rome_jax.load_pretrained(str(path), exit_pooling=pooling)
    assert model.config.exit_activation == "gelu" and model.config.exit_dropout_first
    got = np.asarray(model.exit_logits(batch))  # [L, B, C]
    hidden = tiny_hf.torch_hidden_states(hf_model, batch, _token_types(kind))[1:].astype(np.float64)
    mask = batch["attention_mask"].astype(np.float64)
    if pooling == "cls":
        pooled = hidden[:, :, 0]
    else:
        pooled = (hidden * mask[None, :, :, None]).sum(2) / mask.sum(1)[None, :, None]
    exits = jax.tree.map(lambda x: np.asarray(x, np.float64), model.params["layers"]["exit"])
    want = np.stack(
        [
            _gelu(pooled[i] @ exits["pooler"]["kernel"][i] + exits["pooler"]["bias"][i])
            @ exits["classifier"]["kernel"][i]
            + exits["classifier"]["bias"][i]
            for i in range(L)
        ]
    )
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    if pooling == "cls":  # the final exit is transformers' classifier
        hf_logits = tiny_hf.torch_logits(hf_model, batch, token_types=_token_types(kind))
        np.testing.assert_allclose(got[-1], hf_logits, atol=1e-5, rtol=0)


def test_token_exits_match_token_classification(tmp_path):
    from transformers import AutoModelForTokenClassification

    hf_model = tiny_hf.make_deberta(tmp_path / "m", num_labels=5, token_classification=True)
    model = rome_jax.load_pretrained(str(tmp_path / "m"))
    assert model.config.token_exits
    batch = tiny_hf.deberta_batch()
    got = np.asarray(model.exit_logits(batch))  # [L, B, T, C]
    assert got.shape == (L, 4, 20, 5)
    want = tiny_hf.torch_logits(hf_model, batch, token_types=False)
    diff = np.abs(got[-1] - want).max()
    print("token exits: final vs transformers", f"{diff:.1e}")
    assert diff < 1e-5
    model.save_pretrained(str(tmp_path / "out"))
    hf, info = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert type(hf).__name__ == "DebertaV2ForTokenClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    np.testing.assert_allclose(tiny_hf.torch_logits(hf.eval(), batch, token_types=False), got[-1], atol=1e-5)
    again = rome_jax.load_pretrained(str(tmp_path / "out"))
    np.testing.assert_allclose(np.asarray(again.exit_logits(batch)), got, atol=1e-6, rtol=0)


def test_save_pretrained_loads_back_in_transformers(hf_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    kind, path, _ = hf_dir
    model = rome_jax.load_pretrained(str(path), seed=3)
    model.params = jax.tree.map(lambda x: x + 0.01 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), model.params)
    model.label_names = ["a", "b", "c"]
    model.save_pretrained(str(tmp_path))
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "deberta-v2"
    assert written["architectures"] == ["DebertaV2ForSequenceClassification"]
    hf_config = AutoConfig.from_pretrained(str(tmp_path))
    assert hf_config.position_buckets == 8 and hf_config.type_vocab_size == (2 if kind == "variant" else 0)
    hf, info = AutoModelForSequenceClassification.from_pretrained(str(tmp_path), output_loading_info=True)
    assert type(hf).__name__ == "DebertaV2ForSequenceClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = _batch(kind, seed=1)
    ours = np.asarray(model.exit_logits(batch))
    theirs = tiny_hf.torch_logits(hf.eval(), batch, token_types=_token_types(kind))
    print(kind, "export: final exit vs transformers", f"{np.abs(theirs - ours[-1]).max():.1e}")
    np.testing.assert_allclose(theirs, ours[-1], atol=1e-5, rtol=0)
    assert hf.config.id2label[1] == "b"
    again = rome_jax.load_pretrained(str(tmp_path))
    assert again.config == model.config
    np.testing.assert_allclose(np.asarray(again.exit_logits(batch)), ours, atol=1e-6, rtol=0)
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_compiled_executors_agree_with_all_exits(hf_dir):
    kind, path, _ = hf_dir
    model = rome_jax.load_pretrained(str(path))
    batch = _batch(kind, batch=8, seed=2)
    params = spread_exits(model.config, model.params, batch)
    all_logits = executors.all_exits(model.config, params, batch)
    seen = set()
    for criterion in criteria_for(all_logits)[::3]:
        seen.update(assert_agree(model.config, params, batch, criterion, all_logits=all_logits).tolist())
    assert len(seen) >= 2


def test_training_forward_drops_out_and_stays_finite(hf_dir):
    kind, path, _ = hf_dir
    model = rome_jax.load_pretrained(str(path))
    inputs = {k: jnp.asarray(v) for k, v in _batch(kind).items()}
    run = lambda seed: np.asarray(
        model.module.apply(
            {"params": model.params}, **inputs, deterministic=False, rngs={"dropout": jax.random.PRNGKey(seed)}
        )["logits"]
    )
    first = run(0)
    assert np.isfinite(first).all() and not np.allclose(first, run(1))


def test_config_refuses_what_is_not_computed_in_one_line():
    base = {
        "model_type": "deberta-v2",
        **{k: v for k, v in tiny_hf.DEBERTA.items() if k != "type_vocab_size"},
        "num_hidden_layers": 3,
    }
    for change, message in (
        ({"conv_kernel_size": 3}, "conv_kernel_size"),
        ({"share_att_key": False}, "share_att_key"),
        ({"relative_attention": False}, "relative_attention"),
        ({"pooler_hidden_act": "tanh"}, "pooler"),
        ({"pos_att_type": ["c2p", "p2p"]}, "pos_att_type"),
    ):
        with pytest.raises(CheckpointError, match=message) as e:
            ModelConfig.from_hf_dict({**base, **change})
        assert "\n" not in str(e.value)
    config = ModelConfig.from_hf_dict({**base, "type_vocab_size": 0})
    assert not config.has_token_types and config.type_vocab_size == 2  # ids 0..1 accepted, ignored
    assert config.pos_att_type == ("p2c", "c2p") and config.norm_rel_ebd and not config.position_biased_input
    assert hash(config) == hash(config.replace())
    with pytest.raises(AttributeError):
        config.family = "bert"  # type: ignore[misc]
    assert ModelConfig.from_hf_dict({**config.to_hf_dict(), "num_labels": 2}) == config


@pytest.mark.slow
def test_a_romebert_train_step_lowers_the_loss():
    from test_train_step import CFG, run_steps

    from rome_jax.training import step as ts

    config = CFG.replace(family="deberta-v2", position_buckets=4)
    *_, losses = run_steps(ts.StepSettings(mode="romebert"), config=config, steps=3, lr=3e-3)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


# ---------------------------------------------------------------- FLOPs

_SMALL = dict(
    family="deberta-v2", vocab_size=99, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96, num_labels=5
)
FLOPS_CONFIGS = {
    "v3": ModelConfig(position_buckets=8, **_SMALL),
    "v3-mean": ModelConfig(position_buckets=8, exit_pooling="mean", **_SMALL),
    "variant": ModelConfig(
        position_buckets=8,
        position_biased_input=True,
        token_type_table=True,
        embedding_size=48,
        pos_att_type=("c2p",),
        norm_rel_ebd=False,
        **_SMALL,
    ),
}


@pytest.mark.parametrize("name", sorted(FLOPS_CONFIGS))
def test_full_depth_flops_match_xla(name):
    config, seq_len, batch_size = FLOPS_CONFIGS[name], 32, 3
    params = jax.eval_shape(lambda: init_params(config))
    ids = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": ids, "token_type_ids": ids}
    lowered = jax.jit(_unrolled_forward(config)).lower(params, batch)
    # the relative embeddings' projections (and LayerNorm) are per layer and batch
    analytic = batch_size * flops.full_flops(config, seq_len) + config.num_layers * flops.deberta_shared_flops(config)
    compiled = _xla_flops(lowered.compile().cost_analysis())
    before_fusion = _xla_flops(lowered.cost_analysis())
    print(name, f"compiled/analytic {compiled / analytic:.4f}, before fusion {before_fusion / analytic:.4f}")
    assert abs(compiled / analytic - 1) < 0.05, (compiled, analytic)
    assert abs(before_fusion / analytic - 1) < 0.01, (before_fusion, analytic)


def test_flops_count_the_position_terms():
    T, H = 32, 64
    v3, c2p_only = FLOPS_CONFIGS["v3"], FLOPS_CONFIGS["v3"].replace(pos_att_type=("c2p",))
    # a term: the [T, 2S] product with the position keys (or queries), its scale and add
    assert flops.layer_flops(v3, T) - flops.layer_flops(c2p_only, T) == 2 * T * 16 * H + 2 * 4 * T * T
    assert flops.deberta_shared_flops(v3) - flops.deberta_shared_flops(c2p_only) == 2 * 16 * H * H + 16 * H
    assert flops.deberta_shared_flops(ModelConfig()) == 0
    # the exits are ELECTRA's head: an exact GELU after the pooler
    assert flops.exit_flops(v3) == flops.exit_flops(
        ModelConfig(family="electra", num_labels=5, hidden_size=64, num_heads=4)
    )


def test_the_exported_program_answers_as_the_executors(hf_dir, tmp_path):
    """`export_predictor`'s program (the executors' loop with `apply_layer_with_exit`,
    relative positions recomputed from the exported length) at full depth gives the
    final exit's probabilities."""
    from rome_jax.serving.export import export_predictor, load_predictor, run_predictor

    kind, path, _ = hf_dir
    model = rome_jax.load_pretrained(str(path))
    batch = _batch(kind)
    program, _ = export_predictor(model, str(tmp_path), batch_size=4, length=20, criterion=None)
    out = run_predictor(load_predictor(program), batch)
    want = jax.nn.softmax(np.asarray(model.exit_logits(batch))[-1], axis=-1)
    np.testing.assert_allclose(out["probabilities"], want, atol=1e-5)
    assert (np.asarray(out["exit_layer"]) == L).all()
