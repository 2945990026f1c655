"""DistilBERT, ELECTRA and XLM-RoBERTa against transformers: every layer's hidden states
and the final classifier (1e-5, float32, a padded batch), the exits with both
poolings, the export that transformers loads back, the compiled executors and the
FLOPs against XLA's count."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_flops import _unrolled_forward, _xla_flops
from test_inference import assert_agree, criteria_for, spread_exits

import rome_jax
import tiny_hf
from rome_jax.encoder import flops
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import MultiExitEncoder, apply_embeddings, apply_layer_with_exit, init_params, layer_params
from rome_jax.errors import CheckpointError
from rome_jax.exits import executors

torch = pytest.importorskip("torch")

FAMILIES = ("distilbert", "electra", "xlm-roberta")
MAKERS = {
    "distilbert": tiny_hf.make_distilbert,
    "electra": tiny_hf.make_electra,
    "xlm-roberta": tiny_hf.make_xlm_roberta,
}
ARCHITECTURES = {
    "distilbert": "DistilBertForSequenceClassification",
    "electra": "ElectraForSequenceClassification",
    "xlm-roberta": "XLMRobertaForSequenceClassification",
}
# The classification head's weights, scaled up so that the logits are O(1) and the
# head's activation (ReLU, GELU, tanh) matters in the comparison.
HEAD_SCALE = 10.0


def _uses_token_types(family):
    """What transformers' model takes: DistilBERT has no token types, XLM-R one type."""
    return family == "electra"


def _batch(family, batch=4, seed=0):
    """A padded batch (rows 1 and 3 padded); XLM-R pads with its id 1 and has one segment."""
    if family == "xlm-roberta":
        return tiny_hf.random_batch(batch=batch, seed=seed, pad_id=1, two_segments=False)
    return tiny_hf.random_batch(batch=batch, seed=seed)


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    family = request.param
    path = tmp_path_factory.mktemp(family)
    model = MAKERS[family](path)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.startswith(("classifier.", "pre_classifier.")) and name.endswith("weight"):
                weight.mul_(HEAD_SCALE)
    model.save_pretrained(str(path))
    return family, path, model


def _layer_by_layer(config, params, batch):
    """(embeddings [B, T, H], every layer's output [L, B, T, H], every exit's logits [L, B, C])
    through the executors' pieces (`apply_embeddings`, `apply_layer_with_exit`)."""
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}
    hidden = apply_embeddings(config, params, inputs)
    embedded, layers, logits = np.asarray(hidden), [], []
    for i in range(config.num_layers):
        hidden, z = apply_layer_with_exit(config, layer_params(params, jnp.int32(i)), hidden, inputs["attention_mask"])
        layers.append(np.asarray(hidden))
        logits.append(np.asarray(z))
    return embedded, np.stack(layers), np.stack(logits)


def test_every_layer_and_the_final_exit_match_transformers(family_dir):
    family, path, hf_model = family_dir
    batch = _batch(family)
    model = rome_jax.load_pretrained(str(path), num_labels=3)
    config = model.config
    assert config.model_type == family and config.family == ("roberta" if family == "xlm-roberta" else family)
    assert hash(config) == hash(ModelConfig.from_json_file(str(path / "config.json"), num_labels=3))
    want = tiny_hf.torch_hidden_states(hf_model, batch, token_types=_uses_token_types(family))  # [L + 1, B, T, H]
    embedded, layers, logits = _layer_by_layer(config, model.params, batch)
    assert layers.shape == (3, 4, 16, 32) and logits.shape == (3, 4, 3)
    diffs = {"embeddings": np.abs(embedded - want[0]).max()}
    diffs.update({f"layer {i}": np.abs(layers[i] - want[i + 1]).max() for i in range(config.num_layers)})
    hf_logits = tiny_hf.torch_logits(hf_model, batch, token_types=_uses_token_types(family))
    diffs["final logits"] = np.abs(logits[-1] - hf_logits).max()
    print(family, {k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) < 1e-5, diffs
    assert np.abs(hf_logits).max() > 0.5  # the head's activation matters at this scale
    # the scanned model (all exits, jitted) equals the pieces
    scanned = model.module.apply({"params": model.params}, **{k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_allclose(np.asarray(scanned["last_hidden"]), layers[-1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(model.exit_logits(batch)), logits, atol=1e-5, rtol=0)


def _activation(name, x):
    t = torch.from_numpy(x)
    return {"tanh": torch.tanh, "relu": torch.relu, "gelu": torch.nn.functional.gelu}[name](t).numpy()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_an_exit_after_every_layer_with_both_poolings(family_dir, pooling):
    """Every exit against transformers' hidden states through the exit's pooling, pooler
    dense, the family's head activation and the classifier, in float64."""
    family, path, hf_model = family_dir
    batch = _batch(family)
    model = rome_jax.load_pretrained(str(path), exit_pooling=pooling)
    assert model.config.exit_activation == {"distilbert": "relu", "electra": "gelu"}.get(family, "tanh")
    got = np.asarray(model.exit_logits(batch))  # [L, B, C]
    hidden = tiny_hf.torch_hidden_states(hf_model, batch, _uses_token_types(family))[1:].astype(np.float64)
    mask = batch["attention_mask"].astype(np.float64)
    if pooling == "cls":
        pooled = hidden[:, :, 0]
    else:
        pooled = (hidden * mask[None, :, :, None]).sum(2) / mask.sum(1)[None, :, None]
    exits = jax.tree.map(lambda x: np.asarray(x, np.float64), model.params["layers"]["exit"])
    want = np.stack(
        [
            _activation(
                model.config.exit_activation, pooled[i] @ exits["pooler"]["kernel"][i] + exits["pooler"]["bias"][i]
            )
            @ exits["classifier"]["kernel"][i]
            + exits["classifier"]["bias"][i]
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    if pooling == "cls":  # the final exit is transformers' classifier
        hf_logits = tiny_hf.torch_logits(hf_model, batch, token_types=_uses_token_types(family))
        np.testing.assert_allclose(got[-1], hf_logits, atol=1e-5, rtol=0)


def test_save_pretrained_loads_back_in_transformers(family_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    family, path, _ = family_dir
    model = rome_jax.load_pretrained(str(path), seed=3)
    # Make every weight differ from what was loaded, as after training.
    model.params = jax.tree.map(lambda x: x + 0.01 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), model.params)
    model.label_names = ["a", "b", "c"]
    model.save_pretrained(str(tmp_path))
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == family and written["architectures"] == [ARCHITECTURES[family]]
    assert AutoConfig.from_pretrained(str(tmp_path)).model_type == family
    hf, info = AutoModelForSequenceClassification.from_pretrained(str(tmp_path), output_loading_info=True)
    assert type(hf).__name__ == ARCHITECTURES[family]
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = _batch(family, seed=1)
    ours = np.asarray(model.exit_logits(batch))
    theirs = tiny_hf.torch_logits(hf.eval(), batch, token_types=_uses_token_types(family))
    print(family, "export: final exit vs transformers", f"{np.abs(theirs - ours[-1]).max():.1e}")
    np.testing.assert_allclose(theirs, ours[-1], atol=1e-5, rtol=0)
    assert hf.config.id2label[1] == "b"
    again = rome_jax.load_pretrained(str(tmp_path))
    assert again.config == model.config  # XLM-R stays XLM-R (hf_model_type)
    np.testing.assert_allclose(np.asarray(again.exit_logits(batch)), ours, atol=1e-6, rtol=0)


def test_compiled_executors_agree_with_all_exits(family_dir):
    family, path, _ = family_dir
    model = rome_jax.load_pretrained(str(path))
    batch = _batch(family, batch=8, seed=2)
    params = spread_exits(model.config, model.params, batch)
    all_logits = executors.all_exits(model.config, params, batch)
    seen = set()
    for criterion in criteria_for(all_logits)[::3]:
        seen.update(assert_agree(model.config, params, batch, criterion, all_logits=all_logits).tolist())
    assert len(seen) >= 2


def test_training_forward_drops_out_and_stays_finite(family_dir):
    family, path, _ = family_dir
    model = rome_jax.load_pretrained(str(path))
    inputs = {k: jnp.asarray(v) for k, v in _batch(family).items()}
    run = lambda seed: np.asarray(
        model.module.apply(
            {"params": model.params}, **inputs, deterministic=False, rngs={"dropout": jax.random.PRNGKey(seed)}
        )["logits"]
    )
    first = run(0)
    assert np.isfinite(first).all() and not np.allclose(first, run(1))


# ---------------------------------------------------------------- family specifics


def test_distilbert_ignores_token_types(tmp_path):
    tiny_hf.make_distilbert(tmp_path / "m", n_layers=2)
    model = rome_jax.load_pretrained(str(tmp_path / "m"))
    assert not model.config.has_token_types and "token_type_embeddings" not in model.params["embeddings"]
    assert not model.config.sinusoidal_positions
    batch = _batch("distilbert")
    plain = {**batch, "token_type_ids": np.zeros_like(batch["token_type_ids"])}
    np.testing.assert_array_equal(np.asarray(model.exit_logits(batch)), np.asarray(model.exit_logits(plain)))
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    del config["dim"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"^{config_path}: missing key\\(s\\) dim$"):
        rome_jax.load_pretrained(str(tmp_path / "m"))


def test_distilbert_with_sinusoidal_positions(tmp_path):
    """`sinusoidal_pos_embds`: the same function as transformers' (the table comes with the
    checkpoint), a fresh model starts from the sines and cosines transformers writes, and the
    export keeps the flag."""
    from transformers import DistilBertForSequenceClassification

    hf_model = tiny_hf.make_distilbert(tmp_path / "m", n_layers=2, sinusoidal_pos_embds=True)
    table = hf_model.distilbert.embeddings.position_embeddings.weight.detach().numpy()
    rows = np.arange(table.shape[0])[:, None] / np.power(10000.0, 2 * (np.arange(table.shape[1]) // 2) / table.shape[1])
    np.testing.assert_allclose(table[:, 0::2], np.sin(rows[:, 0::2]), atol=1e-6)  # transformers' own table
    np.testing.assert_allclose(table[:, 1::2], np.cos(rows[:, 1::2]), atol=1e-6)
    model = rome_jax.load_pretrained(str(tmp_path / "m"))
    assert model.config.sinusoidal_positions
    batch = _batch("distilbert")
    np.testing.assert_allclose(
        np.asarray(model.exit_logits(batch))[-1], tiny_hf.torch_logits(hf_model, batch, token_types=False), atol=1e-5
    )
    fresh = init_params(model.config, seed=3)
    np.testing.assert_allclose(np.asarray(fresh["embeddings"]["position_embeddings"]["embedding"]), table, atol=1e-6)
    model.save_pretrained(str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["sinusoidal_pos_embds"] is True
    again = DistilBertForSequenceClassification.from_pretrained(str(tmp_path / "out")).eval()
    np.testing.assert_allclose(
        tiny_hf.torch_logits(again, batch, token_types=False),
        tiny_hf.torch_logits(hf_model, batch, token_types=False),
        atol=1e-5,
    )


def test_electra_without_a_projection_when_the_widths_agree(tmp_path):
    from transformers import ElectraForSequenceClassification

    hf_model = tiny_hf.make_electra(tmp_path / "m", embedding_size=32, num_hidden_layers=2)
    assert not hasattr(hf_model.electra, "embeddings_project")
    model = rome_jax.load_pretrained(str(tmp_path / "m"))
    assert not model.config.projects_embeddings and "embedding_hidden_mapping_in" not in model.params["embeddings"]
    batch = _batch("electra")
    np.testing.assert_allclose(
        np.asarray(model.exit_logits(batch))[-1], tiny_hf.torch_logits(hf_model, batch), atol=1e-5, rtol=0
    )
    model.save_pretrained(str(tmp_path / "out"))
    again, info = ElectraForSequenceClassification.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    np.testing.assert_allclose(
        tiny_hf.torch_logits(again.eval(), batch), np.asarray(model.exit_logits(batch))[-1], atol=1e-5, rtol=0
    )


def _tiny_xlm_r_tokenizer():
    """A SentencePiece-style (Unigram) XLM-R tokenizer built offline from a tiny vocabulary."""
    from transformers import XLMRobertaTokenizer

    words = ["hello", "world", "the", "cat", "sat", "on", "mat", "a", "dog"]
    vocab = (
        [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
        + [("\u2581" + w, -float(i + 1)) for i, w in enumerate(words)]
        + [(c, -20.0) for c in "abcdefghijklmnopqrstuvwxyz"]
        + [("\u2581", -30.0), ("<mask>", 0.0)]
    )
    return XLMRobertaTokenizer(vocab=vocab)


def test_xlm_roberta_sentencepiece_tokenizer_loads_and_exports(tmp_path):
    from transformers import AutoTokenizer

    hf_model = tiny_hf.make_xlm_roberta(tmp_path / "m", num_hidden_layers=2)
    _tiny_xlm_r_tokenizer().save_pretrained(str(tmp_path / "m"))
    model = rome_jax.load_pretrained(str(tmp_path / "m"))
    assert type(model.tokenizer).__name__ == "XLMRobertaTokenizer"
    batch = model.tokenize(["hello world", "the cat sat on a mat"], ["a dog", "zz"], max_length=12)
    assert batch["input_ids"][0, 0] == 0 and (batch["input_ids"][batch["attention_mask"] == 0] == 1).all()
    np.testing.assert_allclose(
        np.asarray(model.exit_logits(batch))[-1],
        tiny_hf.torch_logits(hf_model, batch, token_types=False),
        atol=1e-5,
        rtol=0,
    )
    model.save_pretrained(str(tmp_path / "out"))
    again = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert type(again).__name__ == "XLMRobertaTokenizer"
    assert again("hello world")["input_ids"] == model.tokenizer("hello world")["input_ids"]
    # A hub directory's tokenizer.json alone (no tokenizer_config.json): AutoTokenizer picks
    # the class from config.json's model_type.
    shutil.copytree(tmp_path / "out", tmp_path / "bare")
    (tmp_path / "bare" / "tokenizer_config.json").unlink()
    assert type(rome_jax.load_pretrained(str(tmp_path / "bare")).tokenizer).__name__ == "XLMRobertaTokenizer"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["distilbert", "electra"])
def test_a_gr_train_step_lowers_the_loss(family):
    from test_train_step import CFG, run_steps

    from rome_jax.training import step as ts

    config = CFG.replace(family=family, embedding_size=8 if family == "electra" else None)
    *_, losses = run_steps(ts.StepSettings(mode="romebert"), config=config, steps=3, lr=3e-3)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


# ---------------------------------------------------------------- the other families as they were

BEFORE = "3d8171556acb86662e566a032d392fd9b746cae0"  # the encoder before DistilBERT and ELECTRA


def _module_before(path, name):
    """rome_jax/encoder/`path` as it was at BEFORE (None without the git history)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE}:{path}"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax modules are dataclasses: their module must be importable
    exec(compile(source, f"{path}@{BEFORE[:7]}", "exec"), module.__dict__)
    return module


def test_bert_roberta_albert_are_bitwise_what_they_were():
    """The forward (with dropout too), the layer-at-a-time pieces, the exported tensors,
    config.json and the FLOPs of the three older families, against their code before."""
    from rome_jax.encoder import hf_io

    old_model = _module_before("rome_jax/encoder/model.py", "_model_before_families")
    old_io = _module_before("rome_jax/encoder/hf_io.py", "_hf_io_before_families")
    old_flops = _module_before("rome_jax/encoder/flops.py", "_flops_before_families")
    if old_model is None or old_io is None or old_flops is None:
        pytest.skip("no git history to compare with")
    sizes = dict(_SMALL, hidden_size=32, intermediate_size=37, num_labels=3)
    for config in (
        ModelConfig(**sizes),
        ModelConfig(family="roberta", pad_token_id=1, type_vocab_size=1, **sizes),
        ModelConfig(family="albert", embedding_size=16, **sizes),
    ):
        params = init_params(config, 1)
        batch = tiny_hf.random_batch(pad_id=config.pad_token_id, two_segments=config.type_vocab_size > 1)
        inputs = {k: jnp.asarray(v) for k, v in batch.items()}
        for deterministic in (True, False):
            rngs = {"dropout": jax.random.PRNGKey(0)}
            new = MultiExitEncoder(config).apply({"params": params}, **inputs, deterministic=deterministic, rngs=rngs)
            old = old_model.MultiExitEncoder(config).apply(
                {"params": params}, **inputs, deterministic=deterministic, rngs=rngs
            )
            np.testing.assert_array_equal(new["logits"], old["logits"], err_msg=config.family)
        hidden = apply_embeddings(config, params, inputs)
        np.testing.assert_array_equal(hidden, old_model.apply_embeddings(config, params, inputs))
        for piece, piece_before in zip(
            apply_layer_with_exit(config, layer_params(params, 1), hidden, inputs["attention_mask"]),
            old_model.apply_layer_with_exit(config, layer_params(params, 1), hidden, inputs["attention_mask"]),
        ):
            np.testing.assert_array_equal(piece, piece_before)
        state, exits_state = hf_io.state_dict_from_params(params, config)
        before, exits_before = old_io.state_dict_from_params(params, config)
        assert sorted(state) == sorted(before) and sorted(exits_state) == sorted(exits_before)
        for k in state:
            np.testing.assert_array_equal(state[k], before[k])
        exported = hf_io.hf_config_dict(config)
        # added since: the exits' activation and the PyTorch modeling file's registration
        assert exported.pop("auto_map") == {
            "AutoModelForSequenceClassification": "rome_jax_modeling.RomeJaxMultiExitModel"
        }
        assert exported["rome_jax"].pop("exit_activation") == config.exit_activation
        assert exported == old_io.hf_config_dict(config)
        for count in ("embedding_flops", "layer_flops", "exit_flops", "full_flops", "matmul_flops"):
            assert getattr(flops, count)(config, 32) == getattr(old_flops, count)(config, 32), count


# ---------------------------------------------------------------- FLOPs

_SMALL = dict(
    vocab_size=99, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=66
)
FLOPS_CONFIGS = {
    "distilbert": ModelConfig(family="distilbert", num_labels=5, **_SMALL),
    "electra": ModelConfig(family="electra", num_labels=5, embedding_size=48, **_SMALL),
    "xlm-roberta": ModelConfig(
        family="roberta", hf_model_type="xlm-roberta", num_labels=5, pad_token_id=1, type_vocab_size=1, **_SMALL
    ),
    "electra-mean": ModelConfig(family="electra", num_labels=5, embedding_size=48, exit_pooling="mean", **_SMALL),
}


@pytest.mark.parametrize("name", sorted(FLOPS_CONFIGS))
def test_full_depth_flops_match_xla(name):
    """As tests/test_flops.py for BERT: the compiled count within 5%, the count before
    XLA's fusion passes within 1%."""
    config, seq_len, batch_size = FLOPS_CONFIGS[name], 32, 3
    params = jax.eval_shape(lambda: init_params(config))
    ids = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": ids, "token_type_ids": ids}
    lowered = jax.jit(_unrolled_forward(config)).lower(params, batch)
    analytic = batch_size * flops.full_flops(config, seq_len)
    compiled = _xla_flops(lowered.compile().cost_analysis())
    before_fusion = _xla_flops(lowered.cost_analysis())
    print(name, f"compiled/analytic {compiled / analytic:.4f}, before fusion {before_fusion / analytic:.4f}")
    assert abs(compiled / analytic - 1) < 0.05, (compiled, analytic)
    assert abs(before_fusion / analytic - 1) < 0.01, (before_fusion, analytic)


def test_flops_count_each_familys_differences():
    T, H, E = 32, 64, 48
    bert = ModelConfig(num_labels=5, **_SMALL)
    distil, electra = FLOPS_CONFIGS["distilbert"], FLOPS_CONFIGS["electra"]
    # DistilBERT: no token-type add; a ReLU after each exit's pooler (one FLOP an element).
    assert flops.embedding_flops(bert, T) - flops.embedding_flops(distil, T) == T * H
    assert flops.exit_flops(distil) - flops.exit_flops(bert) == H
    # ELECTRA: the embedding projection (E -> H) and an exact GELU after each pooler.
    no_projection = electra.replace(embedding_size=None)
    assert not no_projection.projects_embeddings
    assert flops.matmul_flops(electra, T) - flops.matmul_flops(no_projection, T) == 2 * T * E * H
    assert flops.exit_flops(electra) - flops.exit_flops(bert) == 64 * H
    assert flops.full_flops(FLOPS_CONFIGS["xlm-roberta"], T) == flops.full_flops(bert.replace(type_vocab_size=1), T)


def test_family_configs_are_frozen_and_hashable():
    for config in FLOPS_CONFIGS.values():
        assert hash(config) == hash(config.replace())
        with pytest.raises(AttributeError):
            config.family = "bert"  # type: ignore[misc]
    with pytest.raises(CheckpointError, match="not a variant of family 'bert'"):
        ModelConfig(hf_model_type="xlm-roberta")
    # The forward jits with each config as a static argument.
    ids = jnp.zeros((1, 4), jnp.int32)
    for config in FLOPS_CONFIGS.values():
        out = jax.eval_shape(lambda c=config: MultiExitEncoder(c).init_with_output(jax.random.PRNGKey(0), ids)[0])
        assert out["logits"].shape == (2, 1, 5)
