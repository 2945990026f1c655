"""Early exit of a tagger over a dataset: sweeps, calibration with a guarantee, timing.

Two rules (`rome_jax.exits.tokens`): sentence-level (SENTEE: a sentence leaves at
the first exit where every word is confident; read exactly from the full-depth
logits, since a sentence leaves whole) and token-level (TOKEE: a word leaves once it
and its neighbours within `window` words are confident, its state frozen; run by the
compiled loop batch by batch, since freezing changes later layers; finished
sentences leave their batch: `token_batched.compacted_token_exit`).

Each sweep point reports entity F1 / precision / recall over every word
(`tag_scores.scores`), the mean exit layer of the words (1-based), and FLOPs against
full depth (`token_flops`: per token, attention to exited tokens included); a
token-level point also the seconds its compiled runs took over the rows.

Calibration (`calibrate_tagging`): Learn-then-Test (`rome_jax.exits.guarantee`) with
the consistency target per word: a sentence's loss is the share of its words whose
tag differs from the full-depth tag (in [0, 1]), so the guarantee reads: with
probability >= 1 - delta over the calibration sentences, the mean share of changed
words per new sentence is at most eps (Hoeffding-Bentkus p-values; sentences
exchangeable; delta split over the rules and criteria tested). Thresholds are tested
most conservative first and the testing stops at the first that fails, so the
token-level rule runs the model only on the thresholds it tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from rome_jax.data.buckets import LengthBuckets
from rome_jax.data.tagging import TaggedSentences, TaggingFeatures
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.pytree import Params
from rome_jax.exits import guarantee, tag_scores, token_flops, tokens
from rome_jax.exits.criteria import Criterion
from rome_jax.exits.outputs import batch_plan, take
from rome_jax.exits.token_batched import compacted_token_exit

LEVELS = ("sentence", "token")
"""The exit rules: SENTEE (whole sentences) and TOKEE (words, with a window)."""
SWEEP_CRITERIA = ("entropy", "max_prob", "patience")
"""The criteria a default sweep tries (each word's own confidence)."""
GRID_POINTS = 12
"""Thresholds per criterion in a default grid (quantiles of the words' values)."""
SENTENCE_WINDOW = 1 << 20
"""A window wider than any sentence: TOKEE with it is SENTEE (every word must be confident at once)."""


def word_mask(features: TaggingFeatures) -> np.ndarray:
    """The word positions (each word's first sub-token): [N, T] bool."""
    return np.asarray(tokens.word_positions(features.word_ids, features.features.attention_mask))


def grid(name: str, logits: np.ndarray, features: TaggingFeatures, size: int = GRID_POINTS) -> list[float]:
    """Thresholds where the words' values lie (`guarantee.threshold_grid` over the word
    positions' logits), most conservative first."""
    words = np.asarray(logits)[:, word_mask(features)]  # [E, words, C]
    return guarantee.threshold_grid(name, words, size=size)


def _batches(features: TaggingFeatures, batch_size: int, buckets: LengthBuckets):
    for rows, length in batch_plan(features.features, batch_size, buckets):
        batch = take(features.features, rows, length)
        picked = np.where(rows >= 0, rows, rows[rows >= 0][0])
        batch["word_ids"] = np.asarray(features.word_ids)[picked, :length]
        yield rows, length, batch


def token_level(
    config: ModelConfig,
    params: Params,
    features: TaggingFeatures,
    criterion: Criterion,
    *,
    window: int = 0,
    batch_size: int = 64,
    buckets: LengthBuckets,
    compact: bool = True,
) -> tuple[np.ndarray, np.ndarray, float]:
    """TOKEE over a dataset, batch by batch: (exit index [N, T] int32, logits [N, T, C]
    of each token's exit, seconds spent in the compiled runs). `compact`: finished
    sentences leave their batch (`token_batched.compacted_token_exit`; the same
    answers); False runs each batch until its last token exits (`token_early_exit`)."""
    n, width = features.features.input_ids.shape
    exits = np.full((n, width), config.num_layers - 1, np.int32)
    logits = np.zeros((n, width, config.num_labels), np.float32)
    seconds = 0.0
    for rows, length, batch in _batches(features, batch_size, buckets):
        start = time.perf_counter()
        if compact:
            out = compacted_token_exit(config, params, batch, criterion, window)
        else:
            out = jax.block_until_ready(tokens.token_early_exit(config, params, batch, criterion, window))
        seconds += time.perf_counter() - start
        real = rows >= 0
        exits[rows[real], :length] = np.asarray(out["exit_index"])[real]
        logits[rows[real], :length] = np.asarray(out["logits"])[real]
    return exits, logits, seconds


def sentence_level(
    logits: np.ndarray, features: TaggingFeatures, criterion: Criterion
) -> tuple[np.ndarray, np.ndarray]:
    """SENTEE from full-depth logits [E, N, T, C]: (exit index [N], answering logits [N, T, C])."""
    exits, answers = tokens.sentence_exit(logits, word_mask(features), criterion)
    return np.asarray(exits), np.asarray(answers)


def point(
    config: ModelConfig,
    level: str,
    criterion: Criterion,
    exits: np.ndarray,
    answers: np.ndarray,
    sentences: TaggedSentences,
    features: TaggingFeatures,
    tag_names: Sequence[str],
    window: int | None = None,
) -> dict[str, Any]:
    """One sweep row: exits [N] (sentence level) or [N, T] (token level), answers [N, T, C]."""
    mask = features.features.attention_mask
    words = word_mask(features)
    full = token_flops.token_full_flops(config, mask)
    if level == "sentence":
        spent = token_flops.sentence_exit_flops(config, exits, mask)
        layers = np.broadcast_to(np.asarray(exits)[:, None], words.shape)[words] + 1
    else:
        spent = token_flops.token_exit_flops(config, exits, mask)
        layers = np.asarray(exits)[words] + 1
    got = tag_scores.scores(np.argmax(answers, axis=-1), sentences, features, tag_names) if sentences.tags else {}
    row: dict[str, Any] = {"level": level, "criterion": criterion.name, "threshold": float(criterion.threshold)}
    if level == "token":
        row["window"] = int(window or 0)
    row.update({f"entity_{k}": v for k, v in got.items() if k in ("f1", "precision", "recall")})
    row.update(
        mean_layers=float(np.mean(layers)) if layers.size else 0.0,
        flops_ratio=float(np.sum(spent) / np.sum(full)),
        flops_speedup=token_flops.flops_ratio(spent, full),
    )
    return row


def sweep(
    config: ModelConfig,
    params: Params,
    logits: np.ndarray,
    sentences: TaggedSentences,
    features: TaggingFeatures,
    tag_names: Sequence[str],
    *,
    grids: Mapping[str, Sequence[float]] | None = None,
    windows: Sequence[int] = (0, 1),
    batch_size: int = 64,
    buckets: LengthBuckets,
    log: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Every rule x criterion x threshold (x window): `point` rows. grids: criterion ->
    thresholds (default: `grid` of `SWEEP_CRITERIA` on these rows)."""
    grids = grids or {name: grid(name, logits, features) for name in SWEEP_CRITERIA}
    rows = []
    for name, thresholds in grids.items():
        for t in thresholds:
            c = Criterion(name, t)
            exits, answers = sentence_level(logits, features, c)
            rows.append(point(config, "sentence", c, exits, answers, sentences, features, tag_names))
            for w in windows:
                exits, answers, seconds = token_level(
                    config, params, features, c, window=w, batch_size=batch_size, buckets=buckets
                )
                rows.append(point(config, "token", c, exits, answers, sentences, features, tag_names, w))
                rows[-1]["seconds"] = seconds  # the compiled loop's time over these rows (warm after the first)
            log(f"  {name} {t:.4g}: " + ", ".join(_brief(r) for r in rows[-1 - len(windows) :]))
    return rows


def _brief(row: Mapping[str, Any]) -> str:
    where = row["level"] + (f"(k={row['window']})" if "window" in row else "")
    f1 = f" F1 {100 * row['entity_f1']:.2f}" if "entity_f1" in row else ""
    return f"{where}{f1} layers {row['mean_layers']:.2f} FLOPs x{row['flops_speedup']:.2f}"


def _sentence_losses(answers: np.ndarray, full: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Per sentence, the share of its words whose tag differs from full depth: [N] in [0, 1]."""
    changed = (np.argmax(answers, axis=-1) != np.argmax(full, axis=-1)) & words
    return changed.sum(axis=1) / np.maximum(words.sum(axis=1), 1)


def calibrate_tagging(
    config: ModelConfig,
    params: Params,
    logits: np.ndarray,
    features: TaggingFeatures,
    *,
    eps: float,
    delta: float,
    criteria: Sequence[str] = SWEEP_CRITERIA,
    windows: Sequence[int] = (0, 1),
    batch_size: int = 64,
    buckets: LengthBuckets,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Learn-then-Test thresholds on the calibration sentences (logits [E, N, T, C] of
    every exit at full depth; features of the same sentences). For each rule
    (sentence; token with each window) and criterion: the most aggressive threshold of
    the fixed sequence that passes, with its calibration layers and FLOPs. `default`:
    the rule and criterion with the fewest FLOPs among those that qualify (None: full
    depth). delta is split evenly over the rules x criteria tested."""
    words = word_mask(features)
    full = np.asarray(logits)[-1]
    mask = features.features.attention_mask
    full_flops = token_flops.token_full_flops(config, mask)
    rules = [("sentence", None)] + [("token", w) for w in windows]
    share = delta / (len(rules) * len(criteria))
    chosen: dict[str, Any] = {}
    for level, window in rules:
        for name in criteria:
            key = level if window is None else f"{level}:k={window}"
            best = None
            for t in grid(name, logits, features):
                c = Criterion(name, t)
                if level == "sentence":
                    exits, answers = sentence_level(logits, features, c)
                    spent = token_flops.sentence_exit_flops(config, exits, mask)
                else:
                    exits, answers, _ = token_level(
                        config, params, features, c, window=int(window or 0), batch_size=batch_size, buckets=buckets
                    )
                    spent = token_flops.token_exit_flops(config, exits, mask)
                loss = _sentence_losses(answers, full, words)
                p = guarantee.hoeffding_bentkus_pvalue(float(loss.mean()), len(loss), eps)
                if p > share:
                    break  # fixed-sequence testing stops at the first threshold it cannot certify
                best = {
                    "threshold": float(t),
                    "pvalue": float(p),
                    "calibration_changed_words": float(loss.mean()),
                    "calibration_flops_ratio": float(np.sum(spent) / np.sum(full_flops)),
                }
            chosen.setdefault(key, {})[name] = best
            got = (
                "none"
                if best is None
                else f"{best['threshold']:.4g} (FLOPs x{1 / best['calibration_flops_ratio']:.2f})"
            )
            log(f"  {key} {name}: {got}")
    candidates = [
        (v["calibration_flops_ratio"], key, name)
        for key, by_name in chosen.items()
        for name, v in by_name.items()
        if v is not None
    ]
    default = None
    if candidates:
        ratio, key, name = min(candidates)
        if ratio < 1.0:
            default = {"rule": key, "criterion": name, **chosen[key][name]}
    return {
        "kind": "tagging",
        "rule": guarantee.RULE,
        "target": "consistency",
        "eps": float(eps),
        "delta": float(delta),
        "loss": "share of a sentence's words whose tag differs from full depth",
        "num_sentences": int(len(words)),
        "rules": chosen,
        "default": default,
    }


def rule_of(key: str) -> tuple[str, int]:
    """("sentence" | "token", window) of a calibration rule key ("sentence", "token:k=1")."""
    if key == "sentence":
        return "sentence", SENTENCE_WINDOW
    level, _, window = key.partition(":k=")
    if level != "token" or not window.isdigit():
        raise ValueError(f"unknown tagging exit rule {key!r} (sentence, token:k=N)")
    return "token", int(window)
