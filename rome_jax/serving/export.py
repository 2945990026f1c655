"""The early-exit predictor as one serialized program (`jax.export`, StableHLO).

    from rome_jax.serving.export import export_predictor, export_predictors
    export_predictor(model, "runs/sst2/model", length=64)
    # -> runs/sst2/model/rome_jax_predictor_t64.bin and .json: any batch size
    export_predictors(model, "runs/sst2/model", lengths=(16, 32, 64, 128))  # one per length bucket
    export_predictor(model, "runs/sst2/model", batch_size=8, length=64)  # a fixed batch: ..._b8_t64

The program takes `input_ids`, `attention_mask`, `token_type_ids`, int32 [B, T],
and returns a dict: `logits` [B, C] float32 (the answering exit's),
`probabilities` [B, C] (softmax; for regression the logits again), `exit_layer`
[B] int32 (1-based) and `layers_run` (int32 scalar: the layers the batch ran).
Early exit is per example inside the fixed-shape batch: a `lax.while_loop` over
the layers stops when every row has exited, and a row that exited keeps its
answer (the semantics of `rome_jax.exits.executors.while_loop_exit`). A row whose
attention_mask is all 0 is padding: it exits at layer 1 and never keeps the loop
running, so a server can fill a partial batch with empty rows.

The parameters and the criterion are closed over as constants: the artifact is
self-contained (about the size of the weights), and running it needs `jax` alone,
no rome_jax model code:

    import jax, numpy as np
    with open("rome_jax_predictor_b8_t64.bin", "rb") as f:
        predictor = jax.export.deserialize(f.read())
    out = predictor.call(input_ids, attention_mask, token_type_ids)  # int32 [8, 64] each

Without `batch_size` the batch dimension is symbolic (`jax.export` shape
polymorphism): one program serves every batch size, so a server needs one program
per length bucket, not per batch size. Inputs must have exactly the exported length
T (pad or cut to it; with a fixed batch size, pad to B with empty rows), tokenized by
the tokenizer saved beside the model. The JSON beside
the program describes inputs, outputs, the criterion, the label names and the
platforms it was exported for (default: the backend running the export).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rome_jax import files
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.pytree import Params
from rome_jax.exits.criteria import Criterion
from rome_jax.exits.executors import _while_loop_exit
from rome_jax.exits.signals import check_gates
from rome_jax.serving.api import MultiExitModel
from rome_jax.serving.predict import describe, resolve_criterion

Array = jax.Array

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def file_stem(batch_size: int | None, length: int) -> str:
    """`rome_jax_predictor_b{B}_t{T}`, or `rome_jax_predictor_t{T}` for any batch size
    (add .bin / .json)."""
    if batch_size is None:
        return f"rome_jax_predictor_t{length}"
    return f"rome_jax_predictor_b{batch_size}_t{length}"


def predictor_fn(
    config: ModelConfig, params: Params, criterion: Criterion | None
) -> Callable[[Array, Array, Array], dict[str, Array]]:
    """fn(input_ids, attention_mask, token_type_ids) -> dict (see the module doc),
    with `params` and `criterion` (None: full depth) closed over."""
    if criterion is None:
        criterion = Criterion("fixed", config.num_exits, regression=config.num_labels == 1)
    rule = jax.tree.map(jnp.asarray, criterion.rule)
    params = jax.tree.map(jnp.asarray, params)

    def fn(input_ids: Array, attention_mask: Array, token_type_ids: Array) -> dict[str, Array]:
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "example_mask": jnp.sum(attention_mask, axis=-1) > 0,  # all-padding rows are padding
        }
        out = _while_loop_exit(config, params, batch, rule)
        logits = out["logits"]
        probabilities = logits if config.num_labels == 1 else jax.nn.softmax(logits, axis=-1)
        return {
            "logits": logits,
            "probabilities": probabilities,
            "exit_layer": out["exit_index"] + 1,
            "layers_run": out["layers_run"],
        }

    return fn


def export_program(
    config: ModelConfig,
    params: Params,
    criterion: Criterion | None,
    batch_size: int | None,
    length: int,
    platforms: Sequence[str] | None = None,
) -> jax.export.Exported:
    """The `jax.export.Exported` of `predictor_fn` for int32 [batch_size, length] inputs;
    `batch_size` None: a symbolic batch dimension `b` (any batch size >= 1)."""
    if length > config.max_length:
        raise ValueError(f"length {length} exceeds the model's {config.max_length} positions")
    if (batch_size is not None and batch_size < 1) or length < 1:
        raise ValueError(f"batch_size and length must be >= 1, not {batch_size}, {length}")
    rows = jax.export.symbolic_shape("b")[0] if batch_size is None else batch_size
    spec = jax.ShapeDtypeStruct((rows, length), jnp.int32)
    fn = jax.jit(predictor_fn(config, params, criterion))
    return jax.export.export(fn, platforms=tuple(platforms) if platforms else None)(spec, spec, spec)


def export_predictor(
    model: MultiExitModel,
    directory: str,
    *,
    length: int,
    batch_size: int | None = None,
    criterion: Criterion | str | None = "auto",
    platforms: Sequence[str] | None = None,
) -> tuple[str, str]:
    """Writes `DIRECTORY/rome_jax_predictor_t{T}.bin` (the serialized program, any
    batch size; `rome_jax_predictor_b{B}_t{T}.bin` with `batch_size`) and `.json` (its
    description). criterion: as `MultiExitModel.predict`'s ("auto": the model's
    calibrated one, else full depth). Returns the two paths."""
    chosen = resolve_criterion(criterion, model.config, getattr(model, "calibration", None))
    if chosen is not None:
        check_gates(chosen, model.params)
    exported = export_program(model.config, model.params, chosen, batch_size, length, platforms)
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, file_stem(batch_size, length))
    try:
        blob = bytes(exported.serialize())
    except ImportError as e:  # jax serializes with the flatbuffers package
        raise ImportError(f"{e} (pip install flatbuffers)") from None
    tmp = f"{stem}.bin.tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, f"{stem}.bin")
    labels = model.config.num_labels
    batch: int | str = "b" if batch_size is None else batch_size
    description = {
        "format": "jax.export serialized Exported (StableHLO); load with jax.export.deserialize(bytes), "
        "run with .call(input_ids, attention_mask, token_type_ids)",
        "file": os.path.basename(f"{stem}.bin"),
        "inputs": [{"name": n, "shape": [batch, length], "dtype": "int32"} for n in INPUT_NAMES],
        "outputs": {
            "logits": {"shape": [batch, labels], "dtype": "float32", "meaning": "the answering exit's logits"},
            "probabilities": {
                "shape": [batch, labels],
                "dtype": "float32",
                "meaning": "softmax of logits" if labels > 1 else "the score (regression)",
            },
            "exit_layer": {"shape": [batch], "dtype": "int32", "meaning": "1-based exit layer"},
            "layers_run": {"shape": [], "dtype": "int32", "meaning": "layers the batch ran"},
        },
        "padding_rows": "rows whose attention_mask is all 0 exit at layer 1 and never keep the loop running",
        "criterion": None
        if chosen is None
        else {
            "name": chosen.name,
            "threshold": chosen.threshold,
            "regression": chosen.regression,
            "tolerance": chosen.tolerance,
        },
        "criterion_spec": describe(chosen),
        "label_names": list(model.label_names) if model.label_names else None,
        "num_labels": labels,
        "num_layers": model.config.num_layers,
        "batch_size": batch_size,
        "symbolic_batch": batch_size is None,
        "length": length,
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "tokenizer": "the tokenizer files of the model directory, padding on the right to `length`",
    }
    files.write_json(f"{stem}.json", description)
    return f"{stem}.bin", f"{stem}.json"


def export_predictors(
    model: MultiExitModel,
    directory: str,
    *,
    lengths: Sequence[int],
    criterion: Criterion | str | None = "auto",
    platforms: Sequence[str] | None = None,
) -> list[str]:
    """One program per length bucket, each for any batch size (`export_predictor`
    without `batch_size`): what a server that batches requests of any count needs.
    Returns the .bin paths, shortest length first."""
    return [
        export_predictor(model, directory, length=int(n), criterion=criterion, platforms=platforms)[0]
        for n in sorted(set(lengths))
    ]


def load_predictor(path: str) -> Callable[..., Any]:
    """The deserialized program of a `.bin` file: call it with int32 numpy arrays
    (`jax.export.deserialize(...).call`)."""
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    return exported.call


def run_predictor(call: Callable[..., Any], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs a loaded predictor on a dict of [B, T] arrays; numpy outputs."""
    out = call(*(np.asarray(inputs[n], np.int32) for n in INPUT_NAMES))
    return {k: np.asarray(v) for k, v in out.items()}
