"""Training's own evaluation: every exit's metrics and loss on each dev split, logged.

eval_fn = make_eval_fn(model_config, mesh)
records = evaluate(run, eval_fn, params, step=step, stage=stage, log=log)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from rome_jax.training.trainer import MetricsLog, Run, Stage

logger = logging.getLogger(__name__)


def _fetch(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def exit_metrics(task: Any, logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict:
    """{"exit_i/<metric>": value, "exit_i/loss": value} for every exit (logits [E, N, C])."""
    from rome_jax.data.metrics import compute_metrics

    record: dict[str, float] = {}
    keep = np.asarray(mask, bool)
    for i, exit_logits in enumerate(np.asarray(logits, np.float64), start=1):
        for name, value in compute_metrics(task, exit_logits, labels, mask=keep).items():
            record[f"exit_{i}/{name}"] = float(value)
        record[f"exit_{i}/loss"] = _loss(exit_logits[keep], np.asarray(labels)[keep], task.is_regression)
    return record


def _loss(logits: np.ndarray, labels: np.ndarray, regression: bool) -> float:
    if regression:
        return float(np.mean((logits[:, 0] - labels) ** 2))
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(labels)), labels.astype(np.int64)]))


def _eval_logits(model_config: Any, params: Any, batch: dict):
    from rome_jax.encoder.model import MultiExitEncoder

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    logits = MultiExitEncoder(model_config).apply({"params": params}, **inputs)["logits"]
    return logits.astype(jnp.float32), batch["labels"], batch["example_mask"]


def make_eval_fn(model_config: Any, mesh: jax.sharding.Mesh) -> Callable:
    """(params, batch) -> (logits [E, B, C] f32, labels [B], example_mask [B]), jitted over `mesh`."""
    from rome_jax.training import step as ts

    return jax.jit(
        functools.partial(_eval_logits, model_config),
        in_shardings=(ts.replicated(mesh), ts.batch_sharding(mesh)),
        out_shardings=ts.replicated(mesh),
    )


def evaluate(run: Run, eval_fn: Any, params: Any, *, step: int, stage: Stage, log: MetricsLog) -> dict:
    """Evaluates every exit on every dev split; writes and returns the records, by split."""
    from rome_jax.data import BatchIterator
    from rome_jax.training import step as ts

    records = {}
    for split, features in run.dev_features.items():
        logits, labels, masks = [], [], []
        for batch in BatchIterator(
            features,
            run.config.train.eval_batch_size,
            shuffle=False,
            drop_remainder=False,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            buckets=run.buckets,
        ):
            batch = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels", "example_mask")}
            out = _fetch(eval_fn(params, ts.shard_batch(batch, run.mesh)))
            logits.append(out[0])
            labels.append(out[1])
            masks.append(out[2])
        mask = np.concatenate(masks)
        record = {"step": step, "stage": stage.number, "split": split, "num_examples": int(mask.sum())}
        record.update(exit_metrics(run.task, np.concatenate(logits, axis=1), np.concatenate(labels), mask))
        log.write(record, board_prefix=split)
        logger.info(_format_eval(split, record, run.num_exits, run.metric))
        records[split] = record
    return records


def _format_eval(split: str, record: dict, num_exits: int, metric: str) -> str:
    values = [record.get(f"exit_{i}/{metric}") for i in range(1, num_exits + 1)]
    shown = " ".join(f"{v:.4f}" for v in values if v is not None)
    return f"step {record['step']} {split} {metric} by exit: {shown}"
