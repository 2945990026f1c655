"""The trainer's own evaluation with length buckets equals the padded one.

`rome_jax.training.evaluate.evaluate`, as `train_and_evaluate` calls it (a `Run`
from `set_up`, the run's eval function over its mesh, the params replicated on it),
on real dev sentences (the first 96 SST-2 sentences, the first 64 MRPC pairs) with
the real pretrained MiniLM at max_length 128: once with `data.buckets` 16,32,64,128
(each batch cut to the smallest bucket holding its rows) and once with one bucket
(every batch padded to 128), on the same parameters. Every exit's metrics are
equal, the losses and the logits agree within 1e-5.

Why they may differ at all: bucketing regroups the rows by length, so a row is
computed in another batch at another position, and XLA's CPU matrix products sum
the same terms in another order (~5e-8 here; see tests/test_eval_buckets.py).
The exit classifiers are set so that each exit answers both classes (untrained
exits of a pretrained encoder give every sentence nearly the same answer, which
would make equal metrics a matter of constant predictions): each points along the
direction in which that exit's pooled vectors vary most over these sentences and
splits them at a wide gap near the middle (`split_heads`), so every margin stays
far above the rounding.
"""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from rome_jax.config import run_config
from rome_jax.encoder.model import INPUT_KEYS, MultiExitEncoder
from rome_jax.exits import outputs
from rome_jax.sharding import replicate
from rome_jax.training import evaluate as training_eval
from rome_jax.training.setup import set_up

pytestmark = pytest.mark.slow  # the pretrained MiniLM at max_length 128

REPO = pathlib.Path(__file__).resolve().parent.parent

T = 128
BUCKETS = "16,32,64,128"
ROWS = {"sst2": 96, "mrpc": 64}
LOGITS_ATOL = 1e-5


def split_heads(config, params, inputs, quantiles=(0.3, 0.7)):
    """`params` with exit classifiers that split the rows of `inputs` ({name: [N, T]})
    in two: exit l's class-1 logit minus its class-0 logit is the projection of its
    pooled vector [H] on that exit's first principal direction over the rows, minus
    a cut in the middle of the widest gap between the projections' `quantiles`."""
    pooled = MultiExitEncoder(config).apply({"params": params}, **inputs)["pooled"]
    pooled = np.asarray(pooled, np.float64)  # [L, N, H]
    kernels, biases = [], []
    for vectors in pooled:
        direction = np.linalg.svd(vectors - vectors.mean(0), full_matrices=False)[2][0]  # [H]
        projections = np.sort(vectors @ direction)
        low, high = (int(q * (len(projections) - 1)) for q in quantiles)
        gaps = np.diff(projections[low : high + 1])
        k = low + int(gaps.argmax())
        cut = (projections[k] + projections[k + 1]) / 2
        kernels.append(np.stack([-direction / 2, direction / 2], -1))  # [H, 2]
        biases.append(np.array([cut / 2, -cut / 2]))
    classifier = {
        "kernel": jnp.asarray(np.stack(kernels), jnp.float32),
        "bias": jnp.asarray(np.stack(biases), jnp.float32),
    }
    exits = {**params["layers"]["exit"], "classifier": classifier}
    return {**params, "layers": {**params["layers"], "exit": exits}}


class Records:
    """A stand-in for the trainer's `MetricsLog`: keeps what `evaluate` writes."""

    def __init__(self):
        self.records = []

    def write(self, record, **_):
        self.records.append(record)


def runs(tmp_path, minilm_path, glue_dir, task):
    """{buckets spec: the `Run` set_up makes of that config}, and the pretrained params."""
    made, params = {}, None
    for spec in (BUCKETS, "none"):
        config = run_config.load(
            f"{REPO}/configs/tiny.py",
            {
                "data.task": task,
                "data.dir": glue_dir,
                "data.max_length": T,
                "data.buckets": spec,
                "data.train_max_examples": 8,
                "data.eval_max_examples": ROWS[task],
                "model.name_or_path": minilm_path,
                "train.eval_batch_size": 16,
            },
        )
        made[spec], loaded = set_up(config, tmp_path / spec.replace(",", "_"), overwrite=False)
        params = loaded if params is None else params
    return made, params


@pytest.mark.parametrize("task", ["sst2", "mrpc"])
def test_bucketed_training_evaluation_equals_padded(tmp_path, minilm_path, glue_dir, task, monkeypatch):
    made, params = runs(tmp_path, minilm_path, glue_dir, task)
    bucketed, padded = made[BUCKETS], made["none"]
    assert list(bucketed.buckets) == [16, 32, 64, 128] and list(padded.buckets) == [T]
    (split,) = bucketed.dev_features
    features = bucketed.dev_features[split]
    assert len(features) == ROWS[task]
    params = split_heads(bucketed.model.config, params, {k: getattr(features, k) for k in INPUT_KEYS})

    scored = []  # what evaluate scored: every exit's logits [E, N, C], a call per run
    gathered = outputs.gathered_exit_logits

    def kept(*args, **kwargs):
        scored.append(gathered(*args, **kwargs))
        return scored[-1]

    monkeypatch.setattr(outputs, "gathered_exit_logits", kept)
    records, lengths = {}, {}
    for name, run in (("bucketed", bucketed), ("padded", padded)):
        eval_fn = training_eval.make_eval_fn(run.model.config, run.mesh)
        seen = lengths[name] = []

        def counted(p, batch, eval_fn=eval_fn, seen=seen):
            seen.append(batch["input_ids"].shape[1])
            return eval_fn(p, batch)

        log = Records()
        out = training_eval.evaluate(run, counted, replicate(params, run.mesh), step=7, stage=run.stages[0], log=log)
        assert log.records == [out[split]]
        records[name] = out[split]

    # the bucketed evaluation really ran shorter batches, of several lengths
    assert set(lengths["padded"]) == {T}
    assert set(lengths["bucketed"]) <= {16, 32, 64, 128} and len(set(lengths["bucketed"])) >= 2
    assert min(lengths["bucketed"]) < T

    assert len(scored) == 2
    got, want = scored
    num_exits = bucketed.model.config.num_exits
    assert want.shape == got.shape == (num_exits, ROWS[task], 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=LOGITS_ATOL)
    predictions = want.argmax(-1)  # [E, N]
    assert np.all((predictions.mean(1) >= 0.25) & (predictions.mean(1) <= 0.75))  # each exit: both classes
    np.testing.assert_array_equal(got.argmax(-1), predictions)

    p, b = records["padded"], records["bucketed"]
    assert p.keys() == b.keys()
    assert (b["step"], b["split"], b["num_examples"]) == (7, split, ROWS[task])
    for i in range(1, num_exits + 1):
        metrics = [k for k in p if k.startswith(f"exit_{i}/") and not k.endswith("/loss")]
        assert metrics, p
        assert {k: b[k] for k in metrics} == {k: p[k] for k in metrics}
        assert b[f"exit_{i}/loss"] == pytest.approx(p[f"exit_{i}/loss"], abs=LOGITS_ATOL)
