"""The model's architecture config (`ModelConfig`), read from a HuggingFace `config.json`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from rome_jax.errors import CheckpointError

FAMILIES = ("bert", "roberta", "albert")

_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "tanh")
ATTENTION_KERNELS = ("xla", "cudnn")
DTYPES = ("float32", "bfloat16")  # compute dtypes (parameters stay float32)
EXIT_POOLINGS = ("cls", "mean", "token")
"""What every exit's pooler reads (`ModelConfig.exit_pooling`): "cls", the layer's first
token (the papers' design, BERT's pooler); "mean", the mean of the layer's token vectors
over the attended positions (`attention_mask` 1); "token", no pooling: every token's
vector is classified (sequence labelling, as HF's `BertForTokenClassification`; the
exits' logits are [B, T, C])."""
SEQUENCE_POOLINGS = ("cls", "mean")
"""The poolings whose exits answer once per sequence (logits [B, C])."""
EXIT_POOLING_KEY = "rome_jax_exit_pooling"
"""The config.json key recording a pooling other than "cls" (`hf_io.hf_config_dict`)."""


def _pooling_of(architectures: Any) -> str:
    """A checkpoint's exit pooling when config.json does not record one: "token" for a
    `*ForTokenClassification` model (a tagger), else "cls"."""
    names = architectures if isinstance(architectures, list) else []
    return "token" if any(str(n).endswith("ForTokenClassification") for n in names) else "cls"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and behaviour of a multi-exit encoder.

    Frozen and hashable so that it can be a static argument of `jax.jit`.
    `dtype` is the compute dtype ("float32" or "bfloat16"); parameters are always
    stored in float32.
    """

    family: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float | None = None
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2
    dtype: str = "float32"
    # Attention at inference (deterministic): "xla", `model.attention` (any backend);
    # "cudnn", cuDNN's fused flash attention through jax.nn.dot_product_attention (CUDA GPUs,
    # bfloat16 only; its speed is not measured yet: bench/gpu_checks.sh does). Training always
    # uses `model.training_attention`.
    attention_kernel: str = "xla"
    unroll_layers: bool = True  # unroll the layer scan in training: ~6% faster step on CPU (inference stays rolled)
    embedding_size: int | None = None  # ALBERT's factorised embeddings; None: hidden_size
    # What every exit (the final one too) pools: "cls", the first token (the papers'
    # design); "mean", the masked mean over attended tokens; "token", every token
    # classified (sequence labelling) (EXIT_POOLINGS).
    exit_pooling: str = "cls"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise CheckpointError(f"model family {self.family!r} is not supported; known: {', '.join(FAMILIES)}")
        if self.hidden_size % self.num_heads:
            raise CheckpointError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise CheckpointError(f"hidden_act {self.hidden_act!r} is not supported; known: {', '.join(_ACTIVATIONS)}")
        if self.dtype not in DTYPES:
            raise CheckpointError(f"dtype must be float32 or bfloat16, not {self.dtype!r}")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise CheckpointError(
                f"attention_kernel must be one of {', '.join(ATTENTION_KERNELS)}, not {self.attention_kernel!r}"
            )
        if self.attention_kernel == "cudnn" and self.dtype != "bfloat16":
            raise CheckpointError(
                "attention_kernel 'cudnn' needs dtype bfloat16 (cuDNN's flash "
                f"attention has no float32 form); got dtype {self.dtype!r}"
            )
        if self.num_labels < 1:
            raise CheckpointError(f"num_labels must be at least 1, not {self.num_labels}")
        if self.exit_pooling not in EXIT_POOLINGS:
            raise CheckpointError(f"exit_pooling must be one of {', '.join(EXIT_POOLINGS)}, not {self.exit_pooling!r}")

    @property
    def shares_layers(self) -> bool:
        """ALBERT: one set of layer weights used by every layer."""
        return self.family == "albert"

    @property
    def token_exits(self) -> bool:
        """Exits that tag every token (`exit_pooling="token"`): logits [B, T, C]."""
        return self.exit_pooling == "token"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_exits(self) -> int:
        return self.num_layers

    @property
    def exit_dropout(self) -> float:
        """Dropout before each exit's classifier (HF: classifier_dropout or hidden)."""
        return self.hidden_dropout if self.classifier_dropout is None else self.classifier_dropout

    @property
    def position_offset(self) -> int:
        """RoBERTa numbers positions from `pad_token_id + 1`; BERT from 0."""
        return self.pad_token_id + 1 if self.family == "roberta" else 0

    @property
    def max_length(self) -> int:
        """The longest sequence the position table holds."""
        return self.max_position_embeddings - self.position_offset

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, hf: dict, **overrides: Any) -> ModelConfig:
        """Builds a config from the fields of a HF `config.json`."""
        family = hf.get("model_type", "bert")
        if family == "xlm-roberta":
            family = "roberta"
        if family == "albert" and (hf.get("num_hidden_groups", 1) != 1 or hf.get("inner_group_num", 1) != 1):
            raise CheckpointError("ALBERT with num_hidden_groups or inner_group_num other than 1 is not supported")
        num_labels = hf.get("num_labels")
        if num_labels is None and "id2label" in hf:
            num_labels = len(hf["id2label"])
        kwargs = dict(
            family=family,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            hidden_act=hf.get("hidden_act", "gelu"),
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            classifier_dropout=hf.get("classifier_dropout", hf.get("classifier_dropout_prob")),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            pad_token_id=hf.get("pad_token_id", 1 if family == "roberta" else 0) or 0,
            num_labels=num_labels or 2,
            exit_pooling=hf.get(EXIT_POOLING_KEY, _pooling_of(hf.get("architectures"))),
        )
        if family == "albert":
            kwargs["embedding_size"] = hf.get("embedding_size", 128)
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(
                f"position_embedding_type {hf['position_embedding_type']!r} is not supported (only 'absolute')"
            )
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str, **overrides: Any) -> ModelConfig:
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: no such file (an HF model directory needs config.json)")
        try:
            with open(path, encoding="utf-8") as f:
                hf = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(hf, dict):
            raise CheckpointError(f"{path}: not a JSON object")
        missing = [
            k
            for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
            if k not in hf
        ]
        if missing:
            raise CheckpointError(f"{path}: missing key(s) {', '.join(missing)}")
        sizes = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        )
        wrong = [
            f"{k}={hf[k]!r}"
            for k in sizes
            if k in hf and (isinstance(hf[k], bool) or not isinstance(hf[k], int) or hf[k] < 1)
        ]
        if wrong:
            raise CheckpointError(f"{path}: {', '.join(wrong)}: sizes must be positive integers")
        return cls.from_hf_dict(hf, **overrides)

    def to_hf_dict(self) -> dict:
        """The fields of a HF `config.json` describing the same encoder."""
        return {
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "classifier_dropout": self.classifier_dropout,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
            **(
                {
                    "embedding_size": self.embedding_size or self.hidden_size,
                    "num_hidden_groups": 1,
                    "inner_group_num": 1,
                    "classifier_dropout_prob": self.exit_dropout,
                }
                if self.family == "albert"
                else {}
            ),
        }
