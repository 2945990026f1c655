"""Speed-tuned operators of the encoder, apart from its architecture (`rome_jax.encoder.model`).

Each computes what its textbook form computes (float32 reassociation aside); each is
written out by hand because the form JAX or Flax would pick was measurably slower, or
its derivative longer, in the places this library runs it (docs/performance.md):

- `dropout_bits`: uint16 random bits for dropout masks, one Threefry-2x32 evaluation
  per four elements instead of one per element (`jax.random.bits`), a quarter of the
  hashing that dominates dropout on a CPU.
- `Dropout`: inverted dropout on those 16-bit masks, in place of `nn.Dropout` (32-bit
  masks); the rate is met to within 2**-17.
- `dense_matmul`: x [..., I] @ kernel [I, O] with a custom VJP whose kernel gradient
  is laid out as a plain row-major matmul on the CPU, where XLA otherwise picks a slow
  generic kernel; on GPU/TPU the same products as autodiff.
- `Dense`: `nn.Dense` with HF's normal(0.02) init (`normal_init`) and `dense_matmul`
  as its product; the encoder's query/key/value, intermediate and output layers.
- `attention`: inference attention with the heads first and the softmax's division
  after the value product (as flash attention does); faster on the CPU than
  `jax.nn.dot_product_attention`.
- `training_attention`: HF's training order (softmax, dropout on the probabilities,
  value product) with `softmax` below, whose backward stays cheap for each extra
  cotangent GR pulls back.
- `softmax`: softmax over the last axis with a custom JVP of the short form
  y * (dx - sum(y * dx)), without flipping JAX's global `jax_softmax_custom_jvp`.
- `cudnn_attention`: `attention` through cuDNN's fused flash kernel (GPU, bfloat16),
  with a `CheckpointError` naming the fix where there is no cuDNN.
- `activation`: HF's `hidden_act` names to JAX functions (the exact `gelu` in its
  faster erfc form).
- `masked_mean`: the mean of the attended token vectors (the exits' "mean" pooling).

Shapes: B batch, T tokens, N heads, D head size.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from rome_jax.errors import CheckpointError, first_line

Array = jax.Array

normal_init = nn.initializers.normal(stddev=0.02)
"""HF's initialiser for every kernel and embedding table: normal, stddev 0.02."""


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """The fixed position table of DistilBERT's `sinusoidal_pos_embds` (and of "Attention
    is all you need"): [n_pos, dim] float32, row p, column j: sin(p / 10000^(2 (j//2) / dim))
    for even j, cos(...) for odd j."""
    pos = np.arange(n_pos, dtype=np.float64)[:, None]
    angle = pos / np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)[None, :]
    return np.where(np.arange(dim)[None, :] % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)


def sinusoidal_init(key: Array, shape: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> Array:
    """An `nn.Embed` initialiser giving `sinusoidal_table` (the key is unused)."""
    del key
    return jnp.asarray(sinusoidal_table(*shape), dtype)


def activation(name: str) -> Callable[[Array], Array]:
    """HF's `hidden_act` by name -> an elementwise function (any shape, dtype kept)."""
    if name == "gelu":
        # HF "gelu" is the exact one; nn.gelu's erfc form ran 14% faster than an erf form on CPU
        return lambda x: nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: nn.gelu(x, approximate=True)
    return {"relu": nn.relu, "tanh": jnp.tanh}[name]


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
    if np.prod(grouped, dtype=np.int64) >= 2**32:
        raise ValueError(f"dropout mask of shape {shape} needs more than 2**32 counters")
    strides = np.cumprod((1, *grouped[::-1]))[:-1][::-1]
    counter = sum(
        jax.lax.broadcasted_iota(jnp.uint32, grouped, d) * np.uint32(stride) for d, stride in enumerate(strides)
    )
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


def _dense_matmul_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _matmul(x, kernel), (x, kernel)


def _dense_matmul_bwd(residuals: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
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


def _dense_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None, preferred_element_type=None) -> Array:
    """`nn.Dense`'s dot_general (contract lhs's last axis with rhs's first) via `dense_matmul`."""
    (lc, rc), (lb, rb) = dimension_numbers
    if (
        (tuple(lc), tuple(rc), tuple(lb), tuple(rb)) != ((lhs.ndim - 1,), (0,), (), ())
        or precision is not None
        or preferred_element_type is not None
    ):
        raise NotImplementedError("dense_matmul is x[..., I] @ kernel[I, O] at default precision only")
    return dense_matmul(lhs, rhs)


def Dense(features: int, dtype: DTypeLike, name: str, use_bias: bool = True) -> nn.Dense:
    """`nn.Dense` with HF's normal(0.02) init and the CPU-friendly backward of `dense_matmul`.

    x [..., I] -> [..., features] (`dtype`); kernel [I, features], bias [features]
    (none without `use_bias`: ModernBERT's default).
    """
    return nn.Dense(
        features, dtype=dtype, use_bias=use_bias, kernel_init=normal_init, name=name, dot_general=_dense_dot_general
    )


def masked_mean(hidden: Array, attention_mask: Array) -> Array:
    """Mean of the token vectors over the attended positions: hidden [B, T, H],
    attention_mask [B, T] -> [B, H] in hidden's dtype (summed in float32). A row with
    no attended position (a padding row) gets zeros, not NaN."""
    keep = attention_mask.astype(bool)
    summed = jnp.where(keep[:, :, None], hidden.astype(jnp.float32), 0.0).sum(axis=1)
    count = jnp.maximum(keep.sum(axis=1, keepdims=True).astype(jnp.float32), 1.0)
    return (summed / count).astype(hidden.dtype)


def attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Scaled dot-product attention over the keys where `mask` is True (inference).

    q, k, v [B, T, N, D] (compute dtype); mask [B, 1, 1, T] bool -> context [B, T, N, D].

    Heads first ([B, N, T, D]), so both products are plain batched matrix products,
    and the softmax's division after the value product, on [B, N, T, D] instead of
    the [B, N, T, T] probabilities (as flash attention does):
    softmax(s) V = (exp(s - max s) V) / sum exp(s - max s). Scores and the softmax are
    float32. On the CPU the whole forward ran 8-13% faster than with
    `jax.nn.dot_product_attention` (docs/performance.md). Differentiable, but training
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


def training_attention(
    q: Array, k: Array, v: Array, mask: Array, drop: Callable[[Array], Array] | None = None
) -> Array:
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
    x [..., K] -> probabilities [..., K] (same dtype).
    """
    unnormalized = jnp.exp(x - jax.lax.stop_gradient(x.max(-1, keepdims=True)))
    return unnormalized / unnormalized.sum(-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
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
        raise CheckpointError(
            f"attention_kernel 'cudnn' is unavailable on {jax.default_backend()}: "
            f"{first_line(e).rstrip('.')}; use attention_kernel 'xla'"
        ) from None


class Dropout(nn.Module):
    """Inverted dropout with 16-bit masks: drops where bits < round(rate * 2**16).

    The rate is met to within 2**-17 (0.1 -> 0.100006); the kept values are scaled
    by exactly 1 / (1 - rate). Uses the module's 'dropout' RNG stream like
    `nn.Dropout`, whose 32-bit masks cost four times the hashing.
    x [...] -> [...] (same shape and dtype).
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
