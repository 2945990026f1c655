"""The HTTP request and answer formats of the server (`rome_jax.serving.ray_app`), as
pure functions: a JSON body in, texts out (or a `RequestError` with a status and one
line), predictions in, JSON rows out.

A request body is one of
    {"text": "a gem of a film"}
    {"text": "a man sleeps", "text_pair": "a person rests"}
    {"texts": ["a gem", "dull"]}                       # a list
    {"texts": ["a man sleeps"], "text_pairs": ["a person rests"]}
and the answer is {"predictions": [row, ...]} in the order of the texts, each row as
`predict.py` writes it: label, label_id, probabilities, exit_layer (classification),
or label, score, exit_layer (regression).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


class RequestError(ValueError):
    """A bad request: the HTTP status to answer (4xx) and one line saying what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _strings(value: Any, name: str, max_chars: int) -> list[str]:
    if not isinstance(value, list):
        raise RequestError(400, f"{name!r} must be a list of strings, not {type(value).__name__}")
    for i, item in enumerate(value):
        _string(item, f"{name}[{i}]", max_chars)
    return list(value)


def _string(value: Any, name: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise RequestError(400, f"{name!r} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise RequestError(400, f"{name!r} is empty")
    if len(value) > max_chars:
        raise RequestError(413, f"{name!r} has {len(value)} characters, more than the limit of {max_chars}")
    return value


def parse_request(body: bytes, *, max_texts: int, max_chars: int) -> tuple[list[str], list[str] | None]:
    """(texts, their pairs or None) of a request body; RequestError when it is not one
    of the module doc's forms, has an empty or non-string text, more than `max_texts`
    texts (413) or a text of more than `max_chars` characters (413)."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"the body must be a JSON object, not {type(payload).__name__}")
    unknown = sorted(set(payload) - {"text", "text_pair", "texts", "text_pairs"})
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r}; give text (and text_pair) or texts (and text_pairs)")
    if "text" in payload and "texts" in payload:
        raise RequestError(400, "give either 'text' or 'texts', not both")
    if "text" in payload:
        if "text_pairs" in payload:
            raise RequestError(400, "'text' goes with 'text_pair', not 'text_pairs'")
        texts = [_string(payload["text"], "text", max_chars)]
        pairs = [_string(payload["text_pair"], "text_pair", max_chars)] if "text_pair" in payload else None
    elif "texts" in payload:
        if "text_pair" in payload:
            raise RequestError(400, "'texts' goes with 'text_pairs', not 'text_pair'")
        texts = _strings(payload["texts"], "texts", max_chars)
        pairs = _strings(payload["text_pairs"], "text_pairs", max_chars) if "text_pairs" in payload else None
        if not texts:
            raise RequestError(400, "'texts' is empty")
        if pairs is not None and len(pairs) != len(texts):
            raise RequestError(400, f"{len(texts)} texts but {len(pairs)} text_pairs")
    else:
        raise RequestError(400, "missing 'text' (or 'texts')")
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request, more than the limit of {max_texts}")
    return texts, pairs


def check_lengths(token_counts: Sequence[int], max_length: int, *, refuse: bool, first_index: int = 0) -> None:
    """With `refuse`, RequestError 413 for the first text whose token count (special
    tokens included) exceeds `max_length`; without, nothing (texts are truncated)."""
    if not refuse:
        return
    for i, count in enumerate(token_counts):
        if count > max_length:
            raise RequestError(
                413,
                f"text {first_index + i} has {count} tokens, more than the limit of {max_length} (long texts: refuse)",
            )


def answer(rows: Sequence[dict]) -> dict:
    """The JSON answer to a request: {"predictions": rows}."""
    return {"predictions": list(rows)}
