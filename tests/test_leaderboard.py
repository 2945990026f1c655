"""GLUE averaging rules and leaderboard submission files."""

import csv
import warnings

import numpy as np
import pytest

from rome_jax.experiments.leaderboard import format_predictions, glue_average, task_score, write_submission


def test_task_scores_follow_the_glue_rules():
    assert task_score("mrpc", {"dev": {"f1": 0.9, "accuracy": 0.8}}) == pytest.approx(0.85)
    assert task_score("qqp", {"dev": {"f1": 0.7, "accuracy": 0.9}}) == pytest.approx(0.8)
    assert task_score("stsb", {"dev": {"pearson": 0.88, "spearman": 0.86}}) == pytest.approx(0.87)
    assert task_score("cola", {"dev": {"matthews_correlation": 0.5, "accuracy": 0.8}}) == pytest.approx(0.5)
    assert task_score(
        "mnli", {"dev_matched": {"accuracy": 0.84}, "dev_mismatched": {"accuracy": 0.82}}
    ) == pytest.approx(0.83)
    with pytest.raises(ValueError, match="dev_mismatched"):
        task_score("mnli", {"dev_matched": {"accuracy": 0.84}})


def test_glue_average_of_made_up_results():
    per_task = {
        "cola": {"dev": {"matthews_correlation": 0.50}},
        "sst2": {"dev": {"accuracy": 0.90}},
        "mrpc": {"dev": {"f1": 0.90, "accuracy": 0.86}},  # 0.88
        "stsb": {"dev": {"pearson": 0.87, "spearman": 0.85}},  # 0.86
        "qqp": {"dev": {"f1": 0.86, "accuracy": 0.90}},  # 0.88
        "mnli": {"dev_matched": {"accuracy": 0.83}, "dev_mismatched": {"accuracy": 0.85}},  # 0.84
        "qnli": {"dev": {"accuracy": 0.91}},
        "rte": {"dev": {"accuracy": 0.66}},
        "wnli": {"dev": {"accuracy": 0.56}},
    }
    out = glue_average(per_task)
    expected = (0.50 + 0.90 + 0.88 + 0.86 + 0.88 + 0.84 + 0.91 + 0.66 + 0.56) / 9
    assert out["average"] == pytest.approx(expected)
    assert out["complete"] and out["scores"]["mnli"] == pytest.approx(0.84)
    partial = glue_average({"SST-2": per_task["sst2"], "RTE": per_task["rte"]})
    assert partial["average"] == pytest.approx(0.78) and not partial["complete"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # AX (no dev split) was a "Mean of empty slice" warning
        assert glue_average({**per_task, "ax": {}}) == out
    with pytest.raises(ValueError, match="ax has no dev split"):
        task_score("ax", {})


def test_prediction_strings():
    assert format_predictions("rte", np.array([0, 1])) == ["entailment", "not_entailment"]
    assert format_predictions("mnli", np.array([2, 1, 0])) == ["contradiction", "neutral", "entailment"]
    assert format_predictions("ax", np.array([1])) == ["neutral"]
    assert format_predictions("sst2", np.array([1, 0])) == ["1", "0"]
    assert format_predictions("stsb", np.array([[-0.4], [2.345], [7.0]])) == ["0.000", "2.345", "5.000"]


@pytest.mark.parametrize(
    "task,split,name,n_labels",
    [
        ("cola", "test", "CoLA", 2),
        ("sst2", "test", "SST-2", 2),
        ("mrpc", "test", "MRPC", 2),
        ("stsb", "test", "STS-B", 1),
        ("qqp", "test", "QQP", 2),
        ("mnli", "test_matched", "MNLI-m", 3),
        ("mnli", "test_mismatched", "MNLI-mm", 3),
        ("qnli", "test", "QNLI", 2),
        ("rte", "test", "RTE", 2),
        ("wnli", "test", "WNLI", 2),
        ("ax", "test", "AX", 3),
    ],
)
def test_submission_files(tmp_path, task, split, name, n_labels):
    rng = np.random.RandomState(0)
    preds = rng.rand(7) * 6 - 0.5 if n_labels == 1 else rng.randint(0, n_labels, 7)
    path = write_submission(task, split, np.arange(100, 107), preds, str(tmp_path))
    assert path.endswith(f"{name}.tsv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["index", "prediction"] and len(rows) == 8
    assert [int(r[0]) for r in rows[1:]] == list(range(100, 107))
    values = [r[1] for r in rows[1:]]
    if n_labels == 1:
        assert all(0.0 <= float(v) <= 5.0 for v in values)
    elif task in ("mnli", "ax"):
        assert set(values) <= {"entailment", "neutral", "contradiction"}
    elif task in ("rte", "qnli"):
        assert set(values) <= {"entailment", "not_entailment"}
    else:
        assert set(values) <= {"0", "1"}


def test_submission_needs_a_test_split(tmp_path):
    from rome_jax.data.glue import get_task
    from rome_jax.errors import DataError

    # MNLI has no "test": the leaderboard wants MNLI-m.tsv / MNLI-mm.tsv, never MNLI.tsv.
    with pytest.raises(DataError, match="no split 'test' .*test_matched, test_mismatched"):
        write_submission("mnli", "test", [0], np.array([0]), str(tmp_path))
    # Dev predictions would overwrite the test file of the same name.
    with pytest.raises(
        DataError,
        match=r"rte/dev: leaderboard files hold test predictions "
        r"\(test splits: test\)",
    ):
        write_submission("rte", "validation", [0], np.array([0]), str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    path = write_submission("mnli", "test-mismatched", [0], np.array([1]), str(tmp_path))
    assert path.endswith("MNLI-mm.tsv")
    assert get_task("mnli").leaderboard_name("validation_matched") == "MNLI-m"
    with pytest.raises(DataError, match="split 'train' of task sst2 has no leaderboard name"):
        get_task("sst2").leaderboard_name("train")


def test_predictions_that_are_not_labels_are_refused():
    from rome_jax.errors import DataError

    with pytest.raises(DataError, match=r"rte: prediction -1 of row 1 is not a class id in 0..1"):
        format_predictions("rte", np.array([0, -1]))  # was written as "not_entailment"
    with pytest.raises(DataError, match=r"mnli: prediction 3 of row 0 is not a class id in 0..2"):
        format_predictions("mnli", np.array([3]))
    with pytest.raises(DataError, match="not a class id"):
        format_predictions("sst2", np.array([0.5]))
    with pytest.raises(DataError, match="stsb: prediction nan of row 1 is not a finite score"):
        format_predictions("stsb", np.array([1.0, np.nan]))
