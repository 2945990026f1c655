"""ModernBERT's tensors in HF checkpoints <-> our parameter tree (`rome_jax.encoder.modernbert`).

`hf_io` calls these for `family == "modernbert"`, passing its reader (`take(key,
shape, transpose)`, `has(key)`, `source`) and its classifier check, so that this module
needs nothing of it. HF names, after `hf_io.normalize_keys` strips `model.`:
`embeddings.tok_embeddings`, `embeddings.norm`, `layers.{l}.attn_norm` (none in layer
0), `layers.{l}.attn.Wqkv` / `attn.Wo`, `layers.{l}.mlp_norm`, `layers.{l}.mlp.Wi` /
`mlp.Wo`, `final_norm`; the head `head.dense`, `head.norm`, `classifier` (a masked-LM
checkpoint's `head` is copied into every exit; its `decoder` is not read). The exits
file holds `exit.{l}.pooler`, `exit.{l}.head_norm`, `exit.{l}.classifier`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.pytree import Params
from rome_jax.errors import CheckpointError

# (our path inside a layer, HF name inside `layers.{l}.`, (in, out) of a dense or None for a norm)
_LAYER = [
    (("attn_norm",), "attn_norm", None),
    (("attn", "Wqkv"), "attn.Wqkv", ("H", "3H")),
    (("attn", "Wo"), "attn.Wo", ("H", "H")),
    (("mlp_norm",), "mlp_norm", None),
    (("mlp", "Wi"), "mlp.Wi", ("H", "2I")),
    (("mlp", "Wo"), "mlp.Wo", ("I", "H")),
]


def _sizes(cfg: ModelConfig) -> dict[str, int]:
    H, I = cfg.hidden_size, cfg.intermediate_size
    return {"H": H, "3H": 3 * H, "2I": 2 * I, "I": I}


def _dense(r: Any, name: str, n_in: int, n_out: int, bias: bool) -> dict:
    out = {"kernel": r.take(f"{name}.weight", (n_in, n_out), transpose=True)}
    if bias:
        out["bias"] = r.take(f"{name}.bias", (n_out,))
    return out


def _norm(r: Any, name: str, n: int, bias: bool) -> dict:
    out = {"scale": r.take(f"{name}.weight", (n,))}
    if bias:
        out["bias"] = r.take(f"{name}.bias", (n,))
    return out


def _ones_norm(n: int, bias: bool) -> dict:
    """Layer 0's unused `attn_norm` (transformers' Identity)."""
    out = {"scale": np.ones((n,), np.float32)}
    if bias:
        out["bias"] = np.zeros((n,), np.float32)
    return out


def params_from_state_dict(
    r: Any,
    cfg: ModelConfig,
    fresh_exits: Params,
    exits_reader: Any | None,
    classifier: Callable[[Any, str], dict | None],
) -> tuple[Params, dict]:
    """Our tree from a normalised ModernBERT state dict (`r`), as `hf_io.params_from_state_dict`.
    `classifier(reader, name)`: the classifier `name`, or None where it is left fresh."""
    H, L = cfg.hidden_size, cfg.num_layers
    sizes, nb = _sizes(cfg), cfg.norm_bias
    params: dict = {
        "embeddings": {
            "tok_embeddings": {"embedding": r.take("embeddings.tok_embeddings.weight", (cfg.vocab_size, H))},
            "norm": _norm(r, "embeddings.norm", H, nb),
        },
        "final_norm": _norm(r, "final_norm", H, nb),
    }
    if r.has(f"layers.{L}.attn.Wqkv.weight"):
        raise CheckpointError(f"{r.source}: the checkpoint has more than the config's {L} layers")
    layer: dict = {}
    for ours, theirs, shape in _LAYER:
        per_layer = []
        for l in range(L):
            name = f"layers.{l}.{theirs}"
            if shape is None:
                per_layer.append(_ones_norm(H, nb) if (l == 0 and theirs == "attn_norm") else _norm(r, name, H, nb))
            else:
                bias = cfg.attention_bias if theirs.startswith("attn") else cfg.mlp_bias
                per_layer.append(_dense(r, name, sizes[shape[0]], sizes[shape[1]], bias))
        node = layer
        for p in ours[:-1]:
            node = node.setdefault(p, {})
        node[ours[-1]] = {k: np.stack([p[k] for p in per_layer]) for k in per_layer[0]}

    exits = {k: {kk: np.array(vv, dtype=np.float32) for kk, vv in v.items()} for k, v in fresh_exits.items()}
    report = {"final": "fresh", "intermediate": "fresh"}
    if r.has("head.dense.weight"):  # a classifier's or a masked LM's head: every exit starts from it
        head = {
            "pooler": _dense(r, "head.dense", H, H, cfg.classifier_bias),
            "head_norm": _norm(r, "head.norm", H, nb),
        }
        for part, tensors in head.items():
            for k, v in tensors.items():
                exits[part][k][:] = v
        report = {"final": "pretrained head, fresh classifier", "intermediate": "head copied, classifier fresh"}
    final = classifier(r, "classifier") if r.has("classifier.weight") else None
    if final is not None:
        for k in ("kernel", "bias"):
            exits["classifier"][k][L - 1] = final[k]
        report["final"] = "checkpoint classifier"
    if exits_reader is not None:
        for l in range(L - 1 if final is not None else L):  # the HF weights are the final exit
            exits["pooler"] = _put(
                exits["pooler"], l, _dense(exits_reader, f"exit.{l}.pooler", H, H, cfg.classifier_bias)
            )
            exits["head_norm"] = _put(exits["head_norm"], l, _norm(exits_reader, f"exit.{l}.head_norm", H, nb))
            c = classifier(exits_reader, f"exit.{l}.classifier")
            if c is not None:
                exits["classifier"] = _put(exits["classifier"], l, c)
        report = {
            "final": "checkpoint classifier",
            "intermediate": f"restored from {os.path.basename(exits_reader.source)}",
        }
    params["layers"] = {"layer": layer, "exit": exits}
    return params, report


def _put(stacked: dict, l: int, tensors: dict) -> dict:
    for k, v in tensors.items():
        stacked[k][l] = v
    return stacked


def state_dict_from_params(params: Params, cfg: ModelConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`ModernBertForSequenceClassification`'s tensors for the final exit (the
    `ModernBertForTokenClassification` ones are the same names), and the exits'."""
    host = lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    state: dict[str, np.ndarray] = {}

    def put(name: str, tensors: dict, index: int | None = None, into: dict = state) -> None:
        for k, v in tensors.items():
            value = v if index is None else v[index]
            into[f"{name}.{'weight' if k in ('kernel', 'scale') else 'bias'}"] = host(
                value.T if k == "kernel" else value
            )

    emb = params["embeddings"]
    state["model.embeddings.tok_embeddings.weight"] = host(emb["tok_embeddings"]["embedding"])
    put("model.embeddings.norm", emb["norm"])
    layer = params["layers"]["layer"]
    for ours, theirs, _ in _LAYER:
        node = layer
        for p in ours:
            node = node[p]
        for l in range(cfg.num_layers):
            if not (l == 0 and theirs == "attn_norm"):
                put(f"model.layers.{l}.{theirs}", node, l)
    put("model.final_norm", params["final_norm"])
    exits = params["layers"]["exit"]
    last = cfg.num_layers - 1
    for part, name in (("pooler", "head.dense"), ("head_norm", "head.norm"), ("classifier", "classifier")):
        put(name, exits[part], last)
    exits_state: dict[str, np.ndarray] = {}
    for l in range(cfg.num_layers):
        for part in ("pooler", "head_norm", "classifier"):
            put(f"exit.{l}.{part}", exits[part], l, exits_state)
    return state, exits_state
