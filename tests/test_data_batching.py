"""BatchIterator (rome_jax.data.batching): static shapes, seeded shuffles, remainders,
process shards and resumable state."""

import json

import numpy as np
import pytest

from rome_jax.data.batching import BatchIterator
from rome_jax.data.features import Features
from rome_jax.errors import ConfigError

# --------------------------------------------------------------------------- batching


def synthetic(n=10, t=4, regression=False):
    ids = np.repeat(np.arange(n, dtype=np.int32)[:, None], t, axis=1)
    labels = np.arange(n, dtype=np.float32) / 2 if regression else (np.arange(n) % 3).astype(np.int32)
    return Features(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids),
                    labels=labels, index=np.arange(100, 100 + n, dtype=np.int64))


def take(iterator, k):
    return [next(iterator) for _ in range(k)]


def test_batches_static_shapes_and_dtypes():
    batch = next(BatchIterator(synthetic(regression=True), 4, shuffle=True, seed=0, drop_remainder=True))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (4, 4)
    assert batch["input_ids"].dtype == np.int32 and batch["labels"].dtype == np.float32
    assert batch["example_mask"].dtype == bool and batch["example_mask"].all()
    assert (batch["index"] == batch["input_ids"][:, 0] + 100).all()


def test_shuffle_is_determined_by_seed_and_epoch():
    def rows(seed):
        return np.concatenate([b["input_ids"][:, 0] for b in take(BatchIterator(
            synthetic(), 5, shuffle=True, seed=seed, drop_remainder=True), 6)])

    assert (rows(3) == rows(3)).all() and not (rows(3) == rows(4)).all()
    first, second = rows(3)[:10], rows(3)[10:20]
    assert sorted(first) == sorted(second) == list(range(10)) and not (first == second).all()
    np.testing.assert_array_equal(first, np.random.default_rng([3, 0]).permutation(10))
    unshuffled = np.concatenate([b["input_ids"][:, 0] for b in take(BatchIterator(
        synthetic(), 5, shuffle=False, seed=3, drop_remainder=True), 2)])
    assert unshuffled.tolist() == list(range(10))


def test_negative_seed_shuffles_deterministically():
    # train.seed may be any int (jax.random.PRNGKey(-1) is fine); numpy's SeedSequence
    # refuses negative entries, so the iterator takes the seed modulo 2**64.
    def rows(seed, epochs=2):
        return np.concatenate([b["index"] for b in take(BatchIterator(
            synthetic(), 5, shuffle=True, seed=seed, drop_remainder=True), 2 * epochs)])

    first = rows(-1)
    assert (first == rows(-1)).all() and sorted(first[:10].tolist()) == list(range(100, 110))
    np.testing.assert_array_equal(first[:10] - 100, np.random.default_rng([2**64 - 1, 0]).permutation(10))
    assert not (first == rows(-2)).all()


def test_drop_remainder_for_training():
    iterator = BatchIterator(synthetic(), 4, shuffle=True, seed=1, drop_remainder=True)
    assert iterator.steps_per_epoch == 2
    batches = take(iterator, 20)  # training repeats forever
    assert all(b["example_mask"].all() and len(b["labels"]) == 4 for b in batches)
    epoch0 = np.concatenate([b["index"] for b in batches[:2]])
    assert len(set(epoch0.tolist())) == 8
    with pytest.raises(ConfigError, match="exceeds the 10 examples"):
        BatchIterator(synthetic(), 16, shuffle=True, seed=1, drop_remainder=True)


def test_eval_keeps_every_example_once():
    iterator = BatchIterator(synthetic(), 4, shuffle=False, seed=0, drop_remainder=False)
    batches = list(iterator)
    assert len(batches) == iterator.steps_per_epoch == 3
    assert all(b["input_ids"].shape == (4, 4) for b in batches)
    assert batches[-1]["example_mask"].tolist() == [True, True, False, False]
    assert batches[-1]["index"].tolist()[2:] == [-1, -1]
    kept = np.concatenate([b["index"][b["example_mask"]] for b in batches])
    assert sorted(kept.tolist()) == list(range(100, 110))
    assert list(iterator) == []  # one pass


def test_process_shards_cover_the_global_batch():
    features = synthetic(n=11)
    for drop in (True, False):
        whole = list(BatchIterator(features, 6, shuffle=True, seed=7, drop_remainder=drop, num_epochs=2))
        shards = [list(BatchIterator(features, 6, shuffle=True, seed=7, drop_remainder=drop,
                                     num_epochs=2, process_index=p, process_count=2)) for p in (0, 1)]
        assert len(shards[0]) == len(shards[1]) == len(whole)
        for g, s0, s1 in zip(whole, *shards):
            for key in g:
                assert s0[key].shape[0] == 3
                np.testing.assert_array_equal(s0[key], g[key][0::2])
                np.testing.assert_array_equal(s1[key], g[key][1::2])
    with pytest.raises(ConfigError, match="not divisible"):
        BatchIterator(features, 5, process_count=2)


def test_state_save_and_restore():
    features = synthetic(n=13)
    original = BatchIterator(features, 4, shuffle=True, seed=11, drop_remainder=True)
    take(original, 5)  # crosses an epoch boundary (3 batches per epoch)
    state = json.loads(json.dumps(original.get_state()))
    assert state["epoch"] == 1 and state["position"] == 2
    restored = BatchIterator(features, 4, shuffle=True, seed=11, drop_remainder=True)
    restored.set_state(state)
    for a, b in zip(take(original, 7), take(restored, 7)):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(ConfigError, match="seed"):
        BatchIterator(features, 4, shuffle=True, seed=12, drop_remainder=True).set_state(state)
