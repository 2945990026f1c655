"""Early-exit tagging of raw sentences: per word, the tag, its probability, its exit layer;
entities grouped as transformers' token-classification pipeline groups them.

    model = rome_jax.load_pretrained("runs/conll/model")
    out = model.predict(["EU rejects German call", ["Peter", "Blackburn"]])
    out[0]["tags"], out[0]["exit_layers"], out[0]["entities"], out.mean_layers

A sentence is a string (split on whitespace; entity offsets index the string) or a
list of words. The rule (`rome_jax.exits.tokens`): "token" (TOKEE: a word leaves
once it and its neighbours within `window` words are confident; the default) or
"sentence" (SENTEE: a sentence leaves once all its words are). The criterion: a
`Criterion` or "entropy:0.3", "max_prob:0.9", "patience:2"; "calibrated" (the
model's Learn-then-Test calibration from `eval.py`: its rule, window, criterion and
threshold); None / "none" (full depth); "auto" (the default: calibrated when the
model carries a tagging calibration, else full depth). Words past `max_length`
sub-tokens are tagged "O" with score 0 and exit layer 0 (they did not run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rome_jax.data.buckets import LengthBuckets, length_buckets
from rome_jax.data.entities import group_entities
from rome_jax.data.tagging import TaggedSentences, align, word_predictions
from rome_jax.exits import tag_sweeps
from rome_jax.exits.criteria import Criterion
from rome_jax.serving.predict import resolve_criterion

RULES = ("token", "sentence")


@dataclasses.dataclass
class Tagged:
    """Tagged sentences: a list of dicts {"words", "tags", "scores", "exit_layers",
    "entities"}, with the rule that ran and `mean_layers` over the words."""

    sentences: list[dict[str, Any]]
    rule: str
    criterion: Criterion | None
    window: int

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.sentences[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.sentences)

    @property
    def mean_layers(self) -> float:
        layers = [layer for s in self.sentences for layer in s["exit_layers"] if layer > 0]
        return float(np.mean(layers)) if layers else 0.0


def _words(sentence: Any, i: int) -> tuple[list[str], list[tuple[int, int]] | None, str | None]:
    if isinstance(sentence, str):
        offsets, words, pos = [], [], 0
        for word in sentence.split():
            start = sentence.index(word, pos)
            pos = start + len(word)
            words.append(word)
            offsets.append((start, pos))
        return words, offsets, sentence
    if isinstance(sentence, Sequence) and all(isinstance(w, str) and w.strip() for w in sentence):
        return list(sentence), None, None
    raise ValueError(f"sentence {i}: give a string or a list of non-empty words, not {sentence!r:.60}")


def resolve(
    model: Any, criterion: Criterion | str | None, rule: str | None, window: int | None
) -> tuple[Criterion | None, str, int]:
    """(criterion or None for full depth, rule, window) of a call."""
    calibration = getattr(model, "calibration", None) or {}
    tagging = calibration.get("kind") == "tagging"
    if isinstance(criterion, str) and criterion.strip().lower() in ("auto", "calibrated"):
        if criterion.strip().lower() == "calibrated" and not tagging:
            raise ValueError("criterion 'calibrated': the model carries no tagging calibration (run eval.py)")
        default = calibration.get("default") if tagging else None
        if default is None:
            return None, rule or "token", window or 0
        chosen_rule, chosen_window = tag_sweeps.rule_of(default["rule"])
        return Criterion(default["criterion"], float(default["threshold"])), chosen_rule, chosen_window
    if criterion is None or (isinstance(criterion, str) and criterion.strip().lower() in ("none", "full", "")):
        return None, rule or "token", window or 0
    rule = rule or "token"
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, not {rule!r}")
    c = resolve_criterion(criterion, model.config, None)
    if c is None:
        return None, rule, int(window or 0)
    return c, rule, tag_sweeps.SENTENCE_WINDOW if rule == "sentence" else int(window or 0)


def tag(
    model: Any,
    sentences: Sequence[str | Sequence[str]],
    *,
    criterion: Criterion | str | None = "auto",
    rule: str | None = None,
    window: int | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    buckets: LengthBuckets | str | Sequence[int] | None = "auto",
) -> Tagged:
    """Tags sentences with early exit (see the module doc): a `Tagged`."""
    if isinstance(sentences, str):
        raise ValueError(f"give a list of sentences, not one string ({sentences[:40]!r})")
    chosen, rule, window = resolve(model, criterion, rule, window)
    config = model.config
    parsed = [_words(s, i) for i, s in enumerate(sentences)]
    if not parsed:
        return Tagged([], rule, chosen, window)
    calibration = getattr(model, "calibration", None) or {}
    length = int(max_length or calibration.get("max_length") or min(512, config.max_length))
    names = list(model.label_names or [f"LABEL_{i}" for i in range(config.num_labels)])
    data = TaggedSentences(
        words=tuple(tuple(w) for w, _, _ in parsed),
        tags=None,
        index=np.arange(len(parsed), dtype=np.int64),
        source="input",
        lines=tuple(0 for _ in parsed),
    )
    features = align(data, model.tokenizer, names, length)
    run = chosen or Criterion("fixed", float(config.num_layers))
    exits, logits, _ = tag_sweeps.token_level(
        config,
        model.params,
        features,
        run,
        window=window if chosen is not None else 0,
        batch_size=batch_size,
        buckets=length_buckets(length, buckets),
    )
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    outside = names.index("O") if "O" in names else 0
    ids = word_predictions(np.argmax(probs, axis=-1), features, outside)
    scores = word_predictions(probs.max(axis=-1), features, 0.0)
    layers = word_predictions(exits + 1, features, 0)
    out = []
    for (words, offsets, text), t, p, e in zip(parsed, ids, scores, layers):
        tags = [names[int(i)] for i in t]
        out.append(
            {
                "words": words,
                "tags": tags,
                "scores": [float(x) for x in p],
                "exit_layers": [int(x) for x in e],
                "entities": group_entities(words, tags, [float(x) for x in p], offsets, text),
            }
        )
    return Tagged(out, rule, chosen, window)


def summary(tagged: Tagged) -> Mapping[str, Any]:
    """{"sentences", "words", "mean_layers"} of a call."""
    return {
        "sentences": len(tagged),
        "words": sum(len(s["words"]) for s in tagged),
        "mean_layers": tagged.mean_layers,
    }


CHUNK = 1024
"""Sentences read, tagged and written at a time by `tag_file`."""


def _read_sentences(stream: Any, origin: str, column: str | None) -> Iterator[tuple[int, Any]]:
    """(line, sentence) of a tagger's input: JSON Lines (a `tokens` list, or a text in
    `column` / "text" / "sentence") when a line starts with "{", else one sentence per
    line, split on whitespace; blank lines skipped."""
    import json

    from rome_jax.errors import DataError

    for number, raw in enumerate(stream, start=1):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("{"):
            yield number, line
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{origin}, line {number}: not a JSON object ({e.msg})") from None
        keys = [column] if column else ["tokens", "words", "text", "sentence"]
        key = next((k for k in keys if k in row), None)
        value = row.get(key) if key else None
        if (
            isinstance(value, list)
            and value
            and all(isinstance(w, str) and w.strip() for w in value)
            or isinstance(value, str)
            and value.strip()
        ):
            yield number, value
        else:
            wanted = " or ".join(repr(k) for k in keys)
            raise DataError(f"{origin}, line {number}: no sentence ({wanted}: a text or a list of words)")


def tag_file(
    model: Any,
    input_path: str,
    output_path: str,
    *,
    column: str | None = None,
    criterion: Criterion | str | None = "auto",
    batch_size: int = 64,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Tags a file's sentences (see `_read_sentences`; "-" for stdin) and writes JSON Lines
    ("-": stdout), one object per sentence in input order: id (0-based sentence number),
    line, words, tags, scores, exit_layers, entities. Streams in chunks of `CHUNK`; a
    bad line stops with one DataError naming it, after everything before it was written."""
    import json
    import os
    import sys

    from rome_jax.errors import DataError

    if input_path != "-" and not os.path.isfile(input_path):
        raise DataError(f"{input_path}: no such file")
    source = sys.stdin if input_path == "-" else open(input_path, encoding="utf-8")  # noqa: SIM115
    sink = sys.stdout if output_path in ("-", "") else open(output_path, "w", encoding="utf-8")  # noqa: SIM115
    count, words, layers = 0, 0, 0.0
    try:
        rows = _read_sentences(source, "stdin" if input_path == "-" else input_path, column)
        while True:
            chunk, error = [], None
            try:
                for item in rows:
                    chunk.append(item)
                    if len(chunk) == CHUNK:
                        break
            except DataError as e:
                error = e
            if chunk:
                out = tag(
                    model, [s for _, s in chunk], criterion=criterion, batch_size=batch_size, max_length=max_length
                )
                for (line, _), result in zip(chunk, out):
                    sink.write(json.dumps({"id": count, "line": line, **result}) + "\n")
                    count += 1
                    words += len(result["words"])
                    layers += sum(result["exit_layers"])
                sink.flush()
            if error is not None:
                raise DataError(f"{error} ({count} sentences before it tagged and written)")
            if len(chunk) < CHUNK:
                break
    finally:
        if source is not sys.stdin:
            source.close()
        if sink is not sys.stdout:
            sink.close()
    return {"sentences": count, "words": words, "mean_layers": layers / max(words, 1)}
