"""Shared command-line plumbing for the programs of rome_jax/commands/ (train, eval, ...).

    from rome_jax.commands import cli

    def main(argv):          # argv: what absl left after parsing the flags
        ...                  # raise RomeError subclasses for what the user can fix
        return 0             # the exit status (None counts as 0)

    if __name__ == "__main__":
        cli.run_main(main)

`run_main` parses the absl flags (with `ml_collections.config_flags` overrides),
configures logging, calls `main`, and turns every `RomeError` (and every flag or
config-file problem) into one line on stderr, `<program>: error: <message>`, and
the error's exit status, with no traceback unless `--verbose`.

Exit statuses: 0 success; 2 a user error (ConfigError, DataError,
CheckpointError, bad flags); 3 a TrainingError (e.g. a non-finite loss);
75 stopped by SIGTERM/SIGINT after saving a checkpoint (run again to resume);
130 interrupted at once (a second Ctrl-C); 1 a bug (a traceback is printed).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # XLA's C++ INFO lines
# transformers' import-time advice ("PyTorch was not found...") on a JAX-only install:
# PyTorch is a test dependency only, and an error must stay one line.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import ml_collections  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from ml_collections.config_flags.config_flags import is_config_flag  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rome_jax.config import run_config  # noqa: E402
from rome_jax.errors import ConfigError, RomeError  # noqa: E402

FLAGS = flags.FLAGS

VERBOSE = flags.DEFINE_bool("verbose", False, "Print tracebacks with errors, and debug logs.")

USAGE_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130


def program_name() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "rome_jax"


# ----------------------------------------------------------------------- logging


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not break a tqdm progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


def setup_logging(verbose: bool = False) -> None:
    """INFO lines from rome_jax on stderr (DEBUG and library logs with verbose)."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("rome_jax").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        # orbax and absl report every save and restore; jax its backends.
        # huggingface_hub/datasets log every retry of an unreachable hub twice.
        for name in ("absl", "jax", "orbax", "transformers", "tensorboardX", "huggingface_hub", "datasets"):
            logging.getLogger(name).setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.ERROR)
    try:
        import transformers  # only when a program runs: importing this module stays cheap

        transformers.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


# ------------------------------------------------------------------------- flags


def _config_flag_names() -> list[str]:
    return [name for name in FLAGS if is_config_flag(FLAGS[name])]


def _overrides(argv: Sequence[str], name: str) -> list[str]:
    """The --NAME.a.b=... arguments, as "a.b=..." strings."""
    prefix = f"--{name}."
    return [arg[len(prefix) :] for arg in argv if arg.startswith(prefix)]


def _unknown_key_message(argv: Sequence[str], error: BaseException) -> str:
    for name in _config_flag_names() or ["config"]:
        for override in _overrides(argv, name):
            path = override.split("=", 1)[0]
            if path not in run_config.KEYS:
                return f"unknown config key {path} in --{name}.{override}{run_config.suggest(path)}"
    return f"unknown config key: {_last_line(str(error).replace(chr(92) + 'n', chr(10)))}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text.strip()


def _flag_error_message(error: flags.Error) -> str:
    text = str(error)
    if "Error whilst parsing config file" in text:
        head = text.split(":", 1)[0]  # "flag --config=configs/glue.py:x"
        return f"{head.removeprefix('flag ')}: {_last_line(text)}"
    if isinstance(error, flags.UnrecognizedFlagError):
        return f"{_last_line(text)} (see --helpfull)"
    return _last_line(text).removeprefix("flag ")


_program_module = "__main__"  # the module of the running program's main(): see run_main


def print_help(full: bool = False) -> None:
    """The program's docstring and its flags (`--helpfull`: every flag).

    The program is the module defining the `main` given to `run_main` (e.g.
    rome_jax.commands.train, whether run with `-m` or from the train.py wrapper).
    """
    main = sys.modules.get(_program_module)
    if main is not None and main.__doc__:
        print(main.__doc__.strip() + "\n")
    if full:
        print(FLAGS.get_help())
        return
    if _program_module == "__main__":
        print(FLAGS.main_module_help())
    else:
        print(FLAGS.module_help(_program_module))
    print(FLAGS.module_help(sys.modules[__name__]))
    if _config_flag_names():
        print("\nConfig values: --config.<section>.<key>=<value> (see configs/default.py); all flags: --helpfull")
    else:
        print("\nAll flags: --helpfull")


def parse_flags(argv: Sequence[str]) -> list[str]:
    """Parses absl flags (config overrides included); ConfigError on any problem.

    Returns the arguments absl did not consume (argv[0] first). `--help` / `-h`
    (`--helpfull`) print the help and exit with status 0.
    """
    if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv[1:]):
        print_help(full="--helpfull" in argv)
        sys.exit(0)

    sys.argv = list(argv)  # config_flags reads its overrides from sys.argv
    for name in _config_flag_names():
        for arg in argv:
            if arg.startswith(f"--{name}="):
                filename = arg.split("=", 1)[1].split(":", 1)[0]
                if not os.path.isfile(filename):
                    raise ConfigError(f"--{name}={filename}: no such config file")
                run_config.add_config_root(filename)  # its `from configs import ...`
    try:
        rest = FLAGS(list(argv))
    except flags.Error as e:
        raise ConfigError(_flag_error_message(e)) from None
    except (AttributeError, KeyError) as e:
        raise ConfigError(_unknown_key_message(argv, e)) from None
    except OSError as e:  # a config file that could not be read
        raise ConfigError(_last_line(str(e))) from None
    for name in _config_flag_names():
        value = FLAGS[name].value
        if value is not None and type(value).__name__ == "_ErrorConfig":
            filename = config_flags.get_config_filename(FLAGS[name]).split(":", 1)[0]
            if not os.path.isfile(filename):
                raise ConfigError(f"--{name}={filename}: no such config file")
            try:
                _ = value.lock  # raises the stored error
            except OSError as e:
                raise ConfigError(f"--{name}={filename}: {_last_line(str(e))}") from None
    return rest


def config_from_flag(holder: Any, name: str = "config") -> ml_collections.ConfigDict:
    """The ConfigDict of a config flag; ConfigError if it was not given."""
    config = holder.value if hasattr(holder, "value") else holder
    if config is None:
        raise ConfigError(f"--{name} is required, e.g. --{name}=configs/glue.py:rte")
    return config


# -------------------------------------------------------------------------- main


def report(error: BaseException, *, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    message = " ".join(str(error).split("\n")).strip() or type(error).__name__
    print(f"{program_name()}: error: {message}", file=sys.stderr, flush=True)


def run_main(main_fn: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> None:
    """Parses flags, runs `main_fn(remaining_argv)` and exits with its status.

    RomeError -> its one-line message and `exit_code`; KeyboardInterrupt -> 130;
    any other exception is a bug and keeps its traceback.
    """
    global _program_module
    _program_module = getattr(main_fn, "__module__", None) or "__main__"
    argv = list(sys.argv if argv is None else argv)
    verbose = any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv)
    setup_logging(verbose)
    try:
        rest = parse_flags(argv)
        verbose = bool(VERBOSE.value)
        setup_logging(verbose)
        status = main_fn(rest)
    except RomeError as e:
        report(e, verbose=verbose)
        sys.exit(getattr(e, "exit_code", USAGE_ERROR_EXIT_CODE) or USAGE_ERROR_EXIT_CODE)
    except KeyboardInterrupt:
        print(f"{program_name()}: interrupted", file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_EXIT_CODE)
    sys.exit(int(status or 0))
