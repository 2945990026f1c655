"""A run's stages: how many steps each runs, with which step settings and optimizer.

Every mode trains in one stage but DeeBERT and FastBERT, which train in two: stage 2
with a fresh optimizer and schedule (peak rate `learning_rate x train.stage2_lr_scale`),
its steps counted on from stage 1's (stage 2's first step is stage 1's last + 1).

stages = plan_stages(config, steps_per_epoch, regression)
tx, schedule = make_stage_optimizer(config, stage, params)
if is_eval_step(config, stage, step): ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections
import optax

from rome_jax.config.choices import TWO_STAGE_MODES
from rome_jax.training.optim import learning_rate_schedule, make_optimizer
from rome_jax.training.step import Params, StepSettings


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run: steps `first_step + 1 ... last_step` (global numbers)."""

    number: int  # 1 or 2
    settings: StepSettings
    first_step: int
    num_steps: int
    steps_per_epoch: int
    last_of_run: bool

    @property
    def last_step(self) -> int:
        return self.first_step + self.num_steps


def step_settings(config: ml_collections.ConfigDict, stage: int, regression: bool) -> StepSettings:
    """The train step's settings in stage `stage` (1 or 2), from the config's train.* keys."""
    t = config.train
    return StepSettings(
        mode=t.mode,
        stage=stage,
        gamma=t.gamma,
        temperature=t.temperature,
        kl_reduction=t.kl_reduction,
        anchor=t.anchor,
        gr_scope=t.gr_scope,
        gr_granularity=t.gr_granularity,
        gr_symmetric=t.gr_symmetric,
        regression=regression,
        grad_accum_steps=t.grad_accum_steps,
        stage2_clip=t.stage2_clip,
    )


def plan_stages(
    config: ml_collections.ConfigDict, steps_per_epoch: int | Sequence[int], regression: bool
) -> list[Stage]:
    """The run's stages: steps per stage = epochs x batches per epoch, capped by max_steps.

    `steps_per_epoch`: one number, or one per stage (FastBERT's stage 2 may read
    other, unlabeled data).
    """
    t = config.train
    epochs = [t.num_epochs] + ([t.stage2_epochs or t.num_epochs] if t.mode in TWO_STAGE_MODES else [])
    per_stage = [steps_per_epoch] * 2 if isinstance(steps_per_epoch, int) else list(steps_per_epoch)
    stages, first = [], 0
    for number, n_epochs in enumerate(epochs, start=1):
        steps_per_epoch = per_stage[number - 1]
        steps = n_epochs * steps_per_epoch
        if t.max_steps:
            steps = min(steps, t.max_steps)
        stages.append(
            Stage(
                number, step_settings(config, number, regression), first, steps, steps_per_epoch, number == len(epochs)
            )
        )
        first += steps
    return stages


def make_stage_optimizer(
    config: ml_collections.ConfigDict, stage: Stage, params: Params
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, learning-rate schedule) of `stage`: warmup over train.warmup_ratio of
    its steps, then linear decay to 0 at its last step; the schedule counts the stage's
    steps from 0."""
    t = config.train
    warmup = int(t.warmup_ratio * stage.num_steps)
    peak = t.learning_rate * (t.stage2_lr_scale if stage.number == 2 else 1.0)
    tx = make_optimizer(
        peak,
        stage.num_steps,
        warmup_steps=warmup,
        weight_decay=t.weight_decay,
        eps=t.adam_eps,
        clip_norm=t.clip_norm,
        bias_correction=t.adam_bias_correction,
        params=params,
    )
    return tx, learning_rate_schedule(peak, stage.num_steps, warmup)


def is_eval_step(config: ml_collections.ConfigDict, stage: Stage, step: int) -> bool:
    """Whether the dev splits are evaluated after global step `step`: every
    train.eval_every steps (0: at the end of every epoch) and at the stage's last step."""
    if step == stage.last_step:
        return True
    if config.train.eval_every:
        return step % config.train.eval_every == 0
    return (step - stage.first_step) % stage.steps_per_epoch == 0
