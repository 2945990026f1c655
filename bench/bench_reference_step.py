"""Training throughput and model FLOPs utilisation: our steps against the PyTorch reference step.

    python bench/bench_reference_step.py                                   # CPU: MiniLM dims, float32
    python bench/bench_reference_step.py --preset bert-base --batch 256 --dtype bfloat16 \
        --torch fp32,bf16 --out bench/results/reference_step_gpu.json      # a GPU (bench/gpu_checks.sh)

In one run, for the same dimensions, batch and length:
- our jitted `joint` and `romebert` (SD + GR) steps, at `--dtype`;
- the PyTorch reference RomeBERT step (bench/torch_reference.py: one forward, two
  backward passes, the projection on flattened gradients, clip, AdamW), in float32
  as the reference runs (`fp32`) and/or under bfloat16 autocast (`bf16`).

Each row: median step time, samples/s, and MFU = model FLOPs / time / peak, where
model FLOPs per step = `rome_jax.encoder.flops.training_flops` x batch: the matrix products
of the forward and one backward pass (3 x forward: 6 x matmul weights x tokens, plus
attention's 12 x L x T^2 x H, plus the exit heads), elementwise work not counted, as
MFU is usually counted. It is the same count for every row, so a step that does more
work (a second backward pass: `romebert` and the PyTorch reference, 5/3 of it) shows
as lower MFU; for those rows read the step time against `joint`. Peak is a measured
dense matmul rate at the compute dtype (`--peak_size`), not the datasheet's. Steps
are timed alternately after warm-up, so load on a shared machine hits all rows alike;
on a CPU each after a pause (`--settle`, 0.3 s there, none on an accelerator, whose
clocks drop when idle) so that PyTorch's spinning OpenMP threads are idle when the
next row starts (see bench_vs_torch.py). JAX does not preallocate GPU memory here
(`XLA_PYTHON_CLIENT_PREALLOCATE=false` unless set): by default it would take 75% of
it and leave PyTorch's float32 step at batch 256 too little.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":  # before JAX starts: see rome_jax/host_memory.py
    # JAX and PyTorch share the GPU in this process: JAX must not take 75% of it up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()


import jax
import jax.numpy as jnp
import numpy as np

from bench.bench_train_step import PRESETS, random_batch, step_runner, write_record
from rome_jax.encoder import flops
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import init_params


def matmul_peak(dtype: str, size: int, repeats: int = 10, window_s: float = 0.02) -> float:
    """Measured FLOP/s of a [size, size] @ [size, size] product of random `dtype` matrices.

    After the compilation and three warm-up products, the best of `repeats` timed
    windows, each of back-to-back products lasting about `window_s` (on a GPU one
    product takes ~1.4 ms at 8192 in bfloat16: timing it alone would count the
    dispatch of each call), ended by `block_until_ready` on the last product (one
    stream: the earlier ones are done by then).
    """
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (size, size), jnp.dtype(dtype))
    b = jax.random.normal(key_b, (size, size), jnp.dtype(dtype))
    mm = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.dtype(dtype)))
    for _ in range(4):
        jax.block_until_ready(mm(a, b))
    start = time.perf_counter()
    jax.block_until_ready(mm(a, b))
    calls = max(1, min(200, math.ceil(window_s / (time.perf_counter() - start))))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = mm(a, b)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / calls)
    return 2.0 * size**3 / best


def torch_step_fn(config: ModelConfig, batch: dict, precision: str):
    """The PyTorch reference step at `precision` ("fp32" or "bf16" autocast), as a callable."""
    import torch

    from bench import torch_reference as ref

    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = jax.device_get(init_params(config, 0))
    model = ref.build_model(config, params).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8, weight_decay=0.0)
    selection = ref.selected_names(model, config.num_layers)
    tbatch = ref.torch_batch(batch, device)
    autocast = torch.bfloat16 if precision == "bf16" else None

    def run():
        ref.reference_step(model, optimizer, tbatch, selection, autocast_dtype=autocast)
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="minilm", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--modes", default="joint,romebert", help="our training modes to time")
    parser.add_argument("--torch", default="fp32", help="reference step precisions: fp32, bf16, fp32,bf16 or none")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--peak_size", type=int, default=0, help="matmul size for the peak (0: 8192 on GPU/TPU, 2048 on CPU)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds to wait before each timed step (lets the other rows' threads go idle); "
        "default 0.3 on a CPU, 0 on an accelerator",
    )
    parser.add_argument("--out", default="bench/results/reference_step_cpu.json")
    args = parser.parse_args()

    config = ModelConfig(**PRESETS[args.preset], dtype=args.dtype)
    batch = random_batch(args.batch, args.length)
    backend = jax.devices()[0].platform
    if args.settle is None:
        args.settle = 0.3 if backend == "cpu" else 0.0
    peak = matmul_peak(args.dtype, args.peak_size or (2048 if backend == "cpu" else 8192))
    step_flops = flops.training_flops(config, args.length) * args.batch

    rows = {f"rome_jax {m}": step_runner(config, m, batch) for m in args.modes.split(",") if m}
    precisions = [] if args.torch == "none" else args.torch.split(",")
    if precisions:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        if backend != "cpu" and not torch.cuda.is_available():
            raise SystemExit(
                f"JAX runs on {backend} but PyTorch sees no CUDA device: the reference "
                "rows would time the CPU (use --torch none to time ours alone)"
            )
        for p in precisions:
            rows[f"torch reference {p}"] = torch_step_fn(config, batch, p)
    for fn in rows.values():  # compile / warm up
        fn(), fn()
    times = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, fn in rows.items():
            time.sleep(args.settle)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t)) for name, t in times.items()}

    joint = medians.get("rome_jax joint")
    results = {}
    for name, seconds in medians.items():
        results[name] = {
            "step_seconds": seconds,
            "samples_per_second": args.batch / seconds,
            "mfu": step_flops / seconds / peak,
            "ratio_to_joint": seconds / joint if joint else None,
        }
    print(
        f"{args.preset} batch {args.batch} length {args.length} {args.dtype} on {backend} "
        f"({jax.devices()[0].device_kind}); measured matmul peak {peak / 1e12:.2f} TFLOP/s; "
        f"model FLOPs/step {step_flops / 1e9:.1f} G"
    )
    print(f"{'':<24}{'step s':>10}{'samples/s':>11}{'MFU':>7}{'/ joint':>9}")
    for name, r in results.items():
        rel = f"{r['step_seconds'] / joint:>9.2f}" if joint else f"{'':>9}"
        print(f"{name:<24}{r['step_seconds']:>10.4f}{r['samples_per_second']:>11.1f}{r['mfu']:>7.1%}{rel}")
    romebert = medians.get("rome_jax romebert")
    speedups = {name: medians[name] / romebert for name in medians if romebert and name.startswith("torch")}
    for name, s in speedups.items():
        print(f"rome_jax romebert samples/s over {name}: {s:.2f}x")
    versions = {"jax": jax.__version__}
    if precisions:
        versions["torch"] = torch.__version__
        versions["torch_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        versions["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()  # 'highest': no TF32
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "backend": backend,
        "device_kind": jax.devices()[0].device_kind,
        "cpus": os.cpu_count(),
        **versions,
        "preset": args.preset,
        "batch": args.batch,
        "length": args.length,
        "dtype": args.dtype,
        "settle_s": args.settle,
        "matmul_peak_flops": peak,
        "model_flops_per_step": step_flops,
        "mfu_counts": "flops.training_flops x batch (3 x forward matmul FLOPs) for every row; "
        "romebert and the torch reference do 5/3 of it (two backward passes)",
        "results": results,
        "romebert_speedup_over_torch": speedups,
    }
    write_record(args.out, record)


if __name__ == "__main__":
    main()
