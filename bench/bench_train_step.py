"""Step time of each training mode relative to `joint`, measured in one run.

    python bench/bench_train_step.py                      # MiniLM dims, batch 32, length 128
    python bench/bench_train_step.py --modes joint,romebert,sd,gr --repeats 10

Prints a table and writes JSON (`--out`). Times are medians over `--repeats`
steps after a warm-up (compilation excluded); the ratios are what to compare, as
the machine may be shared. Parameters are random (timing does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":  # before JAX starts: see rome_jax/host_memory.py
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()


import jax
import numpy as np

from rome_jax import sharding
from rome_jax.encoder import flops
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import init_params
from rome_jax.training import step as ts
from rome_jax.training.optim import make_optimizer

PRESETS = {
    "minilm": dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
}


def random_batch(batch: int, length: int, seed: int = 0) -> dict:
    """Random token ids [batch, length], no padding, two-class labels [batch] (timing only)."""
    rng = np.random.RandomState(seed)
    return {
        "input_ids": rng.randint(1000, 30000, (batch, length)).astype(np.int32),
        "attention_mask": np.ones((batch, length), np.int32),
        "token_type_ids": np.zeros((batch, length), np.int32),
        "labels": rng.randint(0, 2, batch).astype(np.int32),
    }


def step_runner(config: ModelConfig, mode: str, batch: dict):
    """A zero-argument callable running one compiled step of `mode` (state kept inside).

    Random parameters; a two-stage mode runs its stage 2.
    """
    params = init_params(config, 0)
    tx = make_optimizer(2e-5, 1000, params=params)
    mesh = sharding.make_mesh()
    stage = 2 if mode in ts.TWO_STAGE_MODES else 1
    step = ts.compile_train_step(config, ts.StepSettings(mode=mode, stage=stage), tx, mesh, params)
    holder = {"state": sharding.replicate(ts.create_train_state(params, tx, 0), mesh)}
    device_batch = sharding.shard_batch(batch, mesh)

    def run() -> None:
        holder["state"], metrics = step(holder["state"], device_batch)
        jax.block_until_ready(metrics)

    return run


def time_mode(config: ModelConfig, mode: str, batch: dict, repeats: int) -> float:
    """Median seconds of one step of `mode` over `repeats`, after compile and warm-up."""
    run = step_runner(config, mode, batch)
    run(), run()  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cpu_model() -> str:
    """The host CPU's model name from /proc/cpuinfo ('' where there is none): CPU
    ratios against PyTorch differ by host (docs/performance.md, "By host")."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def write_record(path: str, record: dict) -> None:
    """Writes a benchmark's JSON record with the command line that produced it and the
    host's CPU model."""
    record = {
        **record,
        "command": " ".join(["python"] + sys.argv),
        "cpu_model": cpu_model(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    }  # see rome_jax/host_memory.py
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="minilm", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--modes", default="joint,romebert")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default="bench/results/train_step_cpu.json")
    args = parser.parse_args()

    config = ModelConfig(**PRESETS[args.preset], dtype=args.dtype)
    batch = random_batch(args.batch, args.length)
    modes = args.modes.split(",")
    results = {}
    for mode in modes:
        results[mode] = time_mode(config, mode, batch, args.repeats)
        # Written after each mode: a run stopped early (e.g. by `timeout`) keeps the modes done.
        record = _record(args, config, results)
        write_record(args.out, record)
    print(
        f"{args.preset} batch {args.batch} length {args.length} {args.dtype} on "
        f"{jax.devices()[0].platform} x{len(jax.devices())}"
    )
    print(f"{'mode':<12}{'step s':>10}{'/ joint':>10}")
    for mode, seconds in results.items():
        print(f"{mode:<12}{seconds:>10.3f}{record['ratio_to_joint'][mode]:>10.2f}")


def _record(args, config: ModelConfig, results: dict) -> dict:
    base = results.get("joint", next(iter(results.values())))
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "backend": jax.devices()[0].platform,
        "devices": len(jax.devices()),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "preset": args.preset,
        "batch": args.batch,
        "length": args.length,
        "dtype": args.dtype,
        "step_seconds": results,
        "ratio_to_joint": {m: s / base for m, s in results.items()},
        # MFU = this / step_seconds / a measured peak (bench_reference_step.py measures one)
        "model_flops_per_step": flops.training_flops(config, args.length) * args.batch,
    }


if __name__ == "__main__":
    main()
