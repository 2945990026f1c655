"""The GLUE benchmark in one command: train, evaluate and predict every task present.

Per task, in `<workdir>/<task>/`: `python -m rome_jax.commands.train` (train.py)
with `configs/glue.py:TASK[,MODE]` (resuming if interrupted), then the best checkpoint is evaluated on the dev
split(s) at the final exit and with the chosen early-exit criterion, and the test
split(s) are predicted with that criterion into leaderboard files
(`<workdir>/submission/*.tsv`; AX with the MNLI model). Each finished task leaves
`benchmark.json`; a re-run skips finished tasks. Tasks whose files are absent are
listed as skipped. `summary.json` and `summary.md` hold the per-task figures and
the GLUE averages at the final exit and at the early-exit setting.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rome_jax import files, programs
from rome_jax.config import run_config
from rome_jax.data import Features, load_examples, tokenize_examples
from rome_jax.data.buckets import LengthBuckets
from rome_jax.data.glue import Task, get_task
from rome_jax.data.metrics import compute_metrics, primary_metric
from rome_jax.encoder import flops
from rome_jax.encoder.config import ModelConfig
from rome_jax.errors import DataError, RomeError
from rome_jax.exits import calibration, evaluation, outputs
from rome_jax.exits import criteria as exits
from rome_jax.experiments import leaderboard
from rome_jax.serving.api import load_tokenizer
from rome_jax.training.checkpoints import load_params

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
DEFAULT_CONFIG = "configs/glue.py"


@dataclasses.dataclass(frozen=True)
class Setting:
    """The early-exit setting used for the summary and the submission files."""

    criterion: str = "entropy"
    threshold: float = 0.1
    regression_criterion: str = "patience"  # STS-B cannot exit by entropy
    regression_threshold: float = 6.0
    calibrate: str | None = None
    """"ltt" or "in_sample": per task, the threshold is chosen on a seeded random
    `calibration_fraction` of the first dev split instead, and that split's dev figures
    are read on the other rows (`rome_jax.exits.calibration`): Learn-then-Test
    (`target`, `eps`, `delta`), or the fewest mean layers within `calibrate_points`
    percentage points of the final exit."""
    calibrate_points: float = 0.5
    target: str = "consistency"
    eps: float = 0.02
    delta: float = 0.1
    calibration_fraction: float = 0.5
    calibration_seed: int = 0

    def for_task(self, task: Task) -> exits.Criterion:
        if task.is_regression:
            return exits.Criterion(self.regression_criterion, self.regression_threshold, regression=True)
        return exits.Criterion(self.criterion, self.threshold)


def missing_data(task: Task, data_dir: str, source: str) -> str | None:
    """None when the task's training and (first) dev files can be read, else why
    not (one line): training selects its best checkpoint on dev."""
    for split in (task.train_splits[0], task.dev_splits[0]):
        try:
            load_examples(task.name, split, source=source, data_dir=data_dir or None, max_examples=1)
        except RomeError as e:
            return str(e)
    return None


def predict(config: Any, params: Any, features: Features, criterion: exits.Criterion, batch_size: int = 64) -> dict:
    """Early-exit predictions of a split with the per-example batched executor, every
    batch padded to `max_length` (`exits.outputs.early_exits`, one bucket).

    Returns {"logits" [N, C], "predictions" [N] (ids, or scores for regression),
    "exit_index" [N], "mean_layers", "layer_speedup", "flops_speedup"}.
    """
    exit_index, logits = outputs.early_exits(
        config, params, features, criterion, batch_size=batch_size, buckets=LengthBuckets.none(features.max_length)
    )
    predictions = logits[:, 0] if config.num_labels == 1 else logits.argmax(-1)
    mean_layers = float(np.mean(exit_index + 1))
    return {
        "logits": logits,
        "predictions": predictions,
        "exit_index": exit_index,
        "mean_layers": mean_layers,
        "layer_speedup": config.num_layers / mean_layers,
        "flops_speedup": float(flops.flops_speedup(config, features.max_length, exit_index)),
    }


def calibrate_on_dev(task: Task, logits: np.ndarray, labels: np.ndarray, points: float) -> dict:
    """`rome_jax.exits.calibration.choose_thresholds` on every exit's dev logits [E, N, C]:
    the default sweeps (`evaluation.default_sweeps`) simulated, no timing."""
    num_layers, regression = logits.shape[0], logits.shape[-1] == 1
    metric = primary_metric(task.name)
    rows = []
    for name, thresholds in evaluation.default_sweeps(num_layers).items():
        if regression and name in ("entropy", "max_prob", "normalized_entropy"):
            continue
        for threshold in thresholds:
            criterion = exits.Criterion(name, float(threshold), regression=regression)
            exit_index, chosen = (np.asarray(x) for x in exits.simulate(criterion, logits))
            rows.append(
                {
                    "criterion": name,
                    "threshold": float(threshold),
                    **compute_metrics(task.name, chosen, labels),
                    "mean_layers": float(np.mean(exit_index + 1)),
                }
            )
    full = compute_metrics(task.name, logits[-1], labels)[metric]
    return calibration.choose_thresholds(
        rows, full, metric=metric, points=points, num_layers=num_layers, regression=regression
    )


def calibrate_split(task: Task, logits: np.ndarray, labels: np.ndarray, setting: Setting) -> tuple[dict, np.ndarray]:
    """The calibration chosen on a seeded random part of a dev split, and the rows left to
    score it on. logits [E, N, C]; labels [N]. -> (calibration with its `rows`, rows [M])."""
    cal, scored = calibration.split_rows(len(labels), setting.calibration_fraction, setting.calibration_seed)
    if setting.calibrate == "ltt":
        chosen = calibration.calibrate_outputs(
            logits[:, cal],
            labels[cal],
            target=setting.target,
            eps=setting.eps,
            delta=setting.delta,
            regression=task.is_regression,
        )
    elif setting.calibrate == "in_sample":
        chosen = calibrate_on_dev(task, logits[:, cal], labels[cal], setting.calibrate_points)
    else:
        raise ValueError(f"unknown calibration rule {setting.calibrate!r}; known: ltt, in_sample")
    chosen["rows"] = {
        "source": "split",
        "fraction": setting.calibration_fraction,
        "seed": setting.calibration_seed,
        "num_rows": int(len(cal)),
        "row_ids": [int(i) for i in cal],
    }
    return chosen, scored


def train_command(task: str, workdir: Path, config: str, mode: str | None, overrides: Sequence[str]) -> list[str]:
    """`python -m rome_jax.commands.train --config=CONFIG:TASK[,MODE] --workdir=... --config.KEY=VALUE...`"""
    spec = run_config.task_mode_spec(config, task, mode)
    return [
        *programs.command("train"),
        f"--config={spec}",
        f"--workdir={workdir}",
        *[f"--config.{o}" for o in overrides],
    ]


def evaluate_task(task: Task, workdir: Path, setting: Setting, submission_dir: Path, ax_too: bool) -> dict:
    """Dev metrics (final exit and early exit) and test predictions of a trained task."""
    config = run_config.read_workdir_config(workdir)
    model_config = ModelConfig.from_json_file(
        str(workdir / "model" / "config.json"),
        num_labels=task.num_labels,
        dtype=config.model.dtype,
        attention_kernel=config.model.attention,
    )
    step, params = load_params(workdir, "best")
    tokenizer = load_tokenizer(str(workdir / "tokenizer"))
    criterion = setting.for_task(task)
    data = dict(source=config.data.source, data_dir=config.data.dir or None)
    record: dict = {
        "task": task.name,
        "step": step,
        "criterion": criterion.name,
        "threshold": criterion.threshold,
        "dev": {},
        "test": {},
    }
    for split in task.dev_splits:
        features = tokenize_examples(load_examples(task.name, split, **data), tokenizer, config.data.max_length)
        logits = outputs.all_exit_logits(
            model_config, params, features, batch_size=64, buckets=LengthBuckets.none(features.max_length)
        )
        labels = np.asarray(features.labels)
        scored = np.arange(len(features))
        if setting.calibrate is not None and split == task.dev_splits[0]:
            chosen, scored = calibrate_split(task, logits, labels, setting)
            chosen.update(task=task.name, split=split, max_length=config.data.max_length)
            calibration.write(workdir / calibration.RUN_FILE_NAME, chosen)
            record["calibration"] = chosen
            if chosen["default"] is not None:
                criterion = calibration.criterion_of(chosen, num_labels=task.num_labels)
                record.update(criterion=criterion.name, threshold=criterion.threshold)
            else:
                record.update(criterion="none", threshold=None)
        early = predict(model_config, params, features.subset(scored), criterion)
        record["dev"][split] = {
            "final": compute_metrics(task.name, logits[-1][scored], labels[scored]),
            "early": compute_metrics(task.name, early["logits"], labels[scored]),
            **{k: early[k] for k in ("mean_layers", "layer_speedup", "flops_speedup")},
            "rows": int(len(scored)),
        }
    tests = [(task, s) for s in task.test_splits]
    if ax_too:
        tests.append((get_task("ax"), "test"))
    for test_task, split in tests:
        try:
            examples = load_examples(test_task.name, split, **data)
        except DataError as e:
            record["test"][f"{test_task.name}/{split}"] = {"skipped": str(e)}
            continue
        features = tokenize_examples(examples, tokenizer, config.data.max_length)
        out = predict(model_config, params, features, criterion)
        path = leaderboard.write_submission(
            test_task.name, split, features.index, out["predictions"], str(submission_dir)
        )
        record["test"][f"{test_task.name}/{split}"] = {
            "file": os.path.relpath(path, workdir.parent),
            "rows": len(features),
            **{k: out[k] for k in ("mean_layers", "layer_speedup", "flops_speedup")},
        }
    return record


def summarize(records: dict[str, dict], skipped: dict[str, str]) -> dict:
    """summary.json: per-task dev figures and GLUE averages at the final and early exit."""
    final = {t: {s: r["dev"][s]["final"] for s in r["dev"]} for t, r in records.items()}
    early = {t: {s: r["dev"][s]["early"] for s in r["dev"]} for t, r in records.items()}
    avg_final, avg_early = leaderboard.glue_average(final), leaderboard.glue_average(early)
    tasks = {}
    for t, r in records.items():
        speedups = [r["dev"][s]["layer_speedup"] for s in r["dev"]]
        tasks[t] = {
            "final_score": avg_final["scores"][t],
            "early_score": avg_early["scores"][t],
            "layer_speedup": float(np.mean(speedups)),
            "criterion": r["criterion"],
            "threshold": r["threshold"],
            **({"calibration": calibration.describe(r["calibration"])} if "calibration" in r else {}),
            "dev": r["dev"],
            "test": r["test"],
        }
    return {
        "tasks": tasks,
        "skipped": skipped,
        "glue_average_final": avg_final["average"],
        "glue_average_early": avg_early["average"],
        "complete": avg_final["complete"],
    }


def summary_markdown(summary: dict) -> str:
    lines = [
        "# GLUE summary (dev)",
        "",
        "Scores are GLUE's per-task numbers (x100): MRPC/QQP mean of F1 and accuracy, "
        "STS-B mean of Pearson and Spearman, MNLI mean of matched and mismatched.",
        "",
        "| task | final exit | early exit | criterion | layer speed-up |",
        "|---|---|---|---|---|",
    ]
    for t, r in summary["tasks"].items():
        chosen = "full depth" if r["threshold"] is None else f"{r['criterion']} {r['threshold']:g}"
        lines.append(
            f"| {t} | {100 * r['final_score']:.1f} | {100 * r['early_score']:.1f} | "
            f"{chosen} | {r['layer_speedup']:.2f}x |"
        )
    lines.append(
        f"| **average** | **{100 * summary['glue_average_final']:.1f}** | "
        f"**{100 * summary['glue_average_early']:.1f}** | | |"
    )
    calibrated = {t: r["calibration"] for t, r in summary["tasks"].items() if "calibration" in r}
    if calibrated:
        rules = sorted(set(calibrated.values()))
        lines += [
            "",
            f"Thresholds chosen per task ({'; '.join(rules)}) on a random part of the first dev split; "
            "that split's figures above are read on its other rows.",
        ]
    if not summary["complete"]:
        lines += ["", "Not all nine tasks are present: the average is over those shown."]
    if summary["skipped"]:
        lines += ["", "Skipped (data absent):", ""]
        lines += [f"- {t}: {why}" for t, why in summary["skipped"].items()]
    tests = [(k, v) for r in summary["tasks"].values() for k, v in r["test"].items() if "file" in v]
    if tests:
        lines += [
            "",
            "Test predictions (leaderboard files):",
            "",
            "| test set | file | rows | mean layers |",
            "|---|---|---|---|",
        ]
        lines += [f"| {k} | {v['file']} | {v['rows']} | {v['mean_layers']:.2f} |" for k, v in tests]
    return "\n".join(lines) + "\n"


def run(
    workdir: str,
    *,
    tasks: Sequence[str] = GLUE_TASKS,
    config: str = DEFAULT_CONFIG,
    mode: str | None = None,
    overrides: Sequence[str] = (),
    setting: Setting = Setting(),
    data_dir: str | None = None,
    source: str = "dir",
    log: Callable[[str], None] = print,
) -> dict:
    """Trains and evaluates every task present; writes summary.json and summary.md.

    `config` is found by `run_config.find_config_file` (the current directory, then
    the source checkout beside the package); training runs as `train_command`.
    """
    config = run_config.find_config_file(config)
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir if data_dir is not None else os.environ.get("GLUE_DIR", "")
    overrides = [f"data.dir={data_dir}", f"data.source={source}", *overrides]
    records, skipped = {}, {}
    for name in tasks:
        task = get_task(name)
        why = missing_data(task, data_dir, source)
        if why:
            skipped[task.name] = why
            log(f"{task.name}: skipped ({why})")
            continue
        task_dir = root / task.name
        done = task_dir / "benchmark.json"
        if done.is_file():
            log(f"{task.name}: finished earlier, reusing {done}")
            records[task.name] = json.loads(done.read_text())
            continue
        log(f"{task.name}: training in {task_dir}")
        proc = subprocess.run(train_command(task.name, task_dir, config, mode, overrides), env=programs.child_env())
        if proc.returncode != 0:
            raise RomeError(
                f"{task.name}: train.py exited with status {proc.returncode}; re-run to resume (see {task_dir})"
            )
        log(f"{task.name}: evaluating and predicting the test set")
        record = evaluate_task(task, task_dir, setting, root / "submission", ax_too=task.name == "mnli")
        files.write_json(done, record)
        records[task.name] = record
    summary = summarize(records, skipped)
    files.write_json(root / "summary.json", summary)
    (root / "summary.md").write_text(summary_markdown(summary))
    return summary
