"""Reading and writing HuggingFace checkpoints (PyTorch layout) as our parameter tree.

HF stores dense weights as [out, in]; Flax kernels are [in, out]. Layer `l`'s
tensors `encoder.layer.{l}.*` (DistilBERT: `transformer.layer.{l}.*`) become slice `l`
of our stacked `params['layers']`. The final exit is the family's classification
head: BERT's `pooler.dense` + `classifier`, ALBERT's `pooler` + `classifier`,
RoBERTa's (XLM-R's) and ELECTRA's `classifier.dense` + `classifier.out_proj`,
DistilBERT's `pre_classifier` + `classifier`.
Exit weights beyond the final classifier live beside the HF files in
`rome_jax_exits.safetensors`, so that a directory written by `save_hf` is both a
plain `*ForSequenceClassification` checkpoint and a complete multi-exit model. The
final exit is read from the HF weights, which transformers may have rewritten since
(the exits file keeps a copy; a difference is logged).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from safetensors import safe_open

from rome_jax.encoder import deberta_io, modernbert_io
from rome_jax.encoder.config import EXIT_POOLING_KEY, ModelConfig
from rome_jax.encoder.pytree import Params, PyTree
from rome_jax.errors import CheckpointError

logger = logging.getLogger(__name__)

EXITS_FILE = "rome_jax_exits.safetensors"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# (our path inside a layer, HF name inside `encoder.layer.{l}.`, is a dense kernel)
_LAYER_MAP = [
    (("attention", "query"), "attention.self.query"),
    (("attention", "key"), "attention.self.key"),
    (("attention", "value"), "attention.self.value"),
    (("attention", "output", "dense"), "attention.output.dense"),
    (("attention", "output", "LayerNorm"), "attention.output.LayerNorm"),
    (("intermediate",), "intermediate.dense"),
    (("output", "dense"), "output.dense"),
    (("output", "LayerNorm"), "output.LayerNorm"),
]
# ALBERT's one shared layer: (our path, HF name inside `encoder.albert_layer_groups.0.albert_layers.0.`)
_ALBERT_LAYER = "encoder.albert_layer_groups.0.albert_layers.0"
_ALBERT_MAP = [
    (("attention", "query"), "attention.query"),
    (("attention", "key"), "attention.key"),
    (("attention", "value"), "attention.value"),
    (("attention", "output", "dense"), "attention.dense"),
    (("attention", "output", "LayerNorm"), "attention.LayerNorm"),
    (("intermediate",), "ffn"),
    (("output", "dense"), "ffn_output"),
    (("output", "LayerNorm"), "full_layer_layer_norm"),
]
# DistilBERT: (our path, HF name inside `transformer.layer.{l}.`)
_DISTILBERT_MAP = [
    (("attention", "query"), "attention.q_lin"),
    (("attention", "key"), "attention.k_lin"),
    (("attention", "value"), "attention.v_lin"),
    (("attention", "output", "dense"), "attention.out_lin"),
    (("attention", "output", "LayerNorm"), "sa_layer_norm"),
    (("intermediate",), "ffn.lin1"),
    (("output", "dense"), "ffn.lin2"),
    (("output", "LayerNorm"), "output_layer_norm"),
]
_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")
# The HF name (without the model prefix) of `embeddings/embedding_hidden_mapping_in`.
_EMBEDDING_MAPPING = {"albert": "encoder.embedding_hidden_mapping_in", "electra": "embeddings_project"}
# Architecture name prefixes by HF model_type (`hf_config_dict`).
_ARCHITECTURES = {
    "bert": "Bert",
    "roberta": "Roberta",
    "xlm-roberta": "XLMRoberta",
    "albert": "Albert",
    "distilbert": "DistilBert",
    "electra": "Electra",
    "modernbert": "ModernBert",
    "deberta-v2": "DebertaV2",
}


def find_weight_file(directory: str) -> str:
    """The weights file of an HF directory, or a CheckpointError naming what is there."""
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    present = ", ".join(sorted(os.listdir(directory))) or "nothing"
    raise CheckpointError(
        f"{directory}: no model weights (expected model.safetensors or pytorch_model.bin; found {present})"
    )


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    out = {}
    with safe_open(path, framework="flax") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
            out[key] = np.asarray(f.get_tensor(key))
    return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch  # optional (a test dependency), and heavy: only pytorch_model.bin needs it
    except ImportError:
        raise CheckpointError(
            f"{path}: reading pytorch_model.bin needs PyTorch (pip install torch), "
            "or convert the checkpoint to model.safetensors"
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """All tensors of a weights file (sharded checkpoints through their index)."""
    read: Callable[[str], dict] = _read_safetensors if ".safetensors" in path else _read_torch
    if path.endswith(".index.json"):
        try:
            with open(path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path}: cannot read the shard index ({type(e).__name__}: {e})") from None
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            state.update(_read_one(read, os.path.join(os.path.dirname(path), shard)))
        return state
    return _read_one(read, path)


def _read_one(read: Callable[[str], dict], path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such weights file")
    try:
        return read(path)
    except CheckpointError:
        raise
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None


def normalize_keys(state: dict[str, np.ndarray], family: str) -> dict[str, np.ndarray]:
    """Strips the model prefix (`bert.`, `roberta.` (XLM-R's too), `albert.`,
    `distilbert.`, `electra.`, DeBERTa's `deberta.`) and renames old LayerNorm gamma/beta."""
    out = {}
    prefixes = ("model.",) if family == "modernbert" else (f"{family}.", "bert.", "roberta.", "albert.")
    if family == "deberta-v2":
        prefixes = (f"{deberta_io.PREFIX}.",)
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        if "LayerNorm" in key:
            key = key.replace(".gamma", ".weight").replace(".beta", ".bias")
        out[key] = value
    return out


class _Reader:
    """Takes tensors by HF name, checking presence and shape against the config."""

    def __init__(self, state: dict[str, np.ndarray], source: str):
        self.state = state
        self.source = source

    def has(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str, shape: tuple[int, ...], transpose: bool = False) -> np.ndarray:
        if key not in self.state:
            raise CheckpointError(f"{self.source}: missing parameter {key}")
        value = np.asarray(self.state[key], dtype=np.float32)
        if transpose:
            value = value.T
        if value.shape != tuple(shape):
            got = value.T.shape if transpose else value.shape
            want = tuple(reversed(shape)) if transpose else tuple(shape)
            raise CheckpointError(
                f"{self.source}: parameter {key} has shape {got} in the checkpoint but the config needs {want}"
            )
        return value

    def dense(self, name: str, n_in: int, n_out: int) -> dict:
        return {
            "kernel": self.take(f"{name}.weight", (n_in, n_out), transpose=True),
            "bias": self.take(f"{name}.bias", (n_out,)),
        }

    def layer_norm(self, name: str, n: int) -> dict:
        return {"scale": self.take(f"{name}.weight", (n,)), "bias": self.take(f"{name}.bias", (n,))}


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _dense_shape(cfg: ModelConfig, ours: tuple[str, ...]) -> tuple[int, int]:
    """(in, out) of a dense layer of an encoder layer, by our path."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    return {("intermediate",): (H, I), ("output", "dense"): (I, H)}.get(ours, (H, H))


def _layer_names(cfg: ModelConfig) -> tuple[list, list[str]]:
    """The layer map of the family and the HF prefixes of its stored layers."""
    if cfg.shares_layers:
        return _ALBERT_MAP, [_ALBERT_LAYER]
    if cfg.family == "distilbert":
        return _DISTILBERT_MAP, [f"transformer.layer.{l}" for l in range(cfg.num_layers)]
    if cfg.family == "deberta-v2":
        return deberta_io.LAYER_MAP, [f"encoder.layer.{l}" for l in range(cfg.num_layers)]
    return _LAYER_MAP, [f"encoder.layer.{l}" for l in range(cfg.num_layers)]


def _embedding_names(cfg: ModelConfig) -> tuple[str, ...]:
    """The embedding tables of the family (DistilBERT has no token types)."""
    return _EMBEDDINGS if cfg.has_token_types else _EMBEDDINGS[:2]


def _head_names(cfg: ModelConfig, prefix: str = "") -> tuple[str, str]:
    """HF names of the final exit's (pooler, classifier) in `*ForSequenceClassification`
    (`*ForTokenClassification` with token exits: its classifier; the pooler is BERT's
    name, unused there). `prefix`: the model prefix with its dot (`bert.`), as the
    state dict of a whole model has it."""
    if cfg.token_exits:
        pooler = f"{prefix}pooler" if cfg.family == "albert" else f"{prefix}pooler.dense"
        return pooler, "classifier"
    if cfg.family == "deberta-v2":  # ContextPooler, outside the model prefix
        return "pooler.dense", "classifier"
    if cfg.family in ("roberta", "electra"):
        return "classifier.dense", "classifier.out_proj"
    if cfg.family == "albert":
        return f"{prefix}pooler", "classifier"
    if cfg.family == "distilbert":
        return "pre_classifier", "classifier"
    return f"{prefix}pooler.dense", "classifier"


def _classifier(reader: _Reader, name: str, H: int, C: int, ignore_mismatched_sizes: bool, warned: list) -> dict | None:
    """The classifier `name` ([H, C]), or None (fresh) when its label count differs and
    `ignore_mismatched_sizes`; otherwise a label-count mismatch names the option."""
    stored = tuple(np.shape(reader.state.get(f"{name}.weight", ())))
    if len(stored) == 2 and stored[1] == H and stored[0] != C:
        what = (
            f"{reader.source}: parameter {name}.weight has shape {stored} ({stored[0]} labels) "
            f"in the checkpoint, the task needs {(C, H)} ({C} labels)"
        )
        if not ignore_mismatched_sizes:
            raise CheckpointError(
                f"{what}; set model.reinit_classifier=True "
                "(load_pretrained(..., ignore_mismatched_sizes=True)) to "
                "re-initialise the classifier"
            )
        if not warned:
            logger.warning("%s: re-initialising the classifier from the seed", what)
            warned.append(name)
        return None
    return reader.dense(name, H, C)


def params_from_state_dict(
    state: dict[str, np.ndarray],
    cfg: ModelConfig,
    fresh_exits: Params,
    source: str,
    exits_state: dict[str, np.ndarray] | None = None,
    *,
    ignore_mismatched_sizes: bool = False,
) -> tuple[Params, dict]:
    """Our parameter tree from a normalised HF state dict.

    `fresh_exits` holds freshly initialised stacked exit parameters ({'pooler',
    'classifier'}, leaves [L, ...]) used where the checkpoint has nothing.
    A classifier for another label count is a CheckpointError, or with
    `ignore_mismatched_sizes` left fresh (one warning naming both shapes).
    Returns (params, report) where report says where each exit came from.
    """
    warned: list = []
    r = _Reader(state, source)
    if cfg.family == "modernbert":  # its own names and head (a norm in it, biases per its config)
        exits_reader = None
        if exits_state is not None:
            exits_reader = _Reader(exits_state, os.path.join(os.path.dirname(source), EXITS_FILE))
        take_classifier = lambda reader, name: _classifier(
            reader, name, cfg.hidden_size, cfg.num_labels, ignore_mismatched_sizes, warned
        )
        loaded, report = modernbert_io.params_from_state_dict(r, cfg, fresh_exits, exits_reader, take_classifier)
        if warned:
            report = {"final": "head from the checkpoint, fresh classifier", "intermediate": "fresh classifier"}
        return loaded, report
    H, L, C = cfg.hidden_size, cfg.num_layers, cfg.num_labels
    E = cfg.embedding_size or H
    params: dict = {"embeddings": {}}
    sizes = {
        "word_embeddings": cfg.vocab_size,
        "position_embeddings": cfg.max_position_embeddings,
        "token_type_embeddings": cfg.type_vocab_size,
    }
    if cfg.family == "deberta-v2":  # its own embeddings, and the shared relative positions
        params["embeddings"] = deberta_io.embeddings_from(r, cfg)
        params.update(deberta_io.shared_from(r, cfg))
    else:
        for name in _embedding_names(cfg):
            params["embeddings"][name] = {"embedding": r.take(f"embeddings.{name}.weight", (sizes[name], E))}
        params["embeddings"]["LayerNorm"] = r.layer_norm("embeddings.LayerNorm", E)
        if cfg.projects_embeddings:
            params["embeddings"]["embedding_hidden_mapping_in"] = r.dense(_EMBEDDING_MAPPING[cfg.family], E, H)

    layer_map, prefixes = _layer_names(cfg)
    layer: dict = {}
    for ours, theirs in layer_map:
        per_layer = []
        for prefix in prefixes:
            name = f"{prefix}.{theirs}"
            if theirs.endswith(("LayerNorm", "layer_norm")):
                per_layer.append(r.layer_norm(name, H))
            else:
                per_layer.append(r.dense(name, *_dense_shape(cfg, ours)))
        if cfg.shares_layers:
            _set(layer, ours, per_layer[0])
        else:
            _set(layer, ours, {k: np.stack([p[k] for p in per_layer]) for k in per_layer[0]})
    stack = prefixes[0].rsplit(".", 1)[0]  # encoder.layer, transformer.layer (ALBERT: never there)
    if r.has(f"{stack}.{L}.{layer_map[0][1]}.weight"):
        raise CheckpointError(f"{source}: the checkpoint has more than the config's {L} layers")

    exits = {k: {kk: np.array(vv, dtype=np.float32) for kk, vv in v.items()} for k, v in fresh_exits.items()}
    report = {"final": "fresh", "intermediate": "fresh"}
    # The pretrained pooler (BERT) or classification head dense (RoBERTa, ELECTRA;
    # DistilBERT's pre_classifier).
    pooler = None
    if r.has("pooler.dense.weight"):
        pooler = r.dense("pooler.dense", H, H)
    if cfg.family == "albert" and r.has("pooler.weight"):
        pooler = r.dense("pooler", H, H)
    if cfg.family in ("roberta", "electra") and r.has("classifier.dense.weight"):
        pooler = r.dense("classifier.dense", H, H)
    if cfg.family == "distilbert" and r.has("pre_classifier.weight"):
        pooler = r.dense("pre_classifier", H, H)
    classifier = None
    if r.has("classifier.weight"):
        classifier = _classifier(r, "classifier", H, C, ignore_mismatched_sizes, warned)
    elif r.has("classifier.out_proj.weight"):
        classifier = _classifier(r, "classifier.out_proj", H, C, ignore_mismatched_sizes, warned)
    if pooler is not None:
        for k in ("kernel", "bias"):
            exits["pooler"][k][:] = pooler[k]
        report["intermediate"] = "pooler copied, classifier fresh"
        report["final"] = "pretrained pooler, fresh classifier"
    if classifier is not None:
        for k in ("kernel", "bias"):
            exits["classifier"][k][L - 1] = classifier[k]
        report["final"] = "checkpoint classifier"
    if exits_state is not None:
        er = _Reader(exits_state, os.path.join(os.path.dirname(source), EXITS_FILE))
        for l in range(L):
            p = er.dense(f"exit.{l}.pooler", H, H)
            c = _classifier(er, f"exit.{l}.classifier", H, C, ignore_mismatched_sizes, warned)
            if l == L - 1 and pooler is not None and classifier is not None and c is not None:
                # The HF weights are the final exit: transformers reads and rewrites
                # them (fine-tuning there leaves our file as it was), so they win.
                if not all(
                    np.array_equal(x[k], y[k]) for x, y in ((p, pooler), (c, classifier)) for k in ("kernel", "bias")
                ):
                    logger.warning(
                        "%s: the final exit in %s differs from the one in %s (changed by another tool?); using %s's",
                        os.path.dirname(source) or ".",
                        EXITS_FILE,
                        os.path.basename(source),
                        os.path.basename(source),
                    )
                continue
            for k in ("kernel", "bias"):
                exits["pooler"][k][l] = p[k]
                if c is not None:
                    exits["classifier"][k][l] = c[k]
                elif l == L - 1 and classifier is not None:
                    exits["classifier"][k][l] = classifier[k]
        report = {"final": "checkpoint classifier", "intermediate": f"restored from {EXITS_FILE}"}
    if warned:
        report = {
            "final": "pooler from the checkpoint, fresh classifier",
            "intermediate": "pooler from the checkpoint, fresh classifier",
        }
    if cfg.shares_layers:
        params["shared_layer"] = layer
        params["layers"] = {"exit": exits}
    else:
        params["layers"] = {"layer": layer, "exit": exits}
    return params, report


def state_dict_from_params(params: Params, cfg: ModelConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """HF `*ForSequenceClassification` tensors for the final exit, and the exits' tensors.

    Returns (model_state, exits_state), numpy float32, HF [out, in] layout.
    """
    if cfg.family == "modernbert":
        return modernbert_io.state_dict_from_params(params, cfg)
    p = cfg.family
    host = lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    state: dict[str, np.ndarray] = {}
    emb = params["embeddings"]
    if cfg.family == "deberta-v2":  # its own embeddings, and the shared relative positions
        p = deberta_io.PREFIX
        state.update(deberta_io.state_from(params, cfg))
    else:
        for name in _embedding_names(cfg):
            state[f"{p}.embeddings.{name}.weight"] = host(emb[name]["embedding"])
        state[f"{p}.embeddings.LayerNorm.weight"] = host(emb["LayerNorm"]["scale"])
        state[f"{p}.embeddings.LayerNorm.bias"] = host(emb["LayerNorm"]["bias"])
        if cfg.projects_embeddings:
            mapping = emb["embedding_hidden_mapping_in"]
            state[f"{p}.{_EMBEDDING_MAPPING[cfg.family]}.weight"] = host(mapping["kernel"].T)
            state[f"{p}.{_EMBEDDING_MAPPING[cfg.family]}.bias"] = host(mapping["bias"])

    def get(tree: PyTree, path: tuple[str, ...]) -> PyTree:
        for k in path:
            tree = tree[k]
        return tree

    layer_map, prefixes = _layer_names(cfg)
    layer = params["shared_layer"] if cfg.shares_layers else params["layers"]["layer"]
    for ours, theirs in layer_map:
        node = get(layer, ours)
        for l, prefix in enumerate(prefixes):
            name = f"{p}.{prefix}.{theirs}"
            take = (lambda x: x) if cfg.shares_layers else (lambda x: x[l])  # noqa: B023 - used in this iteration
            if theirs.endswith(("LayerNorm", "layer_norm")):
                state[f"{name}.weight"] = host(take(node["scale"]))
                state[f"{name}.bias"] = host(take(node["bias"]))
            else:
                state[f"{name}.weight"] = host(take(node["kernel"]).T)
                state[f"{name}.bias"] = host(take(node["bias"]))
    exits = params["layers"]["exit"]
    last = cfg.num_layers - 1
    for name, part in zip(_head_names(cfg, f"{p}."), ("pooler", "classifier")):
        if cfg.family == "deberta-v2" and cfg.token_exits and part == "pooler":
            continue  # DebertaV2ForTokenClassification has no pooler (the exits file keeps it)
        state[f"{name}.weight"] = host(exits[part]["kernel"][last].T)
        state[f"{name}.bias"] = host(exits[part]["bias"][last])
    exits_state = {}
    for l in range(cfg.num_layers):
        for part in ("pooler", "classifier"):
            exits_state[f"exit.{l}.{part}.weight"] = host(exits[part]["kernel"][l].T)
            exits_state[f"exit.{l}.{part}.bias"] = host(exits[part]["bias"][l])
    return state, exits_state


TORCH_MODELING_MODULE = "rome_jax_modeling"
"""The modeling file (`<module>.py`) an exported directory carries for PyTorch exits."""


def has_torch_exits(cfg: ModelConfig) -> bool:
    """Whether the PyTorch modeling file reproduces this model's exits: sequence exits
    with the generic head (ModernBERT's head has norms of its own; taggers load as the
    family's `*ForTokenClassification`)."""
    return not cfg.token_exits and cfg.family != "modernbert"


def hf_config_dict(cfg: ModelConfig, label_names: list[str] | None = None) -> dict:
    """config.json for `*ForSequenceClassification` with the same encoder
    (`*ForTokenClassification` for token exits: its classifier is the final exit's,
    the pooler's weights are written but unused there). The architecture is named
    after the checkpoint's HF model type (`ModelConfig.model_type`: an XLM-R checkpoint
    exports as `XLMRobertaForSequenceClassification`)."""
    d = cfg.to_hf_dict()
    head = "TokenClassification" if cfg.token_exits else "SequenceClassification"
    arch = _ARCHITECTURES[cfg.model_type] + "For" + head
    d["architectures"] = [arch]
    names = label_names or [f"LABEL_{i}" for i in range(cfg.num_labels)]
    d["id2label"] = {str(i): n for i, n in enumerate(names)}
    d["label2id"] = {n: i for i, n in enumerate(names)}
    d["num_labels"] = cfg.num_labels
    if cfg.num_labels == 1:
        d["problem_type"] = "regression"
    if cfg.family == "roberta":
        d.setdefault("bos_token_id", 0)
        d.setdefault("eos_token_id", 2)
    d["rome_jax"] = {"num_exits": cfg.num_exits, "exits_file": EXITS_FILE, "exit_activation": cfg.exit_activation}
    if has_torch_exits(cfg):  # every exit in PyTorch (trust_remote_code=True): rome_jax/serving/torch_modeling.py
        d["auto_map"] = {"AutoModelForSequenceClassification": f"{TORCH_MODELING_MODULE}.RomeJaxMultiExitModel"}
    if cfg.exit_pooling != "cls":  # read back by ModelConfig.from_hf_dict; transformers ignores it
        d[EXIT_POOLING_KEY] = cfg.exit_pooling
    return d
