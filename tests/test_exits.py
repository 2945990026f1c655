"""Exit criteria against hand-computed numpy, and the simulation over all exits."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rome_jax.exits import criteria as exits
from rome_jax.exits.criteria import Criterion, init_state, simulate, simulate_sweep
from rome_jax.exits.criteria import step as _step

step = jax.jit(_step, static_argnums=0)  # pure jnp: jits as is (and eager dispatch is slow)


def np_entropy(logits):
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)


def np_softmax(logits):
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def reference_exit(criterion, all_logits):
    """A plain per-example loop over exits, written from the papers' descriptions
    (PABEE's counter as in its code): -> exit_index [B]."""
    E, B, C = all_logits.shape
    out = np.full(B, E - 1)
    for b in range(B):
        counter, previous = 0, None
        for i in range(E):
            z = all_logits[i, b]
            if criterion.name == "entropy":
                passed = np_entropy(z) < criterion.threshold
            elif criterion.name == "max_prob":
                passed = np_softmax(z).max() >= criterion.threshold
            elif criterion.name == "normalized_entropy":
                passed = np_entropy(z) / math.log(C) < criterion.threshold
            elif criterion.name == "fixed":
                passed = i + 1 >= criterion.threshold
            else:
                if criterion.regression:
                    same = previous is not None and abs(z[0] - previous[0]) < criterion.tolerance
                else:
                    same = previous is not None and z.argmax() == previous.argmax()
                counter = counter + 1 if same else 0
                previous = z
                passed = counter == criterion.threshold
            if passed:
                out[b] = i
                break
    return out


def test_entropy_values_by_hand():
    logits = [np.array(z, np.float32) for z in ([0.0, 0.0], [2.0, 0.0], [0.0] * 4, [30.0, 0.0, 0.0])]
    p = 1 / (1 + math.exp(-2))
    expected = [math.log(2), -(p * math.log(p) + (1 - p) * math.log(1 - p)), math.log(4), 0.0]
    got = [float(exits.entropy(jnp.asarray(row))) for row in logits]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(float(exits.max_prob(jnp.asarray(logits[1]))), p, rtol=1e-6)
    np.testing.assert_allclose(float(exits.normalized_entropy(jnp.asarray(logits[2]))), 1.0, rtol=1e-6)


def test_entropy_and_max_prob_steps():
    logits = jnp.array([[2.0, 0.0], [0.1, 0.0]])
    h = np_entropy(np.asarray(logits))
    state = init_state(None, 2, 2)
    _, exit_now = step(Criterion("entropy", float(h[0]) + 1e-3), state, logits, 0)
    assert exit_now.tolist() == [True, False]
    _, exit_now = step(Criterion("entropy", float(h[0]) - 1e-3), state, logits, 0)
    assert exit_now.tolist() == [False, False]
    _, exit_now = step(Criterion("max_prob", 0.8), state, logits, 0)  # p = 0.881, 0.525
    assert exit_now.tolist() == [True, False]


def _dominant(num_classes, target_normalized_entropy):
    """Logits: one class with probability p, the rest uniform, with H / log C = target."""

    def norm_h(p):
        rest = (1 - p) / (num_classes - 1)
        return -(p * math.log(p) + (num_classes - 1) * rest * math.log(rest)) / math.log(num_classes)

    lo, hi = 1.0 / num_classes + 1e-9, 1 - 1e-9  # norm_h decreases from 1 to 0 on this range
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if norm_h(mid) > target_normalized_entropy else (lo, mid)
    p = (lo + hi) / 2
    rest = (1 - p) / (num_classes - 1)
    return np.log(np.array([p] + [rest] * (num_classes - 1), np.float32))


def test_normalized_entropy_same_speed_for_2_and_40_classes():
    two, forty = _dominant(2, 0.3), _dominant(40, 0.3)
    for logits in (two, forty):
        z = jnp.asarray(logits)
        np.testing.assert_allclose(float(exits.normalized_entropy(z)), 0.3, atol=1e-5)
        np.testing.assert_allclose(
            float(exits.normalized_entropy(z)), np_entropy(logits) / math.log(len(logits)), rtol=1e-5
        )
    decide = lambda c, z: bool(step(c, init_state(c, 1, len(z)), jnp.asarray(z)[None], 0)[1][0])
    for speed, expected in ((0.31, True), (0.29, False)):
        c = Criterion("normalized_entropy", speed)
        assert decide(c, two) is expected and decide(c, forty) is expected
    # The raw entropy threshold would treat them differently: H = 0.3 ln 2 vs 0.3 ln 40.
    c = Criterion("entropy", 0.3 * math.log(2) + 0.01)
    assert decide(c, two) and not decide(c, forty)


def _one_hot_sequence(predictions, num_classes=3):
    """[E] predicted classes -> logits [E, 1, C] with that argmax."""
    return (np.eye(num_classes, dtype=np.float32)[predictions] * 2.0)[:, None, :]


@pytest.mark.parametrize(
    "predictions, patience, expected",
    [
        ([0, 0, 1, 1, 1, 2], 1, 1),  # exits 1 and 2 agree: t=1 stops at the 2nd exit
        ([0, 1, 1, 1, 2, 2], 2, 3),  # counter: 0, 0, 1, 2 -> stop at the 4th exit
        ([0, 1, 0, 1, 0, 1], 1, 5),  # never stable: the last exit answers
        ([2, 2, 2, 2, 2, 2], 3, 3),
        ([2, 2, 0, 2, 2, 2], 3, 5),  # a change resets the counter
        ([2, 2, 2, 0, 0, 0], 5, 5),  # t larger than reachable: last exit
    ],
)
def test_patience_counting(predictions, patience, expected):
    all_logits = _one_hot_sequence(predictions)
    c = Criterion("patience", patience)
    exit_index, answer = simulate(c, all_logits)
    assert int(exit_index[0]) == expected == reference_exit(c, all_logits)[0]
    np.testing.assert_array_equal(answer[0], all_logits[expected, 0])


def test_patience_counter_state():
    c = Criterion("patience", 2)
    state = init_state(c, 1, 3)
    counters = []
    for i, pred in enumerate([0, 0, 0, 1, 1]):
        state, exit_now = step(c, state, jnp.asarray(_one_hot_sequence([pred])[0]), i)
        counters.append((int(state.counter[0]), bool(exit_now[0])))
    assert counters == [(0, False), (1, False), (2, True), (0, False), (1, False)]


def test_regression_patience_uses_tolerance():
    outputs = np.array([1.0, 1.5, 1.55, 1.58, 3.0, 3.01], np.float32)[:, None, None]
    assert int(simulate(Criterion("patience", 2, regression=True, tolerance=0.1), outputs)[0][0]) == 3
    assert int(simulate(Criterion("patience", 1, regression=True, tolerance=0.01), outputs)[0][0]) == 5
    assert int(simulate(Criterion("patience", 1, regression=True, tolerance=0.6), outputs)[0][0]) == 1
    assert Criterion("patience", 1, regression=True).tolerance == exits.DEFAULT_TOLERANCE


def test_fixed_exit_and_last_exit_answers():
    all_logits = np.random.RandomState(0).randn(4, 3, 2).astype(np.float32)
    assert simulate(Criterion("fixed", 2), all_logits)[0].tolist() == [1, 1, 1]
    assert simulate(Criterion("fixed", 4), all_logits)[0].tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="fixed exit 9 is beyond the model's 4 exits"):
        simulate(Criterion("fixed", 9), all_logits)  # would silently answer at exit 4
    assert simulate(Criterion("entropy", 0.0), all_logits)[0].tolist() == [3, 3, 3]  # H < 0 never
    assert simulate(Criterion("max_prob", 0.0), all_logits)[0].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(name="entropy", threshold=0.1, regression=True),
        dict(name="max_prob", threshold=0.9, regression=True),
        dict(name="normalized_entropy", threshold=0.1, regression=True),
        dict(name="speed", threshold=0.1),
        dict(name="patience", threshold=0),
        dict(name="patience", threshold=1.5),
        dict(name="fixed", threshold=0),
        dict(name="max_prob", threshold=1.5),
        dict(name="patience", threshold=2, tolerance=-1.0),
        # thresholds under which nothing would ever exit early, or that are not numbers
        dict(name="entropy", threshold=-0.5),
        dict(name="normalized_entropy", threshold=-0.1),
        dict(name="entropy", threshold=float("nan")),
        dict(name="entropy", threshold=None),
        dict(name="entropy", threshold="0.1"),
        dict(name="max_prob", threshold=True),
        dict(name="patience", threshold=float("inf")),
    ],
)
def test_invalid_criteria_raise(kwargs):
    with pytest.raises(ValueError, match="threshold|unknown|tolerance|needs class probabilities"):
        Criterion(**kwargs)


def test_simulate_names_what_does_not_fit():
    all_logits = np.zeros((4, 3, 2), np.float32)
    with pytest.raises(ValueError, match=r"all_logits must be \[exits, batch, classes\], got shape \(3, 2\)"):
        simulate(Criterion("entropy", 0.1), all_logits[0])
    with pytest.raises(ValueError, match=r"example_mask must be \[batch\] = \(3,\), got shape \(5,\)"):
        simulate(Criterion("entropy", 0.1), all_logits, np.ones(5))
    with pytest.raises(ValueError, match="at least one threshold"):
        simulate_sweep("entropy", [], all_logits)
    with pytest.raises(TypeError, match="expected an exits.Criterion"):
        simulate("entropy", all_logits)


def test_criterion_must_fit_the_model_outputs():
    one_output = np.zeros((3, 2, 1), np.float32)
    for bad in (Criterion("entropy", 0.1), Criterion("max_prob", 0.9), Criterion("patience", 2)):
        with pytest.raises(ValueError):
            simulate(bad, one_output)
    with pytest.raises(ValueError):
        simulate(Criterion("patience", 2, regression=True), np.zeros((3, 2, 4), np.float32))
    assert simulate(Criterion("patience", 1, regression=True), one_output)[0].tolist() == [1, 1]
    with pytest.raises(ValueError):
        simulate_sweep("entropy", [0.1, 0.2], one_output)


def test_criterion_is_hashable_static_argument():
    c = Criterion("entropy", 0.2)
    assert hash(c) == hash(Criterion("entropy", 0.2)) and c != Criterion("entropy", 0.3)
    f = jax.jit(lambda z, c: _step(c, init_state(c, 2, 2), z, 0)[1], static_argnums=1)
    assert f(jnp.array([[5.0, 0.0], [0.0, 0.0]]), c).tolist() == [True, False]


_criteria = st.one_of(
    st.builds(Criterion, st.just("entropy"), st.floats(0.0, 1.2)),
    st.builds(Criterion, st.just("max_prob"), st.floats(0.3, 1.0)),
    st.builds(Criterion, st.just("normalized_entropy"), st.floats(0.0, 1.0)),
    st.builds(Criterion, st.just("patience"), st.integers(1, 4).map(float)),
    st.builds(Criterion, st.just("fixed"), st.integers(1, 5).map(float)),
)


@settings(max_examples=60, deadline=None)
@given(criterion=_criteria, seed=st.integers(0, 2**16), scale=st.sampled_from([0.5, 2.0, 6.0]))
def test_simulate_matches_reference_loop(criterion, seed, scale):
    rng = np.random.RandomState(seed)
    all_logits = (rng.randn(5, 7, 3) * scale).astype(np.float32)
    all_logits[:, :, 0] += rng.randint(0, 2, (5, 1))  # some runs of the same prediction
    exit_index, answer = simulate(criterion, all_logits)
    ref = reference_exit(criterion, all_logits)
    # A value within float noise of the threshold may go either way.
    values = {
        "entropy": np_entropy(all_logits),
        "max_prob": np_softmax(all_logits).max(-1),
        "normalized_entropy": np_entropy(all_logits) / math.log(3),
    }.get(criterion.name)
    if values is not None and np.any(np.abs(values - criterion.threshold) < 1e-5):
        return
    np.testing.assert_array_equal(np.asarray(exit_index), ref)
    np.testing.assert_array_equal(np.asarray(answer), all_logits[ref, np.arange(7)])


def test_simulate_sweep_equals_simulate_per_threshold():
    all_logits = (np.random.RandomState(1).randn(6, 20, 4) * 3).astype(np.float32)
    thresholds = [0.05, 0.3, 0.7, 1.1]
    swept_index, swept_logits = simulate_sweep("entropy", thresholds, all_logits)
    assert swept_index.shape == (4, 20) and swept_logits.shape == (4, 20, 4)
    for k, s in enumerate(thresholds):
        index, logits = simulate(Criterion("entropy", s), all_logits)
        np.testing.assert_array_equal(swept_index[k], index)
        np.testing.assert_array_equal(swept_logits[k], logits)
    mean_exit = np.asarray(swept_index).mean(1)
    assert np.all(np.diff(mean_exit) <= 0)  # a looser threshold never exits later
    patience_index, _ = simulate_sweep("patience", [1, 2, 3], all_logits)
    for k, t in enumerate([1, 2, 3]):
        np.testing.assert_array_equal(patience_index[k], simulate(Criterion("patience", t), all_logits)[0])


def test_padding_rows_exit_first_and_leave_others_alone():
    all_logits = (np.random.RandomState(2).randn(6, 5, 3) * 2).astype(np.float32)
    c = Criterion("entropy", 0.4)
    plain, _ = simulate(c, all_logits)
    mask = np.array([1, 0, 1, 1, 0])
    masked, answer = simulate(c, all_logits, mask)
    assert masked[1] == 0 and masked[4] == 0
    np.testing.assert_array_equal(np.asarray(masked)[mask == 1], np.asarray(plain)[mask == 1])
    np.testing.assert_array_equal(answer[1], all_logits[0, 1])


def test_exit_counts():
    assert exits.exit_counts([0, 2, 2, 5], 6).tolist() == [1, 0, 2, 0, 0, 1]
