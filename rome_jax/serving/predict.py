"""Early-exit predictions on raw texts, per example, in input order.

    model = rome_jax.load_pretrained("runs/sst2/model")
    out = model.predict(["a gem of a film", "dull"], criterion="entropy:0.3")
    out.labels, out.exit_layer, out.mean_layers
    for row in out: ...   # {"label", "label_id", "probabilities", "exit_layer"}

How (`predict`): the texts are tokenized to `max_length`, grouped into length
buckets (by default `data.buckets.length_buckets(max_length, "auto")`: 16, 32, 64,
... and `max_length`) by `bucket_batches` (examples keep their order inside a
bucket; the last partial batch is padded with masked rows), each batch cut to its
bucket's length, and every group of one length runs through the per-example
executor (`rome_jax.exits.batched.BatchedEarlyExit.run_dataset`: examples leave the
batch as they exit). Results are scattered back to input order (`exits.outputs.early_exits`).
Compiled programs depend on shapes only (batch rows, bucket length), so repeated
calls and other thresholds reuse them.

Criterion (`resolve_criterion`): a `exits.Criterion`; a string "entropy:0.3",
"max_prob:0.9", "normalized_entropy:0.5", "patience:2", "fixed:3"; "calibrated"
(the model's calibrated default, `rome_jax.exits.calibration`; "calibrated:patience" for
another calibrated criterion); None or "none" for full depth (every example
answers at the last exit); "auto", the default: "calibrated" when the model
carries a calibration, else full depth. The regression flag of patience is set
from the model (one output unit: regression).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rome_jax.data.buckets import LengthBuckets, length_buckets
from rome_jax.data.features import Features
from rome_jax.encoder.config import ModelConfig
from rome_jax.exits import calibration as calibration_lib
from rome_jax.exits import guarantee
from rome_jax.exits.batched import BatchedEarlyExit
from rome_jax.exits.batches import default_buckets, smallest_bucket
from rome_jax.exits.criteria import CRITERIA, Criterion, check_criterion
from rome_jax.exits.outputs import all_exit_signals, early_exits
from rome_jax.exits.signals import gates_of

AUTO = "auto"
"""The default criterion: the model's calibrated one, else full depth."""

DEFAULT_MAX_LENGTH = 512
"""`max_length` when neither the call nor the model's calibration gives one (capped
at the model's positions)."""


def resolve_criterion(
    spec: Criterion | str | None, config: ModelConfig, calibration: Mapping[str, Any] | None = None
) -> Criterion | None:
    """The criterion a `predict` call runs (None: full depth). See the module doc;
    ValueError for an unknown name, a bad threshold, or "calibrated" without a
    calibration."""
    regression = config.num_labels == 1
    if isinstance(spec, Criterion):
        return check_criterion(spec, config.num_labels, config.num_exits)
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise TypeError(
            f"criterion: an exits.Criterion, a string like 'entropy:0.3', 'calibrated' or None, not {spec!r}"
        )
    text = spec.strip()
    name, _, value = text.partition(":")
    name, value = name.strip().lower(), value.strip()
    if name == AUTO and not value:
        return (
            resolve_criterion("calibrated", config, calibration) if calibration and calibration.get("default") else None
        )
    if name in ("none", "full", "") and not value:
        return None
    if name == "calibrated":
        if not calibration:
            raise ValueError(
                "criterion 'calibrated': the model carries no calibration (run eval.py "
                "--calibrate=ltt, or give a criterion like entropy:0.3)"
            )
        criterion = calibration_lib.criterion_of(calibration, value or None, num_labels=config.num_labels)
        return check_criterion(criterion, config.num_labels, config.num_exits)
    if name not in CRITERIA:
        raise ValueError(
            f"unknown criterion {spec!r}; give NAME:THRESHOLD with NAME one of "
            f"{', '.join(CRITERIA)}, or calibrated, auto, none"
        )
    if not value:
        raise ValueError(
            f"criterion {spec!r} needs a threshold, e.g. {name}:{2 if name in ('patience', 'fixed') else 0.3}"
        )
    try:
        threshold = float(value)
    except ValueError:
        raise ValueError(f"criterion {spec!r}: the threshold must be a number") from None
    return check_criterion(Criterion(name, threshold, regression=regression), config.num_labels, config.num_exits)


def describe(criterion: Criterion | None) -> str:
    """'entropy:0.3', or 'none' (full depth)."""
    return "none" if criterion is None else f"{criterion.name}:{criterion.threshold:g}"


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class Predictions:
    """Per-example answers, in input order.

    logits [N, C] float32 (the exit that answered); exit_layer [N] int32, 1-based;
    label_names: the model's, or None; num_layers: the model's depth; criterion:
    what ran (None: full depth).
    """

    logits: np.ndarray
    exit_layer: np.ndarray
    label_names: list[str] | None
    num_layers: int
    criterion: Criterion | None

    @property
    def regression(self) -> bool:
        return self.logits.shape[-1] == 1

    def __len__(self) -> int:
        return len(self.exit_layer)

    @property
    def label_ids(self) -> np.ndarray:
        """[N] int64 argmax class ids (regression: ValueError)."""
        if self.regression:
            raise ValueError("a regression model has scores, not label ids")
        return self.logits.argmax(-1)

    @property
    def scores(self) -> np.ndarray:
        """[N] float32 regression outputs (classification: ValueError)."""
        if not self.regression:
            raise ValueError("a classification model has label ids and probabilities, not scores")
        return self.logits[:, 0]

    @property
    def probabilities(self) -> np.ndarray:
        """[N, C] float32 softmax of the answering exit (regression: ValueError)."""
        if self.regression:
            raise ValueError("a regression model has scores, not probabilities")
        return _softmax(self.logits)

    @property
    def labels(self) -> list:
        """The label names (ids when the model has no names), or the scores for regression."""
        if self.regression:
            return [float(s) for s in self.scores]
        ids = self.label_ids
        return [self.label_names[i] for i in ids] if self.label_names else [int(i) for i in ids]

    @property
    def mean_layers(self) -> float:
        """Layers run per example, on average (nan for no examples)."""
        return float(np.mean(self.exit_layer)) if len(self) else float("nan")

    def rows(self) -> Iterator[dict]:
        """One dict per example: label, label_id, probabilities, exit_layer (classification)
        or label (= score), score, exit_layer (regression)."""
        if self.regression:
            for score, layer in zip(self.scores, self.exit_layer):
                yield {"label": float(score), "score": float(score), "exit_layer": int(layer)}
            return
        labels, ids, probabilities = self.labels, self.label_ids, self.probabilities
        for label, i, p, layer in zip(labels, ids, probabilities, self.exit_layer):
            yield {"label": label, "label_id": int(i), "probabilities": [float(x) for x in p], "exit_layer": int(layer)}

    def __iter__(self) -> Iterator[dict]:
        return self.rows()


def run_early_exit(
    config: ModelConfig,
    params: Any,
    inputs: Mapping[str, np.ndarray],
    criterion: Criterion | None,
    *,
    buckets: LengthBuckets,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example early exit of tokenized rows, bucketed by length, in input order.

    inputs: `input_ids`, `attention_mask`, `token_type_ids` [N, T] (right-padded);
    criterion: None runs full depth; buckets: the length buckets, ending at T.
    Batches have `batch_size` rows, or for fewer examples the smallest of
    `rome_jax.exits.batches.default_buckets(batch_size)` holding them (so a call on
    three sentences computes three rows, and compiled shapes stay few).
    Returns (exit_index [N] int32 0-based, logits [N, C] float32)
    (`exits.outputs.early_exits`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    n = len(inputs["input_ids"])
    if n == 0:
        return np.zeros(0, np.int32), np.zeros((0, config.num_labels), np.float32)
    rows_per_batch = smallest_bucket(min(n, batch_size), default_buckets(batch_size))
    if criterion is None:
        criterion = Criterion("fixed", config.num_exits, regression=config.num_labels == 1)
    return early_exits(config, params, inputs, criterion, batch_size=rows_per_batch, buckets=buckets)


def compile_early_exit(
    config: ModelConfig,
    params: Any,
    criterion: Criterion | None,
    *,
    buckets: LengthBuckets,
    batch_size: int = 64,
) -> int:
    """Compiles every program `run_early_exit` (one call at a time, as a server makes
    them) can run with these settings: each length bucket x each row bucket of
    `default_buckets(batch_size)`. Returns the number of (length, rows) shapes.
    Minutes on a CPU for a 12-layer model and long buckets; a persistent compilation
    cache (`JAX_COMPILATION_CACHE_DIR`) keeps them across restarts."""
    if criterion is None:
        criterion = Criterion("fixed", config.num_exits, regression=config.num_labels == 1)
    return BatchedEarlyExit(config, params, criterion).compile(buckets, capacity=batch_size)


def _texts(values: Any, name: str) -> list[str]:
    if isinstance(values, str):
        raise ValueError(f"{name}: give a list of sentences, not one string ({values[:40]!r})")
    values = list(values)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ValueError(f"{name}[{i}] is {type(v).__name__}, not a string: {v!r:.60}")
    return values


def default_max_length(config: ModelConfig, calibration: Mapping[str, Any] | None = None) -> int:
    """The length the calibration was chosen at, else `DEFAULT_MAX_LENGTH`; at most
    the model's positions."""
    chosen = (calibration or {}).get("max_length")
    length = int(chosen) if isinstance(chosen, int) and chosen > 0 else DEFAULT_MAX_LENGTH
    return min(length, config.max_length)


def predict(
    model: Any,
    text_a: Sequence[str],
    text_b: Sequence[str] | None = None,
    *,
    criterion: Criterion | str | None = AUTO,
    batch_size: int = 64,
    max_length: int | None = None,
    buckets: LengthBuckets | str | Sequence[int] | None = "auto",
) -> Predictions:
    """Early-exit predictions of a `MultiExitModel` (with a tokenizer) on sentences or pairs.

    criterion: see `resolve_criterion` ("auto": the model's calibrated threshold, else
    full depth); max_length: tokens kept per example (default `default_max_length`);
    buckets: the length buckets the rows run in, a `data.buckets` value resolved
    here at `max_length` (`length_buckets`: "auto", the default; "none" or None: one
    bucket, every batch padded to `max_length`; "32,64" or lengths).
    """
    text_a = _texts(text_a, "text_a")
    if text_b is not None:
        text_b = _texts(text_b, "text_b")
        if len(text_b) != len(text_a):
            raise ValueError(f"pairs need as many text_b as text_a: {len(text_b)} against {len(text_a)}")
    calibration = getattr(model, "calibration", None)
    chosen = resolve_criterion(criterion, model.config, calibration)
    length = default_max_length(model.config, calibration) if max_length is None else int(max_length)
    buckets = length_buckets(length, buckets)
    if not text_a:
        return Predictions(
            np.zeros((0, model.config.num_labels), np.float32),
            np.zeros(0, np.int32),
            model.label_names,
            model.config.num_layers,
            chosen,
        )
    inputs = model.tokenize(text_a, text_b, max_length=length)
    exit_index, logits = run_early_exit(
        model.config, model.params, inputs, chosen, buckets=buckets, batch_size=batch_size
    )
    return Predictions(
        logits=logits,
        exit_layer=exit_index + 1,
        label_names=model.label_names,
        num_layers=model.config.num_layers,
        criterion=chosen,
    )


def _label_ids(model: Any, labels: Sequence[Any], count: int) -> np.ndarray:
    """Labels (names or ids; scores for regression) as an array [N]."""
    if len(labels) != count:
        raise ValueError(f"{len(labels)} labels for {count} texts")
    if model.config.num_labels == 1:
        return np.asarray(labels, np.float32)
    names = list(model.label_names or [])
    return np.asarray([names.index(y) if y in names else int(y) for y in labels], np.int32)


def fit_gates(
    model: Any,
    text_a: Sequence[str],
    labels: Sequence[Any],
    text_b: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
) -> dict[str, float]:
    """Fits the model's LTE and meta exit gates (`rome_jax.exits.gates`) on these
    labelled texts, which the model must not have trained on, and puts them into
    `model.params`. Returns the fit's report (final losses, target means)."""
    from rome_jax.exits import gates as gates_lib
    from rome_jax.exits.signals import with_gates

    text_a = _texts(text_a, "text_a")
    if text_b is not None:
        text_b = _texts(text_b, "text_b")
    if not text_a:
        raise ValueError("fitting the gates needs at least one text")
    ids = _label_ids(model, labels, len(text_a))
    length = default_max_length(model.config, None) if max_length is None else int(max_length)
    inputs = model.tokenize(text_a, text_b, max_length=length)
    features = Features(**inputs, labels=ids, index=np.arange(len(text_a)), has_labels=True)
    fitted, report = gates_lib.fit_gates_on(
        model.config, model.params, features, batch_size=batch_size, buckets=length_buckets(length, "auto")
    )
    model.params = with_gates(model.params, fitted)
    return report


def calibrate(
    model: Any,
    text_a: Sequence[str],
    text_b: Sequence[str] | None = None,
    labels: Sequence[Any] | None = None,
    *,
    target: str = "consistency",
    eps: float = 0.02,
    delta: float = 0.1,
    batch_size: int = 64,
    max_length: int | None = None,
    buckets: LengthBuckets | str | Sequence[int] | None = "auto",
) -> dict:
    """Learn-then-Test thresholds chosen on these texts (`calibration.calibrate_outputs`):
    with probability >= 1 - delta over the rows, the answers differ from full depth on
    at most `eps` of new rows from the same distribution (target "consistency", no
    labels needed: texts from your own traffic do), or the metric drops by at most `eps`
    (target "risk", with `labels`: label names or ids, or scores for regression).

    Every criterion is calibrated, the signal ones included (saturation, and lte and
    meta where the model has fitted gates). Every exit runs on every text (in length buckets at `max_length`, default
    `default_max_length`). Returns the calibration dict; `MultiExitModel.calibrate`
    also keeps it on the model, where `predict` uses it ("auto")."""
    text_a = _texts(text_a, "text_a")
    if text_b is not None:
        text_b = _texts(text_b, "text_b")
    if not text_a:
        raise ValueError("calibration needs at least one text")
    regression = model.config.num_labels == 1
    ids = None if labels is None else _label_ids(model, labels, len(text_a))
    length = default_max_length(model.config, None) if max_length is None else int(max_length)
    inputs = model.tokenize(text_a, text_b, max_length=length)
    logits, signals, _ = all_exit_signals(
        model.config, model.params, inputs, batch_size=batch_size, buckets=length_buckets(length, buckets)
    )
    criteria = [
        *(guarantee.REGRESSION_CRITERIA if regression else guarantee.CLASSIFICATION_CRITERIA),
        "saturation",
        *gates_of(model.params),
    ]
    chosen = calibration_lib.calibrate_outputs(
        logits, ids, target=target, eps=eps, delta=delta, regression=regression, criteria=criteria, signals=signals
    )
    chosen.update(max_length=length, rows={"source": "texts", "num_rows": len(text_a), "labelled": ids is not None})
    return chosen
