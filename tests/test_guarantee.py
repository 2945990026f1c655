"""Learn-then-Test thresholds (rome_jax.exits.guarantee): the bounds against scipy, the
guarantee over many simulated calibration draws, and the rule over exits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rome_jax.exits import guarantee


@pytest.mark.parametrize("n", [1, 7, 50, 400, 3000])
@pytest.mark.parametrize("p", [0.001, 0.02, 0.3, 0.9])
def test_binomial_cdf_equals_scipy(n, p):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        assert guarantee.binomial_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(
    ("k", "n", "delta"), [(0, 100, 0.1), (3, 200, 0.1), (10, 872, 0.05), (40, 40, 0.1), (5, 9, 0.2)]
)
def test_clopper_pearson_upper_equals_the_beta_quantile(k, n, delta):
    expected = 1.0 if k == n else stats.beta.ppf(1 - delta, k + 1, n - k)
    assert guarantee.clopper_pearson_upper(k, n, delta) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("mean", "n", "eps"), [(0.0, 300, 0.02), (0.01, 500, 0.05), (0.04, 100, 0.05), (0.2, 50, 0.1)])
def test_hoeffding_bentkus_pvalue_against_its_formula(mean, n, eps):
    a = min(mean, eps)
    h1 = (a * math.log(a / eps) if a > 0 else 0.0) + (1 - a) * math.log((1 - a) / (1 - eps))
    expected = min(1.0, math.exp(-n * h1), math.e * stats.binom.cdf(math.ceil(n * mean), n, eps))
    assert guarantee.hoeffding_bentkus_pvalue(mean, n, eps) == pytest.approx(expected, rel=1e-9)


def test_fixed_sequence_stops_at_the_first_hypothesis_it_cannot_reject():
    assert guarantee.fixed_sequence([0.01, 0.05, 0.2, 0.01], 0.1) == 2
    assert guarantee.fixed_sequence([0.5, 0.01], 0.1) == 0
    assert guarantee.fixed_sequence([], 0.1) == 0
    with pytest.raises(ValueError, match="delta"):
        guarantee.fixed_sequence([0.1], 1.5)


def test_losses_by_target():
    early = np.array([[0, 1, 1, 0]])
    full = np.array([0, 0, 1, 1])
    labels = np.array([0, 1, 1, 1])
    np.testing.assert_array_equal(guarantee.losses("consistency", early, full), [[0, 1, 0, 1]])
    # risk: early wrong while full depth was right (row 4: both... early 0 wrong, full 1 right)
    np.testing.assert_array_equal(guarantee.losses("risk", early, full, labels), [[0, 0, 0, 1]])
    with pytest.raises(ValueError, match="needs labels"):
        guarantee.losses("risk", early, full)
    reg = guarantee.losses(
        "risk", np.array([[1.0, 2.0]]), np.array([1.5, 2.0]), np.array([1.0, 4.0]), regression=True, scale=2.0
    )
    np.testing.assert_allclose(reg, [[0.0, 0.0]])  # no worse than full depth
    reg = guarantee.losses("consistency", np.array([[1.0, 5.0]]), np.array([1.5, 2.0]), regression=True, scale=2.0)
    np.testing.assert_allclose(reg, [[0.25, 1.0]])  # clipped at 1


def test_the_guarantee_holds_over_many_calibration_draws():
    """Nested 0/1 losses with known risks r_j (loss_ij = 1[U_i < r_j]); over 2,000 draws of
    n = 300 rows, the share of draws that certify a threshold whose true risk exceeds eps
    stays within delta plus binomial noise."""
    rng = np.random.default_rng(0)
    risks = np.linspace(0.0, 0.12, 25)[1:]
    eps, delta, n, draws = 0.05, 0.1, 300, 2000
    failures = 0
    certified_any = 0
    for _ in range(draws):
        u = rng.random(n)
        loss = (u[None, :] < risks[:, None]).astype(float)
        k = guarantee.fixed_sequence(guarantee.pvalues(loss, eps), delta)
        certified_any += k > 0
        failures += k > 0 and risks[k - 1] > eps
    assert certified_any > draws / 2  # the test has power: it does certify something
    assert failures / draws <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)


def _synthetic_exits(rng, n):
    """Two exits over two classes: exit 1 has confidence margin m ~ U(0, 4) and agrees with
    the final exit with probability 1 - 0.3 exp(-m), so confident rows rarely disagree."""
    margin = rng.uniform(0, 4, n)
    final = rng.integers(0, 2, n)
    agree = rng.random(n) > 0.3 * np.exp(-margin)
    first = np.where(agree, final, 1 - final)
    logits = np.zeros((2, n, 2), np.float32)
    logits[0, np.arange(n), first] = margin
    logits[1, np.arange(n), final] = 5.0
    return logits


def test_choose_keeps_its_promise_on_new_rows():
    rng = np.random.default_rng(1)
    test = _synthetic_exits(rng, 200_000)
    eps, delta, draws = 0.05, 0.1, 60
    failures, layers = 0, []
    for _ in range(draws):
        calibration = guarantee.choose(
            _synthetic_exits(rng, 500), target="consistency", eps=eps, delta=delta, criteria=["entropy"]
        )
        chosen = calibration["criteria"]["entropy"]
        if chosen is None:
            continue
        layers.append(chosen["mean_layers"])
        exit_index, at_exit = guarantee.simulate_sweep("entropy", [chosen["threshold"]], test)
        disagreement = float((np.asarray(at_exit)[0].argmax(-1) != test[-1].argmax(-1)).mean())
        failures += disagreement > eps
    assert layers and np.mean(layers) < 1.9  # it saves layers
    assert failures / draws <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)


def test_choose_certifies_nothing_when_no_threshold_qualifies():
    rng = np.random.default_rng(2)
    logits = _synthetic_exits(rng, 300)
    logits[0] = logits[1][:, ::-1]  # exit 1 always disagrees with the final exit
    calibration = guarantee.choose(logits, target="consistency", eps=0.02, delta=0.1)
    assert all(chosen is None for chosen in calibration["criteria"].values())
    assert calibration["default"] is None


def test_choose_default_is_the_certified_criterion_that_saves_most():
    rng = np.random.default_rng(3)
    calibration = guarantee.choose(_synthetic_exits(rng, 2000), target="consistency", eps=0.05, delta=0.1)
    fitting = {n: c["mean_layers"] for n, c in calibration["criteria"].items() if c}
    assert fitting
    assert calibration["default"]["criterion"] == min(fitting, key=fitting.get)


def test_choose_risk_needs_labels_and_regression_uses_patience():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="needs labels"):
        guarantee.choose(_synthetic_exits(rng, 50), target="risk")
    scores = rng.normal(size=(4, 400, 1)).astype(np.float32) * 0.01 + 2.0  # exits that all agree
    labels = rng.uniform(0, 5, 400)
    calibration = guarantee.choose(scores, labels, target="risk", eps=0.05, delta=0.1, regression=True)
    assert set(calibration["criteria"]) == {"patience", "fixed"}
    assert calibration["criteria"]["fixed"]["threshold"] == 1.0  # exit 1 is as good as full depth
    assert calibration["bound"] == "hoeffding_bentkus"


def test_threshold_grid_follows_the_observed_values():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(6, 100, 2)).astype(np.float32) * 0.1  # entropies near ln 2
    grid = guarantee.threshold_grid("entropy", logits)
    assert grid[0] == 0.0 and grid == sorted(grid)
    inside = [t for t in grid[1:-1]]
    assert min(inside) > 0.6 and max(inside) <= math.log(2) + 1e-6  # where the model's confidence lives
    assert guarantee.threshold_grid("patience", logits) == [5.0, 4.0, 3.0, 2.0, 1.0]
    assert guarantee.threshold_grid("max_prob", logits)[0] == 1.0
