"""Evaluation of every exit and of early-exit sweeps, timed on the clock.

One forward pass computes every exit on the split (`outputs.all_exit_logits`, or
`outputs.all_exit_signals` with the signals lte, saturation and meta read); every
threshold of every criterion is then simulated exactly from those outputs
(`exits.simulate`). Speed is reported three ways: in layers (`L / mean layers`), in
FLOPs (attention and exit heads counted, `flops.flops_speedup`) and in wall-clock
seconds per example (`timing.Timer`), at batch 1 (`executors.while_loop_exit`, one
compiled `lax.while_loop`) and batched (`executors.BatchedEarlyExit`, examples leaving
the batch as they exit), each against the full-depth model timed the same way. The
timed executors' decisions are checked against the simulation.

Length buckets (`buckets`, a `data.buckets.LengthBuckets`): every batch is cut to
the smallest bucket length that holds its rows instead of running all `max_length`
positions. The full pass is `outputs.all_exit_logits` (rows grouped by bucket,
logits scattered back to the split's order); at batch 1 each example runs at its
own bucket's length; batched, the early-exit executor and the full-depth baseline
run the same bucket-grouped batches (one `run_dataset` call per length). FLOPs then
count each example at its bucket's length. One bucket ("none") pads every batch to
`max_length`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from rome_jax import files
from rome_jax.data import Features
from rome_jax.data.buckets import LengthBuckets, bucket_index, length_buckets, padded_share, sequence_lengths
from rome_jax.data.glue import Task, get_task
from rome_jax.data.metrics import compute_metrics, primary_metric
from rome_jax.encoder import flops
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.pytree import Params
from rome_jax.exits import criteria as exits
from rome_jax.exits import guarantee, outputs
from rome_jax.exits.signals import criterion_flops, criterion_start_flops, gates_of
from rome_jax.exits.timing import Timer

DEFAULT_THRESHOLDS: dict[str, tuple[float, ...]] = {
    # DeeBERT's reference thresholds
    "entropy": (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    "max_prob": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
    # FastBERT's "speed" (its default 0.5)
    "normalized_entropy": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    # PABEE sweeps 3..8 on 12 layers (patience_infer_bert.sh)
    "patience": (1, 2, 3, 4, 5, 6, 7, 8),
}
"""The thresholds a criterion named without values is swept at."""

DEFAULT_SWEEPS: dict[str, tuple[float, ...]] = {
    name: DEFAULT_THRESHOLDS[name] for name in ("entropy", "max_prob", "patience")
}
"""The criteria evaluated by default (before `useful_thresholds`)."""

MODE_SWEEPS: dict[str, tuple[str, ...]] = {"fastbert": ("normalized_entropy",)}
"""Criteria added to the defaults for runs of a mode: its method's own exit rule."""


def useful_thresholds(name: str, thresholds: Sequence[float], num_layers: int) -> tuple[float, ...]:
    """Drops patience values that cannot exit before the last layer: patience t
    exits at exit t + 1 at the earliest, so t >= L - 1 is the full-depth model."""
    if name != "patience":
        return tuple(thresholds)
    return tuple(t for t in thresholds if t < num_layers - 1)


OBSERVED_POINTS = 8
"""Thresholds added per confidence criterion where the model's values lie (`observed_thresholds`)."""


def default_sweeps(
    num_layers: int,
    mode: str | None = None,
    logits: np.ndarray | None = None,
    signals: exits.Signals | None = None,
    gates: Sequence[str] = (),
) -> dict[str, tuple[float, ...]]:
    """The default sweeps for a model of `num_layers` layers trained in `mode`:
    entropy, max_prob and patience, plus the mode's own criterion (`MODE_SWEEPS`).

    With the split's exit logits [E, N, C], each confidence criterion's reference
    thresholds are joined by `OBSERVED_POINTS` thresholds where the criterion's values
    on these rows lie (`observed_thresholds`), so a model whose exits are never as
    confident as the reference grid assumes still gets thresholds between full depth
    and everything at exit 1. With the split's `signals` (each [E, N]), saturation and
    the fitted `gates` (lte, meta) are swept at `OBSERVED_POINTS` + 2 thresholds where
    their values lie."""
    names = list(DEFAULT_SWEEPS) + [n for n in MODE_SWEEPS.get(mode or "", ()) if n not in DEFAULT_SWEEPS]
    sweeps = {n: useful_thresholds(n, DEFAULT_THRESHOLDS[n], num_layers) for n in names}
    if logits is not None:
        for name in sweeps:
            if name in guarantee.CONFIDENCE_CRITERIA:
                merged = {*sweeps[name], *observed_thresholds(name, logits)}
                sweeps[name] = tuple(sorted(merged))
    if logits is not None and signals is not None:
        for name in ("saturation", *(g for g in exits.GATE_CRITERIA if g in gates)):
            sweeps[name] = observed_signal_thresholds(name, logits, signals)
    return sweeps


def observed_signal_thresholds(name: str, logits: np.ndarray, signals: exits.Signals | None) -> tuple[float, ...]:
    """`OBSERVED_POINTS` + 2 thresholds of a signal criterion, from one that exits
    nobody early to one that exits almost everybody at exit 1 (`guarantee.threshold_grid`),
    rounded to 6 digits."""
    grid = guarantee.threshold_grid(name, logits, size=OBSERVED_POINTS + 2, signals=signals)
    return tuple(sorted({round(float(t), 6) for t in grid}))


def observed_thresholds(name: str, logits: np.ndarray, points: int = OBSERVED_POINTS) -> tuple[float, ...]:
    """`points` thresholds at evenly spaced quantiles (excluding 0 and 1) of the criterion's
    values over exits 1..E-1 of these rows (logits [E, N, C]), rounded to 4 digits."""
    grid = guarantee.threshold_grid(name, logits, size=points + 2)
    inner = [t for t in grid if t not in (grid[0], grid[-1])]
    picks: np.ndarray | list[int] = (
        np.linspace(0, len(inner) - 1, min(points, len(inner))).round().astype(int) if inner else []
    )
    return tuple(sorted({round(float(inner[i]), 4) for i in picks}))


def parse_sweeps(spec: str, num_layers: int | None = None) -> dict[str, tuple[float, ...]]:
    """'entropy:0,0.1;patience:1,2' -> {'entropy': (0.0, 0.1), 'patience': (1.0, 2.0)}.

    A criterion named without thresholds takes `DEFAULT_THRESHOLDS` (those useful
    for `num_layers` layers, when given), or for lte, saturation and meta `()`:
    thresholds where the split's values lie; thresholds given are kept as they are.
    """
    sweeps: dict[str, tuple[float, ...]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, values = part.partition(":")
        name = name.strip()
        if name not in exits.CRITERIA:
            raise ValueError(f"unknown criterion {name!r} in --sweeps; known: {', '.join(exits.CRITERIA)}")
        if values.strip():
            try:
                sweeps[name] = tuple(float(v) for v in values.split(","))
            except ValueError:
                raise ValueError(f"--sweeps {part!r}: thresholds must be numbers, e.g. {name}:0.1,0.2") from None
        elif name in DEFAULT_THRESHOLDS:
            defaults = DEFAULT_THRESHOLDS[name]
            sweeps[name] = defaults if num_layers is None else useful_thresholds(name, defaults, num_layers)
        elif name in exits.SIGNAL_CRITERIA:
            sweeps[name] = ()  # read where the split's values lie (`evaluate_split`)
        else:
            raise ValueError(f"criterion {name!r} has no default sweep: give thresholds, e.g. {name}:0.1,0.2")
    return sweeps


def exit_logits_of(
    config: ModelConfig,
    params: Params,
    features: Features,
    batch_size: int,
    buckets: LengthBuckets | str | Sequence[int] | None = None,
) -> np.ndarray:
    """Every exit's logits on every example: [E, N, C] float32, in the features' order
    (`outputs.all_exit_logits`).

    buckets: a `LengthBuckets`, or a `data.buckets` value resolved by `length_buckets`
    at the features' `max_length` (None or "none": every batch padded to it).
    """
    buckets = length_buckets(features.max_length, buckets)
    return outputs.all_exit_logits(config, params, features, batch_size=batch_size, buckets=buckets)


def exit_signals_of(
    config: ModelConfig,
    params: Params,
    features: Features,
    batch_size: int,
    buckets: LengthBuckets | str | Sequence[int] | None = None,
) -> tuple[np.ndarray, exits.Signals | None]:
    """Every exit's logits [E, N, C] and, for a sequence-level model, signals (each
    [E, N]; `outputs.all_exit_signals`) on every example; a tagger's signals are None."""
    if config.token_exits:
        return exit_logits_of(config, params, features, batch_size, buckets), None
    buckets = length_buckets(features.max_length, buckets)
    logits, signals, _ = outputs.all_exit_signals(config, params, features, batch_size=batch_size, buckets=buckets)
    return logits, signals


def signal_rows(signals: exits.Signals | None, rows: np.ndarray) -> exits.Signals | None:
    """The signals of some rows (positions [M]): each [E, N] -> [E, M]; None stays None."""
    if signals is None:
        return None
    return exits.Signals(*(np.asarray(v)[:, rows] for v in signals))


def example_lengths(features: Features, buckets: LengthBuckets) -> np.ndarray:
    """[N] the length each example runs at alone: its bucket (the smallest holding
    it; `max_length` with one bucket)."""
    ascending = sorted(buckets)
    return np.asarray(ascending, np.int64)[bucket_index(sequence_lengths(features.attention_mask), ascending)]


def flops_speedup_at(
    config: ModelConfig, seq_lens: np.ndarray, exit_index: np.ndarray, criterion: str | None = None
) -> float:
    """Full-depth FLOPs over early-exit FLOPs, each example counted at its own
    sequence length (`seq_lens` [N]), both summed over the examples; the early exit
    pays `criterion`'s own work at every exit it runs (`signals.criterion_flops`)."""
    seq_lens, exit_index = np.asarray(seq_lens), np.asarray(exit_index)
    full = spent = 0
    for length in np.unique(seq_lens):
        at = seq_lens == length
        full += int(at.sum()) * flops.full_flops(config, int(length))
        spent += int(np.sum(flops.flops_to_exit(config, int(length), exit_index[at]), dtype=np.int64))
        if criterion:
            spent += criterion_flops(config, criterion, int(length)) * int(np.sum(exit_index[at] + 1))
            spent += criterion_start_flops(config, criterion, int(length)) * int(at.sum())
    return full / spent


def evaluate_split(
    config: ModelConfig,
    params: Params,
    task: Task | str,
    split: str,
    features: Features,
    *,
    sweeps: Mapping[str, Sequence[float]] | None = None,
    batch_size: int = 64,
    batch1_examples: int = 64,
    batched_examples: int = 0,
    timing: bool = True,
    mode: str | None = None,
    buckets: LengthBuckets | str | Sequence[int] | None = None,
    log: Callable[[str], object] = print,
    logits: np.ndarray | None = None,
    signals: exits.Signals | None = None,
) -> dict:
    """Per-exit metrics and the early-exit sweeps of one labelled split (see module doc).

    logits: every exit's logits on these features [E, N, C] when already computed
    (eval.py computes them once for the whole split and saves them); else computed here.
    signals: the exits' signals on these features (each [E, N]) for the criteria lte,
    saturation and meta; with `logits` None they are computed here (with the logits)
    for a sequence-level model; without them those criteria are not swept.

    sweeps: {criterion: thresholds}; default `default_sweeps(num_layers, mode)`
    (`mode`: the run's `train.mode`, which adds its method's criterion).
    buckets: a `LengthBuckets` (or a `data.buckets` value, see `exit_logits_of`);
    one bucket ("none", None): every batch padded to `max_length`.

    Returns the `results.json` dict: task, split, metric, num_examples, num_exits,
    max_length, buckets (the lengths, or None for one bucket), padded_share (the share of token
    positions of the full pass's batches that are padding), per_exit [{exit,
    <metrics>}], sweep [{criterion, threshold, <metrics>, mean_layers,
    layer_speedup, flops_speedup, wall_s_batch1, wall_s_batched,
    wall_speedup_batch1, wall_speedup_batched}], full_depth {wall_s_batch1,
    wall_s_batched, flops_per_example (the mean over examples, each at its
    bucket's length)}, timing {...}, executors_agree.
    """
    if isinstance(task, str):
        task = get_task(task)
    if task.num_labels != config.num_labels:
        raise ValueError(f"task {task.name} has {task.num_labels} labels, the model {config.num_labels} outputs")
    regression = config.num_labels == 1
    L, T = config.num_layers, features.max_length
    labels = np.asarray(features.labels)
    buckets = length_buckets(T, buckets)
    share = padded_share(sequence_lengths(features.attention_mask), outputs.batch_plan(features, batch_size, buckets))
    seq_lens = example_lengths(features, buckets)
    log(
        f"{task.name}/{split}: every exit on {len(features)} examples"
        + (f", length buckets {','.join(map(str, buckets))}" if not buckets.padded else "")
        + f" ({share:.0%} of token positions padding)"
    )
    if logits is None and not config.token_exits:
        logits, signals, _ = outputs.all_exit_signals(config, params, features, batch_size=batch_size, buckets=buckets)
    elif logits is None:
        logits = exit_logits_of(config, params, features, batch_size, buckets)
    elif np.shape(logits)[:2] != (L, len(features)):
        raise ValueError(f"logits of shape {np.shape(logits)} do not fit {L} exits x {len(features)} examples")
    gates = tuple(gates_of(params))
    if sweeps is None:
        sweeps = default_sweeps(config.num_layers, mode, logits, signals, gates)
    missing = [n for n in sweeps if n in exits.GATE_CRITERIA and n not in gates]
    if missing:
        raise ValueError(
            f"cannot sweep {', '.join(missing)}: the model has no fitted gate for it (eval.py --fit_gates)"
        )
    if signals is None:
        dropped = [n for n in sweeps if n in exits.SIGNAL_CRITERIA]
        if dropped:
            raise ValueError(f"cannot sweep {', '.join(dropped)} without the exits' signals")
    sweeps = {
        name: thresholds or observed_signal_thresholds(name, logits, signals)
        for name, thresholds in sweeps.items()
        if thresholds or name in exits.SIGNAL_CRITERIA
    }
    per_exit = [{"exit": i + 1, **compute_metrics(task.name, logits[i], labels)} for i in range(L)]

    timer = (
        Timer(
            config,
            params,
            features,
            batch1_examples=batch1_examples,
            batched_examples=batched_examples,
            batch_size=batch_size,
            buckets=buckets,
        )
        if timing
        else None
    )
    full_depth = timer.full_depth() if timer else None  # (batch-1, batched) seconds per example
    full1, fullb = full_depth or (None, None)
    sweep, agree = [], True
    for name, thresholds in sweeps.items():
        if regression and name in ("entropy", "max_prob", "normalized_entropy"):
            continue
        for threshold in thresholds:
            criterion = exits.Criterion(name, float(threshold), regression=regression)
            exit_index, chosen = (np.asarray(x) for x in exits.simulate(criterion, logits, signals=signals))
            row = {"criterion": name, "threshold": float(threshold), **compute_metrics(task.name, chosen, labels)}
            mean_layers = float(np.mean(exit_index + 1))
            lens = np.full(len(exit_index), T) if buckets.padded else seq_lens
            speedup = flops_speedup_at(config, lens, exit_index, name)
            row.update(mean_layers=mean_layers, layer_speedup=L / mean_layers, flops_speedup=float(speedup))
            if timer and full_depth:
                w1, wb, exits1, exitsb = timer.early_exit(criterion)
                agree &= bool(np.array_equal(exits1, exit_index[: len(exits1)]))
                agree &= bool(np.array_equal(exitsb, exit_index[: len(exitsb)]))
                row.update(
                    wall_s_batch1=w1,
                    wall_s_batched=wb,
                    wall_speedup_batch1=full_depth[0] / w1,
                    wall_speedup_batched=full_depth[1] / wb,
                )
            sweep.append(row)
    return {
        "task": task.name,
        "split": split,
        "metric": primary_metric(task.name),
        "regression": regression,
        "num_examples": int(len(features)),
        "num_exits": L,
        "max_length": int(T),
        "buckets": None if buckets.padded else list(buckets),
        "padded_share": float(share),
        "per_exit": per_exit,
        "sweep": sweep,
        "full_depth": {
            "wall_s_batch1": full1,
            "wall_s_batched": fullb,
            "flops_per_example": (
                int(flops.full_flops(config, T))
                if buckets.padded
                else int(round(np.mean([flops.full_flops(config, int(n)) for n in seq_lens])))
            ),
        },
        "timing": (
            {
                "batch1_examples": len(timer.singles),
                "batched_examples": timer.num_batched,
                "batch_size": batch_size,
                "backend": jax.devices()[0].platform,
                "unit": "wall seconds per example",
            }
            if timer
            else None
        ),
        "executors_agree": agree if timer else None,
    }


# ------------------------------------------------------------------------- outputs


def format_table(results: dict) -> str:
    """The terminal report: every exit, then every sweep point."""
    metric = results["metric"]
    buckets = results.get("buckets")
    lines = [
        f"{results['task']} / {results['split']}: {results['num_examples']} examples, "
        f"metric {metric}"
        + (f", length buckets {','.join(map(str, buckets))}" if buckets else "")
        + (f" ({results['padded_share']:.0%} of token positions padding)" if "padded_share" in results else ""),
        "",
        "exit  " + metric,
    ]
    lines += [f"{r['exit']:>4}  {r[metric]:.4f}" for r in results["per_exit"]]
    w = max([10] + [len(r["criterion"]) + 1 for r in results["sweep"]])
    m = max(12, len(metric) + 2)  # a long metric name (accuracy_and_f1) keeps its column apart
    head = f"{'criterion':<{w}}{'threshold':>10}{metric:>{m}}{'layers':>8}{'layer x':>9}{'flops x':>9}"
    timed = results.get("timing") is not None
    if timed:
        head += f"{'clock x b1':>12}{'clock x bat':>12}"
    lines += ["", head]
    for r in results["sweep"]:
        line = (
            f"{r['criterion']:<{w}}{r['threshold']:>10g}{r[metric]:>{m}.4f}{r['mean_layers']:>8.2f}"
            f"{r['layer_speedup']:>9.2f}{r['flops_speedup']:>9.2f}"
        )
        if timed:
            line += f"{r['wall_speedup_batch1']:>12.2f}{r['wall_speedup_batched']:>12.2f}"
        lines.append(line)
    if timed:
        fd, t = results["full_depth"], results["timing"]
        lines += [
            "",
            f"full depth: {fd['wall_s_batch1'] * 1e3:.2f} ms/example at batch 1 "
            f"({t['batch1_examples']} examples), {fd['wall_s_batched'] * 1e3:.2f} ms/example "
            f"batched ({t['batched_examples']} examples, batch {t['batch_size']}) on {t['backend']}; "
            f"executors agree with the simulation: {results['executors_agree']}",
        ]
    return "\n".join(lines)


EXIT_LOGITS_FILE = "exit_logits.npz"
"""Every exit's outputs per example, beside results.json: arrays `<split>/logits`
[E, N, C] float32, `<split>/labels` [N] (when the rows have labels) and
`<split>/row_ids` [N] (each row's number in the split's file order)."""


def save_exit_logits(
    path: str,
    split: str,
    logits: np.ndarray,
    labels: np.ndarray | None,
    row_ids: np.ndarray,
    signals: exits.Signals | None = None,
) -> str:
    """Writes (or adds `split` to) an `EXIT_LOGITS_FILE`, atomically; returns the path.
    With `signals`, `<split>/lte`, `<split>/meta`, `<split>/saturation` ([E, N]) too."""
    arrays: dict[str, np.ndarray] = {}
    if os.path.isfile(path):
        with np.load(path) as old:
            arrays = {k: old[k] for k in old.files if not k.startswith(f"{split}/")}
    arrays[f"{split}/logits"] = np.asarray(logits, np.float32)
    arrays[f"{split}/row_ids"] = np.asarray(row_ids, np.int64)
    if labels is not None:
        arrays[f"{split}/labels"] = np.asarray(labels)
    if signals is not None:
        for field, value in zip(exits.Signals._fields, signals):
            arrays[f"{split}/{field}"] = np.asarray(value, np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, allow_pickle=True, **arrays)  # numpy's default, spelt out: no array key can bind it
    os.replace(tmp, path)
    return path


def load_exit_logits(path: str, split: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(logits [E, N, C], labels [N] or None, row_ids [N]) of `split` in a saved file."""
    with np.load(path) as data:
        if f"{split}/logits" not in data.files:
            raise KeyError(f"{path}: no outputs of split {split!r}")
        labels = data[f"{split}/labels"] if f"{split}/labels" in data.files else None
        return data[f"{split}/logits"], labels, data[f"{split}/row_ids"]


def load_exit_signals(path: str, split: str) -> exits.Signals | None:
    """The signals (each [E, N]) of `split` in a saved file, or None when it has none."""
    with np.load(path) as data:
        if f"{split}/saturation" not in data.files:
            return None
        return exits.Signals(*(data[f"{split}/{field}"] for field in exits.Signals._fields))


def write_outputs(results: dict, out_dir: str) -> list[str]:
    """results.json, results.csv (the sweep), per_exit.csv, per_exit.png, tradeoff.png."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []

    def target(name: str) -> str:
        paths.append(os.path.join(out_dir, name))
        return paths[-1]

    files.write_json(target("results.json"), results)
    for name, rows in (("results.csv", results["sweep"]), ("per_exit.csv", results["per_exit"])):
        with open(target(name), "w", newline="", encoding="utf-8") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    _plot(results, target("per_exit.png"), target("tradeoff.png"))
    return paths


def _plot(results: dict, per_exit_path: str, tradeoff_path: str) -> None:
    import matplotlib  # heavy: only the plots need it (and pyplot must follow the backend's choice)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results["metric"]
    title = f"{results['task']} {results['split']} ({results['num_examples']} examples)"
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    xs = [r["exit"] for r in results["per_exit"]]
    ax.plot(xs, [r[metric] for r in results["per_exit"]], marker="o")
    ax.set(xlabel="exit (layer)", ylabel=metric, title=f"Every exit: {title}", xticks=xs)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(per_exit_path)
    plt.close(fig)

    timed = results.get("timing") is not None
    panels = [("layer_speedup", "speed-up in layers (L / mean layers)")]
    if timed:
        panels.append(("wall_speedup_batched", "wall-clock speed-up, batched"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), dpi=120, squeeze=False)
    final = results["per_exit"][-1][metric]
    for ax, (key, label) in zip(axes[0], panels):
        for name in dict.fromkeys(r["criterion"] for r in results["sweep"]):
            rows = sorted((r for r in results["sweep"] if r["criterion"] == name), key=lambda r: r[key])
            ax.plot([r[key] for r in rows], [r[metric] for r in rows], marker="o", label=name)
        ax.axhline(final, color="gray", linestyle="--", linewidth=1, label="final exit")
        ax.set(xlabel=label, ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Metric against speed-up: {title}")
    fig.tight_layout()
    fig.savefig(tradeoff_path)
    plt.close(fig)
