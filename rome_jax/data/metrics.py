"""GLUE metrics in numpy: accuracy, F1 (binary, macro), Matthews' correlation, Pearson, Spearman.

All values are in the 0..1 scale (correlations in -1..1), not percent. Degenerate
inputs (a constant prediction or label column) give 0.0 for Matthews' and the
correlations instead of NaN, as scikit-learn does.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rome_jax.data.glue import Task, get_task
from rome_jax.errors import ConfigError, DataError

# Each primary metric and the metrics reported with it.
_FAMILIES = {
    "accuracy": ("accuracy",),
    "f1": ("f1",),
    "f1_macro": ("f1_macro", "accuracy"),
    "matthews_correlation": ("matthews_correlation", "accuracy"),
    "pearson": ("pearson",),
    "spearman": ("spearman",),
    "accuracy_and_f1": ("accuracy", "f1", "accuracy_and_f1"),
    "pearson_and_spearman": ("pearson", "spearman", "pearson_and_spearman"),
}
_MEANS = {"accuracy_and_f1": ("accuracy", "f1"), "pearson_and_spearman": ("pearson", "spearman")}
_REGRESSION = {"pearson", "spearman", "pearson_and_spearman"}
METRIC_NAMES = tuple(_FAMILIES)
REGRESSION_METRICS = frozenset(_REGRESSION)
"""The primary metrics of regression tasks (the others score class ids)."""


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels))


def f1(predictions: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of class `positive`; 0.0 when there are no positives at all."""
    predicted, actual = predictions == positive, labels == positive
    tp = np.sum(predicted & actual)
    denominator = np.sum(predicted) + np.sum(actual)
    return float(2 * tp / denominator) if denominator else 0.0


def f1_macro(predictions: np.ndarray, labels: np.ndarray) -> float:
    """The unweighted mean of each class's F1, over the classes in labels or predictions."""
    classes = np.unique(np.concatenate([np.asarray(labels), np.asarray(predictions)]))
    return float(np.mean([f1(predictions, labels, positive=c) for c in classes]))


def matthews_correlation(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews' correlation for any number of classes (Gorodkin's R_K)."""
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    k, n = len(classes), len(labels)
    confusion = np.zeros((k, k), np.float64)
    np.add.at(confusion, (encoded[:n], encoded[n:]), 1.0)
    true_sum, pred_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    samples = float(n)
    cov_true_pred = np.trace(confusion) * samples - true_sum @ pred_sum
    cov_pred = samples**2 - pred_sum @ pred_sum
    cov_true = samples**2 - true_sum @ true_sum
    if cov_pred * cov_true == 0:
        return 0.0
    return float(cov_true_pred / np.sqrt(cov_true * cov_pred))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; 0.0 when either side is constant."""
    x = np.asarray(x, np.float64) - np.mean(x, dtype=np.float64)
    y = np.asarray(y, np.float64) - np.mean(y, dtype=np.float64)
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    if denominator == 0:
        return 0.0
    return float(np.clip(np.sum(x * y) / denominator, -1.0, 1.0))


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank ([N] float64)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts_group = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(x)] - 1
    ranks = np.empty(len(x), np.float64)
    ranks[order] = ((starts + ends) / 2.0 + 1.0)[group]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average ranks."""
    return pearson(rankdata(x), rankdata(y))


def _resolve(metric_name_or_task: str | Task) -> str:
    if isinstance(metric_name_or_task, str) and metric_name_or_task in _FAMILIES:
        return metric_name_or_task
    try:
        return get_task(metric_name_or_task).metric
    except DataError:
        raise ConfigError(
            f"unknown metric or task {metric_name_or_task!r} (metrics: "
            f"{', '.join(METRIC_NAMES)}; tasks: cola, sst2, mrpc, stsb, qqp, mnli, "
            "qnli, rte, wnli, ax; or a task built from the config)"
        ) from None


def compute_metrics(
    metric_name_or_task: str | Task, predictions: np.ndarray, labels: np.ndarray, *, mask: np.ndarray | None = None
) -> dict[str, float]:
    """The metrics of a task (or one metric family) as plain floats.

    predictions: [N] class ids, [N, C] logits (argmax taken), or [N] / [N, 1]
      scores for regression. labels: [N]. mask: optional [N] bool, rows to keep
      (e.g. a batch's `example_mask`).
    A task gives its primary metric's family: mrpc/qqp -> accuracy, f1,
    accuracy_and_f1; stsb -> pearson, spearman, pearson_and_spearman;
    cola -> matthews_correlation, accuracy; the others -> accuracy.
    """
    primary = _resolve(metric_name_or_task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    regression = primary in _REGRESSION
    if regression and predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    if not regression and predictions.ndim == 2:
        predictions = np.argmax(predictions, axis=-1)
    if predictions.ndim != 1 or labels.shape != predictions.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must both be [N]")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != labels.shape:
            raise ValueError(f"mask {mask.shape} must be [N] like labels {labels.shape}")
        predictions, labels = predictions[mask], labels[mask]
    if len(labels) == 0:
        raise ValueError("no examples to score")

    results: dict[str, float] = {}
    for name in _FAMILIES[primary]:
        if name in _MEANS:
            first, second = _MEANS[name]
            results[name] = (results[first] + results[second]) / 2.0
        else:
            results[name] = _SINGLE[name](predictions, labels)
    return results


_SINGLE = {
    "accuracy": accuracy,
    "f1": f1,
    "f1_macro": f1_macro,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearman": spearman,
}


def primary_metric(task: str | Task) -> str:
    """The metrics key used to rank checkpoints of `task`."""
    return get_task(task).metric


def glue_score(task: str | Task, metrics: Mapping[str, float]) -> float:
    """The single number the GLUE benchmark reports for `task` (0..1 scale).

    The mean of the two metrics for MRPC/QQP (F1, accuracy) and STS-B (Pearson,
    Spearman), the task's metric otherwise.
    """
    name = primary_metric(task)
    if name in metrics:
        return float(metrics[name])
    parts = _MEANS.get(name, ())
    if parts and all(p in metrics for p in parts):
        return float(np.mean([metrics[p] for p in parts]))
    raise DataError(f"metrics of task {get_task(task).name} lack {name!r} (have: {', '.join(metrics) or 'none'})")
