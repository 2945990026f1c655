"""Early-exit thresholds chosen on dev: the fewest layers within a tolerance of full depth.

The rule (`choose_thresholds`), per criterion, over the sweep rows of
`evaluation.evaluate_split` (each {criterion, threshold, <metric>, mean_layers}):

- candidates: the thresholds whose dev metric is at least the full-depth (final
  exit) metric minus `points` percentage points (`points=0.5`: 0.849 -> >= 0.844);
- the choice: the candidate with the fewest mean layers; ties (the same mean
  layers) go to the more conservative threshold, the one that exits later: the
  lower entropy / normalised-entropy bound, the higher max-probability or
  patience or fixed exit;
- a criterion with no candidate is recorded as None (with its best metric).

The result is a JSON-able dict (`calibrate` adds where it was chosen):

    {"rule": "...", "points": 0.5, "metric": "accuracy", "full_depth_metric": 0.849,
     "num_layers": 6, "regression": false,
     "criteria": {"entropy": {"threshold": 0.5, "accuracy": 0.849, "mean_layers": 4.41,
                              "layer_speedup": 1.36}, "patience": {...}, "max_prob": null},
     "default": {"criterion": "entropy", "threshold": 0.5},
     "task": "sst2", "split": "dev", "num_examples": 872, "max_length": 64}

`default` is the first criterion of `PREFERENCE` that has a choice (entropy first
for classification; regression models exit by patience): what
`MultiExitModel.predict` uses when it carries a calibration. `FILE_NAME` is the
file stored beside an HF model directory (`save_pretrained` writes it,
`load_pretrained` reads it); a run keeps the same dict as `WORKDIR/calibration.json`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from rome_jax.errors import CheckpointError
from rome_jax.exits.criteria import CRITERIA, Criterion

FILE_NAME = "rome_jax_calibration.json"
"""The calibration beside a model directory's weights."""

RUN_FILE_NAME = "calibration.json"
"""The calibration in a train.py workdir."""

PREFERENCE = ("entropy", "normalized_entropy", "max_prob", "patience", "fixed")
"""The order in which a calibrated criterion becomes the default."""

RULE = (
    "per criterion, the threshold with the fewest mean layers whose dev metric is at least the "
    "full-depth metric minus `points` percentage points; ties: the more conservative threshold"
)

# Thresholds that exit later when larger (the others exit later when smaller).
_LARGER_IS_CONSERVATIVE = ("max_prob", "patience", "fixed")


def _conservative_key(name: str, threshold: float) -> float:
    """Sorts the more conservative threshold first."""
    return -threshold if name in _LARGER_IS_CONSERVATIVE else threshold


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
    default = next(
        ({"criterion": n, "threshold": criteria[n]["threshold"]} for n in PREFERENCE if criteria.get(n) is not None),
        None,
    )
    return {
        "rule": RULE,
        "points": float(points),
        "metric": metric,
        "full_depth_metric": float(full_metric),
        "num_layers": num_layers,
        "regression": bool(regression),
        "criteria": criteria,
        "default": default,
    }


def calibrate(results: Mapping[str, Any], points: float = 0.5, *, regression: bool | None = None) -> dict:
    """`choose_thresholds` on one `evaluation.evaluate_split` result (its sweep and
    its final exit's metric), with the task, split, examples and max_length added.

    regression: whether the model has one output; None: read from the sweep (no
    entropy or probability criterion in it, as `evaluate_split` leaves them out
    for regression)."""
    metric = results["metric"]
    if regression is None:
        named = {r.get("criterion") for r in results["sweep"]}
        regression = bool(named) and not named & {"entropy", "max_prob", "normalized_entropy"}
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
    from rome_jax import files

    files.write_json(path, dict(calibration))


def summary(calibration: Mapping[str, Any]) -> str:
    """One line per calibrated criterion, for terminal reports."""
    metric = calibration["metric"]
    lines = [
        f"calibration (within {calibration['points']:g} points of full depth "
        f"{calibration['full_depth_metric']:.4f} {metric}):"
    ]
    for name, chosen in calibration["criteria"].items():
        if chosen is None:
            lines.append(f"  {name}: no threshold within {calibration['points']:g} points")
        else:
            lines.append(
                f"  {name} {chosen['threshold']:g}: {metric} {chosen[metric]:.4f}, {chosen['mean_layers']:.2f} layers"
            )
    default = calibration.get("default")
    lines.append(f"  default: {default['criterion']} {default['threshold']:g}" if default else "  default: none")
    return "\n".join(lines)
