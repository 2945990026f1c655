"""The three early-exit executors make the same decisions, and run only what they need."""

import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import init_params
from rome_jax.exits import executors as inference
from rome_jax.exits.criteria import Criterion, entropy, max_prob, simulate
from rome_jax.exits.executors import BatchedEarlyExit, per_example_exit, simulated_exit, while_loop_exit

TINY = ModelConfig(
    vocab_size=99,
    hidden_size=32,
    num_layers=6,
    num_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    num_labels=3,
)


def random_params(config, seed=0):
    return jax.jit(init_params, static_argnums=(0, 1))(config, seed)  # jitted: eager init is slow


def spread_exits(config, params, batch, logit_std=2.0):
    """Exit classifiers that give varied confidences: each exit's logits centred on
    this batch and scaled to a spread of `logit_std` (the kernels keep their random
    directions).

    (Untrained exits of a pretrained encoder see nearly the same [CLS] vector for
    every sentence, so their raw logits barely differ between examples.)
    """
    logits = np.asarray(inference.all_exits(config, params, batch), np.float64)  # [L, B, C]
    scale = logit_std / logits.std(1).mean(-1)  # [L]
    classifier = params["layers"]["exit"]["classifier"]
    classifier = {
        "kernel": classifier["kernel"] * jnp.asarray(scale[:, None, None], jnp.float32),
        "bias": jnp.asarray((classifier["bias"] - logits.mean(1)) * scale[:, None], jnp.float32),
    }
    layers = {**params["layers"], "exit": {**params["layers"]["exit"], "classifier": classifier}}
    return {**params, "layers": layers}


def thresholds_between(values, quantiles, margin=1e-4):
    """Thresholds near the given quantiles of `values`, each in a gap wider than
    2*margin, so that float noise between executors cannot flip a decision."""
    v = np.unique(np.asarray(values, np.float64).ravel())
    out = []
    for q in quantiles:
        k = int(q * (len(v) - 1))
        for j in sorted(range(len(v) - 1), key=lambda j: abs(j - k)):
            if v[j + 1] - v[j] > 2 * margin:
                out.append(float((v[j] + v[j + 1]) / 2))
                break
    return out


def criteria_for(all_logits):
    """Entropy and max-prob thresholds spreading the exits; patience 1..3; fixed."""
    z = jnp.asarray(all_logits)
    quantiles = (0.1, 0.3, 0.5, 0.7)
    return (
        [Criterion("entropy", s) for s in thresholds_between(entropy(z), quantiles)]
        + [Criterion("max_prob", p) for p in thresholds_between(max_prob(z), quantiles)]
        + [Criterion("patience", t) for t in (1, 2, 3)]
        + [Criterion("fixed", 3)]
    )


def assert_agree(config, params, batch, criterion, atol=2e-5, buckets=None, all_logits=None):
    if all_logits is None:
        reference = simulated_exit(config, params, batch, criterion)
    else:  # the same as simulated_exit, without recomputing every exit
        index, logits = simulate(criterion, all_logits, batch.get("example_mask"))
        reference = {"exit_index": index, "logits": logits}
    looped = while_loop_exit(config, params, batch, criterion)
    batched = per_example_exit(config, params, batch, criterion, buckets=buckets)
    expected = np.asarray(reference["exit_index"])
    np.testing.assert_array_equal(np.asarray(looped["exit_index"]), expected, err_msg=str(criterion))
    np.testing.assert_array_equal(batched["exit_index"], expected, err_msg=str(criterion))
    live = np.asarray(batch.get("example_mask", np.ones(len(expected)))).astype(bool)
    want = np.asarray(reference["logits"])[live]  # padding rows' logits: not specified
    for got in (looped["logits"], batched["logits"]):
        np.testing.assert_allclose(np.asarray(got)[live], want, atol=atol, rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(got)[live].argmax(-1), want.argmax(-1))
    assert int(looped["layers_run"]) == expected[live].max() + 1
    assert batched["example_layers"] == int((expected + 1)[live].sum())  # padding rows not counted
    assert batched["layer_steps"] == expected.max() + 1
    return expected


def tiny_batch(batch_size=8, length=16, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, TINY.vocab_size, (batch_size, length)).astype(np.int32)
    mask = np.ones_like(ids)
    for row in range(batch_size):
        mask[row, rng.randint(4, length + 1) :] = 0
    types = np.zeros_like(ids)
    types[:, length // 2 :] = 1
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types * mask}


@pytest.fixture(scope="module")
def tiny():
    batch = tiny_batch()
    params = spread_exits(TINY, random_params(TINY), batch)
    return params, batch


def test_tiny_executors_agree(tiny):
    params, batch = tiny
    all_logits = inference.all_exits(TINY, params, batch)
    assert all_logits.shape == (6, 8, 3)
    seen = set()
    for k, criterion in enumerate(criteria_for(all_logits)):
        # simulated_exit itself for some, the simulation on shared logits for the rest
        shared = None if k % 4 == 0 else all_logits
        seen.update(assert_agree(TINY, params, batch, criterion, all_logits=shared).tolist())
    assert len(seen) >= 5  # the thresholds really spread the exits over the layers


def test_while_loop_runs_only_the_layers_it_needs(tiny):
    params, batch = tiny
    criterion = Criterion("entropy", thresholds_between(entropy(inference.all_exits(TINY, params, batch)), [0.3])[0])
    expected = np.asarray(simulated_exit(TINY, params, batch, criterion)["exit_index"])
    assert len(set(expected.tolist())) >= 3
    for row in range(len(expected)):
        one = {k: v[row : row + 1] for k, v in batch.items()}
        out = while_loop_exit(TINY, params, one, criterion)
        assert int(out["exit_index"][0]) == expected[row]
        assert int(out["layers_run"]) == expected[row] + 1  # the counter carried in the loop


def test_padding_rows_do_not_change_decisions_or_keep_loops_running(tiny):
    params, batch = tiny
    all_logits = inference.all_exits(TINY, params, batch)
    criterion = Criterion("entropy", thresholds_between(entropy(all_logits), [0.5])[0])
    plain = np.asarray(simulated_exit(TINY, params, batch, criterion)["exit_index"])
    deepest = int(plain.argmax())
    example_mask = np.ones(8, np.int32)
    example_mask[deepest] = 0
    padded = {**batch, "example_mask": example_mask}
    got = assert_agree(TINY, params, padded, criterion)
    assert got[deepest] == 0
    np.testing.assert_array_equal(np.delete(got, deepest), np.delete(plain, deepest))
    out = while_loop_exit(TINY, params, padded, criterion)
    assert int(out["layers_run"]) == np.delete(plain, deepest).max() + 1


def test_batched_exit_compacts_into_buckets(tiny):
    params, batch = tiny
    all_logits = inference.all_exits(TINY, params, batch)
    criterion = Criterion("max_prob", thresholds_between(max_prob(all_logits), [0.4])[0])
    expected = np.asarray(simulated_exit(TINY, params, batch, criterion)["exit_index"])
    for buckets in (None, (8, 2, 1), (8,)):
        out = per_example_exit(TINY, params, batch, criterion, buckets=buckets)
        np.testing.assert_array_equal(out["exit_index"], expected)
        assert out["example_layers"] == int((expected + 1).sum())
        running = [(expected >= layer).sum() for layer in range(expected.max() + 1)]
        if buckets == (8,):  # no compaction: one launch runs the whole batch down
            assert out["row_layers"] == 8 * len(running) and out["launches"] == 1
        else:
            sizes = sorted(buckets or inference.default_buckets(8))
            used = [min(b for b in sizes if b >= n) for n in running]
            assert out["row_layers"] == sum(used)
            assert out["launches"] == len(set(used))  # one launch per bucket, not per layer


def test_run_dataset_regroups_and_keeps_decisions(tiny):
    params, _ = tiny
    batches = [tiny_batch(8, seed=s) for s in range(5)]
    joined = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    all_logits = inference.all_exits(TINY, params, joined)
    criterion = Criterion("entropy", thresholds_between(entropy(all_logits), [0.5])[0])
    expected = np.asarray(simulated_exit(TINY, params, joined, criterion)["exit_index"])
    reference_logits = np.asarray(simulated_exit(TINY, params, joined, criterion)["logits"])
    runner = BatchedEarlyExit(TINY, params, criterion)
    for regroup in (False, True):
        out = runner.run_dataset(iter(batches), regroup=regroup, park_below=0.5)
        np.testing.assert_array_equal(out["exit_index"], expected)
        np.testing.assert_allclose(out["logits"], reference_logits, atol=2e-5, rtol=1e-5)
        assert out["example_layers"] == int((expected + 1).sum())
        assert out["row_layers"] >= out["example_layers"]


def test_regression_patience_executors_agree():
    config = TINY.replace(num_labels=1)
    batch = tiny_batch(seed=3)
    params = spread_exits(config, random_params(config, seed=1), batch, logit_std=0.3)
    seen = set()
    for tolerance in (0.05, 0.2, 0.5):
        for t in (1, 2):
            criterion = Criterion("patience", t, regression=True, tolerance=tolerance)
            all_logits = inference.all_exits(config, params, batch)
            diffs = np.abs(np.diff(np.asarray(all_logits)[..., 0], axis=0))
            if np.any(np.abs(diffs - tolerance) < 1e-4):
                continue  # too close to call under float noise
            index = assert_agree(config, params, batch, criterion, buckets=(8, 1), all_logits=all_logits)
            seen.update(index.tolist())
    assert len(seen) >= 3


def test_criterion_checked_against_the_model(tiny):
    params, batch = tiny
    with pytest.raises(ValueError, match="regression"):
        while_loop_exit(TINY, params, batch, Criterion("patience", 1, regression=True))
    with pytest.raises(ValueError):
        BatchedEarlyExit(TINY.replace(num_labels=1), params, Criterion("entropy", 0.1))


def test_default_buckets():
    assert inference.default_buckets(64) == (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1)
    assert inference.default_buckets(40) == (40, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1)
    assert inference.default_buckets(8) == (8, 6, 4, 3, 2, 1)
    assert inference.default_buckets(1) == (1,)


def test_fit_to_bucket_keeps_the_real_rows_in_the_smallest_bucket():
    ids = np.arange(8 * 3).reshape(8, 3)
    batch = {"input_ids": ids, "example_mask": np.array([1, 0, 1, 1, 0, 1, 1, 0], np.int32)}
    fitted = inference.fit_to_bucket(batch, inference.default_buckets(8))  # 5 real rows -> bucket 6
    np.testing.assert_array_equal(fitted["input_ids"], ids[[0, 2, 3, 5, 6, 0]])
    np.testing.assert_array_equal(fitted["example_mask"], [1, 1, 1, 1, 1, 0])
    assert fitted["example_mask"].dtype == np.int32
    full = {"input_ids": ids, "example_mask": np.ones(8, bool)}
    np.testing.assert_array_equal(inference.fit_to_bucket(full, (8, 4))["input_ids"], ids)
    with pytest.raises(ValueError, match="no bucket holds 5 rows"):
        inference.fit_to_bucket(batch, (4, 2))


def test_timer_baseline_computes_the_rows_early_exit_computes(tiny):
    """The full-depth baseline of a split that ends in a partial batch runs that
    batch's real rows in the bucket the per-example executor uses, not a whole
    padded batch (which would credit early exit with skipping the padding)."""
    from rome_jax.data import Features
    from rome_jax.exits.evaluation import Timer

    params, batch = tiny
    n, T = 11, batch["input_ids"].shape[1]
    ids = np.resize(np.asarray(batch["input_ids"]), (n, T))
    features = Features(
        input_ids=ids,
        attention_mask=np.ones_like(ids),
        token_type_ids=np.zeros_like(ids),
        labels=np.zeros(n, np.int32),
        index=np.arange(n),
    )
    timer = Timer(TINY, params, features, batch1_examples=1, batched_examples=n, batch_size=8, rounds=1)
    assert [len(b["input_ids"]) for b in timer.batched] == [8, 8]
    assert [len(b["input_ids"]) for b in timer.baseline] == [8, 3]
    np.testing.assert_array_equal(np.concatenate([b["input_ids"] for b in timer.baseline]), ids)
    # nothing exits early: the executor drops the padded batch's 5 padding rows before
    # layer 1 and runs its 3 real rows in bucket 3, as the baseline does
    out = BatchedEarlyExit(TINY, params, Criterion("entropy", 0.0)).run_dataset(timer.batched)
    baseline_row_layers = TINY.num_layers * sum(len(b["input_ids"]) for b in timer.baseline)
    assert out["row_layers"] == baseline_row_layers
    assert list(out["exit_index"][n:]) == [0] * 5  # padding rows: exit 0, as everywhere
    all_padding = {**timer.batched[1], "example_mask": np.zeros(8, bool)}
    out = BatchedEarlyExit(TINY, params, Criterion("entropy", 0.0)).run_dataset([all_padding])
    assert (out["row_layers"], out["launches"], list(out["exit_index"])) == (0, 0, [0] * 8)


# ---- the real pretrained MiniLM on RTE dev sentences ---------------------------------------


@pytest.fixture(scope="module")
def minilm_rte(minilm_path, glue_dir):
    import rome_jax
    from rome_jax.serving.api import tokenize

    path = os.path.join(glue_dir, "RTE", "dev.tsv")
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:17]
    model = rome_jax.load_pretrained(minilm_path, num_labels=2)
    batch = tokenize(model.tokenizer, [r[1] for r in rows], [r[2] for r in rows], max_length=64)
    params = spread_exits(model.config, model.params, batch)
    return model.config, params, batch


def test_minilm_executors_agree_on_rte(minilm_rte):
    config, params, batch = minilm_rte
    all_logits = inference.all_exits(config, params, batch)
    z = jnp.asarray(all_logits)
    criteria = (
        [Criterion("entropy", s) for s in thresholds_between(entropy(z), (0.2, 0.6))]
        + [Criterion("max_prob", p) for p in thresholds_between(max_prob(z), (0.4,))]
        + [Criterion("patience", t) for t in (1, 2, 3)]
    )
    seen = set()
    for criterion in criteria:
        # 6 layers of width 384 in float32, at different batch shapes: ~3e-4 apart.
        seen.update(
            assert_agree(
                config, params, batch, criterion, atol=2e-3, buckets=(16, 4, 1), all_logits=all_logits
            ).tolist()
        )
    assert len(seen) >= 4


# ---- the default sweeps ----------------------------------------------------------------------


def test_default_sweeps_follow_the_depth_and_the_method(tiny):
    from rome_jax.data import Features
    from rome_jax.data.glue import get_task
    from rome_jax.exits.evaluation import default_sweeps, evaluate_split, parse_sweeps

    assert default_sweeps(12)["patience"] == (1, 2, 3, 4, 5, 6, 7, 8)  # PABEE's 3..8 included
    assert default_sweeps(6)["patience"] == (1, 2, 3, 4)
    assert set(default_sweeps(6, "romebert")) == {"entropy", "max_prob", "patience"}
    assert default_sweeps(6, "fastbert")["normalized_entropy"] == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert parse_sweeps("patience", 6) == {"patience": (1, 2, 3, 4)}
    assert parse_sweeps("patience:5;normalized_entropy", 6) == {
        "patience": (5.0,),
        "normalized_entropy": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    }

    params, batch = tiny
    all_logits = inference.all_exits(TINY, params, batch)
    for t in (5, 6, 8):  # the values left out on 6 layers: the full-depth model
        index, _ = simulate(Criterion("patience", t), all_logits)
        np.testing.assert_array_equal(index, TINY.num_layers - 1)
    index, _ = simulate(Criterion("patience", 1), all_logits)
    assert int(np.asarray(index).min()) == 1  # exit 2 at the earliest

    ids = np.asarray(batch["input_ids"])
    features = Features(
        input_ids=ids,
        attention_mask=np.asarray(batch["attention_mask"]),
        token_type_ids=np.asarray(batch["token_type_ids"]),
        labels=np.arange(len(ids), dtype=np.int32) % 3,
        index=np.arange(len(ids)),
    )
    results = evaluate_split(
        TINY,
        params,
        get_task("mnli"),
        "validation_matched",
        features,
        timing=False,
        mode="fastbert",
        log=lambda _: None,
    )
    rows = {}
    for row in results["sweep"]:
        rows.setdefault(row["criterion"], []).append(row["threshold"])
    assert rows["patience"] == [1, 2, 3, 4]
    reference = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}  # FastBERT's, and where the exits' values lie:
    assert reference < set(rows["normalized_entropy"]) and len(rows["normalized_entropy"]) <= 9 + 8
    # saturation too: it needs no fitting (lte and meta only with fitted gates)
    assert set(rows) == {"entropy", "max_prob", "patience", "normalized_entropy", "saturation"}
    from rome_jax.exits.evaluation import format_table

    table = format_table(results).splitlines()
    head = table.index(next(line for line in table if line.startswith("criterion")))
    assert len({len(line) for line in table[head:]}) == 1  # columns line up, normalized_entropy too


def test_default_sweeps_reach_where_the_exits_confidence_lies():
    """Exits whose entropies all lie between 0.6 and ln 2 (a weak model on two classes):
    the reference grid offers only full depth (<= 0.6) or everything at exit 1 (0.7);
    the default sweep adds thresholds in between, at quantiles of the observed values."""
    from rome_jax.exits.evaluation import default_sweeps

    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(6, 300, 2)) * 0.2).astype(np.float32)
    p = np.exp(logits[:-1]) / np.exp(logits[:-1]).sum(-1, keepdims=True)
    entropy = -(p * np.log(p)).sum(-1)
    assert entropy.min() > 0.6 and entropy.max() < np.log(2) + 1e-6
    sweeps = default_sweeps(6, None, logits)
    inside = [t for t in sweeps["entropy"] if entropy.min() <= t <= entropy.max()]
    assert len(inside) >= 6
    shares = [float((entropy[0] < t).mean()) for t in inside]  # exit 1's share at each threshold
    assert min(shares) < 0.2 and max(shares) > 0.8  # from almost nobody to almost everybody
    assert default_sweeps(6, None) == default_sweeps(6)  # without logits: the reference grids


# ---- batches the model cannot read -----------------------------------------------------------


def test_bad_batches_are_one_error_naming_the_key(tiny):
    from rome_jax.serving.api import MultiExitModel

    params, batch = tiny
    model = MultiExitModel(TINY, params)
    ids = np.asarray(batch["input_ids"])
    cases = [
        ({**batch, "input_ids": ids + 0.9}, "input_ids must be integers, not float"),
        (
            {**batch, "input_ids": np.where(ids == ids.max(), TINY.vocab_size, ids)},
            f"input_ids holds {TINY.vocab_size}, outside the model's 0..{TINY.vocab_size - 1}",
        ),
        ({**batch, "input_ids": -ids}, "input_ids holds -"),
        ({**batch, "token_type_ids": np.asarray(batch["token_type_ids"]) * 2}, "token_type_ids holds 2"),
        (
            {**batch, "attention_mask": np.asarray(batch["attention_mask"])[:1]},
            r"attention_mask has shape \(1, 16\); input_ids \(8, 16\) make it \(8, 16\)",
        ),
        ({**batch, "example_mask": np.ones((8, 16), np.int32)}, r"example_mask has shape \(8, 16\)"),
        ({"input_ids": ids[0]}, r"input_ids must be \[batch, length\], got shape \(16,\)"),
        ({"input_ids": np.ones((1, 65), np.int32)}, "input_ids of length 65 exceed the model's 64 positions"),
        ({"ids": ids}, "a batch is a dict with int arrays input_ids"),
    ]
    full = {**batch, "example_mask": np.ones(len(ids), np.int32)}
    rename = lambda old, new: {(new if k == old else k): v for k, v in full.items()}
    for old, new in [
        ("attention_mask", "input_mask"),
        ("attention_mask", "attention_masks"),
        ("token_type_ids", "segment_ids"),
        ("token_type_ids", "Token-Type-Ids"),
        ("example_mask", "example_masks"),
        ("input_ids", "input_id"),
    ]:
        cases.append((rename(old, new), f"batch key '{new}' is not read: did you mean '{old}'"))
    criterion = Criterion("entropy", 0.3)
    for bad, message in cases:
        for run in (
            model.exit_logits,
            lambda b: while_loop_exit(TINY, params, b, criterion),
            lambda b: per_example_exit(TINY, params, b, criterion),
        ):
            with pytest.raises(ValueError, match=message):
                run(bad)
    # keys other codebases add are ignored when nothing they could stand for is missing
    extra = {
        "special_tokens_mask": ids,
        "offset_mapping": ids,
        "labels": ids[:, 0],
        "index": ids[:, 0],
        "attention_masks": batch["attention_mask"],
        "head_mask": ids,
    }
    np.testing.assert_array_equal(model.exit_logits({**batch, **extra}), model.exit_logits(batch))
    # lists are arrays, and the checks cost no result: the same logits as before
    np.testing.assert_array_equal(
        model.exit_logits({k: np.asarray(v).tolist() for k, v in batch.items()}), model.exit_logits(batch)
    )
    with pytest.raises(ValueError, match="batch 1 has sequence length 8, the first 16"):
        BatchedEarlyExit(TINY, params, criterion).run_dataset(
            [batch, {k: np.asarray(v)[:, :8] for k, v in batch.items()}]
        )
    with pytest.raises(ValueError, match="fixed exit 7 is beyond the model's 6 exits"):
        while_loop_exit(TINY, params, batch, Criterion("fixed", 7))


def test_save_pretrained_refuses_parameters_that_do_not_fit(tiny, tmp_path):
    from rome_jax.errors import CheckpointError
    from rome_jax.serving.api import MultiExitModel

    params, _ = tiny
    with pytest.raises(CheckpointError, match="do not fit the model's config .* nothing written"):
        MultiExitModel(TINY.replace(num_labels=2), params).save_pretrained(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_evaluate_split_refuses_a_task_with_other_labels(tiny):
    from rome_jax.data import Features
    from rome_jax.exits.evaluation import evaluate_split

    params, batch = tiny
    ids = np.asarray(batch["input_ids"])
    features = Features(
        input_ids=ids,
        attention_mask=np.asarray(batch["attention_mask"]),
        token_type_ids=np.asarray(batch["token_type_ids"]),
        labels=np.zeros(len(ids), np.int32),
        index=np.arange(len(ids)),
    )
    with pytest.raises(ValueError, match="task sst2 has 2 labels, the model 3 outputs"):
        evaluate_split(TINY, params, "sst2", "dev", features, timing=False, log=lambda _: None)


# ---- length buckets ----------------------------------------------------------------------------


def test_cut_to_bucket_cuts_the_token_arrays_to_the_smallest_bucket_holding_the_longest_row():
    mask = np.zeros((3, 128), np.int32)
    mask[0, :20], mask[1, :33], mask[2, :5] = 1, 1, 1
    batch = {
        "input_ids": np.arange(3 * 128).reshape(3, 128),
        "attention_mask": mask,
        "token_type_ids": np.zeros((3, 128), np.int32),
        "example_mask": np.ones(3, bool),
    }
    cut = inference.cut_to_bucket(batch, (16, 32, 64, 128))
    assert {k: v.shape for k, v in cut.items()} == {
        "input_ids": (3, 64),
        "attention_mask": (3, 64),
        "token_type_ids": (3, 64),
        "example_mask": (3,),
    }
    np.testing.assert_array_equal(cut["input_ids"], batch["input_ids"][:, :64])
    assert inference.cut_to_bucket({k: v[2:] for k, v in batch.items()}, (16, 32))["input_ids"].shape == (1, 16)
    assert inference.cut_to_bucket(batch, (16, 256))["input_ids"].shape == (3, 128)  # never widened
    with pytest.raises(ValueError, match="a row of length 33 exceeds the longest bucket 32"):
        inference.cut_to_bucket(batch, (16, 32))


def test_flops_counted_at_each_examples_length():
    from rome_jax.encoder import flops
    from rome_jax.exits.evaluation import flops_speedup_at

    index = np.array([0, 2, 5, 5, 1])
    assert flops_speedup_at(TINY, np.full(5, 16), index) == pytest.approx(flops.flops_speedup(TINY, 16, index))
    lengths = np.array([16, 16, 32, 64, 16])
    full = sum(flops.full_flops(TINY, int(n)) for n in lengths)
    spent = sum(flops.flops_to_exit(TINY, int(n), int(i)) for n, i in zip(lengths, index))
    assert flops_speedup_at(TINY, lengths, index) == pytest.approx(full / spent)
