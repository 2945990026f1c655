"""Leaderboard files predicted by a tiny model on fixture test files, and the summary."""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import rome_jax
import tiny_hf
from rome_jax.config import run_config
from rome_jax.data import load_examples, tokenize_examples
from rome_jax.data.glue import get_task
from rome_jax.errors import ConfigError
from rome_jax.exits import criteria as exits
from rome_jax.experiments import glue_runner, leaderboard

FIXTURES = {
    # task dir, file, header, rows (index + texts), task name, split
    "stsb": (
        "STS-B",
        "test.tsv",
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2",
        [f"{i}\tmain-news\tnone\tnone\t{i}\tnone\tnone\tA man plays {i}.\tA man sings {i}." for i in range(7)],
    ),
    "mnli_m": (
        "MNLI",
        "test_matched.tsv",
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
        "sentence1_parse\tsentence2_parse\tsentence1\tsentence2",
        [
            f"{i}\t1\t1n\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tThe cat sat {i}.\tA cat is sitting."
            for i in range(5)
        ],
    ),
    "mnli_mm": (
        "MNLI",
        "test_mismatched.tsv",
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
        "sentence1_parse\tsentence2_parse\tsentence1\tsentence2",
        [f"{i}\t1\t1n\tletters\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tDogs bark {i}.\tNo dog barks." for i in range(6)],
    ),
    "cola": ("CoLA", "test.tsv", "index\tsentence", [f"{i}\tThe book was written {i}." for i in range(9)]),
}


@pytest.fixture(scope="module")
def glue_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    for directory, name, header, rows in FIXTURES.values():
        (root / directory).mkdir(exist_ok=True)
        (root / directory / name).write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    models = {}
    for labels in (1, 2, 3):
        path = tmp_path_factory.mktemp(f"tiny{labels}")
        tiny_hf.make_bert(path, num_labels=labels, vocab_size=30522, num_hidden_layers=3)
        tokenizer.save_pretrained(str(path))
        models[labels] = rome_jax.load_pretrained(str(path))
    return models


@pytest.mark.parametrize(
    "task,split,file,rows",
    [
        ("stsb", "test", "STS-B.tsv", 7),
        ("mnli", "test_matched", "MNLI-m.tsv", 5),
        ("mnli", "test_mismatched", "MNLI-mm.tsv", 6),
        ("cola", "test", "CoLA.tsv", 9),
    ],
)
def test_submission_files_from_a_tiny_model(glue_fixture, tiny_models, tmp_path, task, split, file, rows):
    t = get_task(task)
    model = tiny_models[t.num_labels]
    examples = load_examples(task, split, data_dir=str(glue_fixture))
    assert not examples.has_labels
    features = tokenize_examples(examples, model.tokenizer, 32)
    criterion = glue_runner.Setting(threshold=0.5).for_task(t)
    out = glue_runner.predict(model.config, model.params, features, criterion, batch_size=4)
    assert out["exit_index"].shape == (rows,) and 1.0 <= out["mean_layers"] <= 3.0
    # the batched executor decides exactly as the simulation over every exit does
    all_logits = np.asarray(model.exit_logits(features.arrays()))
    simulated, _ = exits.simulate(criterion, all_logits)
    np.testing.assert_array_equal(out["exit_index"], np.asarray(simulated))
    if t.is_regression:  # make scores fall outside 0..5 to see them clipped
        out["predictions"] = out["predictions"] * 100
    path = leaderboard.write_submission(task, split, features.index, out["predictions"], str(tmp_path))
    assert path.endswith(file)
    with open(path, newline="") as f:
        table = list(csv.reader(f, delimiter="\t"))
    assert table[0] == ["index", "prediction"] and len(table) == rows + 1
    assert [int(r[0]) for r in table[1:]] == list(range(rows))
    values = [r[1] for r in table[1:]]
    if task == "stsb":
        assert all(0.0 <= float(v) <= 5.0 for v in values) and {"0.000", "5.000"} & set(values)
    elif task == "mnli":
        assert set(values) <= {"entailment", "neutral", "contradiction"}
    else:
        assert set(values) <= {"0", "1"}


def test_summary_of_made_up_records_and_skipped_tasks():
    def record(final, early, speedup, splits=("dev",)):
        return {
            "criterion": "entropy",
            "threshold": 0.1,
            "test": {},
            "dev": {s: {"final": final, "early": early, "layer_speedup": speedup} for s in splits},
        }

    records = {
        "sst2": record({"accuracy": 0.9}, {"accuracy": 0.88}, 2.0),
        "mrpc": record({"f1": 0.9, "accuracy": 0.8}, {"f1": 0.8, "accuracy": 0.7}, 1.5),
        "mnli": record({"accuracy": 0.8}, {"accuracy": 0.7}, 3.0, ("dev_matched", "dev_mismatched")),
    }
    summary = glue_runner.summarize(records, {"qqp": "QQP/train.tsv missing"})
    assert summary["glue_average_final"] == pytest.approx((0.9 + 0.85 + 0.8) / 3)
    assert summary["glue_average_early"] == pytest.approx((0.88 + 0.75 + 0.7) / 3)
    assert summary["skipped"] == {"qqp": "QQP/train.tsv missing"} and not summary["complete"]
    text = glue_runner.summary_markdown(json.loads(json.dumps(summary)))
    assert "| mrpc | 85.0 | 75.0 | entropy 0.1 | 1.50x |" in text and "qqp" in text


def test_absent_task_data_is_reported_not_raised(tmp_path, glue_dir):
    assert "QQP" in glue_runner.missing_data(get_task("qqp"), str(tmp_path), "dir")
    (tmp_path / "RTE").mkdir()
    shutil.copy(os.path.join(glue_dir, "RTE", "train.tsv"), tmp_path / "RTE" / "train.tsv")
    assert "RTE/dev.tsv" in glue_runner.missing_data(get_task("rte"), str(tmp_path), "dir")
    assert glue_runner.missing_data(get_task("rte"), glue_dir, "dir") is None


def test_training_runs_as_the_package_command_with_an_absolute_config():
    workdir = pathlib.Path("/runs/glue/rte")
    command = glue_runner.train_command("rte", workdir, "/abs/configs/glue.py", "deebert", ["a.b=1"])
    assert command == [
        sys.executable,
        "-m",
        "rome_jax.commands.train",
        "--config=/abs/configs/glue.py:rte,deebert",
        f"--workdir={workdir}",
        "--config.a.b=1",
    ]
    assert glue_runner.train_command("rte", workdir, "/c.py", None, [])[3] == "--config=/c.py:rte"
    assert not hasattr(glue_runner, "REPO")


def test_the_default_config_is_found_in_the_current_directory_then_in_the_checkout(tmp_path, monkeypatch):
    repo = pathlib.Path(__file__).resolve().parent.parent
    monkeypatch.chdir(tmp_path)
    assert run_config.find_config_file(glue_runner.DEFAULT_CONFIG) == str(repo / "configs" / "glue.py")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "glue.py").write_text("")
    assert run_config.find_config_file("configs/glue.py") == str(tmp_path / "configs" / "glue.py")
    with pytest.raises(
        ConfigError,
        match=r"^config file configs/nope.py not found in the current directory "
        r"or in the rome_jax source checkout .*: pass "
        r"--config=path/to/configs/nope.py$",
    ):
        run_config.find_config_file("configs/nope.py")


def test_the_commands_run_from_a_copied_package_without_the_repository(tmp_path):
    """The package alone (copied elsewhere, no train.py, no configs/) runs its programs
    from a foreign directory; the GLUE runner then asks for its config in one line."""
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    shutil.copytree(
        pathlib.Path(rome_jax.__file__).parent, site / "rome_jax", ignore=shutil.ignore_patterns("__pycache__")
    )
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    proc = run("rome_jax.commands.train", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--workdir: Where checkpoints" in proc.stdout and "--config:" in proc.stdout
    proc = run("rome_jax.commands.glue_benchmark", f"--workdir={elsewhere / 'glue'}", "--tasks=rte")
    assert (proc.returncode, proc.stderr) == (
        2,
        "glue_benchmark.py: error: config file configs/glue.py not "
        "found in the current directory: pass "
        "--config=path/to/configs/glue.py\n",
    )
    assert not (elsewhere / "glue").exists()
