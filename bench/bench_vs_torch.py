"""rome_jax against `transformers` PyTorch, same config, batch and length, one run.

    python bench/bench_vs_torch.py --preset minilm
    python bench/bench_vs_torch.py --preset bert-base --batch 8 --repeats 3

Forward: all exits of our multi-exit model against `BertForSequenceClassification`
(one exit). Training step: our `joint` step (every exit's loss, clip, AdamW)
against PyTorch's forward + cross-entropy + backward + clip + AdamW on the single
classifier. Both therefore do slightly more work on our side (the exit heads).
The two frameworks' steps are timed alternately, so load on a shared machine
hits both alike; medians are reported and the ratio (ours / theirs) is the figure,
with the ratio of the fastest calls beside it. Each timed call starts after a pause
(`--settle`, default 0.3 s): PyTorch's OpenMP threads keep spinning for a while after
a call returns, and without the pause they ran during our next call on the shared
cores (our bert-base step right after PyTorch's took up to 1.85x its usual time; our
`gemms` row 7% longer).

A third row, `gemms`, times the six dense products of one encoder layer (query, key,
value, attention output, FFN in, FFN out: [B*T, H] @ [H, H] four times, then
[B*T, H] @ [H, I] and [B*T, I] @ [I, H]) chained, as one jitted function against
`torch.mm`: the matrix library alone, about two thirds of either step's work (on the
2-core Xeon of docs/performance.md XLA:CPU's YNNPACK runs these shapes 1.15-1.25x
slower than PyTorch's `torch.mm`; HF's `nn.Linear`, an `addmm` with the bias, is itself
5-10% slower than `torch.mm`, so this row overstates the gap inside the model).

A fourth row, `attention`, times one layer's attention core: our inference form
(`rome_jax.encoder.model.attention`, mask applied) against the `scaled_dot_product_attention`
call of HF's BERT on an unpadded batch (no mask: HF passes none when nothing is
padded; PyTorch's CPU flash kernel serves it), both from [B, T, heads, head_dim] to
[B, T, hidden]. PyTorch's kernel never writes the [B, heads, T, T] scores to memory;
XLA writes them, and runs the batched products on one thread (docs/performance.md).

`--cpu-devices N` splits the CPU into N JAX devices (`jax_num_cpu_devices`) and runs
our forward and step data-parallel over them, as `train.py` does over any devices
it finds (the `gemms` and `attention` rows stay on one). On the 2-core machine two
devices made MiniLM's forward at batch 32 x 128 17-20% faster, but the step slower
at small batches and at bert-base dimensions (each device repeats the optimizer's
work on every parameter): docs/performance.md, "Two JAX CPU devices".
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":  # before JAX starts: see rome_jax/host_memory.py
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()


import jax
import jax.numpy as jnp
import numpy as np

from bench.bench_train_step import PRESETS, random_batch, step_runner, write_record
from rome_jax import sharding
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import INPUT_KEYS, init_params
from rome_jax.encoder.ops import attention
from rome_jax.exits.executors import all_exits


def layer_gemms(dims: dict, rows: int):
    """One encoder layer's six dense products, chained, in JAX (jitted) and PyTorch.

    Weights are scaled by 1/sqrt(fan_in) so the chain's values stay near unit size.
    Returns two zero-argument callables that block until their result is ready.
    """
    import torch

    h, i = dims["hidden_size"], dims["intermediate_size"]
    rng = np.random.default_rng(0)
    shapes = [(h, h)] * 4 + [(h, i), (i, h)]
    weights = [(rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32) for s in shapes]
    x = rng.standard_normal((rows, h)).astype(np.float32)

    @jax.jit
    def chain(x, weights):
        for w in weights:
            x = x @ w
        return x

    jx, jw = jnp.asarray(x), [jnp.asarray(w) for w in weights]
    tx, tw = torch.from_numpy(x), [torch.from_numpy(w) for w in weights]

    def torch_chain():
        y = tx
        for w in tw:
            y = torch.mm(y, w)
        return y

    return (lambda: jax.block_until_ready(chain(jx, jw))), torch_chain


def layer_attention(dims: dict, batch: int, length: int):
    """One layer's attention core, [B, T, N, D] in and [B, T, N * D] out, in JAX and PyTorch.

    Ours: `rome_jax.encoder.model.attention` (the inference form, mask applied) then the
    reshape. PyTorch: what `BertSdpaSelfAttention` runs on an unpadded batch,
    `scaled_dot_product_attention` on the heads-first views with no mask (HF passes
    none when nothing is padded), then the transpose and reshape back.
    """
    import torch

    heads = dims["num_heads"]
    head_dim = dims["hidden_size"] // heads
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32) for _ in range(3))
    mask = np.ones((batch, 1, 1, length), bool)

    @jax.jit
    def ours(q, k, v, mask):
        return attention(q, k, v, mask).reshape(batch, length, heads * head_dim)

    jq, jk, jv, jm = (jnp.asarray(a) for a in (q, k, v, mask))
    tq, tk, tv = (torch.from_numpy(a).transpose(1, 2) for a in (q, k, v))

    def theirs():
        with torch.no_grad():
            out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
            return out.transpose(1, 2).reshape(batch, length, heads * head_dim)

    return (lambda: jax.block_until_ready(ours(jq, jk, jv, jm))), theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="minilm", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--settle",
        type=float,
        default=0.3,
        help="seconds to wait before each timed call (lets the other side's threads go idle)",
    )
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="JAX CPU devices (default: JAX's, 1); ours runs data-parallel over them",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.cpu_devices is not None:
        if args.cpu_devices < 1 or args.batch % args.cpu_devices:
            parser.error(f"--cpu-devices {args.cpu_devices} must be at least 1 and divide --batch {args.batch}")
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before any JAX operation

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.set_num_threads(os.cpu_count() or 1)
    dims = PRESETS[args.preset]
    config = ModelConfig(**dims)
    hf = BertForSequenceClassification(
        BertConfig(
            hidden_size=dims["hidden_size"],
            num_hidden_layers=dims["num_layers"],
            num_attention_heads=dims["num_heads"],
            intermediate_size=dims["intermediate_size"],
            num_labels=2,
            attn_implementation="sdpa",
        )
    )
    batch = random_batch(args.batch, args.length)
    torch_batch = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}

    mesh = sharding.make_mesh()  # the step's mesh: all devices, the batch split on them
    params = sharding.replicate(init_params(config, 0), mesh)
    inputs = sharding.shard_batch({k: batch[k] for k in INPUT_KEYS}, mesh)
    jax_step = step_runner(config, "joint", batch)
    optimizer = torch.optim.AdamW(hf.parameters(), lr=2e-5, eps=1e-8, weight_decay=0.0)

    def jax_forward():
        jax.block_until_ready(all_exits(config, params, inputs))

    def torch_forward():
        hf.eval()
        with torch.no_grad():
            hf(**{k: v for k, v in torch_batch.items() if k != "labels"})

    def torch_step():
        hf.train()
        loss = hf(**torch_batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    jax_gemms, torch_gemms = layer_gemms(dims, args.batch * args.length)
    pairs = {
        "forward": (jax_forward, torch_forward),
        "train_step": (jax_step, torch_step),
        "gemms": (jax_gemms, torch_gemms),
        "attention": layer_attention(dims, args.batch, args.length),
    }
    results = {}
    for name, (ours, theirs) in pairs.items():
        ours()
        ours()
        theirs()
        theirs()  # compile / warm up
        times = {"rome_jax": [], "torch": []}
        for _ in range(args.repeats):
            for label, fn in (("rome_jax", ours), ("torch", theirs)):
                time.sleep(args.settle)
                start = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - start)
        med = {k: float(np.median(v)) for k, v in times.items()}
        best = {k: float(np.min(v)) for k, v in times.items()}
        results[name] = {
            **med,
            "ratio": med["rome_jax"] / med["torch"],
            "min": best,
            "ratio_of_min": best["rome_jax"] / best["torch"],
            "all": times,
        }

    print(
        f"{args.preset} batch {args.batch} length {args.length} float32, jax {jax.__version__} "
        f"({jax.devices()[0].platform} x{mesh.size}), torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(f"{'':<12}{'rome_jax ms':>12}{'torch ms':>12}{'ratio':>8}{'ratio of min':>14}")
    for name, r in results.items():
        print(
            f"{name:<12}{r['rome_jax'] * 1e3:>12.1f}{r['torch'] * 1e3:>12.1f}{r['ratio']:>8.2f}"
            f"{r['ratio_of_min']:>14.2f}"
        )
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "preset": args.preset,
        "batch": args.batch,
        "length": args.length,
        "settle_s": args.settle,
        "jax_devices": mesh.size,
        "torch_threads": torch.get_num_threads(),
        "results": results,
    }
    write_record(args.out or f"bench/results/vs_torch_{args.preset}_cpu.json", record)


if __name__ == "__main__":
    main()
