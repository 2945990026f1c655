"""Every config key, declared once: its default, its check and its documentation.

    Key("train.learning_rate", 2e-5, positive(float), "peak rate; linear decay to 0 over each stage")

From `SECTIONS` come the default config (`default_config`, which
configs/default.py returns), the checks `run_config.validate` runs (`KEYS`), the
keys a resumed run may change (`RUN_ONLY_KEYS`), the values that stored configs
written before a key existed are read with (`ADDED_KEYS`, `with_added_keys`) and
the key tables of docs/configs.md (`rome_jax.config.markdown`):

    python -m rome_jax.config.markdown                         # print the tables
    python -m rome_jax.config.markdown --update docs/configs.md  # rewrite them there

A key flagged `run_only` does not change what a run computes (logging, checkpoint
cadence): a workdir resumes with another value. A key added after runs were written
gives `before`, the value that computes what runs without the key computed: a stored
config lacking the key reads as having it, so old workdirs still evaluate, resume
and compare.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from rome_jax.config.checks import (
    Check,
    at_least,
    between,
    bucket_spec,
    model_name,
    one_of,
    positive,
    shown,
    task_name,
    typed,
)
from rome_jax.config.choices import (
    ANCHORS,
    GR_SCOPES,
    GRANULARITIES,
    MODES,
    REDUCTIONS,
    STAGE2_CLIPS,
    STAGE2_STARTS,
)
from rome_jax.data.examples import SOURCES
from rome_jax.data.metrics import METRIC_NAMES
from rome_jax.data.tagging_task import TAGGING_DEFAULTS
from rome_jax.data.tasks import CUSTOM_DEFAULTS, FORMATS
from rome_jax.encoder.config import ATTENTION_KERNELS, DTYPES, EXIT_POOLINGS


class _New:
    def __repr__(self) -> str:
        return "NEW"


NEW: Any = _New()
"""`Key.before` of a key that every stored config has."""


@dataclasses.dataclass(frozen=True)
class FromEnv:
    """A default read from the environment when the config is built."""

    variable: str
    fallback: str

    def value(self) -> str:
        return os.environ.get(self.variable, self.fallback)


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: dotted name, default, check, documentation (markdown, one line).

    run_only: a resumed run may change it (it does not change what is computed).
    before: for a key added after runs were written, the value those runs computed
      with (`NEW`: none, every stored config has the key).
    allowed: the docs' "allowed" column where the check's own words say too little.
    """

    name: str
    default: Any
    check: Check
    doc: str
    run_only: bool = False
    before: Any = NEW
    allowed: str | None = None

    def default_value(self) -> Any:
        return self.default.value() if isinstance(self.default, FromEnv) else self.default


@dataclasses.dataclass(frozen=True)
class Section:
    """A group of keys: one table of docs/configs.md under `title`."""

    title: str
    keys: tuple[Key, ...]
    intro: str = ""
    level: int = 2


def _listed(*values: Any) -> str:
    """`a`, `b`: choices as the docs write them."""
    return ", ".join(shown(v) for v in values)


def _custom(name: str, check: Check, doc: str, allowed: str | None = None) -> Key:
    """A `data.custom.*` key: its default is `rome_jax.data.tasks.CUSTOM_DEFAULTS`'
    (the data package, below this one, fills it in too); stored configs lacking it
    read as that default."""
    default = CUSTOM_DEFAULTS[name]
    return Key(f"data.custom.{name}", default, check, doc, before=default, allowed=allowed)


def _tagging(name: str, check: Check, doc: str, allowed: str | None = None, default: Any = None) -> Key:
    """A `data.tagging.*` key: its default is `rome_jax.data.tagging_task.TAGGING_DEFAULTS`'
    (or `default`, e.g. read from the environment); stored configs lacking it read as
    that default."""
    before = TAGGING_DEFAULTS[name]
    return Key(
        f"data.tagging.{name}", before if default is None else default, check, doc, before=before, allowed=allowed
    )


SECTIONS: tuple[Section, ...] = (
    Section(
        "`model.*`",
        (
            Key(
                "model.name_or_path",
                "bert-base-uncased",
                model_name,
                "a local HF directory (`config.json` + weights) or a hub name (needs a network)",
            ),
            Key("model.dtype", "float32", one_of(*DTYPES), "compute dtype; parameters stay float32"),
            Key(
                "model.attention",
                "xla",
                one_of(*ATTENTION_KERNELS),
                "attention kernel at evaluation: `xla` on any backend, `cudnn` for cuDNN's flash attention "
                "(CUDA GPUs, needs `model.dtype=bfloat16`). Training uses the XLA form either way",
                before="xla",
            ),
            Key(
                "model.reinit_classifier",
                False,
                typed(bool),
                "a checkpoint whose classifier has another label count (an SST-2 model for a 3-class task): "
                "`True` starts the classifiers afresh from `train.seed`, with one warning naming both shapes; "
                "`False` refuses it with one error naming this key",
                before=False,
            ),
            Key(
                "model.exit_pooling",
                "cls",
                one_of(*EXIT_POOLINGS),
                "what every exit's pooler reads: the layer's `[CLS]` vector (the papers' design) or the masked "
                "mean of its token vectors ([methods](methods.md)); exported models record it, transformers "
                "pools `[CLS]` regardless",
                before="cls",
            ),
        ),
    ),
    Section(
        "`data.*`",
        (
            Key(
                "data.task",
                "rte",
                task_name,
                "the task; `custom` reads `data.custom.*` ([your own data](custom_data.md))",
            ),
            Key(
                "data.dir",
                FromEnv("GLUE_DIR", ""),
                typed(str),
                'the local GLUE directory (`RTE/train.tsv`, ...); `""` reads the Hugging Face hub '
                "(`nyu-mll/glue`, needs a network)",
                allowed="string; an existing directory when non-empty with source `dir`",
            ),
            Key(
                "data.source",
                "dir",
                one_of(*SOURCES),
                "GLUE TSVs, Hugging Face `datasets` (hub online, or local Parquet/CSV/TSV), tensorflow-datasets "
                "(`glue/*`, needs `pip install tensorflow`)",
            ),
            Key(
                "data.max_length",
                128,
                at_least(3),
                "tokens per example: longer ones are truncated",
                allowed="int >= 3, at most the model's positions",
            ),
            Key(
                "data.buckets",
                "auto",
                bucket_spec,
                "length buckets: each batch is cut to the shortest bucket holding its rows, one compiled step "
                "per bucket. `auto`: the powers of two from 16 below `max_length`, and `max_length`; `none`: "
                "every batch padded to `max_length` ([performance](performance.md#length-buckets))",
                before="none",
            ),
            Key("data.train_max_examples", 0, at_least(0), "the first N training rows; 0: all"),
            Key("data.eval_max_examples", 0, at_least(0), "the first N rows of each dev split; 0: all"),
            Key(
                "data.cache_dir",
                "",
                typed(str),
                'where tokenized features are cached (keyed by tokenizer, length and texts); `""`: no cache',
                run_only=True,
            ),
            Key(
                "data.stage2_unlabeled",
                "",
                typed(str),
                'FastBERT\'s stage 2 data: `""` the training set (labels unused), a split name (`test`, `dev`) '
                "of the task, or a path to a text file with one example per line (a tab separates a sentence "
                "pair)",
                allowed="string; `fastbert` mode only",
            ),
        ),
    ),
    Section(
        "`data.custom.*` (with `data.task=custom`)",
        (
            _custom(
                "train_file",
                typed(str),
                "CSV, TSV, JSON Lines or Parquet file with a header",
                "path",
            ),
            _custom("dev_file", typed(str), "the dev split, the same way", "path"),
            _custom("test_file", typed(str), "optional test split; its labels may be missing", "path"),
            _custom(
                "format",
                typed(str),
                'the files\' format; `""`: from the extension',
                _listed("", *FORMATS),
            ),
            _custom(
                "hf_dataset",
                typed(str),
                "instead of files: a Hugging Face dataset (hub online) or a local dataset directory",
            ),
            _custom("hf_config", typed(str), 'the dataset\'s config name; `""`: none'),
            _custom("text_a", typed(str), "the text column", "column name"),
            _custom("text_b", typed(str), 'the second text of a pair; `""`: single texts', "column name"),
            _custom("label", typed(str), "the label (or score) column", "column name"),
            _custom(
                "label_names",
                typed(str),
                'the labels in id order; `""`: read from the training file (numeric order when every label '
                "is an integer, else sorted as strings) and recorded in `config.json`",
                '`"a,b,c"` or a JSON list, no duplicates',
            ),
            _custom("regression", typed(bool), "one output, float labels"),
            _custom(
                "metric",
                typed(str),
                '`""`: accuracy for classification, `pearson_and_spearman` for regression',
                _listed("", *METRIC_NAMES),
            ),
        ),
        level=3,
    ),
    Section(
        "`data.tagging.*` (with `data.task=conll2003` or `data.task=tagging`)",
        (
            _tagging(
                "dir",
                typed(str),
                'CoNLL-2003\'s directory (`train.txt`, `dev.txt`); `""` reads the hub (`eriktks/conll2003`, '
                "needs a network)",
                default=FromEnv("CONLL_DIR", ""),
            ),
            _tagging(
                "train_file",
                typed(str),
                "tagged training sentences: CoNLL-style columns (word first, tag last, a blank line between "
                'sentences) or JSON Lines `{"tokens": [...], "tags": [...]}`',
                "path",
            ),
            _tagging("dev_file", typed(str), "the dev split, the same way", "path"),
            _tagging("test_file", typed(str), "optional test split; its tags may be missing", "path"),
            _tagging("format", typed(str), '`""`: from the extension', _listed("", "conll", "jsonl")),
            _tagging(
                "hf_dataset",
                typed(str),
                "instead of files: a Hugging Face dataset (hub online) or a local dataset directory",
            ),
            _tagging("hf_config", typed(str), 'the dataset\'s config name; `""`: none'),
            _tagging("tokens", typed(str), "the words' column (JSON Lines key, dataset column)", "column name"),
            _tagging(
                "tags",
                typed(str),
                "the tags' column (names, or ids with a ClassLabel feature or `tag_names`)",
                "column name",
            ),
            _tagging(
                "tag_names",
                typed(str),
                'the tags in id order (IOB2); `""`: `O`, then `B-`/`I-` of each type in the training data, '
                "sorted, recorded in `config.json`",
                '`"O,B-PER,I-PER"` or a JSON list',
            ),
        ),
        level=3,
    ),
    Section(
        "`train.*`: optimisation and schedule",
        (
            Key("train.mode", "romebert", one_of(*MODES), "the training mode ([methods.md](methods.md))"),
            Key(
                "train.batch_size",
                8,
                positive(),
                "global batch (all devices, all hosts); must divide into `grad_accum_steps` micro-batches, "
                "each a multiple of the device count",
            ),
            Key(
                "train.eval_batch_size",
                64,
                positive(),
                "evaluation batch",
                allowed="int > 0, a multiple of the device count",
            ),
            Key("train.learning_rate", 2e-5, positive(float), "peak rate; linear decay to 0 over each stage"),
            Key(
                "train.warmup_ratio",
                0.0,
                between(0.0, 1.0, high_open=True),
                "fraction of a stage's steps warming up from 0",
            ),
            Key("train.weight_decay", 0.0, at_least(0.0, float), "AdamW; never on biases and LayerNorm"),
            Key("train.adam_eps", 1e-8, positive(float), "AdamW epsilon"),
            Key(
                "train.adam_bias_correction",
                True,
                typed(bool),
                "False: FastBERT's `AdamW(correct_bias=False)`",
                before=True,
            ),
            Key("train.clip_norm", 1.0, at_least(0.0, float), "global gradient-norm clip; 0: none"),
            Key(
                "train.num_epochs",
                3,
                positive(),
                "epochs (of stage 1 in two-stage modes); the reference trains RoBERTa for 10",
            ),
            Key("train.stage2_epochs", 0, at_least(0), "two-stage modes' stage 2; 0: the same as `num_epochs`"),
            Key(
                "train.stage2_lr_scale",
                1.0,
                positive(float),
                "stage 2's peak rate = `learning_rate` x this (FastBERT: 10)",
                before=1.0,
                allowed="float > 0; two-stage modes only",
            ),
            Key(
                "train.stage2_start",
                "last",
                one_of(*STAGE2_STARTS),
                "stage 2 starts from stage 1's last step, or from its best evaluation (final exit's dev score, "
                "first of equal ones), as FastBERT does",
                before="last",
                allowed="`last`, `best`; two-stage modes only",
            ),
            Key("train.max_steps", 0, at_least(0), "at most this many steps per stage; 0: no limit"),
            Key(
                "train.grad_accum_steps",
                1,
                positive(),
                "micro-batches per step (`batch_size / grad_accum_steps` each)",
            ),
            Key(
                "train.seed",
                42,
                typed(int),
                "parameters of new exits, shuffling, dropout (dropout keys are `fold_in(seed, step)`)",
            ),
        ),
    ),
    Section(
        "`train.*`: self-distillation and gradient regularization",
        (
            Key("train.gamma", 0.9, between(0.0, 1.0), "weight `g` of distillation against each exit's CE"),
            Key("train.temperature", 3.0, positive(float), "distillation temperature `T`"),
            Key(
                "train.kl_reduction",
                "reference",
                one_of(*REDUCTIONS),
                "`reference`: mean over batch x classes (PyTorch `KLDivLoss()` default, weight `g T^2 / C`); "
                "`batchmean`: over the batch",
            ),
            Key(
                "train.anchor",
                "auto",
                one_of("auto", *ANCHORS),
                "`A`: keep the final exit's gradient, project the exits'; `B`: the other way round; `auto`: "
                "the reference's per-task choice (`A` for MNLI and QQP, else `B`)",
            ),
            Key(
                "train.gr_scope",
                "reference",
                one_of(*GR_SCOPES),
                "the parameters the projection's dot products run over: the weight matrices of layers 1..L-1, "
                "or every parameter",
            ),
            Key(
                "train.gr_granularity",
                "global",
                one_of(*GRANULARITIES),
                "one flattened vector, or tensor by tensor",
            ),
            Key("train.gr_symmetric", False, typed(bool), "project both ways (PCGrad)"),
            Key(
                "train.stage2_clip",
                "reference",
                one_of(*STAGE2_CLIPS),
                "DeeBERT stage 2: the frozen backbone's gradient counts in the clip norm (`reference`), or the "
                "gradient stops at the backbone (`trainable`)",
            ),
        ),
    ),
    Section(
        "`train.*`: bookkeeping",
        (
            Key("train.log_every", 50, positive(), "steps per training record (means since the last record)"),
            Key(
                "train.eval_every",
                0,
                at_least(0),
                "steps between dev evaluations; 0: at the end of every epoch (and of each stage)",
            ),
            Key(
                "train.checkpoint_every",
                500,
                at_least(0),
                "steps between checkpoints; 0: only after evaluations and at the end",
                run_only=True,
            ),
            Key(
                "train.keep_checkpoints",
                2,
                positive(),
                "the latest few checkpoints kept, plus the best",
                run_only=True,
            ),
            Key("train.multihost", False, typed(bool), "call `jax.distributed.initialize()`", run_only=True),
            Key(
                "train.debug_nan_at_step",
                0,
                at_least(0),
                "testing the NaN guard only: set the parameters to NaN before this step; 0: off",
                run_only=True,
            ),
        ),
        intro="Steps are global: stage 2 continues stage 1's count.",
    ),
)
"""Every config key, by section (the order of configs/default.py and docs/configs.md)."""

SCHEMA: dict[str, Key] = {key.name: key for section in SECTIONS for key in section.keys}
"""Every key by its dotted name."""

KEYS: dict[str, Check] = {name: key.check for name, key in SCHEMA.items()}
"""Every config key and its check (a function returning a problem or None)."""

RUN_ONLY_KEYS = frozenset(name for name, key in SCHEMA.items() if key.run_only)
"""Keys that do not change what a run computes: a workdir may be resumed with other values."""

ADDED_KEYS: dict[str, Any] = {name: key.before for name, key in SCHEMA.items() if key.before is not NEW}
"""Keys added after runs were written, with the value that computes what runs
without the key computed: a stored config lacking one is read as having it."""


# ---------------------------------------------------------------- dotted names


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train.learning_rate": 2e-05, ...}: the leaves under dotted names."""
    items = config.items() if isinstance(config, (Mapping, ml_collections.ConfigDict)) else ()
    flat: dict[str, Any] = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The nested dict of dotted names: {"train.seed": 1} -> {"train": {"seed": 1}}."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def defaults() -> dict[str, Any]:
    """Every key's default under its dotted name (environment defaults read now)."""
    return {name: key.default_value() for name, key in SCHEMA.items()}


def default_config() -> ml_collections.ConfigDict:
    """The default config: every key of `SECTIONS` at its default (configs/default.py)."""
    return ml_collections.ConfigDict(nest(defaults()))


def with_added_keys(stored: Mapping[str, Any] | ml_collections.ConfigDict) -> dict[str, Any]:
    """A stored config (nested or dotted) as dotted names, each key of `ADDED_KEYS` it
    lacks at the value runs computed with before the key existed."""
    return {**ADDED_KEYS, **flatten(stored)}
