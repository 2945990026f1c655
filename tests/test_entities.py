"""Entity-level IOB2 evaluation (`rome_jax.data.entities`) against seqeval's strict mode."""

import warnings

import numpy as np
import pytest

from rome_jax.data.entities import entity_scores, entity_spans, group_entities, iob1_to_iob2, per_type_scores

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def random_corpus(rng: np.random.Generator, sentences: int) -> list[list[str]]:
    """Sentences of random tags: O-heavy, with I- after O, type switches, empty sentences."""
    weights = np.asarray([4, 2, 2, 1, 1, 1, 1], float)
    corpus = []
    for _ in range(sentences):
        length = int(rng.integers(0, 12))
        corpus.append([TAGS[i] for i in rng.choice(len(TAGS), length, p=weights / weights.sum())])
    return corpus


def perturb(rng: np.random.Generator, corpus: list[list[str]]) -> list[list[str]]:
    """A prediction: the gold tags with about a quarter of them replaced at random."""
    out = []
    for sentence in corpus:
        out.append([TAGS[int(rng.integers(len(TAGS)))] if rng.random() < 0.25 else t for t in sentence])
    return out


def test_spans_match_seqeval_strict_on_random_sequences():
    from seqeval.scheme import IOB2, Entities

    rng = np.random.default_rng(0)
    corpus = random_corpus(rng, 3000)
    theirs = Entities(corpus, IOB2).entities
    for tags, expected in zip(corpus, theirs):
        assert entity_spans(tags) == [(e.tag, e.start, e.end) for e in expected], tags


def test_scores_match_seqeval_strict_on_random_corpora():
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.metrics.v1 import precision_recall_fscore_support
    from seqeval.scheme import IOB2

    rng = np.random.default_rng(1)
    for trial in range(150):
        gold = random_corpus(rng, int(rng.integers(1, 25)))
        pred = perturb(rng, gold) if trial % 10 else [["O"] * len(s) for s in gold]  # some: no prediction at all
        ours = entity_scores(gold, pred)
        kw = dict(mode="strict", scheme=IOB2, zero_division=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert ours["f1"] == pytest.approx(f1_score(gold, pred, **kw), abs=1e-12)
            assert ours["precision"] == pytest.approx(precision_score(gold, pred, **kw), abs=1e-12)
            assert ours["recall"] == pytest.approx(recall_score(gold, pred, **kw), abs=1e-12)
            p, r, f, support = precision_recall_fscore_support(gold, pred, average=None, scheme=IOB2, zero_division=0)
        per_type = per_type_scores(gold, pred)
        types = sorted({s[0] for sent in gold + pred for s in entity_spans(sent)})
        assert list(per_type) == types
        for k, name in enumerate(types):
            assert per_type[name]["precision"] == pytest.approx(p[k], abs=1e-12)
            assert per_type[name]["recall"] == pytest.approx(r[k], abs=1e-12)
            assert per_type[name]["f1"] == pytest.approx(f[k], abs=1e-12)
            assert per_type[name]["num_gold"] == support[k]
        assert sum(s["num_correct"] for s in per_type.values()) == ours["num_correct"]


def test_hand_worked_spans():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    assert entity_spans(["O", "I-PER", "I-PER", "O"]) == []  # strict: an I- after O opens nothing
    assert entity_spans(["I-PER"]) == []
    assert entity_spans(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 1)]  # type switch ends the entity
    assert entity_spans(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 1), ("PER", 1, 3)]
    assert entity_spans(["B-ORG", "I-ORG", "I-ORG"]) == [("ORG", 0, 3)]  # runs to the end
    assert entity_spans([]) == []
    with pytest.raises(ValueError, match="'E-PER' is not IOB2"):
        entity_spans(["E-PER"])


def test_hand_worked_scores():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O"]]
    scores = entity_scores(gold, pred)
    # gold: PER(0,2), LOC(3,4), ORG(0,1); pred: PER(0,2), ORG(3,4); I-ORG after nothing: no entity
    assert scores == {
        "precision": 0.5,
        "recall": 1 / 3,
        "f1": 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3),
        "num_gold": 3,
        "num_pred": 2,
        "num_correct": 1,
    }
    per_type = per_type_scores(gold, pred)
    assert per_type["PER"]["f1"] == 1.0
    assert per_type["LOC"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "num_gold": 1,
        "num_pred": 0,
        "num_correct": 0,
    }
    assert per_type["ORG"]["num_pred"] == 1 and per_type["ORG"]["num_gold"] == 1
    assert entity_scores([["O"]], [["O"]])["f1"] == 0.0  # no entity anywhere: 0, not NaN


def test_length_mismatch_names_the_sentence():
    with pytest.raises(ValueError, match="sentence 1: 2 gold tags against 1 predicted"):
        entity_scores([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="2 gold sentences against 1"):
        entity_scores([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="list of sentences"):
        entity_scores(["O", "B-PER"], ["O", "B-PER"])


def test_iob1_to_iob2():
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == (
        "B-PER",
        "I-PER",
        "O",
        "B-LOC",
        "B-LOC",
        "B-ORG",
    )


def test_group_entities_with_offsets():
    text = "Yesterday  Angela Merkel visited New York."
    words = ["Yesterday", "Angela", "Merkel", "visited", "New", "York", "."]
    offsets = [(0, 9), (11, 17), (18, 24), (25, 32), (33, 36), (37, 41), (41, 42)]
    assert [text[a:b] for a, b in offsets] == words
    tags = ["O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]
    scores = [0.9, 0.8, 0.6, 0.99, 0.5, 0.7, 0.9]
    records = group_entities(words, tags, scores, offsets, text)
    assert records == [
        {"type": "PER", "text": "Angela Merkel", "start": 11, "end": 24, "words": (1, 3), "score": pytest.approx(0.7)},
        {"type": "LOC", "text": "New York", "start": 33, "end": 41, "words": (4, 6), "score": pytest.approx(0.6)},
    ]


def test_group_entities_without_offsets():
    words = ["in", "Lower", "Saxony", "and", "Bremen"]
    tags = ["O", "B-LOC", "I-LOC", "I-PER", "B-LOC"]  # "I-PER" opens nothing (strict)
    records = group_entities(words, tags)
    joined = " ".join(words)
    assert [(r["text"], joined[r["start"] : r["end"]], r["words"], r["score"]) for r in records] == [
        ("Lower Saxony", "Lower Saxony", (1, 3), None),
        ("Bremen", "Bremen", (4, 5), None),
    ]
    with pytest.raises(ValueError, match="2 scores for 5 words"):
        group_entities(words, tags, [0.1, 0.2])
