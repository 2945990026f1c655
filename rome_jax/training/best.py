"""The best-checkpoint rule: which evaluation is the best one, and what a run remembers of it.

"Best": the highest primary metric of the final exit (`score_key`) on the task's
first dev split (`scored_split`; MNLI: dev_matched), ties going to the later step.
In two-stage modes (DeeBERT, FastBERT) stage 1 leaves the intermediate exits
untrained, so only stage 2's evaluations compete (its final exit is frozen, so the
last one wins); stage 1's own best (`stage1_best`, where `train.stage2_start="best"`
starts stage 2) keeps the first of equal scores, as FastBERT's script does. The best
checkpoint (and stage 1's, where stage 2 starts from it) is kept past retention
(`Evaluations.kept_steps`).

evals = Evaluations()
evals = record_evaluation(evals, records, run, step=step, stage=stage)  # after each evaluation
"""

from __future__ import annotations

import dataclasses

from rome_jax.data.glue import Task
from rome_jax.training.setup import Run
from rome_jax.training.stages import Stage


@dataclasses.dataclass(frozen=True)
class Evaluations:
    """The evaluations a run remembers (and its checkpoints' meta holds).

    best: {"step", "score", "metric", "split"} of the best checkpoint (see the module doc);
    stage1_best: {"step", "score", "metric"} of stage 1's best evaluation in two-stage
    runs (where `train.stage2_start="best"` starts stage 2); last: the latest
    evaluation's records, by split.
    """

    best: dict | None = None
    stage1_best: dict | None = None
    last: dict | None = None

    def kept_steps(self, stage2_from_best: bool) -> list[int]:
        """The checkpoints retention must keep besides the latest ones."""
        return [b["step"] for b in (self.best, self.stage1_best if stage2_from_best else None) if b]


def scored_split(task: Task) -> str:
    """The dev split whose final-exit score picks the best checkpoint: the task's first."""
    return task.dev_splits[0]


def score_key(num_exits: int, metric: str) -> str:
    """The evaluation record's key of the score: the final exit's primary metric."""
    return f"exit_{num_exits}/{metric}"


def update_best(
    evals: Evaluations, records: dict, *, step: int, stage: Stage, num_stages: int, split: str, metric_key: str
) -> Evaluations:
    """The best-checkpoint rule, after the evaluation `records` (by split) of `step`.

    The score is `records[split][metric_key]` (the final exit's primary metric). In
    two-stage modes stage 1 leaves the intermediate exits untrained, so only stage 2
    evaluations compete for `best` (ties going to the later step); stage 1's best
    keeps the first of equal scores, as FastBERT's script does.
    """
    best, stage1_best = evals.best, evals.stage1_best
    score = records[split].get(metric_key)
    if score is not None and (stage.last_of_run or num_stages == 1) and (best is None or score >= best["score"]):
        best = {"step": step, "score": score, "metric": metric_key, "split": split}
    if (
        score is not None
        and stage.number == 1
        and num_stages > 1
        and (stage1_best is None or score > stage1_best["score"])
    ):
        stage1_best = {"step": step, "score": score, "metric": metric_key}
    return Evaluations(best=best, stage1_best=stage1_best, last=records)


def record_evaluation(evals: Evaluations, records: dict, run: Run, *, step: int, stage: Stage) -> Evaluations:
    """`update_best` with the run's scored split and score key: what the loop calls
    after the evaluation `records` ({split: record}) of `step`."""
    return update_best(
        evals,
        records,
        step=step,
        stage=stage,
        num_stages=len(run.stages),
        split=scored_split(run.task),
        metric_key=score_key(run.num_exits, run.metric),
    )
