r"""ModernBERT at long inputs on a CPU: memory and time at 1k, 4k and 8k tokens.

    python bench/bench_long_context.py --lengths 1024,4096,8192 --layers 3 --out bench/results/long_context_cpu.json

A ModernBERT-base-shaped encoder (transformers' `ModernBertConfig` defaults: hidden 768,
12 heads, GeGLU 1152, a global layer every third, local windows of 128 tokens, 8,192
positions) with `--layers` layers and random weights, one sequence of T real tokens
(batch 1), for each T in `--lengths`:

- rome_jax: every exit at full depth (`executors.all_exits`, the scanned layers), and
  the compiled early-exit loop run to the last layer (`while_loop_exit`, criterion
  `fixed` at the last layer); the memory XLA plans for each program
  (`compiled.memory_analysis()`: arguments, outputs, temporaries) and the process's
  peak resident memory;
- transformers' `ModernBertForSequenceClassification` (PyTorch, its default attention)
  on the same weights and tokens: time and peak resident memory, and the largest
  difference between its logits and the final exit's.

Each (side, T) runs in its own process (so the peak resident memory is that case's),
timings are the median of `--repeats` passes after one untimed pass. Times are printed
in seconds and as ratios to T = the first length and to transformers in the same run;
compare ratios, not seconds, across hosts. The default 3 layers are one period of the
local/global pattern; a 22-layer ModernBERT-base costs about 22/3 times as much.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_train_step import write_record  # noqa: E402


def _make_model(path: str, layers: int, seed: int = 0) -> None:
    import torch
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    torch.manual_seed(seed)
    cfg = ModernBertConfig(num_hidden_layers=layers, num_labels=2)
    ModernBertForSequenceClassification(cfg).eval().save_pretrained(path)


def _tokens(length: int, vocab: int = 50_000, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(5, vocab, size=(1, length)).astype(np.int32)


def _peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from
    the parent across exec)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 2**20


def _timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # untimed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _case_jax(model_dir: str, length: int, repeats: int) -> dict:
    import jax

    import rome_jax
    from rome_jax.exits import executors
    from rome_jax.exits.criteria import Criterion

    model = rome_jax.load_pretrained(model_dir)
    ids = _tokens(length)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    out: dict = {}
    start = time.perf_counter()
    logits = np.asarray(model.exit_logits(batch))
    out["all_exits_first_call_s"] = time.perf_counter() - start
    out["final_logits"] = logits[-1].tolist()
    out["all_exits_s"], out["all_exits_times"] = _timed(
        lambda: jax.block_until_ready(model.exit_logits(batch)), repeats
    )
    last = Criterion("fixed", model.config.num_layers)
    loop = lambda: jax.block_until_ready(executors.while_loop_exit(model.config, model.params, batch, last))
    start = time.perf_counter()
    loop()
    out["while_loop_first_call_s"] = time.perf_counter() - start
    out["while_loop_s"], out["while_loop_times"] = _timed(loop, repeats)
    dev = {k: jax.numpy.asarray(v) for k, v in batch.items()}
    for name, fn, args in (
        ("all_exits", executors._all_exits, (model.config, model.params, dev)),
        ("while_loop", executors._while_loop_exit, (model.config, model.params, dev, last.rule)),
    ):
        memory = fn.lower(*args).compile().memory_analysis()
        if memory is not None:
            out[f"{name}_xla_bytes"] = {
                "arguments": int(memory.argument_size_in_bytes),
                "outputs": int(memory.output_size_in_bytes),
                "temporaries": int(memory.temp_size_in_bytes),
            }
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


def _case_torch(model_dir: str, length: int, repeats: int) -> dict:
    import torch
    from transformers import ModernBertForSequenceClassification

    model = ModernBertForSequenceClassification.from_pretrained(model_dir).eval()
    ids = torch.from_numpy(_tokens(length).astype(np.int64))
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    out = {"final_logits": run()[0].numpy().tolist(), "attention": model.config._attn_implementation}
    out["forward_s"], out["forward_times"] = _timed(run, repeats)
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,4096,8192")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="rome_jax only")
    parser.add_argument("--out", default=None)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # side:length:model_dir (a child process)
    args = parser.parse_args()

    if args.case:
        side, length, model_dir = args.case.split(":", 2)
        fn = _case_jax if side == "jax" else _case_torch
        print("RESULT " + json.dumps(fn(model_dir, int(length), args.repeats)), flush=True)
        return

    lengths = [int(x) for x in args.lengths.split(",")]
    sides = ["jax"] + ([] if args.no_torch else ["torch"])
    results: dict = {side: {} for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "modernbert")
        _make_model(model_dir, args.layers)
        for length in lengths:
            for side in sides:
                cmd = [
                    sys.executable,
                    __file__,
                    "--case",
                    f"{side}:{length}:{model_dir}",
                    "--repeats",
                    str(args.repeats),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
                    results[side][length] = {"error": f"exit {proc.returncode}: {' '.join(tail)}"}
                    print(f"{side} T={length}: failed ({results[side][length]['error']})", flush=True)
                    continue
                results[side][length] = json.loads(line[len("RESULT ") :])
                print(f"{side} T={length}: {_summary(results[side][length])}", flush=True)

    rows = []
    first = lengths[0]
    for length in lengths:
        jx = results["jax"].get(length, {})
        th = results.get("torch", {}).get(length, {})
        row: dict = {"tokens": length}
        if "all_exits_s" in jx:
            row["jax_all_exits_s"] = jx["all_exits_s"]
            row["jax_while_loop_s"] = jx["while_loop_s"]
            row["jax_peak_rss_gib"] = jx["peak_rss_gib"]
            row["jax_xla_temporaries_gib"] = jx.get("all_exits_xla_bytes", {}).get("temporaries", 0) / 2**30
            base = results["jax"].get(first, {}).get("all_exits_s")
            if base:
                row["jax_time_vs_first_length"] = jx["all_exits_s"] / base
        if "forward_s" in th:
            row["torch_forward_s"] = th["forward_s"]
            row["torch_peak_rss_gib"] = th["peak_rss_gib"]
            if "all_exits_s" in jx:
                row["jax_all_exits_vs_torch"] = jx["all_exits_s"] / th["forward_s"]
                row["max_abs_logit_diff"] = float(
                    np.abs(np.asarray(jx["final_logits"]) - np.asarray(th["final_logits"])).max()
                )
        rows.append(row)
    record = {
        "benchmark": "long_context",
        "model": f"ModernBERT-base shape, {args.layers} layers, random weights",
        "batch": 1,
        "repeats": args.repeats,
        "rows": rows,
        "cases": {side: {str(k): v for k, v in r.items()} for side, r in results.items()},
    }
    print(json.dumps(rows, indent=1))
    if args.out:
        write_record(args.out, record)


def _summary(r: dict) -> str:
    if "all_exits_s" in r:
        temp = r.get("all_exits_xla_bytes", {}).get("temporaries", 0) / 2**30
        return (
            f"all exits {r['all_exits_s']:.3f} s, while_loop {r['while_loop_s']:.3f} s, "
            f"XLA temporaries {temp:.2f} GiB, peak RSS {r['peak_rss_gib']:.2f} GiB"
        )
    return f"forward {r['forward_s']:.3f} s, peak RSS {r['peak_rss_gib']:.2f} GiB"


if __name__ == "__main__":
    main()
