"""A tiny tagging run end to end: train (every exit tags every token), resume after a
kill, eval.py (per-exit F1, sweeps, calibration on other sentences), predict.py and
`model.predict` per word."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from rome_jax.data.entities import entity_scores
from rome_jax.data.tagging import read_conll
from rome_jax.serving.api import load_pretrained

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG = "configs/tiny.py:conll2003,{mode}"


@pytest.fixture(scope="module")
def env(tmp_path_factory, conll_dir):
    cache = tmp_path_factory.mktemp("jax_cache")
    return {
        **os.environ,
        "CONLL_DIR": conll_dir,
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "PYTHONPATH": str(REPO),
    }


def _train(env, workdir, model, mode="romebert", *extra, wait=True):
    args = [
        sys.executable,
        str(REPO / "train.py"),
        f"--config={CONFIG.format(mode=mode)}",
        f"--workdir={workdir}",
        f"--config.model.name_or_path={model}",
        "--config.model.reinit_classifier=True",
        *extra,
    ]
    if not wait:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _run(env, *args, expect=0):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory, env, tiny_model):
    workdir = tmp_path_factory.mktemp("tagger") / "run"
    _train(env, workdir, tiny_model)
    return workdir


def test_training_scores_every_exit_on_entities(run, conll_dir):
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["task"] == "conll2003" and config["model"]["exit_pooling"] == "token"
    assert json.loads(config["data"]["tagging"]["tag_names"]) == [
        "O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER",
    ]  # fmt: skip
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["split"] == "dev"]
    assert [r["step"] for r in evals] == [6, 12]
    for i in (1, 2):
        for key in ("entity_f1", "entity_precision", "entity_recall", "token_accuracy", "loss"):
            assert np.isfinite(evals[-1][f"exit_{i}/{key}"]), key
    exported = json.loads((run / "model" / "config.json").read_text())
    assert exported["architectures"] == ["BertForTokenClassification"] and exported["id2label"]["7"] == "B-PER"


def test_a_killed_tagging_run_resumes_to_the_same_parameters(tmp_path, env, tiny_model, run):
    from rome_jax.training import checkpoints

    workdir = tmp_path / "killed"
    proc = _train(env, workdir, tiny_model, wait=False)
    metrics = workdir / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = _train(env, workdir, tiny_model)
    assert "resuming from the checkpoint of step" in again.stderr
    step, params = checkpoints.load_params(str(workdir), "latest")
    ref_step, ref = checkpoints.load_params(str(run), "latest")
    assert step == ref_step == 12
    import jax

    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert (workdir / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()


def test_eval_reports_on_sentences_that_did_not_calibrate(run, env, conll_dir):
    proc = _run(
        env, "eval.py", f"--workdir={run}", "--checkpoint=latest", "--batch_size=8", "--windows=0", "--max_examples=20"
    )
    results = json.loads((run / "eval" / "results.json").read_text())
    cal = results["calibration"]
    scored = set(results["scored_rows"]["row_ids"])
    assert cal["kind"] == "tagging" and not scored & set(cal["rows"]["row_ids"])
    assert len(scored) + cal["rows"]["num_rows"] == results["num_sentences"] == 20
    # per-exit F1 against an independent count on the scored sentences, from the saved outputs
    saved = np.load(run / "eval" / "exit_logits.npz")
    tags = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    dev = read_conll(os.path.join(conll_dir, "dev.txt"))
    sentence_of, final = saved["dev/row_ids"], saved["dev/logits"][-1].argmax(-1)
    gold, pred = [], []
    for n in sorted(scored):
        words = list(dev.tags[n])
        got = [tags[i] for i in final[sentence_of == n]]
        pred.append(got + ["O"] * (len(words) - len(got)))  # words past max_length: "O"
        gold.append(words)
    assert results["per_exit"][-1]["f1"] == pytest.approx(entity_scores(gold, pred)["f1"])
    levels = {(r["level"], r.get("window")) for r in results["sweep"]}
    assert levels == {("sentence", None), ("token", 0)}
    for row in results["sweep"]:
        assert 0 < row["flops_ratio"] <= 1.0 + 1e-9 and 1 <= row["mean_layers"] <= 2
    assert (run / "eval" / "tradeoff.png").stat().st_size > 0
    assert "entity F1 by exit" in proc.stdout
    assert (run / "model" / "rome_jax_calibration.json").exists()  # the last step: stored with the model


def test_predict_tags_words_with_their_exit_layers(run, env, tmp_path):
    model = load_pretrained(str(run / "model"))
    out = model.predict(["EU rejects German call", ["Peter", "Blackburn"]], criterion="max_prob:0.0")
    assert out[0]["words"] == ["EU", "rejects", "German", "call"] and len(out[0]["tags"]) == 4
    assert out[0]["exit_layers"] == [1, 1, 1, 1]  # max_prob >= 0 fires at once
    full = model.predict([["Peter", "Blackburn"]], criterion=None)
    assert full[0]["exit_layers"] == [2, 2] and set(full[0]["tags"]) <= set(model.label_names)
    (tmp_path / "in.txt").write_text('EU rejects German call\n\n{"tokens": ["Peter", "Blackburn"]}\n')
    _run(env, "predict.py", f"--workdir={run}", f"--input={tmp_path / 'in.txt'}", f"--output={tmp_path / 'o.jsonl'}")
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 3] and rows[1]["words"] == ["Peter", "Blackburn"]
    (tmp_path / "bad.txt").write_text('fine words\n{"tokens": []}\n')
    bad = _run(env, "predict.py", f"--workdir={run}", f"--input={tmp_path / 'bad.txt'}", expect=2)
    assert f"{tmp_path / 'bad.txt'}, line 2" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_bad_tagging_config_is_one_line(env, tiny_model, tmp_path):
    proc = _run(
        env,
        "train.py",
        f"--config={CONFIG.format(mode='fastbert')}",
        f"--workdir={tmp_path / 'x'}",
        f"--config.model.name_or_path={tiny_model}",
        expect=2,
    )
    assert "fastbert" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
