"""How to start one of the command-line programs in a child process, running the same
rome_jax code as this process (the experiments start `train` and `eval` this way)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
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
