"""The gradient-regularizer ablation's runs, records and report (docs/results.md).

The program is `python scripts/ablation.py` (= `python -m rome_jax.commands.ablation`,
rome_jax/commands/ablation.py: its flags and what it does). This module holds the
work: `run_one` trains and evaluates one run of the grid (`python -m
rome_jax.commands.train` with `CONFIG:TASK,MODE`, then `python -m
rome_jax.commands.eval`) or reuses its record, and `report` writes the Markdown
report and its plots from the records. Runs with mean-pooled exits
(`exit_pooling="mean"`: `model.exit_pooling=mean`) live under TASK/MODE-mean/ and
get their own tables after each task's [CLS] tables.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np

from rome_jax import files, programs
from rome_jax.config import run_config
from rome_jax.encoder.config import EXIT_POOLINGS
from rome_jax.errors import ConfigError, RomeError

DEFAULT_CONFIG = "configs/ablation.py"
CODE_ROOT = Path(__file__).resolve().parents[2]
"""Where provenance() asks git for the commit: the directory holding the rome_jax
package (the source checkout, when it is one)."""

ENTROPY = "entropy:0,0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.65"


def run_name(mode: str, exit_pooling: str = "cls") -> str:
    """A run's directory under TASK/ (records and workdirs): MODE for the papers' [CLS]
    exits, MODE-mean for mean-pooled exits (`model.exit_pooling`)."""
    if exit_pooling not in EXIT_POOLINGS:
        raise ConfigError(f"exit pooling must be one of {', '.join(EXIT_POOLINGS)}, not {exit_pooling!r}")
    return mode if exit_pooling == "cls" else f"{mode}-{exit_pooling}"


def exit_pooling_of(record: dict) -> str:
    """The exit pooling a record's run trained with ("cls" for records made before the option)."""
    return record.get("exit_pooling", "cls")


def run_spec(
    task: str,
    mode: str,
    seed: str,
    config: str = DEFAULT_CONFIG,
    overrides: Sequence[str] = (),
    exit_pooling: str = "cls",
) -> dict:
    """What makes a run: its config file and argument, and every override (a pooling
    other than [CLS] is the last one, `model.exit_pooling=mean`)."""
    pooling = [] if exit_pooling == "cls" else [f"model.exit_pooling={exit_pooling}"]
    return {
        "config": run_config.task_mode_spec(config, task, mode),
        "overrides": [f"train.seed={seed}", *overrides, *pooling],
    }


def provenance() -> dict:
    """Where a run ran: the commit, the git tree of rome_jax/ and configs/ (equal trees
    train equal models whatever else the commit changed), versions and the machine.
    (Only jax's version is read: initialising a backend here would take a GPU's memory
    from the train.py that runs next.)"""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=CODE_ROOT, capture_output=True, text=True)
        except OSError:  # no git
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [l.split(":", 1)[1].strip() for l in cpuinfo.read_text().splitlines() if l.startswith("model name")]
        cpu = names[0] if names else cpu

    dirty = git("status", "--porcelain", "--", "rome_jax", "configs", "train.py", "eval.py")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "rome_jax_tree": git("rev-parse", "--short", "HEAD:rome_jax"),
        "configs_tree": git("rev-parse", "--short", "HEAD:configs"),
        "code_modified": bool(dirty) if dirty is not None else None,
        "jax": version("jax"),
        "python": platform.python_version(),
        "machine": f"{cpu}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
    }


def make_record(
    task: str,
    mode: str,
    seed: str,
    workdir: Path,
    train_seconds: float,
    partial: bool,
    where: dict,
    config: str = DEFAULT_CONFIG,
    overrides: Sequence[str] = (),
    exit_pooling: str = "cls",
) -> dict:
    """One finished run as a record: what it measured, what it was, where it ran.
    (`exit_pooling` is recorded when it is not "cls": records made before it existed
    pooled [CLS] and stay as they were.)"""
    results = json.loads((workdir / "eval" / "results.json").read_text())
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    pooling = {} if exit_pooling == "cls" else {"exit_pooling": exit_pooling}
    saved = workdir / "eval" / "exit_logits.npz"
    outputs = {"exit_outputs": exit_outputs_of(saved, results["split"])} if saved.is_file() else {}
    return {
        "task": task,
        "mode": mode,
        "seed": seed,
        **pooling,
        **run_spec(task, mode, seed, config, overrides, exit_pooling),
        "train_seconds": train_seconds,
        "train_seconds_partial": partial,
        "steps": max(r["step"] for r in rows),
        "gr": gr_stats(rows),
        "results": results,
        "resolved_config": json.loads((workdir / "config.json").read_text()),
        "provenance": where,
        **outputs,
    }


def exit_outputs_of(path: Path, split: str) -> dict:
    """Every exit's logits per dev row from eval.py's exit_logits.npz, as a record keeps
    them (5 significant digits): {"split", "labels" [N], "logits" [E][N][C]}. With them
    the report calibrates on part of the rows and reads the thresholds on the others."""
    with np.load(path) as saved:
        logits, labels = saved[f"{split}/logits"], saved[f"{split}/labels"]
    return {
        "split": split,
        "labels": labels.tolist(),
        "logits": [[[float(f"{v:.5g}") for v in row] for row in exit_rows] for exit_rows in logits],
    }


def run_one(
    task: str,
    mode: str,
    seed: str,
    root: Path,
    records: Path,
    reuse_only: bool = False,
    *,
    config: str = DEFAULT_CONFIG,
    overrides: Sequence[str] = (),
    exit_pooling: str = "cls",
) -> dict | None:
    """Trains and evaluates one run (reusing what is done); returns its record.

    The record is read from `records`/TASK/MODE/seedS.json when there, else made from
    the workdir's `ablation.json` (left by an earlier runner) or by training. With
    `reuse_only`, returns None for a run that is not finished. `config` (as the user
    gave it: the records keep it) is found by `run_config.find_config_file`.
    `exit_pooling="mean"` trains with `model.exit_pooling=mean`, under TASK/MODE-mean/
    (`run_name`) in both the records and the workdirs.
    """
    name = run_name(mode, exit_pooling)
    record_path = records / task / name / f"seed{seed}.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        spec = run_spec(task, mode, seed, config, overrides, exit_pooling)
        if {k: record.get(k) for k in spec} != spec:
            raise ConfigError(
                f"{record_path}: made by {record.get('config')} with overrides "
                f"{record.get('overrides')}, not {spec['config']} with {spec['overrides']}; "
                "use another --records directory"
            )
        return record
    workdir = root / task / name / f"seed{seed}"
    earlier = workdir / "ablation.json"
    if earlier.is_file():  # finished by a runner that kept its record in the workdir
        old = json.loads(earlier.read_text())
        record = make_record(
            task,
            mode,
            seed,
            workdir,
            old["train_seconds"],
            old["train_seconds_partial"],
            {**provenance(), "imported_from": str(earlier)},
            config,
            overrides,
            exit_pooling,
        )
    elif reuse_only:
        return None
    else:
        resumed = (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir())
        flags = [f"--config.{o}" for o in run_spec(task, mode, seed, config, overrides, exit_pooling)["overrides"]]
        config_spec = run_config.task_mode_spec(run_config.find_config_file(config), task, mode)
        where = provenance()
        start = time.time()
        train = [*programs.command("train"), f"--config={config_spec}", f"--workdir={workdir}", *flags]
        if subprocess.run(train, env=programs.child_env()).returncode != 0:
            raise RomeError(f"{workdir}: train.py failed; re-run to resume")
        train_seconds = time.time() - start
        evaluate = [*programs.command("eval"), f"--workdir={workdir}", f"--sweeps={ENTROPY}", "--no_timing"]
        if subprocess.run(evaluate, env=programs.child_env(), stdout=subprocess.DEVNULL).returncode != 0:
            raise RomeError(f"{workdir}: eval.py failed")
        record = make_record(task, mode, seed, workdir, train_seconds, resumed, where, config, overrides, exit_pooling)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(record_path, record)
    return record


def gr_stats(rows: list[dict]) -> dict | None:
    """How often GR projected, from a run's metrics.jsonl rows: None for a mode without GR.

    Each logged row holds the means over its logging window, so the mean of
    `gr/projected` over rows is the fraction of steps whose gradients conflicted.
    """
    rows = [r for r in rows if "gr/projected" in r]
    if not rows:
        return None
    mean = lambda key: sum(r[key] for r in rows) / len(rows)
    return {"projected_fraction": mean("gr/projected"), "cosine": mean("gr/cosine")}


def _cell(values: Sequence[float] | np.ndarray, digits: int = 1) -> str:
    """'mean ± std' over seeds (population std), or the one value."""
    array = np.asarray(values, dtype=float)
    mean, std = f"{array.mean():.{digits}f}", f"{array.std():.{digits}f}"
    return f"{mean} ± {std}" if len(array) > 1 else mean


def _per_exit(runs: list[dict], key: str) -> np.ndarray:
    """[seeds, exits] array of one metric x100 from the runs' eval results."""
    return np.array([[e[key] for e in r["results"]["per_exit"]] for r in runs]) * 100


HELD_OUT_EPS = (0.01, 0.02)
"""The report's Learn-then-Test tolerances (accuracy drop against full depth), delta 0.1."""
HELD_OUT_DELTA = 0.1


def _held_out_table(task: str, rows: list[dict], modes: list[str], metric: str) -> list[str]:
    """Markdown lines: per mode, the entropy threshold Learn-then-Test certifies on a
    seeded half of each run's dev rows (risk target, `HELD_OUT_EPS`), read on the other
    half (`exits.calibration.calibrate_outputs`, `score`)."""
    from rome_jax.data.metrics import compute_metrics
    from rome_jax.exits import calibration  # JAX: the runner that starts train.py never loads it

    lines = [
        "",
        "Entropy thresholds with a guarantee (`eval.py --calibrate=ltt --target=risk`): for each run, "
        "Learn-then-Test on a seeded random half of the dev rows (seed 0) certifies the most "
        f"aggressive threshold whose accuracy drop against full depth is at most eps with probability "
        f"{1 - HELD_OUT_DELTA:g}; the figures are read on the other half, which did not choose it. "
        f"Thresholds per seed; test {metric} x100 and speed-up in layers, mean ± std over seeds; "
        "`none`: nothing certified, full depth.",
        "",
        "| mode | " + " | ".join(f"eps {e:g}" for e in HELD_OUT_EPS) + " |",
        "|---" * (len(HELD_OUT_EPS) + 1) + "|",
    ]
    for mode in (m for m in modes if any(r["mode"] == m for r in rows)):
        cells = []
        for eps in HELD_OUT_EPS:
            scored: list[tuple[float, dict] | None] = []
            for r in (r for r in rows if r["mode"] == mode):
                out = r["exit_outputs"]
                logits, labels = np.asarray(out["logits"], np.float32), np.asarray(out["labels"])
                cal, test = calibration.split_rows(len(labels), 0.5, 0)
                chosen = calibration.calibrate_outputs(
                    logits[:, cal], labels[cal], target="risk", eps=eps, delta=HELD_OUT_DELTA, criteria=("entropy",)
                )
                metric_fn = lambda z, y=labels[test]: compute_metrics(task, z, y)[metric]  # noqa: E731
                got = calibration.score(chosen, logits[:, test], metric_fn, metric=metric)["criteria"]["entropy"]
                scored.append(None if got is None else (chosen["criteria"]["entropy"]["threshold"], got))
            certified = [s for s in scored if s is not None]
            if not scored or len(certified) < len(scored):
                cells.append("none")
                continue
            thresholds = " / ".join(f"{t:.3g}" for t, _ in certified)
            value = _cell([100 * g[metric] for _, g in certified])
            speed = _cell([g["layer_speedup"] for _, g in certified], 2)
            cells.append(f"{thresholds}: {value} ({speed}x)")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def _calibrated_table(rows: list[dict], modes: list[str], metric: str, task: str = "") -> list[str]:
    """Markdown lines: the held-out thresholds of the runs whose records keep every exit's
    dev outputs (`_held_out_table`); runs without them get no calibrated figure (one
    chosen and read on the same dev rows would be in-sample: the sweep above already
    shows those trade-offs), and the lines say so."""
    with_outputs = [r for r in rows if "exit_outputs" in r]
    lines = _held_out_table(task or rows[0]["task"], with_outputs, modes, metric) if with_outputs else []
    missing = [m for m in modes if any(r["mode"] == m and "exit_outputs" not in r for r in rows)]
    if missing:
        named = []
        for m in missing:
            seeds = [str(r["seed"]) for r in rows if r["mode"] == m and "exit_outputs" not in r]
            whole = len(seeds) == sum(r["mode"] == m for r in rows)
            named.append(f"`{m}`" + ("" if whole else f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})"))
        lines += [
            "",
            f"No calibrated thresholds for {', '.join(named)}: "
            "their records predate saved exit outputs, so a threshold could only be chosen and read on the "
            "same dev rows (in-sample: the sweep above shows every such trade-off). A run recorded again "
            "(its record removed, then this script) gets thresholds certified on half of its dev rows and "
            "read on the other half.",
        ]
    return lines


def timing_group(record: dict) -> tuple[str, str]:
    """What a run's wall time is comparable within: its machine and its batching
    (`data.buckets`; records made before length buckets existed padded every batch)."""
    machine = (record.get("provenance") or {}).get("machine") or "unknown"
    data = (record.get("resolved_config") or {}).get("data") or {}
    return machine, str(data.get("buckets", "none"))


def provenance_note(records: list[dict]) -> str:
    """One sentence on where the records' runs ran (commits, code trees, machines, dates)."""
    where = [r.get("provenance") or {} for r in records]

    def listed(key: str) -> str:
        counts: dict = {}
        for w in where:
            counts[w.get(key) or "unknown"] = counts.get(w.get(key) or "unknown", 0) + 1
        return ", ".join(f"{k} ({n})" if len(counts) > 1 else str(k) for k, n in counts.items())

    modified = sum(bool(w.get("code_modified")) for w in where)
    return (
        f"{len(records)} runs; rome_jax tree {listed('rome_jax_tree')} (commit {listed('commit')}); "
        f"jax {listed('jax')}; {listed('machine')}; {listed('date')}"
        + (f"; {modified} with uncommitted code changes" if modified else "")
        + "."
    )


def report(
    records: list[dict],
    out: Path,
    grid_note: str,
    missing: list[str] | None = None,
    findings: str = "",
    records_dir: str = "docs/ablation_runs",
) -> str:
    import matplotlib  # only the report draws (and pyplot must follow the backend's choice)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Results: the gradient-regularizer ablation",
        "",
        grid_note or "Grid: see the command below.",
        "",
        "Regenerate: `python scripts/ablation.py --workdir=runs/ablation`: every run with a record in "
        f"`{records_dir}/` is reused, not redone (one JSON file a run: its eval results, training time, "
        "GR statistics, resolved config and provenance), so on a fresh clone it "
        + ("trains only the runs named below as not finished (none with `--reuse_only`) and " if missing else "only ")
        + "rebuilds this page and its plots.",
        "",
        f"Runs: {provenance_note(records)}",
        "",
    ]
    if findings:
        lines += [findings.strip(), ""]
    if missing:
        lines += [
            "Runs of the grid not finished yet (not in the tables): " + ", ".join(f"`{m}`" for m in missing) + ".",
            "",
        ]
    # Per task, the [CLS] grid, then (where there are records of it) the mean-pooled one.
    groups = [
        (task, pooling)
        for task in dict.fromkeys(r["task"] for r in records)
        for pooling in EXIT_POOLINGS
        if any(r["task"] == task and exit_pooling_of(r) == pooling for r in records)
    ]
    for task, pooling in groups:
        rows = [r for r in records if r["task"] == task and exit_pooling_of(r) == pooling]
        metric = rows[0]["results"]["metric"]
        modes = list(dict.fromkeys(r["mode"] for r in rows))
        exits = len(rows[0]["results"]["per_exit"])
        pooled = "" if pooling == "cls" else f", {pooling}-pooled exits"
        lines += [
            f"## {task}{pooled} (dev {metric} x100, {rows[0]['results']['num_examples']} examples; "
            "mean ± std over seeds)",
            "",
        ]
        if pooling != "cls":
            lines += [
                f"Every exit pools the {pooling} of its layer's token vectors over the attended "
                f"positions (`model.exit_pooling={pooling}`) instead of `[CLS]`, with the [CLS] "
                f"grid's settings otherwise. Records: `{records_dir}/{task}/MODE-{pooling}/` "
                f"(`scripts/ablation.py --exit_pooling={pooling}` trains the missing ones).",
                "",
            ]
        lines += [
            "| mode | seeds | "
            + " | ".join(f"exit {i}" for i in range(1, exits + 1))
            + " | mean of exits 1-"
            + f"{exits - 1}"
            + " | train time / joint | steps |",
            "|---" * (exits + 5) + "|",
        ]
        joint: dict[tuple, list[float]] = {}
        for r in rows:
            if r["mode"] == "joint" and not r.get("train_seconds_partial"):
                joint.setdefault(timing_group(r), []).append(r["train_seconds"])
        fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
        sweep_lines = []
        for mode in modes:
            runs = [r for r in rows if r["mode"] == mode]
            values = _per_exit(runs, metric)
            cells = [_cell(values[:, i]) for i in range(exits)]
            ratios = [
                r["train_seconds"] / np.mean(joint[timing_group(r)])
                for r in runs
                if not r.get("train_seconds_partial") and timing_group(r) in joint
            ]
            ratio = f"{np.mean(ratios):.2f}" if ratios else "n/a"
            lines.append(
                f"| {mode} | {len(runs)} | "
                + " | ".join(cells)
                + f" | {_cell(values[:, :-1].mean(1))} | {ratio} | {runs[0]['steps']} |"
            )
            entropy = [[p for p in r["results"]["sweep"] if p["criterion"] == "entropy"] for r in runs]
            xs = np.mean([[p["layer_speedup"] for p in e] for e in entropy], axis=0)
            ys = np.mean([[p[metric] for p in e] for e in entropy], axis=0) * 100
            order = np.argsort(xs)
            ax.plot(xs[order], ys[order], marker="o", label=mode)
            for j, point in enumerate(entropy[0]):
                accs = [e[j][metric] * 100 for e in entropy]
                speed = [e[j]["layer_speedup"] for e in entropy]
                sweep_lines.append((point["threshold"], mode, _cell(accs), f"{np.mean(speed):.2f}"))
        ax.set(
            xlabel="speed-up in layers (entropy exit)",
            ylabel=f"dev {metric} (x100)",
            title=f"{task}{pooled}: metric against speed-up",
        )
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png = out.parent / (f"results_{task}.png" if pooling == "cls" else f"results_{task}_{pooling}.png")
        fig.savefig(png)
        plt.close(fig)
        lines += [
            "",
            "Train time: wall seconds of the whole run relative to the mean of the `joint` runs "
            "timed alike (the same machine and the same `data.buckets`; a run with no such `joint` "
            "run is left out), averaged over the mode's runs; two-stage modes count both stages; "
            "steps are the optimizer steps of all stages.",
            "",
        ]
        # The metrics reported with the primary one (MRPC: accuracy and F1, whose mean it is).
        parts = [k for k in rows[0]["results"]["per_exit"][0] if k not in ("exit", metric)]
        if parts:
            lines += [
                f"The metrics reported with `{metric}`, per exit (x100, mean ± std over seeds):",
                "",
                "| mode | metric | " + " | ".join(f"exit {i}" for i in range(1, exits + 1)) + " |",
                "|---" * (exits + 2) + "|",
            ]
            for mode in modes:
                runs = [r for r in rows if r["mode"] == mode]
                for part in parts:
                    values = _per_exit(runs, part)
                    lines.append(f"| {mode} | {part} | " + " | ".join(_cell(values[:, i]) for i in range(exits)) + " |")
            lines.append("")
        lines += [
            f"![{task}]({png.name})",
            "",
            f"Entropy exit (`{ENTROPY}`): dev {metric} x100 and speed-up in layers (L / mean layers), mean over seeds.",
            "",
            "| threshold | " + " | ".join(modes) + " |",
            "|---" * (len(modes) + 1) + "|",
        ]
        for threshold in dict.fromkeys(t for t, *_ in sweep_lines):
            by_mode = {m: f"{a} ({x}x)" for t, m, a, x in sweep_lines if t == threshold}
            lines.append(f"| {threshold:g} | " + " | ".join(by_mode.get(m, "") for m in modes) + " |")
        lines += _calibrated_table(rows, modes, metric)
        gr_rows = [(m, [r["gr"] for r in rows if r["mode"] == m and r.get("gr")]) for m in modes]
        if any(stats for _, stats in gr_rows):
            lines += [
                "",
                "Gradient regularization: the share of training steps whose two gradients "
                "conflicted (cosine < 0, so the projection ran) and the mean cosine between them, "
                "from each run's `metrics.jsonl`, mean ± std over seeds.",
                "",
                "| mode | steps projected (%) | mean cosine |",
                "|---|---|---|",
            ]
            for mode, stats in gr_rows:
                if stats:
                    lines.append(
                        f"| {mode} | {_cell([100 * g['projected_fraction'] for g in stats])} | "
                        f"{_cell([g['cosine'] for g in stats], 2)} |"
                    )
        lines.append("")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def previous_grid_note(path: Path) -> str:
    """The grid note of the report at `path` (its third line), so that rebuilding the
    report without --grid_note keeps it; "" if there is none."""
    if not path.is_file():
        return ""
    lines = path.read_text(encoding="utf-8").splitlines()
    note = lines[2] if len(lines) > 2 and lines[0].startswith("# Results") else ""
    return "" if note.startswith("Grid: see the command") else note
