"""The workdir: what a run writes there, and `prepare_workdir`, which starts or re-enters it.

The workdir (everything a run writes; eval.py reads it):

    config.json            the resolved config (train.anchor, stage2_epochs, data.source
                           made explicit); a re-run with a different config is refused
                           once the run has saved a checkpoint or a metric
    metrics.jsonl          one JSON object per line: training records
                           {"step", "stage", "split": "train", "epoch", "loss", "loss_A",
                           "loss_B", "exit_loss/i", "gr/*", "grad_norm", "update_norm",
                           "param_norm", "learning_rate"} (means over the steps since the
                           previous record) and evaluation records {"step", "stage",
                           "split": "dev", "num_examples", "exit_i/<metric>", "exit_i/loss"}
                           for every exit i (1-based; the last is the final classifier).
                           No timing fields: the file is a deterministic function of the
                           config, so a resumed run writes exactly the same bytes.
                           (rome_jax/training/metrics_log.py)
    tensorboard/           the same scalars (train/*, dev/*) plus perf/steps_per_sec
    checkpoints/<step>/    orbax: state (params, opt_state, step, rng) and meta (stage,
                           data iterator position, metrics.jsonl length, the partial
                           logging window, the best evaluation so far); the latest
                           train.keep_checkpoints steps and the best one are kept
                           (and stage 1's best, with train.stage2_start="best").
                           (rome_jax/training/checkpoints.py, resume.py)
                           "Best": the highest primary metric of the final exit on the
                           task's first dev split (MNLI: dev_matched), ties going to the
                           later step; in two-stage modes only stage 2's evaluations
                           compete (its final exit is frozen, so the last one wins).
                           (rome_jax/training/best.py)
    tokenizer/             the tokenizer's files (written once, at the start)
    model/                 the final model: an HF directory with every exit
                           (`MultiExitModel.save_pretrained`), written at the end
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import ml_collections

from rome_jax import files
from rome_jax.config import run_config
from rome_jax.errors import ConfigError

logger = logging.getLogger(__name__)

WORKDIR_ENTRIES = (
    "config.json",
    "metrics.jsonl",
    "tensorboard",
    "checkpoints",
    "tokenizer",
    "model",
    "eval",
    "calibration.json",
)
"""What a run writes in its workdir, with eval.py's default output and calibration (`overwrite=True`
deletes them: eval results of a deleted run would describe a model no longer there)."""


def delete_run(workdir: Path) -> None:
    """Deletes what a run wrote in `workdir` (`WORKDIR_ENTRIES`, nothing else)."""
    for name in WORKDIR_ENTRIES:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def holds_results(workdir: Path) -> bool:
    """Whether a run in `workdir` saved anything: a checkpoint, a metric or a model."""
    checkpoints, metrics = workdir / "checkpoints", workdir / "metrics.jsonl"
    return (
        (checkpoints.is_dir() and any(checkpoints.iterdir()))
        or (metrics.is_file() and metrics.stat().st_size > 0)
        or (workdir / "model").exists()
    )


def prepare_workdir(
    workdir: Path, config: ml_collections.ConfigDict, *, overwrite: bool, is_writer: bool = True
) -> None:
    """Creates the workdir and its config.json, or checks that it holds this config.

    `overwrite` deletes what a previous run wrote there (`WORKDIR_ENTRIES`, nothing
    else) and starts afresh. With `is_writer=False` it only checks (reads).
    """
    stored_path = workdir / "config.json"
    if overwrite and is_writer:
        delete_run(workdir)
    if stored_path.is_file():
        try:
            stored = json.loads(stored_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{stored_path} is not valid JSON ({e}); pass --overwrite to start afresh") from None
        changed = run_config.differences(stored, config.to_dict())
        if changed and not holds_results(workdir):
            # a start that failed before the first checkpoint (a wrong path, a bad
            # file): nothing to lose, so the corrected config simply replaces it
            if is_writer:
                logger.info("workdir %s: replacing the config of a run that saved nothing", workdir)
                delete_run(workdir)
        elif changed:
            shown = "; ".join(changed[:6]) + ("; ..." if len(changed) > 6 else "")
            raise ConfigError(
                f"workdir {workdir} holds a run with a different config ({shown}); "
                "use another --workdir, or --overwrite to delete that run"
            )
    elif (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
        raise ConfigError(f"workdir {workdir} has checkpoints but no config.json; pass --overwrite to delete them")
    if is_writer:
        workdir.mkdir(parents=True, exist_ok=True)
        files.write_text(stored_path, run_config.to_json(config))
