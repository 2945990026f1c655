"""Early exit for sequence labelling (`rome_jax.exits.tokens`): the per-token criteria,
sentence-level exit (SENTEE), token-level exit with the window rule (TOKEE) against
numpy simulations and hand-worked cases, the compiled loop against the eager numpy
reference on a tiny random model, frozen states, and the FLOPs by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import MultiExitEncoder, init_params
from rome_jax.exits import token_flops
from rome_jax.exits import tokens as tk
from rome_jax.exits.criteria import Criterion, entropy, init_state, step

CONFIG = ModelConfig(
    vocab_size=50,
    hidden_size=32,
    num_layers=3,
    num_heads=4,
    intermediate_size=37,
    max_position_embeddings=32,
    num_labels=5,
    exit_pooling="token",
)
SURE = np.array([10.0, 0, 0, 0, 0])  # entropy ~0.002 nats: fires
UNSURE = np.zeros(5)  # entropy log 5 = 1.61: does not fire


def tagging_batch():
    """4 sentences of up to 12 tokens: multi-piece words, padding, a sentence without
    words ([CLS] [SEP] only)."""
    rng = np.random.RandomState(0)
    B, T = 4, 12
    lengths = np.array([12, 9, 6, 2])
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
    wid = np.full((B, T), -1, np.int32)
    wid[0, 1:11] = [0, 1, 1, 2, 3, 4, 4, 4, 5, 6]  # [CLS] w0 w1 w1 w2 w3 w4 w4 w4 w5 w6 [SEP]
    wid[1, 1:8] = [0, 1, 2, 2, 3, 4, 5]
    wid[2, 1:5] = [0, 1, 2, 3]
    ids = rng.randint(3, CONFIG.vocab_size, (B, T)).astype(np.int32) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids), "word_ids": wid}


def full_depth(params, batch):
    inputs = {k: jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    return np.asarray(
        jax.jit(lambda p, b: MultiExitEncoder(CONFIG).apply({"params": p}, **b)["logits"])(params, inputs)
    )


@pytest.fixture(scope="module")
def model():
    """Random params whose exits give varied, partly agreeing tags: every exit's
    classifier shares a direction (as trained exits agree), scaled to a logit spread
    of about 3 on the word positions."""
    batch = tagging_batch()
    params = jax.jit(init_params, static_argnums=(0, 1))(CONFIG, 0)
    words = np.asarray(tk.word_positions(batch["word_ids"], batch["attention_mask"]))
    cls = params["layers"]["exit"]["classifier"]
    kernel = cls["kernel"][0][None] + 0.7 * cls["kernel"]
    raw = {**params["layers"]["exit"], "classifier": {"kernel": kernel, "bias": cls["bias"]}}
    params = {**params, "layers": {**params["layers"], "exit": raw}}
    scale = 3.0 / full_depth(params, batch)[:, words].std(1).mean(-1)
    kernel = kernel * jnp.asarray(scale[:, None, None], jnp.float32)
    raw = {**raw, "classifier": {"kernel": kernel, "bias": cls["bias"]}}
    params = {**params, "layers": {**params["layers"], "exit": raw}}
    return params, batch, full_depth(params, batch), words


def gap_threshold(values, q, margin=1e-3):
    """A threshold near quantile q of `values`, in a gap wider than 2*margin (float
    noise between executors cannot flip a decision)."""
    v = np.unique(np.asarray(values, np.float64).ravel())
    k = int(q * (len(v) - 1))
    for j in sorted(range(len(v) - 1), key=lambda j: abs(j - k)):
        if v[j + 1] - v[j] > 2 * margin:
            return float((v[j] + v[j + 1]) / 2)
    raise AssertionError("no gap")


def criteria_for(z, words):
    """One criterion per name, thresholds in the middle of exit 0's word values."""
    h = np.asarray(entropy(z[0][words]))
    return {
        "entropy": Criterion("entropy", gap_threshold(h, 0.5)),
        "max_prob": Criterion("max_prob", gap_threshold(np.asarray(jax.nn.softmax(z[0][words])).max(-1), 0.5)),
        "normalized_entropy": Criterion("normalized_entropy", gap_threshold(h / np.log(5), 0.4)),
        "patience": Criterion("patience", 1),
        "fixed": Criterion("fixed", 2),
    }


# ---------------------------------------------------------------- words and criteria


def test_word_positions():
    wid = np.array([[-1, 0, 1, 1, 2, -1, 0, 0, -1], [0, 0, 1, -1, -1, -1, -1, -1, -1]])
    mask = np.array([[1] * 8 + [0], [1, 1, 1, 1, 0, 0, 0, 0, 0]])
    expected = [[0, 1, 1, 0, 1, 0, 1, 0, 0], [1, 0, 1, 0, 0, 0, 0, 0, 0]]
    np.testing.assert_array_equal(tk.word_positions(wid, mask), np.array(expected, bool))


def test_token_confidence_is_the_sequence_test_per_token():
    z = np.random.RandomState(1).normal(0, 2, (3, 7, 5)).astype(np.float32)
    for name, t in (("entropy", 0.8), ("max_prob", 0.6), ("normalized_entropy", 0.5)):
        crit = Criterion(name, t)
        flat = step(crit, init_state(crit, 21, 5), jnp.asarray(z.reshape(21, 5)), 0)[1]
        np.testing.assert_array_equal(tk.token_confidence(crit, z), np.asarray(flat).reshape(3, 7))
    with pytest.raises(ValueError, match="token_step"):
        tk.token_confidence(Criterion("patience", 1), z)
    with pytest.raises(ValueError, match="regression"):
        tk.token_fires(Criterion("patience", 1, regression=True), z[:, :, :1])


def test_token_fires_counts_patience_per_token():
    preds = np.array([[0, 1], [0, 2], [0, 2], [1, 2]])  # [E, tokens]: the argmax of each token at each exit
    z = np.eye(5)[preds] * 5.0  # [E, 2, 5]
    fired = np.asarray(tk.token_fires(Criterion("patience", 2), z))
    # counters: token 0: 0, 1, 2, 0; token 1: 0, 0, 1, 2
    np.testing.assert_array_equal(fired, [[0, 0], [0, 0], [1, 0], [0, 1]])
    np.testing.assert_array_equal(tk.token_fires(Criterion("fixed", 3), z), [[0, 0], [0, 0], [1, 1], [1, 1]])


# ---------------------------------------------------------------- SENTEE


def test_sentence_exit_hand_cases():
    E, T = 5, 6
    z = np.tile(UNSURE, (E, 3, T, 1))
    wp = np.zeros((3, T), bool)
    # sentence 0: [CLS] w0 w1 w2 [SEP] pad; w0, w2 sure everywhere, w1 (word 2) only at exit 3
    wp[0, 1:4] = True
    z[:, 0, 1] = z[:, 0, 3] = SURE
    z[2, 0, 2] = SURE
    # sentence 1: one word, never sure -> the last exit; sentence 2: no word -> exit 0
    wp[1, 1] = True
    crit = Criterion("entropy", 0.1)
    np.testing.assert_array_equal(tk.sentence_exit_layers(z, wp, crit), [2, 4, 0])
    exits, logits = tk.sentence_exit(z, wp, crit)
    np.testing.assert_array_equal(logits[0], z[2, 0])
    np.testing.assert_array_equal(logits[1], z[4, 1])
    # patience 1, tags per exit: w0 0 0 0 0 0; w1 1 2 2 2 2; w2 3 3 1 1 1
    # counters: w0 0 1 2 3 4; w1 0 0 1 2 3; w2 0 1 0 1 2: every one >= 1 first at exit 3
    tags = np.array([[0] * 5, [1, 2, 2, 2, 2], [3, 3, 1, 1, 1]]).T  # [E, 3 words]
    zp = np.zeros((E, 1, T, 5))
    zp[:, 0, 1:4] = np.eye(5)[tags] * 4
    np.testing.assert_array_equal(tk.sentence_exit_layers(zp, wp[:1], Criterion("patience", 1)), [3])
    np.testing.assert_array_equal(tk.sentence_exit_layers(zp, wp[:1], Criterion("patience", 2)), [4])


def numpy_sentence_exit(z, wp, crit):
    """Per sentence: the first exit whose every word position passes (numpy)."""
    E, N = z.shape[:2]
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h = -(p * np.log(p)).sum(-1)
    out = []
    for n in range(N):
        counter = np.zeros(z.shape[2])
        exit_at = E - 1
        for i in range(E):
            if i:
                counter = np.where(z[i, n].argmax(-1) == z[i - 1, n].argmax(-1), counter + 1, 0)
            fires = {"entropy": h[i, n] < crit.threshold, "max_prob": p[i, n].max(-1) >= crit.threshold}
            fires["patience"] = counter >= crit.threshold
            if np.all(fires[crit.name][wp[n]]):
                exit_at = i
                break
        out.append(exit_at)
    return np.array(out)


@pytest.mark.parametrize("crit", [Criterion("entropy", 0.9), Criterion("max_prob", 0.6), Criterion("patience", 1)])
def test_sentence_exit_matches_numpy(crit):
    rng = np.random.RandomState(2)
    z = rng.normal(0, 2.5, (4, 40, 6, 5)).astype(np.float64)
    z[1:] = z[:1] + rng.normal(0, 1.5, z[1:].shape)  # exits partly agree
    wp = rng.rand(40, 6) < 0.4
    wp[0] = False  # no word: exit 0
    expected = numpy_sentence_exit(z, wp, crit)
    got = np.asarray(tk.sentence_exit_layers(z.astype(np.float32), wp, crit))
    np.testing.assert_array_equal(got, expected)
    assert len(set(expected[1:])) >= 3  # sentences exit at several exits


# ---------------------------------------------------------------- TOKEE: the window rule

# [CLS] w0 w1 w1' w2 w3 w4 [SEP] pad pad; a row of [CLS] [SEP]; a padding row.
HAND_WIDS = np.array([[-1, 0, 1, 1, 2, 3, 4, -1, -1, -1], [-1, -1] + [-1] * 8, [-1] * 10])
HAND_MASK = np.array([[1] * 8 + [0, 0], [1, 1] + [0] * 8, [0] * 10])
# Whether each token fires at exits 0..3 (word positions; the others must not matter).
HAND_FIRES = {
    1: [1, 1, 0, 0],  # w0
    2: [0, 1, 1, 1],  # w1
    3: [1, 1, 1, 1],  # w1's second piece: ignored
    4: [1, 0, 1, 1],  # w2
    5: [1, 1, 0, 1],  # w3
    6: [0, 0, 1, 0],  # w4
    7: [1, 1, 1, 1],  # [SEP]: ignored
}


def hand_fires():
    fired = np.zeros((4, 3, 10), bool)
    for t, pattern in HAND_FIRES.items():
        fired[:, 0, t] = pattern
    fired[:, 1:] = True  # the other rows: anything
    return fired


def test_window_rule_hand_example():
    # window 0: each word at its first firing: w0 0, w1 1 (its second piece too), w2 0,
    # w3 0, w4 2; [CLS], [SEP] and padding once every word has exited: 2.
    expected0 = [2, 0, 1, 1, 0, 0, 2, 2, 2, 2]
    # window 1: exit 0: w0 waits for w1, w2 for w1, w3 for w4. Exit 1: w0 exits (w0, w1
    # fire); w1 waits for w2, w3 for w2. Exit 2: w1 exits (w0 exited counts as sure, w2
    # fires); w2 and w4 wait for w3. Exit 3, the last: the rest.
    expected1 = [3, 1, 2, 2, 3, 3, 3, 3, 3, 3]
    for window, expected in ((0, expected0), (1, expected1)):
        got = np.asarray(tk.exit_layers_from_fires(hand_fires(), HAND_WIDS, HAND_MASK, window))
        np.testing.assert_array_equal(got[0], expected)
        np.testing.assert_array_equal(got[1:], 0)  # no word: everything leaves at exit 0
    # window 2: exit 0: every word waits for w1; exit 1: w0 (w0..w2) waits for w2, the
    # others for w2 or w4; exit 2: w0 does not fire and has not exited, so w0..w2 wait
    # for it, w3 and w4 for w3; the last exit: everyone.
    got = np.asarray(tk.exit_layers_from_fires(hand_fires(), HAND_WIDS, HAND_MASK, 2))
    np.testing.assert_array_equal(got[0], [3] * 10)


def numpy_window_rule(fired, wid, mask, k):
    """The window rule written out per sentence and word (lists of word positions)."""
    E, N, T = fired.shape
    out = np.full((N, T), E - 1)
    for n in range(N):
        words = [t for t in range(T) if mask[n, t] and wid[n, t] >= 0 and (t == 0 or wid[n, t] != wid[n, t - 1])]
        exit_of = {}
        for i in range(E):
            sure = [t in exit_of or fired[i, n, t] for t in words]
            for j, t in enumerate(words):
                if t not in exit_of and (i == E - 1 or all(sure[max(0, j - k) : j + k + 1])):
                    exit_of[t] = i
        last = max(exit_of.values(), default=0)
        for t in range(T):
            owners = [w for w in words if w <= t]
            in_word = mask[n, t] and wid[n, t] >= 0
            out[n, t] = exit_of[owners[-1]] if in_word else last
    return out


@pytest.mark.parametrize("window", [0, 1, 2])
def test_window_rule_matches_numpy(window):
    rng = np.random.RandomState(3 + window)
    N, T, E = 30, 14, 5
    wid = np.full((N, T), -1)
    mask = np.zeros((N, T), int)
    for n in range(N):
        length = rng.randint(2, T + 1)
        mask[n, :length] = 1
        pieces = rng.choice([1, 1, 1, 2, 3], size=T)
        ids = np.repeat(np.arange(T), pieces)[: length - 2]
        wid[n, 1 : 1 + len(ids)] = ids
    fired = rng.rand(E, N, T) < 0.6
    expected = numpy_window_rule(fired, wid, mask, window)
    np.testing.assert_array_equal(tk.exit_layers_from_fires(fired, wid, mask, window), expected)
    assert len(np.unique(expected[mask.astype(bool)])) >= 3


# ---------------------------------------------------------------- TOKEE on the model


@pytest.mark.parametrize("window", [0, 1])
@pytest.mark.parametrize("name", ["entropy", "max_prob", "normalized_entropy", "patience", "fixed"])
def test_token_early_exit_matches_reference(model, name, window):
    params, batch, z, words = model
    crit = criteria_for(z, words)[name]
    got = tk.token_early_exit(CONFIG, params, batch, crit, window)
    ref = tk.token_exit_reference(CONFIG, params, batch, crit, window)
    np.testing.assert_array_equal(got["exit_index"], ref["exit_index"])
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-5, rtol=0)
    assert int(got["layers_run"]) == int(ref["layers_run"]) == ref["exit_index"].max() + 1
    real = batch["attention_mask"].astype(bool)
    if name == "fixed":
        np.testing.assert_array_equal(ref["exit_index"][:3], 1)  # exit 2 (1-based) for everyone
    else:
        assert len(np.unique(ref["exit_index"][:3][real[:3]])) >= 2, ref["exit_index"]  # several exit layers
    np.testing.assert_array_equal(ref["exit_index"][3], 0)  # [CLS] [SEP] only: exit 0
    # special tokens and padding: the sentence's last exit
    for n in range(3):
        np.testing.assert_array_equal(ref["exit_index"][n][batch["word_ids"][n] < 0], ref["exit_index"][n].max())


def test_exited_states_are_frozen(model):
    params, batch, z, words = model
    crit = criteria_for(z, words)["entropy"]
    got = tk.token_early_exit(CONFIG, params, batch, crit, 0)
    ref = tk.token_exit_reference(CONFIG, params, batch, crit, 0)
    hidden, exits = np.asarray(got["hidden"]), ref["exit_index"]
    np.testing.assert_allclose(hidden, ref["hidden"], atol=1e-5)
    per_layer = ref["hidden_per_layer"]
    for n, t in zip(*np.nonzero(batch["attention_mask"])):
        np.testing.assert_allclose(hidden[n, t], per_layer[exits[n, t], n, t], atol=1e-5)
        assert (per_layer[exits[n, t] :, n, t] == per_layer[exits[n, t], n, t]).all()  # not updated after
    # freezing changes what the later tokens see: their last logits differ from full depth
    late = (exits == CONFIG.num_layers - 1) & (batch["word_ids"] >= 0)
    assert (exits[:3] < CONFIG.num_layers - 1).any() and late.any()
    assert np.abs(np.asarray(got["logits"])[late] - z[-1][late]).max() > 1e-4


def test_never_exiting_is_full_depth(model):
    params, batch, z, _ = model
    got = tk.token_early_exit(CONFIG, params, batch, Criterion("entropy", 0.0), 1)
    np.testing.assert_array_equal(got["exit_index"][:3], CONFIG.num_layers - 1)
    np.testing.assert_allclose(np.asarray(got["logits"])[:3], z[-1][:3], atol=1e-5)
    assert int(got["layers_run"]) == CONFIG.num_layers


@pytest.mark.parametrize("window", [0, 1])
def test_from_logits_is_the_rule_without_freezing(model, window):
    params, batch, z, words = model
    for name in ("entropy", "patience"):
        crit = criteria_for(z, words)[name]
        ref = tk.token_exit_reference(CONFIG, params, batch, crit, window, freeze=False)
        exits, logits = tk.token_exit_from_logits(z, batch["word_ids"], batch["attention_mask"], crit, window)
        np.testing.assert_array_equal(exits, ref["exit_index"])
        np.testing.assert_allclose(logits, ref["logits"], atol=1e-5)


def test_bad_inputs(model):
    params, batch, *_ = model
    crit = Criterion("entropy", 0.5)
    with pytest.raises(ValueError, match="word_ids"):
        tk.token_early_exit(CONFIG, params, {k: v for k, v in batch.items() if k != "word_ids"}, crit)
    with pytest.raises(ValueError, match="exit_pooling='token'"):
        tk.token_early_exit(CONFIG.replace(exit_pooling="cls"), params, batch, crit)
    with pytest.raises(ValueError, match="window"):
        tk.token_early_exit(CONFIG, params, batch, crit, -1)
    with pytest.raises(ValueError, match="per token"):
        tk.sentence_exit_layers(np.zeros((3, 2, 6, 5)), np.ones((2, 5), bool), crit)


# ---------------------------------------------------------------- FLOPs

FLOPS_CONFIG = ModelConfig(
    vocab_size=20,
    hidden_size=8,
    num_layers=2,
    num_heads=2,
    intermediate_size=16,
    max_position_embeddings=16,
    num_labels=3,
    hidden_act="relu",
    exit_pooling="token",
)


def test_token_flops_by_hand():
    # H=8, heads=2, I=16, C=3; one sentence of S=5 attended positions in T=6.
    # embeddings: sum S*H = 40, residual-style add + LayerNorm S*H*(1+8) + 2*S = 370 -> 410
    embeddings = 5 * 8 + 5 * 8 * 9 + 2 * 5
    # K and V of all S tokens: 2 * (2*S*H*H + S*H) = 2 * (640 + 40) = 1360
    keys_values = 2 * (2 * 5 * 8 * 8 + 5 * 8)
    # per active token: Q 2*H*H + H = 136; scores and context 4*S*H = 160; softmax
    # 8*heads*S = 80; output dense 136; add + LayerNorm 9*H + 2 = 74; intermediate
    # 2*H*I + I = 272; relu I = 16; output dense 2*I*H + H = 264; add + LayerNorm 74;
    # classifier 2*H*C + C = 51.  Sum: 1263.
    per_token = 136 + 160 + 80 + 136 + 74 + 272 + 16 + 264 + 74 + 51
    assert per_token == 1263
    mask = np.array([[1, 1, 1, 1, 1, 0]])
    exits = np.array([[1, 0, 0, 1, 1, 1]])  # layer 0: 5 active; layer 1: 3 active
    expected = embeddings + (keys_values + 5 * per_token) + (keys_values + 3 * per_token)
    assert expected == 13234
    np.testing.assert_array_equal(token_flops.token_exit_flops(FLOPS_CONFIG, exits, mask), [expected])
    full = embeddings + 2 * (keys_values + 5 * per_token)
    assert full == 15760
    np.testing.assert_array_equal(token_flops.token_full_flops(FLOPS_CONFIG, mask), [full])
    # sentence-level: every token runs layers 0..e
    np.testing.assert_array_equal(
        token_flops.sentence_exit_flops(FLOPS_CONFIG, [0], mask), [embeddings + keys_values + 5 * per_token]
    )
    assert token_flops.flops_ratio([expected], [full]) == pytest.approx(15760 / 13234)


def test_token_flops_consistency(model):
    params, batch, z, words = model
    mask = batch["attention_mask"]
    last = np.full(mask.shape, CONFIG.num_layers - 1)
    full = token_flops.token_full_flops(CONFIG, mask)
    np.testing.assert_array_equal(token_flops.token_exit_flops(CONFIG, last, mask), full)
    np.testing.assert_array_equal(token_flops.sentence_exit_flops(CONFIG, last[:, 0], mask), full)
    for e in range(CONFIG.num_layers):  # every token at exit e: the sentence-level count
        np.testing.assert_array_equal(
            token_flops.token_exit_flops(CONFIG, np.full(mask.shape, e), mask),
            token_flops.sentence_exit_flops(CONFIG, np.full(4, e), mask),
        )
    got = tk.token_early_exit(CONFIG, params, batch, criteria_for(z, words)["entropy"], 0)
    spent = token_flops.token_exit_flops(CONFIG, np.asarray(got["exit_index"]), mask)
    assert (spent <= full).all() and (spent[:3] < full[:3]).any()
    # padding does not count: the same sentence padded further costs the same
    wider = np.pad(np.asarray(got["exit_index"]), ((0, 0), (0, 4)))
    np.testing.assert_array_equal(token_flops.token_exit_flops(CONFIG, wider, np.pad(mask, ((0, 0), (0, 4)))), spent)


# ---------------------------------------------------------------- TOKEE, finished sentences leaving


def many_sentences(rows=16, seed=1):
    """`tagging_batch`'s four word layouts repeated over `rows` rows, other token ids in
    each, in shuffled order."""
    base = tagging_batch()
    rng = np.random.RandomState(seed)
    order = rng.permutation(rows) % 4
    batch = {k: v[order].copy() for k, v in base.items()}
    batch["input_ids"] = rng.randint(3, CONFIG.vocab_size, batch["input_ids"].shape).astype(np.int32)
    batch["input_ids"] *= batch["attention_mask"]
    return batch


@pytest.mark.parametrize("name, window", [("entropy", 0), ("patience", 1)])
def test_compacted_token_exit_answers_as_the_reference(model, name, window):
    """Sentences leave the batch as they finish (smaller buckets, several launches);
    every token's exit, logits and final state are the eager numpy reference's, and
    the dense loop's."""
    from rome_jax.exits.token_batched import compacted_token_exit

    params = model[0]
    batch = many_sentences()
    z = full_depth(params, batch)
    words = np.asarray(tk.word_positions(batch["word_ids"], batch["attention_mask"]))
    crit = criteria_for(z, words)[name]
    got = compacted_token_exit(CONFIG, params, batch, crit, window)
    ref = tk.token_exit_reference(CONFIG, params, batch, crit, window)
    dense = tk.token_early_exit(CONFIG, params, batch, crit, window)
    np.testing.assert_array_equal(got["exit_index"], ref["exit_index"])
    np.testing.assert_array_equal(got["exit_index"], np.asarray(dense["exit_index"]))
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["hidden"], ref["hidden"], atol=1e-5, rtol=0)
    # each sentence ran at least to its last exit; the batch computed less than the dense loop
    assert (got["layers_run"] >= got["exit_index"].max(-1) + 1).all()
    finish = got["exit_index"].max(-1) + 1
    assert len(np.unique(finish)) >= 2, finish  # sentences finish at different layers
    assert got["launches"] >= 2 and got["row_layers"] < len(finish) * int(dense["layers_run"])


def test_compacted_token_exit_buckets_and_one_sentence(model):
    from rome_jax.exits.token_batched import compacted_token_exit

    params = model[0]
    batch = many_sentences(rows=7, seed=2)
    crit = Criterion("patience", 1)
    ref = tk.token_exit_reference(CONFIG, params, batch, crit, 0)
    for buckets in (None, (4, 2, 1), (7,)):  # 7 rows; ladders below it; one bucket (no compaction)
        got = compacted_token_exit(CONFIG, params, batch, crit, 0, buckets=buckets)
        np.testing.assert_array_equal(got["exit_index"], ref["exit_index"], err_msg=str(buckets))
    assert compacted_token_exit(CONFIG, params, batch, crit, 0, buckets=(7,))["launches"] == 1
    one = {k: v[:1] for k, v in batch.items()}
    np.testing.assert_array_equal(
        compacted_token_exit(CONFIG, params, one, crit, 0)["exit_index"], ref["exit_index"][:1]
    )
    real = np.array([1, 1, 0, 1, 0, 1, 1], bool)  # padding rows of a last batch: never run
    padded = compacted_token_exit(CONFIG, params, {**batch, "example_mask": real}, crit, 0)
    np.testing.assert_array_equal(padded["exit_index"][real], ref["exit_index"][real])
    assert (padded["exit_index"][~real] == 0).all() and (padded["logits"][~real] == 0).all()
