"""Entity-level evaluation of IOB2 tag sequences (the CoNLL convention), in pure Python.

The spans are those of `seqeval` in strict IOB2 mode
(`seqeval.metrics.f1_score(y_true, y_pred, mode="strict", scheme=IOB2)`),
re-implemented here so that the library does not depend on seqeval:

- an entity opens at "B-X" and runs over the "I-X" tags (same type X) right after it;
- an "I-X" that does not continue an entity of type X (after "O", at the start of a
  sentence, after "B-Y" or "I-Y") belongs to no entity: it is dropped, not repaired;
- "O" (or any "B-") ends the running entity.

A span is `(type, start, end)`: word positions, `end` exclusive. Scores are micro
averages over every entity of every sentence (an entity is correct when its type,
start and end all match a gold entity); a ratio with a zero denominator is 0.0 (as
seqeval with `zero_division=0`). `group_entities` gives the spans of one sentence as
the records of transformers' token-classification pipeline. `iob1_to_iob2` repairs
IOB1 tags (an entity may open with "I-"), which `rome_jax.data.tagging.check_tags`
refuses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

Span = tuple[str, int, int]


def _split(tag: str) -> tuple[str, str]:
    """("B" | "I" | "O", type) of one tag; ValueError for a tag outside IOB2."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[0] in "BI" and tag[1] == "-":
        return tag[0], tag[2:]
    raise ValueError(f"tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")


def entity_spans(tags: Sequence[str]) -> list[Span]:
    """The entities of one sentence's tags [L] in strict IOB2: `(type, start, end)`
    word positions, `end` exclusive, in order. An "I-X" that does not continue an
    entity of type X is no entity. ValueError for a tag that is not O, B-X or I-X."""
    spans: list[Span] = []
    kind, start = "", -1  # the open entity's type and start (start -1: none open)
    for position, tag in enumerate(tags):
        prefix, name = _split(tag)
        if prefix == "I" and start >= 0 and name == kind:
            continue
        if start >= 0:
            spans.append((kind, start, position))
            start = -1
        if prefix == "B":
            kind, start = name, position
    if start >= 0:
        spans.append((kind, start, len(tags)))
    return spans


def iob1_to_iob2(tags: Sequence[str]) -> tuple[str, ...]:
    """IOB1 tags [L] as IOB2 [L]: an "I-X" that opens an entity (after "O", "B-Y",
    "I-Y" or at the start) becomes "B-X"; other tags are kept."""
    out: list[str] = []
    previous = "O"
    for tag in tags:
        prefix, name = _split(tag)
        if prefix == "I":
            before, before_name = _split(previous)
            if before == "O" or before_name != name:
                tag = f"B-{name}"
        out.append(tag)
        previous = tag
    return tuple(out)


def _check_pairs(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if isinstance(gold, str) or isinstance(pred, str) or (gold and isinstance(gold[0], str)):
        raise ValueError("give a list of sentences, each a list of tags (not one flat list)")
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences against {len(pred)} predicted ones")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags against {len(p)} predicted tags")


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _scores(num_gold: int, num_pred: int, num_correct: int) -> dict[str, float]:
    precision = _ratio(num_correct, num_pred)
    recall = _ratio(num_correct, num_gold)
    denominator = precision + recall
    f1 = 2.0 * precision * recall / denominator if denominator else 0.0  # seqeval's formula, to the last bit
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "num_gold": num_gold,
        "num_pred": num_pred,
        "num_correct": num_correct,
    }


def _count(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> tuple[Counter, Counter, Counter]:
    """Per type: gold entities, predicted entities, correct ones (over all sentences)."""
    _check_pairs(gold, pred)
    num_gold: Counter[str] = Counter()
    num_pred: Counter[str] = Counter()
    num_correct: Counter[str] = Counter()
    for g, p in zip(gold, pred):
        gold_spans = set(entity_spans(g))
        pred_spans = set(entity_spans(p))
        num_gold.update(span[0] for span in gold_spans)
        num_pred.update(span[0] for span in pred_spans)
        num_correct.update(span[0] for span in gold_spans & pred_spans)
    return num_gold, num_pred, num_correct


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity scores of predicted tags against gold tags (N sentences,
    each [L_i] tags, equal lengths pairwise; ValueError naming the first sentence
    index whose lengths differ).

    Returns "precision", "recall", "f1" (floats, 0.0 where the denominator is 0) and
    "num_gold", "num_pred", "num_correct" (Python ints: entity counts).
    """
    num_gold, num_pred, num_correct = _count(gold, pred)
    return _scores(sum(num_gold.values()), sum(num_pred.values()), sum(num_correct.values()))


def per_type_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, dict[str, float]]:
    """`entity_scores` for each entity type found in gold or predicted tags, in sorted
    type order: {type: {"precision", "recall", "f1", "num_gold", "num_pred", "num_correct"}}."""
    num_gold, num_pred, num_correct = _count(gold, pred)
    types = sorted(set(num_gold) | set(num_pred))
    return {t: _scores(num_gold[t], num_pred[t], num_correct[t]) for t in types}


def group_entities(
    words: Sequence[str],
    tags: Sequence[str],
    scores: Sequence[float] | None = None,
    offsets: Sequence[tuple[int, int]] | None = None,
    text: str | None = None,
) -> list[dict[str, Any]]:
    """The entities of one sentence as records, like transformers' token-classification
    pipeline with aggregation "simple"/"first" (but strict IOB2: the spans of
    `entity_spans`).

    words, tags: [L]; scores: [L] per-word confidences or None; offsets: [L]
    (start, end) character offsets of each word in `text`, or None.
    Each record: "type"; "text" (`text[start:end]` with offsets and text, else the
    words joined by " "); "start", "end": character offsets into `text` with
    offsets, else into " ".join(words); "words": (first, last + 1) word positions;
    "score": the mean of the words' scores (None without scores).
    """
    n = len(words)
    for name, values in (("tags", tags), ("scores", scores), ("offsets", offsets)):
        if values is not None and len(values) != n:
            raise ValueError(f"{len(values)} {name} for {n} words")
    if offsets is None:
        starts, position = [], 0
        for word in words:
            starts.append(position)
            position += len(word) + 1
        bounds = [(s, s + len(w)) for s, w in zip(starts, words)]
    else:
        bounds = [(int(a), int(b)) for a, b in offsets]
    records = []
    for kind, first, stop in entity_spans(tags):
        start, end = bounds[first][0], bounds[stop - 1][1]
        if offsets is not None and text is not None:
            shown = text[start:end]
        else:
            shown = " ".join(words[first:stop])
        score = None if scores is None else float(sum(scores[first:stop]) / (stop - first))
        records.append(
            {"type": kind, "text": shown, "start": start, "end": end, "words": (first, stop), "score": score}
        )
    return records
