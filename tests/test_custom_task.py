"""Your own data: tasks described in the config (rome_jax.data.tasks, rome_jax.data.custom).

Real GLUE rows (SST-2, MRPC) in other clothes: rewritten by the tests into CSV with
quoted fields and string labels, JSON Lines with other column names, and Parquet;
the examples and features must equal those of the GLUE reader on the same rows.
Every bad input is one DataError / ConfigError line naming the file, row and value.
"""

import csv
import json
import os

import numpy as np
import pytest

from rome_jax.data import load_examples, metrics, read_glue_dir, tokenize_examples
from rome_jax.data.glue import TASKS, get_task
from rome_jax.data.tasks import CUSTOM_DEFAULTS, build_task, label_order, parse_label_names, task_from_config
from rome_jax.errors import CheckpointError, ConfigError, DataError

N = 60  # rows taken from each GLUE file


def _glue(glue_dir, task, split):
    return read_glue_dir(task, split, glue_dir).head(N)


def _write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def _write_parquet(path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), str(path))
    return str(path)


def _sst2_csv(glue_dir, tmp_path):
    """SST-2 train/dev rows as quoted CSV with "negative"/"positive" labels."""
    names = ("negative", "positive")
    files = {}
    for split in ("train", "dev"):
        ex = _glue(glue_dir, "sst2", split)
        files[split] = _write_csv(
            tmp_path / f"{split}.csv",
            ["review", "sentiment"],
            [[t, names[int(y)]] for t, y in zip(ex.text_a, ex.labels)],
        )
    return files


def _same(a, b):
    assert a.text_a == b.text_a
    assert (a.text_b is None) == (b.text_b is None) and (a.text_b or []) == (b.text_b or [])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.labels.dtype == b.labels.dtype and a.has_labels == b.has_labels


def test_sst2_as_quoted_csv_with_string_labels_equals_the_glue_reader(glue_dir, tmp_path, minilm_path):
    files = _sst2_csv(glue_dir, tmp_path)
    task = build_task(dict(train_file=files["train"], dev_file=files["dev"], text_a="review", label="sentiment"))
    assert task.label_names == ("negative", "positive") and task.num_labels == 2
    assert task.metric == "accuracy" and not task.is_pair
    assert get_task("custom") is task and "custom" not in TASKS
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    for split in ("train", "dev"):
        ours, glue = load_examples("custom", split), _glue(glue_dir, "sst2", split)
        _same(ours, glue)
        a, b = (tokenize_examples(e, tokenizer, 32) for e in (ours, glue))
        for name in ("input_ids", "attention_mask", "token_type_ids", "labels"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_mrpc_as_json_lines_with_other_column_names(glue_dir, tmp_path):
    files = {}
    for split in ("train", "dev"):
        ex = _glue(glue_dir, "mrpc", split)
        files[split] = _write_jsonl(
            tmp_path / f"{split}.jsonl",
            [{"first": a, "second": b, "paraphrase": int(y)} for a, b, y in zip(ex.text_a, ex.text_b, ex.labels)],
        )
    task = build_task(
        dict(
            train_file=files["train"],
            dev_file=files["dev"],
            text_a="first",
            text_b="second",
            label="paraphrase",
            metric="accuracy_and_f1",
        )
    )
    assert task.is_pair and task.label_names == ("0", "1")
    for split in ("train", "dev"):
        _same(load_examples(task, split), _glue(glue_dir, "mrpc", split))
    assert set(metrics.compute_metrics("custom", np.array([0, 1, 1]), np.array([0, 1, 0]))) == {
        "accuracy",
        "f1",
        "accuracy_and_f1",
    }


def test_mrpc_as_parquet_and_tsv_and_a_test_file_without_labels(glue_dir, tmp_path):
    files = {}
    for split in ("train", "dev", "test"):
        ex = read_glue_dir("mrpc", split, glue_dir).head(N)
        columns = {"s1": ex.text_a, "s2": ex.text_b}
        if split != "test":
            columns["y"] = [bool(y) for y in ex.labels]  # booleans: labels "false", "true"
        files[split] = _write_parquet(tmp_path / f"{split}.parquet", columns)
    task = build_task(
        dict(
            train_file=files["train"],
            dev_file=files["dev"],
            test_file=files["test"],
            text_a="s1",
            text_b="s2",
            label="y",
        )
    )
    assert task.label_names == ("false", "true") and task.splits == ("train", "dev", "test")
    _same(load_examples(task, "dev"), _glue(glue_dir, "mrpc", "dev"))
    test = load_examples(task, "test")
    assert not test.has_labels and (test.labels == -1).all()
    assert test.text_a == read_glue_dir("mrpc", "test", glue_dir).head(N).text_a
    # The GLUE TSVs themselves, read as generic TSVs (no quoting; BOM in the header).
    tsv = build_task(
        dict(
            train_file=os.path.join(glue_dir, "MRPC", "train.tsv"),
            dev_file=os.path.join(glue_dir, "MRPC", "dev.tsv"),
            text_a="#1 String",
            text_b="#2 String",
            label="Quality",
        )
    )
    _same(load_examples(tsv, "dev"), read_glue_dir("mrpc", "dev", glue_dir))


def test_label_names_order_and_config_forms(tmp_path):
    assert label_order(["10", "2", "-1", "2"]) == ("-1", "2", "10")
    assert label_order(["b", "a", "10", "2"]) == ("10", "2", "a", "b")
    assert parse_label_names("neg, pos") == ("neg", "pos")
    assert parse_label_names('["a,b", "c"]') == ("a,b", "c")
    assert parse_label_names("") is None
    with pytest.raises(ConfigError, match="lists label 'pos' twice"):
        parse_label_names("pos,neg,pos")
    rows = [["a sentence", "low"], ["another one", "high"], ["a third", "mid"]]
    train = _write_csv(tmp_path / "t.csv", ["sentence", "label"], rows)
    given = build_task(dict(train_file=train, dev_file=train, label_names="low,mid,high"))
    assert given.label_names == ("low", "mid", "high")
    np.testing.assert_array_equal(load_examples(given, "train").labels, [0, 2, 1])
    read = build_task(dict(train_file=train, dev_file=train))
    assert read.label_names == ("high", "low", "mid")


def test_task_from_a_run_config():
    import ml_collections

    config = ml_collections.ConfigDict({"data": {"task": "SST-2"}})
    assert task_from_config(config) is TASKS["sst2"]
    assert set(CUSTOM_DEFAULTS) >= {
        "train_file",
        "dev_file",
        "test_file",
        "format",
        "hf_dataset",
        "hf_config",
        "text_a",
        "text_b",
        "label",
        "label_names",
        "regression",
        "metric",
    }


def test_metrics_f1_macro_and_defaults_per_kind(tmp_path):
    p, y = np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])
    f1s = [metrics.f1(p, y, c) for c in (0, 1, 2)]
    assert metrics.compute_metrics("f1_macro", p, y)["f1_macro"] == pytest.approx(np.mean(f1s))
    rows = [[f"sentence {i}", str(i / 4)] for i in range(5)]
    path = _write_csv(tmp_path / "r.csv", ["sentence", "score"], rows)
    task = build_task(dict(train_file=path, dev_file=path, label="score", regression=True))
    assert task.is_regression and task.num_labels == 1 and task.metric == "pearson_and_spearman"
    ex = load_examples(task, "train")
    assert ex.labels.dtype == np.float32 and ex.labels[2] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="does not fit a regression task"):
        build_task(dict(train_file=path, dev_file=path, label="score", regression=True, metric="accuracy"))
    three = _write_csv(tmp_path / "c.csv", ["sentence", "label"], [["a", "x"], ["b", "y"], ["c", "z"]])
    with pytest.raises(ConfigError, match="needs 2 labels.*use f1_macro"):
        build_task(dict(train_file=three, dev_file=three, metric="f1"))


# ------------------------------------------------------------------- bad input


@pytest.fixture
def sentences(tmp_path):
    rows = [["good film", "positive"], ["bad film", "negative"], ["fine film", "positive"]]
    return _write_csv(tmp_path / "train.csv", ["text", "label"], rows)


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_column_lists_the_files_columns(sentences):
    with pytest.raises(DataError) as e:
        build_task(dict(train_file=sentences, dev_file=sentences, text_a="sentence"))
        load_examples("custom", "train")
    msg = _one_line(e)
    assert sentences in msg and "'sentence'" in msg and "'text', 'label'" in msg
    with pytest.raises(DataError, match="no column 'stars'.*columns there: 'text', 'label'"):
        build_task(dict(train_file=sentences, dev_file=sentences, text_a="text", label="stars"))


def test_dev_label_unknown_to_training(sentences, tmp_path):
    dev = _write_csv(tmp_path / "dev.csv", ["text", "label"], [["ok", "positive"], ["meh", "neutral"]])
    task = build_task(dict(train_file=sentences, dev_file=dev, text_a="text"))
    with pytest.raises(DataError) as e:
        load_examples(task, "dev")
    msg = _one_line(e)
    assert f"{dev}, row 2 (line 3): label 'neutral' is not one of the task's labels" in msg
    assert "negative, positive" in msg


def test_empty_text(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [{"text": "fine", "label": 1}, {"text": "  ", "label": 0}])
    task = build_task(dict(train_file=path, dev_file=path, text_a="text"))
    with pytest.raises(DataError, match=r"t\.jsonl, row 2 \(line 2\): empty text in column 'text'"):
        load_examples(task, "train")


def test_non_numeric_regression_label(tmp_path):
    path = _write_csv(tmp_path / "s.csv", ["sentence", "score"], [["a", "0.5"], ["b", "high"]])
    task = build_task(dict(train_file=path, dev_file=path, label="score", regression=True))
    with pytest.raises(DataError, match=r"s\.csv, row 2 \(line 3\): label 'high' is not a number"):
        load_examples(task, "train")


def test_unreadable_formats(tmp_path, sentences):
    xlsx = tmp_path / "data.xlsx"
    xlsx.write_bytes(b"PK\x03\x04")
    with pytest.raises(ConfigError, match=r"data\.xlsx: unknown data format '\.xlsx'.*data\.custom\.format"):
        build_task(dict(train_file=str(xlsx), dev_file=sentences))
    with pytest.raises(ConfigError, match="data.custom.format must be one of"):
        build_task(dict(train_file=sentences, dev_file=sentences, format="excel"))
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet at all")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read it as Parquet"):
        build_task(dict(train_file=str(broken), dev_file=sentences))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"sentence": "a", "label": 1}\n{"sentence": "b", label: 0}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, row 2 \(line 2\): not valid JSON"):
        build_task(dict(train_file=str(bad_json), dev_file=str(bad_json)))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("sentence,label\na,1\nb,0,extra\n")
    with pytest.raises(DataError, match=r"ragged\.csv, row 2 \(line 3\): expected 2 comma-separated"):
        build_task(dict(train_file=str(ragged), dev_file=str(ragged)))
    with pytest.raises(DataError, match="missing data file .*nope.csv"):
        build_task(dict(train_file=str(tmp_path / "nope.csv"), dev_file=sentences))


def test_label_names_given_twice(sentences):
    with pytest.raises(ConfigError, match="data.custom.label_names lists label 'positive' twice"):
        build_task(
            dict(train_file=sentences, dev_file=sentences, text_a="text", label_names="negative,positive,positive")
        )


def test_a_task_needs_train_and_dev(sentences):
    with pytest.raises(ConfigError, match="data.custom.dev_file is empty"):
        build_task(dict(train_file=sentences))


def test_hf_dataset_from_a_local_directory_offline(glue_dir, tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root = tmp_path / "my_dataset"
    root.mkdir()
    for split, hub in (("train", "train"), ("dev", "validation")):
        ex = _glue(glue_dir, "sst2", split)
        _write_parquet(root / f"{hub}.parquet", {"sentence": ex.text_a, "label": ex.labels.tolist()})
    task = build_task(dict(hf_dataset=str(root)))
    assert task.label_names == ("0", "1")
    _same(load_examples(task, "dev"), _glue(glue_dir, "sst2", "dev"))


# ------------------------------------------------- a classifier for another label count


def test_reinit_classifier_for_another_label_count(tmp_path, caplog):
    pytest.importorskip("torch")
    import tiny_hf
    from rome_jax.serving.api import load_pretrained

    tiny_hf.make_bert(tmp_path, num_labels=2)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(str(tmp_path), 3, with_tokenizer=False)
    msg = _one_line(e)
    assert "(2, 32)" in msg and "(3, 32)" in msg and "model.reinit_classifier=True" in msg
    assert "ignore_mismatched_sizes=True" in msg
    with caplog.at_level("WARNING"):
        model = load_pretrained(str(tmp_path), 3, with_tokenizer=False, ignore_mismatched_sizes=True, seed=1)
    warnings = [r.getMessage() for r in caplog.records if "re-initialising" in r.getMessage()]
    assert len(warnings) == 1 and "(2, 32)" in warnings[0] and "(3, 32)" in warnings[0]
    assert model.params["layers"]["exit"]["classifier"]["kernel"].shape[-1] == 3
    assert model.label_names is None
    # The same label count loads the checkpoint's classifier, with or without the option.
    two = load_pretrained(str(tmp_path), 2, with_tokenizer=False, ignore_mismatched_sizes=True)
    import torch  # noqa: F401
    from safetensors.numpy import load_file

    stored = load_file(str(tmp_path / "model.safetensors"))["classifier.weight"]
    np.testing.assert_allclose(
        np.asarray(two.params["layers"]["exit"]["classifier"]["kernel"][-1]).T, stored, rtol=1e-6
    )


# ------------------------------------------------------------------- the demo, anywhere


def test_demo_reads_glue_dir_then_shared_glue_then_the_hub(tmp_path):
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from configs.demo import glue_location
    from rome_jax.config import run_config

    shared = tmp_path / "shared" / "glue"
    assert glue_location(None, shared) == ""  # a fresh clone elsewhere: the hub
    config = run_config.load(os.path.join(root, "configs", "default.py"), {"data.dir": ""})
    assert run_config.resolve(config).data.source == "hf"
    shared.mkdir(parents=True)
    assert glue_location(None, shared) == str(shared)
    assert glue_location("/data/glue", shared) == "/data/glue"


def test_offline_hub_says_how_to_point_at_a_local_copy(monkeypatch):
    datasets = pytest.importorskip("datasets")
    from rome_jax.data import read_hf_datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        read_hf_datasets("sst2", "train")
    msg = _one_line(e)
    assert "--config.data.dir=/path/to/glue" in msg and "GLUE_DIR=" in msg


def test_the_own_data_preset_has_exits_that_can_leave_early():
    """configs/custom.py pools the mean of the tokens for its MiniLM, whose [CLS] exits
    below layer 4 answer the majority class (docs/custom_data.md)."""
    from rome_jax.config import run_config

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = run_config.load(os.path.join(repo, "configs", "custom.py"))
    assert config.model.exit_pooling == "mean"
