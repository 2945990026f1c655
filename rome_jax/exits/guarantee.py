"""Exit thresholds with a finite-sample guarantee: Learn-then-Test (LTT) with fixed-sequence testing.

Angelopoulos, Bates, Candès, Jordan & Lei (2021), "Learn then Test: Calibrating
Predictive Algorithms to Achieve Risk Control", as CALM (Schuster et al., 2022) uses it
for early exit. For one criterion, a grid of thresholds `lambda_1, ..., lambda_S` is
ordered from the most conservative (exits latest) to the most aggressive. Each
threshold has a risk `R(lambda) = E[L(lambda)]` on new examples, with a per-example
loss `L` in [0, 1]. The null hypothesis `H_j: R(lambda_j) > eps` is tested with a
p-value computed on `n` calibration examples; fixed-sequence testing rejects
`H_1, H_2, ...` in order while `p_j <= delta` and stops at the first that it cannot
reject. With probability at least `1 - delta` over the calibration draw, every
rejected threshold has `R <= eps` (the family-wise error rate is at most delta),
assuming the calibration and the new examples are exchangeable (e.g. i.i.d. from the
same distribution). Any rejected threshold may then be chosen, e.g. the one with the
fewest mean layers on the calibration rows.

Several criteria are tested with delta split between them (Bonferroni: `delta / K`
each), so the criterion that saves the most layers may be chosen afterwards and the
guarantee still holds for the choice.

Losses (`losses`), per example at one threshold:
- consistency: `1[early answer != full-depth answer]` (the argmax; no labels needed);
  for regression `min(1, |early - full| / scale)`;
- risk, classification: `1[early wrong and full-depth right]`; the accuracy drop
  against full depth, `E[1[early wrong]] - E[1[full wrong]]`, is at most this;
- risk, regression: `min(1, max(0, |early - y| - |full - y|) / scale)`: the increase of
  the absolute error over full depth, in units of `scale` (the label range).

P-values: the exact binomial tail `P(Binomial(n, eps) <= k)` for 0/1 losses
(`binomial_pvalue`; equivalent to comparing the Clopper-Pearson upper bound with eps),
and the Hoeffding-Bentkus p-value for losses in [0, 1] (`hoeffding_bentkus_pvalue`).
Pure numpy/math: no scipy needed at run time (the tests check against scipy).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from rome_jax.exits.criteria import DEFAULT_TOLERANCE, SIGNAL_CRITERIA, Signals, simulate_sweep

TARGETS = ("consistency", "risk")
"""What the guarantee bounds: disagreement with full depth, or the metric's drop."""


def _log_binomial_pmf(k: np.ndarray, n: int, p: float) -> np.ndarray:
    log_comb = math.lgamma(n + 1) - np.vectorize(math.lgamma)(k + 1) - np.vectorize(math.lgamma)(n - k + 1)
    return log_comb + k * math.log(p) + (n - k) * math.log1p(-p)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """`P(Binomial(n, p) <= k)`, exact (summed in log space)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    terms = _log_binomial_pmf(np.arange(k + 1, dtype=np.float64), n, p)
    top = float(terms.max())
    return float(min(1.0, math.exp(top) * float(np.exp(terms - top).sum())))


def binomial_pvalue(num_losses: int, n: int, eps: float) -> float:
    """The p-value of `H: risk > eps` after `num_losses` losses (0/1) among `n` examples:
    `P(Binomial(n, eps) <= num_losses)`. Small when far fewer losses than `eps * n`."""
    _check_eps(eps)
    return binomial_cdf(int(num_losses), int(n), eps)


def clopper_pearson_upper(num_losses: int, n: int, delta: float) -> float:
    """The one-sided `1 - delta` Clopper-Pearson upper bound on a 0/1 risk: the largest
    `p` with `P(Binomial(n, p) <= num_losses) >= delta` (bisection; 1.0 when k = n)."""
    if num_losses >= n:
        return 1.0
    low, high = num_losses / n if n else 0.0, 1.0
    for _ in range(200):
        mid = (low + high) / 2
        if binomial_cdf(num_losses, n, mid) >= delta:
            low = mid
        else:
            high = mid
    return low


def _kl_bernoulli(a: float, b: float) -> float:
    """`h1(a, b)` of Hoeffding's inequality: the KL divergence of Bernoulli(a) from Bernoulli(b)."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hoeffding_bentkus_pvalue(mean_loss: float, n: int, eps: float) -> float:
    """The Hoeffding-Bentkus p-value of `H: risk > eps` for losses in [0, 1] with empirical
    mean `mean_loss` over `n` examples (Bates et al., 2021, Prop. 3):
    `min(exp(-n h1(min(mean, eps), eps)), e * P(Binomial(n, eps) <= ceil(n * mean)))`."""
    _check_eps(eps)
    if n <= 0:
        return 1.0
    hoeffding = math.exp(-n * _kl_bernoulli(min(mean_loss, eps), eps))
    bentkus = math.e * binomial_cdf(math.ceil(n * mean_loss - 1e-9), n, eps)
    return float(min(1.0, hoeffding, bentkus))


def pvalues(loss_matrix: np.ndarray, eps: float, *, binary: bool | None = None) -> np.ndarray:
    """The p-value of `H_j: risk_j > eps` for each row of `loss_matrix` [S, N] (losses in
    [0, 1]): the exact binomial one when every loss is 0 or 1 (`binary`), else
    Hoeffding-Bentkus. -> [S]."""
    losses = np.asarray(loss_matrix, np.float64)
    if losses.ndim != 2:
        raise ValueError(f"loss_matrix must be [thresholds, examples], got shape {losses.shape}")
    if losses.size and (losses.min() < 0 or losses.max() > 1):
        raise ValueError("losses must lie in [0, 1]")
    n = losses.shape[1]
    if binary is None:
        binary = bool(np.all((losses == 0) | (losses == 1)))
    if binary:
        return np.array([binomial_pvalue(int(round(row.sum())), n, eps) for row in losses])
    return np.array([hoeffding_bentkus_pvalue(float(row.mean()) if n else 1.0, n, eps) for row in losses])


def fixed_sequence(pvals: Sequence[float] | np.ndarray, delta: float) -> int:
    """How many hypotheses fixed-sequence testing rejects: the length of the leading run
    of `p <= delta` (the hypotheses in the order given, most conservative first)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), not {delta!r}")
    count = 0
    for p in pvals:
        if p > delta:
            break
        count += 1
    return count


def losses(
    target: str,
    early: np.ndarray,
    full: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    regression: bool = False,
    scale: float = 1.0,
) -> np.ndarray:
    """Per-example losses in [0, 1] (see the module doc).

    early: the answers at exit, [S, N] class ids (classification) or scores
      (regression), one row per threshold; full: the full-depth answers [N];
    labels: [N], needed for `risk`; scale: regression's unit (the label range).
    -> [S, N] float64.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    early = np.asarray(early)
    full = np.asarray(full)
    if target == "risk" and labels is None:
        raise ValueError("the risk target needs labels; the consistency target does not")
    if regression:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, not {scale!r}")
        early, full = early.astype(np.float64), full.astype(np.float64)
        if target == "consistency":
            return np.minimum(1.0, np.abs(early - full[None]) / scale)
        y = np.asarray(labels, np.float64)
        worse = np.abs(early - y[None]) - np.abs(full - y)[None]
        return np.minimum(1.0, np.maximum(0.0, worse) / scale)
    if target == "consistency":
        return (early != full[None]).astype(np.float64)
    y = np.asarray(labels)
    return ((early != y[None]) & (full == y)[None]).astype(np.float64)


def _check_eps(eps: float) -> None:
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), not {eps!r}")


# ------------------------------------------------------------------ the rule over exits

GRID_SIZE = 64
"""Thresholds per criterion in a grid read from the observed values (`threshold_grid`)."""

LARGER_IS_CONSERVATIVE = ("max_prob", "patience", "fixed", "lte", "saturation", "meta")
"""Criteria whose larger thresholds exit later (the others exit later when smaller)."""


def conservative_first(name: str, thresholds: Sequence[float]) -> list[float]:
    """The thresholds sorted from the one that exits latest to the one that exits earliest."""
    return sorted({float(t) for t in thresholds}, reverse=name in LARGER_IS_CONSERVATIVE)


def threshold_grid(
    name: str, all_logits: np.ndarray, *, size: int = GRID_SIZE, signals: Signals | None = None
) -> list[float]:
    """A grid of thresholds where the criterion's values on these examples lie, most
    conservative first: quantiles of the statistic over exits 1..E-1 (entropy,
    normalised entropy, max-probability; lte, meta and saturation from `signals`,
    each [E, N]), or every patience / fixed exit.

    all_logits: [E, N, C]. The grid starts with a threshold that exits nobody early
    (entropy 0, max-probability 1) and ends with one that exits almost everybody at
    the first exit, so it spans the whole range of the model's confidence."""
    logits = np.asarray(all_logits, np.float64)
    num_exits = logits.shape[0]
    if name in SIGNAL_CRITERIA:
        if signals is None:
            raise ValueError(f"the {name!r} criterion's grid is read from the exits' signals: pass signals=")
        values = np.asarray(getattr(signals, name), np.float64)
        values = (values[:-1] if num_exits > 1 else values).ravel()
        low, high = (-1.0, 1.0) if name == "saturation" else (0.0, 1.0)
        above = min(float(values.max()) + 1e-6, high)  # exits nobody early (unless a value is the bound)
        grid = np.quantile(values, np.linspace(1.0, 0.0, size))
        return conservative_first(name, [above, *np.clip(grid, low, high)])
    if name == "patience":
        return [float(t) for t in range(max(num_exits - 1, 1), 0, -1)]
    if name == "fixed":
        return [float(t) for t in range(num_exits, 0, -1)]
    early = logits[:-1] if num_exits > 1 else logits
    shifted = early - early.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    probs = np.exp(log_probs)
    if name == "max_prob":
        values = probs.max(axis=-1).ravel()
        grid = np.quantile(values, np.linspace(1.0, 0.0, size))
        return conservative_first(name, [1.0, *np.clip(grid, 0.0, 1.0)])
    entropy = -(probs * log_probs).sum(axis=-1).ravel()
    if name == "normalized_entropy":
        entropy = entropy / math.log(logits.shape[-1])
    elif name != "entropy":
        raise ValueError(f"no threshold grid for criterion {name!r}")
    grid = np.quantile(entropy, np.linspace(0.0, 1.0, size))
    top = float(entropy.max()) * (1 + 1e-6) + 1e-9  # strictly above every value: all exit at exit 1
    return conservative_first(name, [0.0, *np.maximum(grid, 0.0), top])


RULE = "ltt"
CONFIDENCE_CRITERIA = ("entropy", "normalized_entropy", "max_prob")
"""The criteria whose thresholds are read from the exits' confidence values."""
CLASSIFICATION_CRITERIA = ("entropy", "normalized_entropy", "max_prob", "patience", "fixed")
REGRESSION_CRITERIA = ("patience", "fixed")


def _answers(logits_at_exit: np.ndarray, regression: bool) -> np.ndarray:
    """[..., C] logits -> [...] answers: the class id, or the regression score."""
    values = np.asarray(logits_at_exit)
    return values[..., 0].astype(np.float64) if regression else values.argmax(axis=-1)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One criterion's thresholds replayed on some rows.

    thresholds [S] (most conservative first); exit_index [S, N] (0-based exits);
    answers [S, N] (class ids, or regression scores)."""

    name: str
    thresholds: tuple[float, ...]
    exit_index: np.ndarray
    answers: np.ndarray

    @property
    def mean_layers(self) -> np.ndarray:
        """[S]: the mean number of layers run per example at each threshold."""
        return self.exit_index.astype(np.float64).mean(axis=1) + 1


def sweep(
    name: str,
    thresholds: Sequence[float],
    all_logits: np.ndarray,
    *,
    regression: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    signals: Signals | None = None,
) -> Sweep:
    """`criteria.simulate_sweep` of the thresholds (sorted most conservative first) on
    all_logits [E, N, C] (and `signals`, each [E, N], for the signal criteria)."""
    grid = conservative_first(name, thresholds)
    exit_index, at_exit = simulate_sweep(
        name, grid, all_logits, regression=regression, tolerance=tolerance, signals=signals
    )
    return Sweep(name, tuple(grid), np.asarray(exit_index), _answers(np.asarray(at_exit), regression))


def certify(
    result: Sweep,
    full: np.ndarray,
    labels: np.ndarray | None,
    *,
    target: str,
    eps: float,
    delta: float,
    num_exits: int,
    regression: bool = False,
    scale: float = 1.0,
) -> dict | None:
    """The certified threshold of one criterion with the fewest mean layers, or None.

    Fixed-sequence testing at level `delta` over the thresholds that exit somebody early
    (the others have zero risk and need no test), most conservative first; among the
    rejected nulls, the fewest mean layers (ties: the more conservative threshold).
    full: the full-depth answers [N]; labels [N] or None."""
    loss = losses(target, result.answers, full, labels, regression=regression, scale=scale)
    layers = result.mean_layers
    saves = np.flatnonzero(layers < num_exits - 1e-9)
    pvals = pvalues(loss[saves], eps, binary=not regression)
    certified = fixed_sequence(pvals, delta)
    if certified == 0:
        return None
    position = min(range(certified), key=lambda i: (round(float(layers[saves[i]]), 9), i))
    best = int(saves[position])
    return {
        "threshold": float(result.thresholds[best]),
        "mean_layers": float(layers[best]),
        "layer_speedup": float(num_exits / layers[best]),
        "calibration_risk": float(loss[best].mean()),
        "pvalue": float(pvals[position]),
    }


def default_of(criteria: dict[str, dict | None]) -> dict | None:
    """{"criterion", "threshold"} of the calibrated criterion with the fewest mean layers
    (ties: the first in the dict's order), or None when none was calibrated."""
    fitting = [name for name, chosen in criteria.items() if chosen is not None]
    if not fitting:
        return None
    best = min(fitting, key=lambda name: round(criteria[name]["mean_layers"], 9))  # type: ignore[index]
    return {"criterion": best, "threshold": criteria[best]["threshold"]}  # type: ignore[index]


def choose(
    all_logits: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    target: str = "consistency",
    eps: float = 0.02,
    delta: float = 0.1,
    regression: bool = False,
    criteria: Sequence[str] | None = None,
    grids: dict[str, Sequence[float]] | None = None,
    scale: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    signals: Signals | None = None,
) -> dict:
    """Per criterion, the threshold with the fewest mean layers among those LTT certifies
    (risk <= eps with probability >= 1 - delta, delta split over the criteria), and the
    default: the certified criterion that saves the most layers.

    all_logits: every exit's outputs on the calibration rows, [E, N, C] (C = 1 for
      regression); labels: [N] or None (consistency needs none; risk needs them);
    grids: thresholds per criterion (default: `threshold_grid` of these rows);
    signals: the exits' signals on these rows (each [E, N]), for lte, saturation and
      meta (which `criteria` must name: they are not among the defaults);
    scale: regression's loss unit (default: the labels' range, else the full-depth
      scores' range).
    -> the calibration dict of `rome_jax.exits.calibration` with `rule: "ltt"`,
    `target`, `eps`, `delta`, `num_examples`, and per criterion the threshold, its
    mean layers and layer speed-up, its empirical risk on these rows and its p-value
    (None for a criterion with no certified threshold that exits anybody early).
    """
    logits = np.asarray(all_logits, np.float32)
    if logits.ndim != 3:
        raise ValueError(f"all_logits must be [exits, examples, outputs], got shape {logits.shape}")
    num_exits, n, _ = logits.shape
    if n == 0:
        raise ValueError("calibration needs at least one example")
    if target == "risk" and labels is None:
        raise ValueError("the risk target needs labels; calibrate on unlabelled rows with target='consistency'")
    names = list(criteria or (REGRESSION_CRITERIA if regression else CLASSIFICATION_CRITERIA))
    if regression and scale is None:
        source = np.asarray(labels if labels is not None else logits[-1, :, 0], np.float64)
        scale = float(source.max() - source.min()) or 1.0
    full = _answers(logits[-1], regression)
    chosen: dict[str, dict | None] = {}
    for name in names:
        grid = grids[name] if grids and name in grids else threshold_grid(name, logits, signals=signals)
        result = sweep(name, grid, logits, regression=regression, tolerance=tolerance, signals=signals)
        chosen[name] = certify(
            result,
            full,
            labels,
            target=target,
            eps=eps,
            delta=delta / len(names),
            num_exits=num_exits,
            regression=regression,
            scale=scale or 1.0,
        )
    return {
        "rule": RULE,
        "target": target,
        "eps": float(eps),
        "delta": float(delta),
        "bound": "hoeffding_bentkus" if regression else "binomial",
        "scale": scale if regression else None,
        "num_layers": num_exits,
        "regression": bool(regression),
        "num_examples": int(n),
        "criteria": chosen,
        "default": default_of(chosen),
    }
