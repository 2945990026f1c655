"""The signal criteria (lte, saturation, meta): numpy references for the decisions,
the signals against HF PyTorch hidden states, the gates' targets and losses by hand,
and the three executors against the simulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_inference import thresholds_between as _between

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import init_params
from rome_jax.exits import executors, gates, signals
from rome_jax.exits.criteria import Criterion, Signals, simulate, simulate_sweep
from rome_jax.exits.executors import per_example_exit, simulated_exit, while_loop_exit

TINY = ModelConfig(
    vocab_size=99,
    hidden_size=32,
    num_layers=6,
    num_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    num_labels=3,
)


def numpy_simulate(values, threshold, mask=None):
    """First exit whose value >= threshold, else the last; padding rows exit at 0."""
    E, B = values.shape
    out = np.full(B, E - 1)
    for b in range(B):
        if mask is not None and not mask[b]:
            out[b] = 0
            continue
        for i in range(E):
            if values[i, b] >= threshold:
                out[b] = i
                break
    return out


@pytest.mark.parametrize("name", ["lte", "saturation", "meta"])
def test_signal_criteria_match_numpy(name):
    rng = np.random.default_rng(0)
    E, B, C = 6, 40, 3
    logits = rng.normal(size=(E, B, C)).astype(np.float32)
    low = -1.0 if name == "saturation" else 0.0
    sig = {f: rng.uniform(low, 1.0, size=(E, B)).astype(np.float32) for f in Signals._fields}
    sig = Signals(**sig)
    mask = rng.random(B) > 0.1
    values = np.asarray(getattr(sig, name))
    thresholds = [low, 0.3, 0.7, 0.95, 1.0]
    for t in thresholds:
        exit_index, answer = simulate(Criterion(name, t), logits, mask, signals=sig)
        expected = numpy_simulate(values, t, mask)
        np.testing.assert_array_equal(np.asarray(exit_index), expected)
        rows = np.flatnonzero(mask)
        np.testing.assert_array_equal(np.asarray(answer)[rows], logits[expected[rows], rows])
    swept, _ = simulate_sweep(name, thresholds, logits, example_mask=mask, signals=sig)
    for s, t in enumerate(thresholds):
        np.testing.assert_array_equal(np.asarray(swept[s]), numpy_simulate(values, t, mask))


def test_signal_criteria_are_checked():
    logits = np.zeros((3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="signals="):
        simulate(Criterion("saturation", 0.9), logits)
    from rome_jax.exits.criteria import init_state, step

    with pytest.raises(ValueError, match="signals="):
        step(Criterion("lte", 0.5), init_state(None, 2, 2), logits[0], 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Criterion("lte", 1.5)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        Criterion("saturation", -2.0)
    bad = Signals(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="signals.saturation"):
        simulate(Criterion("saturation", 0.5), logits, signals=bad)
    with pytest.raises(ValueError, match="fitted lte gate"):
        signals.check_gates(Criterion("lte", 0.5), {"layers": {}})
    # regression: lte and saturation apply to a one-output model
    simulate(Criterion("lte", 0.5, regression=True), np.zeros((3, 2, 1)), signals=Signals(*[np.zeros((3, 2))] * 3))


def test_cosine_and_gate_score_against_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    a[2] = 0.0
    expected = np.sum(a * b, -1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
    expected[2] = 0.0
    np.testing.assert_allclose(np.asarray(signals.cosine(jnp.asarray(a), jnp.asarray(b))), expected, atol=1e-6)
    gate = {"kernel": rng.normal(size=8).astype(np.float32), "bias": np.float32(0.3)}
    np.testing.assert_allclose(
        np.asarray(signals.gate_score(gate, jnp.asarray(a, jnp.float32))),
        1 / (1 + np.exp(-(a @ gate["kernel"] + 0.3))),
        rtol=1e-5,
    )
    assert np.all(np.asarray(signals.gate_score(None, jnp.ones((2, 8)))) == 0)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_signals_against_hf_hidden_states(tiny_model, pooling):
    """Saturation from transformers' hidden states (first token or masked mean), the
    gates from numpy on our exits' pooler outputs, the logits as `all_exits`."""
    torch = pytest.importorskip("torch")
    from transformers import BertModel

    from rome_jax.serving.api import load_pretrained

    model = load_pretrained(tiny_model, exit_pooling=pooling)
    rng = np.random.default_rng(2)
    H = model.config.hidden_size
    fitted = {n: {"kernel": rng.normal(size=H).astype(np.float32), "bias": np.float32(0.1)} for n in ("lte", "meta")}
    params = signals.with_gates(model.params, fitted)
    batch = model.tokenize(["a short one", "a much longer sentence than the first, with words"], max_length=16)
    logits, sig, pooled = signals.all_exit_signals(model.config, params, batch)
    np.testing.assert_allclose(
        np.asarray(logits), np.asarray(executors.all_exits(model.config, params, batch)), atol=1e-5
    )
    hf = BertModel.from_pretrained(tiny_model, add_pooling_layer=False).eval()
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(np.asarray(batch["input_ids"]), dtype=torch.long),
            attention_mask=torch.tensor(np.asarray(batch["attention_mask"]), dtype=torch.long),
            token_type_ids=torch.tensor(np.asarray(batch["token_type_ids"]), dtype=torch.long),
            output_hidden_states=True,
        )
    mask = np.asarray(batch["attention_mask"], np.float64)[..., None]
    states = []
    for h in out.hidden_states:  # the embeddings, then every layer
        h = h.numpy().astype(np.float64)
        states.append(h[:, 0] if pooling == "cls" else (h * mask).sum(1) / mask.sum(1))
    cos = lambda x, y: np.sum(x * y, -1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
    expected = np.stack([cos(states[i], states[i - 1]) for i in range(1, len(states))])
    np.testing.assert_allclose(np.asarray(sig.saturation), expected, atol=1e-5)
    pooled = np.asarray(pooled, np.float64)
    for name in ("lte", "meta"):
        z = pooled @ fitted[name]["kernel"] + 0.1
        np.testing.assert_allclose(np.asarray(getattr(sig, name)), 1 / (1 + np.exp(-z)), rtol=1e-4)


def _spread_model(seed=0):
    config = TINY
    params = jax.jit(init_params, static_argnums=(0, 1))(config, seed)
    # layers that change the representation a lot (random ones at 0.02 barely do), so
    # saturation varies between rows and layers
    layer = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 25 if "kernel" in jax.tree_util.keystr(path) else x, params["layers"]["layer"]
    )
    params = {**params, "layers": {**params["layers"], "layer": layer}}
    rng = np.random.default_rng(seed)
    batch = {
        "input_ids": jnp.asarray(rng.integers(5, 99, size=(12, 16)), jnp.int32),
        "attention_mask": jnp.asarray(np.arange(16)[None] < rng.integers(4, 17, size=(12, 1)), jnp.int32),
        "token_type_ids": jnp.zeros((12, 16), jnp.int32),
    }
    _, _, pooled = signals.all_exit_signals(config, params, batch)
    pooled = np.asarray(pooled, np.float64)
    fitted = {}
    for k, name in enumerate(("lte", "meta")):
        w = rng.normal(size=config.hidden_size)
        z = pooled @ w
        scale = 2.0 / z.std()
        fitted[name] = {"kernel": (w * scale).astype(np.float32), "bias": np.float32(-(z.mean() * scale) + 0.5 * k)}
    return config, signals.with_gates(params, fitted), batch


@pytest.mark.parametrize("name", ["lte", "saturation", "meta"])
def test_executors_agree_with_simulation(name):
    config, params, batch = _spread_model()
    batch = {**batch, "example_mask": jnp.asarray(np.arange(12) < 11)}  # one padding row
    logits, sig, _ = signals.all_exit_signals(config, params, batch)
    values = np.asarray(getattr(sig, name))[:-1]
    seen = set()
    for t in _between(values, [0.2, 0.5, 0.8]):
        if name == "saturation":
            t = float(np.clip(t, -1, 1))
        criterion = Criterion(name, t)
        expected, _ = simulate(criterion, logits, batch["example_mask"], signals=sig)
        expected = np.asarray(expected)
        seen.add(tuple(expected))
        for run in (simulated_exit, while_loop_exit, per_example_exit):
            got = np.asarray(run(config, params, batch, criterion)["exit_index"])
            np.testing.assert_array_equal(got[:11], expected[:11], err_msg=f"{run.__name__} {name}:{t}")
    assert len(seen) > 1  # the thresholds exit different rows at different exits


def test_gates_refused_without_fit_and_for_token_exits():
    config, params, batch = _spread_model()
    bare = signals.without_gates(params)
    with pytest.raises(ValueError, match="fitted meta gate"):
        while_loop_exit(config, bare, batch, Criterion("meta", 0.5))
    # saturation needs no gate
    while_loop_exit(config, bare, batch, Criterion("saturation", 0.99))
    from rome_jax.exits import tokens

    with pytest.raises(ValueError, match="sentence's pooled"):
        tokens._check_token_criterion(Criterion("saturation", 0.5), 3, 6)


def test_gate_targets_and_losses_by_hand():
    # 2 exits, 3 rows, 2 classes
    logits = np.array([[[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]], [[0.0, 1.0], [0.0, 2.0], [1.0, 0.0]]], np.float32)
    labels = np.array([0, 1, 1])
    np.testing.assert_array_equal(gates.lte_targets(logits, labels, False), [[1, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(gates.meta_targets(logits, False), [[0, 1, 1]])
    reg = np.array([[[1.0], [2.0]], [[1.5], [2.05]]], np.float32)
    np.testing.assert_allclose(
        gates.lte_targets(reg, np.array([1.0, 3.0]), True), [[1.0, np.exp(-1.0)], [np.exp(-0.25), np.exp(-0.9025)]]
    )
    np.testing.assert_array_equal(gates.meta_targets(reg, True, tolerance=0.1), [[0, 1]])
    gate = {"kernel": jnp.asarray([1.0, -1.0]), "bias": jnp.asarray(0.5)}
    pooled = jnp.asarray([[0.0, 0.0], [1.0, 0.0]])  # logits 0.5, 1.5
    u = 1 / (1 + np.exp(-np.array([0.5, 1.5])))
    t = np.array([1.0, 0.0])
    assert float(gates.lte_loss(gate, pooled, jnp.asarray(t))) == pytest.approx(np.mean((u - t) ** 2), rel=1e-6)
    bce = -np.mean(t * np.log(u) + (1 - t) * np.log(1 - u))
    assert float(gates.meta_loss(gate, pooled, jnp.asarray(t))) == pytest.approx(bce, rel=1e-6)


def test_fit_gate_reaches_the_optimum():
    """Logistic regression (meta) on data drawn from a known gate: the fit's loss is
    at most the generating gate's, and its gradient vanishes; LTE's squared error
    beats a constant."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 500, 6)).astype(np.float32)
    w_true = rng.normal(size=6)
    p = 1 / (1 + np.exp(-(x @ w_true - 0.2)))
    y = (rng.random(p.shape) < p).astype(np.float32)
    fitted = gates.fit_gate("meta", x, y, steps=800)
    loss = lambda g: float(gates.meta_loss(g, jnp.asarray(x), jnp.asarray(y)))
    truth = {"kernel": jnp.asarray(w_true, jnp.float32), "bias": jnp.asarray(-0.2, jnp.float32)}
    assert loss(fitted) <= loss(truth) + 1e-3
    grad = jax.grad(gates.meta_loss)({k: jnp.asarray(v) for k, v in fitted.items()}, jnp.asarray(x), jnp.asarray(y))
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad)) < 5e-3
    lte = gates.fit_gate("lte", x, p.astype(np.float32))
    mse = float(gates.lte_loss(lte, jnp.asarray(x), jnp.asarray(p, jnp.float32)))
    assert mse < 0.2 * np.var(p)


def test_fit_gates_on_exit_outputs():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 50, 2)).astype(np.float32)
    pooled = rng.normal(size=(3, 50, 5)).astype(np.float32)
    labels = rng.integers(0, 2, 50)
    fitted, report = gates.fit_gates(logits, pooled, labels, regression=False)
    assert set(fitted) == {"lte", "meta"}
    assert fitted["lte"]["kernel"].shape == (5,) and fitted["meta"]["bias"].shape == ()
    assert report["lte_target_mean"] == pytest.approx(float(np.mean(logits.argmax(-1) == labels)))
    assert report["meta_target_mean"] == pytest.approx(float(np.mean(logits[:2].argmax(-1) == logits[2].argmax(-1))))


def test_flops_count_the_criterion_work():
    from rome_jax.encoder import flops
    from rome_jax.exits.evaluation import flops_speedup_at

    config = TINY
    lens = np.array([16, 16, 32])
    exit_index = np.array([0, 2, 5])
    full = 2 * flops.full_flops(config, 16) + flops.full_flops(config, 32)
    layers = sum(int(flops.flops_to_exit(config, int(t), int(i))) for t, i in zip(lens, exit_index))
    H = config.hidden_size
    gate = (2 * H + 5) * int(np.sum(exit_index + 1))
    assert flops_speedup_at(config, lens, exit_index, "lte") == pytest.approx(full / (layers + gate))
    assert flops_speedup_at(config, lens, exit_index, "entropy") == pytest.approx(full / layers)
    cls_saturation = (6 * H + 4) * int(np.sum(exit_index + 1))
    assert flops_speedup_at(config, lens, exit_index, "saturation") == pytest.approx(full / (layers + cls_saturation))


@pytest.mark.parametrize("name", ["lte", "saturation"])
def test_exported_program_exits_by_signals(name):
    from rome_jax.serving.export import export_program

    config, params, batch = _spread_model()
    logits, sig, _ = signals.all_exit_signals(config, params, batch)
    t = _between(np.asarray(getattr(sig, name))[:-1], [0.5])[0]
    expected, answers = simulate(Criterion(name, t), logits, signals=sig)
    exported = export_program(config, params, Criterion(name, t), 12, 16)
    out = exported.call(
        np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"]), np.asarray(batch["token_type_ids"])
    )
    np.testing.assert_array_equal(np.asarray(out["exit_layer"]), np.asarray(expected) + 1)
    np.testing.assert_allclose(np.asarray(out["logits"]), np.asarray(answers), atol=1e-5)


def test_gates_file_round_trip(tmp_path, tiny_model):
    from rome_jax.errors import CheckpointError
    from rome_jax.serving.api import load_pretrained

    model = load_pretrained(tiny_model)
    H = model.config.hidden_size
    fitted = {"lte": {"kernel": np.arange(H, dtype=np.float32), "bias": np.float32(0.5)}}
    model.params = signals.with_gates(model.params, fitted)
    model.save_pretrained(str(tmp_path / "m"))
    again = load_pretrained(str(tmp_path / "m"))
    np.testing.assert_array_equal(np.asarray(signals.gates_of(again.params)["lte"]["kernel"]), fitted["lte"]["kernel"])
    model.params = signals.without_gates(model.params)
    model.save_pretrained(str(tmp_path / "m"))  # an earlier model's gates do not stay behind
    assert not (tmp_path / "m" / gates.FILE_NAME).exists()
    gates.write_gates(str(tmp_path / "m" / gates.FILE_NAME), {"lte": {"kernel": np.zeros(H + 1), "bias": np.zeros(())}})
    with pytest.raises(CheckpointError, match="kernel of shape"):
        load_pretrained(str(tmp_path / "m"))
    (tmp_path / "m" / gates.FILE_NAME).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a rome_jax gates file"):
        load_pretrained(str(tmp_path / "m"))


def test_in_sample_calibration_takes_the_signal_criteria():
    from rome_jax.exits import calibration

    sweep = [
        {"criterion": "lte", "threshold": 0.9, "accuracy": 0.80, "mean_layers": 3.0},
        {"criterion": "lte", "threshold": 0.5, "accuracy": 0.70, "mean_layers": 2.0},
        {"criterion": "saturation", "threshold": 0.95, "accuracy": 0.81, "mean_layers": 2.5},
        {"criterion": "entropy", "threshold": 0.1, "accuracy": 0.81, "mean_layers": 4.0},
    ]
    chosen = calibration.choose_thresholds(sweep, 0.81, metric="accuracy", points=1.0, num_layers=6)
    assert chosen["criteria"]["lte"]["threshold"] == 0.9
    assert chosen["default"] == {"criterion": "saturation", "threshold": 0.95}
    assert calibration.criterion_of(chosen) == Criterion("saturation", 0.95)
