"""The exported early-exit program answers as `predict` does, and runs without rome_jax.

On real sentences and the pretrained MiniLM with spread exits (see test_predict):
the program exported for batch 8, length 32 and an entropy threshold (kept 5e-3 from
every entropy seen, as the bucketed `predict` rounds differently) gives the same
exit layers and labels as `predict` at max_length 32; a partial batch filled with
empty rows (attention_mask 0) leaves the real rows' answers alone. A fresh Python
that imports only jax and numpy loads and runs the artifact.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_inference import spread_exits, thresholds_between
from test_predict import MARGIN, SENTENCES

from rome_jax.exits import criteria as exits
from rome_jax.serving.export import export_predictor, load_predictor, run_predictor

pytest.importorskip("flatbuffers", reason="jax.export serialization needs flatbuffers")

B, T = 8, 32


@pytest.fixture(scope="module")
def setup(minilm_path, tmp_path_factory):
    import rome_jax

    model = rome_jax.load_pretrained(minilm_path, num_labels=2)
    model.params = spread_exits(model.config, model.params, model.tokenize(SENTENCES, max_length=T))
    model.label_names = ["negative", "positive"]
    logits = np.asarray(model.exit_logits(model.tokenize(SENTENCES, max_length=T)))
    threshold = thresholds_between(np.asarray(exits.entropy(logits)), (0.5,), MARGIN)[0]
    criterion = exits.Criterion("entropy", threshold)
    directory = str(tmp_path_factory.mktemp("exported"))
    paths = export_predictor(model, directory, batch_size=B, length=T, criterion=criterion)
    return model, criterion, paths


def _batches(model, texts):
    inputs = model.tokenize(texts, max_length=T)
    n = len(texts)
    pad = -n % B
    inputs = {k: np.concatenate([v, np.zeros((pad, T), np.int32)]) for k, v in inputs.items()}
    return [{k: v[i : i + B] for k, v in inputs.items()} for i in range(0, n + pad, B)], n


def test_exported_program_answers_as_predict(setup):
    model, criterion, (program, description) = setup
    assert os.path.basename(program) == "rome_jax_predictor_b8_t32.bin"
    meta = json.loads(Path(description).read_text())
    assert meta["criterion"]["name"] == "entropy" and meta["criterion_spec"] == f"entropy:{criterion.threshold:g}"
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert meta["inputs"][0]["shape"] == [B, T] and meta["label_names"] == ["negative", "positive"]
    call = load_predictor(program)
    batches, n = _batches(model, SENTENCES)
    outs = [run_predictor(call, b) for b in batches]
    exit_layer = np.concatenate([o["exit_layer"] for o in outs])
    probabilities = np.concatenate([o["probabilities"] for o in outs])
    ref = model.predict(SENTENCES, criterion=criterion, max_length=T)
    np.testing.assert_array_equal(exit_layer[:n], ref.exit_layer)
    np.testing.assert_array_equal(probabilities[:n].argmax(-1), ref.label_ids)
    np.testing.assert_allclose(probabilities[:n], ref.probabilities, atol=5e-3)
    assert len(set(ref.exit_layer)) >= 3  # the batch really exits at several layers
    assert (exit_layer[n:] == 1).all()  # empty padding rows exit at once
    for o in outs:
        assert o["layers_run"] == o["exit_layer"].max()


def test_runs_with_jax_alone(setup):
    model, criterion, (program, _) = setup
    batches, n = _batches(model, SENTENCES[:B])
    np.savez(program + ".inputs.npz", **batches[0])
    script = (
        "import sys, json, numpy as np, jax\n"
        f"exported = jax.export.deserialize(bytearray(open({program!r}, 'rb').read()))\n"
        f"x = np.load({program + '.inputs.npz'!r})\n"
        "out = exported.call(x['input_ids'], x['attention_mask'], x['token_type_ids'])\n"
        "assert not any(m.startswith('rome_jax') for m in sys.modules), 'rome_jax was imported'\n"
        "print(json.dumps({k: np.asarray(v).tolist() for k, v in out.items()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd="/", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = model.predict(SENTENCES[:B], criterion=criterion, max_length=T)
    assert out["exit_layer"] == ref.exit_layer.tolist()
    assert np.argmax(out["probabilities"], -1).tolist() == ref.label_ids.tolist()


def test_one_program_for_every_batch_size(setup, tmp_path):
    """The symbolic-batch program (one per length bucket) answers as `predict` at
    batch sizes 1, 3, 8 and 13 without a program per batch size."""
    from rome_jax.serving.export import export_predictors

    model, criterion, _ = setup
    paths = export_predictors(model, str(tmp_path), lengths=(16, T), criterion=criterion)
    assert [os.path.basename(p) for p in paths] == ["rome_jax_predictor_t16.bin", f"rome_jax_predictor_t{T}.bin"]
    meta = json.loads(Path(paths[1][: -len(".bin")] + ".json").read_text())
    assert meta["symbolic_batch"] is True and meta["inputs"][0]["shape"] == ["b", T]
    call = load_predictor(paths[1])
    ref = model.predict(SENTENCES, criterion=criterion, max_length=T)
    inputs = model.tokenize(SENTENCES, max_length=T)
    for size in (1, 3, 8, 13):
        rows = np.arange(size) % len(SENTENCES)
        out = run_predictor(call, {k: v[rows] for k, v in inputs.items()})
        assert out["exit_layer"].shape == (size,)
        np.testing.assert_array_equal(out["exit_layer"], ref.exit_layer[rows])
        np.testing.assert_array_equal(out["probabilities"].argmax(-1), ref.label_ids[rows])
