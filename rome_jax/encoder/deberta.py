"""DeBERTa-v2/v3's layers with an exit after every layer (`model.MultiExitEncoder` calls
`forward` for `ModelConfig.family == "deberta-v2"`).

As transformers' `DebertaV2ForSequenceClassification` (modeling_deberta_v2.py), v3's
form (no `conv` layer; `share_att_key`):

- embeddings: `word_embeddings` (+ `position_embeddings` where `position_biased_input`,
  + `token_type_embeddings` where its `type_vocab_size` > 0), `embed_proj` (no bias)
  where `embedding_size` differs from the hidden size, LayerNorm, times the attention
  mask (padding rows are zeros), dropout;
- disentangled self-attention: content-to-content `q k^T`, content-to-position
  (c2p: `q` against the relative positions' keys, `key_proj(rel)`) and
  position-to-content (p2c: `k` against their queries, `query_proj(rel)`), each
  divided by sqrt(D * (1 + number of position terms)). `rel` is the shared
  `rel_embeddings` [2S, H] (S = `position_buckets`, else the maximal relative position),
  through its LayerNorm (`norm_rel_ebd`), with dropout in every layer; the relative
  position of query i and key j, i - j, is log-bucketed beyond S/2 and indexes `rel`
  at i - j + S (c2p) and S - (j - i) (p2c), clipped to [0, 2S). The mask is the
  query's and the key's (transformers' `mask_q * mask_k`): a padding query attends
  uniformly to every key, as there;
- the output blocks are BERT's (dense, dropout, LayerNorm of the sum).

The relative positions depend only on the length: `relative_indices` computes the two
gather indices once (numpy, at trace time), and `forward` the normalised `rel` once,
outside the layer scan, which takes both as broadcast inputs. The layer-at-a-time
pieces (`apply_layer_with_exit`) recompute them from the hidden states' length and the
`rel_embeddings`/`rel_norm` that `model.layer_params` passes along. The exit head is
`model.ExitHead`, which `model` passes in (`head`): this module does not import `model`.

Every exit is the family's head (`model.ExitHead`: `ContextPooler`'s dropout, dense
and GELU on the first token, dropout, `classifier`), so the final exit is
`DebertaV2ForSequenceClassification`'s; with token exits, `DebertaV2ForTokenClassification`'s.

params = {'embeddings': {'word_embeddings', ['position_embeddings'],
                         ['token_type_embeddings'], ['embed_proj'], 'LayerNorm'},
          'rel_embeddings': {'embedding' [2S, H]}, ['rel_norm'],
          'layers': {'layer': {'attention': {'query', 'key', 'value',
                                             'output': {'dense', 'LayerNorm'}},
                               'intermediate', 'output': {'dense', 'LayerNorm'}},
                     'exit': {'pooler', 'classifier'}}}          # leaves [L, ...]
"""

from __future__ import annotations

from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.ops import Dense, Dropout, activation, normal_init, softmax
from rome_jax.encoder.pytree import Params

Array = jax.Array


def _dtype(config: ModelConfig) -> DTypeLike:
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def max_relative_positions(cfg: ModelConfig) -> int:
    """transformers' `max_relative_positions` (< 1: `max_position_embeddings`)."""
    return cfg.max_relative_positions if cfg.max_relative_positions >= 1 else cfg.max_position_embeddings


def attention_span(cfg: ModelConfig) -> int:
    """S: `position_buckets` where > 0, else the maximal relative position; the
    `rel_embeddings` table has 2S rows."""
    return cfg.position_buckets if cfg.position_buckets > 0 else max_relative_positions(cfg)


def relative_positions(cfg: ModelConfig, seq_len: int) -> np.ndarray:
    """[T, T] int: i - j, log-bucketed beyond S/2 (transformers' `build_relative_position`
    and `make_log_bucket_position`, in float32 as there)."""
    q = np.arange(seq_len, dtype=np.int64)
    rel = q[:, None] - q[None, :]
    buckets, max_position = cfg.position_buckets, max_relative_positions(cfg)
    if buckets > 0 and max_position > 0:
        mid = buckets // 2
        sign = np.sign(rel)
        abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
        ratio = abs_pos.astype(np.float32) / np.float32(mid)
        log_pos = (
            np.ceil(
                np.log(ratio) / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1),
                dtype=np.float32,
            )
            + mid
        )
        rel = np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * sign).astype(np.int64)
    return rel


def relative_indices(cfg: ModelConfig, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each score reads the [T, 2S] products with `rel`, as flat indices [T * T]
    int32 into their [T * 2S] (row i's entry at i * 2S + the row of `rel`): c2p's at
    (query i, key j), row clip(r(i, j) + S); p2c's at (key j, query i), row
    clip(S - r(j, i)) (transposed after the gather, as transformers does)."""
    span = attention_span(cfg)
    rel = relative_positions(cfg, seq_len)
    start = np.arange(seq_len, dtype=np.int64)[:, None] * (2 * span)
    c2p = start + np.clip(rel + span, 0, 2 * span - 1)
    p2c = start + np.clip(-rel + span, 0, 2 * span - 1)
    return c2p.reshape(-1).astype(np.int32), p2c.reshape(-1).astype(np.int32)


def _layer_norm(cfg: ModelConfig, name: str | None = None) -> nn.LayerNorm:
    if name is None:  # detached: applied to params passed in
        return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, parent=None)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, name=name)


def normalised_rel(cfg: ModelConfig, rel_embeddings: Params, rel_norm: Params | None) -> Array:
    """The shared relative position embeddings [2S, H] (float32), through their LayerNorm
    where `norm_rel_ebd`."""
    rel = jnp.asarray(rel_embeddings["embedding"], jnp.float32)
    if rel_norm is not None:
        rel = cast(Array, _layer_norm(cfg).apply({"params": rel_norm}, rel))
    return rel


def _gather(scores: Array, flat: Array) -> Array:
    """scores [B, N, T, 2S], flat [T * T] (`relative_indices`) -> [B, N, T, T]:
    out[..., i, j] = scores[..., i, rows[i, j]], one gather over the flattened last two
    axes with a constant index (no index arithmetic per batch and head)."""
    B, N, T, S2 = scores.shape
    taken = jnp.take(scores.reshape(B, N, T * S2), flat, axis=-1, mode="clip")
    return taken.reshape(B, N, T, T)


class Embeddings(nn.Module):
    """input_ids, token_type_ids, attention_mask [B, T] -> [B, T, H] (compute dtype)."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, input_ids: Array, token_type_ids: Array, attention_mask: Array, deterministic: bool = True
    ) -> Array:
        cfg = self.config
        width = cfg.embedding_size or cfg.hidden_size
        embed = lambda n, size: nn.Embed(size, width, embedding_init=normal_init, name=n)
        x = embed("word_embeddings", cfg.vocab_size)(input_ids)
        if cfg.position_biased_input:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
            x = x + embed("position_embeddings", cfg.max_position_embeddings)(positions)
        if cfg.has_token_types:
            x = x + embed("token_type_embeddings", cfg.type_vocab_size)(token_type_ids)
        if cfg.projects_embeddings:
            x = Dense(cfg.hidden_size, jnp.float32, "embed_proj", use_bias=False)(x)
        x = _layer_norm(cfg, "LayerNorm")(x)
        x = x * attention_mask[:, :, None].astype(x.dtype)
        x = Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
        return x.astype(_dtype(cfg))


class OutputBlock(nn.Module):
    """dense -> dropout -> LayerNorm(. + residual) (`DebertaV2SelfOutput`/`DebertaV2Output`)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, residual: Array, deterministic: bool) -> Array:
        cfg = self.config
        y = Dense(cfg.hidden_size, _dtype(cfg), "dense")(x)
        y = Dropout(cfg.hidden_dropout)(y, deterministic=deterministic)
        y = _layer_norm(cfg, "LayerNorm")(y.astype(jnp.float32) + residual.astype(jnp.float32))
        return y.astype(_dtype(cfg))


class SelfAttention(nn.Module):
    """Disentangled self-attention and its output block: x [B, T, H], attention_mask
    [B, T], rel [2S, H] (normalised), c2p/p2c indices [T * T] (`relative_indices`) ->
    [B, T, H]."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x: Array, attention_mask: Array, rel: Array, c2p: Array, p2c: Array, deterministic: bool
    ) -> Array:
        cfg = self.config
        dtype = _dtype(cfg)
        B, T, _ = x.shape
        N, D = cfg.num_heads, cfg.head_dim
        query, key, value = (Dense(cfg.hidden_size, dtype, n) for n in ("query", "key", "value"))
        split = lambda y: y.reshape(y.shape[:-1] + (N, D))
        q, k, v = split(query(x)), split(key(x)), split(value(x))  # [B, T, N, D]
        factor = 1 + len(cfg.pos_att_type)
        scale = np.float32(np.sqrt(np.float32(D) * factor))
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k).astype(jnp.float32) / scale
        rel = Dropout(cfg.hidden_dropout)(rel, deterministic=deterministic).astype(dtype)  # pos_dropout
        if "c2p" in cfg.pos_att_type:
            pos_key = split(key(rel))  # [2S, N, D]
            c2p_att = jnp.einsum("bqnd,snd->bnqs", q, pos_key).astype(jnp.float32)
            c2p_att = _gather(c2p_att, c2p)
            scores = scores + c2p_att / scale
        if "p2c" in cfg.pos_att_type:
            pos_query = split(query(rel))  # [2S, N, D]
            p2c_att = jnp.einsum("bknd,snd->bnks", k, pos_query).astype(jnp.float32)
            p2c_att = _gather(p2c_att, p2c)
            scores = scores + jnp.swapaxes(p2c_att, -1, -2) / scale
        keep = attention_mask.astype(bool)
        mask = keep[:, None, :, None] & keep[:, None, None, :]  # [B, 1, T, T]: query and key
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = softmax(scores)
        if not deterministic and cfg.attention_dropout > 0.0:
            probs = Dropout(cfg.attention_dropout)(probs, deterministic=False)
        context = jnp.einsum("bnqk,bknd->bqnd", probs.astype(dtype), v).reshape(B, T, cfg.hidden_size)
        return OutputBlock(cfg, name="output")(context, x, deterministic)


class Layer(nn.Module):
    """One DeBERTa layer: [B, T, H] -> [B, T, H]."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x: Array, attention_mask: Array, rel: Array, c2p: Array, p2c: Array, deterministic: bool
    ) -> Array:
        cfg = self.config
        x = SelfAttention(cfg, name="attention")(x, attention_mask, rel, c2p, p2c, deterministic)
        h = activation(cfg.hidden_act)(Dense(cfg.intermediate_size, _dtype(cfg), "intermediate")(x))
        return OutputBlock(cfg, name="output")(h, x, deterministic)


class LayerWithExit(nn.Module):
    """The scan body: layer `i` and its exit (`head`: `model.ExitHead`, passed in by
    `model`, which imports this module). carry hidden [B, T, H] -> (hidden, (logits, pooled))."""

    config: ModelConfig
    deterministic: bool = True
    head: Any = None

    @nn.compact
    def __call__(
        self, hidden: Array, attention_mask: Array, rel: Array, c2p: Array, p2c: Array
    ) -> tuple[Array, tuple[Array, Array]]:
        hidden = Layer(self.config, name="layer")(hidden, attention_mask, rel, c2p, p2c, self.deterministic)
        logits, pooled = self.head(self.config, name="exit")(hidden, self.deterministic, attention_mask)
        return hidden, (logits, pooled)


def forward(
    module: nn.Module,
    input_ids: Array,
    token_type_ids: Array,
    attention_mask: Array,
    deterministic: bool,
    head: type[nn.Module],
) -> dict:
    """`MultiExitEncoder`'s forward for DeBERTa (submodules and params created in
    `module`'s scope; `head` the exit module, `model.ExitHead`): `logits` [L, B, C],
    `pooled` [L, B, H], `last_hidden` [B, T, H]."""
    cfg = cast(ModelConfig, getattr(module, "config"))  # noqa: B009 - any module holding the config
    hidden = Embeddings(cfg, name="embeddings")(input_ids, token_type_ids, attention_mask, deterministic)
    span = attention_span(cfg)
    rel_embeddings = module.param(
        "rel_embeddings", lambda rng: {"embedding": normal_init(rng, (2 * span, cfg.hidden_size))}
    )
    rel_norm = None
    if cfg.norm_rel_ebd:
        rel_norm = module.param(
            "rel_norm", lambda rng: _layer_norm(cfg).init(rng, jnp.zeros((1, cfg.hidden_size)))["params"]
        )
    rel = normalised_rel(cfg, rel_embeddings, rel_norm)  # once for every layer
    c2p, p2c = relative_indices(cfg, input_ids.shape[1])
    Stack = nn.scan(
        LayerWithExit,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * 4,
        length=cfg.num_layers,
        unroll=cfg.num_layers if cfg.unroll_layers and not deterministic else 1,
    )
    hidden, (logits, pooled) = Stack(cfg, deterministic, head, name="layers")(
        hidden, attention_mask, rel, jnp.asarray(c2p), jnp.asarray(p2c)
    )
    return {"logits": logits, "pooled": pooled, "last_hidden": hidden}


def apply_embeddings(config: ModelConfig, params: Params, input_ids: Array, types: Array, mask: Array) -> Array:
    """Embeddings (inference): [B, T] -> [B, T, H]."""
    return cast(Array, Embeddings(config).apply({"params": params["embeddings"]}, input_ids, types, mask))


def apply_layer_with_exit(
    config: ModelConfig, params_i: Params, hidden: Array, attention_mask: Array, head: type[nn.Module]
) -> tuple[Array, Array, Array]:
    """Layer i and exit i (inference) from `model.layer_params`' output (with the shared
    `rel_embeddings` and `rel_norm`): hidden [B, T, H] -> (hidden, logits, pooled [B, H]). The relative
    positions are recomputed from the length (cheap)."""
    own = {k: v for k, v in params_i.items() if k not in ("rel_embeddings", "rel_norm")}
    rel = normalised_rel(config, params_i["rel_embeddings"], params_i.get("rel_norm"))
    c2p, p2c = relative_indices(config, hidden.shape[1])
    out = LayerWithExit(config, head=head).apply(
        {"params": own}, hidden, attention_mask, rel, jnp.asarray(c2p), jnp.asarray(p2c)
    )
    hidden, (logits, pooled) = cast(tuple[Array, tuple[Array, Array]], out)
    return hidden, logits, pooled
