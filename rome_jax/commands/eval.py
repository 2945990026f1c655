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

Every exit's outputs per example go to DIR/eval/exit_logits.npz (`<split>/logits`,
`<split>/labels`, `<split>/row_ids`), so calibration, bench/bench_guarantee.py and a
study run without the model.

--calibrate chooses early-exit thresholds on calibration rows and reports them on
rows that did not choose them (`rome_jax.exits.calibration`, docs/methods.md):

    python eval.py --workdir=runs/sst2 --calibrate=ltt --eps=0.02 --delta=0.1
    python eval.py --workdir=runs/sst2 --calibrate=ltt --target=risk --calibration_fraction=0.3
    python eval.py --workdir=runs/sst2 --calibrate=ltt --calibration_file=traffic.jsonl

The calibration rows are a seeded random `--calibration_fraction` of the first split
(default half), or every row of `--calibration_file` (the task's text columns; labels
optional: without them only the consistency target applies), and everything
results.json reports (per exit, the sweeps, the timing, the calibration's `test`
figures) is read on the other rows; results.json records which rows did what.
`--calibrate=ltt` uses Learn-then-Test with a guarantee: with
probability >= 1 - delta the answers differ from full depth on at most eps of new
rows (`--target=consistency`) or the metric drops by at most eps (`--target=risk`).
`--calibrate=0.5` uses the in-sample rule of earlier versions (the fewest layers
within 0.5 percentage points of full depth on the calibration rows; no guarantee),
and with `--calibration_fraction=0` chooses and reports on the same rows, labelled
in-sample. The calibration is stored in WORKDIR/calibration.json and beside the
model (WORKDIR/model, when the evaluated checkpoint is the run's last, or the
--model directory) as rome_jax_calibration.json, which `load_pretrained` reads and
`predict` uses by default.

--fit_gates fits the learned exit gates (BERxiT's LTE, CALM's meta classifier;
`rome_jax.exits.gates`) on the training rows the run held out (past
`data.train_max_examples`, at most --gate_rows of them), stores them in
WORKDIR/exit_gates.safetensors (and beside WORKDIR/model when the checkpoint is the
run's last), and evaluates with them; a later eval.py of the same checkpoint loads
them. The sweeps then add lte and meta to saturation (which needs no fitting):

    python eval.py --workdir=runs/sst2 --checkpoint=latest --fit_gates --calibrate=ltt

"best" is the checkpoint with the highest final-exit score on the first dev split,
so the dev figures of a run that evaluated more than once are chosen on the set
they are read on; RomeBERT's and DeeBERT's code report their last step
(`--checkpoint=latest`).
"""

if __name__ == "__main__":  # first, before JAX starts: see rome_jax/host_memory.py
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()


import os

import numpy as np
from absl import flags

from rome_jax.commands import cli
from rome_jax.config import run_config
from rome_jax.data import Features, load_examples, tokenize_examples, tokenize_texts
from rome_jax.data.buckets import check_spec, length_buckets
from rome_jax.data.glue import get_task
from rome_jax.data.metrics import compute_metrics, primary_metric
from rome_jax.data.tagging_task import is_tagging
from rome_jax.data.tasks import task_from_config
from rome_jax.encoder.config import ATTENTION_KERNELS, DTYPES, ModelConfig
from rome_jax.errors import CheckpointError, ConfigError
from rome_jax.host_memory import reexec_with_malloc_tunables
from rome_jax.serving import files as serving_files

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
_CALIBRATE = flags.DEFINE_string(
    "calibrate",
    None,
    "Choose early-exit thresholds on calibration rows: 'ltt' (Learn-then-Test with a guarantee: "
    "--target, --eps, --delta) or a number of percentage points (the in-sample rule). Written "
    "to results.json, WORKDIR/calibration.json and the model directory (rome_jax_calibration.json, "
    "which predict uses by default).",
)
_TARGET = flags.DEFINE_enum(
    "target",
    "consistency",
    ["consistency", "risk"],
    "What --calibrate=ltt bounds: answers that differ from full depth, or the metric's drop.",
)
_EPS = flags.DEFINE_float("eps", 0.02, "The bound: at most this share of differing answers (or metric drop).")
_DELTA = flags.DEFINE_float("delta", 0.1, "The bound holds with probability >= 1 - delta over the calibration rows.")
_CALIBRATION_FRACTION = flags.DEFINE_float(
    "calibration_fraction",
    0.5,
    "Share of the first split's rows (seeded random) that calibrate; the rest are scored. 0: the "
    "in-sample rule on every row (with --calibrate=POINTS only).",
)
_CALIBRATION_SEED = flags.DEFINE_integer("calibration_seed", 0, "Seed of the calibration rows' draw.")
_CALIBRATION_FILE = flags.DEFINE_string(
    "calibration_file",
    None,
    "Calibrate on this file's rows (TSV, CSV or JSON Lines with the task's text columns; labels "
    "optional) instead of a part of the split; every row of the split is then scored.",
)


_FIT_GATES = flags.DEFINE_bool(
    "fit_gates", False, "Fit the LTE and meta exit gates on the training rows the run held out (--workdir)."
)
_GATE_ROWS = flags.DEFINE_integer("gate_rows", 2000, "At most this many held-out training rows fit the gates.")
_WINDOWS = flags.DEFINE_list(
    "windows", ["0", "1"], "Taggers: the token-level rule's windows (words on each side that must be confident too)."
)


def _model_from_workdir(workdir: str):
    # JAX loads only now, after the re-exec (run): these modules import it
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
        "train_max_examples": config.data.train_max_examples,
    }
    return MultiExitModel(model_config, params, tokenizer), task, data, f"{workdir} step {step}"


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    workdir, model_dir = _WORKDIR.value, _MODEL.value
    if bool(workdir) == bool(model_dir):
        raise ConfigError("give either --workdir (a train.py run) or --model with --task")
    # JAX loads only now, after the re-exec (run): these modules import it
    from rome_jax.exits import calibration as calibration_lib
    from rome_jax.exits import evaluation
    from rome_jax.serving.api import load_pretrained

    if workdir:
        model, task, data, origin = _model_from_workdir(workdir)
        out_dir = _OUTPUT_DIR.value or os.path.join(workdir, "eval")
    elif model_dir:  # the one given (exactly one is: checked above)
        if not _TASK.value:
            raise ConfigError("--model needs --task")
        task = get_task(_TASK.value)
        model = load_pretrained(
            model_dir, task.num_labels, dtype=_DTYPE.value or "float32", attention_kernel=_ATTENTION.value or "xla"
        )
        data = {
            "dir": os.environ.get("GLUE_DIR", ""),
            "source": "dir",
            "max_length": 128,
            "mode": None,
            "buckets": "auto",
        }
        origin = model_dir
        out_dir = _OUTPUT_DIR.value or os.path.join(model_dir, "eval")
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
        # None: the defaults for the run's mode, with thresholds where each split's exits' values lie
        sweeps = evaluation.parse_sweeps(_SWEEPS.value, model.config.num_layers) if _SWEEPS.value else None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    splits = _SPLITS.value or list(task.dev_splits)
    print(
        f"evaluating {origin} on {task.name} ({', '.join(splits)}), length buckets "
        f"{'none' if buckets.padded else ','.join(map(str, buckets))}",
        flush=True,
    )
    if is_tagging(task):
        if _FIT_GATES.value:
            raise ConfigError("--fit_gates: the exit gates are sentence-level; this model tags tokens")
        return _evaluate_tagger(model, task, splits, max_length, buckets, out_dir, origin, data)
    calibrating = _calibration_rule()
    if workdir:
        _load_run_gates(model, workdir, data.get("step"))
        if _FIT_GATES.value:
            paths = _fit_gates(model, task, workdir, data, source, data_dir, max_length, buckets)
            print(f"wrote {', '.join(os.path.relpath(p) for p in paths)}", flush=True)
    elif _FIT_GATES.value:
        raise ConfigError("--fit_gates needs --workdir: a run knows which training rows it did not train on")
    for split in splits:
        examples = load_examples(
            task, split, source=source, data_dir=data_dir or None, max_examples=_MAX_EXAMPLES.value
        )
        features = tokenize_examples(examples, model.tokenizer, max_length)
        split_dir = out_dir if len(splits) == 1 else os.path.join(out_dir, split)
        logits, signals = evaluation.exit_signals_of(model.config, model.params, features, _BATCH_SIZE.value, buckets)
        labels = np.asarray(features.labels) if features.has_labels else None
        saved = evaluation.save_exit_logits(
            os.path.join(split_dir, evaluation.EXIT_LOGITS_FILE),
            split,
            logits,
            labels,
            np.asarray(features.index),
            signals,
        )
        chosen, scored_rows = None, np.arange(len(features))
        if calibrating and split == splits[0]:
            chosen, scored_rows = _calibrate(
                calibrating,
                model,
                task,
                split,
                features,
                (logits, signals),
                max_length,
                buckets,
                sweeps,
                data["mode"],
                origin,
            )
        scored_signals = evaluation.signal_rows(signals, scored_rows)
        results = evaluation.evaluate_split(
            model.config,
            model.params,
            task,
            split,
            features.subset(scored_rows),
            sweeps=sweeps,
            batch_size=_BATCH_SIZE.value,
            batch1_examples=_BATCH1.value,
            batched_examples=_BATCHED.value,
            timing=not _NO_TIMING.value,
            buckets=buckets,
            log=lambda m: print(m, flush=True),
            logits=logits[:, scored_rows],
            signals=scored_signals,
            mode=data["mode"],
        )
        results["model"] = origin
        if len(scored_rows) < len(features):
            results["scored_rows"] = {"of": len(features), "row_ids": [int(i) for i in scored_rows]}
        if chosen is not None:
            chosen["test"] = calibration_lib.score(
                chosen,
                logits[:, scored_rows],
                _metric_fn(task, np.asarray(features.labels)[scored_rows]),
                metric=results["metric"],
                signals=scored_signals,
            )
            chosen["test"]["row_ids"] = results.get("scored_rows", {}).get("row_ids", "all")
            results["calibration"] = chosen
            print(calibration_lib.summary(chosen), flush=True)
            if chosen.get("default") is None:
                print(calibration_lib.no_saving_reason(chosen, logits), flush=True)
        paths = evaluation.write_outputs(results, split_dir) + [saved]
        print(evaluation.format_table(results))
        if chosen is not None:
            paths += _store_calibration(chosen, data.get("step"))
        print(f"wrote {', '.join(os.path.relpath(p) for p in paths)}", flush=True)
    return 0


def _evaluate_tagger(model, task, splits, max_length, buckets, out_dir, origin, data) -> int:
    """A tagger's evaluation (`rome_jax.commands.eval_tagging`): always Learn-then-Test on
    a share of the first split's sentences, the figures read on the others."""
    from rome_jax.commands.eval_tagging import evaluate_tagger

    if _CALIBRATE.value not in (None, "ltt") or _TARGET.value != "consistency" or _CALIBRATION_FILE.value:
        raise ConfigError(
            "a tagger calibrates with --calibrate=ltt --target=consistency on a share of its dev sentences "
            "(--calibration_fraction); the in-sample rule, the risk target and --calibration_file are for classifiers"
        )
    fraction = _CALIBRATION_FRACTION.value
    if not 0 < fraction < 1:
        raise ConfigError(f"--calibration_fraction {fraction}: a tagger needs a fraction in (0, 1)")
    try:
        windows = sorted({int(w) for w in _WINDOWS.value})
    except ValueError:
        raise ConfigError(f"--windows {','.join(_WINDOWS.value)}: give whole numbers >= 0") from None
    if any(w < 0 for w in windows):
        raise ConfigError(f"--windows {','.join(_WINDOWS.value)}: give whole numbers >= 0")
    for split in splits:
        split_dir = out_dir if len(splits) == 1 else os.path.join(out_dir, split)
        results, paths = evaluate_tagger(
            model,
            task,
            split,
            max_length=max_length,
            max_examples=_MAX_EXAMPLES.value,
            batch_size=_BATCH_SIZE.value,
            buckets=buckets,
            out_dir=split_dir,
            origin=origin,
            eps=_EPS.value,
            delta=_DELTA.value,
            fraction=fraction,
            seed=_CALIBRATION_SEED.value,
            windows=windows,
            timing=not _NO_TIMING.value,
            log=lambda m: print(m, flush=True),
        )
        if split == splits[0]:
            paths += _store_calibration(results["calibration"], data.get("step"))
        print(f"wrote {', '.join(os.path.relpath(p) for p in paths)}", flush=True)
    return 0


def _calibration_rule() -> str | float | None:
    """--calibrate: None, "ltt", or the in-sample rule's percentage points."""
    value = _CALIBRATE.value
    if value is None:
        return None
    if value.strip().lower() == "ltt":
        if _CALIBRATION_FRACTION.value == 0 and not _CALIBRATION_FILE.value:
            raise ConfigError(
                "--calibrate=ltt --calibration_fraction=0: the guarantee needs rows that did not "
                "choose the threshold; give a fraction in (0, 1) or --calibration_file"
            )
        for name, flag in (("eps", _EPS.value), ("delta", _DELTA.value)):
            if not 0 < flag < 1:
                raise ConfigError(f"--{name} {flag}: must be in (0, 1)")
        return "ltt"
    try:
        points = float(value)
    except ValueError:
        raise ConfigError(f"--calibrate {value!r}: give ltt or a number of percentage points (e.g. 0.5)") from None
    if not points >= 0:
        raise ConfigError(f"--calibrate {value}: percentage points must be >= 0")
    return points


def _metric_fn(task, labels: np.ndarray):
    """logits [N, C] -> the task's primary metric on `labels`."""
    metric = primary_metric(task.name)
    return lambda logits: compute_metrics(task.name, np.asarray(logits), labels)[metric]


def _calibrate(
    rule, model, task, split, features, outputs, max_length, buckets, sweeps, mode, origin
) -> tuple[dict, np.ndarray]:
    """The calibration (chosen on the calibration rows) and the rows left to score.
    outputs: the split's (logits [E, N, C], signals)."""
    # JAX loads only now, after the re-exec (run): these modules import it
    from rome_jax.exits import calibration as calibration_lib
    from rome_jax.exits import evaluation, guarantee
    from rome_jax.exits.signals import gates_of

    logits, signals = outputs
    regression = model.config.num_labels == 1
    n = len(features)
    labels = np.asarray(features.labels) if features.has_labels else None
    if _CALIBRATION_FILE.value:
        path = _CALIBRATION_FILE.value
        texts_a, texts_b, file_labels = serving_files.read_calibration_rows(
            path,
            task_columns=task.text_columns,
            label_column=task.label_column,
            label_names=task.label_names,
            regression=regression,
        )
        arrays = tokenize_texts(model.tokenizer, texts_a, texts_b, max_length)
        count = len(texts_a)
        cal_labels = None if file_labels is None else np.asarray(file_labels, np.float32 if regression else np.int32)
        cal_features = Features(
            **arrays,
            labels=cal_labels if cal_labels is not None else np.full(count, -1, np.int32),
            index=np.arange(count),
            has_labels=cal_labels is not None,
        )
        cal_logits, cal_signals = evaluation.exit_signals_of(
            model.config, model.params, cal_features, _BATCH_SIZE.value, buckets
        )
        scored = np.arange(n)
        rows = {"source": "file", "file": os.path.abspath(path), "num_rows": count, "labelled": cal_labels is not None}
    else:
        fraction = _CALIBRATION_FRACTION.value
        if fraction == 0:  # the in-sample rule on every row (refused for ltt above)
            cal, scored = np.arange(n), np.arange(n)
        else:
            try:
                cal, scored = calibration_lib.split_rows(n, fraction, _CALIBRATION_SEED.value)
            except ValueError as e:
                raise ConfigError(f"--calibration_fraction: {e}") from None
        cal_features, cal_logits, cal_labels = (
            features.subset(cal),
            logits[:, cal],
            None if labels is None else labels[cal],
        )
        cal_signals = evaluation.signal_rows(signals, cal)
        rows = {
            "source": "split",
            "fraction": fraction,
            "seed": _CALIBRATION_SEED.value,
            "num_rows": int(len(cal)),
            "row_ids": [int(i) for i in np.asarray(features.index)[cal]],
        }
    if rule == "ltt":
        if _TARGET.value == "risk" and cal_labels is None:
            raise ConfigError(
                f"--target=risk needs labels; {_CALIBRATION_FILE.value or 'the split'} has none "
                "(calibrate unlabelled rows with --target=consistency)"
            )
        names = list(guarantee.REGRESSION_CRITERIA if regression else guarantee.CLASSIFICATION_CRITERIA)
        if cal_signals is not None:
            names += ["saturation", *gates_of(model.params)]
        chosen = calibration_lib.calibrate_outputs(
            cal_logits,
            cal_labels,
            target=_TARGET.value,
            eps=_EPS.value,
            delta=_DELTA.value,
            regression=regression,
            criteria=names,
            signals=cal_signals,
        )
    else:
        if cal_labels is None:
            raise ConfigError(f"--calibrate={rule}: the in-sample rule needs labelled calibration rows")
        cal_results = evaluation.evaluate_split(
            model.config,
            model.params,
            task,
            split,
            cal_features,
            sweeps=sweeps,
            timing=False,
            buckets=buckets,
            log=lambda _: None,
            logits=cal_logits,
            signals=cal_signals,
            mode=mode,
        )
        chosen = calibration_lib.calibrate(cal_results, float(rule))
    chosen.update(model=origin, task=task.name, max_length=int(max_length), rows=rows)
    return chosen, scored


def _load_run_gates(model, workdir: str, step: int | None) -> None:
    """Puts WORKDIR's fitted gates into the model's parameters when they were fitted on
    the evaluated checkpoint (else says so and leaves them out)."""
    from rome_jax.exits import gates as gates_lib  # JAX, as above
    from rome_jax.exits.signals import with_gates

    path = os.path.join(workdir, gates_lib.RUN_FILE_NAME)
    found = gates_lib.read_gates(path)
    if found is None:
        return
    fitted, metadata = found
    if metadata.get("step") != step:
        print(
            f"{path} was fitted on step {metadata.get('step')}, not {step}: not used (--fit_gates refits)", flush=True
        )
        return
    gates_lib.check_fits(fitted, model.config.hidden_size, path)
    model.params = with_gates(model.params, fitted)


def _fit_gates(model, task, workdir, data, source, data_dir, max_length, buckets) -> list[str]:
    """Fits the gates on the run's held-out training rows; stores them (see the module
    doc) and puts them into the model's parameters. Returns the paths written."""
    from rome_jax.exits import gates as gates_lib  # JAX, as above
    from rome_jax.exits.signals import with_gates, without_gates

    first = int(data.get("train_max_examples") or 0)
    if _GATE_ROWS.value <= 0:
        raise ConfigError(f"--gate_rows {_GATE_ROWS.value}: must be positive")
    if first <= 0:
        raise ConfigError(
            f"{workdir}: the run trained on every training row (data.train_max_examples 0): no held-out "
            "row to fit the gates on; train with data.train_max_examples below the training split's size"
        )
    examples = load_examples(
        task, "train", source=source, data_dir=data_dir or None, max_examples=first + _GATE_ROWS.value
    )
    features = tokenize_examples(examples, model.tokenizer, max_length)
    held = features.subset(np.arange(first, len(features)))
    if len(held) == 0:
        raise ConfigError(
            f"{workdir}: the training split has {len(features)} rows and the run trained on the first "
            f"{first}: no held-out row to fit the gates on"
        )
    bare = without_gates(model.params)
    fitted, report = gates_lib.fit_gates_on(model.config, bare, held, batch_size=_BATCH_SIZE.value, buckets=buckets)
    step = data.get("step")
    metadata = {"step": step, "rows": {"split": "train", "first": first, "count": len(held)}, **report}
    print(
        f"fitted the exit gates on training rows {first}..{first + len(held) - 1} ({len(held)} held out): "
        + ", ".join(f"{k} {v:.4f}" for k, v in report.items()),
        flush=True,
    )
    model.params = with_gates(bare, fitted)
    paths = [gates_lib.write_gates(os.path.join(workdir, gates_lib.RUN_FILE_NAME), fitted, metadata)]
    model_dir = os.path.join(workdir, "model")
    if os.path.isfile(os.path.join(model_dir, "config.json")) and step == _last_step(workdir):
        paths.append(gates_lib.write_gates(os.path.join(model_dir, gates_lib.FILE_NAME), fitted, metadata))
    return paths


def _last_step(workdir: str) -> int | None:
    from rome_jax.training.checkpoints import Checkpoints  # JAX, as above

    store = Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        steps = store.steps()
    finally:
        store.close()
    return steps[-1] if steps else None


def _store_calibration(chosen: dict, step: int | None) -> list[str]:
    """Writes the calibration beside the model: --model: MODEL/rome_jax_calibration.json;
    --workdir: WORKDIR/calibration.json, and WORKDIR/model/rome_jax_calibration.json
    when the evaluated checkpoint is the run's last (the one model/ holds)."""
    # JAX loads only now, after the re-exec (run): these modules import it
    from rome_jax.exits import calibration

    workdir = _WORKDIR.value
    if _MODEL.value:
        path = os.path.join(_MODEL.value, calibration.FILE_NAME)
        calibration.write(path, chosen)
        return [path]
    if not workdir:  # main refuses this before evaluating
        raise ConfigError("give either --workdir (a train.py run) or --model with --task")
    paths = [os.path.join(workdir, calibration.RUN_FILE_NAME)]
    calibration.write(paths[0], chosen)
    model_dir = os.path.join(workdir, "model")
    if os.path.isfile(os.path.join(model_dir, "config.json")):
        last = _last_step(workdir)
        if last is not None and step == last:
            paths.append(os.path.join(model_dir, calibration.FILE_NAME))
            calibration.write(paths[-1], chosen)
        else:
            print(
                f"{model_dir} holds the last step ({last if last is not None else '?'}), the thresholds were "
                f"chosen on step {step}: not stored there (--checkpoint=latest calibrates the exported "
                "model)",
                flush=True,
            )
    return paths


def run() -> None:
    """The entry point: `python eval.py`, `python -m rome_jax.commands.eval`."""
    reexec_with_malloc_tunables()  # a no-op when the module's first lines did it
    cli.run_main(main)


if __name__ == "__main__":
    run()
