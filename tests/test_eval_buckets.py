"""Length buckets in evaluation and inference change the shapes run, not the answers.

On real dev sentences (SST-2 and MRPC pairs, max_length 128, float32) and the real
pretrained MiniLM (exit classifiers re-initialised): the bucketed path (each batch cut
to the smallest of 16, 32, 64, 128 that holds its rows) and the path padded to
max_length give the same per-exit logits up to float rounding, the same predictions
and metrics, and the same exit layers in `simulate`, `while_loop_exit` at batch 1
and `BatchedEarlyExit`.

Tolerances. Cutting a batch alone changes nothing (the masked positions add exact
zeros to the softmax sums; checked bitwise below). What differs is the batches'
make-up: bucketing groups the rows by length, so a row sits in another batch at
another position, and XLA's CPU matrix products then sum the same terms in another
order. With the checkpoint's heads that moves the logits by ~5e-8 (atol 1e-6 here).
The spread exits (`spread_exits`: classifiers scaled ~6e4x so that untrained exits
give varied confidences) amplify those ulps to ~1e-3, hence atol 5e-3 for them and
entropy thresholds kept 1e-3 away from every entropy seen (a binary entropy moves
at most ~0.25x the change of the logits' difference: < 5e-4 here).
"""

import numpy as np
import pytest
from test_inference import spread_exits, thresholds_between

from rome_jax.data import read_glue_dir, tokenize_examples
from rome_jax.data.buckets import length_buckets, sequence_lengths
from rome_jax.data.metrics import compute_metrics
from rome_jax.encoder.model import INPUT_KEYS
from rome_jax.exits import criteria as exits
from rome_jax.exits import executors as inference
from rome_jax.exits.evaluation import Timer, evaluate_split, exit_logits_of

pytestmark = pytest.mark.slow  # subprocess runs / long training: deselected by -m "not slow"

T = 128
BATCH = 16
RAW_ATOL = 1e-6  # the checkpoint's own heads: ~5e-8 seen
SPREAD_ATOL = 5e-3  # spread heads amplify the same rounding ~6e4x: ~1e-3 seen
ONES = 24  # examples run at batch 1
MARGIN = 1e-3  # entropy thresholds at least this far from every entropy value


@pytest.fixture(scope="module")
def minilm(minilm_path):
    import rome_jax

    return rome_jax.load_pretrained(minilm_path, num_labels=2)


@pytest.fixture(scope="module")
def dev(minilm, glue_dir):
    """{task: Features} of the first SST-2 sentences and MRPC pairs, padded to 128."""
    out = {
        task: tokenize_examples(read_glue_dir(task, "dev", glue_dir).head(n), minilm.tokenizer, T)
        for task, n in (("sst2", 96), ("mrpc", 64))
    }
    # both sets really hold rows of several buckets, and none needs all 128 positions
    assert len(set(np.searchsorted((16, 32, 64, 128), sequence_lengths(out["sst2"].attention_mask)))) >= 3
    return out


@pytest.fixture(scope="module")
def spread(minilm, dev):
    first = {k: getattr(dev["sst2"], k)[:32] for k in INPUT_KEYS}
    return spread_exits(minilm.config, minilm.params, first)


def test_cutting_a_batch_alone_changes_nothing(minilm, dev):
    features = dev["sst2"]
    batch = {k: getattr(features, k)[:BATCH] for k in INPUT_KEYS}
    cut = inference.cut_to_bucket(batch, length_buckets(T, "auto"))
    assert cut["input_ids"].shape == (BATCH, 64)  # the first 16 rows' longest: 40 tokens
    np.testing.assert_array_equal(
        np.asarray(inference.all_exits(minilm.config, minilm.params, cut)),
        np.asarray(inference.all_exits(minilm.config, minilm.params, batch)),
    )


@pytest.mark.parametrize("task", ["sst2", "mrpc"])
def test_bucketed_logits_predictions_and_metrics_match_padded(minilm, spread, dev, task):
    features = dev[task]
    labels = np.asarray(features.labels)
    raw = [exit_logits_of(minilm.config, minilm.params, features, BATCH, b) for b in (None, "auto")]
    np.testing.assert_allclose(raw[1], raw[0], atol=RAW_ATOL, rtol=0)
    padded, bucketed = (exit_logits_of(minilm.config, spread, features, BATCH, b) for b in (None, "auto"))
    assert padded.shape == bucketed.shape == (minilm.config.num_exits, len(features), 2)
    np.testing.assert_allclose(bucketed, padded, atol=SPREAD_ATOL, rtol=0)
    np.testing.assert_array_equal(bucketed.argmax(-1), padded.argmax(-1))
    for i in range(minilm.config.num_exits):
        assert compute_metrics(task, bucketed[i], labels) == compute_metrics(task, padded[i], labels)


def _criteria(logits):
    z = np.asarray(logits)
    return [exits.Criterion("entropy", s) for s in thresholds_between(exits.entropy(z), (0.2, 0.6), margin=MARGIN)] + [
        exits.Criterion("patience", t) for t in (1, 2, 3)
    ]


def test_bucketed_executors_exit_where_the_padded_ones_do(minilm, spread, dev):
    """`simulate`, `while_loop_exit` at batch 1 and `BatchedEarlyExit`, as the Timer
    runs them, bucketed and padded: the same exit layer for every example (on MRPC's
    pairs, the harder inputs: two segments; SST-2's sentences run the same executors
    in `test_evaluate_split_with_buckets`)."""
    config, features = minilm.config, dev["mrpc"]
    padded_logits = exit_logits_of(config, spread, features, BATCH)
    bucketed_logits = exit_logits_of(config, spread, features, BATCH, "auto")
    timers = {
        b: Timer(
            config, spread, features, batch1_examples=ONES, batched_examples=0, batch_size=BATCH, rounds=1, buckets=b
        )
        for b in (None, "auto")
    }
    # the bucketed timer really runs shorter shapes: at batch 1 each example's own bucket
    assert {b["input_ids"].shape[1] for b in timers[None].singles + timers[None].batched} == {T}
    own = [
        min(n for n in (16, 32, 64, 128) if n >= length) for length in sequence_lengths(features.attention_mask)[:ONES]
    ]
    assert [b["input_ids"].shape[1] for b in timers["auto"].singles] == own and min(own) < T
    assert min(b["input_ids"].shape[1] for b in timers["auto"].batched) < T
    assert timers["auto"].num_batched == timers[None].num_batched == len(features)
    criteria = _criteria(padded_logits)
    assert len(criteria) == 5
    seen = set()
    for criterion in criteria:
        reference = np.asarray(exits.simulate(criterion, padded_logits)[0])
        np.testing.assert_array_equal(
            np.asarray(exits.simulate(criterion, bucketed_logits)[0]), reference, err_msg=str(criterion)
        )
        for buckets, timer in timers.items():
            _, _, batch1, batched = timer.early_exit(criterion)
            np.testing.assert_array_equal(batch1, reference[:ONES], err_msg=f"{criterion} batch 1 {buckets}")
            np.testing.assert_array_equal(batched, reference, err_msg=f"{criterion} batched {buckets}")
        seen.update(reference.tolist())
    assert len(seen) >= 3  # the thresholds really spread the exits


def test_evaluate_split_with_buckets(minilm, spread, dev, monkeypatch):
    """The same metrics and sweep decisions; shorter shapes run (the lengths
    `all_exits` sees), a smaller padded share and fewer FLOPs per example counted."""
    config, features = minilm.config, dev["sst2"]
    logits = exit_logits_of(config, spread, features, BATCH)
    entropy = thresholds_between(exits.entropy(np.asarray(logits)), (0.3, 0.6), margin=MARGIN)
    sweeps = {"entropy": tuple(entropy), "patience": (2.0,)}
    lengths = []
    all_exits = inference.all_exits
    monkeypatch.setattr(
        inference, "all_exits", lambda c, p, b: (lengths.append(np.shape(b["input_ids"])[1]), all_exits(c, p, b))[1]
    )
    results = {}
    for buckets in (None, "auto"):
        lengths.clear()
        results[buckets] = evaluate_split(
            config,
            spread,
            "sst2",
            "dev",
            features,
            sweeps=sweeps,
            batch_size=BATCH,
            batch1_examples=8,
            batched_examples=48,
            buckets=buckets,
            log=lambda _: None,
        )
        results[buckets]["lengths_run"] = sorted(set(lengths))
    padded, bucketed = results[None], results["auto"]
    assert padded["lengths_run"] == [T]
    assert min(bucketed["lengths_run"]) < T and set(bucketed["lengths_run"]) <= {16, 32, 64, 128}
    assert (padded["buckets"], bucketed["buckets"]) == (None, [16, 32, 64, 128])
    assert bucketed["padded_share"] < padded["padded_share"] - 0.3  # SST-2: ~20 tokens of 128
    assert padded["executors_agree"] and bucketed["executors_agree"]
    assert bucketed["per_exit"] == padded["per_exit"]
    for p, b in zip(padded["sweep"], bucketed["sweep"]):
        assert (p["criterion"], p["threshold"], p["accuracy"], p["mean_layers"]) == (
            b["criterion"],
            b["threshold"],
            b["accuracy"],
            b["mean_layers"],
        )
        assert b["flops_speedup"] > 1 and p["flops_speedup"] > 1
    assert bucketed["full_depth"]["flops_per_example"] < padded["full_depth"]["flops_per_example"] / 2
    assert bucketed["max_length"] == padded["max_length"] == T
