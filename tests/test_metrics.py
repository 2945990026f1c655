"""GLUE metrics against scikit-learn and scipy."""

import subprocess
import sys

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from rome_jax.data.metrics import compute_metrics, glue_score, primary_metric, rankdata
from rome_jax.errors import ConfigError, DataError


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    predictions = np.where(rng.random(200) < 0.7, labels, 1 - labels)
    mrpc = compute_metrics("mrpc", predictions, labels)
    assert set(mrpc) == {"accuracy", "f1", "accuracy_and_f1"}
    assert mrpc["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert mrpc["f1"] == pytest.approx(f1_score(labels, predictions))
    assert mrpc["accuracy_and_f1"] == pytest.approx((mrpc["accuracy"] + mrpc["f1"]) / 2)
    cola = compute_metrics("CoLA", predictions, labels)
    assert cola["matthews_correlation"] == pytest.approx(matthews_corrcoef(labels, predictions))


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[labels]
    predictions = logits.argmax(-1)
    expected = accuracy_score(labels, predictions)
    assert compute_metrics("mnli", logits, labels) == {"accuracy": pytest.approx(expected)}
    assert compute_metrics("matthews_correlation", predictions, labels)["matthews_correlation"] == pytest.approx(
        matthews_corrcoef(labels, predictions)
    )


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    labels = np.round(rng.uniform(0, 5, 150), 1)  # rounding makes ties
    predictions = np.round(labels + rng.normal(0, 1.5, 150), 0)
    metrics = compute_metrics("stsb", predictions[:, None].astype(np.float32), labels)
    assert set(metrics) == {"pearson", "spearman", "pearson_and_spearman"}
    assert metrics["pearson"] == pytest.approx(stats.pearsonr(predictions, labels)[0], abs=1e-6)
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(predictions, labels)[0], abs=1e-9)
    assert metrics["pearson_and_spearman"] == pytest.approx((metrics["pearson"] + metrics["spearman"]) / 2)
    np.testing.assert_allclose(rankdata(predictions), stats.rankdata(predictions))


def test_degenerate_inputs_give_zero():
    labels = np.array([0, 1, 1, 0, 1])
    constant = np.ones(5, int)
    assert compute_metrics("cola", constant, labels)["matthews_correlation"] == 0.0
    assert matthews_corrcoef(labels, constant) == 0.0
    assert compute_metrics("mrpc", np.zeros(5, int), np.zeros(5, int))["f1"] == 0.0
    stsb = compute_metrics("stsb", np.full(5, 2.5), np.arange(5.0))
    assert stsb == {"pearson": 0.0, "spearman": 0.0, "pearson_and_spearman": 0.0}


def test_mask_drops_padding_rows():
    predictions, labels = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 0])
    assert compute_metrics("sst2", predictions, labels)["accuracy"] == 0.5
    assert compute_metrics("sst2", predictions, labels, mask=np.array([1, 1, 0, 0], bool))["accuracy"] == 1.0


def test_primary_metric_and_glue_score():
    assert primary_metric("SST-2") == "accuracy"
    assert primary_metric("mrpc") == primary_metric("qqp") == "accuracy_and_f1"
    assert primary_metric("cola") == "matthews_correlation"
    assert primary_metric("STS-B") == "pearson_and_spearman"
    assert primary_metric("mnli") == primary_metric("rte") == "accuracy"
    assert glue_score("mrpc", {"accuracy": 0.8, "f1": 0.9}) == pytest.approx(0.85)
    assert glue_score("stsb", {"pearson": 0.8, "spearman": 0.7, "pearson_and_spearman": 0.75}) == 0.75
    assert glue_score("rte", {"accuracy": 0.66}) == 0.66
    with pytest.raises(DataError, match="lack 'matthews_correlation'"):
        glue_score("cola", {"accuracy": 0.7})


def test_bad_inputs():
    with pytest.raises(ConfigError, match="unknown metric or task 'bleu'"):
        compute_metrics("bleu", np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="must both be"):
        compute_metrics("accuracy", np.zeros(3), np.zeros(2))


def test_metrics_do_not_import_sklearn_or_scipy():
    code = (
        "import sys, rome_jax.data.metrics as m, numpy as np; m.compute_metrics('stsb', np.arange(3.), "
        "np.arange(3.)); bad = {'sklearn', 'scipy'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mask_of_another_length_is_refused():
    with pytest.raises(ValueError, match=r"mask \(2,\) must be \[N\] like labels \(3,\)"):
        compute_metrics("sst2", np.array([1, 0, 1]), np.array([1, 0, 1]), mask=np.array([True, True]))
