"""The command-line programs, runnable from an installed package.

    python -m rome_jax.commands.train ...           # = python train.py ...
    python -m rome_jax.commands.eval ...            # = python eval.py ...
    python -m rome_jax.commands.glue_benchmark ...  # = python scripts/glue_benchmark.py ...
    python -m rome_jax.commands.ablation ...        # = python scripts/ablation.py ...

Each module holds its program's flags, its `main(argv)` (see rome_jax/cli.py) and
`run()`, the entry point; the repository's train.py, eval.py and scripts/*.py are
wrappers that call `run()`. A config file given with `--config=` may import its
siblings (`from configs import default`) from any current directory: the command
puts the config file's grandparent directory on `sys.path` (rome_jax/cli.py).

This package imports nothing heavy: train and eval re-execute themselves with
malloc settings before JAX starts (rome_jax/host_memory.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
"""The directory holding the rome_jax package that is running (site-packages, or a
source checkout)."""


def command(name: str) -> list[str]:
    """The command line that starts program `name` ("train", "eval", ...) in a new
    Python process: `[sys.executable, "-m", "rome_jax.commands.<name>"]`."""
    return [sys.executable, "-m", f"rome_jax.commands.{name}"]


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for `command(...)`: this one, with the directory holding the
    running rome_jax package first on PYTHONPATH, so that the child runs the same
    code whatever its current directory (and however this process found it)."""
    env = dict(os.environ if environ is None else environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(PACKAGE_ROOT) not in paths:
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *paths])
    return env
