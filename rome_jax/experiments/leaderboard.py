"""GLUE summary arithmetic and leaderboard submission files.

The GLUE score is the mean of per-task scores, where MRPC and QQP average F1 and
accuracy, STS-B averages Pearson and Spearman, and MNLI averages its matched and
mismatched accuracies (one task, counted once). AX (the diagnostic set) is reported
but not part of the average. Submission files are named as the leaderboard wants
(`SST-2.tsv`, `MNLI-m.tsv`, ...), with an `index` and a `prediction` column.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from rome_jax.data.glue import Task, check_split, get_task
from rome_jax.data.metrics import glue_score
from rome_jax.errors import DataError

# Tasks that make up the GLUE average (AX is diagnostic only).
AVERAGED_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def task_score(task: str | Task, metrics_by_split: Mapping[str, Mapping[str, float]]) -> float:
    """One task's GLUE score (0..1) from its dev metrics, split by split.

    metrics_by_split: dev split name -> metrics dict; MNLI needs both
    `dev_matched` and `dev_mismatched`, and its score is their mean.
    """
    t = get_task(task)
    if not t.dev_splits:
        raise ValueError(f"{t.name} has no dev split: it is scored on the leaderboard only")
    scores = [glue_score(t, metrics_by_split[split]) for split in t.dev_splits if split in metrics_by_split]
    if len(scores) != len(t.dev_splits):
        missing = [s for s in t.dev_splits if s not in metrics_by_split]
        raise ValueError(f"{t.name}: metrics missing for {', '.join(missing)}")
    return float(np.mean(scores))


def glue_average(per_task: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """Per-task scores and their mean over the GLUE tasks present.

    per_task: task -> dev split -> metrics. Returns {"scores": {task: score},
    "average": mean over the averaged tasks present, "complete": all nine present}.
    Tasks without a dev split (AX) are left out.
    """
    scores = {get_task(t).name: task_score(t, m) for t, m in per_task.items() if get_task(t).dev_splits}
    counted = [scores[t] for t in AVERAGED_TASKS if t in scores]
    return {
        "scores": scores,
        "average": float(np.mean(counted)) if counted else float("nan"),
        "complete": all(t in scores for t in AVERAGED_TASKS),
    }


def format_predictions(task: str | Task, predictions: np.ndarray) -> list[str]:
    """Leaderboard strings: label names where the task uses names (MNLI, RTE,
    QNLI, AX), the label id otherwise, STS-B scores clipped to 0..5.

    predictions: [N] class ids, or [N] / [N, 1] scores for STS-B. An id outside
    0..num_labels-1 or a non-finite score is a DataError (the leaderboard would
    score a wrapped-around label or reject the file).
    """
    t = get_task(task)
    predictions = np.asarray(predictions)
    if t.is_regression:
        scores = predictions.reshape(-1).astype(np.float64)
        if not np.isfinite(scores).all():
            row = int(np.flatnonzero(~np.isfinite(scores))[0])
            raise DataError(f"{t.name}: prediction {scores[row]} of row {row} is not a finite score")
        return [f"{v:.3f}" for v in np.clip(scores, 0.0, 5.0)]
    ids = predictions.reshape(-1)
    valid = np.isfinite(ids) & (ids == np.round(ids)) & (ids >= 0) & (ids < t.num_labels)
    if not valid.all():
        row = int(np.flatnonzero(~valid)[0])
        raise DataError(
            f"{t.name}: prediction {ids[row].item()!r} of row {row} is not a class id in 0..{t.num_labels - 1}"
        )
    names = t.label_names or ()  # a classification task's
    uses_names = not all(n.isdigit() for n in names)
    return [names[int(i)] if uses_names else str(int(i)) for i in ids]


def write_submission(
    task: str | Task, split: str, index: Sequence[int] | np.ndarray, predictions: np.ndarray, out_dir: str
) -> str:
    """Writes `<leaderboard name>.tsv` (`index`, `prediction`) and returns its path.

    split: one of the task's test splits ("test", MNLI's "test_matched" /
      "test_mismatched"); the leaderboard scores nothing else.
    """
    t = get_task(task)
    split = check_split(t, split)
    if split not in t.test_splits:
        raise DataError(
            f"{t.name}/{split}: leaderboard files hold test predictions (test splits: {', '.join(t.test_splits)})"
        )
    rows = format_predictions(t.name, predictions)
    if len(rows) != len(index):
        raise ValueError(f"{t.name}/{split}: {len(index)} indices but {len(rows)} predictions")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{t.leaderboard_name(split)}.tsv")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("index\tprediction\n")
        for i, p in zip(index, rows):
            f.write(f"{int(i)}\t{p}\n")
    os.replace(tmp, path)
    return path
