"""Training's own evaluation: every exit's metrics and loss on each dev split, logged.

eval_fn = make_eval_fn(model_config, mesh)
records = evaluate(run, eval_fn, params, step=step, stage=stage, log=log)

Every exit's logits come from `exits.outputs.gathered_exit_logits` (the run's length
buckets, the batch split over the global mesh, each process passing its share of
the rows and receiving all of them); the loss is the training loss's own
`losses.exit_losses`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from rome_jax.data.metrics import compute_metrics
from rome_jax.exits import outputs, tag_scores
from rome_jax.training import losses
from rome_jax.training.step import token_rows

if TYPE_CHECKING:
    from rome_jax.training.metrics_log import MetricsLog
    from rome_jax.training.setup import Run
    from rome_jax.training.stages import Stage

logger = logging.getLogger(__name__)


def exit_metrics(task: Any, logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict:
    """{"exit_i/<metric>": value, "exit_i/loss": value} for every exit (logits [E, N, C],
    labels [N], mask [N]: the rows scored). The loss is the training loss
    (`losses.exit_losses`, float32)."""
    record: dict[str, float] = {}
    keep = np.asarray(mask, bool)
    labels = np.asarray(labels)
    for i, exit_logits in enumerate(np.asarray(logits, np.float64), start=1):
        for name, value in compute_metrics(task, exit_logits, labels, mask=keep).items():
            record[f"exit_{i}/{name}"] = float(value)
    kept = jnp.asarray(np.asarray(logits, np.float32)[:, keep])
    loss = np.asarray(losses.exit_losses(kept, jnp.asarray(labels[keep]), regression=task.is_regression))
    for i, value in enumerate(loss, start=1):
        record[f"exit_{i}/loss"] = float(value)
    return record


def tagging_exit_metrics(task: Any, logits: np.ndarray, sentences: Any, features: Any) -> dict:
    """{"exit_i/entity_f1", "exit_i/entity_precision", "exit_i/entity_recall",
    "exit_i/token_accuracy", "exit_i/loss"} for every exit of a tagger (logits
    [E, N, T, C]; `tag_scores.scores_by_exit` over every word; the loss is the training
    loss over the tagged sub-tokens)."""
    record: dict[str, float] = {}
    for i, got in enumerate(tag_scores.scores_by_exit(logits, sentences, features, task.tag_names), start=1):
        for name in ("f1", "precision", "recall"):
            record[f"exit_{i}/entity_{name}"] = float(got[name])
        record[f"exit_{i}/token_accuracy"] = float(got["token_accuracy"])
    rows, labels, weight = token_rows(jnp.asarray(logits, jnp.float32), jnp.asarray(features.features.labels))
    loss = np.asarray(losses.exit_losses(rows, labels, example_weight=weight))
    for i, value in enumerate(loss, start=1):
        record[f"exit_{i}/loss"] = float(value)
    return record


def make_eval_fn(model_config: Any, mesh: jax.sharding.Mesh) -> Callable:
    """(params, batch) -> every exit's logits [E, B, C] float32, jitted over `mesh`
    (`exits.outputs.mesh_forward`)."""
    return outputs.mesh_forward(model_config, mesh)


def evaluate(run: Run, eval_fn: Any, params: Any, *, step: int, stage: Stage, log: MetricsLog) -> dict:
    """Evaluates every exit on every dev split; writes and returns the records, by split."""
    records = {}
    for split, features in run.dev_features.items():
        logits = outputs.gathered_exit_logits(
            eval_fn, params, features, batch_size=run.config.train.eval_batch_size, buckets=run.buckets, mesh=run.mesh
        )
        labels = np.asarray(features.labels)
        record = {"step": step, "stage": stage.number, "split": split, "num_examples": len(labels)}
        if split in run.dev_tagging:
            sentences, tagging_features = run.dev_tagging[split]
            record.update(tagging_exit_metrics(run.task, logits, sentences, tagging_features))
        else:
            record.update(exit_metrics(run.task, logits, labels, np.ones(len(labels), bool)))
        log.write(record, board_prefix=split)
        logger.info(_format_eval(split, record, run.num_exits, run.metric))
        records[split] = record
    return records


def _format_eval(split: str, record: dict, num_exits: int, metric: str) -> str:
    values = [record.get(f"exit_{i}/{metric}") for i in range(1, num_exits + 1)]
    shown = " ".join(f"{v:.4f}" for v in values if v is not None)
    return f"step {record['step']} {split} {metric} by exit: {shown}"
