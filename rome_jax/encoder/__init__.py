"""The encoder: a multi-exit BERT-family transformer as pure functions over a params pytree.

- `config`: `ModelConfig` (architecture, exits, dtype), read from an HF config;
- `ops`: the operators (dense, attention kernels, activations, dropout);
- `model`: the Flax module, every exit's logits, layer-by-layer application for the
  executors, parameter initialisation and shape checks;
- `hf_io`: HF checkpoints in (BERT, RoBERTa and XLM-R, ALBERT, DistilBERT, ELECTRA, ModernBERT) and out;
- `modernbert`, `modernbert_io`: ModernBERT's layers (rotary positions, local/global
  attention, GeGLU, the shared final norm in every exit) and its tensor names;
- `flops`: the FLOPs of each layer and exit;
- `pytree`: the type names `PyTree` and `Params` (annotations of parameter trees).

May import: `rome_jax.errors` (and the libraries). Nothing above it.
"""
