"""Early-exit thresholds: chosen on calibration rows, reported on rows that did not choose them.

Two rules, each per criterion over a grid of thresholds:

- "ltt" (the default; `calibrate_outputs`): Learn-then-Test with a finite-sample
  guarantee (`rome_jax.exits.guarantee`): with probability at least `1 - delta` over
  the calibration rows, the chosen threshold's answers differ from full depth's on at
  most `eps` of new rows (target "consistency", no labels needed), or its metric drops
  by at most `eps` against full depth (target "risk"). Among the certified thresholds,
  the one with the fewest mean layers; none certified: full depth.
- "in_sample" (`choose_thresholds`, `calibrate`): the fewest mean layers whose metric
  on the calibration rows is at least the full-depth metric minus `points` percentage
  points (`points=0.5`: 0.849 -> >= 0.844); ties go to the more conservative
  threshold. No guarantee: figures read on the rows that chose the threshold are
  optimistic, so they are labelled in-sample wherever they appear.

Either way the result is a JSON-able dict; `default` is the calibrated criterion with
the fewest mean layers (what `MultiExitModel.predict` uses when the model carries the
calibration):

    {"rule": "ltt", "target": "consistency", "eps": 0.02, "delta": 0.1, "num_layers": 6,
     "regression": false, "num_examples": 436,
     "criteria": {"entropy": {"threshold": 0.41, "mean_layers": 3.9, "layer_speedup": 1.54,
                              "calibration_risk": 0.005, "pvalue": 0.01}, "patience": null},
     "default": {"criterion": "entropy", "threshold": 0.41},
     "rows": {"calibration": "dev[fraction 0.5, seed 0]: 436 rows", ...},
     "test": {"num_examples": 436, "full_depth_metric": 0.85, "criteria": {"entropy":
              {"accuracy": 0.848, "mean_layers": 3.95, "layer_speedup": 1.52, ...}}}}

`split_rows` draws the seeded calibration/test split; `score` reads a calibration's
thresholds on other rows. `FILE_NAME` is the file stored beside an HF model directory
(`save_pretrained` writes it, `load_pretrained` reads it); a run keeps the same dict
as `WORKDIR/calibration.json`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rome_jax import files
from rome_jax.data.metrics import REGRESSION_METRICS
from rome_jax.errors import CheckpointError
from rome_jax.exits import guarantee
from rome_jax.exits.criteria import CRITERIA, Criterion, Signals, simulate

FILE_NAME = "rome_jax_calibration.json"
"""The calibration beside a model directory's weights."""

RUN_FILE_NAME = "calibration.json"
"""The calibration in a train.py workdir."""

PREFERENCE = ("entropy", "normalized_entropy", "max_prob", "patience", "fixed", "lte", "saturation", "meta")
"""The order that breaks ties between criteria with the same mean layers."""

RULES = ("ltt", "in_sample")
"""How thresholds are chosen: with a guarantee (Learn-then-Test), or within points in-sample."""

RULE = (
    "per criterion, the threshold with the fewest mean layers whose dev metric is at least the "
    "full-depth metric minus `points` percentage points; ties: the more conservative threshold"
)


def _conservative_key(name: str, threshold: float) -> float:
    """Sorts the more conservative threshold first."""
    return -threshold if name in guarantee.LARGER_IS_CONSERVATIVE else threshold


def choose_thresholds(
    sweep: Sequence[Mapping[str, Any]],
    full_metric: float,
    *,
    metric: str,
    points: float = 0.5,
    num_layers: int | None = None,
    regression: bool = False,
) -> dict:
    """The calibration dict (see the module doc) from sweep rows and the full-depth metric.

    sweep: rows with `criterion`, `threshold`, `metric`'s value and `mean_layers`
      (`layer_speedup` optional); full_metric: the final exit's metric on the same
      examples (a fraction, as the rows' metrics); points: percentage points.
    """
    if not (isinstance(points, (int, float)) and math.isfinite(points) and points >= 0):
        raise ValueError(f"points must be a number >= 0 (percentage points), not {points!r}")
    floor = float(full_metric) - points / 100.0
    names = list(dict.fromkeys(str(r["criterion"]) for r in sweep))
    criteria: dict[str, dict | None] = {}
    for name in names:
        rows = [r for r in sweep if r["criterion"] == name]
        fitting = [r for r in rows if float(r[metric]) >= floor - 1e-12]
        if not fitting:
            criteria[name] = None
            continue
        best = min(
            fitting, key=lambda r: (round(float(r["mean_layers"]), 9), _conservative_key(name, float(r["threshold"])))
        )
        chosen = {
            "threshold": float(best["threshold"]),
            metric: float(best[metric]),
            "mean_layers": float(best["mean_layers"]),
        }
        if "layer_speedup" in best:
            chosen["layer_speedup"] = float(best["layer_speedup"])
        elif num_layers:
            chosen["layer_speedup"] = num_layers / float(best["mean_layers"])
        criteria[name] = chosen
    ordered = {n: criteria[n] for n in sorted(criteria, key=lambda n: PREFERENCE.index(n))}
    return {
        "rule": RULE,
        "points": float(points),
        "metric": metric,
        "full_depth_metric": float(full_metric),
        "num_layers": num_layers,
        "regression": bool(regression),
        "criteria": criteria,
        "default": guarantee.default_of(ordered),
        "in_sample": True,
    }


def calibrate(results: Mapping[str, Any], points: float = 0.5, *, regression: bool | None = None) -> dict:
    """`choose_thresholds` on one `evaluation.evaluate_split` result (its sweep and
    its final exit's metric), with the task, split, examples and max_length added.

    regression: whether the model has one output; None: the result's `regression`,
      else whether its metric is a regression metric (never guessed from which
      criteria the sweep holds: a classification sweep may hold only patience)."""
    metric = results["metric"]
    if regression is None:
        regression = results.get("regression")
    if regression is None:
        regression = metric in REGRESSION_METRICS
    calibration = choose_thresholds(
        results["sweep"],
        results["per_exit"][-1][metric],
        metric=metric,
        points=points,
        num_layers=results.get("num_exits"),
        regression=regression,
    )
    calibration.update({k: results[k] for k in ("task", "split", "num_examples", "max_length") if k in results})
    return calibration


def criterion_of(
    calibration: Mapping[str, Any], name: str | None = None, *, num_labels: int | None = None
) -> Criterion:
    """The calibrated `Criterion` (`name`'s, or the default one). ValueError when the
    calibration has none for it."""
    regression = bool(calibration.get("regression")) if num_labels is None else num_labels == 1
    if name is None:
        default = calibration.get("default")
        if not default:
            if calibration.get("rule") == guarantee.RULE:
                raise ValueError(f"the calibration ({describe(calibration)}) certified no threshold for any criterion")
            raise ValueError(
                f"the calibration has no threshold within {calibration.get('points')} points "
                "of full depth for any criterion"
            )
        name = default["criterion"]
    chosen = (calibration.get("criteria") or {}).get(name)
    if not chosen:
        known = [n for n, c in (calibration.get("criteria") or {}).items() if c]
        raise ValueError(f"the calibration has no {name} threshold (calibrated: {', '.join(known) or 'none'})")
    return Criterion(name, float(chosen["threshold"]), regression=regression)


def check(calibration: Any, origin: str) -> dict:
    """The calibration if it has the shape `choose_thresholds` gives, else CheckpointError
    naming `origin` and the problem."""
    problem = None
    if not isinstance(calibration, dict):
        problem = f"a JSON object expected, got {type(calibration).__name__}"
    elif calibration.get("kind") == "tagging":  # rome_jax.exits.tag_sweeps.calibrate_tagging
        rules, default = calibration.get("rules"), calibration.get("default")
        if not isinstance(rules, dict):
            problem = "no 'rules' object"
        elif default is not None and (
            not isinstance(default, dict)
            or not isinstance(rules.get(default.get("rule")), dict)
            or rules[default["rule"]].get(default.get("criterion")) is None
        ):
            problem = "'default' names no calibrated rule and criterion"
    elif not isinstance(calibration.get("criteria"), dict):
        problem = "no 'criteria' object"
    else:
        for name, chosen in calibration["criteria"].items():
            if name not in CRITERIA:
                problem = f"unknown criterion {name!r}"
            elif chosen is not None and not (
                isinstance(chosen, dict) and isinstance(chosen.get("threshold"), (int, float))
            ):
                problem = f"criteria.{name} has no numeric threshold"
            if problem:
                break
        default = calibration.get("default")
        if (
            problem is None
            and default is not None
            and (not isinstance(default, dict) or calibration["criteria"].get(default.get("criterion")) is None)
        ):
            problem = "'default' names no calibrated criterion"
    if problem:
        raise CheckpointError(f"{origin}: not a rome_jax calibration ({problem})")
    return calibration


def read(path: str | os.PathLike) -> dict | None:
    """The calibration in `path`, None when there is no such file."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable calibration ({str(e).splitlines()[0][:120]})") from None
    return check(value, str(path))


def write(path: str | os.PathLike, calibration: Mapping[str, Any]) -> None:
    """Writes the calibration atomically."""
    files.write_json(path, dict(calibration))


def describe(calibration: Mapping[str, Any]) -> str:
    """The rule in a few words: "eps 0.02, delta 0.1 (consistency)" or "within 0.5 points (in-sample)"."""
    if calibration.get("rule") == guarantee.RULE:
        return f"{calibration.get('target')} eps {calibration.get('eps'):g}, delta {calibration.get('delta'):g}"
    return f"within {calibration.get('points')} points of full depth, in-sample"


def summary(calibration: Mapping[str, Any]) -> str:
    """One line per calibrated criterion, for terminal reports; the figures read on the
    test rows when the calibration was scored on rows that did not choose it."""
    test = calibration.get("test") or {}
    metric = calibration.get("metric") or test.get("metric") or "metric"
    if calibration.get("rule") == guarantee.RULE:
        head = (
            f"calibration ({describe(calibration)}; chosen on {calibration.get('num_examples')} rows"
            + (f", read on {test['num_examples']} others" if test else "")
            + "):"
        )
    else:
        head = f"calibration (within {calibration['points']:g} points of full depth "
        head += f"{calibration['full_depth_metric']:.4f} {metric}, in-sample):"
    lines = [head]
    scored = test.get("criteria") or {}
    for name, chosen in calibration["criteria"].items():
        if chosen is None:
            lines.append(f"  {name}: no threshold qualifies")
            continue
        figures = scored.get(name) or chosen
        value = figures.get(metric)
        shown = f"{metric} {value:.4f}, " if isinstance(value, (int, float)) else ""
        lines.append(f"  {name} {chosen['threshold']:g}: {shown}{figures['mean_layers']:.2f} layers")
    if test.get("full_depth_metric") is not None:
        lines.append(f"  full depth on the test rows: {metric} {test['full_depth_metric']:.4f}")
    default = calibration.get("default")
    lines.append(f"  default: {default['criterion']} {default['threshold']:g}" if default else "  default: none")
    return "\n".join(lines)


def split_rows(num_rows: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of `num_rows` rows: (calibration rows, test rows), each sorted,
    disjoint, together every row; `fraction` of them (rounded, at least 1) calibrate."""
    if not 0 < fraction < 1:
        raise ValueError(f"calibration fraction must be in (0, 1), not {fraction!r}")
    if num_rows < 2:
        raise ValueError(f"a calibration split needs at least 2 rows, got {num_rows}")
    count = min(max(int(round(num_rows * fraction)), 1), num_rows - 1)
    order = np.random.default_rng(seed).permutation(num_rows)
    return np.sort(order[:count]), np.sort(order[count:])


def calibrate_outputs(
    all_logits: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    target: str = "consistency",
    eps: float = 0.02,
    delta: float = 0.1,
    regression: bool = False,
    criteria: Sequence[str] | None = None,
    signals: Signals | None = None,
) -> dict:
    """Learn-then-Test thresholds (`guarantee.choose`) from every exit's outputs on the
    calibration rows: all_logits [E, N, C]; labels [N] (needed for target "risk");
    signals (each [E, N]) for the signal criteria named in `criteria`."""
    if target not in guarantee.TARGETS:
        raise ValueError(f"unknown calibration target {target!r}; known: {', '.join(guarantee.TARGETS)}")
    return guarantee.choose(
        all_logits,
        labels,
        target=target,
        eps=eps,
        delta=delta,
        regression=regression,
        criteria=criteria,
        signals=signals,
    )


def score(
    calibration: Mapping[str, Any],
    all_logits: np.ndarray,
    metric_fn: Callable[[np.ndarray], float],
    *,
    metric: str,
    signals: Signals | None = None,
) -> dict:
    """Each calibrated threshold read on other rows: {"num_examples", "metric",
    "full_depth_metric", "criteria": {name: {metric, "mean_layers", "layer_speedup",
    "consistency"}}}. all_logits [E, N, C]; metric_fn(logits [N, C]) -> the metric."""
    logits = np.asarray(all_logits, np.float32)
    num_exits = logits.shape[0]
    regression = bool(calibration.get("regression"))
    full = logits[-1][..., 0] if regression else logits[-1].argmax(-1)
    scored: dict[str, dict | None] = {}
    for name, chosen in calibration["criteria"].items():
        if chosen is None:
            scored[name] = None
            continue
        criterion = Criterion(name, float(chosen["threshold"]), regression=regression)
        exit_index, logits_at_exit = simulate(criterion, logits, signals=signals)
        at_exit = np.asarray(logits_at_exit)
        layers = float(np.asarray(exit_index).mean() + 1)
        answers = at_exit[..., 0] if regression else at_exit.argmax(-1)
        scored[name] = {
            metric: float(metric_fn(at_exit)),
            "mean_layers": layers,
            "layer_speedup": num_exits / layers,
            "consistency": float(np.mean(np.isclose(answers, full) if regression else answers == full)),
        }
    return {
        "num_examples": int(logits.shape[1]),
        "metric": metric,
        "full_depth_metric": float(metric_fn(logits[-1])),
        "criteria": scored,
    }


def no_saving_reason(calibration: Mapping[str, Any], all_logits: np.ndarray) -> str:
    """One line: no threshold saves layers, the likely reason and what to try.

    all_logits: every exit's outputs on the evaluated rows [E, N, C]."""
    logits = np.asarray(all_logits)
    head = f"no threshold saves layers ({describe(calibration)}): the model runs at full depth"
    if not calibration.get("regression") and logits.shape[0] > 1:
        answers = logits[:-1].argmax(-1)  # [E-1, N]
        counts = np.stack([np.bincount(row, minlength=logits.shape[-1]) for row in answers])
        one_class = counts.max(axis=1) / answers.shape[1] >= 0.95
        if one_class.any():
            stuck = np.flatnonzero(one_class) + 1
            shown = f"exit {stuck[0]}" if len(stuck) == 1 else f"exits {', '.join(map(str, stuck))}"
            return (
                f"{head}; {shown} answer one class for at least 95% of rows (the exits' pooled vectors "
                "carry little of the input there): try model.exit_pooling=mean, or train longer"
            )
    n = calibration.get("num_examples")
    eps, delta = calibration.get("eps"), calibration.get("delta")
    if calibration.get("rule") == guarantee.RULE and n and eps and delta:
        needed = math.ceil(math.log(delta / max(len(calibration.get("criteria") or {}), 1)) / math.log(1 - eps))
        if n < needed:
            return (
                f"{head}; {n} calibration rows are too few for eps {eps:g} (at least {needed} are needed "
                "even with no errors): calibrate on more rows, or allow a larger --eps"
            )
    return f"{head}; the early exits differ from full depth too often at every threshold: allow a larger --eps"
