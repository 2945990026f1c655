"""The gradient-regularizer ablation: modes x tasks x seeds, evaluated, summarised.

    python scripts/ablation.py --workdir=runs/ablation                       # the CPU grid
    python scripts/ablation.py --workdir=runs/ablation --tasks=sst2 --modes=deebert,romebert --seeds=42,43

Each run is `train.py --config=CONFIG:TASK,MODE` in WORKDIR/TASK/MODE/seedS (resumed
if interrupted) followed by `eval.py` (every exit, the entropy sweep). What a
finished run measured is kept as one JSON record in --records (default
docs/ablation_runs/TASK/MODE/seedS.json, committed with the repository): a run with
a record is reused, not redone, so on a fresh clone the command above rebuilds the
report from the committed records without training anything. A record holds the
run's eval results, training time, steps, how often GR projected, the resolved
config and where it ran (commit, rome_jax tree, jax version, CPU); a record made
with another config file or other overrides is refused rather than reused.

Then --report (default docs/results.md) gets, per task: every exit's dev metric per
mode (mean and spread over seeds; for a composite metric such as MRPC's, each of its
parts too), the metric against layer speed-up for the entropy criterion
(docs/results_<task>.png), the entropy sweep's table, and each mode's training time
relative to `joint` (whole runs: two-stage modes count both stages).

    python scripts/ablation.py --workdir=runs/ablation --reuse_only   # report what is finished

`--reuse_only` trains nothing: the report covers the finished runs and names the
missing ones.

    python scripts/ablation.py --workdir=runs/ablation --exit_pooling=mean --tasks=sst2

trains the grid with mean-pooled exits (`model.exit_pooling=mean`), its runs and
records under TASK/MODE-mean/; the report then shows, per task, the [CLS] grid and
the mean-pooled grid in separate tables (each from the records there are: the grid
not chosen is only reused, and of its runs only the missing seeds of a task and mode
it has runs of are named as missing).
A run resumed after an interruption records its time as partial
(only the last attempt is timed); the report leaves such times out of the ratio.
"""

from pathlib import Path

from absl import flags

from rome_jax.commands import cli
from rome_jax.encoder.config import EXIT_POOLINGS
from rome_jax.errors import ConfigError
from rome_jax.experiments import ablation

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs go.")
_CONFIG = flags.DEFINE_string(
    "config",
    ablation.DEFAULT_CONFIG,
    "Per-run config file (takes TASK,MODE); a relative "
    "path is looked for in the current directory, then in the rome_jax source checkout.",
)
_TASKS = flags.DEFINE_list("tasks", "sst2,mrpc", "GLUE tasks.")
_MODES = flags.DEFINE_list("modes", "deebert,deebert_sd,joint,sd,gr,romebert", "Training modes.")
_SEEDS = flags.DEFINE_list("seeds", "42,43", "Seeds (train.seed).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "A config override KEY=VALUE for every run.")
_REPORT = flags.DEFINE_string("report", "docs/results.md", "The Markdown report to write.")
_GRID_NOTE = flags.DEFINE_string(
    "grid_note",
    "",
    "What grid the report's numbers come from (a sentence; default: the note of the report being rebuilt, if any).",
)
_FINDINGS = flags.DEFINE_string(
    "findings", "docs/ablation_findings.md", "Hand-written Markdown placed after the grid note, if the file exists."
)
_RECORDS = flags.DEFINE_string(
    "records", "docs/ablation_runs", "Where each finished run's record is kept (TASK/MODE/seedS.json)."
)
_REUSE_ONLY = flags.DEFINE_bool("reuse_only", False, "Train nothing: report the finished runs, name the rest.")
_EXIT_POOLING = flags.DEFINE_enum(
    "exit_pooling",
    "cls",
    list(EXIT_POOLINGS),
    "What the exits pool (model.exit_pooling): cls, the papers' design, or mean. "
    "mean runs live under TASK/MODE-mean/ (records and workdirs); the report "
    "shows each pooling's grid in its own tables.",
)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
        raise ConfigError("--workdir is required")
    if any(o.split("=", 1)[0].strip() == "model.exit_pooling" for o in _OVERRIDE.value):
        raise ConfigError(
            "give the exit pooling as --exit_pooling=cls|mean, not --override "
            "(its runs are kept apart, under TASK/MODE-mean/)"
        )
    root = Path(_WORKDIR.value)
    grid = [(task, mode, seed) for task in _TASKS.value for mode in _MODES.value for seed in _SEEDS.value]
    records, missing = [], []
    # The chosen pooling's grid is run; the other's finished runs join the report (reused only).
    for pooling in EXIT_POOLINGS:
        chosen = pooling == _EXIT_POOLING.value
        found, absent = [], []
        for task, mode, seed in grid:
            record = ablation.run_one(
                task,
                mode,
                seed,
                root,
                Path(_RECORDS.value),
                _REUSE_ONLY.value or not chosen,
                config=_CONFIG.value,
                overrides=_OVERRIDE.value,
                exit_pooling=pooling,
            )
            if record is None:
                absent.append((task, mode, seed))
            else:
                found.append(record)
        records += found
        # The other pooling's grid: only the missing seeds of a (task, mode) it has runs of.
        started = {(r["task"], r["mode"]) for r in found}
        missing += [
            f"{task}/{ablation.run_name(mode, pooling)}/seed{seed}"
            for task, mode, seed in absent
            if chosen or (task, mode) in started
        ]
    if not records:
        raise ConfigError(f"{root}, {_RECORDS.value}: no finished runs to report")
    findings_file = Path(_FINDINGS.value)
    findings = findings_file.read_text(encoding="utf-8") if _FINDINGS.value and findings_file.is_file() else ""
    out = Path(_REPORT.value)
    grid_note = _GRID_NOTE.value or ablation.previous_grid_note(out)
    print(ablation.report(records, out, grid_note, missing, findings, _RECORDS.value))
    return 0


def run() -> None:
    """The entry point: `python scripts/ablation.py`, `python -m rome_jax.commands.ablation`."""
    cli.run_main(main)


if __name__ == "__main__":
    run()
