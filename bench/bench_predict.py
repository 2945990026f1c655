"""Serving speed: `MultiExitModel.predict` (early exit) against a PyTorch transformers pipeline.

    python bench/bench_predict.py runs/sst2/model [--glue-dir ../shared/glue]
        [--criterion calibrated] [--batch-size 64] [--max-length 128] [--max-examples 0]
        [--repeats 3] [--out bench/results/predict_cpu.json]

On the SST-2 dev sentences (all 872 by default), on the same CPU, both sides alike:
one untimed pass over every sentence first (compilation, caches: what a server does
at start), then `--repeats` timed passes, the median reported (every pass recorded).

- rome_jax: `load_pretrained(MODEL_DIR).predict(sentences, criterion=...)` at batch 1
  and batched (`--batch-size`): length buckets, the per-example executor. The
  criterion is the model's calibrated one (`eval.py --calibrate`) unless given
  ("entropy:0.3", "none" for full depth). Every figure is read on dev rows the
  threshold never saw: the rows of the calibration's `rows.row_ids` are left out;
  `--calibrate-eps E` instead calibrates here (Learn-then-Test, consistency eps E,
  delta 0.1) on a seeded half of the dev rows and reads the other half; a calibration
  that records no rows (chosen in-sample) is refused.
- PyTorch: the same model exported with `save_pretrained` and loaded with
  `trust_remote_code=True` (`rome_jax_modeling.py`: the final exit pooled as trained,
  [CLS] or mean), in `transformers.pipeline("text-classification")` on the CPU,
  truncation at `--max-length`, at batch 1 and batched, full depth. Before timing, its
  final-exit logits on the first sentences are checked against rome_jax's (1e-3):
  a model whose exits PyTorch does not reproduce is refused, not compared.

Prints examples/s and accuracy of each (plus rome_jax's mean layers), and writes
them as JSON to `--out`. Not a timed test: figures move with the machine's load.
`--max-examples 16` runs in well under a minute on a small model (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_train_step import cpu_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", help="a fine-tuned model directory (e.g. WORKDIR/model)")
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", os.path.join(here, "..", "..", "shared", "glue")))
    p.add_argument(
        "--criterion",
        default="calibrated",
        help="calibrated (the model's; entropy 0.1 if it has none), or e.g. entropy:0.3, none",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-examples", type=int, default=0, help="the first N dev sentences; 0: all")
    p.add_argument("--skip-torch", action="store_true", help="rome_jax only")
    p.add_argument("--calibrate-eps", type=float, default=None, help="calibrate here on half of the rows (LTT)")
    p.add_argument("--calibration-seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed passes per setting (the median is reported)")
    p.add_argument("--out", default=os.path.join(here, "results", "predict_cpu.json"))
    return p.parse_args(argv)


def _accuracy(predicted, labels) -> float:
    return sum(int(p == y) for p, y in zip(predicted, labels)) / max(len(labels), 1)


def _timed(run, repeats: int) -> tuple[float, list[float], object]:
    """One untimed pass, then `repeats` timed ones: (median seconds, every pass, the last result)."""
    result = run()  # warm-up: compilation and caches, as a server at start
    seconds = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), seconds, result


def bench_rome_jax(model, sentences, labels, criterion, batch_size: int, max_length: int, repeats: int) -> dict:
    out = {}
    for name, size in (("batch1", 1), ("batched", batch_size)):
        run = lambda size=size: model.predict(sentences, criterion=criterion, batch_size=size, max_length=max_length)
        seconds, passes, result = _timed(run, repeats)
        out[name] = {
            "batch_size": size,
            "seconds": seconds,
            "passes": passes,
            "examples_per_s": len(sentences) / seconds,
            "accuracy": _accuracy(result.label_ids.tolist(), labels),
            "mean_layers": result.mean_layers,
        }
    return out


def load_torch(model_dir: str, jax_model, sentences, max_length: int):
    """The exported model in transformers, checked to be the same function as rome_jax's
    final exit on the first sentences; exits with a message when it is not."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch_model = AutoModelForSequenceClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    probe = sentences[:8]
    with torch.inference_mode():
        enc = tokenizer(probe, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        theirs = torch_model(**enc).logits.numpy()
    ours = np.asarray(jax_model.exit_logits(jax_model.tokenize(probe, max_length=max_length)))[-1]
    gap = float(np.abs(theirs - ours).max())
    if gap > 1e-3:
        sys.exit(
            f"bench_predict: transformers' {type(torch_model).__name__} does not reproduce the model's final "
            f"exit (max logit difference {gap:.3g}; exit_pooling {jax_model.config.exit_pooling}): not compared"
        )
    return tokenizer, torch_model, gap


def bench_torch(model_dir: str, jax_model, sentences, labels, batch_size: int, max_length: int, repeats: int) -> dict:
    import torch
    from transformers import pipeline

    tokenizer, torch_model, gap = load_torch(model_dir, jax_model, sentences, max_length)
    label2id = {str(k): int(v) for k, v in torch_model.config.label2id.items()}
    classify = pipeline("text-classification", model=torch_model, tokenizer=tokenizer, device=-1)
    out = {
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "model_class": type(torch_model).__name__,
        "final_exit_max_logit_difference": gap,
    }
    for name, size in (("batch1", 1), ("batched", batch_size)):

        def run(size=size):
            with torch.inference_mode():
                return classify(sentences, batch_size=size, truncation=True, max_length=max_length)

        seconds, passes, result = _timed(run, repeats)
        predicted = [label2id[r["label"]] for r in result]
        out[name] = {
            "batch_size": size,
            "seconds": seconds,
            "passes": passes,
            "examples_per_s": len(sentences) / seconds,
            "accuracy": _accuracy(predicted, labels),
        }
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    import rome_jax
    from rome_jax.data import read_glue_dir

    examples = read_glue_dir("sst2", "dev", args.glue_dir)
    if args.max_examples > 0:
        examples = examples.head(args.max_examples)
    sentences, labels = list(examples.text_a), [int(y) for y in examples.labels]
    model = rome_jax.load_pretrained(args.model_dir)
    criterion = args.criterion
    held_out = "every row (the criterion was not chosen on them)"
    if args.calibrate_eps is not None:
        from rome_jax.exits.calibration import split_rows

        cal, rest = split_rows(len(sentences), 0.5, args.calibration_seed)
        model.calibrate([sentences[i] for i in cal], eps=args.calibrate_eps, max_length=args.max_length)
        sentences, labels = [sentences[i] for i in rest], [labels[i] for i in rest]
        held_out = f"the {len(rest)} rows the calibration did not read (seed {args.calibration_seed})"
        criterion = "calibrated" if model.calibration["default"] else "none"
    elif criterion == "calibrated" and model.calibration is None:
        print("the model carries no calibration (eval.py --calibrate): entropy:0.1", file=sys.stderr)
        criterion = "entropy:0.1"
    elif criterion in ("calibrated", "auto") and model.calibration is not None:
        rows = model.calibration.get("rows") or {}
        if rows.get("source") == "split" and "row_ids" in rows:
            seen = set(rows["row_ids"])
            keep = [i for i, row in enumerate(examples.index) if int(row) not in seen]
            sentences, labels = [sentences[i] for i in keep], [labels[i] for i in keep]
            held_out = f"the {len(keep)} rows the calibration did not read"
        elif rows.get("source") != "file":
            sys.exit(
                "bench_predict: the model's calibration records no calibration rows (chosen in-sample); "
                "calibrate with eval.py --calibrate=ltt (a part of dev), or pass --calibrate-eps"
            )
    from rome_jax.serving.predict import describe, resolve_criterion

    chosen = resolve_criterion(criterion, model.config, model.calibration)
    results = {
        "model_dir": os.path.abspath(args.model_dir),
        "examples": len(sentences),
        "rows": held_out,
        "criterion": describe(chosen),
        "max_length": args.max_length,
        "num_layers": model.config.num_layers,
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model() or platform.machine(),
            "cpus": os.cpu_count(),
            "jax_version": jax.__version__,
            "backend": jax.devices()[0].platform,
        },
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "rome_jax": bench_rome_jax(model, sentences, labels, chosen, args.batch_size, args.max_length, args.repeats),
    }
    if not args.skip_torch:
        with tempfile.TemporaryDirectory() as exported:
            model.save_pretrained(exported)  # the same model, as transformers loads it
            results["torch_pipeline"] = bench_torch(
                exported, model, sentences, labels, args.batch_size, args.max_length, args.repeats
            )
    for name in ("rome_jax", "torch_pipeline"):
        for setting in ("batch1", "batched"):
            r = results.get(name, {}).get(setting)
            if r:
                layers = f", mean layers {r['mean_layers']:.2f}" if "mean_layers" in r else ""
                print(
                    f"{name:15} {setting:8} batch {r['batch_size']:>3}: {r['examples_per_s']:8.1f} examples/s, "
                    f"accuracy {100 * r['accuracy']:.1f}{layers}"
                )
    print(f"criterion {results['criterion']}, {len(sentences)} SST-2 dev sentences, max_length {args.max_length}")
    print(f"read on {held_out}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
