"""A multi-exit BERT/RoBERTa encoder in Flax Linen.

One exit after every encoder layer (GUIDE section 1): the pooler (dense + tanh) on
that layer's first token, dropout, and a linear classifier. The last exit is the
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
mapped to the hidden size by `embeddings/embedding_hidden_mapping_in`.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np

from rome_jax.model_config import ModelConfig
from rome_jax.errors import CheckpointError, first_line

Array = jax.Array
Params = Any

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
"""The model's inputs in a batch dict, each [B, T] int."""

_init = nn.initializers.normal(stddev=0.02)


def _activation(name: str):
    if name == "gelu":
        # HF "gelu" is the exact one; nn.gelu's erfc form ran 14% faster than an erf form on CPU
        return lambda x: nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: nn.gelu(x, approximate=True)
    return {"relu": nn.relu, "tanh": jnp.tanh}[name]


def _dtype(config: ModelConfig):
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def dropout_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """Random uint16 of `shape`: 16 bits per element, 64 per Threefry-2x32 evaluation.

    `jax.random.bits` spends a whole Threefry evaluation (64 bits) on every element;
    here one evaluation serves four neighbours along the last axis, a quarter of the
    hashing, which is most of dropout's cost on a CPU. Counters are elementwise
    functions of the position (no flattening across the batch axis), so a
    batch-sharded mask is computed shard by shard. Keys of another PRNG
    implementation go through `jax.random.bits`.
    """
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    if data.shape != (2,) or not shape:
        return jax.random.bits(key, shape, jnp.uint16)
    *lead, last = shape
    grouped = (*lead, -(-last // 4))  # four elements per evaluation
    if np.prod(grouped, dtype=np.int64) >= 2 ** 32:
        raise ValueError(f"dropout mask of shape {shape} needs more than 2**32 counters")
    strides = np.cumprod((1, *grouped[::-1]))[:-1][::-1]
    counter = sum(jax.lax.broadcasted_iota(jnp.uint32, grouped, d) * np.uint32(stride)
                  for d, stride in enumerate(strides))
    words = jex_random.threefry2x32_p.bind(data[0], data[1], jnp.zeros_like(counter), counter)
    bits = jax.lax.bitcast_convert_type(jnp.stack(words, axis=-1), jnp.uint16)  # [..., G, 2, 2]
    return bits.reshape(*lead, -1)[..., :last]


@jax.custom_vjp
def dense_matmul(x: Array, kernel: Array) -> Array:
    """x [..., I] @ kernel [I, O] -> [..., O], with a backward pass laid out for CPU libraries.

    Forward and input gradient are the usual products. The kernel gradient
    x^T g contracts over all N = prod(...) rows; left to itself XLA:CPU lays one
    operand out transposed and hands the product to a slow generic kernel. Here the
    narrower of x [N, I] and g [N, O] is transposed once (kept materialised by an
    optimisation barrier), so the product is a plain row-major matmul
    ([I, N] @ [N, O], or ([O, N] @ [N, I])^T), which XLA sends to its fast one.
    Same sums as autodiff (float32 reassociation only). On other backends (GPU, TPU:
    their matmuls take transposed operands natively) there is no barrier, and XLA
    folds the transposes back into plain autodiff's products.
    """
    return _matmul(x, kernel)


def _matmul(x: Array, kernel: Array) -> Array:
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _lay_out_for_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _dense_matmul_fwd(x: Array, kernel: Array):
    return _matmul(x, kernel), (x, kernel)


def _dense_matmul_bwd(residuals, g: Array):
    x, kernel = residuals
    dx = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    keep = jax.lax.optimization_barrier if _lay_out_for_cpu() else (lambda a: a)
    if x2.shape[1] <= g2.shape[1]:
        d_kernel = keep(x2.T) @ g2
    else:
        d_kernel = keep(keep(g2.T) @ x2).T
    return dx.astype(x.dtype), d_kernel.astype(kernel.dtype)


dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


def _dense_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                       preferred_element_type=None) -> Array:
    """`nn.Dense`'s dot_general (contract lhs's last axis with rhs's first) via `dense_matmul`."""
    (lc, rc), (lb, rb) = dimension_numbers
    if (tuple(lc), tuple(rc), tuple(lb), tuple(rb)) != ((lhs.ndim - 1,), (0,), (), ()) \
            or precision is not None or preferred_element_type is not None:
        raise NotImplementedError("dense_matmul is x[..., I] @ kernel[I, O] at default precision only")
    return dense_matmul(lhs, rhs)


def Dense(features: int, dtype, name: str) -> nn.Dense:
    """`nn.Dense` with HF's normal(0.02) init and the CPU-friendly backward of `dense_matmul`."""
    return nn.Dense(features, dtype=dtype, kernel_init=_init, name=name,
                    dot_general=_dense_dot_general)


def attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Scaled dot-product attention over the keys where `mask` is True (inference).

    q, k, v [B, T, N, D] (compute dtype); mask [B, 1, 1, T] bool -> context [B, T, N, D].

    Heads first ([B, N, T, D]), so both products are plain batched matrix products,
    and the softmax's division after the value product, on [B, N, T, D] instead of
    the [B, N, T, T] probabilities (as flash attention does):
    softmax(s) V = (exp(s - max s) V) / sum exp(s - max s). Scores and the softmax are
    float32. On the CPU the whole forward ran 8-13% faster than with
    `jax.nn.dot_product_attention` (docs/speed_notes.md). Differentiable, but training
    uses `training_attention`: under GR's two cotangents (`vmap` over the backward
    pass) each extra cotangent cost this form's backward about 1.5x what it costs that one.
    """
    dtype = q.dtype
    qh, kh, vh = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # [B, N, T, D]
    scores = jnp.einsum("bhqd,bhkd->bhqk", qh, kh).astype(jnp.float32) / np.sqrt(q.shape[-1])
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    # exact for any shift; the max only keeps exp in range, so it needs no gradient
    unnormalized = jnp.exp(scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True)))
    total = unnormalized.sum(-1, keepdims=True)  # [B, N, T, 1]
    context = jnp.einsum("bhqk,bhkd->bhqd", unnormalized.astype(dtype), vh)
    context = (context.astype(jnp.float32) / total).astype(dtype)
    return jnp.swapaxes(context, 1, 2)


def training_attention(q: Array, k: Array, v: Array, mask: Array,
                       drop: Callable[[Array], Array] | None = None) -> Array:
    """Attention as HF computes it in training: softmax probabilities, `drop`
    (dropout on them, `attention_probs_dropout_prob`), then the value product.

    q, k, v [B, T, N, D] (compute dtype); mask [B, 1, 1, T] bool -> context [B, T, N, D].
    The softmax is `softmax` (the short derivative), whose backward pass stays cheap
    for each added cotangent (GR pulls two back through one forward).
    """
    dtype = q.dtype
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(q.shape[-1])
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = softmax(scores)
    if drop is not None:
        probs = drop(probs)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v)


@jax.custom_jvp
def softmax(x: Array) -> Array:
    """Softmax over the last axis whose derivative is y * (dx - sum(y * dx)).

    `jax.nn.softmax` (while `jax_softmax_custom_jvp` is off, the default) differentiates
    through the exp / sum / divide, a longer backward pass of several reductions over
    [B, heads, T, T]; this is the same function with the short form (what that flag
    would select), kept local so the library does not change a global setting.
    """
    unnormalized = jnp.exp(x - jax.lax.stop_gradient(x.max(-1, keepdims=True)))
    return unnormalized / unnormalized.sum(-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    y = softmax(x)
    return y, y * (x_dot - (y * x_dot).sum(-1, keepdims=True))


def cudnn_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """`attention` without dropout through cuDNN's fused flash attention
    (`jax.nn.dot_product_attention(implementation="cudnn")`; its default, None, is the
    XLA form on every backend). q, k, v [B, T, N, D] bfloat16; mask [B, 1, 1, T] bool.
    Raises `CheckpointError` where JAX finds no cuDNN (not a CUDA GPU)."""
    try:
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    except RuntimeError as e:
        raise CheckpointError(f"attention_kernel 'cudnn' is unavailable on {jax.default_backend()}: "
                              f"{first_line(e).rstrip('.')}; use attention_kernel 'xla'") from None


class Dropout(nn.Module):
    """Inverted dropout with 16-bit masks: drops where bits < round(rate * 2**16).

    The rate is met to within 2**-17 (0.1 -> 0.100006); the kept values are scaled
    by exactly 1 / (1 - rate). Uses the module's 'dropout' RNG stream like
    `nn.Dropout`, whose 32-bit masks cost four times the hashing.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        threshold = np.uint16(min(round(self.rate * 65536), 65535))
        keep = dropout_bits(self.make_rng("dropout"), x.shape) >= threshold
        return jnp.where(keep, x / np.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))


class Embeddings(nn.Module):
    """Word + position + token type embeddings, LayerNorm, dropout.

    input_ids, token_type_ids, attention_mask: [B, T] -> [B, T, H] (compute dtype).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, attention_mask: Array,
                 deterministic: bool = True) -> Array:
        cfg = self.config
        if cfg.family == "roberta":
            # HF create_position_ids_from_input_ids: padding keeps position pad_token_id.
            not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            position_ids = jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
        else:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        width = cfg.embedding_size or cfg.hidden_size
        embed = lambda n, size: nn.Embed(size, width, embedding_init=_init, name=n)
        x = (embed("word_embeddings", cfg.vocab_size)(input_ids)
             + embed("position_embeddings", cfg.max_position_embeddings)(position_ids)
             + embed("token_type_embeddings", cfg.type_vocab_size)(token_type_ids))
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, name="LayerNorm")(x)
        x = Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
        if cfg.family == "albert":
            x = nn.Dense(cfg.hidden_size, dtype=_dtype(cfg), kernel_init=_init,
                         name="embedding_hidden_mapping_in")(x)
        return x.astype(_dtype(cfg))


class SelfAttention(nn.Module):
    """Multi-head self-attention with the output projection and residual LayerNorm."""

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
        with_output = OutputBlock(cfg, name="output")
        return with_output(context, x, deterministic)


class OutputBlock(nn.Module):
    """dense -> dropout -> LayerNorm(. + residual), as HF's BertSelfOutput/BertOutput."""

    config: ModelConfig
    dropout: bool = True  # ALBERT's feed-forward output has none

    @nn.compact
    def __call__(self, x: Array, residual: Array, deterministic: bool) -> Array:
        cfg = self.config
        y = Dense(cfg.hidden_size, _dtype(cfg), "dense")(x)
        if self.dropout:
            y = Dropout(cfg.hidden_dropout)(y, deterministic=deterministic)
        y = nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, name="LayerNorm")(
            y.astype(jnp.float32) + residual.astype(jnp.float32))
        return y.astype(_dtype(cfg))


class TransformerLayer(nn.Module):
    """One encoder layer: [B, T, H] -> [B, T, H]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
        cfg = self.config
        x = SelfAttention(cfg, name="attention")(x, attention_mask, deterministic)
        h = Dense(cfg.intermediate_size, _dtype(cfg), "intermediate")(x)
        h = _activation(cfg.hidden_act)(h)
        return OutputBlock(cfg, dropout=cfg.family != "albert", name="output")(h, x, deterministic)


class ExitHead(nn.Module):
    """An exit: pooler (dense + tanh) on the first token, dropout, classifier.

    RoBERTa's classification head also applies dropout before the dense layer.
    hidden [B, T, H] -> (logits [B, C] float32, pooled [B, H]).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden: Array, deterministic: bool) -> tuple[Array, Array]:
        cfg = self.config
        dtype = _dtype(cfg)
        x = hidden[:, 0]
        if cfg.family == "roberta":
            x = Dropout(cfg.exit_dropout)(x, deterministic=deterministic)
        pooled = jnp.tanh(nn.Dense(cfg.hidden_size, dtype=dtype, kernel_init=_init, name="pooler")(x))
        x = Dropout(cfg.exit_dropout)(pooled, deterministic=deterministic)
        logits = nn.Dense(cfg.num_labels, dtype=dtype, kernel_init=_init, name="classifier")(x)
        return logits.astype(jnp.float32), pooled


class LayerWithExit(nn.Module):
    """The scan body: layer `i` followed by exit `i`.

    carry hidden [B, T, H] -> (next hidden [B, T, H], (logits [B, C], pooled [B, H])).
    """

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden: Array, attention_mask: Array, shared_layer: Params = None
                 ) -> tuple[Array, tuple[Array, Array]]:
        if shared_layer is None:
            hidden = TransformerLayer(self.config, name="layer")(hidden, attention_mask, self.deterministic)
        else:  # ALBERT: the same weights at every layer
            rngs = None if self.deterministic else {"dropout": self.make_rng("dropout")}
            hidden = TransformerLayer(self.config).apply({"params": shared_layer}, hidden, attention_mask,
                                                         self.deterministic, rngs=rngs)
        logits, pooled = ExitHead(self.config, name="exit")(hidden, self.deterministic)
        return hidden, (logits, pooled)


class MultiExitEncoder(nn.Module):
    """Embeddings and L layers, each followed by an exit.

    Returns a dict: `logits` [L, B, C] (float32; row -1 is the final classifier),
    `pooled` [L, B, H], `last_hidden` [B, T, H].
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None,
                 token_type_ids: Array | None = None, deterministic: bool = True) -> dict:
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        hidden = Embeddings(cfg, name="embeddings")(input_ids, token_type_ids, attention_mask,
                                                    deterministic)
        shared = None
        if cfg.shares_layers:
            shared = self.param("shared_layer", lambda rng: TransformerLayer(cfg).init(
                rng, hidden, attention_mask, True)["params"])
        Stack = nn.scan(LayerWithExit, variable_axes={"params": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                        unroll=cfg.num_layers if cfg.unroll_layers and not deterministic else 1)
        hidden, (logits, pooled) = Stack(cfg, deterministic, name="layers")(hidden, attention_mask, shared)
        return {"logits": logits, "pooled": pooled, "last_hidden": hidden}


# ---- pieces for executors that step through the layers one at a time ----------------

def apply_embeddings(config: ModelConfig, params: Params, batch: dict) -> Array:
    """Embeddings of a batch (inference): dict of [B, T] int arrays -> [B, T, H]."""
    input_ids = batch["input_ids"]
    mask = batch.get("attention_mask", jnp.ones_like(input_ids))
    types = batch.get("token_type_ids", jnp.zeros_like(input_ids))
    return Embeddings(config).apply({"params": params["embeddings"]}, input_ids, types, mask)


def layer_params(params: Params, index: Array | int) -> Params:
    """The parameters of layer `index` and its exit (works with a traced index)."""
    taken = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, index, keepdims=False),
                         params["layers"])
    if "shared_layer" in params:
        taken["shared_layer"] = params["shared_layer"]
    return taken


def apply_layer_with_exit(config: ModelConfig, params_i: Params, hidden: Array,
                          attention_mask: Array) -> tuple[Array, Array]:
    """Layer i and exit i (inference): hidden [B, T, H] -> (hidden, logits [B, C])."""
    own = {k: v for k, v in params_i.items() if k != "shared_layer"}
    hidden, (logits, _) = LayerWithExit(config).apply({"params": own}, hidden, attention_mask,
                                                      params_i.get("shared_layer"))
    return hidden, logits


def init_params(config: ModelConfig, seed: int = 0, seq_len: int = 8) -> Params:
    """Random parameters (HF's normal(0.02) initialisation) for a config."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return MultiExitEncoder(config).init(jax.random.PRNGKey(seed), ids)["params"]


def init_exit_params(config: ModelConfig, seed: int = 0) -> Params:
    """Fresh stacked exit parameters: kernels normal(0.02), biases zero (HF's init).

    Returns {'pooler': {'kernel' [L, H, H], 'bias' [L, H]},
             'classifier': {'kernel' [L, H, C], 'bias' [L, C]}}.
    """
    L, H, C = config.num_layers, config.hidden_size, config.num_labels
    k_pool, k_cls = jax.random.split(jax.random.PRNGKey(seed))
    return {"pooler": {"kernel": _init(k_pool, (L, H, H)), "bias": jnp.zeros((L, H))},
            "classifier": {"kernel": _init(k_cls, (L, H, C)), "bias": jnp.zeros((L, C))}}
