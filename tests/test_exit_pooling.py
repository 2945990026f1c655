"""`model.exit_pooling`: "cls" (the papers' design) or "mean" (the masked mean of a
layer's token vectors) at every exit, checked against numpy, across executors, in
training, through save/load, in FLOPs and in the run config."""

import importlib.util
import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_inference import TINY, assert_agree, criteria_for, random_params, spread_exits, thresholds_between, tiny_batch

from rome_jax.config import run_config
from rome_jax.encoder import flops
from rome_jax.encoder.config import EXIT_POOLINGS, ModelConfig
from rome_jax.encoder.model import MultiExitEncoder, apply_embeddings, apply_layer_with_exit, init_params, layer_params
from rome_jax.errors import CheckpointError, ConfigError
from rome_jax.exits import executors as inference
from rome_jax.exits.criteria import Criterion, entropy

MEAN = TINY.replace(exit_pooling="mean")


def forward(config, params, batch):
    inputs = {k: jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    return np.asarray(
        jax.jit(lambda p, b: MultiExitEncoder(config).apply({"params": p}, **b)["logits"])(params, inputs)
    )


def layer_hidden_states(config, params, batch):
    """[L, B, T, H] float64: every layer's output, one layer at a time."""
    hidden = apply_embeddings(config, params, batch)
    out = []
    for i in range(config.num_layers):
        hidden, _ = apply_layer_with_exit(config, layer_params(params, i), hidden, batch["attention_mask"])
        out.append(np.asarray(hidden, np.float64))
    return np.stack(out)


def numpy_mean_exits(config, params, batch):
    """[L, B, C]: masked mean over attended positions, dense + tanh pooler, classifier."""
    hidden = layer_hidden_states(config, params, batch)
    mask = np.asarray(batch["attention_mask"], np.float64)  # [B, T]
    pooled = (hidden * mask[None, :, :, None]).sum(2) / np.maximum(mask.sum(1), 1)[None, :, None]
    exits = jax.tree.map(lambda x: np.asarray(x, np.float64), params["layers"]["exit"])
    out = []
    for i in range(config.num_layers):
        x = np.tanh(pooled[i] @ exits["pooler"]["kernel"][i] + exits["pooler"]["bias"][i])
        out.append(x @ exits["classifier"]["kernel"][i] + exits["classifier"]["bias"][i])
    return np.stack(out)


@pytest.fixture(scope="module")
def mean_model():
    batch = tiny_batch()
    assert (batch["attention_mask"] == 0).any()  # rows of several lengths: padded positions
    params = spread_exits(MEAN, random_params(MEAN), batch)
    return params, batch


def test_mean_pooled_exits_match_numpy(mean_model):
    params, batch = mean_model
    got = forward(MEAN, params, batch)
    np.testing.assert_allclose(got, numpy_mean_exits(MEAN, params, batch), atol=2e-5, rtol=1e-5)
    # The pooling matters: the same weights pooling [CLS] answer otherwise.
    assert np.abs(forward(TINY, params, batch) - got).max() > 1e-2


def test_padded_positions_and_padding_rows_are_ignored(mean_model):
    params, batch = mean_model
    got = forward(MEAN, params, batch)
    rng = np.random.RandomState(1)
    other = dict(batch)
    other["input_ids"] = np.where(
        batch["attention_mask"] == 1, batch["input_ids"], rng.randint(3, TINY.vocab_size, batch["input_ids"].shape)
    ).astype(np.int32)
    assert (other["input_ids"] != batch["input_ids"]).any()
    np.testing.assert_allclose(forward(MEAN, params, other), got, atol=1e-6, rtol=0)
    # A padding row (example_mask 0) attending nowhere: finite logits, other rows unchanged.
    padded = {k: v.copy() for k, v in batch.items()}
    padded["attention_mask"][2] = 0
    padded["input_ids"][2] = 0
    with_pad = forward(MEAN, params, padded)
    assert np.isfinite(with_pad).all()
    np.testing.assert_allclose(np.delete(with_pad, 2, axis=1), np.delete(got, 2, axis=1), atol=1e-6, rtol=0)


def test_executors_agree_with_mean_pooling(mean_model):
    params, batch = mean_model
    all_logits = inference.all_exits(MEAN, params, batch)
    seen = set()
    for k, criterion in enumerate(criteria_for(all_logits)):
        seen.update(
            assert_agree(MEAN, params, batch, criterion, all_logits=None if k % 4 == 0 else all_logits).tolist()
        )
    assert len(seen) >= 4
    # With a padding row (example_mask 0, no attended position) and the batched executor's buckets.
    padded = {k: v.copy() for k, v in batch.items()}
    padded["attention_mask"][5] = 0
    padded["example_mask"] = (np.arange(8) != 5).astype(np.int32)
    criterion = Criterion("entropy", thresholds_between(entropy(all_logits), [0.5])[0])
    got = assert_agree(MEAN, params, padded, criterion, buckets=(8, 4, 2, 1))
    assert got[5] == 0
    runner = inference.BatchedEarlyExit(MEAN, params, criterion)
    out = runner.run_dataset([padded, batch])
    assert np.isfinite(np.asarray(out["logits"])).all()


def _old_model_module():
    """rome_jax/model.py (now rome_jax/encoder/model.py) as committed before exit pooling existed, or None."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    try:
        source = subprocess.run(
            ["git", "show", "b2e6c68:rome_jax/model.py"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("_model_before_exit_pooling", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax modules are dataclasses: their module must be importable
    exec(compile(source, "model.py@b2e6c68", "exec"), module.__dict__)
    return module


def test_cls_is_the_default_and_bitwise_what_it_was():
    assert ModelConfig().exit_pooling == "cls" and EXIT_POOLINGS == ("cls", "mean", "token")
    old = _old_model_module()
    if old is None:
        pytest.skip("no git history to compare with")
    params = random_params(TINY)
    batch = tiny_batch()
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}
    new = jax.jit(lambda p, b: MultiExitEncoder(TINY).apply({"params": p}, **b)["logits"])(params, inputs)
    before = jax.jit(lambda p, b: old.MultiExitEncoder(TINY).apply({"params": p}, **b)["logits"])(params, inputs)
    np.testing.assert_array_equal(np.asarray(new), np.asarray(before))
    # The layer-at-a-time path too (the while-loop and batched executors').
    hidden = apply_embeddings(TINY, params, inputs)
    _, z_new = apply_layer_with_exit(TINY, layer_params(params, 1), hidden, inputs["attention_mask"])
    _, z_old = old.apply_layer_with_exit(TINY, layer_params(params, 1), hidden, inputs["attention_mask"])
    np.testing.assert_array_equal(np.asarray(z_new), np.asarray(z_old))


def test_a_train_step_runs_with_mean_pooling():
    from test_train_step import NO_DROPOUT, make_batch, run_steps

    from rome_jax.training import step as ts

    config = NO_DROPOUT.replace(exit_pooling="mean")
    params, state, metrics, losses = run_steps(ts.StepSettings(mode="romebert"), config=config, steps=3, lr=3e-3)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert -1 <= metrics["gr/cosine"] <= 1
    cls_losses = run_steps(ts.StepSettings(mode="romebert"), config=NO_DROPOUT, steps=1, lr=3e-3)[3]
    assert cls_losses[0] != losses[0]  # the same weights and batch, another pooling
    del params, state, make_batch


def test_save_and_load_keep_mean_pooling(tmp_path, caplog):
    import json

    from rome_jax.serving.api import MultiExitModel, load_pretrained

    config = TINY.replace(num_layers=3, exit_pooling="mean")
    params = random_params(config)
    with caplog.at_level(logging.WARNING, logger="rome_jax.serving.api"):
        MultiExitModel(config, params).save_pretrained(str(tmp_path / "mean"))
    warned = [r.getMessage() for r in caplog.records if "transformers" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and "[CLS]" in warned[0]
    written = json.loads((tmp_path / "mean" / "config.json").read_text())
    assert written["rome_jax_exit_pooling"] == "mean"
    loaded = load_pretrained(str(tmp_path / "mean"), with_tokenizer=False)
    assert loaded.config.exit_pooling == "mean"
    batch = tiny_batch(4)
    np.testing.assert_array_equal(np.asarray(loaded.exit_logits(batch)), forward(config, params, batch))
    # Overriding the recorded pooling of trained exits is allowed, with one warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rome_jax.serving.api"):
        assert (
            load_pretrained(str(tmp_path / "mean"), with_tokenizer=False, exit_pooling="cls").config.exit_pooling
            == "cls"
        )
    assert sum("saved with exit_pooling 'mean'" in r.getMessage() for r in caplog.records) == 1
    # "cls" writes config.json as before: no key, read back as "cls", no warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rome_jax.serving.api"):
        MultiExitModel(config.replace(exit_pooling="cls"), params).save_pretrained(str(tmp_path / "cls"))
    assert not caplog.records
    assert "rome_jax_exit_pooling" not in json.loads((tmp_path / "cls" / "config.json").read_text())
    assert load_pretrained(str(tmp_path / "cls"), with_tokenizer=False).config.exit_pooling == "cls"


def test_model_config_refuses_an_unknown_pooling(tmp_path):
    with pytest.raises(CheckpointError, match="exit_pooling must be one of cls, mean"):
        ModelConfig(exit_pooling="max")
    hf = TINY.to_hf_dict()
    assert ModelConfig.from_hf_dict(hf).exit_pooling == "cls"
    assert ModelConfig.from_hf_dict({**hf, "rome_jax_exit_pooling": "mean"}).exit_pooling == "mean"
    assert ModelConfig.from_hf_dict({**hf, "rome_jax_exit_pooling": "mean"}, exit_pooling="cls").exit_pooling == "cls"
    with pytest.raises(CheckpointError, match="exit_pooling"):
        ModelConfig.from_hf_dict({**hf, "rome_jax_exit_pooling": "max"})


def test_the_config_key_validates():
    from configs import default

    config = default.get_config()
    assert config.model.exit_pooling == "cls"
    assert run_config.ADDED_KEYS["model.exit_pooling"] == "cls"
    config.model.exit_pooling = "mean"
    assert run_config.KEYS["model.exit_pooling"]("mean") is None
    config.model.exit_pooling = "max"
    with pytest.raises(ConfigError, match="model.exit_pooling must be one of cls, mean"):
        run_config.validate(config)
    # A run written before the key read as having pooled [CLS].
    stored = default.get_config().to_dict()
    del stored["model"]["exit_pooling"]
    assert run_config.differences(stored, default.get_config().to_dict()) == []


def test_mean_pooling_flops_are_counted_and_match_xla():
    from test_flops import SMALL, _unrolled_forward, _xla_flops

    mean = SMALL.replace(exit_pooling="mean")
    T, H = 32, SMALL.hidden_size
    assert flops.exit_flops(SMALL) == flops.exit_flops(SMALL, T)  # "cls": no pooling cost
    assert flops.exit_flops(mean, T) - flops.exit_flops(SMALL, T) == 2 * T * H + T + H + 1
    with pytest.raises(ValueError, match="seq_len"):
        flops.exit_flops(mean)
    assert flops.full_flops(mean, T) - flops.full_flops(SMALL, T) == SMALL.num_layers * (2 * T * H + T + H + 1)
    params = jax.eval_shape(lambda: init_params(mean))
    ids = jax.ShapeDtypeStruct((3, T), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": ids, "token_type_ids": ids}
    lowered = jax.jit(_unrolled_forward(mean)).lower(params, batch)
    analytic = 3 * flops.full_flops(mean, T)
    assert abs(_xla_flops(lowered.cost_analysis()) / analytic - 1) < 0.01


def test_configs_take_mean_pooling_as_an_override():
    config = run_config.load(
        "configs/tiny.py:sst2,joint", {"model.exit_pooling": "mean", "model.name_or_path": "some/model"}
    )
    assert config.model.exit_pooling == "mean"
    run_config.validate(config)


def test_transformers_loads_a_mean_pooled_export_but_pools_cls(tmp_path):
    """What the export promises: transformers reads the directory (ignoring the key)
    and computes our [CLS]-pooled final exit from the same weights, not the mean-pooled one."""
    pytest.importorskip("torch")
    from transformers import BertForSequenceClassification

    from rome_jax.serving.api import MultiExitModel
    from tiny_hf import torch_logits

    config = TINY.replace(num_layers=3, exit_pooling="mean")
    params = random_params(config)
    MultiExitModel(config, params).save_pretrained(str(tmp_path))
    torch_model = BertForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    batch = tiny_batch(4)
    theirs = torch_logits(torch_model, batch)
    np.testing.assert_allclose(
        theirs, forward(config.replace(exit_pooling="cls"), params, batch)[-1], atol=1e-5, rtol=1e-5
    )
    assert np.abs(theirs - forward(config, params, batch)[-1]).max() > 1e-3


from test_trainer import OVERRIDES  # noqa: E402  (tiny_model: the fixture in conftest.py)


def test_a_run_with_mean_pooling_trains_and_exports_it(tmp_path, tiny_model, glue_dir):  # noqa: F811
    """train.py's path: the trainer loads the model with the run's pooling and the
    exported model records it."""
    import json
    from pathlib import Path

    from rome_jax.serving.api import load_pretrained
    from rome_jax.training import checkpoints, trainer

    repo = Path(__file__).resolve().parent.parent
    config = run_config.load(
        f"{repo}/configs/tiny.py:wnli",
        {"model.name_or_path": tiny_model, "data.dir": glue_dir, "model.exit_pooling": "mean", **OVERRIDES},
    )
    workdir = tmp_path / "run"
    result = trainer.train_and_evaluate(config, workdir, progress=False)
    assert result.step == 6
    assert json.loads((workdir / "config.json").read_text())["model"]["exit_pooling"] == "mean"
    assert json.loads((workdir / "model" / "config.json").read_text())["rome_jax_exit_pooling"] == "mean"
    model = load_pretrained(str(workdir / "model"), with_tokenizer=False)
    assert model.config.exit_pooling == "mean"
    _, params = checkpoints.load_params(str(workdir), "latest")
    batch = tiny_batch(4)
    batch = {k: np.minimum(v, 98) for k, v in batch.items()}
    np.testing.assert_allclose(np.asarray(model.exit_logits(batch)), forward(model.config, params, batch), atol=1e-6)
