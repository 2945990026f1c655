"""exits/outputs.py: every exit's outputs over a dataset, in input order, against each
example run alone (numpy order), and the rows each process passes against the
training iterator's."""

import numpy as np
import pytest
from test_inference import TINY, random_params, spread_exits

from rome_jax.data import BatchIterator, Features
from rome_jax.data.buckets import LengthBuckets, length_buckets, sequence_lengths
from rome_jax.encoder.model import INPUT_KEYS
from rome_jax.errors import ConfigError
from rome_jax.exits import executors, outputs
from rome_jax.exits.criteria import Criterion

T = 32
N = 11


def make_features(n=N, seed=1) -> Features:
    rng = np.random.RandomState(seed)
    lengths = rng.randint(2, T + 1, n)
    lengths[3] = T  # one row needs every position
    ids = rng.randint(3, TINY.vocab_size, (n, T)).astype(np.int32)
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
    return Features(
        input_ids=ids * mask,
        attention_mask=mask,
        token_type_ids=np.zeros_like(ids),
        labels=rng.randint(0, TINY.num_labels, n).astype(np.int32),
        index=np.arange(n, dtype=np.int64),
    )


@pytest.fixture(scope="module")
def setup():
    features = make_features()
    params = spread_exits(TINY, random_params(TINY), {k: getattr(features, k) for k in INPUT_KEYS})
    # the reference: each example alone, at full length, in the features' order
    alone = np.stack(
        [
            np.asarray(executors.all_exits(TINY, params, {k: getattr(features, k)[i : i + 1] for k in INPUT_KEYS}))[
                :, 0
            ]
            for i in range(N)
        ],
        axis=1,
    )
    return features, params, alone


@pytest.mark.parametrize("spec", ["none", "auto", "8,16"])
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_all_exit_logits_equal_each_example_alone(setup, spec, batch_size):
    features, params, alone = setup
    buckets = length_buckets(T, spec)
    logits = outputs.all_exit_logits(TINY, params, features, batch_size=batch_size, buckets=buckets)
    assert logits.shape == (TINY.num_exits, N, TINY.num_labels) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, alone, atol=1e-4, rtol=0)


def test_early_exits_equal_each_example_alone(setup):
    features, params, alone = setup
    for criterion in (Criterion("patience", 1), Criterion("fixed", 3), Criterion("max_prob", 0.6)):
        expected = []
        for i in range(N):
            one = {k: getattr(features, k)[i : i + 1] for k in INPUT_KEYS}
            expected.append(int(np.asarray(executors.while_loop_exit(TINY, params, one, criterion)["exit_index"])[0]))
        for spec in ("none", "auto"):
            exit_index, logits = outputs.early_exits(
                TINY, params, features, criterion, batch_size=4, buckets=length_buckets(T, spec)
            )
            assert exit_index.dtype == np.int32 and logits.shape == (N, TINY.num_labels)
            np.testing.assert_array_equal(exit_index, expected, err_msg=f"{criterion} {spec}")
            np.testing.assert_allclose(logits, alone[exit_index, np.arange(N)], atol=1e-4, rtol=0)


def test_exit_outputs_runs_each_length_once_per_call_and_scatters_back(setup):
    features = setup[0]
    calls = []

    def run(batches):
        calls.append([b["input_ids"].shape for b in batches])
        return {"first_id": np.concatenate([b["input_ids"][:, 0] for b in batches])}

    buckets = length_buckets(T, "8,16")
    out = outputs.exit_outputs(run, features, batch_size=4, buckets=buckets, per_length=True)
    np.testing.assert_array_equal(out["first_id"], features.input_ids[:, 0])
    lengths = [shapes[0][1] for shapes in calls]
    assert lengths == sorted(set(lengths)) and all(len({s[1] for s in shapes}) == 1 for shapes in calls)
    calls.clear()
    out = outputs.exit_outputs(run, features, batch_size=4, buckets=LengthBuckets.none(T))
    assert calls == [[(4, T)]] * 3  # one bucket: the rows in order, the last batch padded
    np.testing.assert_array_equal(out["first_id"], features.input_ids[:, 0])


@pytest.mark.parametrize("spec", ["none", "8,16"])
def test_each_process_passes_the_rows_the_training_iterator_gives_it(setup, spec):
    """With process_count 2, process p's batches hold the rows BatchIterator gives
    process p (evaluation: no shuffle, no dropped remainder), cut alike."""
    features = setup[0]
    buckets = length_buckets(T, spec)
    for p in range(2):
        seen = []
        outputs.exit_outputs(
            lambda batches, seen=seen: seen.extend(batches) or {},
            features,
            batch_size=4,
            buckets=buckets,
            process_index=p,
            process_count=2,
        )
        expected = list(BatchIterator(features, 4, process_index=p, process_count=2, buckets=buckets))
        assert len(seen) == len(expected)
        for got, want in zip(seen, expected):
            real = want["example_mask"]
            np.testing.assert_array_equal(got["example_mask"], real)
            for k in INPUT_KEYS:
                np.testing.assert_array_equal(got[k][real], want[k][real])
                assert got[k].shape == want[k].shape
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        outputs.exit_outputs(lambda b: {}, features, batch_size=4, buckets=buckets, process_count=3)


def test_buckets_must_be_the_resolved_value(setup):
    features, params, _ = setup
    with pytest.raises(TypeError, match="LengthBuckets"):
        outputs.all_exit_logits(TINY, params, features, batch_size=4, buckets="auto")
    with pytest.raises(ConfigError, match="exceed the inputs' 32 positions"):
        outputs.batch_plan(features, 4, length_buckets(64, "auto"))


def test_take_pads_with_masked_copies_and_mappings_need_only_input_ids(setup):
    features = setup[0]
    batch = outputs.take(features, np.array([5, 2, -1, -1]), 8)
    assert batch["input_ids"].shape == (4, 8) and batch["example_mask"].tolist() == [True, True, False, False]
    np.testing.assert_array_equal(batch["input_ids"][2:], features.input_ids[[5, 5], :8])
    only_ids = {"input_ids": features.input_ids[:3]}
    plan = outputs.batch_plan(only_ids, 2, LengthBuckets.none(T))
    assert [(r.tolist(), n) for r, n in plan] == [([0, 1], T), ([2, -1], T)]
    assert set(outputs.take(only_ids, plan[0][0], T)) == {"input_ids", "example_mask"}
    assert sequence_lengths(features.attention_mask).max() == T
