"""A multi-exit BERT-family encoder (BERT, RoBERTa/XLM-R, ALBERT, DistilBERT, ELECTRA) in Flax Linen;
ModernBERT's layers are in `rome_jax.encoder.modernbert`, DeBERTa-v2/v3's in `rome_jax.encoder.deberta`,
which the functions here hand over to.

One exit after every encoder layer (docs/methods.md): the pooler (dense + the
family's head activation, `ModelConfig.exit_activation`: tanh, DistilBERT's ReLU,
ELECTRA's GELU) on that layer's first token (or, with `ModelConfig.exit_pooling="mean"`, the mean of its
attended token vectors), dropout, and a linear classifier. The last exit is the
model's final classifier.

The layers and their exits are one `nn.scan` over a `LayerWithExit` body, so every
parameter under `params['layers']` has a leading layer axis of size L:

    params = {
      'embeddings': {'word_embeddings', 'position_embeddings',
                     'token_type_embeddings', 'LayerNorm'},
      'layers': {'layer': {...}, 'exit': {'pooler', 'classifier'}},   # leaves [L, ...]
    }

The jaxpr does not grow with depth (`ModelConfig.unroll_layers` unrolls the loop
when compiling the training forward: faster to run, slower to compile; at
inference the rolled loop is faster), and inference can take layer `i`
with a dynamic index inside a compiled loop (`apply_embeddings`, `layer_params`,
`apply_layer_with_exit`).

ALBERT shares one layer's weights across all layers: they are
`params['shared_layer']` (no layer axis), passed to every step of the scan, and
`params['layers']` holds only the exits. Its factorised embeddings (size E) are
mapped to the hidden size by `embeddings/embedding_hidden_mapping_in`, as ELECTRA's
are where its `embedding_size` differs from the hidden size
(`ModelConfig.projects_embeddings`). DistilBERT has no `token_type_embeddings`
(`ModelConfig.has_token_types`); its token type ids are ignored.
"""

from __future__ import annotations

from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from rome_jax.encoder import deberta, modernbert
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.ops import (
    Dense,
    Dropout,
    activation,
    attention,
    cudnn_attention,
    masked_mean,
    normal_init,
    sinusoidal_init,
    training_attention,
)
from rome_jax.encoder.pytree import Params

Array = jax.Array

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
"""The model's inputs in a batch dict, each [B, T] int."""


def _dtype(config: ModelConfig) -> DTypeLike:
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


class Embeddings(nn.Module):
    """Word + position + token type embeddings (none for DistilBERT), LayerNorm, dropout,
    and the map from the embedding width E to H (`ModelConfig.projects_embeddings`).

    input_ids, token_type_ids, attention_mask: [B, T] -> [B, T, H] (compute dtype).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self, input_ids: Array, token_type_ids: Array, attention_mask: Array, deterministic: bool = True
    ) -> Array:
        cfg = self.config
        if cfg.family == "roberta":
            # HF create_position_ids_from_input_ids: padding keeps position pad_token_id.
            not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            position_ids = jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
        else:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        width = cfg.embedding_size or cfg.hidden_size
        embed = lambda n, size, init=normal_init: nn.Embed(size, width, embedding_init=init, name=n)
        words = embed("word_embeddings", cfg.vocab_size)(input_ids)
        position_init = sinusoidal_init if cfg.sinusoidal_positions else normal_init
        x = words + embed("position_embeddings", cfg.max_position_embeddings, position_init)(position_ids)
        if cfg.has_token_types:
            x = x + embed("token_type_embeddings", cfg.type_vocab_size)(token_type_ids)
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, name="LayerNorm")(x)
        x = Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
        if cfg.projects_embeddings:
            x = nn.Dense(
                cfg.hidden_size, dtype=_dtype(cfg), kernel_init=normal_init, name="embedding_hidden_mapping_in"
            )(x)
        return x.astype(_dtype(cfg))


class SelfAttention(nn.Module):
    """Multi-head self-attention with the output projection and residual LayerNorm
    (without dropout after the projection for DistilBERT, as its `out_lin`).

    x [B, T, H], attention_mask [B, T] -> [B, T, H]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
        cfg = self.config
        dtype = _dtype(cfg)
        B, T, _ = x.shape
        split = lambda y: y.reshape(B, T, cfg.num_heads, cfg.head_dim)
        q, k, v = (split(Dense(cfg.hidden_size, dtype, n)(x)) for n in ("query", "key", "value"))
        mask = attention_mask[:, None, None, :].astype(bool)  # [B, 1, 1, T]
        if not deterministic:
            drop = None
            if cfg.attention_dropout > 0.0:
                drop = lambda p: Dropout(cfg.attention_dropout)(p, deterministic=False)
            context = training_attention(q, k, v, mask, drop)
        elif cfg.attention_kernel == "cudnn":
            context = cudnn_attention(q, k, v, mask)
        else:
            context = attention(q, k, v, mask)
        context = context.reshape(B, T, cfg.hidden_size)
        with_output = OutputBlock(cfg, dropout=cfg.family != "distilbert", name="output")
        return with_output(context, x, deterministic)


class OutputBlock(nn.Module):
    """dense -> dropout -> LayerNorm(. + residual), as HF's BertSelfOutput/BertOutput."""

    config: ModelConfig
    dropout: bool = True  # ALBERT's feed-forward output has none, DistilBERT's attention output none

    @nn.compact
    def __call__(self, x: Array, residual: Array, deterministic: bool) -> Array:
        cfg = self.config
        y = Dense(cfg.hidden_size, _dtype(cfg), "dense")(x)
        if self.dropout:
            y = Dropout(cfg.hidden_dropout)(y, deterministic=deterministic)
        y = nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, name="LayerNorm")(
            y.astype(jnp.float32) + residual.astype(jnp.float32)
        )
        return y.astype(_dtype(cfg))


class TransformerLayer(nn.Module):
    """One encoder layer: [B, T, H] -> [B, T, H]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
        cfg = self.config
        x = SelfAttention(cfg, name="attention")(x, attention_mask, deterministic)
        h = Dense(cfg.intermediate_size, _dtype(cfg), "intermediate")(x)
        h = activation(cfg.hidden_act)(h)
        return OutputBlock(cfg, dropout=cfg.family != "albert", name="output")(h, x, deterministic)


class ExitHead(nn.Module):
    """An exit: pooler (dense + `config.exit_activation`: tanh, or the family's head
    activation, DistilBERT's ReLU, ELECTRA's GELU) on the pooled token vector,
    dropout, classifier.

    `config.exit_pooling` picks the vector: "cls", the first token (the papers'
    design); "mean", `masked_mean` over the attended positions (`attention_mask`;
    all positions when it is None). RoBERTa's and ELECTRA's classification heads also
    apply dropout before the dense layer (`config.exit_dropout_first`).
    hidden [B, T, H] -> (logits [B, C] float32, pooled [B, H]).

    "token" (sequence labelling, HF's `*ForTokenClassification` head): dropout and the
    classifier on every token's vector, logits [B, T, C] float32; the pooler still
    runs on the first token (its output `pooled` [B, H] is reported, not classified),
    so every pooling has the same parameters.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden: Array, deterministic: bool, attention_mask: Array | None = None) -> tuple[Array, Array]:
        cfg = self.config
        dtype = _dtype(cfg)
        if cfg.exit_pooling == "mean":
            if attention_mask is None:
                attention_mask = jnp.ones(hidden.shape[:2], jnp.int32)
            x = masked_mean(hidden, attention_mask)
        else:
            x = hidden[:, 0]
        classifier = nn.Dense(cfg.num_labels, dtype=dtype, kernel_init=normal_init, name="classifier")
        act = activation(cfg.exit_activation)
        if cfg.token_exits:
            pooled = act(nn.Dense(cfg.hidden_size, dtype=dtype, kernel_init=normal_init, name="pooler")(x))
            tokens = Dropout(cfg.exit_dropout)(hidden, deterministic=deterministic)
            return classifier(tokens).astype(jnp.float32), pooled
        if cfg.exit_dropout_first:
            x = Dropout(cfg.exit_dropout)(x, deterministic=deterministic)
        pooled = act(nn.Dense(cfg.hidden_size, dtype=dtype, kernel_init=normal_init, name="pooler")(x))
        x = Dropout(cfg.exit_dropout)(pooled, deterministic=deterministic)
        return classifier(x).astype(jnp.float32), pooled


class LayerWithExit(nn.Module):
    """The scan body: layer `i` followed by exit `i`.

    carry hidden [B, T, H] -> (next hidden [B, T, H], (logits [B, C] (token exits:
    [B, T, C]), pooled [B, H])).
    """

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(
        self, hidden: Array, attention_mask: Array, shared_layer: Params = None
    ) -> tuple[Array, tuple[Array, Array]]:
        if shared_layer is None:
            hidden = TransformerLayer(self.config, name="layer")(hidden, attention_mask, self.deterministic)
        else:  # ALBERT: the same weights at every layer
            rngs = None if self.deterministic else {"dropout": self.make_rng("dropout")}
            hidden = cast(  # apply returns the output alone: no collection is mutable
                Array,
                TransformerLayer(self.config).apply(
                    {"params": shared_layer}, hidden, attention_mask, self.deterministic, rngs=rngs
                ),
            )
        logits, pooled = ExitHead(self.config, name="exit")(hidden, self.deterministic, attention_mask)
        return hidden, (logits, pooled)


class MultiExitEncoder(nn.Module):
    """Embeddings and L layers, each followed by an exit.

    Returns a dict: `logits` [L, B, C] (float32; row -1 is the final classifier;
    [L, B, T, C] with token exits, `ModelConfig.token_exits`),
    `pooled` [L, B, H], `last_hidden` [B, T, H].
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
    ) -> dict:
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if cfg.family == "modernbert":  # its own layers, rotary positions and final norm
            return modernbert.forward(self, input_ids, attention_mask, deterministic)
        if cfg.family == "deberta-v2":  # disentangled attention over relative positions
            return deberta.forward(self, input_ids, token_type_ids, attention_mask, deterministic, ExitHead)
        hidden = Embeddings(cfg, name="embeddings")(input_ids, token_type_ids, attention_mask, deterministic)
        shared = None
        if cfg.shares_layers:
            shared = self.param(
                "shared_layer", lambda rng: TransformerLayer(cfg).init(rng, hidden, attention_mask, True)["params"]
            )
        Stack = nn.scan(
            LayerWithExit,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
            unroll=cfg.num_layers if cfg.unroll_layers and not deterministic else 1,
        )
        hidden, (logits, pooled) = Stack(cfg, deterministic, name="layers")(hidden, attention_mask, shared)
        return {"logits": logits, "pooled": pooled, "last_hidden": hidden}


# ---- pieces for executors that step through the layers one at a time ----------------


def apply_embeddings(config: ModelConfig, params: Params, batch: dict) -> Array:
    """Embeddings of a batch (inference): dict of [B, T] int arrays -> [B, T, H]."""
    input_ids = batch["input_ids"]
    if config.family == "modernbert":
        return modernbert.apply_embeddings(config, params, input_ids)
    mask = batch.get("attention_mask", jnp.ones_like(input_ids))
    types = batch.get("token_type_ids", jnp.zeros_like(input_ids))
    if config.family == "deberta-v2":
        return deberta.apply_embeddings(config, params, input_ids, types, mask)
    return cast(Array, Embeddings(config).apply({"params": params["embeddings"]}, input_ids, types, mask))


def layer_params(params: Params, index: Array | int) -> Params:
    """The parameters of layer `index` and its exit (works with a traced index)."""
    taken = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, index, keepdims=False), params["layers"])
    if "shared_layer" in params:
        taken["shared_layer"] = params["shared_layer"]
    if "final_norm" in params:  # ModernBERT: every exit's shared norm, and the index (local or global)
        taken["final_norm"] = params["final_norm"]
        taken["layer_index"] = jnp.asarray(index, jnp.int32)
    for shared in ("rel_embeddings", "rel_norm"):  # DeBERTa: every layer's relative positions
        if shared in params:
            taken[shared] = params[shared]
    return taken


def apply_layer_with_exit(
    config: ModelConfig, params_i: Params, hidden: Array, attention_mask: Array
) -> tuple[Array, Array]:
    """Layer i and exit i (inference): hidden [B, T, H] -> (hidden, logits [B, C];
    [B, T, C] with token exits)."""
    hidden, logits, _ = apply_layer_with_exit_pooled(config, params_i, hidden, attention_mask)
    return hidden, logits


def apply_layer_with_exit_pooled(
    config: ModelConfig, params_i: Params, hidden: Array, attention_mask: Array
) -> tuple[Array, Array, Array]:
    """`apply_layer_with_exit` that also returns the exit's pooler output (what its
    classifier reads): hidden [B, T, H] -> (hidden, logits, pooled [B, H])."""
    if config.family == "modernbert":
        return modernbert.apply_layer_with_exit(config, params_i, hidden, attention_mask)
    if config.family == "deberta-v2":
        return deberta.apply_layer_with_exit(config, params_i, hidden, attention_mask, ExitHead)
    own = {k: v for k, v in params_i.items() if k != "shared_layer"}
    out = LayerWithExit(config).apply({"params": own}, hidden, attention_mask, params_i.get("shared_layer"))
    hidden, (logits, pooled) = cast(tuple[Array, tuple[Array, Array]], out)
    return hidden, logits, pooled


def exit_state(config: ModelConfig, hidden: Array, attention_mask: Array) -> Array:
    """A layer's representation as its exit pools it, before the exit's own layers:
    the first token's vector ("cls", "token") or the attended tokens' mean ("mean").
    hidden [B, T, H], attention_mask [B, T] -> [B, H] float32. What state saturation
    (`rome_jax.exits.signals`) compares between consecutive layers."""
    if config.exit_pooling == "mean":
        return masked_mean(hidden, attention_mask).astype(jnp.float32)
    return hidden[:, 0].astype(jnp.float32)


def init_params(config: ModelConfig, seed: int = 0, seq_len: int = 8) -> Params:
    """Random parameters (HF's normal(0.02) initialisation; DistilBERT's sinusoidal
    position table where `sinusoidal_positions`) for a config."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return MultiExitEncoder(config).init(jax.random.PRNGKey(seed), ids)["params"]


def init_exit_params(config: ModelConfig, seed: int = 0) -> Params:
    """Fresh stacked exit parameters: kernels normal(0.02), biases zero (HF's init).

    Returns {'pooler': {'kernel' [L, H, H], 'bias' [L, H]},
             'classifier': {'kernel' [L, H, C], 'bias' [L, C]}}.
    """
    if config.family == "modernbert":  # its head has a norm, and biases per its config
        return modernbert.init_exit_params(config, seed)
    L, H, C = config.num_layers, config.hidden_size, config.num_labels
    k_pool, k_cls = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "pooler": {"kernel": normal_init(k_pool, (L, H, H)), "bias": jnp.zeros((L, H))},
        "classifier": {"kernel": normal_init(k_cls, (L, H, C)), "bias": jnp.zeros((L, C))},
    }
