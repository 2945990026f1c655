"""GLUE data: examples from three sources, tokenized features with a disk cache, and batches.

Pipeline, one module a step:

- `rome_jax.data.examples`: `load_examples` reads one split (original GLUE TSVs,
  Hugging Face `datasets` or tensorflow-datasets; `read_text_file` for unlabeled
  lines) into `Examples` (columns of texts, label ids, row ids);
- `rome_jax.data.features`: `tokenize_examples` -> `Features` ([N, max_length]
  int32 arrays, cached as .npz keyed by `tokenizer_fingerprint`);
- `rome_jax.data.batching`: `BatchIterator` (static-shape numpy batches, sharded
  over processes, resumable).

Every row is padded to `max_length` rather than bucketed by length: the model then
compiles once per batch shape, and eval batches keep that shape by adding masked
padding rows (`example_mask`).

The public names of every module are re-exported here: `from rome_jax.data import X`.
"""

from rome_jax.data.batching import BatchIterator
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
    "load_examples",
    "read_glue_dir",
    "read_hf_datasets",
    "read_text_file",
    "read_tfds",
    "tokenize_examples",
    "tokenize_texts",
    "tokenizer_fingerprint",
]
