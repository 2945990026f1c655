"""The gradient-regularizer ablation: modes x tasks x seeds, evaluated, summarised.

    python scripts/ablation.py --workdir=runs/ablation                       # the CPU grid
    python scripts/ablation.py --workdir=runs/ablation --tasks=sst2 --modes=deebert,romebert --seeds=42,43
    python scripts/ablation.py --workdir=runs/ablation --reuse_only   # report what is finished

The program is rome_jax/commands/ablation.py (its flags, --help and what it does);
`python -m rome_jax.commands.ablation` runs it with the same flags from any directory,
with rome_jax installed and no checkout. This file only runs it.
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's rome_jax

    from rome_jax.commands.ablation import run

    run()
