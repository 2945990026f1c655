"""Tagging tasks from the config: data.task=conll2003 and data.task=tagging (own files)."""

from __future__ import annotations

import json

import pytest

from configs import default
from rome_jax.config import run_config
from rome_jax.data.glue import get_task
from rome_jax.data.tagging_task import TaggingTask, load_tagged
from rome_jax.errors import ConfigError, DataError


def _config(**data):
    config = default.get_config()
    config.model.name_or_path = "unused"
    for key, value in data.items():
        section, _, name = key.partition("__")
        if name:
            config.data[section][name] = value
        else:
            config.data[key] = value
    return config


def test_conll2003_resolves_to_a_tagger(conll_dir):
    config = run_config.resolve(_config(task="CoNLL-2003", tagging__dir=conll_dir))
    run_config.validate(config)
    assert config.data.task == "conll2003" and config.model.exit_pooling == "token"
    task = get_task("conll2003")
    assert isinstance(task, TaggingTask) and task.num_labels == 9 and task.metric == "entity_f1"
    assert json.loads(config.data.tagging.tag_names)[:3] == ["O", "B-LOC", "I-LOC"]
    assert len(load_tagged(task, "dev")) == 3250


def test_own_tagged_files_in_json_lines(tmp_path):
    rows = [{"tokens": ["Ann", "met", "Bob"], "tags": ["B-PER", "O", "B-PER"]}, {"tokens": ["Rome"], "tags": ["B-LOC"]}]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = run_config.resolve(
        _config(
            task="tagging",
            tagging__train_file=str(tmp_path / "train.jsonl"),
            tagging__dev_file=str(tmp_path / "dev.jsonl"),
        )
    )
    run_config.validate(config)
    assert json.loads(config.data.tagging.tag_names) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    (tmp_path / "dev.jsonl").write_text(json.dumps({"tokens": ["x"], "tags": ["B-ORG"]}) + "\n")
    with pytest.raises(DataError, match=r"dev.jsonl, line 1: .*B-ORG"):
        load_tagged(get_task("tagging"), "dev")


def test_bad_tagging_configs_name_the_key(tmp_path, conll_dir):
    with pytest.raises(ConfigError, match="data.tagging.dir"):
        run_config.resolve(_config(task="conll2003", tagging__dir=str(tmp_path / "missing")))
    config = run_config.resolve(_config(task="conll2003", tagging__dir=conll_dir))
    config.unlock()
    config.model.exit_pooling = "mean"
    with pytest.raises(ConfigError, match="model.exit_pooling 'mean' does not fit the tagging task"):
        run_config.validate(config)
    plain = _config(task="rte", tagging__train_file="x.txt")
    plain.model.exit_pooling = "cls"
    with pytest.raises(ConfigError, match="data.tagging.train_file is for data.task 'tagging'"):
        run_config.validate(run_config.resolve(plain))
    token = _config(task="rte")
    token.model.exit_pooling = "token"
    with pytest.raises(ConfigError, match="'token' is for tagging tasks"):
        run_config.validate(run_config.resolve(token))
    with pytest.raises(ConfigError, match="tagging.train_file is empty"):
        run_config.resolve(_config(task="tagging"))
