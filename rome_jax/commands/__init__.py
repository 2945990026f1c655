"""The command-line programs, runnable from an installed package.

    python -m rome_jax.commands.train ...           # = python train.py ...
    python -m rome_jax.commands.eval ...            # = python eval.py ...
    python -m rome_jax.commands.glue_benchmark ...  # = python scripts/glue_benchmark.py ...
    python -m rome_jax.commands.ablation ...        # = python scripts/ablation.py ...

Each module holds its program's flags, its `main(argv)` (see rome_jax/commands/cli.py) and
`run()`, the entry point; the repository's train.py, eval.py and scripts/*.py are
wrappers that call `run()`. A config file given with `--config=` may import its
siblings (`from configs import default`) from any current directory: the command
puts the config file's grandparent directory on `sys.path` (rome_jax/commands/cli.py).

This package imports nothing heavy: train and eval re-execute themselves with
malloc settings before JAX starts (rome_jax/host_memory.py).
"""

from __future__ import annotations

from rome_jax.programs import PACKAGE_ROOT, child_env, command

__all__ = ["PACKAGE_ROOT", "child_env", "command"]
