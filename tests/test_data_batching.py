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
    return Features(
        input_ids=ids,
        attention_mask=np.ones_like(ids),
        token_type_ids=np.zeros_like(ids),
        labels=labels,
        index=np.arange(100, 100 + n, dtype=np.int64),
    )


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
        return np.concatenate(
            [
                b["input_ids"][:, 0]
                for b in take(BatchIterator(synthetic(), 5, shuffle=True, seed=seed, drop_remainder=True), 6)
            ]
        )

    assert (rows(3) == rows(3)).all() and not (rows(3) == rows(4)).all()
    first, second = rows(3)[:10], rows(3)[10:20]
    assert sorted(first) == sorted(second) == list(range(10)) and not (first == second).all()
    np.testing.assert_array_equal(first, np.random.default_rng([3, 0]).permutation(10))
    unshuffled = np.concatenate(
        [
            b["input_ids"][:, 0]
            for b in take(BatchIterator(synthetic(), 5, shuffle=False, seed=3, drop_remainder=True), 2)
        ]
    )
    assert unshuffled.tolist() == list(range(10))


def test_negative_seed_shuffles_deterministically():
    # train.seed may be any int (jax.random.PRNGKey(-1) is fine); numpy's SeedSequence
    # refuses negative entries, so the iterator takes the seed modulo 2**64.
    def rows(seed, epochs=2):
        return np.concatenate(
            [
                b["index"]
                for b in take(BatchIterator(synthetic(), 5, shuffle=True, seed=seed, drop_remainder=True), 2 * epochs)
            ]
        )

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
        shards = [
            list(
                BatchIterator(
                    features,
                    6,
                    shuffle=True,
                    seed=7,
                    drop_remainder=drop,
                    num_epochs=2,
                    process_index=p,
                    process_count=2,
                )
            )
            for p in (0, 1)
        ]
        assert len(shards[0]) == len(shards[1]) == len(whole)
        for g, s0, s1 in zip(whole, *shards):
            for key in g:
                assert s0[key].shape[0] == 3
                np.testing.assert_array_equal(s0[key], g[key][:3])
                np.testing.assert_array_equal(s1[key], g[key][3:])
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


# --------------------------------------------------------------------------- length buckets


def varied(n=37, t=32, seed=0):
    """Rows of varied lengths (1..t), each row's ids its row number, padded with 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, n)
    positions = np.arange(t)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int32)
    ids = np.where(mask, np.arange(n, dtype=np.int32)[:, None] + 1, 0).astype(np.int32)
    return Features(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=np.zeros_like(ids),
        labels=(np.arange(n) % 2).astype(np.int32),
        index=np.arange(100, 100 + n, dtype=np.int64),
    ), lengths


BUCKETS = (4, 8, 16, 32)


def test_buckets_visit_every_example_once_and_cut_to_a_bucket_that_holds_the_rows():
    features, lengths = varied()
    iterator = BatchIterator(features, 4, shuffle=True, seed=5, drop_remainder=True, buckets=BUCKETS)
    assert iterator.steps_per_epoch == 37 // 4
    batches = take(iterator, 2 * iterator.steps_per_epoch)
    for batch in batches:
        width = batch["input_ids"].shape[1]
        assert width in BUCKETS
        assert batch["attention_mask"].shape == batch["token_type_ids"].shape == (4, width)
        assert batch["example_mask"].all()
        rows = batch["index"] - 100
        assert lengths[rows].max() <= width  # the bucket holds every row
        np.testing.assert_array_equal(batch["input_ids"], features.input_ids[rows, :width])
        np.testing.assert_array_equal(batch["attention_mask"], features.attention_mask[rows, :width])
        np.testing.assert_array_equal(batch["labels"], features.labels[rows])
    widths = {b["input_ids"].shape[1] for b in batches}
    assert len(widths) > 1  # several buckets met
    per_epoch = iterator.steps_per_epoch
    for epoch in range(2):
        seen = np.concatenate([b["index"] for b in batches[epoch * per_epoch : (epoch + 1) * per_epoch]])
        assert len(seen) == len(set(seen.tolist())) == 36  # one partial batch (1 row) dropped
    first = [b["index"].tolist() for b in batches[:per_epoch]]
    second = [b["index"].tolist() for b in batches[per_epoch:]]
    assert first != second  # epochs differ


def test_buckets_eval_keeps_every_example_once():
    features, lengths = varied(n=21)
    iterator = BatchIterator(features, 4, buckets=BUCKETS)
    batches = list(iterator)
    assert len(batches) == iterator.steps_per_epoch == 6
    kept = np.concatenate([b["index"][b["example_mask"]] for b in batches])
    assert sorted(kept.tolist()) == list(range(100, 121))
    assert sum((~b["example_mask"]).sum() for b in batches) == 3
    padded = [b for b in batches if not b["example_mask"].all()]
    assert len(padded) == 1 and padded[0]["input_ids"].shape[1] == 32
    assert (padded[0]["index"][~padded[0]["example_mask"]] == -1).all()
    for batch in batches:
        rows = batch["index"][batch["example_mask"]] - 100
        assert lengths[rows].max() <= batch["input_ids"].shape[1]


def test_buckets_are_seeded():
    features, _ = varied()

    def run(seed, shuffle=True):
        it = BatchIterator(features, 4, shuffle=shuffle, seed=seed, drop_remainder=True, buckets=BUCKETS)
        return [(b["index"].tolist(), b["input_ids"].shape[1]) for b in take(it, 20)]

    assert run(3) == run(3) and run(3) != run(4)
    assert run(-1) == run(-1)
    unshuffled = run(3, shuffle=False)[:9]
    assert [w for _, w in unshuffled] == sorted(w for _, w in unshuffled)  # shortest bucket first


def test_buckets_state_save_and_restore():
    features, _ = varied()
    original = BatchIterator(features, 4, shuffle=True, seed=11, drop_remainder=True, buckets=BUCKETS)
    take(original, 13)  # crosses an epoch boundary (9 batches per epoch)
    state = json.loads(json.dumps(original.get_state()))
    assert state["epoch"] == 1 and state["position"] == 4 and state["buckets"] == list(BUCKETS)
    restored = BatchIterator(features, 4, shuffle=True, seed=11, drop_remainder=True, buckets=BUCKETS)
    restored.set_state(state)
    for a, b in zip(take(original, 12), take(restored, 12)):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(ConfigError, match="buckets"):
        BatchIterator(features, 4, shuffle=True, seed=11, drop_remainder=True, buckets=(8, 32)).set_state(state)
    with pytest.raises(ConfigError, match="buckets"):
        BatchIterator(features, 4, shuffle=True, seed=11, drop_remainder=True).set_state(state)
    old = {k: v for k, v in state.items() if k != "buckets"}  # a checkpoint from before buckets
    BatchIterator(features, 4, shuffle=True, seed=11, drop_remainder=True, buckets=BUCKETS).set_state(old)
    assert "buckets" not in BatchIterator(features, 4).get_state()


def test_buckets_process_shards_cover_the_global_batch():
    features, _ = varied(n=41)
    for drop in (True, False):
        whole = list(
            BatchIterator(features, 6, shuffle=True, seed=7, drop_remainder=drop, num_epochs=2, buckets=BUCKETS)
        )
        shards = [
            list(
                BatchIterator(
                    features,
                    6,
                    shuffle=True,
                    seed=7,
                    drop_remainder=drop,
                    num_epochs=2,
                    process_index=p,
                    process_count=2,
                    buckets=BUCKETS,
                )
            )
            for p in (0, 1)
        ]
        assert len(shards[0]) == len(shards[1]) == len(whole)
        for g, s0, s1 in zip(whole, *shards):
            for key in g:
                assert s0[key].shape[0] == s1[key].shape[0] == 3
                np.testing.assert_array_equal(s0[key], g[key][:3])
                np.testing.assert_array_equal(s1[key], g[key][3:])


def test_buckets_none_is_todays_batches():
    features, _ = varied()
    for drop, shuffle in ((True, True), (False, False)):
        a = list(BatchIterator(features, 4, shuffle=shuffle, seed=2, drop_remainder=drop, num_epochs=2))
        b = list(BatchIterator(features, 4, shuffle=shuffle, seed=2, drop_remainder=drop, num_epochs=2, buckets=None))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            for key in x:
                if x[key].ndim == 2:
                    assert x[key].shape == (4, 32)
                assert x[key].dtype == y[key].dtype
                np.testing.assert_array_equal(x[key], y[key])
    # one bucket at the full width (data.buckets="none"): today's batches, in today's order,
    # so a run resumed from a checkpoint written before buckets continues unchanged
    for drop, shuffle in ((True, True), (False, False)):
        a = list(BatchIterator(features, 4, shuffle=shuffle, seed=2, drop_remainder=drop, num_epochs=2))
        b = list(BatchIterator(features, 4, shuffle=shuffle, seed=2, drop_remainder=drop, num_epochs=2, buckets=(32,)))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])


def test_buckets_are_checked():
    features, _ = varied()
    with pytest.raises(ConfigError, match="ascending"):
        BatchIterator(features, 4, buckets=(16, 8, 32))
    with pytest.raises(ConfigError, match="ascending"):
        BatchIterator(features, 4, buckets=(16, 64))
    with pytest.raises(ConfigError, match="exceeds the longest bucket"):
        BatchIterator(features, 4, buckets=(4, 8))
