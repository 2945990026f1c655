"""`MultiExitModel.predict` and predict.py: the answers of the early-exit model, in input order.

On real sentences and the real pretrained MiniLM whose exit classifiers are spread
(`spread_exits`: untrained exits give varied confidences, so entropy and patience
exit at every layer). predict runs the rows in length buckets through the
per-example executor; the reference is `exits.simulate` on every exit's logits of
the rows padded to max_length. Bucketing sums the same terms in another order, and
the spread heads amplify that to ~1e-3 in the logits: entropy thresholds sit at
least 5e-3 from every entropy seen, logits are compared with atol 5e-3.
"""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from test_inference import spread_exits, thresholds_between

from rome_jax.errors import DataError
from rome_jax.exits import criteria as exits
from rome_jax.serving import files as predict_io
from rome_jax.serving.predict import Predictions, resolve_criterion

T = 64
ATOL = 5e-3
MARGIN = 5e-3

WORDS = [
    "the",
    "film",
    "is",
    "a",
    "quiet",
    "triumph",
    "of",
    "craft",
    "and",
    "feeling",
    ",",
    "though",
    "its",
    "second",
    "half",
    "drags",
    "and",
    "the",
    "jokes",
    "land",
    "flat",
    "more",
    "often",
    "than",
    "not",
    ";",
    "still",
    ",",
    "the",
    "cast",
    "is",
    "wonderful",
    "and",
    "the",
    "score",
    "soars",
]
SENTENCES = [
    "a gem of a film",
    "dull",
    "an utterly charming and heartfelt story",
    "i hated every minute of it .",
    "the worst script of the year",
    "not bad at all",
    "a masterpiece",
    "boring , slow and far too long",
    "it 's a funny , smart , moving picture that rewards patience",
    "meh",
    *(" ".join(WORDS[(3 * k) % 11 : (3 * k) % 11 + n]) for k, n in enumerate((4, 9, 14, 19, 24, 29, 34, 6, 12, 21))),
    "the performances are strong but the plot never comes together , and by the end i no longer cared "
    "who lived or died or why any of them had come to the island in the first place",
    "an ambitious , sprawling , occasionally brilliant mess",
    "pure joy",
    "a waste of a fine cast",
]


@pytest.fixture(scope="module")
def model(minilm_path):
    import rome_jax

    m = rome_jax.load_pretrained(minilm_path, num_labels=2)
    batch = m.tokenize(SENTENCES, max_length=T)
    m.params = spread_exits(m.config, m.params, batch)
    m.label_names = ["negative", "positive"]
    return m


@pytest.fixture(scope="module")
def all_logits(model):
    return np.asarray(model.exit_logits(model.tokenize(SENTENCES, max_length=T)))


def criteria(all_logits):
    z = np.asarray(all_logits)
    h = np.asarray(exits.entropy(z))
    return (
        [exits.Criterion("entropy", t) for t in thresholds_between(h, (0.2, 0.5, 0.8), MARGIN)]
        + [exits.Criterion("patience", t) for t in (1, 2)]
        + [exits.Criterion("fixed", 3)]
    )


def test_exit_layers_and_answers_equal_simulate(model, all_logits):
    for criterion in criteria(all_logits):
        index, chosen = (np.asarray(x) for x in exits.simulate(criterion, all_logits))
        out = model.predict(SENTENCES, criterion=criterion, max_length=T)
        assert isinstance(out, Predictions) and len(out) == len(SENTENCES)
        np.testing.assert_array_equal(out.exit_layer, index + 1, err_msg=str(criterion))
        np.testing.assert_allclose(out.logits, chosen, atol=ATOL, rtol=0)
        np.testing.assert_array_equal(out.label_ids, chosen.argmax(-1))
        assert out.mean_layers == pytest.approx(np.mean(index + 1))
    # the sentences really exit at several layers
    entropy = criteria(all_logits)[1]
    assert len(set(model.predict(SENTENCES, criterion=entropy, max_length=T).exit_layer)) >= 3


def test_order_preserved_and_batch_size_free(model, all_logits):
    criterion = criteria(all_logits)[1]
    ref = model.predict(SENTENCES, criterion=criterion, max_length=T)
    order = np.random.RandomState(0).permutation(len(SENTENCES))
    shuffled = model.predict([SENTENCES[i] for i in order], criterion=criterion, max_length=T, batch_size=4)
    np.testing.assert_array_equal(shuffled.exit_layer, ref.exit_layer[order])
    assert shuffled.labels == [ref.labels[i] for i in order]
    np.testing.assert_allclose(shuffled.logits, ref.logits[order], atol=ATOL, rtol=0)


def test_buckets_argument_runs_other_lengths_with_the_same_answers(model, all_logits, monkeypatch):
    from rome_jax.data.buckets import LengthBuckets
    from rome_jax.errors import ConfigError
    from rome_jax.exits import executors

    criterion = criteria(all_logits)[1]
    ref = model.predict(SENTENCES, criterion=criterion, max_length=T)
    lengths = []
    real = executors.BatchedEarlyExit.run_dataset

    def run_dataset(self, batches, *args, **kwargs):
        lengths.extend(b["input_ids"].shape[1] for b in batches)
        return real(self, batches, *args, **kwargs)

    monkeypatch.setattr(executors.BatchedEarlyExit, "run_dataset", run_dataset)
    for buckets in ("none", None, LengthBuckets.none(T), "16"):
        lengths.clear()
        out = model.predict(SENTENCES, criterion=criterion, max_length=T, buckets=buckets, batch_size=4)
        np.testing.assert_array_equal(out.exit_layer, ref.exit_layer, err_msg=str(buckets))
        np.testing.assert_allclose(out.logits, ref.logits, atol=ATOL, rtol=0)
        if buckets == "16":  # (16, 64): the short sentences run 16 positions
            assert 16 in lengths and set(lengths) <= {16, T}
        else:  # one bucket: every batch padded to max_length
            assert set(lengths) == {T}
    with pytest.raises(ConfigError, match="data.buckets"):
        model.predict(SENTENCES[:2], criterion=criterion, max_length=T, buckets="short")


def test_none_is_full_depth(model, all_logits):
    out = model.predict(SENTENCES, criterion=None, max_length=T)
    assert (out.exit_layer == model.config.num_layers).all() and out.mean_layers == model.config.num_layers
    np.testing.assert_array_equal(out.label_ids, all_logits[-1].argmax(-1))
    np.testing.assert_allclose(out.logits, all_logits[-1], atol=ATOL, rtol=0)
    assert model.predict(SENTENCES[:3], criterion="none").exit_layer.tolist() == [model.config.num_layers] * 3


def test_label_names_rows_and_probabilities(model):
    out = model.predict(SENTENCES[:5], criterion="entropy:0.3", max_length=T)
    rows = list(out)
    assert [r["label"] for r in rows] == out.labels
    assert set(out.labels) <= {"negative", "positive"}
    assert set(rows[0]) == {"label", "label_id", "probabilities", "exit_layer"}
    for r in rows:
        assert r["label"] == model.label_names[r["label_id"]]
        assert sum(r["probabilities"]) == pytest.approx(1.0, abs=1e-6)
        assert np.argmax(r["probabilities"]) == r["label_id"]
        assert 1 <= r["exit_layer"] <= model.config.num_layers
    json.dumps(rows)  # plain Python values
    empty = model.predict([], criterion="entropy:0.3")
    assert len(empty) == 0 and list(empty) == []


def test_criterion_strings(model):
    config = model.config
    assert resolve_criterion("entropy:0.3", config) == exits.Criterion("entropy", 0.3)
    assert resolve_criterion(" max_prob:0.9 ", config) == exits.Criterion("max_prob", 0.9)
    assert resolve_criterion("patience:2", config) == exits.Criterion("patience", 2)
    assert resolve_criterion(None, config) is None and resolve_criterion("none", config) is None
    assert resolve_criterion("auto", config) is None  # no calibration: full depth
    calibration = {
        "criteria": {"entropy": {"threshold": 0.25}, "patience": {"threshold": 2.0}},
        "default": {"criterion": "entropy", "threshold": 0.25},
    }
    assert resolve_criterion("auto", config, calibration) == exits.Criterion("entropy", 0.25)
    assert resolve_criterion("calibrated", config, calibration) == exits.Criterion("entropy", 0.25)
    assert resolve_criterion("calibrated:patience", config, calibration) == exits.Criterion("patience", 2)
    for bad, words in (
        ("bogus:1", "unknown criterion"),
        ("entropy", "needs a threshold"),
        ("entropy:x", "must be a number"),
        ("calibrated", "no calibration"),
        ("fixed:9", "beyond"),
        ("patience:0", "integer >= 1"),
    ):
        with pytest.raises(ValueError, match=words):
            resolve_criterion(bad, config)
    with pytest.raises(ValueError, match="one string"):
        model.predict("a single string")


def test_regression_scores(minilm_path):
    import rome_jax

    m = rome_jax.load_pretrained(minilm_path, num_labels=1)
    batch = m.tokenize(SENTENCES, max_length=T)
    m.params = spread_exits(m.config, m.params, batch)
    logits = np.asarray(m.exit_logits(batch))
    criterion = exits.Criterion("patience", 1, regression=True, tolerance=0.5)
    index, chosen = (np.asarray(x) for x in exits.simulate(criterion, logits))
    out = m.predict(SENTENCES, criterion=criterion, max_length=T)
    np.testing.assert_array_equal(out.exit_layer, index + 1)
    np.testing.assert_allclose(out.scores, chosen[:, 0], atol=ATOL, rtol=0)
    assert out.labels == [float(s) for s in out.scores]
    assert set(next(iter(out))) == {"label", "score", "exit_layer"}
    assert resolve_criterion("patience:2", m.config) == exits.Criterion("patience", 2, regression=True)
    with pytest.raises(ValueError, match="class probabilities"):
        m.predict(SENTENCES[:2], criterion="entropy:0.3")
    with pytest.raises(ValueError, match="scores, not probabilities"):
        _ = out.probabilities


def test_calibration_travels_with_the_model(model, tmp_path):
    import rome_jax

    calibration = {
        "points": 0.5,
        "metric": "accuracy",
        "max_length": 32,
        "criteria": {"entropy": {"threshold": 0.4, "accuracy": 0.9, "mean_layers": 3.0}},
        "default": {"criterion": "entropy", "threshold": 0.4},
    }
    model.calibration = calibration
    try:
        model.save_pretrained(str(tmp_path))
    finally:
        model.calibration = None
    loaded = rome_jax.load_pretrained(str(tmp_path))
    assert loaded.calibration == calibration and loaded.label_names == ["negative", "positive"]
    out = loaded.predict(SENTENCES[:6])  # auto: the calibrated entropy 0.4, at the calibration's length
    assert out.criterion == exits.Criterion("entropy", 0.4)
    ref = model.predict(SENTENCES[:6], criterion="entropy:0.4", max_length=32)
    np.testing.assert_array_equal(out.exit_layer, ref.exit_layer)
    model.save_pretrained(str(tmp_path))  # no calibration now: the stale file goes
    assert rome_jax.load_pretrained(str(tmp_path)).calibration is None


# ------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("predict_model")
    model.save_pretrained(str(path))
    return str(path)


def _run(model, tmp_path, name, text, out_name="out.jsonl", **options):
    src = tmp_path / name
    src.write_text(text, encoding="utf-8")
    dst = tmp_path / out_name
    summary = predict_io.predict_file(model, str(src), str(dst), criterion="entropy:0.3", **options)
    return summary, dst.read_text(encoding="utf-8")


def _jsonl(text):
    return [json.loads(line) for line in text.splitlines()]


def test_command_formats_agree_with_the_api(model, tmp_path):
    texts = SENTENCES[:9]
    ref = model.predict(texts, criterion="entropy:0.3")
    tsv = "index\tsentence\n" + "".join(f"{100 + i}\t{t}\n" for i, t in enumerate(texts))
    summary, out = _run(model, tmp_path, "in.tsv", tsv)
    rows = _jsonl(out)
    assert [r["id"] for r in rows] == [str(100 + i) for i in range(9)]
    assert [r["label"] for r in rows] == ref.labels
    assert [r["exit_layer"] for r in rows] == ref.exit_layer.tolist()
    assert set(rows[0]["probabilities"]) == {"negative", "positive"}
    assert summary["examples"] == 9 and summary["mean_layers"] == pytest.approx(ref.mean_layers)
    # CSV in (quoted commas), CSV out; no id column: the row number
    csv_in = "text,other\n" + "".join(f'"{t}",x\n' for t in texts)
    _, out = _run(model, tmp_path, "in.csv", csv_in, "out.csv")
    lines = out.splitlines()
    assert lines[0] == "id,label,p_negative,p_positive,exit_layer"
    fields = [line.rsplit(",", 4) for line in lines[1:]]
    assert [f[0] for f in fields] == [str(i) for i in range(9)]
    assert [f[1] for f in fields] == ref.labels and [int(f[4]) for f in fields] == ref.exit_layer.tolist()
    # JSON Lines in, with a pair column named by the flags
    jsonl = "".join(json.dumps({"id": i, "q": t, "a": "yes"}) + "\n" for i, t in enumerate(texts))
    _, out = _run(model, tmp_path, "in.jsonl", jsonl, text_a="q", text_b="a")
    pair = model.predict(texts, ["yes"] * 9, criterion="entropy:0.3")
    assert [r["label"] for r in _jsonl(out)] == pair.labels and [r["id"] for r in _jsonl(out)] == list(range(9))


def test_command_stdin_and_stdout(model):
    stdin = io.StringIO("".join(json.dumps({"sentence": t}) + "\n" for t in SENTENCES[:4]))
    stdout = io.StringIO()
    predict_io.predict_file(model, "-", "-", stdin=stdin, stdout=stdout, criterion="none")
    rows = _jsonl(stdout.getvalue())
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    assert {r["exit_layer"] for r in rows} == {model.config.num_layers}


def test_command_bad_row_names_its_line_and_keeps_what_came_before(model, tmp_path, monkeypatch):
    monkeypatch.setattr(predict_io, "CHUNK_ROWS", 2)
    tsv = "sentence\n" + "".join(f"{t}\n" for t in SENTENCES[:3]) + " \n" + f"{SENTENCES[4]}\n"
    src, dst = tmp_path / "bad.tsv", tmp_path / "bad.jsonl"
    src.write_text(tsv, encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.tsv, line 5: empty 'sentence' \(3 rows before it"):
        predict_io.predict_file(model, str(src), str(dst), criterion="entropy:0.3")
    rows = _jsonl(dst.read_text(encoding="utf-8"))  # complete lines only
    assert [r["id"] for r in rows] == [0, 1, 2]
    src.write_text("sentence\tlabel\nfine\t1\ntoo\tmany\tfields\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3: 3 fields, the header has 2"):
        predict_io.predict_file(model, str(src), str(dst))
    src.write_text("review\nfine\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column 'sentence' or 'text'; give --text_a"):
        predict_io.predict_file(model, str(src), str(dst))


def test_command_streams_in_chunks_with_the_same_output(model, tmp_path, monkeypatch):
    tsv = "sentence\n" + "".join(f"{t}\n" for t in SENTENCES)
    _, whole = _run(model, tmp_path, "all.tsv", tsv)
    monkeypatch.setattr(predict_io, "CHUNK_ROWS", 5)
    seen = []
    from rome_jax.serving import predict as predict_lib

    original = predict_lib.predict
    monkeypatch.setattr(predict_lib, "predict", lambda m, a, *r, **k: seen.append(len(a)) or original(m, a, *r, **k))
    _, chunked = _run(model, tmp_path, "all.tsv", tsv, "chunked.jsonl")
    assert seen == [5] * (len(SENTENCES) // 5) + ([len(SENTENCES) % 5] if len(SENTENCES) % 5 else [])
    a, b = _jsonl(whole), _jsonl(chunked)
    assert [(r["id"], r["label"], r["exit_layer"]) for r in a] == [(r["id"], r["label"], r["exit_layer"]) for r in b]
    np.testing.assert_allclose(
        [list(r["probabilities"].values()) for r in a], [list(r["probabilities"].values()) for r in b], atol=ATOL
    )  # spread heads: see the module doc


def test_predict_program_stdin_bad_row(model_dir):
    """The program: JSON Lines on stdin, a bad row on line 3 -> status 2, one error
    line naming it, the two rows before it on stdout."""
    stdin = "".join(json.dumps({"text": t}) + "\n" for t in SENTENCES[:2]) + '{"text": 3}\n'
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rome_jax.commands.predict",
            f"--model={model_dir}",
            "--input=-",
            "--criterion=entropy:0.3",
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "predict.py: error: <stdin>, line 3: 'text' is 3, not a text (2 rows before it predicted and written)"
    )
    rows = _jsonl(proc.stdout)
    assert [r["id"] for r in rows] == [0, 1] and {r["label"] for r in rows} <= {"negative", "positive"}


def test_compiled_ahead_no_call_compiles_again(tiny_model):
    """`compile_early_exit` (a server's start) compiles every program that calls of any
    size and length can need: afterwards, calls of 1 to 20 texts of varied lengths,
    with examples exiting at both layers, add nothing to the executor's jit caches."""
    from rome_jax.data.buckets import length_buckets
    from rome_jax.exits import batched
    from rome_jax.serving.api import load_pretrained
    from rome_jax.serving.predict import compile_early_exit

    model = load_pretrained(tiny_model)
    rng = np.random.default_rng(0)
    calls = [[" ".join(rng.choice(WORDS, rng.integers(1, 28))) for _ in range(n)] for n in (1, 3, 5, 8, 13, 20)]
    first = model.predict(sum(calls, []), criterion="fixed:1", max_length=32).probabilities
    entropy = -(first * np.log(first)).sum(-1)
    criterion = resolve_criterion(f"entropy:{float(np.median(entropy))!r}", model.config, None)

    shapes = compile_early_exit(model.config, model.params, criterion, buckets=length_buckets(32, "auto"), batch_size=8)
    assert shapes == 2 * 6  # lengths (16, 32) x rows (8, 6, 4, 3, 2, 1)
    jitted = (batched._embed, batched._segment, batched._gather)
    before = [f._cache_size() for f in jitted]
    layers = []
    for texts in calls:
        layers += list(model.predict(texts, criterion=criterion, batch_size=8, max_length=32).exit_layer)
    assert set(layers) == {1, 2}  # rows left batches, so smaller buckets ran
    assert [f._cache_size() for f in jitted] == before
