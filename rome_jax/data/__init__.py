"""GLUE data: examples from three sources, tokenized features with a disk cache, and batches.

Pipeline, one module a step:

- `rome_jax.data.examples`: `load_examples` reads one split (original GLUE TSVs,
  Hugging Face `datasets` or tensorflow-datasets; `read_text_file` for unlabeled
  lines) into `Examples` (`rome_jax.data.rows`: columns of texts, label ids, row ids);
- `rome_jax.data.custom`: `CustomTask` and `read_custom`, the files (CSV, TSV, JSON
  Lines, Parquet) or HF dataset of a task described in the config (built by
  `rome_jax.data.tasks`), which `load_examples` reads for such a task;
- `rome_jax.data.features`: `tokenize_examples` -> `Features` ([N, max_length]
  int32 arrays, cached as .npz keyed by `tokenizer_fingerprint`);
- `rome_jax.data.tagging`, `tagging_task`, `entities`: sequence labelling: tagged
  sentences (CoNLL columns, JSON Lines, HF datasets), words aligned to sub-tokens
  (`align`: labels [N, T]), CoNLL-2003 and your own tagged data from the config,
  entity spans and entity-level F1 (strict IOB2);
- `rome_jax.data.batching`: `BatchIterator` (static-shape numpy batches, sharded
  over processes, resumable).

Rows are tokenized to `max_length`; `rome_jax.data.buckets` (`length_buckets`,
`bucket_batches`) lets `BatchIterator(buckets=...)` cut each batch to one of a few
lengths, so the model compiles once per bucket. Eval batches keep their shape by
adding masked padding rows (`example_mask`).

The public names of every module are re-exported here: `from rome_jax.data import X`.
"""

from rome_jax.data.batching import BatchIterator
from rome_jax.data.buckets import (
    bucket_batches,
    length_buckets,
    padded_share,
    sequence_lengths,
)
from rome_jax.data.custom import read_custom
from rome_jax.data.examples import (
    SOURCES,
    Examples,
    load_examples,
    read_glue_dir,
    read_hf_datasets,
    read_text_file,
    read_tfds,
)
from rome_jax.data.features import Features, tokenize_examples, tokenize_texts, tokenizer_fingerprint

__all__ = [
    "SOURCES",
    "BatchIterator",
    "Examples",
    "Features",
    "bucket_batches",
    "length_buckets",
    "load_examples",
    "padded_share",
    "read_glue_dir",
    "read_custom",
    "read_hf_datasets",
    "read_text_file",
    "read_tfds",
    "sequence_lengths",
    "tokenize_examples",
    "tokenize_texts",
    "tokenizer_fingerprint",
]
