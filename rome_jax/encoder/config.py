"""The model's architecture config (`ModelConfig`), read from a HuggingFace `config.json`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from rome_jax.errors import CheckpointError

FAMILIES = ("bert", "roberta", "albert", "distilbert", "electra", "modernbert", "deberta-v2")
MODEL_TYPES = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "albert": "albert",
    "distilbert": "distilbert",
    "electra": "electra",
    "modernbert": "modernbert",
    "deberta-v2": "deberta-v2",
}
"""HF's `model_type` -> the family that loads it. XLM-RoBERTa is RoBERTa's architecture
with another vocabulary: it loads as "roberta" and keeps its `model_type`
(`ModelConfig.hf_model_type`) for export."""
_EXIT_ACTIVATIONS = {"distilbert": "relu", "electra": "gelu", "deberta-v2": "gelu"}
"""The activation of each family's classification head after its dense layer (the
exits' pooler), where it is not BERT's tanh: `DistilBertForSequenceClassification`'s
`pre_classifier` is followed by a ReLU, `ElectraClassificationHead`'s dense by the exact
GELU; DeBERTa's `ContextPooler` by `pooler_hidden_act` (gelu; others are refused)."""
# DistilBERT's config.json names -> BERT's, which `from_hf_dict` reads.
_DISTILBERT_NAMES = {
    "dim": "hidden_size",
    "hidden_dim": "intermediate_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "activation": "hidden_act",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "seq_classif_dropout": "classifier_dropout",
}

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


def bert_names(hf: dict) -> dict:
    """A HF config dict with BERT's field names: DistilBERT's (`dim`, `hidden_dim`,
    `n_layers`, `n_heads`, `activation`, `dropout`, `attention_dropout`,
    `seq_classif_dropout`) copied to BERT's where those are absent. Other families'
    dicts are returned as they are."""
    if hf.get("model_type") != "distilbert":
        return hf
    out = dict(hf)
    for theirs, ours in _DISTILBERT_NAMES.items():
        if theirs in hf and ours not in hf:
            out[ours] = hf[theirs]
    return out


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
    # ALBERT's factorised embeddings, ELECTRA's embedding width; None: hidden_size
    embedding_size: int | None = None
    # What every exit (the final one too) pools: "cls", the first token (the papers'
    # design); "mean", the masked mean over attended tokens; "token", every token
    # classified (sequence labelling) (EXIT_POOLINGS).
    exit_pooling: str = "cls"
    # HF's model_type when it is not the family's own name (XLM-RoBERTa: "xlm-roberta",
    # loaded as "roberta"); export writes it back (`to_hf_dict`). None: the family's name.
    hf_model_type: str | None = None
    # ModernBERT's own (other families ignore them): every `global_attn_every_n_layers`-th
    # layer (index % n == 0) attends globally, the others within +-local_attention // 2
    # tokens; rotary positions with a theta per kind; which blocks have biases; the
    # head's activation (`exit_activation`).
    global_attn_every_n_layers: int = 1
    local_attention: int = 128
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    # DeBERTa-v2/v3's own (other families ignore them; `rome_jax.encoder.deberta`): the
    # disentangled attention's terms (`pos_att_type`, a subset of ("c2p", "p2c")), the
    # log-bucketed relative positions (`position_buckets`; `max_relative_positions` < 1:
    # max_position_embeddings), the LayerNorm of the shared `rel_embeddings`
    # (`norm_rel_ebd` "layer_norm"), absolute positions added to the input
    # (`position_biased_input`), and whether there are token type embeddings
    # (`type_vocab_size` > 0 in its config.json; without, ours is 2 and the ids are ignored).
    pos_att_type: tuple[str, ...] = ("p2c", "c2p")
    position_buckets: int = 256
    max_relative_positions: int = -1
    norm_rel_ebd: bool = True
    position_biased_input: bool = False
    token_type_table: bool = False
    # DistilBERT's `sinusoidal_pos_embds`: the position table starts as fixed sines and
    # cosines (`sinusoidal_table`) instead of random; loaded from the checkpoint like any
    # table, and trained like one (as transformers >= 5 does).
    sinusoidal_positions: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise CheckpointError(f"model family {self.family!r} is not supported; known: {', '.join(FAMILIES)}")
        if self.hf_model_type is not None and MODEL_TYPES.get(self.hf_model_type) != self.family:
            raise CheckpointError(f"model_type {self.hf_model_type!r} is not a variant of family {self.family!r}")
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
        if self.family == "modernbert":
            if self.classifier_activation not in _ACTIVATIONS:
                raise CheckpointError(
                    f"classifier_activation {self.classifier_activation!r} is not supported; "
                    f"known: {', '.join(_ACTIVATIONS)}"
                )
            if self.global_attn_every_n_layers < 1 or self.local_attention < 0:
                raise CheckpointError(
                    f"global_attn_every_n_layers must be >= 1 and local_attention >= 0, got "
                    f"{self.global_attn_every_n_layers} and {self.local_attention}"
                )

        if self.family == "deberta-v2" and not set(self.pos_att_type) <= {"c2p", "p2c"}:
            raise CheckpointError(f"DeBERTa pos_att_type must be a subset of c2p, p2c, got {list(self.pos_att_type)}")

    @property
    def shares_layers(self) -> bool:
        """ALBERT: one set of layer weights used by every layer."""
        return self.family == "albert"

    @property
    def has_token_types(self) -> bool:
        """Token type (segment) embeddings: every family but DistilBERT, which has none
        (its `token_type_ids` are ignored), ModernBERT, and DeBERTa where its
        `type_vocab_size` is 0 (v3; `token_type_table`)."""
        if self.family == "deberta-v2":
            return self.token_type_table
        return self.family not in ("distilbert", "modernbert")

    @property
    def projects_embeddings(self) -> bool:
        """A dense map from the embedding width to the hidden size after the embeddings'
        LayerNorm (`embeddings/embedding_hidden_mapping_in`): ALBERT's, always; ELECTRA's
        `embeddings_project`, where `embedding_size` differs from `hidden_size`."""
        if self.family == "albert":
            return True
        return self.family in ("electra", "deberta-v2") and self.embedding_size not in (None, self.hidden_size)

    @property
    def exit_activation(self) -> str:
        """The activation after each exit's pooler dense (an `ops.activation` name): the
        family's classification head's, so that the final exit is its
        `*ForSequenceClassification`: "tanh" (BERT's pooler; RoBERTa, ALBERT), "relu"
        (DistilBERT's `pre_classifier`), "gelu" (ELECTRA's `classifier.dense`)."""
        if self.family == "modernbert":  # ModernBertPredictionHead's (default "gelu")
            return self.classifier_activation
        return _EXIT_ACTIVATIONS.get(self.family, "tanh")

    @property
    def exit_dropout_first(self) -> bool:
        """Dropout before the pooler dense too (RoBERTa's and ELECTRA's classification
        heads), not only before the classifier."""
        return self.family in ("roberta", "electra", "deberta-v2")

    @property
    def model_type(self) -> str:
        """HF's `model_type` of this encoder (`hf_model_type`, else the family)."""
        return self.hf_model_type or self.family

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
        """Dropout before each exit's classifier (HF: classifier_dropout or hidden;
        DistilBERT: `seq_classif_dropout`, and `dropout` for token exits as
        `DistilBertForTokenClassification`)."""
        if self.family == "distilbert" and self.token_exits:
            return self.hidden_dropout
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
        """Builds a config from the fields of a HF `config.json` (DistilBERT's own field
        names too, `bert_names`)."""
        hf = bert_names(hf)
        model_type = hf.get("model_type", "bert")
        family = MODEL_TYPES.get(model_type, model_type)
        if family == "modernbert":
            hf = _modernbert_bert_names(hf)
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
            hf_model_type=model_type if model_type != family else None,
        )
        if family == "distilbert" and hf.get("sinusoidal_pos_embds", False):
            kwargs["sinusoidal_positions"] = True
        if family in ("albert", "electra"):  # both default to 128 in transformers
            kwargs["embedding_size"] = hf.get("embedding_size", 128)
        if family == "modernbert":
            kwargs.update(_modernbert_fields(hf))
        if family == "deberta-v2":
            kwargs.update(_deberta_fields(hf))
            hf = {k: v for k, v in hf.items() if k != "position_embedding_type"}
        if family == "distilbert":  # fixed in DistilBERT's code; no token types
            kwargs["layer_norm_eps"] = 1e-12
            kwargs["classifier_dropout"] = hf.get("classifier_dropout", 0.2)
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
        hf = bert_names(hf)
        if hf.get("model_type") == "modernbert":
            hf = _modernbert_bert_names(hf)
        if hf.get("model_type") == "deberta-v2" and hf.get("type_vocab_size") == 0:  # v3: no token types
            hf = {k: v for k, v in hf.items() if k != "type_vocab_size"}
        missing = [
            k
            for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
            if k not in hf
        ]
        if missing:
            if hf.get("model_type") == "distilbert":  # name the keys as its config.json does
                theirs = {ours: name for name, ours in _DISTILBERT_NAMES.items()}
                missing = [theirs.get(k, k) for k in missing]
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
        """The fields of a HF `config.json` describing the same encoder, in the names of
        its model type (DistilBERT's own: `dim`, `n_layers`, ...; ModernBERT's)."""
        if self.family == "modernbert":
            return _modernbert_hf_dict(self)
        if self.family == "deberta-v2":
            return _deberta_hf_dict(self)
        if self.family == "distilbert":
            return {
                "model_type": self.model_type,
                "vocab_size": self.vocab_size,
                "dim": self.hidden_size,
                "n_layers": self.num_layers,
                "n_heads": self.num_heads,
                "hidden_dim": self.intermediate_size,
                "max_position_embeddings": self.max_position_embeddings,
                "sinusoidal_pos_embds": self.sinusoidal_positions,
                "activation": self.hidden_act,
                "dropout": self.hidden_dropout,
                "attention_dropout": self.attention_dropout,
                "seq_classif_dropout": self.hidden_dropout
                if self.classifier_dropout is None
                else self.classifier_dropout,
                "pad_token_id": self.pad_token_id,
            }
        return {
            "model_type": self.model_type,
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
            **({"embedding_size": self.embedding_size or self.hidden_size} if self.family == "electra" else {}),
        }


# ---- ModernBERT's config.json ------------------------------------------------------

_MODERNBERT_NAMES = {
    "hidden_activation": "hidden_act",
    "norm_eps": "layer_norm_eps",
    "mlp_dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
}


def _modernbert_bert_names(hf: dict) -> dict:
    """ModernBERT's config.json with BERT's names added (`hidden_activation` ->
    `hidden_act`, `norm_eps` -> `layer_norm_eps`, `mlp_dropout` -> `hidden_dropout_prob`,
    which serves the embeddings' dropout too) and its defaults where it omits a field."""
    out = {"hidden_act": "gelu", "layer_norm_eps": 1e-5, "hidden_dropout_prob": 0.0, "classifier_dropout": 0.0}
    out.update(hf)
    out.setdefault("attention_probs_dropout_prob", 0.0)
    out.setdefault("max_position_embeddings", 8192)
    for theirs, ours in _MODERNBERT_NAMES.items():
        if theirs in hf:
            out[ours] = hf[theirs]
    if "pad_token_id" not in hf:
        out["pad_token_id"] = 50283
    return out


def _modernbert_fields(hf: dict) -> dict:
    """ModernBERT's own `ModelConfig` fields from its config.json: the attention pattern
    (`global_attn_every_n_layers`, or transformers 5's `layer_types`, which must follow
    such a pattern), the rotary thetas (`global_rope_theta`/`local_rope_theta`, or
    `rope_parameters` of rope_type "default"), the biases, the head's activation and the
    pooling (`classifier_pooling`, unless config.json records ours)."""
    every = hf.get("global_attn_every_n_layers", 3)
    kinds = hf.get("layer_types")
    if kinds is not None:
        full = [i for i, kind in enumerate(kinds) if kind == "full_attention"]
        every = full[1] - full[0] if len(full) > 1 else max(len(kinds), 1)
        want = ["sliding_attention" if i % every else "full_attention" for i in range(len(kinds))]
        if list(kinds) != want or not full or full[0] != 0:
            raise CheckpointError(
                "ModernBERT layer_types must be a global layer every n layers from layer 0 "
                f"(layer_id % n == 0), got {kinds}"
            )
    thetas = {"global": hf.get("global_rope_theta", 160_000.0), "local": hf.get("local_rope_theta", 10_000.0)}
    for kind, name in (("global", "full_attention"), ("local", "sliding_attention")):
        rope = (hf.get("rope_parameters") or {}).get(name) or {}
        if rope.get("rope_type", "default") != "default":
            raise CheckpointError(f"ModernBERT rope_type {rope['rope_type']!r} is not supported (only 'default')")
        thetas[kind] = rope.get("rope_theta", thetas[kind])
    pooling = hf.get("classifier_pooling", "cls")
    return {
        "global_attn_every_n_layers": int(every),
        "local_attention": int(hf.get("local_attention", 128)),
        "global_rope_theta": float(thetas["global"]),
        "local_rope_theta": float(thetas["local"]),
        "norm_bias": bool(hf.get("norm_bias", False)),
        "attention_bias": bool(hf.get("attention_bias", False)),
        "mlp_bias": bool(hf.get("mlp_bias", False)),
        "classifier_bias": bool(hf.get("classifier_bias", False)),
        "classifier_activation": hf.get("classifier_activation", "gelu"),
        "exit_pooling": hf.get(
            EXIT_POOLING_KEY, "token" if _pooling_of(hf.get("architectures")) == "token" else pooling
        ),
        "type_vocab_size": 1,
    }


def _modernbert_hf_dict(cfg: ModelConfig) -> dict:
    """ModernBERT's config.json fields, in its names (both the old pattern fields and
    transformers 5's `layer_types`/`rope_parameters`)."""
    every = cfg.global_attn_every_n_layers
    return {
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "hidden_activation": cfg.hidden_act,
        "norm_eps": cfg.layer_norm_eps,
        "norm_bias": cfg.norm_bias,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
        "classifier_bias": cfg.classifier_bias,
        "classifier_activation": cfg.classifier_activation,
        "classifier_pooling": cfg.exit_pooling if cfg.exit_pooling in SEQUENCE_POOLINGS else "cls",
        "embedding_dropout": cfg.hidden_dropout,
        "mlp_dropout": cfg.hidden_dropout,
        "attention_dropout": cfg.attention_dropout,
        "classifier_dropout": cfg.exit_dropout,
        "pad_token_id": cfg.pad_token_id,
        "global_attn_every_n_layers": every,
        "local_attention": cfg.local_attention,
        "global_rope_theta": cfg.global_rope_theta,
        "local_rope_theta": cfg.local_rope_theta,
        "layer_types": ["sliding_attention" if i % every else "full_attention" for i in range(cfg.num_layers)],
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": cfg.global_rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.local_rope_theta},
        },
    }


# ---- DeBERTa-v2/v3's config.json -----------------------------------------------------


def _deberta_fields(hf: dict) -> dict:
    """DeBERTa-v2/v3's own `ModelConfig` fields from its config.json (transformers'
    `DebertaV2Config` defaults where a field is absent); refuses, in one line, what
    `rome_jax.encoder.deberta` does not compute: the `conv` layer (`conv_kernel_size`),
    attention without relative positions, separate position projections
    (`share_att_key` false), a pooler other than a hidden-size GELU."""
    if hf.get("conv_kernel_size", 0) > 0:
        raise CheckpointError("DeBERTa with conv_kernel_size > 0 (the conv layer) is not supported")
    if not hf.get("relative_attention", False) or not hf.get("share_att_key", False):
        raise CheckpointError(
            "DeBERTa needs relative_attention and share_att_key true (as v3); others are not supported"
        )
    if (
        hf.get("pooler_hidden_act", "gelu") != "gelu"
        or hf.get("pooler_hidden_size", hf["hidden_size"]) != hf["hidden_size"]
    ):
        raise CheckpointError("DeBERTa's pooler must be a GELU of hidden_size (pooler_hidden_act, pooler_hidden_size)")
    if (
        hf.get("attention_head_size", hf["hidden_size"] // hf["num_attention_heads"]) * hf["num_attention_heads"]
        != hf["hidden_size"]
    ):
        raise CheckpointError("DeBERTa with attention_head_size * num_attention_heads != hidden_size is not supported")
    norm = [x.strip() for x in str(hf.get("norm_rel_ebd", "none")).lower().split("|")]
    kinds = hf.get("pos_att_type") or []
    if isinstance(kinds, str):
        kinds = [x.strip() for x in kinds.lower().split("|")]
    types = hf.get("type_vocab_size", 0)
    return {
        "pos_att_type": tuple(kinds),
        "position_buckets": int(hf.get("position_buckets", -1)),
        "max_relative_positions": int(hf.get("max_relative_positions", -1)),
        "norm_rel_ebd": "layer_norm" in norm,
        "position_biased_input": bool(hf.get("position_biased_input", True)),
        "token_type_table": types > 0,
        "type_vocab_size": types if types > 0 else 2,  # ids 0..1 accepted and ignored, as DistilBERT's
        "layer_norm_eps": hf.get("layer_norm_eps", 1e-7),
        "classifier_dropout": hf.get("cls_dropout"),
        "embedding_size": hf.get("embedding_size"),
    }


def _deberta_hf_dict(cfg: ModelConfig) -> dict:
    """DeBERTa-v2's config.json fields (`DebertaV2Config`'s names)."""
    return {
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size if cfg.token_type_table else 0,
        "hidden_act": cfg.hidden_act,
        "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "cls_dropout": cfg.classifier_dropout,
        "pooler_dropout": cfg.exit_dropout,
        "pooler_hidden_act": "gelu",
        "pooler_hidden_size": cfg.hidden_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "relative_attention": True,
        "share_att_key": True,
        "pos_att_type": list(cfg.pos_att_type),
        "position_buckets": cfg.position_buckets,
        "max_relative_positions": cfg.max_relative_positions,
        "norm_rel_ebd": "layer_norm" if cfg.norm_rel_ebd else "none",
        "position_biased_input": cfg.position_biased_input,
        "conv_kernel_size": 0,
        **({"embedding_size": cfg.embedding_size} if cfg.embedding_size is not None else {}),
    }
