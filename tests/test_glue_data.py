"""GLUE readers, tokenization cache and batch iterator.

Real files come from GLUE_DIR (RTE, MRPC, SST-2, WNLI); the other tasks are tested
on small fixture files written in their true formats.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rome_jax import data
from rome_jax.data import BatchIterator, Examples, Features, load_examples, read_glue_dir, read_hf_datasets
from rome_jax.errors import ConfigError, DataError
from rome_jax.glue import TASKS, check_split, get_task

# ----------------------------------------------------------------------------- registry


def test_registry_has_the_nine_tasks_and_ax():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "ax"}
    for name in ("SST-2", "sst-2", "sst2", "Sst_2"):
        assert get_task(name).name == "sst2"
    assert get_task("STS-B").name == "stsb"
    assert get_task("diagnostic").name == "ax"


def test_registry_labels_and_splits():
    mnli = get_task("mnli")
    assert mnli.label_names == ("entailment", "neutral", "contradiction")
    assert mnli.num_labels == 3 and mnli.dev_splits == ("dev_matched", "dev_mismatched")
    assert mnli.test_splits == ("test_matched", "test_mismatched")
    assert mnli.leaderboard_names["dev_matched"] == "MNLI-m"
    assert mnli.leaderboard_names["test_mismatched"] == "MNLI-mm"
    assert get_task("rte").label_names == get_task("qnli").label_names == ("entailment", "not_entailment")
    for name in ("mrpc", "qqp", "sst2", "cola", "wnli"):
        assert get_task(name).label_names == ("0", "1")
    stsb = get_task("stsb")
    assert stsb.label_names is None and stsb.num_labels == 1 and stsb.is_regression
    ax = get_task("ax")
    assert ax.label_names == mnli.label_names and ax.splits == ("test",)
    assert ax.leaderboard_name("test") == "AX"
    assert get_task("SST-2").glue_dir_name == "SST-2" and get_task("cola").glue_dir_name == "CoLA"
    assert check_split(mnli, "validation_matched") == "dev_matched"


def test_unknown_task_lists_known_tasks():
    with pytest.raises(DataError) as e:
        get_task("mnli2")
    assert "'mnli2'" in str(e.value) and "cola" in str(e.value) and "wnli" in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_split_lists_splits(tmp_path):
    with pytest.raises(DataError, match="dev_matched, dev_mismatched"):
        read_glue_dir("mnli", "dev", tmp_path)


# ----------------------------------------------------------------------- real GLUE files

REAL_COUNTS = {
    ("rte", "train"): 2490, ("rte", "dev"): 277, ("rte", "test"): 3000,
    ("mrpc", "train"): 3668, ("mrpc", "dev"): 408, ("mrpc", "test"): 1725,
    ("sst2", "train"): 67349, ("sst2", "dev"): 872, ("sst2", "test"): 1821,
    ("wnli", "train"): 635, ("wnli", "dev"): 71, ("wnli", "test"): 146,
}

# Label counts by label id, counted once with pandas (sep="\t", quoting=3) as a
# second, independent reader.
REAL_LABEL_COUNTS = {
    ("rte", "train"): [1249, 1241], ("rte", "dev"): [146, 131],
    ("mrpc", "train"): [1194, 2474], ("mrpc", "dev"): [129, 279],
    ("sst2", "train"): [29780, 37569], ("sst2", "dev"): [428, 444],
    ("wnli", "train"): [323, 312], ("wnli", "dev"): [40, 31],
}


@pytest.mark.parametrize("task,split", sorted(REAL_COUNTS))
def test_real_counts_and_labels(glue_dir, task, split):
    examples = load_examples(task, split, data_dir=glue_dir)
    n = REAL_COUNTS[task, split]
    assert len(examples) == n == len(examples.labels) == len(examples.index)
    assert (examples.text_b is None) == (task == "sst2")
    assert examples.labels.dtype == np.int32 and examples.index.dtype == np.int64
    if split == "test":
        assert not examples.has_labels and (examples.labels == -1).all()
        np.testing.assert_array_equal(examples.index, np.arange(n))  # their `index` column
    else:
        assert examples.has_labels
        assert np.bincount(examples.labels).tolist() == REAL_LABEL_COUNTS[task, split]


@pytest.mark.parametrize("task,split", sorted(REAL_COUNTS))
def test_real_files_agree_with_pandas(glue_dir, task, split):
    import pandas as pd

    path = Path(glue_dir) / get_task(task).glue_dir_name / f"{split}.tsv"
    frame = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False,
                        encoding="utf-8-sig")
    examples = load_examples(task, split, data_dir=glue_dir)
    columns = {"mrpc": ("#1 String", "#2 String"), "sst2": ("sentence",)}.get(task, ("sentence1", "sentence2"))
    assert examples.text_a == frame[columns[0]].tolist()
    if len(columns) == 2:
        assert examples.text_b == frame[columns[1]].tolist()
    label_column = {"mrpc": "Quality"}.get(task, "label")
    if label_column in frame:
        names = get_task(task).label_names
        assert [names[i] for i in examples.labels] == frame[label_column].tolist()


def test_real_first_and_last_examples(glue_dir):
    rte = load_examples("rte", "train", data_dir=glue_dir)
    assert rte.text_a[0] == "No Weapons of Mass Destruction Found in Iraq Yet."
    assert rte.text_b[0] == "Weapons of Mass Destruction Found in Iraq."
    assert rte.labels[0] == 1  # not_entailment
    assert rte.text_b[-1] == "U.S. to use Turkish military bases." and rte.index[-1] == 2489
    rte_dev = load_examples("rte", "dev", data_dir=glue_dir)
    assert rte_dev.text_a[-1].startswith('Danny Kennedy, Greenpeace campaigns director, said: "The burden')
    assert rte_dev.text_b[-1] == "Greenpeace director said that peace is terrorism."

    sst = load_examples("sst2", "train", data_dir=glue_dir)
    assert sst.text_a[0] == "hide new secretions from the parental units "  # trailing space kept
    assert sst.labels[0] == 0
    assert sst.text_a[-1] == ("this new jangle of noise , mayhem and stupidity must be a serious "
                              "contender for the title . ")
    sst_test = load_examples("sst2", "test", data_dir=glue_dir)
    assert sst_test.text_a[-1].startswith("dazzling and sugar-sweet , a blast")
    assert sst_test.index[-1] == 1820

    wnli = load_examples("wnli", "test", data_dir=glue_dir)
    assert wnli.text_a[-1].startswith("Edward dropped adhesive tape onto his window sill")
    assert wnli.text_b[-1] == "Some of the glue was stuck on the window sill."


def test_real_mrpc_bom_and_quotes(glue_dir):
    train = load_examples("mrpc", "train", data_dir=glue_dir)
    assert train.text_a[0] == ('Amrozi accused his brother , whom he called " the witness " , '
                               "of deliberately distorting his evidence .")
    assert train.labels[0] == 1 and not train.text_a[0].startswith("\ufeff")
    dev = load_examples("mrpc", "dev", data_dir=glue_dir)
    assert dev.text_b[0] == '" The foodservice pie business does not fit our long-term growth strategy .'
    test = load_examples("mrpc", "test", data_dir=glue_dir)
    assert test.text_b[-1].startswith("The virus spreads when unsuspecting computer users")
    assert test.source_files[0].endswith(os.path.join("MRPC", "test.tsv"))


def test_max_examples_and_glue_dir_env(glue_dir, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", glue_dir)
    head = load_examples("rte", "dev", max_examples=5)
    assert len(head) == 5 and head.text_a[0].startswith("Dana Reeve")
    # The task's own directory is accepted as data_dir too.
    same = load_examples("rte", "dev", data_dir=Path(glue_dir) / "RTE", max_examples=5)
    assert same.text_a == head.text_a


def test_real_hf_tsv_source_matches_dir_source(glue_dir, tmp_path):
    for task in ("rte", "mrpc"):
        via_dir = load_examples(task, "dev", data_dir=glue_dir)
        via_hf = read_hf_datasets(task, "dev", data_files=Path(glue_dir) / via_dir.source_files[0],
                                  cache_dir=str(tmp_path))
        assert via_hf.text_a == via_dir.text_a and via_hf.text_b == via_dir.text_b
        np.testing.assert_array_equal(via_hf.labels, via_dir.labels)


# ---------------------------------------------------------------- fixture files (formats)


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def tsv(*fields: str) -> str:
    return "\t".join(fields)


COLA_ROWS = [tsv("gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."),
             tsv("gj04", "0", "*", 'They drank the "pub.'),
             tsv("clc95", "1", "", "The more we study verbs, the crazier they get.")]
STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
               "sentence1", "sentence2"]
MNLI_PARSES = ["( ( The ( new rights ) ) ( are ( nice enough ) ) )", "( Everyone ( really likes ) )",
               "(ROOT (S (NP (DT The))))", "(ROOT (S (NP (NN Everyone))))"]
MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                     "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]


@pytest.fixture
def fixture_glue(tmp_path):
    root = tmp_path / "glue"
    write(root / "CoLA" / "train.tsv", COLA_ROWS)
    write(root / "CoLA" / "dev.tsv", COLA_ROWS[:2])
    write(root / "CoLA" / "test.tsv", ["index\tsentence", tsv("0", "Bill whistled past the house."),
                                       tsv("1", "The car honked its way down the road.")])
    write(root / "STS-B" / "train.tsv", [tsv(*STSB_HEADER, "score"),
          tsv("0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
              "A plane is taking off.", "An air plane is taking off.", "5.000"),
          tsv("1", "main-captions", "MSRvid", "2012test", "0004", "none", "none",
              "A man is playing a large flute.", "A man is playing a flute.", "3.800")])
    write(root / "STS-B" / "dev.tsv", [tsv(*STSB_HEADER, "score"),
          tsv("0", "main-captions", "MSRvid", "2012test", "0000", "none", "none",
              "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", "5.000")])
    write(root / "STS-B" / "test.tsv", [tsv(*STSB_HEADER),
          tsv("0", "main-forums", "deft-forum", "2014", "0001", "none", "none",
              "A girl is styling her hair.", "A girl is brushing her hair.")])
    write(root / "MNLI" / "train.tsv", [tsv(*MNLI_TRAIN_HEADER, "label1", "gold_label"),
          tsv("0", "31193", "31193n", "government", *MNLI_PARSES,
              "Conceptually cream skimming has two basic dimensions - product and geography.",
              "Product and geography are what make cream skimming work. ", "neutral", "neutral")])
    dev_header = tsv(*MNLI_TRAIN_HEADER, "label1", "label2", "label3", "label4", "label5", "gold_label")
    write(root / "MNLI" / "dev_matched.tsv", [dev_header,
          tsv("0", "63735", "63735n", "slate", *MNLI_PARSES, "The new rights are nice enough",
              "Everyone really likes the newest benefits ", "neutral", "entailment", "neutral",
              "neutral", "neutral", "neutral"),
          tsv("1", "91383", "91383c", "government", *MNLI_PARSES, "This site includes a list.",
              'The Government "Executive articles.', "contradiction", "contradiction", "contradiction",
              "contradiction", "contradiction", "contradiction")])
    write(root / "MNLI" / "dev_mismatched.tsv", [dev_header,
          tsv("0", "75290", "75290c", "letters", *MNLI_PARSES, "Your contribution helped.",
              "Your contributions were of no help.", "contradiction", "contradiction",
              "contradiction", "contradiction", "contradiction", "contradiction"),
          tsv("1", "133794", "133794c", "verbatim", *MNLI_PARSES, "The answer is yes.",
              "The answer is yes.", "entailment", "entailment", "entailment", "entailment",
              "entailment", "entailment")])
    write(root / "MNLI" / "test_matched.tsv", [tsv(*MNLI_TRAIN_HEADER),
          tsv("0", "31493", "31493", "travel", *MNLI_PARSES, "Hierbas, ans seco, ans dulce.",
              "Hierbas is a name worth looking out for.")])
    write(root / "QQP" / "train.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
          tsv("133273", "213221", "213222", "How is the life of a math student?",
              "Which level of prepration is enough for the exam jlpt5?", "0"),
          tsv("402555", "536040", "536041", "How do I control my horny emotions?",
              "How do you control your horniness?", "1")])
    write(root / "QQP" / "test.tsv", ["id\tquestion1\tquestion2",
          tsv("0", "Why do rockets look white?", "Why are rockets and boosters painted white?")])
    write(root / "QNLI" / "dev.tsv", ["index\tquestion\tsentence\tlabel",
          tsv("0", "What came into force after the new constitution was herald?",
              "As of that day, the new constitution heralding the Second Republic came into force.",
              "entailment"),
          tsv("1", "What is the first major city in the stream of the Rhine?",
              "The most important tributaries in this area are the Ill below of Strasbourg.",
              "not_entailment")])
    write(root / "diagnostic" / "diagnostic.tsv", ["index\tsentence1\tsentence2",
          tsv("0", "The cat sat on the mat.", "The cat did not sit on the mat."),
          tsv("1", "The cat did not sit on the mat.", "The cat sat on the mat.")])
    return root


def test_cola_headerless_and_test_header(fixture_glue):
    train = read_glue_dir("cola", "train", fixture_glue)
    assert train.text_a == [r.split("\t")[3] for r in COLA_ROWS] and train.text_b is None
    assert train.labels.tolist() == [1, 0, 1] and train.index.tolist() == [0, 1, 2]
    assert len(read_glue_dir("CoLA", "dev", fixture_glue)) == 2
    test = read_glue_dir("cola", "test", fixture_glue)
    assert test.text_a == ["Bill whistled past the house.", "The car honked its way down the road."]
    assert not test.has_labels and test.labels.tolist() == [-1, -1] and test.index.tolist() == [0, 1]


def test_stsb_scores(fixture_glue):
    train = read_glue_dir("STS-B", "train", fixture_glue)
    assert train.text_a == ["A plane is taking off.", "A man is playing a large flute."]
    assert train.text_b == ["An air plane is taking off.", "A man is playing a flute."]
    assert train.labels.dtype == np.float32
    np.testing.assert_allclose(train.labels, [5.0, 3.8])
    test = read_glue_dir("stsb", "test", fixture_glue)
    assert test.text_b == ["A girl is brushing her hair."] and np.isnan(test.labels).all()
    assert not test.has_labels


def test_mnli_matched_and_mismatched(fixture_glue):
    train = read_glue_dir("mnli", "train", fixture_glue)
    assert train.text_b == ["Product and geography are what make cream skimming work. "]
    assert train.labels.tolist() == [1]
    matched = read_glue_dir("mnli", "dev_matched", fixture_glue)
    assert matched.text_a == ["The new rights are nice enough", "This site includes a list."]
    assert matched.text_b[1] == 'The Government "Executive articles.'
    assert matched.labels.tolist() == [1, 2]  # gold_label, not label1
    mismatched = read_glue_dir("mnli", "validation_mismatched", fixture_glue)
    assert mismatched.labels.tolist() == [2, 0] and mismatched.split == "dev_mismatched"
    test = read_glue_dir("mnli", "test_matched", fixture_glue)
    assert test.text_a == ["Hierbas, ans seco, ans dulce."] and not test.has_labels
    with pytest.raises(DataError, match="test_mismatched.tsv; files there: dev_matched.tsv, "
                                        "dev_mismatched.tsv, test_matched.tsv, train.tsv"):
        read_glue_dir("mnli", "test_mismatched", fixture_glue)


def test_qqp_qnli_and_ax(fixture_glue):
    qqp = read_glue_dir("qqp", "train", fixture_glue)
    assert qqp.text_a == ["How is the life of a math student?", "How do I control my horny emotions?"]
    assert qqp.text_b[1] == "How do you control your horniness?"
    assert qqp.labels.tolist() == [0, 1] and qqp.index.tolist() == [133273, 402555]
    qqp_test = read_glue_dir("qqp", "test", fixture_glue)
    assert qqp_test.text_b == ["Why are rockets and boosters painted white?"] and not qqp_test.has_labels
    qnli = read_glue_dir("qnli", "dev", fixture_glue)
    assert qnli.text_a[0] == "What came into force after the new constitution was herald?"
    assert qnli.labels.tolist() == [0, 1]
    ax = read_glue_dir("ax", "test", fixture_glue)
    assert ax.text_a == ["The cat sat on the mat.", "The cat did not sit on the mat."]
    assert not ax.has_labels and ax.labels.dtype == np.int32
    assert ax.source_files[0].endswith(os.path.join("diagnostic", "diagnostic.tsv"))


def test_crlf_line_endings(tmp_path):
    (tmp_path / "WNLI").mkdir()
    (tmp_path / "WNLI" / "dev.tsv").write_bytes(b"index\tsentence1\tsentence2\tlabel\r\n0\ta\tb\t1\r\n")
    examples = read_glue_dir("wnli", "dev", tmp_path)
    assert examples.text_b == ["b"] and examples.labels.tolist() == [1]


@pytest.mark.parametrize("task,file,lines,message", [
    ("rte", "RTE/train.tsv", ["index\tsentence1\tsentence2\tlabel", tsv("0", "a", "b", "entailment"),
                              tsv("1", "a", "b")], r"RTE/train.tsv, line 3: expected 4 tab-separated fields"),
    ("rte", "RTE/dev.tsv", ["index\tsentence1\tsentence2\tlabel", tsv("0", "a", "b", "maybe")],
     r"RTE/dev.tsv, line 2: unknown label 'maybe' \(known: entailment, not_entailment\)"),
    ("stsb", "STS-B/dev.tsv", [tsv(*STSB_HEADER, "score"), tsv("0", *"gfyoxy", "a", "b", "4.2"),
                               tsv("1", *"gfyoxy", "a", "b", "high")],
     r"STS-B/dev.tsv, line 3: score 'high' is not a finite number"),
    ("cola", "CoLA/train.tsv", COLA_ROWS[:1] + ["gj04\t1\tOur friends"],
     r"CoLA/train.tsv, line 2: expected 4 tab-separated fields"),
    ("qqp", "QQP/dev.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2", tsv("0", "1", "2", "a", "b")],
     r"QQP/dev.tsv, line 1: header has no column 'is_duplicate'"),
    ("sst2", "SST-2/train.tsv", ["sentence\tlabel", "fine\t0", "x\ty\t1"], r"SST-2/train.tsv, line 3"),
])
def test_malformed_rows_name_file_and_line(tmp_path, task, file, lines, message):
    write(tmp_path / file, lines)
    split = Path(file).stem
    with pytest.raises(DataError, match=message) as e:
        read_glue_dir(task, split, tmp_path)
    assert "\n" not in str(e.value)


def test_missing_directory_and_file(tmp_path):
    write(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel"])
    write(tmp_path / "RTE" / "test.tsv", ["index\tsentence1\tsentence2"])
    with pytest.raises(DataError) as e:
        read_glue_dir("rte", "dev", tmp_path)
    assert str(tmp_path / "RTE" / "dev.tsv") in str(e.value)
    assert "files there: test.tsv, train.tsv" in str(e.value)
    with pytest.raises(DataError, match=r"expected .*MRPC; directories there: RTE"):
        read_glue_dir("mrpc", "dev", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_glue_dir("mrpc", "dev", tmp_path / "nowhere")


def test_load_examples_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown data.source 'web' \(known: dir, hf, tfds\)"):
        load_examples("rte", "dev", source="web", data_dir=tmp_path)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    with pytest.raises(ConfigError, match="GLUE_DIR"):
        load_examples("rte", "dev")
    write(tmp_path / "RTE" / "dev.tsv", ["index\tsentence1\tsentence2\tlabel"])
    with pytest.raises(DataError, match="no examples"):
        load_examples("rte", "dev", data_dir=tmp_path)


# ---------------------------------------------------------------- hf datasets / tfds


def test_hf_parquet_in_hub_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "validation_matched.parquet"
    pq.write_table(pa.table({"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"],
                             "label": [2, 0, 1], "idx": [10, 11, 12]}), path)
    examples = load_examples("mnli", "validation_matched", source="hf", data_files=str(path),
                             max_examples=0)
    assert examples.split == "dev_matched" and examples.text_a == ["p0", "p1", "p2"]
    assert examples.text_b == ["h0", "h1", "h2"] and examples.labels.tolist() == [2, 0, 1]
    assert examples.index.tolist() == [10, 11, 12] and examples.has_labels

    test_path = tmp_path / "stsb_test.parquet"
    pq.write_table(pa.table({"sentence1": ["a"], "sentence2": ["b"], "label": [-1.0], "idx": [0]}),
                   test_path)
    test = read_hf_datasets("stsb", "test", data_files=[test_path], cache_dir=str(tmp_path / "c"))
    assert not test.has_labels and np.isnan(test.labels).all()

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"premise": ["p"], "hypothesis": ["h"], "label": [7]}), bad)
    with pytest.raises(DataError, match=r"row 1: unknown label '7'"):
        read_hf_datasets("mnli", "train", data_files=bad, cache_dir=str(tmp_path / "c"))


def test_hf_tsv_and_csv_files(tmp_path):
    # GLUE layout: bare quotes, strings that pandas would turn into NaN or numbers.
    path = write(tmp_path / "dev.tsv", ["index\tquestion\tsentence\tlabel",
                                        tsv("0", 'He said "hi', "null", "entailment"),
                                        tsv("1", "007", "NaN", "not_entailment")])
    examples = read_hf_datasets("qnli", "dev", data_files=path, cache_dir=str(tmp_path / "c"))
    assert examples.text_a == ['He said "hi', "007"] and examples.text_b == ["null", "NaN"]
    assert examples.labels.tolist() == [0, 1]
    cola = write(tmp_path / "cola_train.tsv", COLA_ROWS)
    examples = read_hf_datasets("cola", "train", data_files=cola, cache_dir=str(tmp_path / "c"))
    assert examples.text_a[1] == 'They drank the "pub.' and examples.labels.tolist() == [1, 0, 1]
    csv_path = tmp_path / "sst2.csv"
    csv_path.write_text('sentence,label,idx\n"a, b",1,0\nc,0,1\n', encoding="utf-8")
    examples = read_hf_datasets("sst2", "train", data_files=csv_path, cache_dir=str(tmp_path / "c"))
    assert examples.text_a == ["a, b", "c"] and examples.labels.tolist() == [1, 0]
    with pytest.raises(DataError, match="missing data file"):
        read_hf_datasets("sst2", "train", data_files=tmp_path / "nope.tsv")


def test_hf_tsv_parse_error_names_the_line(tmp_path):
    path = write(tmp_path / "dev.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                                        tsv("0", "1", "2", "a?", "b?", "0"),
                                        tsv("1", "3", "4", "c?", "d?", "1", "extra")])
    with pytest.raises(DataError) as e:
        read_hf_datasets("qqp", "dev", data_files=path, cache_dir=str(tmp_path / "c"))
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    assert "Expected 6 fields in line 3, saw 7" in message  # not datasets' "An error occurred"


def test_hf_hub_failure_is_one_line(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        load_examples("rte", "dev", source="hf")
    message = str(e.value)
    assert "\n" not in message and "nyu-mll/glue rte/validation" in message
    assert "data_files" in message and "data.source=dir" in message


def test_tfds_without_tensorflow(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(DataError) as e:
        load_examples("sst2", "dev", source="tfds")
    assert str(e.value) == ("tensorflow-datasets' GLUE needs TensorFlow: pip install tensorflow "
                            "(or use data.source=dir)")


# ----------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def pair_examples(a, b, task="rte"):
    n = len(a)
    return Examples(text_a=list(a), text_b=None if b is None else list(b),
                    labels=np.zeros(n, np.int32), index=np.arange(n), task=task, split="dev")


def test_tokenize_pairs_and_padding(tokenizer):
    features = data.tokenize_examples(pair_examples(["hello world"], ["how are you"]), tokenizer, 12)
    tokens = tokenizer.convert_ids_to_tokens(features.input_ids[0][:8].tolist())
    assert tokens == ["[CLS]", "hello", "world", "[SEP]", "how", "are", "you", "[SEP]"]
    assert features.input_ids.dtype == np.int32 and features.input_ids.shape == (1, 12)
    assert features.input_ids[0, 8:].tolist() == [tokenizer.pad_token_id] * 4
    assert features.attention_mask[0].tolist() == [1] * 8 + [0] * 4
    assert features.token_type_ids[0].tolist() == [0] * 4 + [1] * 4 + [0] * 4
    single = data.tokenize_examples(pair_examples(["hello world"], None, "sst2"), tokenizer, 6)
    assert single.token_type_ids.sum() == 0 and single.attention_mask[0].tolist() == [1] * 4 + [0] * 2


def test_tokenize_truncates_longest_first(tokenizer):
    long = " ".join(["word"] * 50)
    features = data.tokenize_examples(pair_examples([long], ["short answer"]), tokenizer, 16)
    tokens = tokenizer.convert_ids_to_tokens(features.input_ids[0].tolist())
    assert features.attention_mask.all() and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    assert tokens[-3:-1] == ["short", "answer"]  # the longer text lost the tokens
    assert tokens.count("word") == 16 - 5


def test_tokenize_matches_tokenizer_on_real_rows(glue_dir, tokenizer):
    examples = load_examples("rte", "dev", data_dir=glue_dir, max_examples=16)
    features = data.tokenize_examples(examples, tokenizer, 64)
    expected = tokenizer(examples.text_a, examples.text_b, max_length=64, truncation=True,
                         padding="max_length")
    np.testing.assert_array_equal(features.input_ids, expected["input_ids"])
    np.testing.assert_array_equal(features.token_type_ids, expected["token_type_ids"])
    np.testing.assert_array_equal(features.labels, examples.labels)
    np.testing.assert_array_equal(features.index, examples.index)


def test_tokenize_cache_hit_skips_tokenizer(tokenizer, tmp_path, monkeypatch):
    examples = pair_examples(["a cat", "a dog sat"], ["it sat", "it ran"])
    first = data.tokenize_examples(examples, tokenizer, 10, cache_dir=tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].endswith(".npz") and files[0].startswith("rte-dev-")

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized although the cache holds the features")

    monkeypatch.setattr(type(tokenizer), "__call__", refuse)
    second = data.tokenize_examples(examples, tokenizer, 10, cache_dir=tmp_path)
    for key, value in first.arrays().items():
        np.testing.assert_array_equal(getattr(second, key), value)
    with pytest.raises(AssertionError, match="tokenized"):  # other max_length: a miss
        data.tokenize_examples(examples, tokenizer, 11, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="tokenized"):  # other texts: a miss
        data.tokenize_examples(pair_examples(["a cat", "a dog"], ["it sat", "it ran"]), tokenizer, 10,
                               cache_dir=tmp_path)
    monkeypatch.undo()
    (tmp_path / files[0]).write_bytes(b"truncated")  # a broken cache is rebuilt
    third = data.tokenize_examples(examples, tokenizer, 10, cache_dir=tmp_path)
    np.testing.assert_array_equal(third.input_ids, first.input_ids)
    assert sorted(os.listdir(tmp_path)) == files  # no temporary files left behind


def test_fingerprint_ignores_call_state(tokenizer):
    before = data.tokenizer_fingerprint(tokenizer)
    tokenizer(["x y"], max_length=5, truncation=True, padding="max_length")
    assert data.tokenizer_fingerprint(tokenizer) == before


def test_tokenizer_without_token_type_ids(tokenizer):
    class NoTypes:  # like RoBERTa's tokenizer
        name_or_path = "no-types"

        def __call__(self, *args, **kwargs):
            encoded = dict(tokenizer(*args, **kwargs))
            encoded.pop("token_type_ids")
            return encoded

        def get_vocab(self):
            return {"a": 0}

    features = data.tokenize_examples(pair_examples(["a"], ["b"]), NoTypes(), 8, cache_dir=None)
    assert features.token_type_ids.shape == (1, 8) and not features.token_type_ids.any()
    assert features.attention_mask.sum() == 5


# --------------------------------------------------------------------------- batching


def synthetic(n=10, t=4, regression=False):
    ids = np.repeat(np.arange(n, dtype=np.int32)[:, None], t, axis=1)
    labels = np.arange(n, dtype=np.float32) / 2 if regression else (np.arange(n) % 3).astype(np.int32)
    return Features(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids),
                    labels=labels, index=np.arange(100, 100 + n, dtype=np.int64))


def take(iterator, k):
    return [next(iterator) for _ in range(k)]


def test_batches_static_shapes_and_dtypes():
    batch = next(BatchIterator(synthetic(regression=True), 4, shuffle=True, seed=0, drop_remainder=True))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (4, 4)
    assert batch["input_ids"].dtype == np.int32 and batch["labels"].dtype == np.float32
    assert batch["example_mask"].dtype == bool and batch["example_mask"].all()
    assert (batch["index"] == batch["input_ids"][:, 0] + 100).all()


def test_shuffle_is_determined_by_seed_and_epoch():
    def rows(seed):
        return np.concatenate([b["input_ids"][:, 0] for b in take(BatchIterator(
            synthetic(), 5, shuffle=True, seed=seed, drop_remainder=True), 6)])

    assert (rows(3) == rows(3)).all() and not (rows(3) == rows(4)).all()
    first, second = rows(3)[:10], rows(3)[10:20]
    assert sorted(first) == sorted(second) == list(range(10)) and not (first == second).all()
    np.testing.assert_array_equal(first, np.random.default_rng([3, 0]).permutation(10))
    unshuffled = np.concatenate([b["input_ids"][:, 0] for b in take(BatchIterator(
        synthetic(), 5, shuffle=False, seed=3, drop_remainder=True), 2)])
    assert unshuffled.tolist() == list(range(10))


def test_negative_seed_shuffles_deterministically():
    # train.seed may be any int (jax.random.PRNGKey(-1) is fine); numpy's SeedSequence
    # refuses negative entries, so the iterator takes the seed modulo 2**64.
    def rows(seed, epochs=2):
        return np.concatenate([b["index"] for b in take(BatchIterator(
            synthetic(), 5, shuffle=True, seed=seed, drop_remainder=True), 2 * epochs)])

    first = rows(-1)
    assert (first == rows(-1)).all() and sorted(first[:10].tolist()) == list(range(100, 110))
    np.testing.assert_array_equal(first[:10] - 100, np.random.default_rng([2**64 - 1, 0]).permutation(10))
    assert not (first == rows(-2)).all()


def test_drop_remainder_for_training():
    iterator = BatchIterator(synthetic(), 4, shuffle=True, seed=1, drop_remainder=True)
    assert iterator.steps_per_epoch == 2
    batches = take(iterator, 20)  # training repeats forever
    assert all(b["example_mask"].all() and len(b["labels"]) == 4 for b in batches)
    epoch0 = np.concatenate([b["index"] for b in batches[:2]])
    assert len(set(epoch0.tolist())) == 8
    with pytest.raises(ConfigError, match="exceeds the 10 examples"):
        BatchIterator(synthetic(), 16, shuffle=True, seed=1, drop_remainder=True)


def test_eval_keeps_every_example_once():
    iterator = BatchIterator(synthetic(), 4, shuffle=False, seed=0, drop_remainder=False)
    batches = list(iterator)
    assert len(batches) == iterator.steps_per_epoch == 3
    assert all(b["input_ids"].shape == (4, 4) for b in batches)
    assert batches[-1]["example_mask"].tolist() == [True, True, False, False]
    assert batches[-1]["index"].tolist()[2:] == [-1, -1]
    kept = np.concatenate([b["index"][b["example_mask"]] for b in batches])
    assert sorted(kept.tolist()) == list(range(100, 110))
    assert list(iterator) == []  # one pass


def test_process_shards_cover_the_global_batch():
    features = synthetic(n=11)
    for drop in (True, False):
        whole = list(BatchIterator(features, 6, shuffle=True, seed=7, drop_remainder=drop, num_epochs=2))
        shards = [list(BatchIterator(features, 6, shuffle=True, seed=7, drop_remainder=drop,
                                     num_epochs=2, process_index=p, process_count=2)) for p in (0, 1)]
        assert len(shards[0]) == len(shards[1]) == len(whole)
        for g, s0, s1 in zip(whole, *shards):
            for key in g:
                assert s0[key].shape[0] == 3
                np.testing.assert_array_equal(s0[key], g[key][0::2])
                np.testing.assert_array_equal(s1[key], g[key][1::2])
    with pytest.raises(ConfigError, match="not divisible"):
        BatchIterator(features, 5, process_count=2)


def test_state_save_and_restore():
    features = synthetic(n=13)
    original = BatchIterator(features, 4, shuffle=True, seed=11, drop_remainder=True)
    take(original, 5)  # crosses an epoch boundary (3 batches per epoch)
    state = json.loads(json.dumps(original.get_state()))
    assert state["epoch"] == 1 and state["position"] == 2
    restored = BatchIterator(features, 4, shuffle=True, seed=11, drop_remainder=True)
    restored.set_state(state)
    for a, b in zip(take(original, 7), take(restored, 7)):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(ConfigError, match="seed"):
        BatchIterator(features, 4, shuffle=True, seed=12, drop_remainder=True).set_state(state)


# ------------------------------------------------------------------------ properties

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"), max_size=40)


@settings(max_examples=40, deadline=None)
@given(a=TEXT, b=TEXT)
def test_any_text_survives_a_tsv_row(tokenizer, a, b):
    with tempfile.TemporaryDirectory() as root:
        write(Path(root) / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel",
                                                  tsv("0", a, b, "entailment"),
                                                  tsv("1", b, a, "not_entailment")])
        examples = load_examples("rte", "train", data_dir=root, max_examples=2)
        assert examples.text_a == [a, b] and examples.text_b == [b, a]
        features = data.tokenize_examples(examples, tokenizer, 16)
        assert features.input_ids.shape == (2, 16) and features.attention_mask[:, 0].all()


def test_tokenize_refuses_a_string_and_unpaired_pairs(minilm_path):
    from rome_jax.api import MultiExitModel, load_tokenizer
    from rome_jax.model_config import ModelConfig

    config = ModelConfig.from_json_file(os.path.join(minilm_path, "config.json"))
    model = MultiExitModel(config, None, load_tokenizer(minilm_path))
    assert model.tokenize(["a sentence"], max_length=8)["input_ids"].shape == (1, 8)
    with pytest.raises(ValueError, match="give lists of sentences"):
        model.tokenize("a sentence", max_length=8)  # was 10 rows, one a character
    with pytest.raises(ValueError, match="pairs need as many second sentences as first ones: 2 against 1"):
        model.tokenize(["a"], ["c", "d"], max_length=8)
    with pytest.raises(ValueError, match=f"max_length 600 exceeds the model's {config.max_length} positions"):
        model.tokenize(["a sentence"], max_length=600)


def test_tokenizer_and_metrics_writer_load_without_importing_pytorch(minilm_path, tmp_path):
    """train.py/eval.py start without PyTorch's ~4 s import where it is installed:
    `load_tokenizer` picks AutoTokenizer's class without AutoTokenizer's module, and
    tensorboardX is imported with `import torch` failing. Same tokenizer, same ids."""
    pytest.importorskip("torch")
    import shutil
    import subprocess

    from transformers import AutoTokenizer

    from rome_jax.api import load_tokenizer

    code = ("import sys; from rome_jax.api import load_tokenizer; from rome_jax.trainer import _summary_writer_class; "
            f"load_tokenizer({minilm_path!r}); w = _summary_writer_class()({str(tmp_path / 'tb')!r}); "
            "w.add_scalar('x', 1.0, 1); w.close(); print('torch' in sys.modules); import torch; print(torch.ones(1).item())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.returncode == 0 and proc.stdout.split() == ["False", "1.0"], proc.stderr[-2000:]
    assert any((tmp_path / "tb").iterdir())  # the scalar was written
    pairs = (["A man is playing a guitar.", "Two dogs run"], ["Someone plays music!", "Cats sleep."])
    reference = AutoTokenizer.from_pretrained(minilm_path)
    for name in ("BertTokenizer", None, "NoSuchTokenizer"):  # named; no name or unknown: as AutoTokenizer
        directory = tmp_path / f"tok_{name}"
        shutil.copytree(minilm_path, directory, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
        settings_ = json.loads((directory / "tokenizer_config.json").read_text())
        settings_.pop("tokenizer_class", None)
        if name:
            settings_["tokenizer_class"] = name
        (directory / "tokenizer_config.json").write_text(json.dumps(settings_))
        tokenizer, expected = load_tokenizer(str(directory)), AutoTokenizer.from_pretrained(str(directory))
        assert type(tokenizer) is type(expected) and dict(tokenizer(*pairs)) == dict(expected(*pairs))
        assert (type(tokenizer) is type(reference)) == (name != "NoSuchTokenizer")
    assert dict(load_tokenizer(minilm_path)(*pairs)) == dict(reference(*pairs))
