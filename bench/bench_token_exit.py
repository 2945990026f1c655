r"""Token-level early exit on a clock: finished sentences leaving the batch, or not.

    python bench/bench_token_exit.py runs/conll/romebert-s42/model --conll-dir ../shared/conll2003

On a tagger's exported model and the CoNLL-2003 dev sentences that its calibration
did not read (the model's `rome_jax_calibration.json` records them; none are left
out without one), with its certified default rule (or `--criterion`, `--window`):
the seconds spent in the token-level executor over every sentence (a) dense, each
batch running until its last word exits (`token_early_exit`), (b) compacted,
finished sentences leaving (`compacted_token_exit`), and (c) at full depth; medians
of `--repeats` timed passes after one untimed pass each; both early-exit executors
must give the same exit for every token (checked). Prints a JSON record (`--out`
writes it) with the FLOPs ratio beside the clock's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_train_step import cpu_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--conll-dir", default=os.environ.get("CONLL_DIR", "../shared/conll2003"))
    parser.add_argument("--criterion", default=None, help="e.g. max_prob:0.99 (default: the certified one)")
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="at most this many sentences (0: all)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from rome_jax.data.buckets import length_buckets
    from rome_jax.data.tagging import align, read_conll
    from rome_jax.exits import tag_sweeps, token_flops
    from rome_jax.exits.criteria import Criterion
    from rome_jax.serving.api import load_pretrained

    model = load_pretrained(args.model_dir)
    calibration = model.calibration or {}
    default = calibration.get("default") or {}
    if args.criterion:
        name, _, value = args.criterion.partition(":")
        criterion = Criterion(name, float(value))
    elif default:
        criterion = Criterion(default["criterion"], float(default["threshold"]))
    else:
        raise SystemExit(f"{args.model_dir}: no calibrated default; give --criterion")
    window = args.window if args.window is not None else int(str(default.get("rule", "token:k=0")).split("=")[-1])

    sentences = read_conll(Path(args.conll_dir) / "dev.txt")
    features = align(sentences, model.tokenizer, list(model.label_names), args.max_length)
    seen = set((calibration.get("rows") or {}).get("row_ids") or [])
    rows = np.array([i for i in range(len(features)) if i not in seen])
    if args.limit:
        rows = rows[: args.limit]
    features = features.subset(rows)
    buckets = length_buckets(args.max_length, "auto")
    config, params = model.config, model.params

    def run(chosen: Criterion, compact: bool) -> tuple[np.ndarray, float]:
        kwargs = dict(window=window, batch_size=args.batch_size, buckets=buckets, compact=compact)
        exits, _, _ = tag_sweeps.token_level(config, params, features, chosen, **kwargs)  # untimed
        # the seconds inside the executor (eval.py's timing), not the batching around it
        times = [tag_sweeps.token_level(config, params, features, chosen, **kwargs)[2] for _ in range(args.repeats)]
        return exits, float(np.median(times))

    full = Criterion("fixed", float(config.num_layers))
    _, full_s = run(full, compact=False)
    dense_exits, dense_s = run(criterion, compact=False)
    compact_exits, compact_s = run(criterion, compact=True)
    same = bool(np.array_equal(dense_exits, compact_exits))
    if not same:
        raise SystemExit("the compacted executor exited other tokens than the dense one")
    mask = np.asarray(features.features.attention_mask)
    flops = token_flops.token_exit_flops(config, compact_exits, mask).sum()
    full_flops = token_flops.token_exit_flops(config, np.full_like(compact_exits, config.num_layers - 1), mask).sum()
    record = {
        "model_dir": args.model_dir,
        "criterion": f"{criterion.name}:{criterion.threshold:g}",
        "window": window,
        "sentences": len(features),
        "left_out_calibration_rows": len(seen),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "seconds": {"full_depth": full_s, "dense": dense_s, "compacted": compact_s},
        "speedup_over_full_depth": {"dense": full_s / dense_s, "compacted": full_s / compact_s},
        "flops_speedup": float(full_flops / flops),
        "same_exits": same,
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["bench/bench_token_exit.py", *sys.argv[1:]]),
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
