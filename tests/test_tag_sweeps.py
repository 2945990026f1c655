"""A tagger's sweeps and calibration on a tiny random model (exits/tag_sweeps.py)."""

from __future__ import annotations

import numpy as np
import pytest

from rome_jax.data.buckets import length_buckets
from rome_jax.data.features import Features
from rome_jax.data.tagging import TaggedSentences, TaggingFeatures
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import init_params
from rome_jax.exits import tag_sweeps, tokens
from rome_jax.exits.criteria import Criterion
from rome_jax.exits.outputs import all_exit_logits

TAGS = ["O", "B-X", "I-X"]


@pytest.fixture(scope="module")
def tagger():
    """A random 3-exit token model and 24 sentences of 2-6 one-piece words."""
    config = ModelConfig(
        vocab_size=60,
        hidden_size=16,
        num_layers=3,
        num_heads=2,
        intermediate_size=24,
        num_labels=3,
        exit_pooling="token",
    )
    params = init_params(config, seed=3)
    rng = np.random.default_rng(0)
    n, width = 24, 10
    ids = np.zeros((n, width), np.int32)
    mask = np.zeros((n, width), np.int32)
    word_ids = np.full((n, width), -1, np.int32)
    words, tags = [], []
    for i in range(n):
        count = int(rng.integers(2, 7))
        ids[i, : count + 2] = [1, *rng.integers(5, 60, count), 2]
        mask[i, : count + 2] = 1
        word_ids[i, 1 : count + 1] = np.arange(count)
        words.append(tuple(f"w{j}" for j in range(count)))
        tags.append(tuple(rng.choice(["O", "B-X"], count)))
    labels = np.full((n, width), -100, np.int32)
    features = TaggingFeatures(
        features=Features(ids, mask, np.zeros_like(ids), labels, np.arange(n)),
        word_ids=word_ids,
        num_words=mask.sum(1).astype(np.int32) - 2,
        kept_words=mask.sum(1).astype(np.int32) - 2,
        truncated=0,
    )
    sentences = TaggedSentences(
        words=tuple(words), tags=tuple(tags), index=np.arange(n), source="t", lines=tuple(range(n))
    )
    logits = all_exit_logits(config, params, features.features, batch_size=8, buckets=length_buckets(width, "none"))
    return config, params, features, sentences, logits


def test_sentence_losses_are_the_share_of_changed_words():
    full = np.zeros((2, 4, 3))
    full[..., 0] = 1  # every token "O"
    early = full.copy()
    early[0, 1] = [0, 1, 0]  # sentence 0: word 1 of 2 changed
    early[1, 3] = [0, 1, 0]  # sentence 1: a non-word position changed: no loss
    words = np.array([[False, True, True, False], [False, True, False, False]])
    np.testing.assert_allclose(tag_sweeps._sentence_losses(early, full, words), [0.5, 0.0])


def test_sentence_level_rows_read_the_full_depth_logits(tagger):
    config, params, features, sentences, logits = tagger
    c = Criterion("entropy", 0.9)
    exits, answers = tag_sweeps.sentence_level(logits, features, c)
    want = np.asarray(tokens.sentence_exit_layers(logits, tag_sweeps.word_mask(features), c))
    np.testing.assert_array_equal(exits, want)
    row = tag_sweeps.point(config, "sentence", c, exits, answers, sentences, features, TAGS)
    assert row["mean_layers"] == pytest.approx(np.mean(np.repeat(exits + 1, features.num_words)))
    assert 0 < row["flops_ratio"] <= 1 and row["flops_speedup"] == pytest.approx(1 / row["flops_ratio"])


def test_token_level_at_a_never_firing_threshold_is_full_depth(tagger):
    config, params, features, sentences, logits = tagger
    buckets = length_buckets(10, "auto")
    exits, answers, _ = tag_sweeps.token_level(config, params, features, Criterion("entropy", 0.0), buckets=buckets)
    assert (exits[features.features.attention_mask.astype(bool)] == 2).all()
    mask = features.features.attention_mask.astype(bool)
    np.testing.assert_allclose(answers[mask], logits[-1][mask], atol=1e-5)


def test_nothing_is_certified_when_no_threshold_qualifies(tagger):
    config, params, features, sentences, logits = tagger
    buckets = length_buckets(10, "none")
    # 24 sentences cannot certify a 0.1% share of changed words at delta 0.1: full depth
    chosen = tag_sweeps.calibrate_tagging(
        config, params, logits, features, eps=0.001, delta=0.1, windows=(0,), buckets=buckets
    )
    assert chosen["default"] is None
    assert all(v is None for by_name in chosen["rules"].values() for v in by_name.values())
    # a loose promise certifies thresholds, each with its calibration figures
    loose = tag_sweeps.calibrate_tagging(
        config, params, logits, features, eps=0.5, delta=0.5, windows=(0,), buckets=buckets
    )
    assert loose["default"] is not None and loose["default"]["calibration_flops_ratio"] < 1
    assert loose["default"]["calibration_changed_words"] <= 0.5
