"""ModernBERT's layers with an exit after every layer (`model.MultiExitEncoder` calls
`forward` for `ModelConfig.family == "modernbert"`).

As transformers' `ModernBertForSequenceClassification` (modeling_modernbert.py):

- embeddings: `tok_embeddings`, LayerNorm `norm` (bias per `norm_bias`), dropout; no
  position embeddings: rotary positions (RoPE) in attention, theta `global_rope_theta`
  in global layers and `local_rope_theta` in local ones;
- layer `l`, pre-norm: x + Wo(attention(attn_norm(x))) (`attn_norm` is the identity in
  layer 0), then x + Wo(gelu(a) * g) with (a, g) = Wi(mlp_norm(x)) (GeGLU); biases
  per `attention_bias` / `mlp_bias`. Layer `l` attends globally where
  `l % global_attn_every_n_layers == 0`, else within +-`local_attention // 2` tokens
  (transformers' bidirectional sliding-window mask, |q - k| <= local_attention // 2);
- `final_norm` after the last layer, then the head: pooling (`classifier_pooling`),
  `ModernBertPredictionHead` (dense -> `classifier_activation` -> LayerNorm), dropout,
  `classifier`.

Every exit is that whole tail on its layer's output: the shared `final_norm`
(`params['final_norm']`, no layer axis: it is the backbone's, as transformers has one),
then the exit's own head (`pooler` = `head.dense`, `head_norm` = `head.norm`) and
`classifier`. So the layers' outputs stay the un-normalised residual stream (what
transformers' `hidden_states[1:L]` are; its `hidden_states[L]` is `final_norm` of the
last), the final exit is transformers' classifier exactly, and an intermediate exit reads
its layer through the same normalisation the final one was trained with. With
`exit_pooling="token"` the head and classifier run on every token
(`ModernBertForTokenClassification`).

Whether a layer is local or global is decided from its index with `jnp.where` (two
inverse-frequency tables, two masks), never in Python, so the executors' compiled loop
can step through the layers with a traced index: the scan passes the index as its
input, and `model.layer_params` puts it into the layer's parameters as `layer_index`.
Padded attention with the mask gives transformers' outputs on the real tokens (its
unpadding is an implementation detail).

params = {'embeddings': {'tok_embeddings', 'norm'}, 'final_norm',
          'layers': {'layer': {'attn_norm', 'attn': {'Wqkv', 'Wo'}, 'mlp_norm',
                               'mlp': {'Wi', 'Wo'}},
                     'exit': {'pooler', 'head_norm', 'classifier'}}}   # leaves [L, ...]
(layer 0's `attn_norm` is unused: ones, and not exported).
"""

from __future__ import annotations

from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.ops import (
    Dense,
    Dropout,
    activation,
    attention,
    cudnn_attention,
    masked_mean,
    normal_init,
    training_attention,
)
from rome_jax.encoder.pytree import Params

Array = jax.Array


def _dtype(config: ModelConfig) -> DTypeLike:
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def _norm(cfg: ModelConfig, name: str | None) -> nn.LayerNorm:
    """ModernBERT's LayerNorm (bias per `norm_bias`); `name` None: a detached module,
    applied to params passed in (the shared `final_norm`)."""
    if name is None:
        return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_bias=cfg.norm_bias, use_fast_variance=False, parent=None)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_bias=cfg.norm_bias, use_fast_variance=False, name=name)


def _inverse_frequencies(theta: float, head_dim: int) -> np.ndarray:
    """1 / theta^(2i / D), i < D/2, float32 as transformers computes it."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


def is_global(cfg: ModelConfig, index: Array | int) -> Array:
    """Whether layer `index` (traced or not) attends globally."""
    return jnp.asarray(index) % cfg.global_attn_every_n_layers == 0


def rotary_tables(cfg: ModelConfig, seq_len: int, index: Array | int) -> tuple[Array, Array]:
    """(cos, sin) [T, D] float32 of layer `index`'s rotary embedding (its theta chosen
    with `jnp.where`), positions 0..T-1."""
    inv = jnp.where(
        is_global(cfg, index),
        _inverse_frequencies(cfg.global_rope_theta, cfg.head_dim),
        _inverse_frequencies(cfg.local_rope_theta, cfg.head_dim),
    )
    freqs = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv[None, :]
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _rotate(x: Array, cos: Array, sin: Array) -> Array:
    """x [B, T, N, D] rotated (transformers' `apply_rotary_pos_emb`, in float32)."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos[:, None, :] + rotated * sin[:, None, :]).astype(x.dtype)


def attention_mask_of(cfg: ModelConfig, attention_mask: Array, index: Array | int) -> Array:
    """Layer `index`'s mask, [B, 1, T, T] bool: the attended keys, and for a local layer
    only those within local_attention // 2 positions of the query."""
    T = attention_mask.shape[1]
    keys = attention_mask[:, None, None, :].astype(bool)  # [B, 1, 1, T]
    pos = jnp.arange(T)
    band = jnp.abs(pos[:, None] - pos[None, :]) <= cfg.local_attention // 2  # [T, T]
    return keys & (band | is_global(cfg, index))


class Embeddings(nn.Module):
    """tok_embeddings -> norm -> dropout: input_ids [B, T] -> [B, T, H]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        x = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=normal_init, name="tok_embeddings")(input_ids)
        x = _norm(cfg, "norm")(x)
        x = Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
        return x.astype(_dtype(cfg))


class Attention(nn.Module):
    """Fused `Wqkv`, rotary q and k, masked attention, `Wo` (and its dropout):
    x [B, T, H] (already normalised) -> [B, T, H]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, cos: Array, sin: Array, deterministic: bool) -> Array:
        cfg = self.config
        dtype = _dtype(cfg)
        B, T, _ = x.shape
        qkv = Dense(3 * cfg.hidden_size, dtype, "Wqkv", use_bias=cfg.attention_bias)(x)
        qkv = qkv.reshape(B, T, 3, cfg.num_heads, cfg.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if not deterministic:
            drop = None
            if cfg.attention_dropout > 0.0:
                drop = lambda p: Dropout(cfg.attention_dropout)(p, deterministic=False)
            context = training_attention(q, k, v, mask, drop)
        elif cfg.attention_kernel == "cudnn":
            context = cudnn_attention(q, k, v, mask)
        else:
            context = attention(q, k, v, mask)
        y = Dense(cfg.hidden_size, dtype, "Wo", use_bias=cfg.attention_bias)(context.reshape(B, T, cfg.hidden_size))
        return Dropout(cfg.attention_dropout)(y, deterministic=deterministic)


class MLP(nn.Module):
    """GeGLU: Wi -> (a, g) -> act(a) * g -> dropout -> Wo: [B, T, H] -> [B, T, H]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        cfg = self.config
        dtype = _dtype(cfg)
        a, gate = jnp.split(Dense(2 * cfg.intermediate_size, dtype, "Wi", use_bias=cfg.mlp_bias)(x), 2, axis=-1)
        h = Dropout(cfg.hidden_dropout)(activation(cfg.hidden_act)(a) * gate, deterministic=deterministic)
        return Dense(cfg.hidden_size, dtype, "Wo", use_bias=cfg.mlp_bias)(h)


class Layer(nn.Module):
    """One pre-norm layer, `index` its (possibly traced) position: [B, T, H] -> [B, T, H]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, index: Array, attention_mask: Array, deterministic: bool) -> Array:
        cfg = self.config
        dtype = _dtype(cfg)
        mask = attention_mask_of(cfg, attention_mask, index)
        cos, sin = rotary_tables(cfg, x.shape[1], index)
        normed = _norm(cfg, "attn_norm")(x).astype(dtype)
        normed = jnp.where(jnp.asarray(index) == 0, x, normed)  # layer 0: identity
        x = x + Attention(cfg, name="attn")(normed, mask, cos, sin, deterministic)
        return x + MLP(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x).astype(dtype), deterministic)


class ExitHead(nn.Module):
    """An exit: the shared final norm (`final_norm` params, applied by `apply`), the
    pooling, `ModernBertPredictionHead` (`pooler` dense -> `exit_activation` ->
    `head_norm`), dropout, `classifier`.

    hidden [B, T, H] -> (logits [B, C] float32 (token exits: [B, T, C]), pooled [B, H]
    (token exits: the first token's))."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden: Array, attention_mask: Array, final_norm: Params) -> tuple[Array, Array]:
        cfg = self.config
        dtype = _dtype(cfg)
        normalise = lambda h: cast(Array, _norm(cfg, None).apply({"params": final_norm}, h)).astype(dtype)
        if cfg.exit_pooling == "cls":
            x = normalise(hidden[:, 0])
        elif cfg.exit_pooling == "mean":
            x = masked_mean(normalise(hidden), attention_mask)
        else:
            x = normalise(hidden)
        pooler = nn.Dense(
            cfg.hidden_size, dtype=dtype, use_bias=cfg.classifier_bias, kernel_init=normal_init, name="pooler"
        )
        y = pooler(x)
        y = _norm(cfg, "head_norm")(activation(cfg.exit_activation)(y)).astype(dtype)
        pooled = y[:, 0] if cfg.token_exits else y
        z = Dropout(cfg.exit_dropout)(y, deterministic=self.deterministic)
        logits = nn.Dense(cfg.num_labels, dtype=dtype, kernel_init=normal_init, name="classifier")(z)
        return logits.astype(jnp.float32), pooled


class LayerWithExit(nn.Module):
    """The scan body: layer `index` and its exit. carry hidden [B, T, H] ->
    (hidden, (logits, pooled))."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(
        self, hidden: Array, index: Array, attention_mask: Array, final_norm: Params
    ) -> tuple[Array, tuple[Array, Array]]:
        hidden = Layer(self.config, name="layer")(hidden, index, attention_mask, self.deterministic)
        logits, pooled = ExitHead(self.config, self.deterministic, name="exit")(hidden, attention_mask, final_norm)
        return hidden, (logits, pooled)


def forward(module: nn.Module, input_ids: Array, attention_mask: Array, deterministic: bool) -> dict:
    """`MultiExitEncoder`'s forward for ModernBERT (submodules and params created in
    `module`'s scope). Returns its dict: `logits` [L, B, C], `pooled` [L, B, H],
    `last_hidden` [B, T, H] (before `final_norm`)."""
    cfg = cast(ModelConfig, getattr(module, "config"))  # noqa: B009 - any module holding the config
    hidden = Embeddings(cfg, name="embeddings")(input_ids, deterministic)
    final_norm = module.param("final_norm", lambda rng: _norm(cfg, None).init(rng, hidden[:, 0])["params"])
    Stack = nn.scan(
        LayerWithExit,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        unroll=cfg.num_layers if cfg.unroll_layers and not deterministic else 1,
    )
    index = jnp.arange(cfg.num_layers, dtype=jnp.int32)
    hidden, (logits, pooled) = Stack(cfg, deterministic, name="layers")(hidden, index, attention_mask, final_norm)
    return {"logits": logits, "pooled": pooled, "last_hidden": hidden}


def apply_embeddings(config: ModelConfig, params: Params, input_ids: Array) -> Array:
    """Embeddings (inference): [B, T] -> [B, T, H]."""
    return cast(Array, Embeddings(config).apply({"params": params["embeddings"]}, input_ids))


def apply_layer_with_exit(
    config: ModelConfig, params_i: Params, hidden: Array, attention_mask: Array
) -> tuple[Array, Array, Array]:
    """Layer i and exit i (inference) from `model.layer_params`' output (its
    `layer_index` and `final_norm` included): hidden [B, T, H] -> (hidden, logits, pooled [B, H])."""
    own = {k: v for k, v in params_i.items() if k not in ("layer_index", "final_norm")}
    out = LayerWithExit(config).apply(
        {"params": own}, hidden, params_i["layer_index"], attention_mask, params_i["final_norm"]
    )
    hidden, (logits, pooled) = cast(tuple[Array, tuple[Array, Array]], out)
    return hidden, logits, pooled


def init_exit_params(config: ModelConfig, seed: int = 0) -> Params:
    """Fresh stacked exits: `pooler` (head.dense: kernel [L, H, H], a bias per
    `classifier_bias`), `head_norm` (ones; zero bias per `norm_bias`), `classifier`
    (kernel [L, H, C] normal(0.02), bias zeros)."""
    L, H, C = config.num_layers, config.hidden_size, config.num_labels
    k_pool, k_cls = jax.random.split(jax.random.PRNGKey(seed))
    pooler = {"kernel": normal_init(k_pool, (L, H, H))}
    if config.classifier_bias:
        pooler["bias"] = jnp.zeros((L, H))
    norm = {"scale": jnp.ones((L, H))}
    if config.norm_bias:
        norm["bias"] = jnp.zeros((L, H))
    return {
        "pooler": pooler,
        "head_norm": norm,
        "classifier": {"kernel": normal_init(k_cls, (L, H, C)), "bias": jnp.zeros((L, C))},
    }
