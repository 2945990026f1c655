"""Exit criteria side by side on the same trained checkpoints: entropy, max_prob,
patience, fixed, lte, saturation and meta (classification); lte, saturation, patience
and fixed (regression).

    # a regression task built from CoNLL-2003's annotations: entity mentions per sentence
    python bench/criteria_study.py data --out=/tmp/conll_counts
    # every run evaluated with its gates fitted on its held-out training rows, then compared
    python bench/criteria_study.py compare runs/criteria/sst2-romebert-s42 ... \\
        --out=bench/results/criteria_cpu.json --plot=docs/img/criteria_tradeoff.png

`compare` runs `eval.py --workdir=RUN --checkpoint=latest --fit_gates --no_timing`
for a run without RUN/eval/exit_logits.npz holding signals, then reads every exit's
outputs and signals on the dev rows. Those rows are split in two halves (seeded):
thresholds are chosen on one half and every figure is read on the other. For each
criterion, a 64-threshold grid from the choosing half's values; at a budget of x mean
layers, the threshold with the best metric on the choosing half among those that run
at most x layers there; its metric and mean layers read on the other half:
- `auc`: the mean of that held-out metric over budgets from L/2 to L layers (the area
  under the metric-versus-mean-layers curve over the 2x range, divided by its width);
- `at`: the held-out metric and mean layers at 1.5x, 2x and 3x fewer layers (None where
  no threshold runs that few layers on the choosing half).
With `--splits N` the AUC is also read over N random halvings (seeds seed..seed+N-1),
printed as mean +- standard deviation: how much of a difference the rows alone make.
Prints a table per run, writes the JSON and a plot of the held-out curves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLASSIFICATION = ("entropy", "max_prob", "patience", "fixed", "lte", "saturation", "meta")
REGRESSION = ("lte", "saturation", "patience", "fixed")
SPEEDUPS = (1.5, 2.0, 3.0)
BASELINE = {"classification": "entropy", "regression": "patience"}
"""The criterion every other is compared with, paired over the same halvings."""
COLORS = {
    "entropy": "tab:blue",
    "max_prob": "tab:orange",
    "patience": "tab:green",
    "fixed": "tab:red",
    "lte": "tab:purple",
    "saturation": "tab:brown",
    "meta": "tab:pink",
}
GRID = 64
BUDGETS = 41


def make_data(out: str, conll_dir: str) -> None:
    """train.jsonl / dev.jsonl: {"text": the sentence, "entities": its number of entity
    mentions (B- tags)} from CoNLL-2003's IOB2 annotations."""
    from rome_jax.data.tagging import read_conll

    os.makedirs(out, exist_ok=True)
    for split in ("train", "dev"):
        sentences = read_conll(os.path.join(conll_dir, f"{split}.txt"))
        path = os.path.join(out, f"{split}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for words, tags in zip(sentences.words, sentences.tags or []):
                count = sum(t.startswith("B-") for t in tags)
                f.write(json.dumps({"text": " ".join(words), "entities": float(count)}) + "\n")
        print(f"wrote {path} ({len(sentences.words)} sentences)")


def _outputs(run: str) -> tuple[dict, np.ndarray, object, np.ndarray]:
    """(results.json, logits [E, N, C], signals, labels [N]) of a run's dev split."""
    from rome_jax.exits import evaluation

    eval_dir = os.path.join(run, "eval")
    path = os.path.join(eval_dir, evaluation.EXIT_LOGITS_FILE)
    results_path = os.path.join(eval_dir, "results.json")
    needs = not os.path.isfile(results_path) or not os.path.isfile(path)
    if not needs:
        split = json.loads(Path(results_path).read_text())["split"]
        needs = evaluation.load_exit_signals(path, split) is None
    if needs:
        command = [sys.executable, str(REPO / "eval.py"), f"--workdir={run}", "--checkpoint=latest", "--fit_gates"]
        command.append("--no_timing")
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=REPO)
    results = json.loads(Path(results_path).read_text())
    split = results["split"]
    logits, labels, _ = evaluation.load_exit_logits(path, split)
    signals = evaluation.load_exit_signals(path, split)
    if labels is None:
        raise SystemExit(f"{path}: the dev split has no labels")
    return results, logits, signals, labels


def _pick(layers: np.ndarray, scores: np.ndarray, budget: float) -> int | None:
    """The threshold (its index) with the best choosing-half metric among those running at
    most `budget` mean layers there; None when none does."""
    ok = np.flatnonzero(layers <= budget + 1e-9)
    return None if not len(ok) else int(ok[np.argmax(scores[ok])])


def compare_run(run: str, seed: int = 0, splits: int = 1) -> dict:
    """The comparison on one run's dev outputs, halves drawn with `seed`; with `splits`
    > 1 also every criterion's `auc_splits`: its AUC over `splits` draws (seed, seed+1, ...)."""
    out = _compare(run, seed)
    if splits > 1:
        others = [_compare(run, seed + k) for k in range(1, splits)]
        for name, c in out["criteria"].items():
            c["auc_splits"] = [c["auc"], *(o["criteria"][name]["auc"] for o in others)]
        base = BASELINE["regression" if out["regression"] else "classification"]
        for c in out["criteria"].values():  # paired: the same halves for both criteria
            pairs = [(a, b) for a, b in zip(c["auc_splits"], out["criteria"][base]["auc_splits"]) if None not in (a, b)]
            c[f"auc_minus_{base}"] = [a - b for a, b in pairs]
    return out


def _compare(run: str, seed: int) -> dict:
    from rome_jax.data.metrics import compute_metrics
    from rome_jax.exits import calibration, guarantee
    from rome_jax.exits.criteria import simulate_sweep
    from rome_jax.exits.evaluation import signal_rows

    results, logits, signals, labels = _outputs(run)
    metric, regression = results["metric"], bool(results.get("regression"))
    E, n = logits.shape[:2]
    choose, read = calibration.split_rows(n, 0.5, seed)
    names = REGRESSION if regression else CLASSIFICATION
    fitted = [name for name in ("lte", "meta") if np.any(np.asarray(getattr(signals, name)) != 0)]
    names = tuple(name for name in names if name not in ("lte", "meta") or name in fitted)
    budgets = np.linspace(E / 2, E, BUDGETS)
    out: dict = {
        "run": run,
        "task": results["task"],
        "metric": metric,
        "regression": regression,
        "num_layers": E,
        "rows": {"dev": n, "choose": len(choose), "read": len(read), "seed": seed},
        "full_depth": compute_metrics(metric, logits[-1, read], labels[read])[metric],
        "criteria": {},
    }
    for name in names:
        grid = guarantee.threshold_grid(name, logits[:, choose], size=GRID, signals=signal_rows(signals, choose))
        exit_index, at_exit = simulate_sweep(name, grid, logits, regression=regression, signals=signals)
        exit_index, at_exit = np.asarray(exit_index), np.asarray(at_exit)
        layers = {part: (exit_index[:, rows] + 1).mean(axis=1) for part, rows in (("choose", choose), ("read", read))}
        scores = {
            part: np.array([compute_metrics(metric, at_exit[s, rows], labels[rows])[metric] for s in range(len(grid))])
            for part, rows in (("choose", choose), ("read", read))
        }

        curve = [_pick(layers["choose"], scores["choose"], b) for b in budgets]
        defined = [scores["read"][s] for s in curve if s is not None]
        at = {}
        for speedup in SPEEDUPS:
            s = _pick(layers["choose"], scores["choose"], E / speedup)
            at[f"{speedup:g}x"] = (
                None
                if s is None
                else {
                    "threshold": float(grid[s]),
                    metric: float(scores["read"][s]),
                    "mean_layers": float(layers["read"][s]),
                }
            )
        out["criteria"][name] = {
            "auc": float(np.mean(defined)) if len(defined) == len(curve) else None,
            "at": at,
            "curve": {
                "mean_layers": [float(x) for x in layers["read"]],
                metric: [float(x) for x in scores["read"]],
            },
        }
    return out


def table(result: dict) -> str:
    metric = result["metric"]
    base = BASELINE["regression" if result["regression"] else "classification"]
    paired = f"minus {base}"
    head = f"{'criterion':<11}{'auc(L/2..L)':>13}{paired:>17}" + "".join(f"{'@' + k:>16}" for k in ("1.5x", "2x", "3x"))
    lines = [
        f"{result['run']}: {result['task']}, {metric} x100, full depth {100 * result['full_depth']:.1f} "
        f"(read on {result['rows']['read']} dev rows; thresholds chosen on the other {result['rows']['choose']})",
        head,
    ]
    for name, c in result["criteria"].items():
        cells = []
        for k in ("1.5x", "2x", "3x"):
            v = c["at"][k]
            cells.append(f"{'-':>16}" if v is None else f"{100 * v[metric]:>9.1f} ({v['mean_layers']:.2f})")
        auc = "-" if c["auc"] is None else f"{100 * c['auc']:.1f}"
        draws = [a for a in c.get("auc_splits", []) if a is not None]
        if len(draws) > 1:
            auc = f"{100 * np.mean(draws):.1f}+-{100 * np.std(draws):.1f}"
        diffs = c.get(f"auc_minus_{base}") or []
        diff = f"{100 * np.mean(diffs):+.1f}+-{100 * np.std(diffs):.1f}" if len(diffs) > 1 else "-"
        lines.append(f"{name:<11}{auc:>13}{diff:>17}" + "".join(cells))
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(len(results), 4)
    rows = -(-len(results) // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    axes = [list(grid.ravel())]
    for ax in axes[0][len(results) :]:
        ax.set_visible(False)
    for ax, result in zip(axes[0], results):
        metric = result["metric"]
        for name, c in result["criteria"].items():
            order = np.argsort(c["curve"]["mean_layers"])
            x = np.asarray(c["curve"]["mean_layers"])[order]
            y = 100 * np.asarray(c["curve"][metric])[order]
            ax.plot(x, y, marker=".", markersize=3, linewidth=1, label=name, color=COLORS[name])
        ax.axhline(100 * result["full_depth"], color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(f"{result['task']} ({os.path.basename(result['run'].rstrip('/'))})", fontsize=9)
        ax.set_xlabel("mean layers (held-out half)")
        ax.set_ylabel(f"{metric} x100")
        ax.grid(alpha=0.3)
    for ax, result in zip(axes[0], results):  # a legend where the criteria change
        if ax is axes[0][0] or result["regression"] != results[0]["regression"]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="the CoNLL-2003 entity-count regression task")
    data.add_argument("--out", required=True)
    data.add_argument("--conll_dir", default=os.environ.get("CONLL_DIR", str(REPO.parent / "shared" / "conll2003")))
    compare = sub.add_parser("compare", help="compare the criteria on trained runs")
    compare.add_argument("runs", nargs="+")
    compare.add_argument("--out")
    compare.add_argument("--plot")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--splits", type=int, default=1, help="AUC over this many random halvings too")
    args = parser.parse_args()
    if args.command == "data":
        make_data(args.out, args.conll_dir)
        return
    results = [compare_run(run, args.seed, args.splits) for run in args.runs]
    for result in results:
        print(table(result) + "\n")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "results": results}, f, indent=1)
        print(f"wrote {args.out}")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
