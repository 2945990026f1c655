"""Training and evaluating on your own data: a three-class task and a regression task
built from real SST-2 sentences, on a tiny random BERT (2 layers, hidden 32).

train.py / eval.py as subprocesses for one classification run (train, eval every
exit with sweeps and plots, the exported model's id2label, the feature cache,
re-running a finished run, a bad dev file on resume); the regression task and the
other training modes in process.
"""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from rome_jax.config import run_config
from rome_jax.data import read_glue_dir
from rome_jax.errors import CheckpointError
from rome_jax.training import trainer
from rome_jax.training.step import MODES

pytestmark = pytest.mark.slow  # subprocess runs / long training: deselected by -m "not slow"

REPO = pathlib.Path(__file__).resolve().parent.parent
CLASSES = ("short", "medium", "long")  # by word count: a learnable three-class label

SMALL = {
    "data.max_length": 32,
    "data.train_max_examples": 48,
    "data.eval_max_examples": 20,
    "train.batch_size": 4,
    "train.eval_batch_size": 8,
    "train.learning_rate": 1e-3,
    "train.max_steps": 6,
    "train.log_every": 3,
    "train.eval_every": 6,
    "train.checkpoint_every": 2,
    "train.keep_checkpoints": 2,
    "train.warmup_ratio": 0.0,
}


def _length_class(text):
    words = len(text.split())
    return CLASSES[0] if words <= 8 else CLASSES[1] if words <= 16 else CLASSES[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory, glue_dir):
    """SST-2 sentences as a three-class CSV (string labels) and a regression JSON Lines file."""
    root = tmp_path_factory.mktemp("custom_data")
    files = {}
    for split in ("train", "dev"):
        ex = read_glue_dir("sst2", split, glue_dir).head(64)
        path = root / f"{split}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
            writer.writerow(["text", "size"])
            writer.writerows([t, _length_class(t)] for t in ex.text_a)
        files[f"{split}_csv"] = str(path)
        path = root / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for text in ex.text_a:
                f.write(json.dumps({"review": text, "score": round(len(text.split()) / 10, 2)}) + "\n")
        files[f"{split}_jsonl"] = str(path)
    return files


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


def _classes(data, tiny_model, **more):
    return {
        "model.name_or_path": tiny_model,
        "model.reinit_classifier": True,
        "data.custom.train_file": data["train_csv"],
        "data.custom.dev_file": data["dev_csv"],
        "data.custom.text_a": "text",
        "data.custom.label": "size",
        **SMALL,
        **more,
    }


def _regression(data, tiny_model, **more):
    return {
        "model.name_or_path": tiny_model,
        "model.reinit_classifier": True,
        "data.custom.train_file": data["train_jsonl"],
        "data.custom.dev_file": data["dev_jsonl"],
        "data.custom.text_a": "review",
        "data.custom.label": "score",
        "data.custom.regression": True,
        **SMALL,
        **more,
    }


def _run(env, script, *args, expect=0):
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def _train_args(workdir, overrides):
    return ["--config=configs/custom.py", f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())]


def records(workdir):
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_three_classes_train_eval_export_cache_and_resume(env, data, tiny_model, tmp_path):
    workdir, cache = tmp_path / "run", tmp_path / "features"
    args = _train_args(workdir, _classes(data, tiny_model, **{"data.cache_dir": str(cache)}))
    _run(env, "train.py", *args)
    stored = json.loads((workdir / "config.json").read_text())
    custom = stored["data"]["custom"]
    assert json.loads(custom["label_names"]) == ["long", "medium", "short"]  # sorted as strings
    assert custom["metric"] == "accuracy" and os.path.isabs(custom["train_file"])
    exported = json.loads((workdir / "model" / "config.json").read_text())
    assert exported["id2label"] == {"0": "long", "1": "medium", "2": "short"}
    assert exported["label2id"] == {"long": 0, "medium": 1, "short": 2} and exported["num_labels"] == 3
    dev = [r for r in records(workdir) if r["split"] == "dev"]
    assert [r["step"] for r in dev] == [6] and 0 <= dev[0]["exit_2/accuracy"] <= 1
    assert sorted(p.name.split("-")[:2] == ["custom", "train"] for p in cache.iterdir()).count(True) == 1

    # eval.py: every exit, the sweeps and the plots, in a fresh process.
    out = tmp_path / "eval"
    proc = _run(
        env,
        "eval.py",
        f"--workdir={workdir}",
        f"--output_dir={out}",
        "--no_timing",
        "--sweeps=entropy:0.3,1.0;patience:1",
    )
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "custom" and results["metric"] == "accuracy"
    assert results["num_examples"] == 64 and [r["exit"] for r in results["per_exit"]] == [1, 2]
    for name in ("results.csv", "per_exit.csv", "per_exit.png", "tradeoff.png"):
        assert (out / name).stat().st_size > 0
    assert "on custom" in proc.stdout

    # A finished run re-run: nothing trains, nothing changes, the cached features are read.
    before = {p: p.read_bytes() for p in (workdir / "metrics.jsonl", workdir / "config.json")}
    _run(env, "train.py", *args)
    assert all(p.read_bytes() == b for p, b in before.items())

    # A bad dev file on resume: one line naming the file, row and value; nothing lost.
    dev_file = pathlib.Path(data["dev_csv"])
    original = dev_file.read_text()
    try:
        dev_file.write_text(original.replace('"short"', '"tiny"', 1))
        proc = _run(env, "train.py", *args, expect=2)
    finally:
        dev_file.write_text(original)
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # after the log lines: the error, one line
    assert line.startswith("train.py: error: ") and str(dev_file) in line, proc.stderr
    assert "row 2 (line 3): label 'tiny' is not one of" in line and "(long, medium, short)" in line
    assert all(p.read_bytes() == b for p, b in before.items())


def test_another_label_count_without_reinit_is_one_line(env, data, tiny_model, tmp_path):
    args = _train_args(tmp_path / "run", _classes(data, tiny_model, **{"model.reinit_classifier": False}))
    proc = _run(env, "train.py", *args, expect=2)
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("train.py: error: ") and "model.reinit_classifier=True" in line
    assert "(2, 32)" in line
    assert "(3, 32)" in line
    assert not (tmp_path / "run").exists()  # the model is checked before the workdir is written


def test_a_bad_training_file_leaves_no_trace(env, data, tiny_model, tmp_path):
    """An empty text on row 7 of a JSON Lines training file: one line naming the file and
    row, and the workdir is not created (a re-run with the fixed file starts cleanly)."""
    rows = pathlib.Path(data["train_jsonl"]).read_text().splitlines()
    bad = tmp_path / "train.jsonl"
    rows[6] = json.dumps({"review": "", "score": 0.5})
    bad.write_text("\n".join(rows) + "\n")
    workdir = tmp_path / "run"
    proc = _run(
        env,
        "train.py",
        *_train_args(workdir, _regression(data, tiny_model, **{"data.custom.train_file": str(bad)})),
        expect=2,
    )
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("train.py: error: ") and str(bad) in line and "row 7" in line, proc.stderr
    assert not workdir.exists()


def _config(overrides):
    return run_config.load(f"{REPO}/configs/custom.py", overrides)


def test_regression_trains_evaluates_and_exports(data, tiny_model, tmp_path):
    from rome_jax.data import load_examples, tokenize_examples
    from rome_jax.data.tasks import task_from_config
    from rome_jax.exits import evaluation
    from rome_jax.serving.api import load_pretrained

    workdir = tmp_path / "run"
    config = _config(_regression(data, tiny_model, **{"train.mode": "pabee"}))
    result = trainer.train_and_evaluate(config, workdir, progress=False)
    assert result.step == 6
    dev = [r for r in records(workdir) if r["split"] == "dev"][-1]
    for i in (1, 2):
        assert -1 <= dev[f"exit_{i}/pearson_and_spearman"] <= 1 and np.isfinite(dev[f"exit_{i}/loss"])
    exported = json.loads((workdir / "model" / "config.json").read_text())
    assert exported["num_labels"] == 1 and exported["problem_type"] == "regression"
    stored = json.loads((workdir / "config.json").read_text())["data"]["custom"]
    assert stored["label_names"] == "" and stored["metric"] == "pearson_and_spearman"

    model = load_pretrained(str(workdir / "model"))
    task = task_from_config(run_config.read_workdir_config(workdir))
    features = tokenize_examples(load_examples(task, "dev"), model.tokenizer, 32)
    results = evaluation.evaluate_split(
        model.config,
        model.params,
        task,
        "dev",
        features,
        sweeps={"patience": [1]},
        batch_size=16,
        timing=False,
        log=lambda m: None,
    )
    assert results["metric"] == "pearson_and_spearman" and len(results["per_exit"]) == 2
    assert "pearson" in results["sweep"][0]

    # Thresholds with a guarantee on the regression task: the risk target over the
    # absolute score difference (in units of the label range), patience and fixed only.
    from rome_jax.exits import calibration

    logits = evaluation.exit_logits_of(model.config, model.params, features, 16)
    labels = np.asarray(features.labels)
    chosen = calibration.calibrate_outputs(logits, labels, target="risk", eps=0.5, delta=0.1, regression=True)
    assert set(chosen["criteria"]) == {"patience", "fixed"} and chosen["regression"] is True
    assert chosen["scale"] == pytest.approx(float(labels.max() - labels.min()))
    assert chosen["bound"] == "hoeffding_bentkus"
    if chosen["default"] is not None:
        assert calibration.criterion_of(chosen).regression is True


def test_missing_reinit_in_process_names_the_option(data, tiny_model, tmp_path):
    config = _config(_regression(data, tiny_model, **{"model.reinit_classifier": False}))
    with pytest.raises(CheckpointError, match=r"\(2, 32\).*\(1, 32\).*model\.reinit_classifier=True"):
        trainer.train_and_evaluate(config, tmp_path / "run", progress=False)


@pytest.mark.parametrize("mode", [m for m in MODES if m not in ("romebert", "pabee")])
def test_every_mode_trains_on_a_custom_task(data, tiny_model, tmp_path, mode):
    overrides = {
        "train.mode": mode,
        "train.max_steps": 2,
        "train.eval_every": 0,
        "train.checkpoint_every": 0,
        "train.log_every": 2,
        "data.train_max_examples": 16,
        "data.eval_max_examples": 8,
    }
    config = _config(_classes(data, tiny_model, **overrides))
    result = trainer.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert not result.preempted and "exit_2/accuracy" in result.final_eval["dev"]
