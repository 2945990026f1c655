r"""A tiny, fast run for tests and smoke checks: a few dozen rows, short sequences.

    python train.py --config=configs/tiny.py:wnli --workdir=/tmp/tiny \
        --config.model.name_or_path=/path/to/tiny-bert

`model.name_or_path` must name an HF BERT directory with a tokenizer (the tests
build one: a random 2-layer BERT, hidden size 32, with the MiniLM tokenizer; see
tests/test_train_cli.py). The argument is TASK[,MODE] (default wnli).
"""

import ml_collections

from configs import default
from rome_jax.config.run_config import parse_task_mode


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name_or_path = ""  # required: pass --config.model.name_or_path=DIR
    task, mode = parse_task_mode(arg, "configs/tiny.py", default_task="wnli")
    config.data.task = task
    if mode:
        config.train.mode = mode
    config.data.max_length = 32
    config.data.train_max_examples = 48
    config.data.eval_max_examples = 20
    config.train.batch_size = 4
    config.train.eval_batch_size = 8
    config.train.learning_rate = 1e-3
    config.train.num_epochs = 1
    config.train.max_steps = 12
    config.train.log_every = 3  # checkpoints (every 2) then hold partial logging windows
    config.train.eval_every = 6
    config.train.checkpoint_every = 2
    config.train.keep_checkpoints = 2
    return config
