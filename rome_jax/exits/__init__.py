"""Early exit: when to stop, how to run until then, and how to choose a threshold.

- `criteria`: exit criteria as pure functions (`Criterion`, `CRITERIA`, `simulate`);
- `signals`: what lte, saturation and meta read besides the logits (`Signals`: the
  gates' scores, consecutive layers' cosine), computed next to every exit;
- `gates`: the LTE and meta gates: targets, losses, fitting on held-out rows, files;
- `batches`: batches as the executors read them: keys, `check_batch`, padding rows,
  cutting a batch to a length bucket or a row bucket;
- `loop`: the compiled early-exit loop (a `lax.while_loop` over the layers) that
  both compiled executors run;
- `executors`: every exit's logits of a batch, the simulated exit, the
  `lax.while_loop` executor per batch; every executor's public name re-exported;
- `batched`: the per-example executor inside batches (`BatchedEarlyExit`):
  exited examples leave the batch, the rest compacted into smaller buckets;
- `outputs`: every exit's outputs for a whole dataset, in input order, over length
  buckets and the local devices: the one evaluation path;
- `calibration`: choosing a criterion and threshold from dev outputs;
- `evaluation`: eval.py's sweeps, tables and plots;
- `timing`: wall-clock seconds per example of the executors, against full depth;
- taggers (token exits): `tokens` (sentence-level SENTEE and token-level TOKEE exit:
  the rules, the compiled loop, its numpy oracle), `token_flops` (FLOPs per token),
  `tag_scores` (entity F1 per exit, over every word), `tag_sweeps` (eval.py's sweeps
  and Learn-then-Test calibration of a tagger).

May import: `rome_jax.data`, `rome_jax.encoder` and the core modules.

The criteria's names are re-exported here (`from rome_jax.exits import Criterion`).
"""

from rome_jax.exits.criteria import (
    CRITERIA,
    DEFAULT_TOLERANCE,
    SIGNAL_CRITERIA,
    Criterion,
    ExitState,
    Rule,
    Signals,
    check_criterion,
    entropy,
    exit_counts,
    init_state,
    max_prob,
    normalized_entropy,
    simulate,
    simulate_sweep,
    step,
    step_rule,
)

__all__ = [
    "CRITERIA",
    "DEFAULT_TOLERANCE",
    "SIGNAL_CRITERIA",
    "Criterion",
    "ExitState",
    "Rule",
    "Signals",
    "check_criterion",
    "entropy",
    "exit_counts",
    "init_state",
    "max_prob",
    "normalized_entropy",
    "simulate",
    "simulate_sweep",
    "step",
    "step_rule",
]
