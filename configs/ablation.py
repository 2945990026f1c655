"""The gradient-regularizer ablation's per-run config: `configs/ablation.py:TASK,MODE[,POOLING]`.

    python train.py --config=configs/ablation.py:sst2,romebert --workdir=runs/ablation/sst2/romebert/seed42

POOLING (optional) is `model.exit_pooling`: `cls` (the default, the papers' design)
or `mean`; `configs/ablation.py:sst2,romebert,mean` is the same run as
`configs/ablation.py:sst2,romebert --config.model.exit_pooling=mean` (the form
`scripts/ablation.py --exit_pooling=mean` uses).

The real pretrained MiniLM (6 layers) with the CPU grid's settings:
- SST-2: the first 20,000 training rows, max length 64, one epoch, batch 16, lr 5e-5;
- MRPC (and other tasks): the full training set, max length 128, 3 epochs, batch 16, lr 5e-5;
evaluated on the whole dev set. `scripts/ablation.py` runs the grid over modes and
seeds and writes docs/results.md.
"""

import os
from pathlib import Path

import ml_collections

from configs import default, demo
from rome_jax.config.run_config import parse_task_mode
from rome_jax.encoder.config import EXIT_POOLINGS
from rome_jax.errors import ConfigError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = (arg or "").split(",")
    pooling = parts.pop().strip() if len(parts) == 3 else "cls"
    if pooling not in EXIT_POOLINGS:
        raise ConfigError(
            f"configs/ablation.py takes TASK,MODE[,POOLING] with POOLING one of {', '.join(EXIT_POOLINGS)}; got {arg!r}"
        )
    task, mode = parse_task_mode(",".join(parts) if arg else arg, "configs/ablation.py", default_task="sst2")
    config = default.get_config()
    config.model.name_or_path = demo._minilm_path()
    config.data.task = task
    if mode:
        config.train.mode = mode
    config.model.exit_pooling = pooling
    repo = Path(__file__).resolve().parent.parent
    config.data.dir = os.environ.get("GLUE_DIR", str(repo.parent / "shared" / "glue"))
    config.train.batch_size = 16
    config.train.eval_batch_size = 128
    config.train.learning_rate = 5e-5
    if config.data.task == "sst2":
        config.data.train_max_examples = 20000
        config.data.max_length = 64
        config.train.num_epochs = 1
    else:
        config.data.max_length = 128
        config.train.num_epochs = 3
    config.train.log_every = 25
    config.train.eval_every = 0  # at the end of every epoch
    config.train.checkpoint_every = 200
    config.train.keep_checkpoints = 1
    return config
