r"""The tagging study's tables and plot from its runs (docs/tagging.md#the-study).

    # the runs (each: train.py, then eval.py on the headline runs)
    python train.py --config=configs/conll2003.py:romebert --workdir=runs/conll/romebert-s42
    python train.py --config=configs/conll2003.py:deebert --workdir=runs/conll/deebert-s43 --config.train.seed=43
    python eval.py --workdir=runs/conll/romebert-s42
    # the tables (Markdown on stdout) and the plot
    python bench/tagging_study.py runs/conll --plot docs/img/conll_tradeoff.png

Reads each run's last dev evaluation in metrics.jsonl (every exit's entity F1 on all
3,250 dev sentences: no threshold is chosen there) and, where eval.py ran, its
results.json (the sweeps and the calibrated rule, read on the dev sentences that did
not calibrate). Run directories are named MODE-sSEED.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def last_dev(workdir: Path) -> dict:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in records if r.get("split") == "dev"]
    if not dev:
        raise SystemExit(f"{workdir}/metrics.jsonl: no dev evaluation")
    return dev[-1]


def per_exit_table(runs: dict[str, dict[int, dict]]) -> list[str]:
    exits = sorted(
        {int(k.split("/")[0][5:]) for rec in next(iter(runs.values())).values() for k in rec if k.startswith("exit_")}
    )
    lines = [
        "| mode | seed | " + " | ".join(f"exit {i}" for i in exits) + " |",
        "|---|---|" + "---|" * len(exits),
    ]
    for mode in sorted(runs):
        for seed, rec in sorted(runs[mode].items()):
            cells = [f"{100 * rec[f'exit_{i}/entity_f1']:.2f}" for i in exits]
            lines.append(f"| {mode} | {seed} | " + " | ".join(cells) + " |")
    return lines


def sweep_table(results: dict, full: float) -> list[str]:
    """For each rule and criterion: the point with the fewest FLOPs within 1 F1 point of
    full depth on the scored sentences (an in-sample choice on those rows, labelled so),
    and the calibrated rule's figures (chosen on the other sentences)."""
    lines = [
        "| rule | criterion | threshold | entity F1 | F1 - full | mean layers | FLOPs / full |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["level"], r.get("window"), r["criterion"]) for r in results["sweep"]}, key=str)
    for level, window, criterion in keys:
        rows = [
            r
            for r in results["sweep"]
            if r["level"] == level and r.get("window") == window and r["criterion"] == criterion
        ]
        within = [r for r in rows if 100 * (full - r["entity_f1"]) <= 1.0]
        if not within:
            continue
        best = min(within, key=lambda r: r["flops_ratio"])
        rule = level + ("" if window is None else f" k={window}")
        lines.append(
            f"| {rule} | {criterion} | {best['threshold']:.4g} | {100 * best['entity_f1']:.2f} | "
            f"{100 * (best['entity_f1'] - full):+.2f} | {best['mean_layers']:.2f} | {best['flops_ratio']:.3f} |"
        )
    return lines


def calibrated_table(results: dict, full: float) -> list[str]:
    cal = results["calibration"]
    lines = [
        f"Learn-then-Test, consistency per word, eps {cal['eps']:g}, delta {cal['delta']:g}, chosen on "
        f"{cal['rows']['num_rows']} dev sentences, read on the other {len(results['scored_rows']['row_ids'])}:",
        "",
        "| rule | criterion | threshold | entity F1 | F1 - full | words changed | mean layers | FLOPs / full |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["calibrated"]:
        lines.append(
            f"| {row['rule']} | {row['criterion']} | {row['threshold']:.4g} | {100 * row['entity_f1']:.2f} | "
            f"{100 * (row['entity_f1'] - full):+.2f} | {100 * row['changed_words']:.2f}% | "
            f"{row['mean_layers']:.2f} | {row['flops_ratio']:.3f} |"
        )
    timing = results.get("timing", {})
    seconds = timing.get("seconds") or {k: timing[k] for k in ("full depth", "calibrated") if k in timing}
    if len(seconds) > 1:
        shown = ", ".join(
            f"{k} {v:.1f} s" + ("" if k == "full depth" else f" (x{seconds['full depth'] / v:.2f})")
            for k, v in seconds.items()
        )
        lines += [
            "",
            f"Wall-clock of the compiled loop over those sentences (batch {timing['batch_size']}, best of 2, each "
            f"rule at its certified criterion with the fewest FLOPs): {shown}.",
        ]
    return lines


def plot(results_by_run: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results_by_run), figsize=(5.5 * len(results_by_run), 4.2), squeeze=False)
    for ax, (name, results) in zip(axes[0], sorted(results_by_run.items())):
        full = 100 * results["per_exit"][-1]["f1"]
        styles = {("sentence", None): "o-", ("token", 0): "s-", ("token", 1): "^-", ("token", 2): "v-"}
        for (level, window), style in styles.items():
            rows = [r for r in results["sweep"] if r["level"] == level and r.get("window") == window]
            rows = [r for r in rows if r["criterion"] == "entropy"]
            if rows:
                rows.sort(key=lambda r: r["flops_ratio"])
                label = "sentence-level" if level == "sentence" else f"token-level, window {window}"
                ax.plot(
                    [r["flops_ratio"] for r in rows], [100 * r["entity_f1"] for r in rows], style, ms=3, label=label
                )
        ax.axhline(full, color="grey", lw=0.8, ls="--", label="full depth")
        ax.axhline(full - 1, color="grey", lw=0.8, ls=":", label="full depth - 1 point")
        ax.axvline(0.5, color="grey", lw=0.6, ls="-.")
        ax.set_xlabel("FLOPs / full depth (entropy thresholds)")
        ax.set_ylabel("entity F1, held-out dev sentences")
        ax.set_ylim(max(0, full - 20), full + 2)
        ax.set_title(name)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the directory holding MODE-sSEED workdirs")
    parser.add_argument("--plot", help="where to write the F1 / FLOPs plot")
    parser.add_argument(
        "--json", help="where to write the figures (per-exit F1 of every run, the evaluated runs' sweeps)"
    )
    args = parser.parse_args()
    root = Path(args.root)
    runs: dict[str, dict[int, dict]] = {}
    evaluated: dict[str, dict] = {}
    for workdir in sorted(p for p in root.iterdir() if p.is_dir()):
        match = re.fullmatch(r"(.+)-s(\d+)", workdir.name)
        if not match or not (workdir / "model" / "config.json").exists():
            continue  # not finished
        mode, seed = match.group(1), int(match.group(2))
        runs.setdefault(mode, {})[seed] = last_dev(workdir)
        results = workdir / "eval" / "results.json"
        if results.exists():
            evaluated[workdir.name] = json.loads(results.read_text())
    print("Dev entity F1 (x100) by exit, all 3,250 dev sentences, the last step of each run:\n")
    print("\n".join(per_exit_table(runs)))
    for name, results in sorted(evaluated.items()):
        full = results["per_exit"][-1]["f1"]
        print(f"\n### {name}\n")
        print(f"Full depth on the scored sentences: entity F1 {100 * full:.2f}.\n")
        print(
            "Fewest FLOPs within 1 F1 point of full depth, per rule and criterion (chosen on the scored "
            "sentences themselves: in-sample, the sweep's best case):\n"
        )
        print("\n".join(sweep_table(results, full)))
        print()
        print("\n".join(calibrated_table(results, full)))
    if args.plot and evaluated:
        plot(evaluated, args.plot)
        print(f"\nwrote {args.plot}")
    if args.json:
        keep = ("per_exit", "sweep", "calibrated", "timing", "scored_rows")
        figures = {
            "per_exit_f1": {
                f"{mode}-s{seed}": [
                    rec[f"exit_{i}/entity_f1"] for i in range(1, 1 + sum(k.endswith("/entity_f1") for k in rec))
                ]
                for mode, by_seed in runs.items()
                for seed, rec in by_seed.items()
            },
            "evaluated": {
                name: {k: v for k, v in r.items() if k in keep} | {"calibration": _brief_calibration(r["calibration"])}
                for name, r in evaluated.items()
            },
        }
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
        print(f"wrote {args.json}")


def _brief_calibration(calibration: dict) -> dict:
    """The calibration without its row lists (results.json has them)."""
    rows = {k: v for k, v in calibration.get("rows", {}).items() if k != "row_ids"}
    return {k: v for k, v in calibration.items() if k not in ("rows", "model")} | {"rows": rows}


if __name__ == "__main__":
    main()
