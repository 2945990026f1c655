"""train.py end to end on a tiny random BERT: resume after kill -9 and SIGTERM, NaN, errors.

Every run is a real `python train.py` subprocess. They share a persistent JAX
compilation cache, so only the first run of each mode compiles.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tiny_hf
from rome_jax.training import checkpoints
from rome_jax.training.step import MODES

pytestmark = pytest.mark.slow  # subprocess runs / long training: deselected by -m "not slow"

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = "configs/tiny.py:wnli"


@pytest.fixture(scope="module")
def env(tmp_path_factory, glue_dir):
    cache = tmp_path_factory.mktemp("jax_cache")
    return {
        **os.environ,
        "GLUE_DIR": glue_dir,
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "PYTHONPATH": str(REPO),
    }


def command(workdir, *overrides, config=TINY, model=None, extra=()):
    args = [sys.executable, str(REPO / "train.py"), f"--config={config}", f"--workdir={workdir}"]
    if model:
        args.append(f"--config.model.name_or_path={model}")
    args += [f"--config.{o}" for o in overrides]
    return args + list(extra)


def train(env, workdir, *overrides, model=None, config=TINY, extra=(), expect=0):
    proc = subprocess.run(
        command(workdir, *overrides, config=config, model=model, extra=extra),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def start(env, workdir, *overrides, model=None):
    return subprocess.Popen(
        command(workdir, *overrides, model=model),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def metric_lines(workdir):
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def wait_for_lines(proc, workdir, count, timeout=300):
    deadline = time.time() + timeout
    while len(metric_lines(workdir)) < count:
        assert proc.poll() is None, f"finished before {count} metrics lines: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "timed out waiting for metrics"
        time.sleep(0.005)


def final_params(workdir):
    return checkpoints.load_params(workdir, "latest")


def assert_resumed(proc, step, total):
    """The re-run started from checkpoint `step`, not from scratch (which would end the same)."""
    assert f"resuming from the checkpoint of step {step} (of {total})" in proc.stderr, proc.stderr[-2000:]


def assert_same_run(workdir, reference):
    step, params = final_params(workdir)
    ref_step, ref_params = final_params(reference)
    assert step == ref_step
    leaves = lambda tree: [np.asarray(x) for x in __import__("jax").tree.leaves(tree)]
    for got, want in zip(leaves(params), leaves(ref_params), strict=True):
        np.testing.assert_array_equal(got, want)
    assert metric_lines(workdir) == metric_lines(reference)
    for name in ("model.safetensors", "rome_jax_exits.safetensors"):
        assert (pathlib.Path(workdir) / "model" / name).read_bytes() == (
            pathlib.Path(reference) / "model" / name
        ).read_bytes()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, env, tiny_model):
    """The uninterrupted reference run: 12 steps, logs every 3, evaluations at 6 and 12,
    checkpoints every 2 (so most hold a partly summed logging window)."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    train(env, workdir, model=tiny_model)
    return workdir


def test_workdir_layout_and_metrics(straight, tiny_model):
    names = sorted(p.name for p in straight.iterdir())
    assert names == ["checkpoints", "config.json", "metrics.jsonl", "model", "tensorboard", "tokenizer"]
    config = json.loads((straight / "config.json").read_text())
    assert config["train"]["anchor"] == "B" and config["model"]["name_or_path"] == tiny_model
    records = [json.loads(line) for line in metric_lines(straight)]
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [3, 6, 9, 12]
    for key in (
        "loss",
        "loss_A",
        "loss_B",
        "exit_loss/1",
        "exit_loss/2",
        "gr/cosine",
        "grad_norm",
        "learning_rate",
        "param_norm",
    ):
        assert all(np.isfinite(r[key]) for r in train_records), key
    assert train_records[0]["learning_rate"] == pytest.approx(1e-3 * (1 - 2 / 12))  # step 3's
    evals = [r for r in records if r["split"] == "dev"]
    assert [r["step"] for r in evals] == [6, 12]
    assert all(r["num_examples"] == 20 and 0 <= r["exit_2/accuracy"] <= 1 and "exit_1/loss" in r for r in evals)
    store = checkpoints.Checkpoints(straight / "checkpoints")
    best = store.restore_meta(12)["best"]
    assert best["step"] in (6, 12) and best["metric"] == "exit_2/accuracy"
    assert store.steps() == sorted({10, 12, best["step"]})  # the latest 2 and the best
    store.close()
    assert list((straight / "tensorboard").glob("events.out.tfevents.*"))
    assert (straight / "tokenizer" / "tokenizer.json").is_file()
    # The exported model is the final state, every exit included.
    import rome_jax

    model = rome_jax.load_pretrained(str(straight / "model"))
    _, params = final_params(straight)
    batch = tiny_hf.random_batch(vocab=30522)
    np.testing.assert_allclose(
        np.asarray(model.exit_logits(batch)),
        np.asarray(rome_jax.MultiExitModel(model.config, params).exit_logits(batch)),
        rtol=0,
        atol=0,
    )


def test_rerunning_a_finished_run_changes_nothing(straight, env, tiny_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(straight, copy)
    before = metric_lines(copy)
    train(env, copy, model=tiny_model)
    assert metric_lines(copy) == before
    assert_same_run(copy, straight)


def test_kill_9_at_any_moment_then_rerun_gives_the_same_run(straight, env, tiny_model, tmp_path):
    workdir = tmp_path / "killed"
    proc = start(env, workdir, model=tiny_model)
    wait_for_lines(proc, workdir, 3)  # the evaluation of step 6 written
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (workdir / "model").exists()
    killed_at = checkpoints.Checkpoints(workdir / "checkpoints").latest_step()
    assert 4 <= killed_at < 12  # checkpoints every 2 steps; step 6 evaluated
    assert_resumed(train(env, workdir, model=tiny_model), killed_at, 12)
    assert_same_run(workdir, straight)


def test_sigterm_saves_and_exits_then_rerun_completes(straight, env, tiny_model, tmp_path):
    workdir = tmp_path / "preempted"
    proc = start(env, workdir, model=tiny_model)
    wait_for_lines(proc, workdir, 1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-2000:]
    assert "Traceback" not in stderr
    stopped_at = checkpoints.Checkpoints(workdir / "checkpoints").latest_step()
    assert 3 <= stopped_at < 12
    assert_resumed(train(env, workdir, model=tiny_model), stopped_at, 12)
    assert_same_run(workdir, straight)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(straight, env, tiny_model, tmp_path):
    workdir = tmp_path / "nan"
    proc = train(env, workdir, "train.debug_nan_at_step=5", model=tiny_model, expect=3)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        f"train.py: error: the loss is not finite (NaN or infinity) at step 5: "
        f"training stopped; the last good checkpoint is step 4 in "
        f"{workdir / 'checkpoints'}; try a lower train.learning_rate "
        f"(in another --workdir, or with --overwrite)"
    )
    assert "Traceback" not in proc.stderr
    assert checkpoints.Checkpoints(workdir / "checkpoints").latest_step() == 4
    assert [json.loads(line)["step"] for line in metric_lines(workdir)] == [3]
    # The hook is a run-only key: the same workdir resumes from step 4 without it.
    assert_resumed(train(env, workdir, model=tiny_model), 4, 12)
    assert_same_run(workdir, straight)


def test_deebert_two_stages_resume_across_the_boundary(env, tiny_model, tmp_path):
    overrides = ("train.mode=deebert", "train.max_steps=6", "train.eval_every=0")
    reference = tmp_path / "straight"
    train(env, reference, *overrides, model=tiny_model)
    records = [json.loads(line) for line in metric_lines(reference)]
    assert [(r["step"], r["stage"]) for r in records if r["split"] == "train"] == [(3, 1), (6, 1), (9, 2), (12, 2)]
    assert [(r["step"], r["stage"]) for r in records if r["split"] == "dev"] == [(6, 1), (12, 2)]
    stage2 = [r for r in records if r["split"] == "train" and r["stage"] == 2]
    assert stage2[0]["learning_rate"] == pytest.approx(1e-3 * (1 - 2 / 6))  # a fresh schedule
    workdir = tmp_path / "killed"
    proc = start(env, workdir, *overrides, model=tiny_model)
    wait_for_lines(proc, workdir, 4)  # stage 2 under way (step 9 logged)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = checkpoints.Checkpoints(workdir / "checkpoints").latest_step()
    assert 6 <= killed_at < 12  # stage 1 ended (and saved) at step 6
    assert_resumed(train(env, workdir, *overrides, model=tiny_model), killed_at, 12)
    assert_same_run(workdir, reference)


def test_stage_2_from_stage_1s_best_evaluation_at_a_scaled_rate(env, tiny_model, tmp_path, monkeypatch):
    """FastBERT's stage 2: from the best stage-1 checkpoint (the first of equal scores), at
    10x the rate. In process, with the final exit's stage-1 dev scores scripted."""
    import jax

    from rome_jax.config import run_config
    from rome_jax.training import evaluate as training_evaluate
    from rome_jax.training import step as ts
    from rome_jax.training import trainer

    scripted = iter([0.6, 0.9, 0.9])  # stage 1's evaluations at steps 2, 4, 6: step 4 wins
    real_metrics = training_evaluate.exit_metrics

    def exit_metrics(task, logits, labels, mask):
        record = real_metrics(task, logits, labels, mask)
        score = next(scripted, None)
        if score is not None:
            record[f"exit_{logits.shape[0]}/accuracy"] = score
        return record

    starts = []  # the parameters each stage's fresh state starts from
    real_create = ts.create_train_state

    def create_train_state(params, tx, seed):
        if not isinstance(jax.tree.leaves(params)[0], jax.core.Tracer):  # not the eval_shape
            starts.append(jax.device_get(params))
        return real_create(params, tx, seed)

    monkeypatch.setattr(training_evaluate, "exit_metrics", exit_metrics)
    monkeypatch.setattr(ts, "create_train_state", create_train_state)
    config = run_config.load(
        f"{REPO}/configs/tiny.py:wnli,fastbert",
        {
            "model.name_or_path": tiny_model,
            "data.dir": env["GLUE_DIR"],
            "train.max_steps": 6,
            "train.eval_every": 2,
            "train.keep_checkpoints": 20,
            "train.stage2_start": "best",
            "train.stage2_lr_scale": 10.0,
        },
    )
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(config, workdir, progress=False)

    assert len(starts) == 2
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
    best, last = (leaves(checkpoints.load_params(workdir, step)[1]) for step in (4, 6))
    for got, want in zip(leaves(starts[1]), best, strict=True):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(a, b) for a, b in zip(best, last))  # not stage 1's last step
    records = [json.loads(line) for line in metric_lines(workdir)]
    stage2 = [r for r in records if r["split"] == "train" and r["stage"] == 2]
    assert stage2[0]["step"] == 9
    assert stage2[0]["learning_rate"] == pytest.approx(1e-2 * (1 - 2 / 6))

    # Killed after stage 1's last checkpoint: the re-run starts stage 2 from step 4 again
    # (read from that checkpoint's metadata) and ends with the same parameters.
    _, final = final_params(workdir)
    for step in checkpoints.Checkpoints(workdir / "checkpoints").steps():
        if step > 6:
            shutil.rmtree(workdir / "checkpoints" / str(step))
    starts.clear()
    trainer.train_and_evaluate(config, workdir, progress=False)
    for got, want in zip(leaves(starts[0]), best, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(leaves(final_params(workdir)[1]), leaves(final), strict=True):
        np.testing.assert_array_equal(got, want)


def error_of(env, workdir, *overrides, model=None, config=TINY, extra=()):
    proc = train(env, workdir, *overrides, model=model, config=config, extra=extra, expect=2)
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("train.py: error: ")
    return lines[0].removeprefix("train.py: error: ")


def test_errors_are_one_line(env, tiny_model, tmp_path, straight):
    run = lambda *o, **kw: error_of(env, tmp_path / "w", *o, model=tiny_model, **kw)
    assert run("data.dir=/no/such/glue") == (
        "GLUE data directory /no/such/glue does not exist (config data.dir; an empty string reads the Hugging Face hub)"
    )
    assert run("data.task=nosuch").startswith("config data.task unknown GLUE task 'nosuch' (known: ")
    assert run("train.lerning_rate=3e-5") == (
        "unknown config key train.lerning_rate in --config.train.lerning_rate=3e-5 (did you mean train.learning_rate?)"
    )
    assert run("train.learning_rate=-1") == "config train.learning_rate must be > 0, got -1.0"
    assert run("train.batch_size=x") == ("--config.train.batch_size=x: invalid literal for int() with base 10: 'x'")
    assert run(config="configs/nope.py") == "--config=configs/nope.py: no such config file"
    assert run(config="configs/glue.py:rte,fast") == (
        f"config train.mode must be one of {', '.join(MODES)}; got 'fast'"
    )
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_model, no_weights)
    (no_weights / "model.safetensors").unlink()
    message = error_of(env, tmp_path / "w2", model=str(no_weights))
    assert str(no_weights) in message and "model.safetensors" in message
    # A workdir holding another run's config and its metrics.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(straight / "config.json", other / "config.json")
    shutil.copy(straight / "metrics.jsonl", other / "metrics.jsonl")
    message = error_of(env, other, "train.learning_rate=3e-5", model=tiny_model)
    assert message == (
        f"workdir {other} holds a run with a different config (train.learning_rate: "
        "0.001 -> 3e-05); use another --workdir, or --overwrite to delete that run"
    )
    assert (other / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    # A start that fails on its model or data leaves no trace, so it blocks nothing.
    failed = tmp_path / "failed"
    assert "/no/such/model" in error_of(env, failed, model="/no/such/model")
    assert not failed.exists()
    # A run that wrote its config but saved nothing (it died before its first checkpoint)
    # does not block a run with another config; a failed start still changes nothing.
    failed.mkdir()
    shutil.copy(straight / "config.json", failed / "config.json")
    lines = train(env, failed, model="/no/such/other", expect=2).stderr.strip().splitlines()
    assert lines[-1] == "train.py: error: /no/such/other: no such model directory"
    assert (failed / "config.json").read_bytes() == (straight / "config.json").read_bytes()
    proc = train(env, failed, "train.max_steps=2", model=tiny_model)
    assert f"workdir {failed}: replacing the config of a run that saved nothing" in proc.stderr
    assert json.loads((failed / "config.json").read_text())["train"]["max_steps"] == 2


def test_verbose_shows_the_traceback(env, tiny_model, tmp_path):
    proc = train(env, tmp_path / "w", "data.dir=/no/such/glue", model=tiny_model, extra=["--verbose"], expect=2)
    assert "Traceback" in proc.stderr and proc.stderr.strip().endswith("the Hugging Face hub)")


def test_overwrite_starts_afresh(straight, env, tiny_model, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(straight, workdir)
    (workdir / "notes.txt").write_text("mine")
    (workdir / "eval").mkdir()
    (workdir / "eval" / "results.json").write_text("{}")  # eval.py's output for the old run
    (workdir / "calibration.json").write_text("{}")  # eval.py --calibrate's, for the old model
    train(
        env,
        workdir,
        "train.max_steps=4",
        "train.eval_every=2",
        "train.log_every=1",
        model=tiny_model,
        extra=["--overwrite"],
    )
    assert [json.loads(line)["step"] for line in metric_lines(workdir)] == [1, 2, 2, 3, 4, 4]
    assert (workdir / "notes.txt").read_text() == "mine"  # not ours: kept
    assert not (workdir / "eval").exists()
    assert not (workdir / "calibration.json").exists()


def test_demo_config_short_schedule(env, tmp_path, minilm_path, glue_dir):
    """The real MiniLM on SST-2, shortened as CI runs it."""
    workdir = tmp_path / "demo"
    proc = train(
        env,
        workdir,
        "train.max_steps=12",
        "data.train_max_examples=512",
        "data.eval_max_examples=128",
        "train.log_every=4",
        config="configs/demo.py",
    )
    records = [json.loads(line) for line in metric_lines(workdir)]
    assert [r["step"] for r in records if r["split"] == "train"] == [4, 8, 12]
    (final,) = [r for r in records if r["split"] == "dev"]
    assert final["num_examples"] == 128
    assert all(f"exit_{i}/accuracy" in final for i in range(1, 7))
    assert "exit_6 accuracy=" in proc.stdout
    assert (workdir / "model" / "rome_jax_exits.safetensors").is_file()


# ------------------------------------------------------------------------ eval.py


def run_eval(env, *args, expect=0):
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def test_eval_reports_on_the_best_checkpoint_in_a_fresh_process(straight, env, tmp_path):
    out = tmp_path / "eval"
    proc = run_eval(
        env,
        f"--workdir={straight}",
        f"--output_dir={out}",
        "--batch1_examples=4",
        "--batched_examples=12",
        "--batch_size=8",
        "--sweeps=entropy:0.3,0.69;patience:1",
    )
    meta = checkpoints.Checkpoints(straight / "checkpoints", read_only=True)
    best = meta.restore_meta(meta.steps()[-1])["best"]["step"]
    meta.close()
    assert f"step {best} on wnli" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "wnli" and results["split"] == "dev" and results["metric"] == "accuracy"
    assert [r["exit"] for r in results["per_exit"]] == [1, 2]
    assert results["num_examples"] == 71  # the whole dev set, not the training run's slice
    keys = {
        "criterion",
        "threshold",
        "accuracy",
        "mean_layers",
        "layer_speedup",
        "flops_speedup",
        "wall_s_batch1",
        "wall_s_batched",
    }
    assert len(results["sweep"]) == 3 and all(keys <= set(r) for r in results["sweep"])
    assert results["full_depth"]["wall_s_batch1"] > 0 and results["executors_agree"] is True
    # the final exit of the best checkpoint, recomputed here, gives the reported accuracy
    step, params = checkpoints.load_params(straight, "best")
    assert step == best
    for name in ("results.csv", "per_exit.csv", "per_exit.png", "tradeoff.png"):
        assert (out / name).stat().st_size > 0
    assert "exit  accuracy" in proc.stdout and "criterion" in proc.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        ((), "give either --workdir"),
        (("--workdir=/nonexistent/run",), "/nonexistent/run/config.json does not exist"),
        (("--model=/nonexistent/model", "--task=rte"), "no such model directory"),
        (("--workdir=X", "--model=Y"), "give either --workdir"),
    ],
)
def test_eval_errors_are_one_line(env, args, message):
    proc = run_eval(env, *args, expect=2)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_eval_refuses_what_does_not_fit_in_one_line(straight, env, tmp_path):
    def error(*args):
        proc = run_eval(env, *args, "--no_timing", expect=2)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        return proc.stderr.strip().removeprefix("eval.py: error: ")

    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    assert error(f"--workdir={workdir}", "--checkpoint=foo") == ("checkpoint 'foo': give best, latest or a step number")
    assert error(f"--workdir={workdir}", "--sweeps=entropy:abc") == (
        "--sweeps 'entropy:abc': thresholds must be numbers, e.g. entropy:0.1,0.2"
    )
    positions = json.loads((workdir / "model" / "config.json").read_text())["max_position_embeddings"]
    assert error(f"--workdir={workdir}", f"--max_length={positions + 1}") == (
        f"--max_length {positions + 1} exceeds the model's {positions} positions ({workdir} step 12)"
    )
    # the model's config no longer describes the checkpoint: one more layer
    model_json = workdir / "model" / "config.json"
    model_config = json.loads(model_json.read_text())
    model_json.write_text(json.dumps({**model_config, "num_hidden_layers": model_config["num_hidden_layers"] + 1}))
    message = error(f"--workdir={workdir}", "--checkpoint=latest")
    assert (
        message.startswith(
            f"checkpoint {workdir / 'checkpoints' / '12'} does not fit the model of {model_json} (2 labels): "
        )
        and "has shape (2," in message
    ), message
    # a run that saved no checkpoint
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(straight / "config.json", empty / "config.json")
    assert error(f"--workdir={empty}") == f"workdir {empty} holds no checkpoints (the run saved none)"


def test_fastbert_stage_2_trains_on_an_unlabeled_text_file(env, tiny_model, tmp_path):
    text = tmp_path / "unlabeled.txt"
    text.write_text("".join(f"Some sentence {i}.\tAnd its pair {i}.\n" for i in range(24)))
    workdir = tmp_path / "fastbert"
    train(
        env,
        workdir,
        "train.mode=fastbert",
        f"data.stage2_unlabeled={text}",
        "train.max_steps=4",
        "train.eval_every=0",
        model=tiny_model,
    )
    records = [json.loads(line) for line in metric_lines(workdir)]
    stage2 = [r for r in records if r.get("stage") == 2 and r["split"] == "train"]
    assert stage2 and all("exit_loss/1" not in r and "distill_loss/1" in r for r in stage2)
    assert max(r["step"] for r in records) == 8  # 4 steps per stage
    bad = tmp_path / "bad.txt"
    bad.write_text("one\ttwo\tthree\n")
    proc = train(
        env, tmp_path / "bad", "train.mode=fastbert", f"data.stage2_unlabeled={bad}", model=tiny_model, expect=2
    )
    assert f"{bad}, line 1: 3 tab-separated fields" in proc.stderr
    proc = train(env, tmp_path / "wrong", f"data.stage2_unlabeled={bad}", model=tiny_model, expect=2)
    assert "data.stage2_unlabeled is for train.mode fastbert" in proc.stderr


def test_ablation_runner_reuses_finished_runs_and_writes_the_report(env, tiny_model, tmp_path):
    report = tmp_path / "docs" / "results.md"
    records = tmp_path / "records"
    args = [
        sys.executable,
        str(REPO / "scripts" / "ablation.py"),
        f"--workdir={tmp_path / 'runs'}",
        "--config=configs/tiny.py",
        "--tasks=wnli",
        "--modes=joint,romebert",
        "--seeds=1,2",
        f"--override=model.name_or_path={tiny_model}",
        "--override=train.max_steps=3",
        f"--report={report}",
        "--grid_note=Tiny test grid.",
        f"--records={records}",
    ]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    assert "Tiny test grid." in text and "| joint | 2 |" in text and "| romebert | 2 |" in text
    assert "± " in text and (tmp_path / "docs" / "results_wnli.png").stat().st_size > 0
    record = json.loads((records / "wnli" / "romebert" / "seed2.json").read_text())
    assert record["seed"] == "2" and record["steps"] == 3 and record["train_seconds_partial"] is False
    assert record["config"] == "configs/tiny.py:wnli,romebert"
    assert record["overrides"] == ["train.seed=2", f"model.name_or_path={tiny_model}", "train.max_steps=3"]
    assert record["resolved_config"]["train"]["seed"] == 2 and record["resolved_config"]["train"]["mode"] == "romebert"
    assert record["provenance"]["jax"] and "CPUs" in record["provenance"]["machine"]
    evaluated = json.loads((tmp_path / "runs" / "wnli" / "romebert" / "seed2" / "eval" / "results.json").read_text())
    assert record["results"] == evaluated
    assert "| entropy" not in text and "| 0.6 |" in text  # the entropy sweep's table
    assert "Runs: 4 runs; rome_jax tree " in text
    # GR's table: romebert only (joint has no projection), the share of projected steps
    # as the mean over seeds of each run's logged windows.
    gr_table = text.split("| mode | steps projected (%) | mean cosine |")[1].split("\n\n")[0]
    assert "| joint |" not in gr_table
    shares = []
    for seed in (1, 2):
        lines = (tmp_path / "runs" / "wnli" / "romebert" / f"seed{seed}" / "metrics.jsonl").read_text()
        logged = [json.loads(l)["gr/projected"] for l in lines.splitlines() if "gr/projected" in l]
        shares.append(100 * np.mean(logged))
    assert f"| romebert | {np.mean(shares):.1f} ± {np.std(shares):.1f} |" in gr_table
    # The records alone (a fresh clone: no workdir) rebuild the same report, training nothing.
    shutil.rmtree(tmp_path / "runs")
    started = time.time()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and time.time() - started < 60, proc.stderr[-3000:]
    assert report.read_text() == text and not (tmp_path / "runs").exists()
    assert "so on a fresh clone it only rebuilds this page" in text
    # --reuse_only trains nothing and names the runs still missing.
    more = [a.replace("--seeds=1,2", "--seeds=1,2,3") for a in args] + ["--reuse_only"]
    proc = subprocess.run(more, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "`wnli/joint/seed3`, `wnli/romebert/seed3`" in report.read_text()
    assert "trains only the runs named below as not finished" in report.read_text()
    assert not (tmp_path / "runs" / "wnli" / "joint" / "seed3").exists()
    # A record made with other overrides is refused, not reused: one line naming it.
    other = [a.replace("train.max_steps=3", "train.max_steps=4") for a in args]
    proc = subprocess.run(other, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2 and not (tmp_path / "runs").exists()
    assert proc.stderr.count("\n") == 1 and str(records / "wnli" / "joint" / "seed1.json") in proc.stderr
    assert "train.max_steps=3" in proc.stderr and "use another --records directory" in proc.stderr


def test_glue_benchmark_trains_present_tasks_skips_absent_ones_and_resumes(env, tiny_model, tmp_path, glue_dir):
    workdir = tmp_path / "glue"
    args = [
        sys.executable,
        str(REPO / "scripts" / "glue_benchmark.py"),
        f"--workdir={workdir}",
        "--config=configs/tiny.py",
        "--tasks=wnli,qqp",
        f"--data_dir={glue_dir}",
        f"--override=model.name_or_path={tiny_model}",
        "--override=train.max_steps=3",
        "--threshold=0.5",
    ]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert set(summary["tasks"]) == {"wnli"} and "qqp" in summary["skipped"]
    wnli = summary["tasks"]["wnli"]
    assert summary["glue_average_final"] == pytest.approx(wnli["final_score"])
    assert wnli["dev"]["dev"]["final"]["accuracy"] == pytest.approx(wnli["final_score"])
    test = wnli["test"]["wnli/test"]
    assert test["rows"] == 146 and 1.0 <= test["mean_layers"] <= 2.0
    lines = (workdir / "submission" / "WNLI.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 147
    assert "| wnli |" in (workdir / "summary.md").read_text()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "finished earlier" in proc.stdout
