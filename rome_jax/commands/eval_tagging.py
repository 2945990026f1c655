"""eval.py for a tagger (`data.task=conll2003|tagging`): every exit's entity F1, the
sentence- and token-level early-exit sweeps, calibration with a guarantee, timing.

    python eval.py --workdir=runs/conll                    # half the dev sentences calibrate
    python eval.py --workdir=runs/conll --eps=0.01 --windows=0,1,2

What it writes to WORKDIR/eval/ (or --output_dir): results.json, results.csv (the
sweep), per_exit.csv, tradeoff.png (entity F1 against FLOPs, both rules),
exit_logits.npz (`<split>/logits` [E, words, C] at each word's first sub-token,
`<split>/labels` [words] tag ids, `<split>/row_ids` [words] sentence ids).

The rows: a seeded random `--calibration_fraction` (default half) of the dev sentences
chooses the thresholds (Learn-then-Test, the consistency target per word:
`rome_jax.exits.tag_sweeps.calibrate_tagging`); every figure of the sweep, the
calibrated rule and the timing is read on the other sentences; the per-exit F1 is read
on those too. The calibration is stored as for classifiers (WORKDIR/calibration.json
and the exported model's rome_jax_calibration.json), which `predict` then uses.
"""

from __future__ import annotations

import csv
import os
import time
from typing import Any

import numpy as np

from rome_jax import files


def evaluate_tagger(
    model: Any,
    task: Any,
    split: str,
    *,
    max_length: int,
    max_examples: int,
    batch_size: int,
    buckets: Any,
    out_dir: str,
    origin: str,
    eps: float,
    delta: float,
    fraction: float,
    seed: int,
    windows: list[int],
    timing: bool,
    log: Any = print,
) -> tuple[dict, list[str]]:
    """Evaluates a tagger on one split; returns (results, the paths written)."""
    # JAX loads only now (eval.py re-executes itself first)
    from rome_jax.data.tagging_task import load_tagging_features
    from rome_jax.exits import calibration as calibration_lib
    from rome_jax.exits import tag_scores, tag_sweeps
    from rome_jax.exits.criteria import Criterion
    from rome_jax.exits.outputs import all_exit_logits

    config, params, tag_names = model.config, model.params, list(task.tag_names)
    sentences, features = load_tagging_features(task, split, model.tokenizer, max_length, max_examples=max_examples)
    log(f"{split}: {len(sentences)} sentences, {int(features.num_words.sum())} words, {features.truncated} cut")
    logits = all_exit_logits(config, params, features.features, batch_size=batch_size, buckets=buckets)
    cal, scored = calibration_lib.split_rows(len(sentences), fraction, seed)
    test_s, test_f = sentences.subset(scored), features.subset(scored)
    per_exit = tag_scores.scores_by_exit(logits[:, scored], test_s, test_f, tag_names)
    log("entity F1 by exit (test sentences): " + " ".join(f"{100 * s['f1']:.2f}" for s in per_exit))
    log(f"calibrating on {len(cal)} sentences: eps {eps:g}, delta {delta:g} (consistency per word)")
    chosen = tag_sweeps.calibrate_tagging(
        config,
        params,
        logits[:, cal],
        features.subset(cal),
        eps=eps,
        delta=delta,
        windows=windows,
        batch_size=batch_size,
        buckets=buckets,
        log=log,
    )
    chosen.update(model=origin, task=task.name, max_length=int(max_length))
    chosen["rows"] = {"fraction": fraction, "seed": seed, "num_rows": int(len(cal)), "row_ids": cal.tolist()}
    log(f"sweeping on the {len(scored)} other sentences")
    sweep = tag_sweeps.sweep(
        config,
        params,
        logits[:, scored],
        test_s,
        test_f,
        tag_names,
        windows=windows,
        batch_size=batch_size,
        buckets=buckets,
        log=log,
    )
    calibrated = []
    for key, by_name in chosen["rules"].items():
        level, window = tag_sweeps.rule_of(key)
        for name, got in by_name.items():
            if got is None:
                continue
            c = Criterion(name, got["threshold"])
            if level == "sentence":
                exits, answers = tag_sweeps.sentence_level(logits[:, scored], test_f, c)
                row = tag_sweeps.point(config, "sentence", c, exits, answers, test_s, test_f, tag_names)
            else:
                exits, answers, _ = tag_sweeps.token_level(
                    config, params, test_f, c, window=window, batch_size=batch_size, buckets=buckets
                )
                row = tag_sweeps.point(config, "token", c, exits, answers, test_s, test_f, tag_names, window)
            full_tags = np.argmax(logits[-1, scored], axis=-1)
            words = tag_sweeps.word_mask(test_f)
            row["changed_words"] = float(np.mean((np.argmax(answers, axis=-1) != full_tags)[words]))
            row["rule"] = key
            calibrated.append(row)
            got["test"] = {k: row[k] for k in row if k not in ("level", "criterion", "threshold", "window", "rule")}
    if chosen["default"] is not None:
        d = chosen["default"]
        d["test"] = chosen["rules"][d["rule"]][d["criterion"]]["test"]
        log(
            f"calibrated default: {d['rule']} {d['criterion']} {d['threshold']:.4g} -> test entity F1 "
            f"{100 * d['test']['entity_f1']:.2f} (full depth {100 * per_exit[-1]['f1']:.2f}), FLOPs "
            f"x{d['test']['flops_speedup']:.2f}, words changed {100 * d['test']['changed_words']:.2f}%"
        )
    else:
        log("no rule and threshold met the guarantee with fewer FLOPs: the model runs at full depth")
    results: dict[str, Any] = {
        "task": task.name,
        "split": split,
        "model": origin,
        "metric": "entity_f1",
        "num_sentences": len(sentences),
        "scored_rows": {"of": len(sentences), "row_ids": scored.tolist()},
        "per_exit": [{"exit": i + 1, **s} for i, s in enumerate(per_exit)],
        "sweep": sweep,
        "calibrated": calibrated,
        "calibration": chosen,
    }
    if timing:
        results["timing"] = _timing(config, params, test_f, chosen, batch_size, buckets, log)
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, n) for n in ("results.json", "results.csv", "per_exit.csv", "exit_logits.npz")]
    files.write_json(paths[0], results)
    _write_csv(paths[1], sweep)
    _write_csv(paths[2], results["per_exit"])
    words = tag_sweeps.word_mask(features)
    sentence_ids = np.broadcast_to(np.arange(len(sentences))[:, None], words.shape)[words]
    np.savez_compressed(
        paths[3],
        **{
            f"{split}/logits": logits[:, words],
            f"{split}/labels": np.asarray(features.features.labels)[words],
            f"{split}/row_ids": sentence_ids,
        },
    )
    paths.append(_plot(results, os.path.join(out_dir, "tradeoff.png")))
    return results, paths


def _timing(config, params, features, chosen, batch_size, buckets, log) -> dict:
    """Seconds of the compiled loop over the test sentences, batched, best of 2 after a
    warm-up run: full depth (no token leaves early) and, per rule, its certified
    criterion with the fewest FLOPs (sentence-level runs as the loop with a window
    wider than any sentence)."""
    from rome_jax.exits import tag_sweeps
    from rome_jax.exits.criteria import Criterion

    runs = {"full depth": (Criterion("fixed", float(config.num_layers)), 0)}
    for key, by_name in chosen["rules"].items():
        certified = [(v["calibration_flops_ratio"], name, v) for name, v in by_name.items() if v is not None]
        if certified:
            _, name, v = min(certified)
            runs[key] = (Criterion(name, v["threshold"]), tag_sweeps.rule_of(key)[1])
    out: dict[str, Any] = {"batch_size": batch_size, "seconds": {}}
    for name, (c, window) in runs.items():
        times = [
            tag_sweeps.token_level(config, params, features, c, window=window, batch_size=batch_size, buckets=buckets)[
                2
            ]
            for _ in range(3)
        ]
        out["seconds"][name] = min(times[1:])  # the first run warms up
    full = out["seconds"]["full depth"]
    out["speedup"] = {k: full / v for k, v in out["seconds"].items() if k != "full depth"}
    d = chosen.get("default")
    if d is not None and d["rule"] in out["seconds"]:
        out["full depth"], out["calibrated"] = full, out["seconds"][d["rule"]]
    shown = ", ".join(f"{k} {v:.2f} s" for k, v in out["seconds"].items())
    log(f"wall-clock over the test sentences (batched, best of 2): {shown}")
    out["measured"] = time.strftime("%Y-%m-%d")
    return out


def _write_csv(path: str, rows: list[dict]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _plot(results: dict, path: str) -> str:
    """Entity F1 against FLOPs, mean exit layer and seconds (token-level points; the
    dashed line is full depth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    full = 100 * results["per_exit"][-1]["f1"]
    styles = {("sentence", None): "o-", ("token", 0): "s-", ("token", 1): "^-", ("token", 2): "v-"}
    for (level, window), style in styles.items():
        for criterion in ("entropy", "max_prob"):
            rows = [
                r
                for r in results["sweep"]
                if r["level"] == level and r["criterion"] == criterion and r.get("window") == window
            ]
            if not rows:
                continue
            label = f"{level}{'' if window is None else f' k={window}'} {criterion}"
            for ax, key in zip(axes, ("flops_ratio", "mean_layers", "seconds")):
                shown = sorted((r for r in rows if key in r), key=lambda r: r[key])
                if shown:
                    ax.plot([r[key] for r in shown], [100 * r["entity_f1"] for r in shown], style, ms=3, label=label)
    timing = results.get("timing", {})
    for ax, xlabel in zip(axes, ("FLOPs / full depth", "mean exit layer of the words", "seconds (token level)")):
        ax.axhline(full, color="grey", lw=0.8, ls="--")
        ax.axhline(full - 1, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("entity F1 (test sentences)")
        ax.set_ylim(max(0.0, full - 15), min(100.0, full + 3))
    if "full depth" in timing:
        axes[2].axvline(timing["full depth"], color="grey", lw=0.8, ls="--")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{results['task']} {results['split']}: early exit of a tagger (dashed: full depth; dotted: -1 point)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
