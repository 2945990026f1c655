"""`trainer.train_and_evaluate` in process, as the Flax examples' train_test.py runs theirs.

A tiny random BERT (2 layers, hidden 32, the MiniLM tokenizer) on 48 WNLI rows:
6 steps, a train record every 2, dev evaluations (and checkpoints) at steps 3 and 6.
The subprocess tests (kill -9, SIGTERM, NaN, two stages) are in test_train_cli.py.
"""

import json
import logging
import math
import pathlib

import jax
import numpy as np
import pytest

from rome_jax.config import run_config
from rome_jax.training import best, checkpoints, metrics_log, preemption, resume, stages, trainer
from rome_jax.training import step as ts

REPO = pathlib.Path(__file__).resolve().parent.parent

OVERRIDES = {
    "train.max_steps": 6,
    "train.log_every": 2,
    "train.eval_every": 3,
    "train.checkpoint_every": 0,
    "train.keep_checkpoints": 2,
}


@pytest.fixture
def config(tiny_model, glue_dir):
    return run_config.load(
        f"{REPO}/configs/tiny.py:wnli", {"model.name_or_path": tiny_model, "data.dir": glue_dir, **OVERRIDES}
    )


@pytest.fixture
def steps_run(monkeypatch):
    """Counts the train steps the trainer runs (every call of a compiled step)."""
    count = [0]
    real_compile = ts.compile_train_step

    def compile_train_step(*args, **kwargs):
        step = real_compile(*args, **kwargs)

        def counted(state, batch):
            count[0] += 1
            return step(state, batch)

        return counted

    monkeypatch.setattr(ts, "compile_train_step", compile_train_step)
    return count


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model, glue_dir):
    """An uninterrupted run: (workdir, Result)."""
    config = run_config.load(
        f"{REPO}/configs/tiny.py:wnli", {"model.name_or_path": tiny_model, "data.dir": glue_dir, **OVERRIDES}
    )
    workdir = tmp_path_factory.mktemp("straight") / "run"
    return workdir, trainer.train_and_evaluate(config, workdir, progress=False)


def test_a_run_trains_evaluates_saves_and_exports(straight):
    workdir, result = straight
    assert result.step == 6 and not result.preempted
    lines = records(workdir)
    train = [r for r in lines if r["split"] == "train"]
    assert [(r["step"], r["stage"], r["epoch"]) for r in train] == [(2, 1, 0.1667), (4, 1, 0.3333), (6, 1, 0.5)]
    for r in train:
        for key in (
            "loss",
            "loss_A",
            "loss_B",
            "exit_loss/1",
            "exit_loss/2",
            "grad_norm",
            "update_norm",
            "param_norm",
            "learning_rate",
        ):
            assert math.isfinite(r[key]), (r["step"], key)
        assert "finite" not in r
    assert train[0]["loss"] != train[-1]["loss"]  # it trained
    assert train[0]["learning_rate"] == pytest.approx(1e-3 * (1 - 1 / 6))  # step 2's
    dev = [r for r in lines if r["split"] == "dev"]
    assert [r["step"] for r in dev] == [3, 6]
    for r in dev:
        assert r["num_examples"] == 20
        for i in (1, 2):
            assert 0 <= r[f"exit_{i}/accuracy"] <= 1 and math.isfinite(r[f"exit_{i}/loss"])
    assert result.final_eval == {"dev": dev[-1]}
    assert result.best["metric"] == "exit_2/accuracy" and result.best["step"] in (3, 6)

    store = checkpoints.Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        assert store.steps() == [3, 6]
        meta = store.restore_meta(6)
    finally:
        store.close()
    assert set(meta) == {
        "version",
        "step",
        "stage",
        "data",
        "metrics_bytes",
        "metrics_lines",
        "window",
        "best",
        "last_eval",
        "total_steps",
        "stage1_best",
    }
    assert meta["step"] == 6 and meta["stage"] == 1 and meta["total_steps"] == 6
    assert meta["metrics_bytes"] == (workdir / "metrics.jsonl").stat().st_size
    assert meta["metrics_lines"] == len(lines) and meta["window"] is None  # logged at step 6
    assert meta["best"] == result.best and meta["last_eval"] == result.final_eval
    assert (workdir / "model" / "rome_jax_exits.safetensors").is_file()


def test_rerunning_a_finished_run_runs_no_step(straight, config, steps_run, caplog):
    workdir, result = straight
    before = (workdir / "metrics.jsonl").read_bytes()
    with caplog.at_level(logging.INFO, logger="rome_jax.training"):
        again = trainer.train_and_evaluate(config, workdir, progress=False)
    assert steps_run[0] == 0
    assert "resuming from the checkpoint of step 6 (of 6)" in caplog.text
    assert (workdir / "metrics.jsonl").read_bytes() == before
    assert (again.step, again.best, again.final_eval) == (result.step, result.best, result.final_eval)


def test_stopped_by_a_signal_then_resumed_in_process_gives_the_same_run(
    straight, config, steps_run, tmp_path, monkeypatch
):
    reference, _ = straight
    workdir = tmp_path / "run"
    # A signal seen at step 5: mid logging window, after the evaluation of step 3.
    monkeypatch.setattr(preemption.StopSignals, "should_stop", lambda self, step: step == 5)
    stopped = trainer.train_and_evaluate(config, workdir, progress=False)
    assert stopped.step == 5 and stopped.preempted and steps_run[0] == 5
    assert not (workdir / "model").exists()
    store = checkpoints.Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        assert store.latest_step() == 5
        assert store.restore_meta(5)["window"]["count"] == 1  # step 5, not yet logged
    finally:
        store.close()

    monkeypatch.setattr(preemption.StopSignals, "should_stop", lambda self, step: False)
    resumed = trainer.train_and_evaluate(config, workdir, progress=False)
    assert resumed.step == 6 and not resumed.preempted
    assert steps_run[0] == 6  # only step 6 ran again
    assert (workdir / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    (_, got), (_, want) = (checkpoints.load_params(d, "latest") for d in (workdir, reference))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------- the pure pieces, no training


def stage(number, last_of_run):
    return stages.Stage(number, None, 0, 6, 6, last_of_run)


def evaluation(score):
    return {"dev": {"exit_2/accuracy": score}}


def test_best_checkpoint_rule():
    rule = lambda evals, score, step, st, n: best.update_best(
        evals, evaluation(score), step=step, stage=st, num_stages=n, split="dev", metric_key="exit_2/accuracy"
    )
    one = best.Evaluations()
    for step, score in ((2, 0.5), (4, 0.7), (6, 0.7)):
        one = rule(one, score, step, stage(1, True), 1)
    assert one.best == {"step": 6, "score": 0.7, "metric": "exit_2/accuracy", "split": "dev"}
    assert one.stage1_best is None and one.last == evaluation(0.7)
    # Two stages: stage 1 competes only for stage1_best (the first of equal scores).
    two = best.Evaluations()
    for step, score in ((2, 0.5), (4, 0.7), (6, 0.7)):
        two = rule(two, score, step, stage(1, False), 2)
    assert two.best is None and two.stage1_best == {"step": 4, "score": 0.7, "metric": "exit_2/accuracy"}
    two = rule(two, 0.1, 8, stage(2, True), 2)
    assert two.best["step"] == 8 and two.stage1_best["step"] == 4
    assert two.kept_steps(stage2_from_best=True) == [8, 4] and two.kept_steps(False) == [8]


def test_checkpoint_meta_keeps_its_layout():
    meta = {
        "version": 1,
        "step": 5,
        "stage": 2,
        "data": {"position": 5},
        "metrics_bytes": 10,
        "metrics_lines": 2,
        "window": {"count": 1, "sum": {"loss": 0.5}},
        "best": {"step": 4},
        "last_eval": {"dev": {}},
        "total_steps": 12,
        "stage1_best": None,
    }
    parsed = resume.CheckpointMeta.from_json(meta)
    assert parsed.to_json() == meta and list(parsed.to_json()) == list(meta)
    window = metrics_log.LogWindow.from_meta(parsed.window)
    assert (window.count, window.saved_sums, window.arrays) == (1, {"loss": 0.5}, None)
    assert metrics_log.LogWindow.from_meta(None) == metrics_log.LogWindow()
