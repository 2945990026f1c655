"""Serving a trained model: the Python API, predictions, prediction files and export.

- `api`: `load_pretrained` and `MultiExitModel` (HF directories and runs in and out);
- `predict`: predictions with early exit, in input order, over length buckets;
- `files`: prediction files in (TSV/CSV/JSONL/stdin) and out (JSONL/CSV), streamed;
- `export`: a `jax.export` program of the early-exit predictor.

May import: `rome_jax.exits`, `rome_jax.data`, `rome_jax.encoder` and the core modules.
"""
