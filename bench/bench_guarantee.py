"""Do calibrated thresholds keep their promise on rows they never saw?

    python bench/bench_guarantee.py sst2=RUN/eval/exit_logits.npz mrpc=... rte=...
        [--splits 200] [--fraction 0.5] [--eps 0.01,0.02,0.05] [--delta 0.1]
        [--out bench/results/guarantee_cpu.json]

Reads every exit's saved dev outputs (`eval.py --workdir=RUN` writes
RUN/eval/exit_logits.npz), then, for each of `--splits` seeded random halvings of the
dev rows: calibrates on one half and scores the chosen thresholds on the other.

- Learn-then-Test (`rome_jax.exits.guarantee.choose`) for each target (consistency:
  answers that differ from full depth; risk: the accuracy drop against full depth)
  and each eps, at `--delta`: the promise is broken on a split when the test half's
  disagreement (or accuracy drop) exceeds eps.
- The in-sample rule of earlier versions (`calibration.choose_thresholds`: the fewest
  layers within 0.5 point of full depth's accuracy, on the calibration half), whose
  promise is an accuracy drop of at most 0.5 point.

Prints, per task, target and eps: the share of splits that broke the promise (with its
binomial standard error: the guarantee says at most delta over calibration draws, and
the test half is itself a finite sample of new rows, so a share within about two
standard errors of delta agrees with it), and the mean layers on the test halves.
Needs no model: the outputs are replayed with `criteria.simulate_sweep`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from rome_jax.exits import calibration, guarantee  # noqa: E402

CRITERIA = ("entropy", "normalized_entropy", "max_prob", "patience")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("outputs", nargs="+", help="TASK=PATH of an exit_logits.npz")
    p.add_argument("--split", default="dev", help="the split inside the npz files")
    p.add_argument("--splits", type=int, default=200)
    p.add_argument("--fraction", type=float, default=0.5, help="share of rows that calibrate")
    p.add_argument("--eps", default="0.01,0.02,0.05")
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--points", type=float, default=0.5, help="the in-sample rule's tolerance (percentage points)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results", "guarantee_cpu.json"))
    return p.parse_args(argv)


def load(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data[f"{split}/logits"].astype(np.float32), data[f"{split}/labels"]


def _at(result: guarantee.Sweep, threshold: float | None, num_exits: int, full: np.ndarray) -> tuple:
    """(answers [N], mean layers) of one threshold of a sweep; None: full depth."""
    if threshold is None:
        return full, float(num_exits)
    j = result.thresholds.index(threshold)
    return result.answers[j], float(result.mean_layers[j])


def one_split(logits, labels, cal, test, eps_values, delta, points) -> dict:
    num_exits = logits.shape[0]
    cal_logits, test_logits = logits[:, cal], logits[:, test]
    cal_full, test_full = cal_logits[-1].argmax(-1), test_logits[-1].argmax(-1)
    sweeps_cal, sweeps_test = {}, {}
    for name in CRITERIA:
        grid = guarantee.threshold_grid(name, cal_logits)
        sweeps_cal[name] = guarantee.sweep(name, grid, cal_logits)
        sweeps_test[name] = guarantee.sweep(name, grid, test_logits)
    test_full_acc = float((test_full == labels[test]).mean())
    out: dict = {}
    for target in guarantee.TARGETS:
        for eps in eps_values:
            chosen = {
                name: guarantee.certify(
                    sweeps_cal[name],
                    cal_full,
                    labels[cal],
                    target=target,
                    eps=eps,
                    delta=delta / len(CRITERIA),
                    num_exits=num_exits,
                )
                for name in CRITERIA
            }
            default = guarantee.default_of(chosen)
            name = default["criterion"] if default else CRITERIA[0]
            answers, layers = _at(sweeps_test[name], default and default["threshold"], num_exits, test_full)
            if target == "consistency":
                broken = float((answers != test_full).mean()) > eps
            else:
                broken = test_full_acc - float((answers == labels[test]).mean()) > eps
            out[f"{target}/{eps:g}"] = (broken, layers)
    # the in-sample rule, chosen on the calibration half from its sweep rows
    cal_full_acc = float((cal_full == labels[cal]).mean())
    rows = []
    for name in CRITERIA:
        result = sweeps_cal[name]
        for j, threshold in enumerate(result.thresholds):
            accuracy = float((result.answers[j] == labels[cal]).mean())
            rows.append(
                {"criterion": name, "threshold": threshold, "accuracy": accuracy, "mean_layers": result.mean_layers[j]}
            )
    old = calibration.choose_thresholds(rows, cal_full_acc, metric="accuracy", points=points, num_layers=num_exits)
    default = old["default"]
    name = default["criterion"] if default else CRITERIA[0]
    answers, layers = _at(sweeps_test[name], default and default["threshold"], num_exits, test_full)
    drop = test_full_acc - float((answers == labels[test]).mean())
    out[f"in_sample/{points:g}pt"] = (drop > points / 100 + 1e-12, layers)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    eps_values = [float(e) for e in args.eps.split(",")]
    report = {
        "command": "python bench/bench_guarantee.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "splits": args.splits,
        "fraction": args.fraction,
        "delta": args.delta,
        "tasks": {},
    }
    for spec in args.outputs:
        task, _, path = spec.partition("=")
        logits, labels = load(path, args.split)
        n = logits.shape[1]
        n_cal = int(round(n * args.fraction))
        rng = np.random.default_rng(args.seed)
        start = time.time()
        tallies: dict[str, list] = {}
        for _ in range(args.splits):
            order = rng.permutation(n)
            result = one_split(logits, labels, order[:n_cal], order[n_cal:], eps_values, args.delta, args.points)
            for key, value in result.items():
                tallies.setdefault(key, []).append(value)
        rows = {}
        print(
            f"\n{task}: {n} dev rows, {n_cal} calibrate / {n - n_cal} test, "
            f"{args.splits} splits, {logits.shape[0]} exits"
        )
        print(f"  {'rule':28s} {'broken':>8s} {'+-se':>6s} {'layers':>7s}")
        for key, values in tallies.items():
            broken = np.mean([b for b, _ in values])
            se = math.sqrt(max(broken * (1 - broken), 1e-12) / len(values))
            layers = float(np.mean([layer for _, layer in values]))
            rows[key] = {"broken_share": float(broken), "stderr": se, "mean_layers_test": layers}
            print(f"  {key:28s} {broken:8.3f} {se:6.3f} {layers:7.2f}")
        print(f"  ({time.time() - start:.0f} s)")
        report["tasks"][task] = {
            "num_rows": n,
            "num_calibration": n_cal,
            "num_exits": int(logits.shape[0]),
            "rows": rows,
        }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
