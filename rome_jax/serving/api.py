"""The user-facing model object: `load_pretrained`, `exit_logits`, `save_pretrained`."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from huggingface_hub import snapshot_download
from safetensors.numpy import save_file

from rome_jax.data import tokenize_texts
from rome_jax.data.buckets import LengthBuckets
from rome_jax.encoder import hf_io
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import MultiExitEncoder, init_exit_params
from rome_jax.encoder.params import params_mismatch
from rome_jax.encoder.pytree import Params
from rome_jax.errors import CheckpointError
from rome_jax.exits import calibration as calibration_lib
from rome_jax.exits import gates as gates_lib
from rome_jax.exits.criteria import Criterion
from rome_jax.exits.executors import all_exits
from rome_jax.exits.signals import gates_of, with_gates, without_gates
from rome_jax.serving import predict as predict_lib
from rome_jax.serving import tagger

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class MultiExitModel:
    """A multi-exit encoder: its config, parameters and (optional) tokenizer."""

    config: ModelConfig
    params: Params
    tokenizer: Any = None
    label_names: list[str] | None = None
    calibration: dict | None = None
    """Early-exit thresholds chosen on dev (`rome_jax.exits.calibration`), read from and
    written to `rome_jax_calibration.json` beside the weights; `predict` uses its
    default criterion unless told otherwise."""

    @property
    def module(self) -> MultiExitEncoder:
        return MultiExitEncoder(self.config)

    def exit_logits(self, batch: dict) -> jax.Array:
        """Logits of every exit, deterministic (no dropout).

        batch: dict of int arrays `input_ids`, `attention_mask`, `token_type_ids`,
        each [B, T] (other keys are ignored; a batch the model cannot read is a
        ValueError, see `rome_jax.exits.batches.check_batch`). Returns [num_exits, B,
        num_labels] float32; row -1 is the final classifier.
        """
        return all_exits(self.config, self.params, batch)

    def tokenize(
        self, text_a: Sequence[str], text_b: Sequence[str] | None = None, max_length: int = 128
    ) -> dict[str, np.ndarray]:
        """Tokenizes sentences (or pairs), truncated and padded to `max_length`.

        text_a, text_b: lists of strings (the same length for pairs). Returns int32
        arrays `input_ids`, `attention_mask`, `token_type_ids` [B, max_length];
        `max_length` at most the model's positions (`config.max_length`).
        """
        if self.tokenizer is None:
            raise CheckpointError("this model has no tokenizer (its directory had no tokenizer files)")
        if max_length > self.config.max_length:
            raise ValueError(f"max_length {max_length} exceeds the model's {self.config.max_length} positions")
        return tokenize(self.tokenizer, text_a, text_b, max_length)

    def predict(
        self,
        text_a: Sequence[str],
        text_b: Sequence[str] | None = None,
        *,
        criterion: Criterion | str | None = "auto",
        batch_size: int = 64,
        max_length: int | None = None,
        buckets: LengthBuckets | str | Sequence[int] | None = "auto",
    ) -> predict_lib.Predictions | tagger.Tagged:
        """Early-exit predictions on sentences (or pairs), in input order: a
        `rome_jax.serving.predict.Predictions` (labels, label_ids / scores, probabilities,
        exit_layer 1-based, mean_layers; iterating yields one dict per example).

        criterion: an `exits.Criterion`, "entropy:0.3", "patience:2", ...,
        "calibrated", None (full depth), or "auto" (the default: the calibrated
        threshold when the model carries a calibration, else full depth). Examples
        run in length buckets through the per-example batched executor; see
        `rome_jax.serving.predict`. buckets: "auto" (the default), "none" (every
        batch padded to `max_length`), lengths like "32,64", or a
        `data.buckets.LengthBuckets`.

        A tagger (token exits, `exit_pooling="token"`) tags sentences (strings split on
        whitespace, or lists of words): a `rome_jax.serving.tagger.Tagged`, per word
        the tag, its probability and exit layer, and the entities
        (`rome_jax.serving.tagger.tag`; "auto" uses the model's tagging calibration).
        """
        if self.config.token_exits:  # a tagger: text_a are sentences (strings or lists of words)
            if text_b is not None:
                raise ValueError("a tagger tags single sentences: text_b must be None")
            return tagger.tag(
                self, text_a, criterion=criterion, batch_size=batch_size, max_length=max_length, buckets=buckets
            )
        return predict_lib.predict(
            self, text_a, text_b, criterion=criterion, batch_size=batch_size, max_length=max_length, buckets=buckets
        )

    def calibrate(
        self,
        text_a: Sequence[str],
        text_b: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        *,
        target: str = "consistency",
        eps: float = 0.02,
        delta: float = 0.1,
        batch_size: int = 64,
        max_length: int | None = None,
    ) -> dict:
        """Chooses early-exit thresholds with a guarantee on these texts and keeps them
        (`self.calibration`, which `predict` then uses and `save_pretrained` stores).

        target "consistency" (no labels needed: unlabelled texts from your own
        traffic): with probability >= 1 - delta, answers differ from full depth on at
        most `eps` of new texts from the same distribution; "risk" (with `labels`):
        the metric drops by at most `eps`. See `rome_jax.serving.predict.calibrate`
        and docs/methods.md. Where no threshold qualifies, `default` is None and
        `predict` runs at full depth."""
        self.calibration = predict_lib.calibrate(
            self,
            text_a,
            text_b,
            labels,
            target=target,
            eps=eps,
            delta=delta,
            batch_size=batch_size,
            max_length=max_length,
        )
        return self.calibration

    def fit_gates(
        self,
        text_a: Sequence[str],
        labels: Sequence[Any],
        text_b: Sequence[str] | None = None,
        *,
        batch_size: int = 64,
        max_length: int | None = None,
    ) -> dict[str, float]:
        """Fits the learned exit gates (BERxiT's LTE, CALM's meta classifier) on labelled
        texts the model did not train on and keeps them in `self.params`, so that
        `predict(criterion="lte:0.8")` and "meta:0.9" work and `save_pretrained` stores
        them. Returns the fit's final losses and target means (docs/methods.md)."""
        return predict_lib.fit_gates(self, text_a, labels, text_b, batch_size=batch_size, max_length=max_length)

    def save_pretrained(self, path: str) -> None:
        """Writes an HF directory that `transformers` loads as the family's
        `*ForSequenceClassification` (`*ForTokenClassification` for a tagger)
        reproducing the final exit,
        plus `rome_jax_exits.safetensors` with every exit for `load_pretrained`, and the
        fitted exit gates (`rome_jax_gates.safetensors`, lte and meta) where it has them.

        For sequence exits of every family but ModernBERT it also writes
        `rome_jax_modeling.py` (`rome_jax/serving/torch_modeling.py`), registered in
        config.json's `auto_map`: with `trust_remote_code=True` transformers loads
        every exit, pooled as trained, with batch-1 early exit (docs/serving.md).

        With `config.exit_pooling="mean"`, config.json also records
        `"rome_jax_exit_pooling": "mean"` (`load_pretrained` reads it back), but
        transformers' own `*ForSequenceClassification` always pools the first token and
        ignores the key: it loads the same weights, and its hidden states match ours,
        but its logits do NOT reproduce the final exit (a one-line warning says so;
        the modeling file does)."""
        mismatch = params_mismatch(without_gates(self.params), self.config)
        if mismatch:
            raise CheckpointError(
                f"the parameters do not fit the model's config ({self.config.num_layers} "
                f"layers, {self.config.num_labels} labels): {mismatch}; nothing written"
            )
        if self.config.exit_pooling == "mean":
            logger.warning(
                "%s: exit_pooling %r is recorded in config.json for rome_jax; transformers' own "
                "*ForSequenceClassification pools [CLS], so its logits will not reproduce the final exit "
                "(trust_remote_code=True loads every exit as trained: rome_jax_modeling.py)",
                path,
                self.config.exit_pooling,
            )
        if self.config.token_exits:
            logger.info(
                "%s: transformers loads the final exit as *ForTokenClassification (the pooler's weights are "
                "written but unused there); the other exits and the early-exit rules need rome_jax "
                "(rome_jax_exits.safetensors, rome_jax_calibration.json)",
                path,
            )
        os.makedirs(path, exist_ok=True)
        state, exits_state = hf_io.state_dict_from_params(jax.device_get(without_gates(self.params)), self.config)
        tmp = lambda name: os.path.join(path, f".{name}.tmp")
        save_file(state, tmp("model.safetensors"), metadata={"format": "pt"})
        save_file(exits_state, tmp(hf_io.EXITS_FILE), metadata={"format": "pt"})
        with open(tmp("config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_io.hf_config_dict(self.config, self.label_names), f, indent=2)
        for name in ("model.safetensors", hf_io.EXITS_FILE, "config.json"):
            os.replace(tmp(name), os.path.join(path, name))
        modeling = os.path.join(path, f"{hf_io.TORCH_MODELING_MODULE}.py")
        if hf_io.has_torch_exits(self.config):  # every exit in PyTorch, with trust_remote_code=True
            shutil.copyfile(os.path.join(os.path.dirname(__file__), "torch_modeling.py"), modeling)
        elif os.path.isfile(modeling):
            os.remove(modeling)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        gates_path = os.path.join(path, gates_lib.FILE_NAME)
        fitted = gates_of(self.params)
        if fitted:
            gates_lib.write_gates(gates_path, jax.device_get(fitted))
        elif os.path.isfile(gates_path):  # an earlier model's gates do not fit this one
            os.remove(gates_path)
        calibration_path = os.path.join(path, calibration_lib.FILE_NAME)
        if self.calibration is not None:
            calibration_lib.write(calibration_path, self.calibration)
        elif os.path.isfile(calibration_path):  # an earlier model's thresholds do not fit this one
            os.remove(calibration_path)


def tokenize(
    tokenizer: Any, text_a: Sequence[str], text_b: Sequence[str] | None, max_length: int
) -> dict[str, np.ndarray]:
    """HF fast tokenizer on sentences or pairs -> int32 [B, max_length] arrays."""
    return tokenize_texts(tokenizer, text_a, text_b, max_length)


def resolve_model_dir(name_or_path: str) -> str:
    """A local HF directory, or a hub name downloaded when online."""
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        return path
    if os.path.isabs(path) or path.startswith(".") or os.path.exists(path) or path.count("/") > 1:
        raise CheckpointError(f"{name_or_path}: no such model directory")
    try:
        return snapshot_download(
            name_or_path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "pytorch_model.bin"]
        )
    except Exception as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{name_or_path}: not a local directory, and the Hugging Face hub could not provide it "
            f"({reason}); pass the path of a local HF model directory (config.json + "
            "model.safetensors) instead"
        ) from None


def load_tokenizer(directory: str) -> Any:
    """The HF fast tokenizer of a directory, or None when it has no tokenizer files.

    The class named by `tokenizer_config.json` (its fast variant first), as
    `AutoTokenizer` picks it, imported directly: `AutoTokenizer`'s module imports
    PyTorch where it is installed (about 4 s at every train.py/eval.py start).
    Without a known class name, `AutoTokenizer` decides.
    """
    names = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")
    if not any(os.path.isfile(os.path.join(directory, n)) for n in names):
        return None
    import transformers  # when a model is loaded, not on import (see above: PyTorch)

    name = None
    try:
        with open(os.path.join(directory, "tokenizer_config.json")) as f:
            name = json.load(f).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        pass
    if isinstance(name, str) and name.isidentifier():
        for candidate in dict.fromkeys((name.removesuffix("Fast") + "Fast", name)):
            try:
                cls = getattr(transformers, candidate)
            except (AttributeError, ImportError):
                continue
            if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
                return cls.from_pretrained(directory)
    from transformers import AutoTokenizer  # PyTorch, as above

    return AutoTokenizer.from_pretrained(directory)


def load_pretrained(
    name_or_path: str,
    num_labels: int | None = None,
    *,
    dtype: str = "float32",
    seed: int = 0,
    with_tokenizer: bool = True,
    ignore_mismatched_sizes: bool = False,
    **config_overrides: Any,
) -> MultiExitModel:
    """Loads a multi-exit model from an HF checkpoint (local directory or hub name).

    A `*ForSequenceClassification` checkpoint keeps its pooler and classifier as
    the final exit. Intermediate exits get a copy of the pretrained pooler and a
    classifier initialised from `seed`, unless the directory holds
    `rome_jax_exits.safetensors` (written by `save_pretrained`), which restores
    every exit. `num_labels=None` takes the checkpoint's own (2 if it has none).
    A classifier trained for another label count is a CheckpointError; with
    `ignore_mismatched_sizes=True` every exit's classifier is initialised from
    `seed` instead (the encoder and poolers still load), with a one-line warning.
    The fitted exit gates (lte, meta) come from `rome_jax_gates.safetensors` where the
    directory has it. The exits' pooling is config.json's `rome_jax_exit_pooling` ("cls" without it;
    written by `save_pretrained` for "mean"); `exit_pooling=...` overrides it, with a
    one-line warning when the directory's trained exits were saved with the other.
    """
    directory = resolve_model_dir(name_or_path)
    config_path = os.path.join(directory, "config.json")
    with_labels = {} if num_labels is None else {"num_labels": num_labels}
    config = ModelConfig.from_json_file(config_path, dtype=dtype, **with_labels, **config_overrides)
    weights = hf_io.find_weight_file(directory)
    state = hf_io.normalize_keys(hf_io.read_state_dict(weights), config.family)
    exits_path = os.path.join(directory, hf_io.EXITS_FILE)
    exits_state = hf_io.read_state_dict(exits_path) if os.path.isfile(exits_path) else None
    fresh = init_exit_params(config, seed=seed)
    params, _ = hf_io.params_from_state_dict(
        state, config, jax.device_get(fresh), weights, exits_state, ignore_mismatched_sizes=ignore_mismatched_sizes
    )
    params = jax.tree.map(jnp.asarray, params)
    with open(config_path, encoding="utf-8") as f:
        hf_config = json.load(f)
    id2label = hf_config.get("id2label")
    recorded = hf_config.get(hf_io.EXIT_POOLING_KEY, "cls")
    if exits_state is not None and recorded != config.exit_pooling:  # trained exits, pooled otherwise
        logger.warning(
            "%s: its exits were saved with exit_pooling %r; loading them with %r",
            directory,
            recorded,
            config.exit_pooling,
        )
    label_names = None
    if id2label and len(id2label) == config.num_labels and all(str(i) in id2label for i in range(config.num_labels)):
        label_names = [id2label[str(i)] for i in range(config.num_labels)]
    tokenizer = load_tokenizer(directory) if with_tokenizer else None
    calibration = calibration_lib.read(os.path.join(directory, calibration_lib.FILE_NAME))
    gates_path = os.path.join(directory, gates_lib.FILE_NAME)
    found = gates_lib.read_gates(gates_path)
    if found is not None:
        gates_lib.check_fits(found[0], config.hidden_size, gates_path)
        params = with_gates(params, {n: {k: jnp.asarray(v) for k, v in g.items()} for n, g in found[0].items()})
    return MultiExitModel(config, params, tokenizer, label_names, calibration)
