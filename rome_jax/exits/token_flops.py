"""Analytic FLOPs of token-level (TOKEE) and sentence-level (SENTEE) early exit.

In the conventions of `rome_jax.encoder.flops` (a product `[m, k] @ [k, n]` is
`2*m*n*k`, a bias add `m*n`, elementwise work as XLA counts it, transcendentals
free), per sentence, over its S attended positions (its real length, not padding).
Layer `i` with A tokens still active (special tokens included) costs:

- K and V projections of all S tokens: `2 x (2*S*H*H + S*H)` (the exited tokens'
  keys and values are recomputed from their frozen states by each layer's weights);
- the Q projection of the A active tokens: `2*A*H*H + A*H`;
- scores `Q K^T` and context `A V` of A queries against S keys: `2 x 2*A*S*H`, and
  the softmax `8 * heads * A * S`;
- the output projection, its residual add and LayerNorm, the feed-forward and its
  residual add and LayerNorm, for the A active tokens (`feed_forward_flops(A)`);
- exit `i`'s classifier on the A active tokens: `2*A*H*C + A*C` (dropout is the
  identity at inference; the token head's pooler output is not used, not counted).

Plus the embeddings of the S tokens (`embedding_flops(S)`). A layer with no active
token is not run by the sentence (A = 0 costs nothing). With A = S at every layer
this is `embedding_flops(S) + L x (layer_flops(S) + 2*S*H*C + S*C)`: the full-depth
count (`token_full_flops`), so a saving is a ratio of the two.

These count the work token-level exit needs, not what the dense compiled program
(`rome_jax.exits.tokens.token_early_exit`) does: it runs every layer on all T
positions of every row, padding and exited tokens included (their results thrown
away), so the FLOPs that token-level exit saves are not saved on the clock on dense
hardware, unless the whole batch stops (the while loop stops when no token of the
batch is active). Sentence-level exit saves whole layers per sentence, hence clock
time at batch 1 or in the per-example executors.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.flops import (
    _SOFTMAX_ATTENTION,
    _add_layer_norm,
    _dense,
    embedding_flops,
    feed_forward_flops,
    layer_flops,
)


def _token_classifier(config: ModelConfig, tokens: int) -> int:
    """A token exit's classifier on `tokens` token vectors."""
    return _dense(tokens, config.hidden_size, config.num_labels)


def token_layer_flops(config: ModelConfig, active: int, attended: int) -> int:
    """Layer i and exit i of one sentence with `active` tokens still running among its
    `attended` positions (see the module docstring); 0 when none is active."""
    A, S, H = active, attended, config.hidden_size
    if A == 0:
        return 0
    keys_values = 2 * _dense(S, H, H)
    query = _dense(A, H, H)
    scores_and_mix = 2 * (2 * A * S * H)
    softmax = _SOFTMAX_ATTENTION * config.num_heads * A * S
    output = _dense(A, H, H) + _add_layer_norm(A, H)
    return (
        keys_values
        + query
        + scores_and_mix
        + softmax
        + output
        + feed_forward_flops(config, A)
        + _token_classifier(config, A)
    )


def _lengths(attention_mask: npt.ArrayLike) -> np.ndarray:
    mask = np.asarray(attention_mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"attention_mask must be [sentences, length], got shape {mask.shape}")
    return mask


def token_exit_flops(config: ModelConfig, exit_index: npt.ArrayLike, attention_mask: npt.ArrayLike) -> np.ndarray:
    """FLOPs each sentence spends under token-level exit: exit_index [N, T] (0-based,
    per token, as `token_early_exit` reports it: special tokens at the sentence's last
    exit), attention_mask [N, T] -> [N] float64. A token with exit e runs layers
    0..e; only attended positions count."""
    mask = _lengths(attention_mask)
    exits = np.asarray(exit_index)
    if exits.shape != mask.shape:
        raise ValueError(f"exit_index has shape {exits.shape}, attention_mask {mask.shape}")
    out = np.zeros(mask.shape[0], np.float64)
    for n in range(mask.shape[0]):
        S = int(mask[n].sum())
        real = exits[n][mask[n]]
        total = embedding_flops(config, S)
        for i in range(config.num_layers):
            total += token_layer_flops(config, int(np.sum(real >= i)), S)
        out[n] = total
    return out


def token_full_flops(config: ModelConfig, attention_mask: npt.ArrayLike) -> np.ndarray:
    """Full depth of the same model, every token active at every layer:
    attention_mask [N, T] -> [N] float64."""
    lengths = _lengths(attention_mask).sum(axis=1)
    full = [
        embedding_flops(config, int(S))
        + config.num_layers * (layer_flops(config, int(S)) + _token_classifier(config, int(S)))
        for S in lengths
    ]
    return np.asarray(full, np.float64)


def sentence_exit_flops(config: ModelConfig, exit_index: npt.ArrayLike, attention_mask: npt.ArrayLike) -> np.ndarray:
    """Sentence-level exit: every token of sentence n runs layers 0..exit_index[n]
    (and those exits' classifiers): exit_index [N], attention_mask [N, T] -> [N]
    float64."""
    lengths = _lengths(attention_mask).sum(axis=1)
    exits = np.asarray(exit_index).reshape(-1)
    if exits.shape != lengths.shape:
        raise ValueError(f"exit_index has shape {exits.shape}; attention_mask has {lengths.shape[0]} sentences")
    spent = [
        embedding_flops(config, int(S))
        + (int(e) + 1) * (layer_flops(config, int(S)) + _token_classifier(config, int(S)))
        for S, e in zip(lengths, exits)
    ]
    return np.asarray(spent, np.float64)


def flops_ratio(spent: npt.ArrayLike, full: npt.ArrayLike) -> float:
    """`sum(full) / sum(spent)` over sentences: the FLOPs speed-up of a dataset."""
    return float(np.sum(full) / np.sum(spent))
