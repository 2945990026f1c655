"""Length buckets in training: the train step compiles once per bucket met, not per step.

big_vision's `assert_max_traces` idea: count the traces of the train step's Python
function during a short in-process run (a tiny random BERT on 48 SST-2 rows, whose
lengths spread over the buckets 8, 16 and 32) and compare with the distinct batch
lengths each stage met.
"""

import collections
import logging
import pathlib

import pytest

from rome_jax.config import run_config
from rome_jax.data import BatchIterator
from rome_jax.errors import ConfigError
from rome_jax.training import preemption, trainer
from rome_jax.training import step as ts

pytestmark = pytest.mark.slow  # subprocess runs / long training: deselected by -m "not slow"

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_the_train_step_is_traced_once_per_bucket_and_stage(tiny_model, glue_dir, tmp_path, monkeypatch, caplog):
    traces = collections.Counter()  # (stage, length) -> traces of the train step
    real_step = ts.train_step

    def counted_step(state, batch, *, settings, **kwargs):
        traces[settings.stage, batch["input_ids"].shape[1]] += 1
        return real_step(state, batch, settings=settings, **kwargs)

    met = {}  # training iterator -> the lengths of the batches it gave, in order
    real_next = BatchIterator.__next__

    def recorded_next(self):
        batch = real_next(self)
        if self.shuffle:  # the training iterators (evaluation does not shuffle)
            met.setdefault(self, []).append(batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(ts, "train_step", counted_step)
    monkeypatch.setattr(BatchIterator, "__next__", recorded_next)
    config = run_config.load(
        f"{REPO}/configs/tiny.py:sst2,deebert",
        {
            "model.name_or_path": tiny_model,
            "data.dir": glue_dir,
            "data.buckets": "8,16",
            "train.max_steps": 10,
            "train.eval_every": 0,
            "train.checkpoint_every": 0,
            "train.log_every": 5,
        },
    )
    with caplog.at_level(logging.INFO, logger="rome_jax.training"):
        result = trainer.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert result.step == 20

    stages = list(met.values())  # stage 1's iterator, then stage 2's
    assert [len(lengths) for lengths in stages] == [10, 10]
    expected = collections.Counter(
        {(stage, length): 1 for stage, lengths in enumerate(stages, 1) for length in set(lengths)}
    )
    assert len(expected) >= 4  # several buckets met in each stage
    assert traces == expected  # once per bucket and stage, not once per step
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compiled the train step")]
    assert len(compiled) == len(expected)
    padding = [r.getMessage() for r in caplog.records if r.getMessage().startswith("padded token positions")]
    assert len(padding) == 1 and "with length buckets 8,16,32" in padding[0]


def test_data_buckets_config(glue_dir):
    def validate(spec, max_length=32):
        config = run_config.load(
            f"{REPO}/configs/tiny.py:sst2",
            {"model.name_or_path": "unused", "data.dir": glue_dir, "data.buckets": spec, "data.max_length": max_length},
        )
        run_config.validate(config)

    for spec in ("auto", "none", "8,16", "8, 16, 32"):
        validate(spec)
    with pytest.raises(ConfigError, match="^config data.buckets '8,64' has a length above data.max_length 32$"):
        validate("8,64")
    with pytest.raises(ConfigError, match="^config data.buckets must be auto, none or lengths"):
        validate("short")
    with pytest.raises(ConfigError, match="^config data.buckets"):
        validate(16)
    assert run_config.load(f"{REPO}/configs/default.py").data.buckets == "auto"
    # a run written before the key compares as "none": every batch padded to max_length
    assert run_config.ADDED_KEYS["data.buckets"] == "none"


def test_stopped_mid_epoch_then_resumed_with_several_buckets_gives_the_same_run(
    tiny_model, glue_dir, tmp_path, monkeypatch
):
    import jax
    import numpy as np

    from rome_jax.training import checkpoints

    config = run_config.load(
        f"{REPO}/configs/tiny.py:sst2",
        {
            "model.name_or_path": tiny_model,
            "data.dir": glue_dir,
            "data.buckets": "8,16",
            "train.max_steps": 8,
            "train.eval_every": 4,
            "train.checkpoint_every": 0,
            "train.log_every": 2,
        },
    )
    reference = tmp_path / "straight"
    trainer.train_and_evaluate(config, reference, progress=False)
    workdir = tmp_path / "stopped"
    monkeypatch.setattr(preemption.StopSignals, "should_stop", lambda self, step: step == 5)
    assert trainer.train_and_evaluate(config, workdir, progress=False).preempted
    monkeypatch.setattr(preemption.StopSignals, "should_stop", lambda self, step: False)
    assert trainer.train_and_evaluate(config, workdir, progress=False).step == 8
    assert (workdir / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    (_, got), (_, want) = (checkpoints.load_params(d, "latest") for d in (workdir, reference))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
