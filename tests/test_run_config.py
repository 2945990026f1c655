"""Config files, validation, resolution and workdir comparison."""

import json
import os
import pathlib

import pytest

from rome_jax.config import run_config
from rome_jax.encoder.config import ModelConfig
from rome_jax.errors import ConfigError, DataError
from rome_jax.training.step import MODES

REPO = pathlib.Path(__file__).resolve().parent.parent


def load(spec, **overrides):
    return run_config.load(str(REPO / spec), {k.replace("__", "."): v for k, v in overrides.items()})


def valid(config):
    """A default config made loadable here: a model name and an existing data dir."""
    config.model.name_or_path = "some/model"
    config.data.dir = str(REPO)
    return config


def test_default_config_has_every_key_and_the_reference_values():
    config = load("configs/default.py")
    assert set(run_config.flatten(config)) == set(run_config.KEYS)
    t = config.train
    assert (config.data.max_length, t.batch_size, t.learning_rate, t.num_epochs, t.seed) == (128, 8, 2e-5, 3, 42)
    assert (t.warmup_ratio, t.weight_decay, t.adam_eps, t.clip_norm, t.adam_bias_correction) == (
        0.0,
        0.0,
        1e-8,
        1.0,
        True,
    )
    assert (t.mode, t.gamma, t.temperature, t.kl_reduction, t.anchor) == ("romebert", 0.9, 3.0, "reference", "auto")
    run_config.validate(valid(config))


@pytest.mark.parametrize(
    "spec", ["configs/glue.py:rte", "configs/glue.py:SST-2,deebert", "configs/tiny.py", "configs/tiny.py:rte"]
)
def test_config_files_load_and_validate(spec):
    config = load(spec)
    assert set(run_config.flatten(config)) == set(run_config.KEYS)
    run_config.validate(valid(config))


def test_glue_config_takes_task_and_mode():
    config = load("configs/glue.py:SST-2,deebert")
    assert (config.data.task, config.train.mode) == ("sst2", "deebert")
    with pytest.raises(DataError, match="unknown GLUE task 'nosuch'"):
        load("configs/glue.py:nosuch")
    with pytest.raises(ConfigError, match="needs a task"):
        load("configs/glue.py")


def test_glue_config_follows_each_methods_code():
    """DeeBERT's stage 2 backpropagates into the frozen backbone (its gradient counts in
    the clip norm); FastBERT's runs the backbone under torch.no_grad(), clips nothing,
    warms up 10% and uses AdamW(correct_bias=False, eps=1e-6) (run_fastbert.py,
    uer/utils/optimizers.py); PABEE trains 5 epochs at batch 32 (finetune_bert.sh)."""
    assert load("configs/glue.py:rte,deebert").train.stage2_clip == "reference"
    assert load("configs/glue.py:rte,deebert_sd").train.stage2_clip == "reference"
    fastbert = load("configs/glue.py:rte,fastbert").train
    assert (fastbert.stage2_clip, fastbert.temperature, fastbert.kl_reduction) == ("trainable", 1.0, "batchmean")
    assert (
        fastbert.clip_norm,
        fastbert.warmup_ratio,
        fastbert.adam_eps,
        fastbert.adam_bias_correction,
        fastbert.batch_size,
        fastbert.num_epochs,
    ) == (0.0, 0.1, 1e-6, False, 8, 3)
    assert (fastbert.stage2_start, fastbert.stage2_lr_scale, fastbert.stage2_epochs) == ("best", 10.0, 0)
    run_config.validate(valid(load("configs/glue.py:rte,fastbert")))
    for mode in ("deebert", "deebert_sd"):  # DeeBERT's stage 2 goes on from stage 1's end
        deebert = load(f"configs/glue.py:rte,{mode}").train
        assert (deebert.stage2_start, deebert.stage2_lr_scale) == ("last", 1.0)
    pabee = load("configs/glue.py:rte,pabee").train
    assert (pabee.batch_size, pabee.num_epochs, pabee.learning_rate, pabee.clip_norm) == (32, 5, 2e-5, 1.0)
    run_config.validate(valid(load("configs/glue.py:rte,pabee")))
    romebert = load("configs/glue.py:rte").train
    assert (romebert.batch_size, romebert.num_epochs, romebert.adam_bias_correction) == (8, 3, True)


def test_a_stored_config_without_a_later_key_reads_as_its_old_behaviour():
    current = run_config.flatten(load("configs/default.py"))
    later = ("train.adam_bias_correction", "train.stage2_lr_scale", "train.stage2_start")
    stored = {k: v for k, v in current.items() if k not in later}
    assert run_config.differences(stored, current) == []
    current["train.adam_bias_correction"] = False
    current["train.stage2_start"] = "best"
    assert run_config.differences(stored, current) == [
        "train.adam_bias_correction: True -> False",
        "train.stage2_start: 'last' -> 'best'",
    ]


def test_demo_config_uses_the_real_model(minilm_path, glue_dir):
    config = load("configs/demo.py")
    assert config.model.name_or_path == minilm_path
    assert (config.data.task, config.train.mode) == ("sst2", "romebert")
    run_config.validate(config)


def test_overrides_are_typed_and_unknown_keys_named():
    config = load("configs/default.py", train__learning_rate=3e-5, train__mode="sd")
    assert (config.train.learning_rate, config.train.mode) == (3e-5, "sd")
    with pytest.raises(
        ConfigError,
        match=r"unknown config key train.lerning_rate \(did you mean "
        r"train.learning_rate\?\)",
    ):
        load("configs/default.py", train__lerning_rate=3e-5)
    with pytest.raises(ConfigError, match="train.batch_size"):
        load("configs/default.py", train__batch_size="eight")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("train.learning_rate", -1.0, "config train.learning_rate must be > 0"),
        ("train.mode", "fast", "config train.mode must be one of " + ", ".join(MODES)),
        ("train.anchor", "C", "config train.anchor must be one of auto, A, B"),
        ("data.task", "nosuch", "config data.task unknown GLUE task 'nosuch'"),
        ("data.task", "ax", "config data.task task ax has no training split"),
        ("train.batch_size", 0, "config train.batch_size must be > 0"),
        ("train.warmup_ratio", 1.0, r"config train.warmup_ratio must be in \[0.0, 1.0\)"),
        ("train.gamma", 1.5, "config train.gamma must be in"),
        ("data.source", "web", "config data.source must be one of dir, hf, tfds"),
        ("model.name_or_path", "", "config model.name_or_path must not be empty"),
        ("train.kl_reduction", "sum", "config train.kl_reduction must be one of reference, batchmean"),
        ("data.max_length", 2, "config data.max_length must be >= 3"),
        ("model.attention", "flash", "config model.attention must be one of xla, cudnn"),
        ("model.attention", "cudnn", "config model.attention 'cudnn' needs model.dtype bfloat16"),
        ("train.stage2_start", "first", "config train.stage2_start must be one of last, best"),
        ("train.stage2_lr_scale", 0.0, "config train.stage2_lr_scale must be > 0"),
        (
            "train.stage2_start",
            "best",
            "config train.stage2_start is for the two-stage modes "
            r"\(deebert, deebert_sd, fastbert\), not 'romebert'",
        ),
        ("train.stage2_lr_scale", 10.0, "config train.stage2_lr_scale is for the two-stage modes"),
    ],
)
def test_impossible_values_name_the_key(key, value, message):
    config = valid(load("configs/default.py"))
    section, name = key.split(".")
    with config.unlocked():
        config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        run_config.validate(config)


def test_batch_must_split_over_devices_and_micro_batches():
    config = valid(load("configs/default.py", train__batch_size=12, train__grad_accum_steps=2))
    run_config.validate(config, num_devices=2)
    config.train.eval_batch_size = 60
    run_config.validate(config, num_devices=6)
    with pytest.raises(
        ConfigError,
        match=r"train.batch_size 12 must be a multiple of the device "
        r"count \(4\) x train.grad_accum_steps \(2\)",
    ):
        run_config.validate(config, num_devices=4)
    with pytest.raises(
        ConfigError,
        match=r"train.eval_batch_size 60 is not divisible by the device "
        r"count \(8\)",
    ):
        run_config.validate(
            load("configs/default.py", train__eval_batch_size=60, model__name_or_path="m", data__dir=str(REPO)),
            num_devices=8,
        )
    config.train.grad_accum_steps = 5
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum_steps 5"):
        run_config.validate(config)


def test_unknown_key_in_a_config_file_is_named():
    config = valid(load("configs/default.py"))
    with config.unlocked():
        config.train.lr = 1.0
    with pytest.raises(ConfigError, match="unknown config key train.lr"):
        run_config.validate(config)


def test_missing_data_dir_is_named(tmp_path):
    config = valid(load("configs/default.py"))
    config.data.dir = str(tmp_path / "nope")
    with pytest.raises(DataError, match=f"GLUE data directory {tmp_path / 'nope'} does not exist"):
        run_config.validate(config)


def test_max_length_must_fit_the_model():
    config = valid(load("configs/default.py", data__max_length=600))
    with pytest.raises(ConfigError, match="data.max_length 600 exceeds the model's 512 positions"):
        run_config.check_model_fit(config, ModelConfig())
    roberta = ModelConfig(family="roberta", max_position_embeddings=514, pad_token_id=1)
    config.data.max_length = 512
    run_config.check_model_fit(config, roberta)
    config.data.max_length = 513
    with pytest.raises(ConfigError, match="512 positions"):
        run_config.check_model_fit(config, roberta)


def test_resolve_makes_auto_values_explicit():
    config = valid(load("configs/glue.py:rte"))
    resolved = run_config.resolve(config)
    assert (resolved.train.anchor, resolved.train.stage2_epochs) == ("B", 3)
    assert config.train.anchor == "auto"  # a copy
    for task in ("mnli", "QQP"):
        assert run_config.resolve(load(f"configs/glue.py:{task}")).train.anchor == "A"
    config.train.anchor = "A"
    config.data.task = "SST-2"
    config.train.stage2_epochs = 1
    resolved = run_config.resolve(config)
    assert (resolved.train.anchor, resolved.train.stage2_epochs, resolved.data.task) == ("A", 1, "sst2")
    config.data.dir = ""
    assert run_config.resolve(config).data.source == "hf"  # an empty directory means the hub


def test_differences_ignore_run_only_keys_and_survive_json():
    config = run_config.resolve(valid(load("configs/default.py")))
    stored = json.loads(run_config.to_json(config))
    other = run_config.from_dict(stored)
    assert run_config.differences(stored, other.to_dict()) == []
    with other.unlocked():
        other.train.checkpoint_every = 7
        other.train.debug_nan_at_step = 3
        other.train.learning_rate = 3e-5
    assert run_config.differences(stored, other.to_dict()) == ["train.learning_rate: 2e-05 -> 3e-05"]


def test_read_workdir_config(tmp_path):
    with pytest.raises(ConfigError, match="config.json does not exist"):
        run_config.read_workdir_config(tmp_path)
    config = run_config.resolve(valid(load("configs/default.py")))
    (tmp_path / "config.json").write_text(run_config.to_json(config))
    assert run_config.read_workdir_config(tmp_path).to_dict() == config.to_dict()
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        run_config.read_workdir_config(tmp_path)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file .*nope.py does not exist"):
        run_config.load(os.path.join(str(REPO), "configs", "nope.py"))


def test_parse_task_mode_is_the_one_reader_of_task_mode_arguments():
    parse = run_config.parse_task_mode
    assert parse("SST-2", "configs/x.py") == ("sst2", None)
    assert parse(" rte , deebert ", "configs/x.py") == ("rte", "deebert")
    assert parse(None, "configs/x.py", default_task="wnli") == ("wnli", None)
    with pytest.raises(
        ConfigError,
        match=r"^configs/x.py needs a task: --config=configs/x.py:rte "
        r"\(or configs/x.py:rte,deebert\)$",
    ):
        parse("", "configs/x.py")
    with pytest.raises(ConfigError, match=r"^configs/x.py takes TASK\[,MODE\], got 'rte,sd,x'$"):
        parse("rte,sd,x", "configs/x.py")
    with pytest.raises(DataError, match="unknown GLUE task 'nosuch'"):
        parse("nosuch,sd", "configs/x.py")
    spec = run_config.task_mode_spec("configs/x.py", "rte", "sd")
    assert spec == "configs/x.py:rte,sd" and run_config.task_mode_spec("c.py", "rte") == "c.py:rte"
    assert parse(spec.partition(":")[2], "configs/x.py") == ("rte", "sd")
    for name in ("glue", "tiny"):  # every config file taking TASK[,MODE] reads it this way
        with pytest.raises(ConfigError, match=f"configs/{name}.py takes TASK"):
            load(f"configs/{name}.py:rte,sd,x")


def test_allowed_values_come_from_the_modules_that_use_them():
    from rome_jax import data
    from rome_jax.encoder.config import DTYPES
    from rome_jax.training import losses, projection
    from rome_jax.training import step as train_step

    check = lambda key, value: run_config.KEYS[key](value)
    for key, known in [
        ("model.dtype", DTYPES),
        ("data.source", data.SOURCES),
        ("train.mode", train_step.MODES),
        ("train.kl_reduction", losses.REDUCTIONS),
        ("train.anchor", ("auto", *projection.ANCHORS)),
        ("train.gr_scope", train_step.GR_SCOPES),
        ("train.gr_granularity", projection.GRANULARITIES),
        ("train.stage2_clip", train_step.STAGE2_CLIPS),
        ("train.stage2_start", run_config.STAGE2_STARTS),
    ]:
        assert all(check(key, v) is None for v in known), key
        assert check(key, "nosuch") == f"must be one of {', '.join(known)}; got 'nosuch'", key
