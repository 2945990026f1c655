"""The calibration rule against hand-made sweep rows: per criterion, the fewest mean
layers whose dev metric is within `points` percentage points of full depth; ties go
to the more conservative threshold."""

import json

import numpy as np
import pytest

from rome_jax.errors import CheckpointError
from rome_jax.exits import calibration, evaluation, guarantee
from rome_jax.exits import criteria as exits


def row(name, threshold, metric, layers):
    return {
        "criterion": name,
        "threshold": threshold,
        "accuracy": metric,
        "mean_layers": layers,
        "layer_speedup": 6 / layers,
    }


SWEEP = [
    row("entropy", 0.0, 0.850, 6.0),
    row("entropy", 0.1, 0.850, 5.0),
    row("entropy", 0.3, 0.846, 4.0),
    row("entropy", 0.5, 0.840, 3.0),
    row("entropy", 0.6, 0.700, 1.0),
    row("max_prob", 0.99, 0.849, 5.5),
    row("max_prob", 0.9, 0.845, 4.5),
    row("max_prob", 0.8, 0.844, 4.0),
    row("patience", 1, 0.80, 3.0),
    row("patience", 2, 0.83, 4.0),
]


def test_fewest_layers_within_the_points():
    out = calibration.choose_thresholds(SWEEP, 0.850, metric="accuracy", points=0.5, num_layers=6)
    assert out["criteria"]["entropy"] == {"threshold": 0.3, "accuracy": 0.846, "mean_layers": 4.0, "layer_speedup": 1.5}
    assert out["criteria"]["max_prob"]["threshold"] == 0.9  # 0.844 is 0.6 points below
    assert out["criteria"]["patience"] is None  # none within 0.5 points
    assert out["default"] == {"criterion": "entropy", "threshold": 0.3}
    assert out["points"] == 0.5 and out["full_depth_metric"] == 0.85 and out["metric"] == "accuracy"
    json.dumps(out)
    # wider: entropy 0.5 (1 point below) and patience 2 (2 points) now fit
    wide = calibration.choose_thresholds(SWEEP, 0.850, metric="accuracy", points=2.0)
    assert wide["criteria"]["entropy"]["threshold"] == 0.5 and wide["criteria"]["patience"]["threshold"] == 2
    # zero points: only thresholds at or above full depth
    exact = calibration.choose_thresholds(SWEEP, 0.850, metric="accuracy", points=0)
    assert exact["criteria"]["entropy"]["threshold"] == 0.1 and exact["criteria"]["max_prob"] is None


def test_ties_go_to_the_more_conservative_threshold():
    sweep = [
        row("entropy", 0.3, 0.85, 4.0),
        row("entropy", 0.2, 0.85, 4.0),
        row("entropy", 0.4, 0.85, 4.0),
        row("max_prob", 0.8, 0.85, 4.0),
        row("max_prob", 0.9, 0.85, 4.0),
        row("patience", 2, 0.85, 4.0),
        row("patience", 3, 0.85, 4.0),
        row("normalized_entropy", 0.5, 0.85, 4.0),
        row("normalized_entropy", 0.4, 0.85, 4.0),
    ]
    out = calibration.choose_thresholds(sweep, 0.85, metric="accuracy", points=0.5)
    assert {n: c["threshold"] for n, c in out["criteria"].items()} == {
        "entropy": 0.2,
        "max_prob": 0.9,
        "patience": 3,
        "normalized_entropy": 0.4,
    }


def test_default_is_the_criterion_that_saves_most():
    sweep = [row("entropy", 0.5, 0.5, 2.0), row("max_prob", 0.9, 0.85, 4.0), row("patience", 2, 0.85, 3.0)]
    out = calibration.choose_thresholds(sweep, 0.85, metric="accuracy")
    assert out["criteria"]["entropy"] is None
    assert out["default"] == {"criterion": "patience", "threshold": 2}  # 3 layers against max_prob's 4
    assert out["in_sample"] is True
    tied = [row("patience", 2, 0.85, 4.0), row("max_prob", 0.9, 0.85, 4.0)]
    assert calibration.choose_thresholds(tied, 0.85, metric="accuracy")["default"]["criterion"] == "max_prob"
    nothing = calibration.choose_thresholds([row("entropy", 0.5, 0.5, 2.0)], 0.85, metric="accuracy")
    assert nothing["default"] is None
    with pytest.raises(ValueError, match="no threshold within"):
        calibration.criterion_of(nothing)
    with pytest.raises(ValueError, match="points"):
        calibration.choose_thresholds(SWEEP, 0.85, metric="accuracy", points=-1)


def test_calibrate_reads_an_evaluation_result(tmp_path):
    results = {
        "task": "sst2",
        "split": "dev",
        "metric": "accuracy",
        "num_examples": 872,
        "num_exits": 6,
        "max_length": 64,
        "per_exit": [{"exit": i + 1, "accuracy": a} for i, a in enumerate((0.5, 0.5, 0.5, 0.83, 0.85, 0.85))],
        "sweep": SWEEP,
    }
    out = calibration.calibrate(results, 0.5)
    assert out["full_depth_metric"] == 0.85 and out["criteria"]["entropy"]["threshold"] == 0.3
    assert {k: out[k] for k in ("task", "split", "num_examples", "max_length", "num_layers", "regression")} == {
        "task": "sst2",
        "split": "dev",
        "num_examples": 872,
        "max_length": 64,
        "num_layers": 6,
        "regression": False,
    }
    assert calibration.criterion_of(out) == exits.Criterion("entropy", 0.3)
    assert calibration.criterion_of(out, "max_prob") == exits.Criterion("max_prob", 0.9)
    with pytest.raises(ValueError, match="no patience threshold"):
        calibration.criterion_of(out, "patience")
    regression = {
        **results,
        "metric": "pearson",
        "per_exit": [{"exit": 6, "pearson": 0.8}],
        "sweep": [{"criterion": "patience", "threshold": 2, "pearson": 0.799, "mean_layers": 4.0}],
    }
    reg = calibration.calibrate(regression, 0.5)
    assert reg["regression"] and calibration.criterion_of(reg) == exits.Criterion("patience", 2, regression=True)
    path = tmp_path / calibration.FILE_NAME
    calibration.write(path, out)
    assert calibration.read(path) == out
    assert calibration.read(tmp_path / "absent.json") is None
    assert "entropy 0.3" in calibration.summary(out)


def test_malformed_files_are_one_line_errors(tmp_path):
    path = tmp_path / calibration.FILE_NAME
    for text, words in (
        ("not json", "unreadable calibration"),
        ("[1]", "JSON object"),
        ('{"criteria": {"speed": null}}', "unknown criterion 'speed'"),
        ('{"criteria": {"entropy": {"threshold": "x"}}}', "no numeric threshold"),
        (
            '{"criteria": {"entropy": null}, "default": {"criterion": "entropy"}}',
            "'default' names no calibrated criterion",
        ),
    ):
        path.write_text(text)
        with pytest.raises(CheckpointError, match=words):
            calibration.read(path)


def test_eval_calibrate_stores_the_thresholds_with_the_model(minilm_path, glue_dir, tmp_path):
    """eval.py --calibrate=0.5 --calibration_fraction=0 (the in-sample rule on every row)
    on an HF directory: results.json gains the calibration, the directory gains
    rome_jax_calibration.json, and load_pretrained/predict use it."""
    import subprocess
    import sys

    import rome_jax

    model = rome_jax.load_pretrained(minilm_path, num_labels=2)
    model.save_pretrained(str(tmp_path / "m"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rome_jax.commands.eval",
            f"--model={tmp_path / 'm'}",
            "--task=sst2",
            f"--data_dir={glue_dir}",
            "--max_examples=32",
            "--no_timing",
            "--max_length=64",
            "--sweeps=entropy:0,0.3;patience:1",
            "--calibrate=0.5",
            "--calibration_fraction=0",
            f"--output_dir={tmp_path / 'eval'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    chosen = results["calibration"]
    expected = calibration.calibrate(results, 0.5)
    assert {k: chosen[k] for k in expected} == expected and chosen["max_length"] == 64
    assert chosen["in_sample"] is True and chosen["rows"]["num_rows"] == 32
    loaded = rome_jax.load_pretrained(str(tmp_path / "m"))
    assert loaded.calibration == chosen
    assert loaded.predict(["a gem"]).criterion == calibration.criterion_of(chosen)


def test_glue_runner_calibrates_on_dev_logits():
    """glue_benchmark --calibrated: the default sweeps simulated on every exit's dev
    logits, then the rule; no row with fewer layers fits the points."""
    import numpy as np

    from rome_jax.data.glue import get_task
    from rome_jax.experiments.glue_runner import calibrate_on_dev

    rng = np.random.RandomState(0)
    labels = rng.randint(0, 2, 200)
    # exits that grow more right and more confident with depth
    logits = np.stack(
        [
            np.stack([-(labels * 2 - 1) * (i - 2) * 0.5, (labels * 2 - 1) * (i - 2) * 0.5], -1)
            + rng.normal(0, 1.5, (200, 2))
            for i in range(6)
        ]
    ).astype(np.float32)
    out = calibrate_on_dev(get_task("sst2"), logits, labels, 1.0)
    full = float(np.mean(logits[-1].argmax(-1) == labels))
    assert out["full_depth_metric"] == full and out["num_layers"] == 6
    chosen = out["criteria"]["entropy"]
    assert chosen["accuracy"] >= full - 0.01 and chosen["mean_layers"] < 6
    for threshold in (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        index, answer = (np.asarray(x) for x in exits.simulate(exits.Criterion("entropy", threshold), logits))
        if np.mean(index + 1) < chosen["mean_layers"]:
            assert np.mean(answer.argmax(-1) == labels) < full - 0.01
    reg = calibrate_on_dev(get_task("stsb"), logits[..., :1] + 2.5, rng.uniform(0, 5, 200), 0.5)
    assert set(reg["criteria"]) == {"patience"} and reg["regression"]


def test_a_classification_sweep_of_patience_alone_is_not_regression():
    results = {
        "metric": "accuracy",
        "num_exits": 6,
        "per_exit": [{"exit": 6, "accuracy": 0.85}],
        "sweep": [row("patience", 2, 0.85, 4.0)],
    }
    assert calibration.calibrate(results)["regression"] is False
    results["metric"] = "pearson_and_spearman"
    results["per_exit"] = [{"exit": 6, "pearson_and_spearman": 0.8}]
    results["sweep"] = [{**row("patience", 2, 0.8, 4.0), "pearson_and_spearman": 0.8}]
    assert calibration.calibrate(results)["regression"] is True


def test_split_rows_is_disjoint_seeded_and_complete():
    cal, test = calibration.split_rows(101, 0.5, seed=3)
    assert len(cal) == 50 and len(test) == 51  # round(50.5) = 50
    assert not set(cal) & set(test) and sorted([*cal, *test]) == list(range(101))
    again = calibration.split_rows(101, 0.5, seed=3)
    np.testing.assert_array_equal(again[0], cal)
    assert not np.array_equal(calibration.split_rows(101, 0.5, seed=4)[0], cal)
    with pytest.raises(ValueError, match="fraction"):
        calibration.split_rows(10, 1.0)


def test_ltt_calibration_scored_on_other_rows():
    rng = np.random.default_rng(0)
    n = 1200
    final = rng.integers(0, 2, n)
    margin = rng.uniform(0, 4, n)
    first = np.where(rng.random(n) > 0.3 * np.exp(-margin), final, 1 - final)
    logits = np.zeros((2, n, 2), np.float32)
    logits[0, np.arange(n), first] = margin
    logits[1, np.arange(n), final] = 5.0
    cal, test = calibration.split_rows(n, 0.5, seed=0)
    chosen = calibration.calibrate_outputs(logits[:, cal], target="consistency", eps=0.05, delta=0.1)
    assert chosen["rule"] == "ltt" and chosen["num_examples"] == len(cal)
    assert chosen["default"] is not None
    accuracy = lambda z: float((np.asarray(z).argmax(-1) == final[test]).mean())
    scored = calibration.score(chosen, logits[:, test], accuracy, metric="accuracy")
    name = chosen["default"]["criterion"]
    # an independent replay of the chosen threshold on the test rows
    threshold = chosen["criteria"][name]["threshold"]
    assert name in ("entropy", "normalized_entropy", "max_prob")
    p = np.exp(logits[0, test]) / np.exp(logits[0, test]).sum(-1, keepdims=True)
    entropy = -(p * np.log(p)).sum(-1)
    stat = {"entropy": entropy < threshold, "normalized_entropy": entropy / np.log(2) < threshold}
    stat["max_prob"] = p.max(-1) >= threshold
    early = stat[name]
    answers = np.where(early, logits[0, test].argmax(-1), final[test])
    assert scored["criteria"][name]["mean_layers"] == pytest.approx(2 - early.mean(), abs=1e-6)
    assert scored["criteria"][name]["consistency"] == pytest.approx((answers == final[test]).mean(), abs=1e-6)
    assert scored["full_depth_metric"] == 1.0
    assert "read on" in calibration.summary({**chosen, "test": scored, "metric": "accuracy"})
    with pytest.raises(ValueError, match="needs labels"):
        calibration.calibrate_outputs(logits[:, cal], target="risk")


def _eval(args, timeout=600):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "rome_jax.commands.eval", *args], capture_output=True, text=True, timeout=timeout
    )


def test_eval_calibrates_on_one_part_and_reports_on_the_other(minilm_path, glue_dir, tmp_path):
    """eval.py --calibrate=ltt: a seeded half of the rows calibrates, the other half is
    scored (disjoint, recorded); the choice and every figure recomputed independently
    from the saved per-example exit outputs. Then an unlabelled calibration file."""
    import rome_jax

    model = rome_jax.load_pretrained(minilm_path, num_labels=2)
    model.save_pretrained(str(tmp_path / "m"))
    common = [
        f"--model={tmp_path / 'm'}",
        "--task=sst2",
        f"--data_dir={glue_dir}",
        "--max_examples=64",
        "--no_timing",
        "--max_length=64",
        "--sweeps=entropy:0,0.69;patience:1,2",
    ]
    proc = _eval([*common, "--calibrate=ltt", "--eps=0.3", "--calibration_seed=3", f"--output_dir={tmp_path / 'a'}"])
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    chosen = results["calibration"]
    cal_ids, scored_ids = chosen["rows"]["row_ids"], results["scored_rows"]["row_ids"]
    assert len(cal_ids) == len(scored_ids) == 32 and results["num_examples"] == 32
    assert sorted(cal_ids + scored_ids) == list(range(64))
    expected_cal, expected_scored = calibration.split_rows(64, 0.5, seed=3)
    assert cal_ids == expected_cal.tolist() and scored_ids == expected_scored.tolist()
    with np.load(tmp_path / "a" / "exit_logits.npz") as saved:
        logits, labels = saved["dev/logits"], saved["dev/labels"]
        np.testing.assert_array_equal(saved["dev/row_ids"], np.arange(64))
    assert logits.shape == (6, 64, 2)
    signals = evaluation.signal_rows(
        evaluation.load_exit_signals(str(tmp_path / "a" / "exit_logits.npz"), "dev"), cal_ids
    )
    names = [*guarantee.CLASSIFICATION_CRITERIA, "saturation"]  # every criterion that applies (no gates fitted)
    again = calibration.calibrate_outputs(
        logits[:, cal_ids], target="consistency", eps=0.3, delta=0.1, criteria=names, signals=signals
    )
    assert chosen["criteria"] == again["criteria"] and chosen["default"] == again["default"]
    final_accuracy = float((logits[-1, scored_ids].argmax(-1) == labels[scored_ids]).mean())
    assert results["per_exit"][-1]["accuracy"] == pytest.approx(final_accuracy)
    assert chosen["test"]["full_depth_metric"] == pytest.approx(final_accuracy)
    if chosen["default"] is None:
        assert "no threshold saves layers" in proc.stdout
    assert "read on 32 others" in proc.stdout

    unlabelled = tmp_path / "traffic.jsonl"
    unlabelled.write_text("".join(json.dumps({"sentence": s}) + "\n" for s in ["a gem", "dull", "fine", "bad"] * 10))
    proc = _eval([*common, "--calibrate=ltt", f"--calibration_file={unlabelled}", f"--output_dir={tmp_path / 'b'}"])
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    rows = results["calibration"]["rows"]
    assert rows["source"] == "file" and rows["num_rows"] == 40 and rows["labelled"] is False
    assert results["num_examples"] == 64 and "scored_rows" not in results  # every dev row scored
    proc = _eval(
        [
            *common,
            "--calibrate=ltt",
            "--target=risk",
            f"--calibration_file={unlabelled}",
            f"--output_dir={tmp_path / 'c'}",
        ]
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"eval.py: error: --target=risk needs labels; {unlabelled} has none "
        "(calibrate unlabelled rows with --target=consistency)"
    )


def test_calibration_rows_from_a_file(tmp_path):
    from rome_jax.errors import DataError
    from rome_jax.serving.files import read_calibration_rows

    path = tmp_path / "rows.tsv"
    path.write_text("sentence\tlabel\na gem\t1\ndull\t0\n")
    texts, pairs, labels = read_calibration_rows(str(path), task_columns=("sentence",), label_names=("0", "1"))
    assert texts == ["a gem", "dull"] and pairs is None and labels == [1, 0]
    path.write_text("sentence\na gem\n")
    assert read_calibration_rows(str(path), task_columns=("sentence",))[2] is None  # unlabelled
    path.write_text("sentence\tlabel\na gem\t7\n")
    with pytest.raises(DataError, match=r"rows.tsv, line 2: unknown label '7'"):
        read_calibration_rows(str(path), task_columns=("sentence",), label_names=("negative", "positive"))
    with pytest.raises(DataError, match="no such calibration file"):
        read_calibration_rows(str(tmp_path / "absent.tsv"))


def test_model_calibrate_keeps_a_guaranteed_default_that_predict_uses(minilm_path, tmp_path):
    """MultiExitModel.calibrate on unlabelled texts: the default is the certified criterion
    with the fewest layers, predict ("auto") answers with it, and save/load keep it."""
    import rome_jax

    model = rome_jax.load_pretrained(minilm_path, num_labels=2)
    texts = [f"review number {i}: {'good' if i % 3 else 'bad'} film" for i in range(60)]
    chosen = model.calibrate(texts, eps=0.9, delta=0.1, max_length=32)  # a loose bound: something qualifies
    assert model.calibration is chosen and chosen["rule"] == "ltt" and chosen["rows"]["num_rows"] == 60
    fitting = {n: c["mean_layers"] for n, c in chosen["criteria"].items() if c}
    assert fitting and chosen["default"]["criterion"] == min(fitting, key=fitting.get)
    out = model.predict(texts[:8])
    assert out.criterion == calibration.criterion_of(chosen)
    model.save_pretrained(str(tmp_path / "m"))
    assert rome_jax.load_pretrained(str(tmp_path / "m")).calibration == chosen
    strict = model.calibrate(texts[:10], eps=0.01, delta=0.1, max_length=32)  # 10 rows cannot certify 1%
    assert strict["default"] is None and model.predict(texts[:4]).criterion is None  # full depth
    with pytest.raises(ValueError, match="needs labels"):
        model.calibrate(texts, target="risk", max_length=32)


def test_predict_calibrates_on_an_unlabelled_file(minilm_path, tmp_path):
    import subprocess
    import sys

    import rome_jax

    rome_jax.load_pretrained(minilm_path, num_labels=2).save_pretrained(str(tmp_path / "m"))
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text(
        "".join(json.dumps({"text": f"film {i} was {'fine' if i % 2 else 'dull'}"}) + "\n" for i in range(50))
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rome_jax.commands.predict",
            f"--model={tmp_path / 'm'}",
            f"--input={traffic}",
            f"--calibration_file={traffic}",
            "--eps=0.9",
            "--max_length=32",
            f"--output={tmp_path / 'out.jsonl'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "calibration (consistency eps 0.9, delta 0.1; chosen on 50 rows" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 50 and min(r["exit_layer"] for r in rows) < 6


def test_glue_runner_calibrates_on_a_part_and_scores_the_rest():
    from rome_jax.data.glue import get_task
    from rome_jax.experiments.glue_runner import Setting, calibrate_split

    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 2, n)
    margin = rng.uniform(0, 4, n)
    first = np.where(rng.random(n) > 0.3 * np.exp(-margin), labels, 1 - labels)
    logits = np.zeros((2, n, 2), np.float32)
    logits[0, np.arange(n), first] = margin
    logits[1, np.arange(n), labels] = 5.0
    setting = Setting(calibrate="ltt", eps=0.1, calibration_seed=1)
    chosen, scored = calibrate_split(get_task("sst2"), logits, labels, setting)
    cal = chosen["rows"]["row_ids"]
    assert len(cal) == 200 and not set(cal) & set(scored.tolist()) and len(scored) == 200
    expected = calibration.calibrate_outputs(logits[:, cal], labels[cal], eps=0.1, delta=0.1)
    assert chosen["criteria"] == expected["criteria"] and chosen["default"] is not None
    in_sample, _ = calibrate_split(get_task("sst2"), logits, labels, Setting(calibrate="in_sample"))
    assert in_sample["in_sample"] is True and in_sample["rows"]["num_rows"] == 200
