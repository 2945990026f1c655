"""rome_jax against `transformers` PyTorch, same config, batch and length, one run.

    python bench/bench_vs_torch.py --preset minilm
    python bench/bench_vs_torch.py --preset bert-base --batch 8 --repeats 3

Forward: all exits of our multi-exit model against `BertForSequenceClassification`
(one exit). Training step: our `joint` step (every exit's loss, clip, AdamW)
against PyTorch's forward + cross-entropy + backward + clip + AdamW on the single
classifier. Both therefore do slightly more work on our side (the exit heads).
The two frameworks' steps are timed alternately, so load on a shared machine
hits both alike; medians are reported and the ratio (ours / theirs) is the figure,
with the ratio of the fastest calls beside it (a call can be slowed by the other
framework's last one: in one process, our first bert-base step right after PyTorch
steps took 1.85x our usual time).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from bench.bench_train_step import PRESETS, random_batch, step_runner, write_record
from rome_jax.inference import all_exits
from rome_jax.config import ModelConfig
from rome_jax.model import INPUT_KEYS, init_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="minilm", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.set_num_threads(os.cpu_count() or 1)
    dims = PRESETS[args.preset]
    config = ModelConfig(**dims)
    hf = BertForSequenceClassification(BertConfig(
        hidden_size=dims["hidden_size"], num_hidden_layers=dims["num_layers"],
        num_attention_heads=dims["num_heads"], intermediate_size=dims["intermediate_size"],
        num_labels=2, attn_implementation="sdpa"))
    batch = random_batch(args.batch, args.length)
    torch_batch = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}

    params = init_params(config, 0)
    inputs = {k: jnp.asarray(batch[k]) for k in INPUT_KEYS}
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

    pairs = {"forward": (jax_forward, torch_forward), "train_step": (jax_step, torch_step)}
    results = {}
    for name, (ours, theirs) in pairs.items():
        ours(); ours(); theirs(); theirs()  # compile / warm up
        times = {"rome_jax": [], "torch": []}
        for _ in range(args.repeats):
            for label, fn in (("rome_jax", ours), ("torch", theirs)):
                start = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - start)
        med = {k: float(np.median(v)) for k, v in times.items()}
        best = {k: float(np.min(v)) for k, v in times.items()}
        results[name] = {**med, "ratio": med["rome_jax"] / med["torch"],
                         "min": best, "ratio_of_min": best["rome_jax"] / best["torch"], "all": times}

    print(f"{args.preset} batch {args.batch} length {args.length} float32, "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}")
    print(f"{'':<12}{'rome_jax s':>12}{'torch s':>12}{'ratio':>8}{'ratio of min':>14}")
    for name, r in results.items():
        print(f"{name:<12}{r['rome_jax']:>12.3f}{r['torch']:>12.3f}{r['ratio']:>8.2f}{r['ratio_of_min']:>14.2f}")
    record = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
              "jax": jax.__version__, "torch": torch.__version__, "preset": args.preset,
              "batch": args.batch, "length": args.length, "results": results}
    write_record(args.out or f"bench/results/vs_torch_{args.preset}_cpu.json", record)


if __name__ == "__main__":
    main()
