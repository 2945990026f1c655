"""Evaluates every exit and the early-exit sweeps of a trained model.

    python eval.py --workdir=runs/demo                  # the run's best checkpoint
    python eval.py --workdir=runs/demo --checkpoint=latest
    python eval.py --model=path/to/hf_dir --task=sst2 --data_dir=$GLUE_DIR

Writes to DIR/eval/ (or --output_dir), per dev split: results.json, results.csv
(the sweep), per_exit.csv, per_exit.png, tradeoff.png (MNLI: one subdirectory per
split), and prints the table. Default sweeps: entropy at DeeBERT's reference
thresholds 0..0.7, max_prob 0.5..0.99, patience 1..8 (those below L - 1), and for
FastBERT runs normalized_entropy 0.1..0.9 (`--sweeps='entropy:0.1,0.2;fixed:3'`).

Length buckets: batches are cut to the smallest of a few sequence lengths that
holds their rows (`--buckets`, by default the run's `data.buckets`, "none" for a
run whose config predates it, and "auto" with --model: 16, 32, 64, ... up to
max_length). Answers are the same up to float rounding; timings and FLOPs then
pay for tokens, not padding. results.json records the buckets and padded_share.

--calibrate=0.5 chooses, on the first split, each criterion's threshold with the
fewest mean layers within 0.5 percentage points of the full-depth metric
(`rome_jax.exits.calibration`): results.json gains `calibration`; it is stored in
WORKDIR/calibration.json and beside the model (WORKDIR/model, when the evaluated
checkpoint is the run's last, or the --model directory) as rome_jax_calibration.json,
which `load_pretrained` reads and `predict` uses by default.

"best" is the checkpoint with the highest final-exit score on the first dev split,
so the dev figures of a run that evaluated more than once are chosen on the set
they are read on; RomeBERT's and DeeBERT's code report their last step
(`--checkpoint=latest`).
"""

if __name__ == "__main__":  # first, before JAX starts: see rome_jax/host_memory.py
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()


import os

from absl import flags

from rome_jax.commands import cli
from rome_jax.encoder.config import ATTENTION_KERNELS, DTYPES
from rome_jax.errors import CheckpointError, ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir (its config and checkpoints).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "best", "With --workdir: best (highest final-exit dev score), latest, or a step."
)
_MODEL = flags.DEFINE_string("model", None, "Instead of --workdir: an HF model directory.")
_TASK = flags.DEFINE_string("task", None, "With --model: the GLUE task.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "GLUE directory (default: the run's, or $GLUE_DIR).")
_SOURCE = flags.DEFINE_string("source", None, "dir, hf or tfds (default: the run's, or dir).")
_SPLITS = flags.DEFINE_list("splits", None, "Splits to evaluate (default: the task's dev splits).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", None, "Default: the run's, or 128 (at most the model's positions).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 0, "Evaluate the first N examples; 0: all.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size of the batched runs.")
_SWEEPS = flags.DEFINE_string(
    "sweeps",
    "",
    "criterion:t1,t2;... (default: entropy, max_prob, patience, and normalized_entropy for FastBERT runs).",
)
_BATCH1 = flags.DEFINE_integer("batch1_examples", 64, "Examples timed at batch 1.")
_BATCHED = flags.DEFINE_integer("batched_examples", 256, "Examples timed batched; 0: all.")
_NO_TIMING = flags.DEFINE_bool("no_timing", False, "Skip the wall-clock measurements.")
_DTYPE = flags.DEFINE_enum("dtype", None, list(DTYPES), "Compute dtype (default: the run's, or float32).")
_ATTENTION = flags.DEFINE_enum(
    "attention",
    None,
    list(ATTENTION_KERNELS),
    "Attention kernel; cudnn: CUDA GPUs, bfloat16 (default: the run's, or xla).",
)
_BUCKETS = flags.DEFINE_string(
    "buckets",
    None,
    "Length buckets: auto (16, 32, 64, ... up to max_length), none (every batch padded "
    "to max_length) or lengths like 16,32,64 (max_length added). Default: the run's data.buckets "
    "(none if its config has no such key), or auto with --model.",
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Default: WORKDIR/eval or MODEL/eval.")
_CALIBRATE = flags.DEFINE_float(
    "calibrate",
    None,
    "Choose early-exit thresholds on the first split: per criterion, the fewest mean "
    "layers whose metric is within this many percentage points of full depth (e.g. 0.5). Written to "
    "results.json (calibration), WORKDIR/calibration.json and the model directory "
    "(rome_jax_calibration.json, which predict uses by default).",
)


def _model_from_workdir(workdir: str):
    from rome_jax.config import run_config
    from rome_jax.data.tasks import task_from_config
    from rome_jax.encoder.config import ModelConfig
    from rome_jax.encoder.params import params_mismatch
    from rome_jax.serving.api import MultiExitModel, load_tokenizer, resolve_model_dir
    from rome_jax.training import checkpoints

    config = run_config.read_workdir_config(workdir)
    task = task_from_config(config)  # a GLUE task, or the run's data.custom task
    step, params = checkpoints.load_params(workdir, _CHECKPOINT.value)
    model_json = os.path.join(workdir, "model", "config.json")
    if not os.path.isfile(model_json):
        model_json = os.path.join(resolve_model_dir(config.model.name_or_path), "config.json")
    model_config = ModelConfig.from_json_file(
        model_json,
        num_labels=task.num_labels,
        dtype=_DTYPE.value or config.model.dtype,
        attention_kernel=_ATTENTION.value or config.model.attention,
        exit_pooling=config.model.exit_pooling,
    )  # keys added since a run was written read as that run's values (read_workdir_config)
    mismatch = params_mismatch(params, model_config)
    if mismatch:
        raise CheckpointError(
            f"checkpoint {os.path.join(workdir, 'checkpoints', str(step))} does not fit "
            f"the model of {model_json} ({task.num_labels} labels): {mismatch}"
        )
    tokenizer = load_tokenizer(os.path.join(workdir, "tokenizer"))
    if tokenizer is None:
        raise CheckpointError(f"{workdir}/tokenizer: no tokenizer files")
    data = {
        "dir": config.data.dir,
        "source": config.data.source,
        "max_length": config.data.max_length,
        "mode": config.train.mode,
        "buckets": config.data.buckets,
        "step": step,
    }
    return MultiExitModel(model_config, params, tokenizer), task, data, f"{workdir} step {step}"


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    if bool(_WORKDIR.value) == bool(_MODEL.value):
        raise ConfigError("give either --workdir (a train.py run) or --model with --task")
    from rome_jax.data import load_examples, tokenize_examples
    from rome_jax.data.buckets import check_spec, length_buckets
    from rome_jax.data.glue import get_task
    from rome_jax.exits import evaluation
    from rome_jax.serving.api import load_pretrained

    if _WORKDIR.value:
        model, task, data, origin = _model_from_workdir(_WORKDIR.value)
        out_dir = _OUTPUT_DIR.value or os.path.join(_WORKDIR.value, "eval")
    else:
        if not _TASK.value:
            raise ConfigError("--model needs --task")
        task = get_task(_TASK.value)
        model = load_pretrained(
            _MODEL.value, task.num_labels, dtype=_DTYPE.value or "float32", attention_kernel=_ATTENTION.value or "xla"
        )
        data = {
            "dir": os.environ.get("GLUE_DIR", ""),
            "source": "dir",
            "max_length": 128,
            "mode": None,
            "buckets": "auto",
        }
        origin = _MODEL.value
        out_dir = _OUTPUT_DIR.value or os.path.join(_MODEL.value, "eval")
    if model.tokenizer is None:
        raise CheckpointError(f"{origin}: no tokenizer")
    data_dir = _DATA_DIR.value if _DATA_DIR.value is not None else data["dir"]
    source = _SOURCE.value or data["source"]
    positions = model.config.max_length
    max_length = _MAX_LENGTH.value or min(data["max_length"], positions)
    if max_length > positions:
        raise ConfigError(f"--max_length {max_length} exceeds the model's {positions} positions ({origin})")
    bucket_spec = _BUCKETS.value if _BUCKETS.value is not None else data["buckets"]
    bucket_source = "--buckets" if _BUCKETS.value is not None else f"{origin}: data.buckets"
    problem = check_spec(bucket_spec)
    if problem:
        raise ConfigError(f"{bucket_source} {problem}")
    try:
        buckets = length_buckets(max_length, bucket_spec)
    except ConfigError as e:  # a length above max_length
        raise ConfigError(str(e).replace("data.buckets", bucket_source, 1)) from None
    try:
        sweeps = (
            evaluation.parse_sweeps(_SWEEPS.value, model.config.num_layers)
            if _SWEEPS.value
            else evaluation.default_sweeps(model.config.num_layers, data["mode"])
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    splits = _SPLITS.value or list(task.dev_splits)
    print(
        f"evaluating {origin} on {task.name} ({', '.join(splits)}), length buckets "
        f"{'none' if buckets.padded else ','.join(map(str, buckets))}",
        flush=True,
    )
    for split in splits:
        examples = load_examples(
            task, split, source=source, data_dir=data_dir or None, max_examples=_MAX_EXAMPLES.value
        )
        features = tokenize_examples(examples, model.tokenizer, max_length)
        results = evaluation.evaluate_split(
            model.config,
            model.params,
            task,
            split,
            features,
            sweeps=sweeps,
            batch_size=_BATCH_SIZE.value,
            batch1_examples=_BATCH1.value,
            batched_examples=_BATCHED.value,
            timing=not _NO_TIMING.value,
            buckets=buckets,
            log=lambda m: print(m, flush=True),
        )
        results["model"] = origin
        if _CALIBRATE.value is not None and split == splits[0]:
            results["calibration"] = _calibrate(results, origin)
        split_dir = out_dir if len(splits) == 1 else os.path.join(out_dir, split)
        paths = evaluation.write_outputs(results, split_dir)
        print(evaluation.format_table(results))
        if "calibration" in results:
            paths += _store_calibration(results["calibration"], data.get("step"))
        print(f"wrote {', '.join(os.path.relpath(p) for p in paths)}", flush=True)
    return 0


def _calibrate(results: dict, origin: str) -> dict:
    """The thresholds chosen on this split (`rome_jax.exits.calibration`), printed."""
    from rome_jax.exits import calibration

    if _CALIBRATE.value < 0:
        raise ConfigError(f"--calibrate {_CALIBRATE.value}: percentage points must be >= 0")
    chosen = calibration.calibrate(results, _CALIBRATE.value)
    chosen["model"] = origin
    print(calibration.summary(chosen), flush=True)
    return chosen


def _store_calibration(chosen: dict, step: int | None) -> list[str]:
    """Writes the calibration beside the model: --model: MODEL/rome_jax_calibration.json;
    --workdir: WORKDIR/calibration.json, and WORKDIR/model/rome_jax_calibration.json
    when the evaluated checkpoint is the run's last (the one model/ holds)."""
    from rome_jax.exits import calibration

    if _MODEL.value:
        path = os.path.join(_MODEL.value, calibration.FILE_NAME)
        calibration.write(path, chosen)
        return [path]
    paths = [os.path.join(_WORKDIR.value, calibration.RUN_FILE_NAME)]
    calibration.write(paths[0], chosen)
    model_dir = os.path.join(_WORKDIR.value, "model")
    if os.path.isfile(os.path.join(model_dir, "config.json")):
        from rome_jax.training.checkpoints import Checkpoints

        store = Checkpoints(os.path.join(_WORKDIR.value, "checkpoints"), read_only=True)
        try:
            steps = store.steps()
        finally:
            store.close()
        if steps and step == steps[-1]:
            paths.append(os.path.join(model_dir, calibration.FILE_NAME))
            calibration.write(paths[-1], chosen)
        else:
            print(
                f"{model_dir} holds the last step ({steps[-1] if steps else '?'}), the thresholds were "
                f"chosen on step {step}: not stored there (--checkpoint=latest calibrates the exported "
                "model)",
                flush=True,
            )
    return paths


def run() -> None:
    """The entry point: `python eval.py`, `python -m rome_jax.commands.eval`."""
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()  # a no-op when the module's first lines did it
    cli.run_main(main)


if __name__ == "__main__":
    run()
