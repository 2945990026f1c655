"""Analytic FLOPs of a multi-exit encoder, per example, for early-exit speed-ups.

A matrix product `[m, k] @ [k, n]` counts `2*m*n*k`. Attention is included: `Q K^T`
and `A V` cost `2*T*T*H` each. Elementwise work is counted the way XLA's cost
analysis counts it (`compile().cost_analysis()['flops']`), so that the analytic
full-depth count can be checked against the compiler's:

- one FLOP per element for each elementwise arithmetic op (bias add, residual add,
  scaling, masking select, subtraction, division, ...) and for each element a
  reduction consumes;
- transcendental functions (`exp`, `tanh`, `rsqrt`) are **not** FLOPs: XLA counts
  them separately as "transcendentals";
- the exact (erf) GELU is expanded by XLA into a rational polynomial: about 64
  FLOPs per element (`_GELU_ERF`); the tanh approximation costs 8.

Elementwise terms are small at BERT sizes (about 3% of a MiniLM layer at T=128,
attention included) but a quarter of the work of a tiny test model.

Checked against XLA (CPU, float32, `tests/test_flops.py`, with the layers unrolled
since the cost analysis counts a loop body once): the compiled count is within
0.1% for MiniLM at T=128 and 0.3% for H=64 at T=32. At very small widths
(H=32, I=37) XLA's *compiled* count exceeds its own pre-fusion count by ~30%
(fusion duplicates work there); the pre-fusion count still agrees within 1%.

Exit `i` (0-based) costs the embeddings, layers `0..i` and the heads of exits
`0..i`: every exit's head is computed to decide whether to stop. With
`exit_pooling="mean"` each head also averages its layer's T token vectors (about
2*T*H FLOPs: select and sum, `pooling_flops`); all T positions are counted, as the
compiled program computes them.

ModernBERT (`rome_jax.encoder.modernbert`) has its own layer and exit counts: GeGLU,
the rotary rotation, the masks of local layers (their band is computed once per batch
and not counted; all T x T scores are, as the compiled program computes them), and
the final norm every exit applies; within 0.3% of XLA's count at H=64, T=32..64.

`training_flops` is the other count, for training MFU: the matrix products alone
(`matmul_flops`), forward and backward (3 x forward), elementwise work left out, as
MFU is usually counted (`6 N T` plus attention's `12 L T^2 H`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from rome_jax.encoder.config import ModelConfig

# Per-element FLOPs of composite elementwise ops, as XLA's CPU cost analysis counts them.
_LAYER_NORM = 8  # mean, centre, square, variance, (+eps), scale by rsqrt, gamma, beta
_LAYER_NORM_ROW = 2  # per row: divide the two sums by H
_SOFTMAX_ATTENTION = 8  # 1/sqrt(d) scale, mask select, max, subtract, sum, divide, casts
_SOFTMAX_BAND = 5  # the same with ModernBERT's [B, 1, T, T] mask (measured)
_SOFTMAX_DEBERTA = 4  # DeBERTa's `ops.softmax`: max, subtract, sum, divide
_GELU_ERF = 64
_GELU_TANH = 8
_ACTIVATION = {
    "gelu": _GELU_ERF,
    "gelu_new": _GELU_TANH,
    "gelu_pytorch_tanh": _GELU_TANH,
    "gelu_fast": _GELU_TANH,
    "relu": 1,
    "tanh": 0,
}


def _dense(rows: int, fan_in: int, fan_out: int) -> int:
    """x [rows, fan_in] @ W [fan_in, fan_out] + b."""
    return 2 * rows * fan_in * fan_out + rows * fan_out


def _add_layer_norm(rows: int, width: int) -> int:
    """Residual add, then LayerNorm over `width`."""
    return rows * width * (1 + _LAYER_NORM) + rows * _LAYER_NORM_ROW


def _norm_flops(config: ModelConfig, rows: int, width: int) -> int:
    """A LayerNorm over `width` (ModernBERT's without a bias where `norm_bias` is False)."""
    bias = 1 if config.norm_bias else 0
    return rows * width * (_LAYER_NORM - 1 + bias) + rows * _LAYER_NORM_ROW


def _modernbert_layer_flops(config: ModelConfig, seq_len: int) -> int:
    """A ModernBERT layer (`rome_jax.encoder.modernbert`): attn_norm (computed in layer 0
    too, then not selected), fused Wqkv, the rotary tables of the layer's theta and the
    rotation of q and k, attention over the layer's mask, Wo, residual; mlp_norm, GeGLU
    (Wi to 2I, GELU on I, the gate product), Wo, residual."""
    T, H, I, heads, D = seq_len, config.hidden_size, config.intermediate_size, config.num_heads, config.head_dim
    attn_bias, mlp_bias = int(config.attention_bias), int(config.mlp_bias)
    attn_norm = _norm_flops(config, T, H) + T * H  # + the select of layer 0's identity
    qkv = 2 * T * H * 3 * H + attn_bias * 3 * T * H
    # angles; x cos + rot(x) sin on q and k with rot's negation, as XLA counts them (measured: 5 an element)
    rotary = T * D // 2 + 2 * 5 * T * H
    # the key mask and the band (computed once per batch: left out); XLA counts the
    # softmax over a [B, 1, T, T] mask at 5 an element (measured), not 8 as over BERT's [B, 1, 1, T]
    mask = T * T
    scores = 2 * (2 * T * T * H) + _SOFTMAX_BAND * heads * T * T
    out = 2 * T * H * H + attn_bias * T * H + T * H
    mlp = _norm_flops(config, T, H) + 2 * T * H * 2 * I + mlp_bias * 2 * T * I + _ACTIVATION[config.hidden_act] * T * I
    mlp += T * I + 2 * T * I * H + mlp_bias * T * H + T * H
    return attn_norm + qkv + rotary + mask + scores + out + mlp


def _modernbert_exit_flops(config: ModelConfig, seq_len: int | None) -> int:
    """A ModernBERT exit: the final norm on the pooled token ("cls") or on every token,
    the pooling, head dense (+bias), `exit_activation`, head norm, classifier."""
    H, C = config.hidden_size, config.num_labels
    rows = 1
    if config.exit_pooling != "cls":
        if seq_len is None:
            raise ValueError("ModernBERT's mean and token exits normalise every token: pass seq_len")
        rows = seq_len
    pooled_rows = 1 if config.exit_pooling == "mean" else rows
    head = _dense(pooled_rows, H, H) - (0 if config.classifier_bias else pooled_rows * H)
    head += _ACTIVATION[config.exit_activation] * pooled_rows * H + _norm_flops(config, pooled_rows, H)
    pooling = pooling_flops(config, seq_len) if config.exit_pooling == "mean" else 0
    return _norm_flops(config, rows, H) + pooling + head + _dense(pooled_rows, H, C)


def _deberta_embedding_flops(config: ModelConfig, seq_len: int) -> int:
    """DeBERTa's embeddings: the adds of the absolute positions and token types where it
    has them, `embed_proj` (no bias) where the widths differ, the LayerNorm over H and
    the product with the attention mask."""
    T, H, E = seq_len, config.hidden_size, config.embedding_size or config.hidden_size
    adds = T * E * (int(config.position_biased_input) + int(config.has_token_types))
    projection = 2 * T * E * H if config.projects_embeddings else 0
    return adds + projection + T * H * _LAYER_NORM + T * _LAYER_NORM_ROW + T * H


def _deberta_layer_flops(config: ModelConfig, seq_len: int) -> int:
    """A DeBERTa layer on one example: Q, K, V; `Q K^T` and its scale; each position term
    (c2p: Q against the 2S position keys, p2c: K against the 2S position queries; the
    gather is free; its scale and add); the query-and-key mask (its `and` and select);
    the softmax; `A V`; the output blocks and the feed-forward as BERT's. The position
    projections of the shared `rel_embeddings` are per batch, not per example:
    `deberta_shared_flops`."""
    T, H, heads = seq_len, config.hidden_size, config.num_heads
    S2 = 2 * _deberta_span(config)
    terms = len(config.pos_att_type)
    scores = 2 * T * T * H + heads * T * T
    positions = terms * (2 * T * S2 * H + 2 * heads * T * T)
    mask = T * T + heads * T * T
    mix = 2 * T * T * H + _SOFTMAX_DEBERTA * heads * T * T
    output = _dense(T, H, H) + _add_layer_norm(T, H)
    return 3 * _dense(T, H, H) + scores + positions + mask + mix + output + feed_forward_flops(config, seq_len)


def _deberta_span(config: ModelConfig) -> int:
    """S of `rome_jax.encoder.deberta.attention_span` (its `rel_embeddings` have 2S rows)."""
    if config.position_buckets > 0:
        return config.position_buckets
    return config.max_relative_positions if config.max_relative_positions >= 1 else config.max_position_embeddings


def deberta_shared_flops(config: ModelConfig) -> int:
    """DeBERTa's work per layer and batch, whatever the batch size and length (not in
    the per-example counts): the query/key projections of the 2S relative embeddings
    (one per position term), and their LayerNorm (`norm_rel_ebd`; once a forward in the
    scanned model, once a layer in the layer-at-a-time pieces). 0 for other families."""
    if config.family != "deberta-v2":
        return 0
    H, S2 = config.hidden_size, 2 * _deberta_span(config)
    norm = S2 * H * _LAYER_NORM + S2 * _LAYER_NORM_ROW if config.norm_rel_ebd else 0
    return len(config.pos_att_type) * _dense(S2, H, H) + norm


def embedding_flops(config: ModelConfig, seq_len: int) -> int:
    """Embeddings of one example: the three lookups (two for DistilBERT, which has no
    token types) are free, their sum and LayerNorm are not, nor ALBERT's (ELECTRA's)
    mapping from the embedding width to the hidden size."""
    if config.family == "modernbert":  # token embeddings and their norm only
        return _norm_flops(config, seq_len, config.hidden_size)
    if config.family == "deberta-v2":
        return _deberta_embedding_flops(config, seq_len)
    T, E = seq_len, config.embedding_size or config.hidden_size
    mapping = _dense(T, E, config.hidden_size) if config.projects_embeddings else 0
    token_types = T * E if config.has_token_types else 0
    return token_types + _add_layer_norm(T, E) + mapping


def attention_flops(config: ModelConfig, seq_len: int) -> int:
    """Self-attention of one example: Q, K, V, `Q K^T`, softmax, `A V` and the output block."""
    T, H, heads = seq_len, config.hidden_size, config.num_heads
    projections = 3 * _dense(T, H, H)
    scores_and_mix = 2 * (2 * T * T * H)
    softmax = _SOFTMAX_ATTENTION * heads * T * T
    output = _dense(T, H, H) + _add_layer_norm(T, H)
    return projections + scores_and_mix + softmax + output


def feed_forward_flops(config: ModelConfig, seq_len: int) -> int:
    """Intermediate dense + activation + output dense + residual LayerNorm, one example."""
    T, H, I = seq_len, config.hidden_size, config.intermediate_size
    return _dense(T, H, I) + _ACTIVATION[config.hidden_act] * T * I + _dense(T, I, H) + _add_layer_norm(T, H)


def layer_flops(config: ModelConfig, seq_len: int) -> int:
    """One encoder layer on one example of `seq_len` tokens."""
    if config.family == "modernbert":
        return _modernbert_layer_flops(config, seq_len)
    if config.family == "deberta-v2":
        return _deberta_layer_flops(config, seq_len)
    return attention_flops(config, seq_len) + feed_forward_flops(config, seq_len)


def pooling_flops(config: ModelConfig, seq_len: int | None = None) -> int:
    """What an exit spends choosing the vector it pools, one example: nothing for "cls"
    (the first token is a slice); for "mean" (`model.masked_mean`) the select of the
    attended positions and their sum (T*H each), the count of attended positions (T),
    its floor at 1 and the division (H)."""
    if config.exit_pooling == "cls":
        return 0
    if seq_len is None:
        raise ValueError("exit_pooling 'mean' costs FLOPs in proportion to the sequence length: pass seq_len")
    T, H = seq_len, config.hidden_size
    return 2 * T * H + T + 1 + H


def exit_flops(config: ModelConfig, seq_len: int | None = None) -> int:
    """One exit's head on one example: the pooling (`pooling_flops`: none for "cls";
    "mean" needs `seq_len`), pooler dense, its activation (`exit_activation`: tanh is a
    transcendental, no FLOP; DistilBERT's ReLU 1 and ELECTRA's exact GELU 64 a unit)
    and classifier."""
    if config.family == "modernbert":
        return _modernbert_exit_flops(config, seq_len)
    H, C = config.hidden_size, config.num_labels
    pooler = _dense(1, H, H) + _ACTIVATION[config.exit_activation] * H
    return pooling_flops(config, seq_len) + pooler + _dense(1, H, C)


def flops_to_exit(config: ModelConfig, seq_len: int, exit_index: int | npt.ArrayLike) -> np.ndarray | int:
    """FLOPs one example spends to answer at `exit_index` (0-based, int or array of ints).

    Embeddings + layers `0..i` + the heads of exits `0..i`.
    """
    per_exit = layer_flops(config, seq_len) + exit_flops(config, seq_len)
    exits_run = np.asarray(exit_index, dtype=np.int64) + 1
    total = embedding_flops(config, seq_len) + exits_run * per_exit
    return int(total) if np.ndim(total) == 0 else total


def full_flops(config: ModelConfig, seq_len: int) -> int:
    """FLOPs of the full-depth forward of one example (every layer and every exit)."""
    return int(flops_to_exit(config, seq_len, config.num_layers - 1))


def flops_speedup(config: ModelConfig, seq_len: int, exit_indices: npt.ArrayLike) -> float:
    """`full / mean(flops_to_exit)` over examples answering at `exit_indices` [N] (0-based)."""
    spent = np.asarray(flops_to_exit(config, seq_len, np.asarray(exit_indices)), dtype=np.float64)
    return float(full_flops(config, seq_len) / spent.mean())


def matmul_flops(config: ModelConfig, seq_len: int) -> int:
    """Matrix-product FLOPs of the full-depth forward of one example, nothing else:
    `2 x T x` the weights of every layer's dense products, attention's `Q K^T` and
    `A V` (`4 T^2 H` a layer), every exit head on its pooled vector (`2 (H^2 + H C)`), and
    ALBERT's (ELECTRA's) embedding mapping. Embedding lookups and elementwise work (mean pooling's
    sums among them) are not counted."""
    T, H, I, C = seq_len, config.hidden_size, config.intermediate_size, config.num_labels
    ffn = 3 * H * I if config.family == "modernbert" else 2 * H * I  # ModernBERT's GeGLU: Wi to 2I, Wo
    layer = 2 * T * (4 * H * H + ffn) + 2 * (2 * T * T * H)
    head = 2 * (H * H + H * C)
    mapping = 2 * T * (config.embedding_size or H) * H if config.projects_embeddings else 0
    return mapping + config.num_layers * (layer + head)


def training_flops(config: ModelConfig, seq_len: int) -> int:
    """Model FLOPs of one training example (forward and one backward pass), for MFU.

    `3 x matmul_flops`: the backward pass computes two products for each forward one
    (input and weight gradients). For BERT this is `6 x matmul weights x T` plus
    `12 x L x T^2 x H` plus the heads. A step with two backward passes (SD + GR) does
    `5 x matmul_flops` of work; MFU counts the model's 3x for every mode.
    """
    return 3 * matmul_flops(config, seq_len)
