r"""The default configuration: the reference hyper-parameters (docs/methods.md).

Every other config starts from this one. Override any value on the command line:

    python train.py --config=configs/default.py --workdir=runs/rte \
        --config.data.task=rte --config.train.learning_rate=3e-5

Keys are checked by `rome_jax.config.run_config.validate` when training starts; every key
is described in docs/configs.md.
"""

import os

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict()
    # A local HF directory (config.json + model.safetensors) or a hub name.
    config.model.name_or_path = "bert-base-uncased"
    # Compute dtype: "float32" or "bfloat16" (parameters stay float32).
    config.model.dtype = "float32"
    # Attention kernel for evaluation: "xla" (any backend) or "cudnn" (cuDNN flash
    # attention; CUDA GPUs and bfloat16 only). Training uses the XLA form either way.
    config.model.attention = "xla"
    # A checkpoint whose classifier has another label count (say SST-2's 2 for a
    # 3-class task): True starts every exit's classifier afresh from train.seed.
    config.model.reinit_classifier = False
    # What every exit's pooler reads: "cls", the layer's first token (the papers'
    # design, BERT's pooler); "mean", the mean of the layer's token vectors over the
    # attended positions (for backbones trained with mean pooling, whose early [CLS]
    # carries little). Exported models record it; transformers pools [CLS] regardless.
    config.model.exit_pooling = "cls"

    config.data = ml_collections.ConfigDict()
    config.data.task = "rte"
    # The local GLUE directory (RTE/train.tsv, ...); an empty string reads the
    # Hugging Face hub instead (nyu-mll/glue, needs a network connection).
    config.data.dir = os.environ.get("GLUE_DIR", "")
    # "dir" (GLUE TSVs), "hf" (Hugging Face datasets) or "tfds" (tensorflow-datasets).
    config.data.source = "dir"
    config.data.max_length = 128
    # Length buckets: each batch is cut to the shortest of these sequence lengths that
    # holds its rows (one compiled step per bucket) instead of padded to max_length.
    # "auto": the powers of two from 16 below max_length, and max_length; "none":
    # every batch padded to max_length (one shape); or lengths, "32,64,128".
    config.data.buckets = "auto"
    config.data.train_max_examples = 0  # the first N training rows; 0: all of them
    config.data.eval_max_examples = 0  # the first N rows of each dev split; 0: all
    config.data.cache_dir = ""  # where tokenized features are cached; "": no cache
    # FastBERT's stage 2 needs no labels: "" trains it on the training set (labels
    # unused), a split name ("test", "dev") on that split of the task, a path on a
    # text file with one example per line (a tab separates a sentence pair).
    config.data.stage2_unlabeled = ""
    # data.task = "custom": your own data, described here (docs/custom_data.md;
    # configs/custom.py). Unused by the GLUE tasks.
    config.data.custom = ml_collections.ConfigDict()
    config.data.custom.train_file = ""  # CSV, TSV, JSON Lines or Parquet, with a header
    config.data.custom.dev_file = ""
    config.data.custom.test_file = ""  # optional; labels may be missing
    config.data.custom.format = ""  # "": from the extension; or csv, tsv, jsonl, parquet
    config.data.custom.hf_dataset = ""  # instead of files: a hub dataset or a local directory
    config.data.custom.hf_config = ""
    config.data.custom.text_a = "sentence"  # column names
    config.data.custom.text_b = ""  # "": single texts
    config.data.custom.label = "label"
    config.data.custom.label_names = ""  # "a,b,c" or a JSON list; "": from the training file
    config.data.custom.regression = False  # one output, float labels
    config.data.custom.metric = ""  # "": accuracy, or pearson_and_spearman for regression

    config.train = ml_collections.ConfigDict()
    config.train.mode = "romebert"  # one of rome_jax.training.step.MODES
    config.train.batch_size = 8  # global batch (all devices, all hosts)
    config.train.eval_batch_size = 64
    config.train.learning_rate = 2e-5  # peak; linear decay to 0 over each stage
    config.train.warmup_ratio = 0.0  # fraction of a stage's steps warming up from 0
    config.train.weight_decay = 0.0  # AdamW; never on biases and LayerNorm
    config.train.adam_eps = 1e-8
    config.train.adam_bias_correction = True  # False: FastBERT's AdamW(correct_bias=False)
    config.train.clip_norm = 1.0  # global gradient norm clip; 0: none
    config.train.num_epochs = 3  # the reference trains RoBERTa for 10
    config.train.stage2_epochs = 0  # DeeBERT's stage 2; 0: the same as num_epochs
    config.train.stage2_lr_scale = 1.0  # stage 2's peak rate: learning_rate x this (FastBERT: 10)
    # Stage 2 starts from stage 1's "last" step, or from its "best" evaluation (the
    # final exit's dev score; the first of equal ones), as FastBERT does.
    config.train.stage2_start = "last"
    config.train.max_steps = 0  # at most this many steps per stage; 0: no limit
    config.train.grad_accum_steps = 1  # micro-batches per step (batch_size / this each)
    config.train.seed = 42  # parameters of new exits, shuffling, dropout

    # Self-distillation and gradient regularization (docs/methods.md).
    config.train.gamma = 0.9
    config.train.temperature = 3.0
    config.train.kl_reduction = "reference"  # or "batchmean"
    # "A": keep the final exit's gradient, project the exits'; "B": the other way
    # round; "auto": the reference's per-task choice ("A" for MNLI and QQP, else "B").
    config.train.anchor = "auto"
    config.train.gr_scope = "reference"  # or "all"
    config.train.gr_granularity = "global"  # or "per_tensor"
    config.train.gr_symmetric = False
    config.train.stage2_clip = "reference"  # DeeBERT stage 2: or "trainable"

    # Bookkeeping (steps are global: stage 2 continues stage 1's count).
    config.train.log_every = 50
    config.train.eval_every = 0  # 0: at the end of every epoch (and of each stage)
    config.train.checkpoint_every = 500  # 0: only after evaluations and at the end
    config.train.keep_checkpoints = 2  # the latest few, plus the best
    config.train.multihost = False  # call jax.distributed.initialize()
    # Testing the NaN guard only: set the parameters to NaN before this step; 0: off.
    config.train.debug_nan_at_step = 0
    return config
