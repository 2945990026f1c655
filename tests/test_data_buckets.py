"""Length buckets: the rule of rome_jax/data/buckets.py against plain-Python references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rome_jax.data import buckets as B
from rome_jax.errors import ConfigError


def test_length_buckets():
    assert B.length_buckets(128) == (16, 32, 64, 128)
    assert B.length_buckets(100) == (16, 32, 64, 100)
    assert B.length_buckets(64, "auto") == (16, 32, 64)
    assert B.length_buckets(16) == (16,)
    assert B.length_buckets(12) == (12,)
    assert B.length_buckets(128, "none") == (128,)
    assert B.length_buckets(128, None) == (128,)
    assert B.length_buckets(128, "48, 24") == (24, 48, 128)
    assert B.length_buckets(128, [64, 128]) == (64, 128)
    for bad in ("big", "0,16", "-4", ""):
        with pytest.raises(ConfigError, match="data.buckets"):
            B.length_buckets(128, bad)
    with pytest.raises(ConfigError, match="above data.max_length 64"):
        B.length_buckets(64, "32,128")
    assert B.check_spec("auto") is None and B.check_spec("8,16") is None
    assert "must be a string" in B.check_spec(16)
    assert "lengths" in B.check_spec("x")


def test_sequence_lengths_against_a_loop():
    rng = np.random.default_rng(0)
    mask = (rng.random((50, 20)) < 0.3).astype(np.int32)
    mask[0] = 0
    mask[1] = 1
    expected = [max([j + 1 for j in range(20) if row[j]], default=0) for row in mask]
    np.testing.assert_array_equal(B.sequence_lengths(mask), expected)


def _reference_batches(order, lengths, buckets, batch_size, drop_remainder):
    """The module docstring's rule, written row by row."""
    if drop_remainder:  # training leaves out the order's last n mod batch_size rows
        order = list(order)[: len(order) - len(order) % batch_size]
    pools = {k: [] for k in range(len(buckets))}
    for row in order:
        k = next(i for i, b in enumerate(buckets) if lengths[row] <= b)
        pools[k].append(int(row))
    out, carried = [], []
    for k, length in enumerate(buckets):
        pool = carried + pools[k]
        while len(pool) >= batch_size:
            out.append((pool[:batch_size], length))
            pool = pool[batch_size:]
        carried = pool
    if carried and not drop_remainder:
        out.append((carried + [-1] * (batch_size - len(carried)), buckets[-1]))
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 80),
    batch_size=st.integers(1, 9),
    max_length=st.integers(4, 70),
    seed=st.integers(0, 1000),
    drop=st.booleans(),
)
def test_bucket_batches_follow_the_rule(n, batch_size, max_length, seed, drop):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, n)
    buckets = B.length_buckets(max_length)
    order = rng.permutation(n)
    got = B.bucket_batches(order, lengths, buckets, batch_size, drop_remainder=drop)
    want = _reference_batches(order, lengths, buckets, batch_size, drop)
    assert [(list(r), L) for r, L in got] == want
    rows = np.concatenate([r for r, _ in got]) if got else np.zeros(0, int)
    real = rows[rows >= 0]
    assert len(set(real.tolist())) == len(real)  # no row twice
    assert len(got) == (n // batch_size if drop else -(-n // batch_size))
    for r, L in got:  # every row fits its cut
        assert all(lengths[x] <= L for x in r if x >= 0)


def test_shuffled_batches_mix_lengths_and_are_seeded():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 129, 400)
    order = rng.permutation(400)
    buckets = B.length_buckets(128)
    a = B.bucket_batches(order, lengths, buckets, 8, drop_remainder=True, shuffle_seed=[3, 0])
    b = B.bucket_batches(order, lengths, buckets, 8, drop_remainder=True, shuffle_seed=[3, 0])
    c = B.bucket_batches(order, lengths, buckets, 8, drop_remainder=True, shuffle_seed=[3, 1])
    assert [(r.tolist(), L) for r, L in a] == [(r.tolist(), L) for r, L in b]
    assert [L for _, L in a] != [L for _, L in c]
    plain = B.bucket_batches(order, lengths, buckets, 8, drop_remainder=True)
    assert [L for _, L in plain] == sorted(L for _, L in plain)  # unshuffled: shortest first
    assert [L for _, L in a] != [L for _, L in plain]  # shuffled: lengths mixed
    assert sorted(map(tuple, (r for r, _ in a))) == sorted(map(tuple, (r for r, _ in plain)))


def test_the_rows_an_epoch_leaves_out_are_random_rows_of_every_length():
    """Training leaves out N mod batch_size rows an epoch: the same rows as batches padded
    to one length (the tail of the epoch's permutation), so long rows are kept as often
    as short ones, not always the longest bucket's partial batch."""
    lengths = np.where(np.arange(47) < 40, 10, 60)  # 40 short rows, 7 long ones (one bucket)
    buckets = B.length_buckets(64)
    batch_size = 8  # 47 = 5 x 8 + 7: seven rows left out each epoch
    kept_long = []
    for epoch in range(400):
        order = np.random.default_rng([5, epoch]).permutation(47)
        batches = B.bucket_batches(order, lengths, buckets, batch_size, drop_remainder=True, shuffle_seed=[5, epoch, 1])
        rows = np.concatenate([r for r, _ in batches])
        assert len(batches) == 47 // batch_size and len(set(rows.tolist())) == 40
        np.testing.assert_array_equal(np.sort(rows), np.sort(order[:40]))  # as the padded path keeps
        kept_long.append(int((lengths[rows] == 60).sum()))
    share_long = np.mean(kept_long) / 7
    assert share_long == pytest.approx(40 / 47, abs=0.03)  # the share every row is kept with


def test_padded_share():
    lengths = np.array([10, 20, 30, 40])
    batches = [(np.array([0, 1]), 32), (np.array([2, -1]), 64)]
    assert B.padded_share(lengths, batches) == pytest.approx(1 - 60 / 192)


def test_length_buckets_is_one_typed_value_with_one_meaning_of_none():
    for spec in ("none", "NONE", None, [128], "128"):
        value = B.length_buckets(128, spec)
        assert isinstance(value, B.LengthBuckets) and value == (128,) and value.padded
        assert value == B.LengthBuckets.none(128)
    auto = B.length_buckets(128, "auto")
    assert isinstance(auto, B.LengthBuckets) and not auto.padded and auto.max_length == 128
    assert B.length_buckets(128, auto) is auto  # already resolved: passed through
    with pytest.raises(ConfigError, match="end at 128, not at max_length 64"):
        B.length_buckets(64, auto)
    for bad in ((), (32, 16), (16, 16), (0, 16)):
        with pytest.raises(ConfigError, match="ascending distinct positive"):
            B.LengthBuckets(bad)
    # one bucket cuts the rows exactly as no bucket at all: the file's order, the last batch padded
    lengths = np.array([3, 9, 1, 7, 5])
    one = B.bucket_batches(np.arange(5), lengths, B.LengthBuckets.none(9), 2, drop_remainder=False)
    assert [(r.tolist(), n) for r, n in one] == [
        ([0, 1], 9),
        ([2, 3], 9),
        ([4, -1], 9),
    ]
