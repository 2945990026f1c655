"""DeBERTa-v2/v3's tensors in HF checkpoints <-> our parameter tree (`rome_jax.encoder.deberta`).

`hf_io` reads and writes the layers (`LAYER_MAP`, under `encoder.layer.{l}.`) and the
head (`pooler.dense`, `classifier`: the generic exits code) as for BERT, and calls these
for what differs: the embeddings (`embed_proj` has no bias; the LayerNorm is over the
hidden size, after it; `position_embeddings` only where `position_biased_input`) and the
shared relative position embeddings (`encoder.rel_embeddings`, `encoder.LayerNorm`).
Names are those after `hf_io.normalize_keys` strips `deberta.`; `reader` is hf_io's
(`take(key, shape, transpose)`, `layer_norm(name, n)`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.deberta import attention_span
from rome_jax.encoder.pytree import Params

PREFIX = "deberta"
"""The model prefix of DeBERTa's state dicts (`deberta.embeddings...`)."""
# (our path inside a layer, HF name inside `encoder.layer.{l}.`), as hf_io's `_LAYER_MAP`
LAYER_MAP = [
    (("attention", "query"), "attention.self.query_proj"),
    (("attention", "key"), "attention.self.key_proj"),
    (("attention", "value"), "attention.self.value_proj"),
    (("attention", "output", "dense"), "attention.output.dense"),
    (("attention", "output", "LayerNorm"), "attention.output.LayerNorm"),
    (("intermediate",), "intermediate.dense"),
    (("output", "dense"), "output.dense"),
    (("output", "LayerNorm"), "output.LayerNorm"),
]


def _tables(cfg: ModelConfig) -> dict[str, int]:
    """The embedding tables of the config and their rows."""
    out = {"word_embeddings": cfg.vocab_size}
    if cfg.position_biased_input:
        out["position_embeddings"] = cfg.max_position_embeddings
    if cfg.has_token_types:
        out["token_type_embeddings"] = cfg.type_vocab_size
    return out


def embeddings_from(r: Any, cfg: ModelConfig) -> Params:
    """`params['embeddings']` from the reader."""
    H, E = cfg.hidden_size, cfg.embedding_size or cfg.hidden_size
    out: dict = {name: {"embedding": r.take(f"embeddings.{name}.weight", (n, E))} for name, n in _tables(cfg).items()}
    if cfg.projects_embeddings:
        out["embed_proj"] = {"kernel": r.take("embeddings.embed_proj.weight", (E, H), transpose=True)}
    out["LayerNorm"] = r.layer_norm("embeddings.LayerNorm", H)
    return out


def shared_from(r: Any, cfg: ModelConfig) -> Params:
    """The shared `rel_embeddings` [2S, H] and their `rel_norm` (where `norm_rel_ebd`)."""
    out: dict = {
        "rel_embeddings": {
            "embedding": r.take("encoder.rel_embeddings.weight", (2 * attention_span(cfg), cfg.hidden_size))
        }
    }
    if cfg.norm_rel_ebd:
        out["rel_norm"] = r.layer_norm("encoder.LayerNorm", cfg.hidden_size)
    return out


def state_from(params: Params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The HF tensors of the embeddings and the shared relative positions (with `deberta.`)."""
    host = lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    emb, p = params["embeddings"], PREFIX
    state = {f"{p}.embeddings.{name}.weight": host(emb[name]["embedding"]) for name in _tables(cfg)}
    if cfg.projects_embeddings:
        state[f"{p}.embeddings.embed_proj.weight"] = host(np.asarray(emb["embed_proj"]["kernel"]).T)
    state[f"{p}.embeddings.LayerNorm.weight"] = host(emb["LayerNorm"]["scale"])
    state[f"{p}.embeddings.LayerNorm.bias"] = host(emb["LayerNorm"]["bias"])
    state[f"{p}.encoder.rel_embeddings.weight"] = host(params["rel_embeddings"]["embedding"])
    if cfg.norm_rel_ebd:
        state[f"{p}.encoder.LayerNorm.weight"] = host(params["rel_norm"]["scale"])
        state[f"{p}.encoder.LayerNorm.bias"] = host(params["rel_norm"]["bias"])
    return state
