"""Every exit in PyTorch: the modeling file an exported directory carries
(`rome_jax_modeling.py`, `auto_map`, loaded with `trust_remote_code=True`) against the
JAX exits, for [CLS] and mean pooling, on every family whose exit head is the generic
one; its batch-1 early exit against rome_jax's decisions."""

import json

import numpy as np
import pytest
from test_inference import spread_exits, thresholds_between

import rome_jax
import tiny_hf
from rome_jax.exits import executors
from rome_jax.exits.criteria import Criterion, entropy

torch = pytest.importorskip("torch")

MAKERS = {
    "bert": tiny_hf.make_bert,
    "roberta": tiny_hf.make_roberta,
    "albert": tiny_hf.make_albert,
    "distilbert": tiny_hf.make_distilbert,
    "electra": tiny_hf.make_electra,
    "xlm-roberta": tiny_hf.make_xlm_roberta,
    "deberta-v2": tiny_hf.make_deberta,
}


def _batch(family):
    if family == "xlm-roberta":
        return tiny_hf.random_batch(batch=4, seed=1, pad_id=1, two_segments=False)
    return tiny_hf.random_batch(batch=4, seed=1, two_segments=family in ("bert", "albert", "electra"))


def _torch_inputs(batch):
    return {k: torch.tensor(np.asarray(v), dtype=torch.long) for k, v in batch.items()}


@pytest.fixture(
    scope="module", params=[(f, p) for f in MAKERS for p in ("cls", "mean")], ids=lambda x: f"{x[0]}-{x[1]}"
)
def exported(request, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification

    family, pooling = request.param
    source = tmp_path_factory.mktemp(f"{family}-src")
    MAKERS[family](source)
    model = rome_jax.load_pretrained(str(source), with_tokenizer=False, exit_pooling=pooling)
    batch = _batch(family)
    model.params = spread_exits(model.config, model.params, batch)
    out = tmp_path_factory.mktemp(f"{family}-{pooling}")
    model.save_pretrained(str(out))
    torch_model = AutoModelForSequenceClassification.from_pretrained(str(out), trust_remote_code=True).eval()
    return family, model, torch_model, batch, out


def test_every_exit_matches_the_jax_exits(exported):
    family, model, torch_model, batch, out = exported
    assert type(torch_model).__name__ == "RomeJaxMultiExitModel"
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "rome_jax_modeling.RomeJaxMultiExitModel"
    expected = np.asarray(model.exit_logits(batch))
    with torch.no_grad():
        got = torch_model(**_torch_inputs(batch))
    np.testing.assert_allclose(got["all_logits"].numpy(), np.moveaxis(expected, 0, 1), atol=1e-4)
    np.testing.assert_allclose(got.logits.numpy(), expected[-1], atol=1e-4)
    assert expected.std() > 0.5  # spread exits: the comparison is not between near-zero logits


def test_early_exit_at_batch_one_decides_as_rome_jax(exported):
    family, model, torch_model, batch, _ = exported
    if model.config.exit_pooling == "cls":
        pytest.skip("the decisions are pooling-blind; mean pooling (the exits' harder case) runs them")
    logits = np.asarray(model.exit_logits(batch))
    thresholds = thresholds_between(np.asarray(entropy(logits[:-1])), (0.5,), 1e-3)
    criteria = [Criterion("entropy", t) for t in thresholds] + [Criterion("patience", 1), Criterion("fixed", 2)]
    for criterion in criteria:
        spec = f"{criterion.name}:{criterion.threshold!r}"
        for row in range(len(batch["input_ids"])):
            one = {k: np.asarray(v)[row : row + 1] for k, v in batch.items()}
            ref = executors.while_loop_exit(model.config, model.params, one, criterion)
            z, layer = torch_model.early_exit(**_torch_inputs(one), criterion=spec)
            assert layer == int(ref["exit_index"][0]) + 1, (family, spec, row)
            np.testing.assert_allclose(z.numpy(), np.asarray(ref["logits"]), atol=1e-4)


def test_plain_transformers_still_loads_the_final_exit(exported):
    from transformers import AutoModelForSequenceClassification

    family, model, _, batch, out = exported
    plain = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert type(plain).__name__ != "RomeJaxMultiExitModel"
    if model.config.exit_pooling == "cls":
        with torch.no_grad():
            z = plain(**_torch_inputs(batch)).logits.numpy()
        np.testing.assert_allclose(z, np.asarray(model.exit_logits(batch))[-1], atol=1e-4)


def test_no_modeling_file_where_it_cannot_reproduce_the_exits(tmp_path):
    tiny_hf.make_modernbert(tmp_path / "src")
    model = rome_jax.load_pretrained(str(tmp_path / "src"), with_tokenizer=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "rome_jax_modeling.py").write_text("# an earlier model's\n")
    model.save_pretrained(str(tmp_path / "out"))
    assert not (tmp_path / "out" / "rome_jax_modeling.py").exists()
    assert "auto_map" not in json.loads((tmp_path / "out" / "config.json").read_text())
