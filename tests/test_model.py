"""The multi-exit encoder against HF PyTorch, loading, export and errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rome_jax
import tiny_hf
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import MultiExitEncoder, apply_embeddings, apply_layer_with_exit, init_params, layer_params
from rome_jax.encoder.ops import Dropout, attention, dense_matmul, dropout_bits, softmax, training_attention
from rome_jax.errors import CheckpointError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    model = tiny_hf.make_bert(path)
    return path, model


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("roberta")
    model = tiny_hf.make_roberta(path)
    return path, model


def test_bert_final_exit_matches_hf(bert_dir):
    path, hf_model = bert_dir
    batch = tiny_hf.random_batch()
    model = rome_jax.load_pretrained(str(path))
    logits = np.asarray(model.exit_logits(batch))
    assert logits.shape == (3, 4, 3)  # [num_exits, B, num_labels]
    np.testing.assert_allclose(logits[-1], tiny_hf.torch_logits(hf_model, batch), atol=1e-5, rtol=0)


def test_bert_bfloat16_close_to_hf(bert_dir):
    path, hf_model = bert_dir
    batch = tiny_hf.random_batch()
    model = rome_jax.load_pretrained(str(path), dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(model.params))  # params stay f32
    logits = np.asarray(model.exit_logits(batch))
    # bfloat16 keeps 8 bits of mantissa: about 2-3 significant digits after 3 layers.
    np.testing.assert_allclose(logits[-1], tiny_hf.torch_logits(hf_model, batch), atol=2e-2, rtol=0)


def test_roberta_final_exit_matches_hf(roberta_dir):
    path, hf_model = roberta_dir
    batch = tiny_hf.random_batch(pad_id=1, two_segments=False)
    model = rome_jax.load_pretrained(str(path))
    assert model.config.family == "roberta" and model.config.position_offset == 2
    logits = np.asarray(model.exit_logits(batch))
    np.testing.assert_allclose(logits[-1], tiny_hf.torch_logits(hf_model, batch, token_types=False), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def albert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("albert")
    model = tiny_hf.make_albert(path)
    return path, model


def test_albert_final_exit_matches_hf_and_exports_back(albert_dir, tmp_path):
    from transformers import AlbertForSequenceClassification

    path, hf_model = albert_dir
    batch = tiny_hf.random_batch()
    model = rome_jax.load_pretrained(str(path))
    assert model.config.shares_layers and model.config.embedding_size == 16
    assert "layer" not in model.params["layers"]  # one shared layer, no per-layer copies
    np.testing.assert_allclose(
        np.asarray(model.exit_logits(batch))[-1], tiny_hf.torch_logits(hf_model, batch), atol=1e-5, rtol=0
    )
    model.save_pretrained(str(tmp_path))
    again = AlbertForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    np.testing.assert_allclose(
        tiny_hf.torch_logits(again, batch), np.asarray(model.exit_logits(batch))[-1], atol=1e-5, rtol=0
    )


def test_intermediate_exits_copy_pooler_and_seeded_classifier(bert_dir):
    path, hf_model = bert_dir
    a = rome_jax.load_pretrained(str(path), seed=1)
    b = rome_jax.load_pretrained(str(path), seed=1)
    c = rome_jax.load_pretrained(str(path), seed=2)
    pooler = hf_model.bert.pooler.dense.weight.detach().numpy().T
    exits = a.params["layers"]["exit"]
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(exits["pooler"]["kernel"][i]), pooler)
    cls = lambda m: np.asarray(m.params["layers"]["exit"]["classifier"]["kernel"])
    np.testing.assert_array_equal(cls(a), cls(b))
    assert not np.allclose(cls(a)[:2], cls(c)[:2])
    np.testing.assert_array_equal(cls(a)[2], hf_model.classifier.weight.detach().numpy().T)
    assert 0.01 < cls(a)[0].std() < 0.03  # normal(0.02), HF's initializer range


def test_minilm_hidden_states_and_pooler_match_hf(minilm_path, glue_dir):
    import csv

    from transformers import AutoTokenizer, BertModel

    with open(os.path.join(glue_dir, "RTE", "dev.tsv"), encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:9]
    tok = AutoTokenizer.from_pretrained(minilm_path)
    enc = tok(
        [r[1] for r in rows],
        [r[2] for r in rows],
        truncation=True,
        max_length=128,
        padding="max_length",
        return_tensors="np",
    )
    batch = {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    hf = BertModel.from_pretrained(minilm_path).eval()
    with torch.no_grad():
        out = hf(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
    model = rome_jax.load_pretrained(minilm_path, num_labels=2)
    ours = model.module.apply({"params": model.params}, **batch)
    mask = batch["attention_mask"][..., None].astype(bool)
    np.testing.assert_allclose(
        np.where(mask, np.asarray(ours["last_hidden"]), 0),
        np.where(mask, out.last_hidden_state.numpy(), 0),
        atol=1e-4,
        rtol=0,
    )
    np.testing.assert_allclose(np.asarray(ours["pooled"][-1]), out.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_export_round_trip_through_transformers(bert_dir, tmp_path):
    from transformers import BertForSequenceClassification

    path, _ = bert_dir
    model = rome_jax.load_pretrained(str(path), seed=3)
    # Make the exits differ from their initial values, as after training.
    model.params = jax.tree.map(lambda x: x + 0.01 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), model.params)
    model.label_names = ["a", "b", "c"]
    model.save_pretrained(str(tmp_path / "out"))
    batch = tiny_hf.random_batch(seed=1)
    ours = np.asarray(model.exit_logits(batch))
    hf = BertForSequenceClassification.from_pretrained(str(tmp_path / "out")).eval()
    np.testing.assert_allclose(tiny_hf.torch_logits(hf, batch), ours[-1], atol=1e-5, rtol=0)
    assert hf.config.id2label[1] == "b"
    again = rome_jax.load_pretrained(str(tmp_path / "out"))
    np.testing.assert_allclose(np.asarray(again.exit_logits(batch)), ours, atol=1e-6, rtol=0)
    assert again.label_names == ["a", "b", "c"]


def test_final_exit_fine_tuned_in_transformers_wins_over_the_exits_file(bert_dir, tmp_path, caplog):
    """transformers rewrites model.safetensors and leaves our exits file as it was: the
    final exit is read from the HF weights (with a warning), the other exits from ours."""
    from transformers import BertForSequenceClassification

    path, _ = bert_dir
    model = rome_jax.load_pretrained(str(path), seed=3)
    model.save_pretrained(str(tmp_path))
    hf = BertForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        hf.classifier.weight.mul_(-3.0)
    hf.save_pretrained(str(tmp_path))
    batch = tiny_hf.random_batch(seed=2)
    again = rome_jax.load_pretrained(str(tmp_path))
    logits = np.asarray(again.exit_logits(batch))
    np.testing.assert_allclose(logits[-1], tiny_hf.torch_logits(hf, batch), atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits[:-1], np.asarray(model.exit_logits(batch))[:-1], atol=1e-6, rtol=0)
    assert any(
        "the final exit in rome_jax_exits.safetensors differs from the one in model.safetensors" in r.getMessage()
        for r in caplog.records
    )


def test_sharded_weights_errors_name_the_shard(bert_dir, tmp_path):
    from safetensors.numpy import save_file

    from rome_jax.encoder.hf_io import read_state_dict

    path, hf_model = bert_dir
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:5], "model-00002-of-00002.safetensors": keys[5:]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(tmp_path / name))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {k: n for n, part in shards.items() for k in part}}))
    assert sorted(read_state_dict(str(index))) == keys
    second = tmp_path / "model-00002-of-00002.safetensors"
    second.write_bytes(b"\x07" * 16)
    with pytest.raises(CheckpointError, match=f"^{second}: cannot read weights"):
        read_state_dict(str(index))
    second.unlink()
    with pytest.raises(CheckpointError, match=f"^{second}: no such weights file$"):
        read_state_dict(str(index))
    index.write_text("{")
    with pytest.raises(CheckpointError, match=f"^{index}: cannot read the shard index"):
        read_state_dict(str(index))


def test_roberta_export_round_trip(roberta_dir, tmp_path):
    from transformers import RobertaForSequenceClassification

    path, _ = roberta_dir
    model = rome_jax.load_pretrained(str(path))
    model.save_pretrained(str(tmp_path))
    batch = tiny_hf.random_batch(pad_id=1, two_segments=False)
    hf = RobertaForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    np.testing.assert_allclose(
        tiny_hf.torch_logits(hf, batch, token_types=False), np.asarray(model.exit_logits(batch))[-1], atol=1e-5, rtol=0
    )


def test_keys_without_prefix_old_layernorm_names_and_torch_bin(bert_dir, tmp_path):
    path, hf_model = bert_dir
    state = {k.replace("bert.", "", 1): v for k, v in hf_model.state_dict().items()}
    state = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in state.items()
    }
    torch.save(state, tmp_path / "pytorch_model.bin")
    shutil.copy(path / "config.json", tmp_path / "config.json")
    batch = tiny_hf.random_batch()
    model = rome_jax.load_pretrained(str(tmp_path))
    np.testing.assert_allclose(
        np.asarray(model.exit_logits(batch))[-1], tiny_hf.torch_logits(hf_model, batch), atol=1e-5, rtol=0
    )


def test_shape_mismatch_names_parameter_and_both_shapes(bert_dir, tmp_path):
    path, _ = bert_dir
    shutil.copytree(path, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        rome_jax.load_pretrained(str(tmp_path / "m"))
    msg = str(e.value)
    assert "encoder.layer.0.intermediate.dense.weight" in msg
    assert "(37, 32)" in msg and "(40, 32)" in msg and "\n" not in msg


def test_num_labels_that_do_not_fit_the_classifier(bert_dir):
    path, _ = bert_dir
    with pytest.raises(CheckpointError, match=r"classifier.weight.*\(3, 32\).*\(2, 32\)"):
        rome_jax.load_pretrained(str(path), num_labels=2)


def test_malformed_config_values_are_one_clear_error(bert_dir, tmp_path):
    path, _ = bert_dir
    shutil.copytree(path, tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "hidden_size": "32", "type_vocab_size": None}))
    with pytest.raises(
        CheckpointError,
        match=f"^{config_path}: hidden_size='32', type_vocab_size=None: sizes must be positive integers$",
    ):
        rome_jax.load_pretrained(str(tmp_path / "m"))
    config_path.write_text("null")
    with pytest.raises(CheckpointError, match=f"^{config_path}: not a JSON object$"):
        rome_jax.load_pretrained(str(tmp_path / "m"))


def test_missing_files_are_named(bert_dir, tmp_path):
    path, _ = bert_dir
    with pytest.raises(CheckpointError, match="config.json"):
        rome_jax.load_pretrained(str(tmp_path))
    shutil.copy(path / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no model weights.*model.safetensors.*found config.json"):
        rome_jax.load_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="no such model directory"):
        rome_jax.load_pretrained(str(tmp_path / "nope"))


def test_hub_name_offline_says_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="pass the path of a local HF model directory"):
        rome_jax.load_pretrained("not-a-real-org/not-a-real-model")


def test_stacked_layers_keep_the_program_size_constant():
    """Compile time must not grow with depth: the jaxpr of 2 and 8 layers is the same size."""

    def size(num_layers):
        cfg = ModelConfig(
            vocab_size=50,
            hidden_size=16,
            num_layers=num_layers,
            num_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        )
        params = jax.eval_shape(lambda: init_params(cfg))
        ids = jnp.zeros((2, 8), jnp.int32)
        jaxpr = jax.make_jaxpr(lambda p: MultiExitEncoder(cfg).apply({"params": p}, ids)["logits"])(params)
        return len(str(jaxpr))

    assert size(2) == size(8)


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_layer_by_layer_pieces_equal_the_scanned_model(bert_dir, albert_dir, family):
    path, _ = bert_dir if family == "bert" else albert_dir
    model = rome_jax.load_pretrained(str(path))
    batch = {k: jnp.asarray(v) for k, v in tiny_hf.random_batch().items()}
    full = np.asarray(model.exit_logits(batch))
    hidden = apply_embeddings(model.config, model.params, batch)
    for i in range(model.config.num_layers):
        hidden, logits = apply_layer_with_exit(
            model.config, layer_params(model.params, jnp.int32(i)), hidden, batch["attention_mask"]
        )
        np.testing.assert_allclose(np.asarray(logits), full[i], atol=1e-6, rtol=0)


def test_dropout_is_active_in_training_mode(bert_dir):
    path, _ = bert_dir
    model = rome_jax.load_pretrained(str(path))
    batch = {k: jnp.asarray(v) for k, v in tiny_hf.random_batch().items()}
    run = lambda seed: model.module.apply(
        {"params": model.params}, **batch, deterministic=False, rngs={"dropout": jax.random.PRNGKey(seed)}
    )["logits"]
    assert not np.allclose(run(0), run(1))
    np.testing.assert_array_equal(run(0), run(0))


def test_dropout_drops_at_the_rate_and_scales_the_rest():
    x = jnp.ones((1000, 1000), jnp.float32)
    key3 = jax.random.PRNGKey(3)
    apply = lambda rate, key=key3, det=False: np.asarray(Dropout(rate).apply({}, x, det, rngs={"dropout": key}))
    out = apply(0.1)
    dropped = (out == 0).mean()
    rate = 6554 / 65536  # 0.1 met to 2**-17
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / x.size), dropped
    np.testing.assert_array_equal(np.unique(out), np.float32([0.0, np.float32(1) / np.float32(0.9)]))
    np.testing.assert_array_equal(apply(0.1, det=True), x)
    np.testing.assert_array_equal(apply(0.0), x)
    np.testing.assert_array_equal(apply(1.0), np.zeros_like(x))
    assert abs((apply(0.5) == 0).mean() - 0.5) < 5 * 0.5 / 1000
    assert (apply(0.1, jax.random.PRNGKey(4)) != out).any()
    # a typed key gives the same mask as its raw form
    np.testing.assert_array_equal(apply(0.1, jax.random.wrap_key_data(jax.random.PRNGKey(3))), out)


def test_dropout_bits_are_uniform_and_fill_odd_shapes():
    bits = np.asarray(dropout_bits(jax.random.PRNGKey(0), (1 << 20,)))
    assert bits.dtype == np.uint16
    for byte in (bits & 0xFF, bits >> 8):  # both bytes uniform: chi-square over 256 cells
        counts = np.bincount(byte, minlength=256)
        chi2 = ((counts - bits.size / 256) ** 2 / (bits.size / 256)).sum()
        assert chi2 < 255 + 6 * np.sqrt(2 * 255), chi2
    # neighbours are uncorrelated (the two halves of one word, and adjacent words)
    centred = bits.astype(np.float64) - 32767.5
    assert abs(np.corrcoef(centred[:-1], centred[1:])[0, 1]) < 0.01
    odd = np.asarray(dropout_bits(jax.random.PRNGKey(1), (3, 5, 7)))
    assert odd.shape == (3, 5, 7) and len(np.unique(odd)) > 90
    rbg = jax.random.key(0, impl="rbg")  # another PRNG: through jax.random.bits
    assert dropout_bits(rbg, (4, 3)).shape == (4, 3)


def test_tokenizer_pairs_and_truncation(minilm_path):
    model = rome_jax.load_pretrained(minilm_path, num_labels=2)
    batch = model.tokenize(["a short one", "word " * 100], ["and its pair", "other"], max_length=16)
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"][1].all() and batch["attention_mask"][0].sum() < 16
    assert set(np.unique(batch["token_type_ids"][0])) == {0, 1}


@pytest.mark.parametrize("cpu_layout", [True, False])  # with the barriers (CPU), and as on GPU/TPU
@pytest.mark.parametrize("in_out", [(6, 10), (10, 6)])  # both branches: transpose x, or transpose g
def test_dense_matmul_gradients_equal_autodiff_of_the_plain_product(in_out, cpu_layout, monkeypatch):
    """The hand-laid-out backward of the encoder's Dense layers against jax's own VJP of x @ W,
    for one cotangent and for two under vmap (as the GR step pulls back two losses)."""
    monkeypatch.setattr(rome_jax.encoder.ops, "_lay_out_for_cpu", lambda: cpu_layout)
    n_in, n_out = in_out
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(3, 5, n_in), jnp.float32)
    w = jnp.asarray(rng.randn(n_in, n_out), jnp.float32)
    gs = jnp.asarray(rng.randn(2, 3, 5, n_out), jnp.float32)
    np.testing.assert_allclose(dense_matmul(x, w), np.einsum("bti,io->bto", x, w), rtol=1e-5, atol=1e-5)
    _, ours = jax.vjp(dense_matmul, x, w)
    _, plain = jax.vjp(lambda a, b: a @ b, x, w)
    for got, want in zip(jax.jit(jax.vmap(ours))(gs), jax.vmap(plain)(gs)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    dx, dw = ours(gs[0])  # and against numpy: dx = g W^T, dW = sum over rows of x^T g
    np.testing.assert_allclose(dx, np.einsum("bto,io->bti", gs[0], w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, np.einsum("bti,bto->io", x, gs[0]), rtol=1e-5, atol=1e-5)
    bf = jax.vjp(dense_matmul, x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))[1](gs[0].astype(jnp.bfloat16))
    assert [a.dtype for a in bf] == [jnp.bfloat16, jnp.bfloat16]
    np.testing.assert_allclose(np.asarray(bf[1], np.float32), dw, rtol=0.05, atol=0.1)


def _np_attention(q, k, v, mask, keep=None, rate=0.0):
    """Textbook attention in numpy: softmax(q k^T / sqrt(D), masked keys) [dropped] v.
    q, k, v [B, T, N, D]; mask [B, T] bool; keep [B, N, T, T] bool."""
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    s = np.where(mask[:, None, None, :], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    if keep is not None:
        p = np.where(keep, p / (1 - rate), 0.0)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def test_attention_forms_equal_the_textbook_one():
    """`attention` (heads first, the softmax's division after the value product) and
    `training_attention` (with dropout on the probabilities) against numpy's textbook
    form, and their gradients against autodiff of `jax.nn.dot_product_attention` and of
    a plain jnp form."""
    rng = np.random.RandomState(1)
    B, T, N, D = 2, 5, 3, 4
    q, k, v, g = (rng.randn(B, T, N, D).astype(np.float32) * 2 for _ in range(4))
    mask = np.ones((B, T), bool)
    mask[1, 3:] = False  # padding
    m4 = jnp.asarray(mask[:, None, None, :])
    theirs = jax.vjp(lambda *a: jax.nn.dot_product_attention(*a, mask=m4, implementation="xla"), q, k, v)[1](g)
    for form in (attention, training_attention):
        np.testing.assert_allclose(form(q, k, v, m4), _np_attention(q, k, v, mask), rtol=1e-5, atol=1e-6)
        ours = jax.vjp(lambda *a: form(*a, m4), q, k, v)[1](g)  # noqa: B023 - called at once
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert float(np.abs(np.asarray(ours[1])[1, 3:]).max()) == 0.0  # no gradient into padded keys
        bf = form(*(jnp.asarray(t, jnp.bfloat16) for t in (q, k, v)), m4)
        assert bf.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(bf, np.float32), _np_attention(q, k, v, mask), rtol=0.05, atol=0.05)

    rate = 0.3
    keep = rng.rand(B, N, T, T) >= rate
    drop = lambda p: jnp.where(keep, p / (1 - rate), 0.0)
    np.testing.assert_allclose(
        training_attention(q, k, v, m4, drop), _np_attention(q, k, v, mask, keep, rate), rtol=1e-5, atol=1e-6
    )

    def plain(q, k, v):  # jax.nn.softmax's own autodiff
        s = jnp.where(m4, jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D), -1e30)
        return jnp.einsum("bhqk,bkhd->bqhd", drop(jax.nn.softmax(s, axis=-1)), v)

    ours = jax.vjp(lambda *a: training_attention(*a, m4, drop), q, k, v)[1](g)
    for a, b in zip(ours, jax.vjp(plain, q, k, v)[1](g)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_softmax_and_its_gradient_equal_the_textbook_ones():
    """The attention softmax (custom JVP) against numpy and jax.nn.softmax's own autodiff,
    with a masked key at float32's minimum as the model masks it."""
    rng = np.random.RandomState(1)
    x = rng.randn(2, 3, 5).astype(np.float32) * 3
    x[..., -1] = np.finfo(np.float32).min
    g = rng.randn(2, 3, 5).astype(np.float32)
    e = np.exp(x - x.max(-1, keepdims=True))
    y = e / e.sum(-1, keepdims=True)
    np.testing.assert_allclose(softmax(jnp.asarray(x)), y, rtol=1e-6, atol=1e-7)
    ours = jax.vjp(softmax, jnp.asarray(x))[1](jnp.asarray(g))[0]
    np.testing.assert_allclose(ours, y * (g - (g * y).sum(-1, keepdims=True)), rtol=1e-5, atol=1e-6)
    theirs = jax.vjp(lambda a: jax.nn.softmax(a, axis=-1), jnp.asarray(x))[1](jnp.asarray(g))[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert float(np.abs(np.asarray(ours)[..., -1]).max()) == 0.0  # no gradient into a masked key


def test_the_cudnn_attention_kernel_is_refused_where_it_cannot_run():
    """attention_kernel 'cudnn' needs bfloat16 (config check) and a CUDA GPU (one line at
    trace time, naming the backend); 'xla' is the default."""
    dims = dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    assert ModelConfig(**dims).attention_kernel == "xla"
    with pytest.raises(CheckpointError, match="attention_kernel 'cudnn' needs dtype bfloat16"):
        ModelConfig(**dims, attention_kernel="cudnn")
    with pytest.raises(CheckpointError, match="attention_kernel must be one of xla, cudnn"):
        ModelConfig(**dims, attention_kernel="flash")
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU may have cuDNN")
    config = ModelConfig(**dims, dtype="bfloat16", attention_kernel="cudnn")
    backend = jax.default_backend()
    with pytest.raises(CheckpointError, match=f"attention_kernel 'cudnn' is unavailable on {backend}"):
        init_params(config)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN needs a CUDA GPU")
def test_cudnn_attention_matches_the_xla_form_on_a_gpu():
    """On a GPU: the cuDNN kernel's exits agree with the XLA form's (bfloat16)."""
    dims = dict(vocab_size=50, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, dtype="bfloat16")
    params = init_params(ModelConfig(**dims), seq_len=16)
    ids = jnp.asarray(np.random.RandomState(0).randint(1, 50, (4, 16)))
    mask = jnp.ones_like(ids).at[1, 10:].set(0)
    logits = {
        kernel: MultiExitEncoder(ModelConfig(**dims, attention_kernel=kernel)).apply({"params": params}, ids, mask)[
            "logits"
        ]
        for kernel in ("xla", "cudnn")
    }
    np.testing.assert_allclose(logits["cudnn"], logits["xla"], rtol=0.05, atol=0.02)
