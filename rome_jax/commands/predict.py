"""Predicts labels of a file of texts with early exit, streaming.

    python predict.py --workdir=runs/sst2 --input=reviews.tsv --output=predictions.jsonl
    python predict.py --model=path/to/hf_dir --input=pairs.csv --text_a=question --text_b=answer \
        --output=predictions.csv --criterion=entropy:0.3
    cat texts.jsonl | python predict.py --model=path/to/hf_dir --input=- > predictions.jsonl

--workdir reads the run's exported model (WORKDIR/model, written by train.py at
the end of training) and its calibration (`eval.py --calibrate`); --model any HF
directory. `--calibration_file=FILE [--eps=0.02 --delta=0.1]` first chooses thresholds
with a guarantee on FILE's texts (unlabelled texts from your own traffic do: answers
differ from full depth on at most eps of new rows with probability >= 1 - delta).
The input is a TSV (tab-separated, no quoting, as GLUE), CSV or JSON
Lines file with a header (the format from the extension, else --input_format,
else sniffed from the first line), or `-` for standard input. Text columns:
--text_a / --text_b, by default the task's (the run's, or --task's), else
`sentence` or `text`. The output (--output, `-` or unset: standard output) is JSON
Lines, or CSV / TSV by extension, one row per input row in input order: id (the
input's `id` or `index` column, else the 0-based row number), label, the
probabilities (JSON: {label: p}; CSV: a `p_<label>` column each) or, for
regression, the score, and exit_layer (1-based).

Streaming: rows are read, predicted and written in chunks of 4096, never the whole
file at once; each chunk is written as complete lines and flushed. A bad row (a
missing or empty text, a malformed line) stops the program with one line naming
the file and line (status 2); the output then holds the predictions of every row
before it. A progress bar shows on a terminal (stderr); the program ends with one
summary line (examples, examples/s, mean layers), on stderr when the predictions go
to standard output.
"""

if __name__ == "__main__":  # first, before JAX starts: see rome_jax/host_memory.py
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()


import os
import sys
from typing import TYPE_CHECKING

from absl import flags

from rome_jax.commands import cli
from rome_jax.config import run_config
from rome_jax.data.glue import get_task
from rome_jax.data.tasks import task_from_config
from rome_jax.errors import CheckpointError, ConfigError
from rome_jax.host_memory import reexec_with_malloc_tunables
from rome_jax.serving.files import predict_file, read_calibration_rows, summary_line

if TYPE_CHECKING:  # annotations only: JAX loads after the re-exec (run), in _load
    from rome_jax.serving.api import MultiExitModel

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir: its exported model (WORKDIR/model).")
_MODEL = flags.DEFINE_string("model", None, "Instead of --workdir: an HF model directory.")
_TASK = flags.DEFINE_string("task", None, "With --model: a GLUE task, for its text columns.")
_INPUT = flags.DEFINE_string("input", None, "TSV, CSV or JSON Lines file with a header, or - for stdin.")
_INPUT_FORMAT = flags.DEFINE_enum(
    "input_format", None, ["tsv", "csv", "jsonl"], "Default: from the extension, else sniffed from the first line."
)
_TEXT_A = flags.DEFINE_string("text_a", None, "The first text column (default: the task's, else sentence or text).")
_TEXT_B = flags.DEFINE_string("text_b", None, "The second text column of pairs (default: the task's).")
_OUTPUT = flags.DEFINE_string("output", "-", "JSON Lines, or .csv / .tsv; - for standard output.")
_CRITERION = flags.DEFINE_string(
    "criterion",
    "auto",
    "entropy:0.3, max_prob:0.9, patience:2, ..., calibrated, none (full depth), or "
    "auto: calibrated when the model carries a calibration, else none.",
)
_CALIBRATION_FILE = flags.DEFINE_string(
    "calibration_file",
    None,
    "Before predicting, choose thresholds with a guarantee on this file's texts (same columns as "
    "--input; no labels needed): answers differ from full depth on at most --eps of new rows, with "
    "probability >= 1 - --delta. Used by --criterion=auto; not stored.",
)
_EPS = flags.DEFINE_float("eps", 0.02, "With --calibration_file: the share of answers that may differ from full depth.")
_DELTA = flags.DEFINE_float("delta", 0.1, "With --calibration_file: the guarantee fails with probability <= delta.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Rows per batch.")
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length",
    None,
    "Tokens per example (default: the length the calibration was chosen at, else 512; at most the model's positions).",
)

# ------------------------------------------------------------------------- the program


def _load(
    workdir: str | None, model_dir: str | None, task_name: str | None
) -> tuple["MultiExitModel", tuple[str, ...], str]:
    """(model, task columns, origin)."""
    from rome_jax.serving.api import load_pretrained  # JAX: only now, after the re-exec (run)

    columns: tuple[str, ...] = ()
    if workdir:
        path = os.path.join(workdir, "model")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise CheckpointError(
                f"{path}: no exported model (train.py writes it at the end of training; or give --model)"
            )
        try:
            columns = tuple(task_from_config(run_config.read_workdir_config(workdir)).text_columns)
        except Exception:  # noqa: BLE001 - columns are a default only
            columns = ()
        return load_pretrained(path), columns, path
    if not model_dir:
        raise ConfigError("give either --workdir (a train.py run) or --model (an HF directory)")
    if task_name:
        columns = tuple(get_task(task_name).text_columns)
    return load_pretrained(model_dir), columns, model_dir


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    if bool(_WORKDIR.value) == bool(_MODEL.value):
        raise ConfigError("give either --workdir (a train.py run) or --model (an HF directory)")
    if not _INPUT.value:
        raise ConfigError("--input is required (a TSV, CSV or JSON Lines file, or - for standard input)")
    if _BATCH_SIZE.value < 1:
        raise ConfigError(f"--batch_size must be >= 1, not {_BATCH_SIZE.value}")
    model, columns, origin = _load(_WORKDIR.value, _MODEL.value, _TASK.value)
    if model.tokenizer is None:
        raise CheckpointError(f"{origin}: no tokenizer files")
    if _MAX_LENGTH.value is not None and not 0 < _MAX_LENGTH.value <= model.config.max_length:
        raise ConfigError(
            f"--max_length {_MAX_LENGTH.value}: 1 to the model's {model.config.max_length} positions ({origin})"
        )
    from rome_jax.serving import predict as predict_lib  # JAX, as in _load

    if model.config.token_exits:  # a tagger: sentences in, tags per word out
        return _tag(model)

    if _CALIBRATION_FILE.value:
        _calibrate_on_file(model, columns, _CALIBRATION_FILE.value)
    try:
        predict_lib.resolve_criterion(_CRITERION.value, model.config, model.calibration)
    except ValueError as e:
        raise ConfigError(f"--criterion: {e}") from None
    to_stdout = _OUTPUT.value in ("-", "")
    summary = predict_file(
        model,
        _INPUT.value,
        _OUTPUT.value,
        input_format=_INPUT_FORMAT.value,
        text_a=_TEXT_A.value,
        text_b=_TEXT_B.value,
        task_columns=columns,
        criterion=_CRITERION.value,
        batch_size=_BATCH_SIZE.value,
        max_length=_MAX_LENGTH.value,
        progress=sys.stderr.isatty(),
    )
    print(summary_line(summary), file=sys.stderr if to_stdout else sys.stdout, flush=True)
    return 0


def _tag(model: "MultiExitModel") -> int:
    """predict.py for a tagger: one sentence per line (split on whitespace) or JSON Lines
    (`tokens`: a list of words, or a text in --text_a / text / sentence), out one JSON
    object per sentence (`rome_jax.serving.tagger.tag_file`)."""
    from rome_jax.serving import tagger  # JAX, as in _load

    if _CALIBRATION_FILE.value or _TEXT_B.value or _INPUT_FORMAT.value not in (None, "jsonl"):
        raise ConfigError(
            "a tagger reads one sentence per line or JSON Lines; --calibration_file, --text_b and "
            "--input_format tsv/csv are for classifiers (calibrate a tagger with eval.py)"
        )
    try:
        tagger.resolve(model, _CRITERION.value, None, None)
    except ValueError as e:
        raise ConfigError(f"--criterion: {e}") from None
    summary = tagger.tag_file(
        model,
        _INPUT.value or "-",
        _OUTPUT.value,
        column=_TEXT_A.value,
        criterion=_CRITERION.value,
        batch_size=_BATCH_SIZE.value,
        max_length=_MAX_LENGTH.value,
    )
    stream = sys.stderr if _OUTPUT.value in ("-", "") else sys.stdout
    print(
        f"tagged {summary['sentences']} sentences, {summary['words']} words, mean exit layer "
        f"{summary['mean_layers']:.2f} of {model.config.num_layers}",
        file=stream,
        flush=True,
    )
    return 0


def _calibrate_on_file(model: "MultiExitModel", columns: tuple[str, ...], path: str) -> None:
    """--calibration_file (`path`): the model's calibration for this run (consistency target)."""
    from rome_jax.exits import calibration as calibration_lib  # JAX, as in _load

    for name, value in (("eps", _EPS.value), ("delta", _DELTA.value)):
        if not 0 < value < 1:
            raise ConfigError(f"--{name} {value}: must be in (0, 1)")
    texts_a, texts_b, _ = read_calibration_rows(
        path, task_columns=columns, label_column=None, text_a=_TEXT_A.value, text_b=_TEXT_B.value
    )
    chosen = model.calibrate(
        texts_a, texts_b, eps=_EPS.value, delta=_DELTA.value, batch_size=_BATCH_SIZE.value, max_length=_MAX_LENGTH.value
    )
    print(calibration_lib.summary(chosen), file=sys.stderr, flush=True)


def run() -> None:
    """The entry point: `python predict.py`, `python -m rome_jax.commands.predict`."""
    reexec_with_malloc_tunables()  # a no-op when the module's first lines did it
    cli.run_main(main)


if __name__ == "__main__":
    run()
