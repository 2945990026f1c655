r"""Length buckets against one padded shape: whole runs, evaluation throughput, batch-1 latency.

    python bench/bench_buckets.py                                 # the three runs below
    python bench/bench_buckets.py --runs=sst2 --max_steps=200      # one, shorter

For each run (`demo`: configs/demo.py; `sst2`, `mrpc`: configs/ablation.py:TASK,romebert)
it trains twice from the same seed, `--config.data.buckets=none` and `=auto`,
alternating which goes first, and records: the whole `train.py` wall time (start-up,
compilation, training, the dev evaluations, the export), steps/s over the training
steps (from the step timestamps of the log), the share of padded token positions per
epoch (the trainer's start-up line), the first steps' compile time, and the final exit's
dev metric at the last evaluation. Then, on the `demo` model, `eval.py` times the
full-depth model on SST-2 dev with `--buckets=none` and `--buckets=auto` (batch 1:
`--batch1_examples` sentences; batched: the whole dev set at batch 64).

`--eval_workdir=RUN` skips training and times `eval.py` on that run only (pairs
none/auto alternating, `--eval_repeats` of each, best of them kept), at
`--eval_max_length` (default: the run's own), full depth and at entropy 0.3 (the
batch-1 `while_loop` executor):

    python bench/bench_buckets.py --eval_workdir=runs/demo --eval_max_length=128 \
        --out=bench/results/buckets_eval128_cpu.json

`--max_steps` shortens every run (`--config.train.max_steps`; the schedule is
shortened with it, so the accuracy is that of a shorter run than the config's).
Prints a table of figures and ratios and writes JSON to bench/results/ (`--out`).
Timing on a shared machine is noisy: compare the ratios of one run, and say which CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RUNS = {
    "demo": "configs/demo.py",
    "sst2": "configs/ablation.py:sst2,romebert",
    "mrpc": "configs/ablation.py:mrpc,romebert",
}

_PADDED = re.compile(
    r"padded token positions per training epoch: ([\d.]+)% with length buckets "
    r"\S+, ([\d.]+)% with every batch"
)
_COMPILE = re.compile(r"compiled the train step for length (\d+) in ([\d.]+) s")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train(config: str, workdir: Path, buckets: str, max_steps: int, extra: list[str]) -> dict:
    args = [
        sys.executable,
        str(REPO / "train.py"),
        f"--config={REPO / config}",
        f"--workdir={workdir}",
        f"--config.data.buckets={buckets}",
        "--config.train.checkpoint_every=0",
        *extra,
    ]
    if max_steps:
        args.append(f"--config.train.max_steps={max_steps}")
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    log = proc.stderr + proc.stdout
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r.get("split") == "train"]
    dev = [r for r in records if r.get("split") not in (None, "train")]
    steps = max(r["step"] for r in train_records)
    last = dev[-1]
    final = max(int(k.split("/")[0].split("_")[1]) for k in last if k.startswith("exit_"))
    metric = next(k.split("/")[1] for k in last if k.startswith(f"exit_{final}/") and not k.endswith("/loss"))
    padded = _PADDED.search(log)
    compiles = [(int(n), float(s)) for n, s in _COMPILE.findall(log)]
    tb = _steps_per_second(workdir)
    return {
        "buckets": buckets,
        "wall_s": wall,
        "steps": steps,
        "steps_per_s": tb,
        "padded_share_run": float(padded.group(1)) / 100 if padded else None,
        "padded_share_none": float(padded.group(2)) / 100 if padded else None,
        "compiles": compiles,
        "compile_s": sum(s for _, s in compiles),
        "dev_metric": metric,
        "dev_final_exit": last[f"exit_{final}/{metric}"],
        "dev_step": last["step"],
    }


def _steps_per_second(workdir: Path) -> float | None:
    """The median of the TensorBoard scalar perf/steps_per_sec (the rate between log
    steps: compilation and evaluations fall outside most windows)."""
    import struct

    from tensorboardX.proto import event_pb2

    values = []
    for path in sorted((workdir / "tensorboard").rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.tag == "perf/steps_per_sec":
                    values.append(value.simple_value)
    values.sort()
    return values[len(values) // 2] if values else None


def evaluate(workdir: Path, buckets: str, batch1: int, max_length: int = 0) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench_buckets_eval_{buckets}."))
    args = [
        sys.executable,
        str(REPO / "eval.py"),
        f"--workdir={workdir}",
        f"--buckets={buckets}",
        "--sweeps=entropy:0.3",
        f"--batch1_examples={batch1}",
        "--batched_examples=0",
        f"--output_dir={out}",
    ] + ([f"--max_length={max_length}"] if max_length else [])
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"eval.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    full = results["full_depth"]
    entropy = results["sweep"][0]
    return {
        "buckets": buckets,
        "max_length": results["max_length"],
        "batch1_latency_s": full["wall_s_batch1"],
        "batched_examples_per_s": 1.0 / full["wall_s_batched"],
        "padded_share": results.get("padded_share"),
        "accuracy_final_exit": results["per_exit"][-1]["accuracy"],
        "entropy_0.3_batch1_latency_s": entropy["wall_s_batch1"],
        "entropy_0.3_mean_layers": entropy["mean_layers"],
        "accuracy_entropy_0.3": entropy["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="demo,sst2,mrpc")
    parser.add_argument("--max_steps", type=int, default=0, help="0: each config's own schedule")
    parser.add_argument("--batch1_examples", type=int, default=128)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "buckets_cpu.json"))
    parser.add_argument("--keep", default="", help="keep the workdirs under this directory")
    parser.add_argument("--eval_workdir", default="", help="only time eval.py on this train.py run")
    parser.add_argument("--eval_max_length", type=int, default=0, help="0: the run's own")
    parser.add_argument("--eval_repeats", type=int, default=2, help="none/auto pairs with --eval_workdir")
    args = parser.parse_args()

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_buckets."))
    report = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "max_steps": args.max_steps,
        "runs": {},
        "eval": [],
    }
    if args.eval_workdir:
        args.runs = ""
        for k in range(args.eval_repeats):
            for buckets in ("none", "auto") if k % 2 == 0 else ("auto", "none"):
                print(f"{args.eval_workdir}: eval.py --buckets={buckets}", flush=True)
                report["eval"].append(
                    evaluate(Path(args.eval_workdir), buckets, args.batch1_examples, args.eval_max_length)
                )
    try:
        for k, name in enumerate(filter(None, args.runs.split(","))):
            order = ("none", "auto") if k % 2 == 0 else ("auto", "none")
            pair = {}
            for buckets in order:
                workdir = root / f"{name}-{buckets}"
                shutil.rmtree(workdir, ignore_errors=True)
                print(f"{name}: training with data.buckets={buckets}", flush=True)
                pair[buckets] = train(RUNS[name], workdir, buckets, args.max_steps, [])
                print(f"  {json.dumps(pair[buckets])}", flush=True)
            pair["ratio_wall"] = pair["none"]["wall_s"] / pair["auto"]["wall_s"]
            if pair["none"]["steps_per_s"] and pair["auto"]["steps_per_s"]:
                pair["ratio_steps_per_s"] = pair["auto"]["steps_per_s"] / pair["none"]["steps_per_s"]
            report["runs"][name] = pair
            if name == "demo":
                for buckets in ("none", "auto", "none", "auto"):
                    print(f"demo model: eval.py --buckets={buckets}", flush=True)
                    report["eval"].append(evaluate(root / "demo-auto", buckets, args.batch1_examples))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n{report['cpu']} ({report['cores']} cores), {report['date']}")
    print(f"{'run':6} {'buckets':7} {'wall s':>8} {'steps/s':>8} {'padded':>7} {'compile s':>9} {'dev':>7}")
    for name, pair in report["runs"].items():
        for buckets in ("none", "auto"):
            r = pair[buckets]
            sps = f"{r['steps_per_s']:.2f}" if r["steps_per_s"] else "-"
            padded = r["padded_share_run"]
            print(
                f"{name:6} {buckets:7} {r['wall_s']:8.1f} {sps:>8} "
                f"{'-' if padded is None else f'{padded:.1%}':>7} {r['compile_s']:9.1f} "
                f"{r['dev_final_exit']:7.4f}"
            )
        extra = f", steps/s x{pair['ratio_steps_per_s']:.2f}" if "ratio_steps_per_s" in pair else ""
        print(f"{name:6} auto against none: whole run x{pair['ratio_wall']:.2f}{extra}")
    if report["eval"]:
        best = {}
        for r in report["eval"]:
            b = best.setdefault(r["buckets"], dict(r))
            b["batch1_latency_s"] = min(b["batch1_latency_s"], r["batch1_latency_s"])
            b["batched_examples_per_s"] = max(b["batched_examples_per_s"], r["batched_examples_per_s"])
            key = "entropy_0.3_batch1_latency_s"
            b[key] = min(b[key], r[key])
        report["eval_best"] = best
        for buckets, r in best.items():
            print(
                f"eval {buckets:5} (length {r['max_length']}): batch-1 latency "
                f"{1000 * r['batch1_latency_s']:.2f} ms (entropy 0.3: "
                f"{1000 * r['entropy_0.3_batch1_latency_s']:.2f} ms), batched "
                f"{r['batched_examples_per_s']:.0f} examples/s, padded {r['padded_share']:.1%}, "
                f"final-exit accuracy {r['accuracy_final_exit']:.4f}"
            )
        if {"none", "auto"} <= set(best):
            report["eval_ratio_batch1_latency"] = best["none"]["batch1_latency_s"] / best["auto"]["batch1_latency_s"]
            report["eval_ratio_batched"] = (
                best["auto"]["batched_examples_per_s"] / best["none"]["batched_examples_per_s"]
            )
            key = "entropy_0.3_batch1_latency_s"
            report["eval_ratio_batch1_latency_entropy_0.3"] = best["none"][key] / best["auto"][key]
            print(
                f"eval auto against none: batch-1 latency /{report['eval_ratio_batch1_latency']:.2f} "
                f"(entropy 0.3 early exit /{report['eval_ratio_batch1_latency_entropy_0.3']:.2f}), "
                f"batched throughput x{report['eval_ratio_batched']:.2f}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
