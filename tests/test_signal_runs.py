"""Learned and parameter-free exits end to end: a tiny regression run (real SST-2
sentences scored by their length) trained with rows held out, `eval.py --fit_gates`
sweeping lte and saturation, and `predict.py` exiting by lte, against the simulation."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from rome_jax.config import run_config
from rome_jax.data import read_glue_dir
from rome_jax.training import trainer
from rome_jax.training.step import MODES

pytestmark = pytest.mark.slow  # subprocess runs

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory, glue_dir):
    root = tmp_path_factory.mktemp("scores")
    files = {}
    for split in ("train", "dev"):
        ex = read_glue_dir("sst2", split, glue_dir).head(64)
        path = root / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for text in ex.text_a:
                f.write(json.dumps({"review": text, "score": round(len(text.split()) / 10, 2)}) + "\n")
        files[split] = str(path)
    return files


def _run(script, *args, env):
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_regression_run_exits_by_lte_and_saturation(data, tiny_model, tmp_path, glue_dir):
    from rome_jax.data import load_examples, tokenize_examples
    from rome_jax.data.tasks import task_from_config
    from rome_jax.exits import gates, signals
    from rome_jax.exits.criteria import Criterion, simulate
    from rome_jax.serving.api import load_pretrained

    workdir = tmp_path / "run"
    overrides = {
        "model.name_or_path": tiny_model,
        "model.reinit_classifier": True,
        "data.custom.train_file": data["train"],
        "data.custom.dev_file": data["dev"],
        "data.custom.text_a": "review",
        "data.custom.label": "score",
        "data.custom.regression": True,
        "data.max_length": 32,
        "data.train_max_examples": 48,  # rows 48..63 are held out for the gates
        "train.mode": "romebert",
        "train.batch_size": 8,
        "train.num_epochs": 2,
        "train.eval_every": 0,
        "train.log_every": 6,
    }
    trainer.train_and_evaluate(run_config.load(f"{REPO}/configs/custom.py", overrides), workdir, progress=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "GLUE_DIR": glue_dir}

    # eval.py fits the gates on the 16 held-out rows and sweeps lte and saturation
    out = tmp_path / "eval"
    proc = _run(
        "eval.py",
        f"--workdir={workdir}",
        "--checkpoint=latest",
        "--fit_gates",
        "--sweeps=lte;saturation;patience:1",
        "--no_timing",
        f"--output_dir={out}",
        env=env,
    )
    assert "fitted the exit gates on training rows 48..63 (16 held out)" in proc.stdout
    fitted, metadata = gates.read_gates(str(workdir / gates.RUN_FILE_NAME))
    assert set(fitted) == {"lte", "meta"} and metadata["rows"] == {"split": "train", "first": 48, "count": 16}
    assert (workdir / "model" / gates.FILE_NAME).is_file()  # the exported model is the evaluated step
    results = json.loads((out / "results.json").read_text())
    by_name = {}
    for row in results["sweep"]:
        by_name.setdefault(row["criterion"], []).append(row)
    assert set(by_name) == {"lte", "saturation", "patience"}
    for name in ("lte", "saturation"):
        rows = by_name[name]
        assert len(rows) >= 2 and all("pearson" in r and "spearman" in r for r in rows)
        layers = sorted(r["mean_layers"] for r in rows)
        assert layers[0] < layers[-1]  # the thresholds trade layers
        for r in rows:  # the criterion's own work is counted: below the layer ratio
            if r["mean_layers"] < 2:
                assert r["flops_speedup"] < r["layer_speedup"]

    # predict.py exits by lte with the gates beside the exported model, as simulated
    model = load_pretrained(str(workdir / "model"))
    assert set(signals.gates_of(model.params)) == {"lte", "meta"}
    task = task_from_config(run_config.read_workdir_config(workdir))
    features = tokenize_examples(load_examples(task, "dev"), model.tokenizer, 32)
    logits, sig, _ = signals.all_exit_signals(model.config, model.params, features.arrays())
    values = np.unique(np.asarray(sig.lte)[0])
    threshold = float(values[len(values) // 2])  # about half the rows exit at layer 1
    expected, answers = simulate(Criterion("lte", threshold, regression=True), logits, signals=sig)
    proc = _run(
        "predict.py",
        f"--workdir={workdir}",
        f"--input={data['dev']}",
        "--text_a=review",
        f"--criterion=lte:{threshold!r}",
        "--max_length=32",
        env=env,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(features)
    np.testing.assert_array_equal([r["exit_layer"] for r in rows], np.asarray(expected) + 1)
    np.testing.assert_allclose([r["score"] for r in rows], np.asarray(answers)[:, 0], atol=1e-4)
    assert 0 < np.mean(np.asarray(expected) == 0) < 1


# One mode of each kind: one stage with the gradient projection, two stages (stage 2
# trains the exits alone), self-distillation of a frozen backbone. The other modes
# export the same parameters (tests/test_train_step.py checks what each trains).
GATE_MODES = ("romebert", "deebert", "fastbert")


def test_the_modes_sampled_cover_every_kind():
    assert set(GATE_MODES) <= set(MODES)


@pytest.mark.parametrize("mode", GATE_MODES)
def test_every_kind_of_mode_fits_gates_from_python(data, tiny_model, tmp_path, mode):
    """The gates need only the trained exits' outputs: a model of each kind of training
    mode fits them (`MultiExitModel.fit_gates`, on rows it did not train on) and exits by
    them."""
    from rome_jax.exits import signals
    from rome_jax.exits.criteria import Criterion, simulate
    from rome_jax.serving.api import load_pretrained

    classes = {}
    for split in ("train", "dev"):
        lines = pathlib.Path(data[split]).read_text(encoding="utf-8").splitlines()
        classes[split] = [{"text": r["review"], "label": int(r["score"] >= 1.0)} for r in map(json.loads, lines)]
    paths = {}
    for split, items in classes.items():
        paths[split] = tmp_path / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    overrides = {
        "model.name_or_path": tiny_model,
        "data.custom.train_file": str(paths["train"]),
        "data.custom.dev_file": str(paths["dev"]),
        "data.custom.text_a": "text",
        "data.custom.label": "label",
        "data.max_length": 32,
        "data.train_max_examples": 32,
        "train.mode": mode,
        "train.batch_size": 8,
        "train.max_steps": 4,
        "train.eval_every": 0,
        "train.checkpoint_every": 0,
        "train.log_every": 4,
    }
    trainer.train_and_evaluate(
        run_config.load(f"{REPO}/configs/custom.py", overrides), tmp_path / "run", progress=False
    )
    model = load_pretrained(str(tmp_path / "run" / "model"))
    held = classes["train"][32:]
    report = model.fit_gates([r["text"] for r in held], [r["label"] for r in held], max_length=32)
    assert set(report) == {"lte_loss", "lte_target_mean", "meta_loss", "meta_target_mean"}
    texts = [r["text"] for r in classes["dev"]]
    inputs = model.tokenize(texts, max_length=32)
    logits, sig, _ = signals.all_exit_signals(model.config, model.params, inputs)
    threshold = float(np.median(np.asarray(sig.lte)[0]))
    expected, _ = simulate(Criterion("lte", threshold), logits, signals=sig)
    got = model.predict(texts, criterion=f"lte:{threshold!r}", max_length=32)
    np.testing.assert_array_equal(got.exit_layer, np.asarray(expected) + 1)
