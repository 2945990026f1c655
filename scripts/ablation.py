"""The gradient-regularizer ablation: modes x tasks x seeds, evaluated, summarised.

    python scripts/ablation.py --workdir=runs/ablation                       # the CPU grid
    python scripts/ablation.py --workdir=runs/ablation --tasks=sst2 --modes=deebert,romebert --seeds=42,43

Each run is `train.py --config=CONFIG:TASK,MODE` in WORKDIR/TASK/MODE/seedS (resumed
if interrupted) followed by `eval.py` (every exit, the entropy sweep); a run whose
eval/results.json exists is reused, not redone. Then --report (default
docs/results.md) gets, per task: every exit's dev metric per mode (mean and spread
over seeds), the metric against layer speed-up for the entropy criterion
(docs/results_<task>.png) and training time relative to `joint`.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from absl import flags  # noqa: E402

from rome_jax import cli  # noqa: E402
from rome_jax.errors import ConfigError, RomeError  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs go.")
_CONFIG = flags.DEFINE_string("config", "configs/ablation.py", "Per-run config file (takes TASK,MODE).")
_TASKS = flags.DEFINE_list("tasks", "sst2,mrpc", "GLUE tasks.")
_MODES = flags.DEFINE_list("modes", "deebert,deebert_sd,joint,sd,gr,romebert", "Training modes.")
_SEEDS = flags.DEFINE_list("seeds", "42,43", "Seeds (train.seed).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "A config override KEY=VALUE for every run.")
_REPORT = flags.DEFINE_string("report", "docs/results.md", "The Markdown report to write.")
_GRID_NOTE = flags.DEFINE_string("grid_note", "", "What grid the report's numbers come from (a sentence).")

ENTROPY = "entropy:0,0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.65"


def run_one(task: str, mode: str, seed: str, root: Path) -> dict:
    """Trains and evaluates one run (reusing what is done); returns its record."""
    workdir = root / task / mode / f"seed{seed}"
    record_path = workdir / "ablation.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    overrides = [f"--config.train.seed={seed}", *[f"--config.{o}" for o in _OVERRIDE.value]]
    start = time.time()
    train = [sys.executable, str(REPO / "train.py"), f"--config={_CONFIG.value}:{task},{mode}",
             f"--workdir={workdir}", *overrides]
    if subprocess.run(train, cwd=REPO).returncode != 0:
        raise RomeError(f"{workdir}: train.py failed; re-run to resume")
    train_seconds = time.time() - start
    evaluate = [sys.executable, str(REPO / "eval.py"), f"--workdir={workdir}", f"--sweeps={ENTROPY}",
                "--no_timing"]
    if subprocess.run(evaluate, cwd=REPO, stdout=subprocess.DEVNULL).returncode != 0:
        raise RomeError(f"{workdir}: eval.py failed")
    results = json.loads((workdir / "eval" / "results.json").read_text())
    steps = max(json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines())
    record = {"task": task, "mode": mode, "seed": seed, "train_seconds": train_seconds,
              "steps": steps, "results": results}
    record_path.write_text(json.dumps(record, indent=2))
    return record


def report(records: list[dict], out: Path, grid_note: str) -> str:
    import numpy as np
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Results: the gradient-regularizer ablation", "",
             grid_note or "Grid: see the command below.", "",
             "Regenerate: `python scripts/ablation.py --workdir=runs/ablation` (finished runs are reused).", ""]
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        metric = rows[0]["results"]["metric"]
        modes = list(dict.fromkeys(r["mode"] for r in rows))
        exits = len(rows[0]["results"]["per_exit"])
        lines += [f"## {task} (dev {metric}, x100; mean ± spread over seeds)", "",
                  "| mode | seeds | " + " | ".join(f"exit {i}" for i in range(1, exits + 1))
                  + " | train time / joint |", "|---" * (exits + 3) + "|"]
        joint = [r["train_seconds"] / r["steps"] for r in rows if r["mode"] == "joint"]
        fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
        for mode in modes:
            runs = [r for r in rows if r["mode"] == mode]
            values = np.array([[e[metric] for e in r["results"]["per_exit"]] for r in runs]) * 100
            cells = [f"{m:.1f} ± {s:.1f}" if len(runs) > 1 else f"{m:.1f}"
                     for m, s in zip(values.mean(0), values.std(0))]
            per_step = np.mean([r["train_seconds"] / r["steps"] for r in runs])
            ratio = f"{per_step / np.mean(joint):.2f}" if joint else "n/a"
            lines.append(f"| {mode} | {len(runs)} | " + " | ".join(cells) + f" | {ratio} |")
            xs = np.mean([[p["layer_speedup"] for p in r["results"]["sweep"] if p["criterion"] == "entropy"]
                          for r in runs], axis=0)
            ys = np.mean([[p[metric] for p in r["results"]["sweep"] if p["criterion"] == "entropy"]
                          for r in runs], axis=0) * 100
            order = np.argsort(xs)
            ax.plot(xs[order], ys[order], marker="o", label=mode)
        ax.set(xlabel="speed-up in layers (entropy exit)", ylabel=f"dev {metric} (x100)",
               title=f"{task}: metric against speed-up")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png = out.parent / f"results_{task}.png"
        fig.savefig(png)
        plt.close(fig)
        lines += ["", f"![{task}]({png.name})", "",
                  "Training time is wall seconds per step relative to `joint` on the same machine "
                  "(two-stage modes count both stages' steps).", ""]
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
        raise ConfigError("--workdir is required")
    root = Path(_WORKDIR.value)
    records = [run_one(task, mode, seed, root)
               for task in _TASKS.value for mode in _MODES.value for seed in _SEEDS.value]
    print(report(records, Path(_REPORT.value), _GRID_NOTE.value))
    return 0


if __name__ == "__main__":
    cli.run_main(main)
