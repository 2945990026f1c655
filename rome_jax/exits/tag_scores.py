"""Entity-level scores of token exits: from per-token logits to per-word tags to F1.

Every score is over every word of every sentence: a word whose first sub-token did not
fit in `max_length` (`TaggingFeatures.kept_words`) counts as tagged "O" (the
prediction a truncated word gets), so truncation costs recall instead of hiding words.

    tags = word_tags(pred_ids [N, T], features, tag_names)        # list of [W_n] str
    entity_scores(gold, tags)                                     # {"precision", "recall", "f1", ...}
    scores_by_exit(logits [E, N, T, C], sentences, features, tag_names)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rome_jax.data.entities import entity_scores
from rome_jax.data.tagging import TaggedSentences, TaggingFeatures, word_predictions

OUTSIDE = "O"


def word_tags(pred_ids: np.ndarray, features: TaggingFeatures, tag_names: Sequence[str]) -> list[list[str]]:
    """Per sentence, the tag of every word (its first sub-token's tag id in `pred_ids`
    [N, T]; "O" for words past `max_length`)."""
    outside = list(tag_names).index(OUTSIDE) if OUTSIDE in tag_names else 0
    names = np.asarray(list(tag_names), dtype=object)
    return [list(names[ids]) for ids in word_predictions(np.asarray(pred_ids), features, outside)]


def gold_tags(sentences: TaggedSentences) -> list[list[str]]:
    """The sentences' tags as lists (ValueError when they have none)."""
    if sentences.tags is None:
        raise ValueError(f"{sentences.source}: the sentences have no tags to score against")
    return [list(t) for t in sentences.tags]


def scores(
    pred_ids: np.ndarray, sentences: TaggedSentences, features: TaggingFeatures, tag_names: Sequence[str]
) -> dict[str, float]:
    """Entity precision, recall and F1 (0..1) of tag ids `pred_ids` [N, T] against the
    sentences' tags, with "token_accuracy" over the words."""
    gold = gold_tags(sentences)
    pred = word_tags(pred_ids, features, tag_names)
    out = {k: float(v) for k, v in entity_scores(gold, pred).items()}
    words = sum(len(g) for g in gold)
    right = sum(int(np.sum(np.asarray(g, dtype=object) == np.asarray(p, dtype=object))) for g, p in zip(gold, pred))
    out["token_accuracy"] = right / max(words, 1)
    return out


def scores_by_exit(
    logits: np.ndarray, sentences: TaggedSentences, features: TaggingFeatures, tag_names: Sequence[str]
) -> list[dict[str, float]]:
    """`scores` of every exit's argmax: logits [E, N, T, C] -> E dicts."""
    return [scores(np.argmax(exit_logits, axis=-1), sentences, features, tag_names) for exit_logits in logits]
