"""GLUE readers (rome_jax.data.examples): the task registry, the original GLUE
TSVs, Hugging Face datasets and tensorflow-datasets.

Real files come from GLUE_DIR (RTE, MRPC, SST-2, WNLI); the other tasks are tested
on small fixture files written in their true formats.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import rome_jax.data
from rome_jax.data import batching, examples, features
from rome_jax.data.examples import load_examples, read_glue_dir, read_hf_datasets
from rome_jax.data.glue import TASKS, check_split, get_task
from rome_jax.errors import ConfigError, DataError

# ------------------------------------------------------------------------------ package


def test_package_reexports_the_public_names_of_its_modules():
    """`from rome_jax.data import X` works for every public name of the three modules."""
    for module in (examples, features, batching):
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and (getattr(value, "__module__", None) == module.__name__ or name.isupper())
        }
        for name in public - {"logger"}:
            assert name in rome_jax.data.__all__, f"{module.__name__}.{name} is not re-exported"
            assert getattr(rome_jax.data, name) is getattr(module, name)
    assert set(rome_jax.data.__all__) >= {
        "Examples",
        "load_examples",
        "read_text_file",
        "Features",
        "tokenize_examples",
        "tokenize_texts",
        "BatchIterator",
    }


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
    ("rte", "train"): 2490,
    ("rte", "dev"): 277,
    ("rte", "test"): 3000,
    ("mrpc", "train"): 3668,
    ("mrpc", "dev"): 408,
    ("mrpc", "test"): 1725,
    ("sst2", "train"): 67349,
    ("sst2", "dev"): 872,
    ("sst2", "test"): 1821,
    ("wnli", "train"): 635,
    ("wnli", "dev"): 71,
    ("wnli", "test"): 146,
}

# Label counts by label id, counted once with pandas (sep="\t", quoting=3) as a
# second, independent reader.
REAL_LABEL_COUNTS = {
    ("rte", "train"): [1249, 1241],
    ("rte", "dev"): [146, 131],
    ("mrpc", "train"): [1194, 2474],
    ("mrpc", "dev"): [129, 279],
    ("sst2", "train"): [29780, 37569],
    ("sst2", "dev"): [428, 444],
    ("wnli", "train"): [323, 312],
    ("wnli", "dev"): [40, 31],
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
    frame = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False, encoding="utf-8-sig")
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
    assert sst.text_a[-1] == (
        "this new jangle of noise , mayhem and stupidity must be a serious contender for the title . "
    )
    sst_test = load_examples("sst2", "test", data_dir=glue_dir)
    assert sst_test.text_a[-1].startswith("dazzling and sugar-sweet , a blast")
    assert sst_test.index[-1] == 1820

    wnli = load_examples("wnli", "test", data_dir=glue_dir)
    assert wnli.text_a[-1].startswith("Edward dropped adhesive tape onto his window sill")
    assert wnli.text_b[-1] == "Some of the glue was stuck on the window sill."


def test_real_mrpc_bom_and_quotes(glue_dir):
    train = load_examples("mrpc", "train", data_dir=glue_dir)
    assert train.text_a[0] == (
        'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .'
    )
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
        via_hf = read_hf_datasets(
            task, "dev", data_files=Path(glue_dir) / via_dir.source_files[0], cache_dir=str(tmp_path)
        )
        assert via_hf.text_a == via_dir.text_a and via_hf.text_b == via_dir.text_b
        np.testing.assert_array_equal(via_hf.labels, via_dir.labels)


# ---------------------------------------------------------------- fixture files (formats)


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def tsv(*fields: str) -> str:
    return "\t".join(fields)


COLA_ROWS = [
    tsv("gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."),
    tsv("gj04", "0", "*", 'They drank the "pub.'),
    tsv("clc95", "1", "", "The more we study verbs, the crazier they get."),
]
STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
MNLI_PARSES = [
    "( ( The ( new rights ) ) ( are ( nice enough ) ) )",
    "( Everyone ( really likes ) )",
    "(ROOT (S (NP (DT The))))",
    "(ROOT (S (NP (NN Everyone))))",
]
MNLI_TRAIN_HEADER = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
]


@pytest.fixture
def fixture_glue(tmp_path):
    root = tmp_path / "glue"
    write(root / "CoLA" / "train.tsv", COLA_ROWS)
    write(root / "CoLA" / "dev.tsv", COLA_ROWS[:2])
    write(
        root / "CoLA" / "test.tsv",
        [
            "index\tsentence",
            tsv("0", "Bill whistled past the house."),
            tsv("1", "The car honked its way down the road."),
        ],
    )
    write(
        root / "STS-B" / "train.tsv",
        [
            tsv(*STSB_HEADER, "score"),
            tsv(
                "0",
                "main-captions",
                "MSRvid",
                "2012test",
                "0001",
                "none",
                "none",
                "A plane is taking off.",
                "An air plane is taking off.",
                "5.000",
            ),
            tsv(
                "1",
                "main-captions",
                "MSRvid",
                "2012test",
                "0004",
                "none",
                "none",
                "A man is playing a large flute.",
                "A man is playing a flute.",
                "3.800",
            ),
        ],
    )
    write(
        root / "STS-B" / "dev.tsv",
        [
            tsv(*STSB_HEADER, "score"),
            tsv(
                "0",
                "main-captions",
                "MSRvid",
                "2012test",
                "0000",
                "none",
                "none",
                "A man with a hard hat is dancing.",
                "A man wearing a hard hat is dancing.",
                "5.000",
            ),
        ],
    )
    write(
        root / "STS-B" / "test.tsv",
        [
            tsv(*STSB_HEADER),
            tsv(
                "0",
                "main-forums",
                "deft-forum",
                "2014",
                "0001",
                "none",
                "none",
                "A girl is styling her hair.",
                "A girl is brushing her hair.",
            ),
        ],
    )
    write(
        root / "MNLI" / "train.tsv",
        [
            tsv(*MNLI_TRAIN_HEADER, "label1", "gold_label"),
            tsv(
                "0",
                "31193",
                "31193n",
                "government",
                *MNLI_PARSES,
                "Conceptually cream skimming has two basic dimensions - product and geography.",
                "Product and geography are what make cream skimming work. ",
                "neutral",
                "neutral",
            ),
        ],
    )
    dev_header = tsv(*MNLI_TRAIN_HEADER, "label1", "label2", "label3", "label4", "label5", "gold_label")
    write(
        root / "MNLI" / "dev_matched.tsv",
        [
            dev_header,
            tsv(
                "0",
                "63735",
                "63735n",
                "slate",
                *MNLI_PARSES,
                "The new rights are nice enough",
                "Everyone really likes the newest benefits ",
                "neutral",
                "entailment",
                "neutral",
                "neutral",
                "neutral",
                "neutral",
            ),
            tsv(
                "1",
                "91383",
                "91383c",
                "government",
                *MNLI_PARSES,
                "This site includes a list.",
                'The Government "Executive articles.',
                "contradiction",
                "contradiction",
                "contradiction",
                "contradiction",
                "contradiction",
                "contradiction",
            ),
        ],
    )
    write(
        root / "MNLI" / "dev_mismatched.tsv",
        [
            dev_header,
            tsv(
                "0",
                "75290",
                "75290c",
                "letters",
                *MNLI_PARSES,
                "Your contribution helped.",
                "Your contributions were of no help.",
                "contradiction",
                "contradiction",
                "contradiction",
                "contradiction",
                "contradiction",
                "contradiction",
            ),
            tsv(
                "1",
                "133794",
                "133794c",
                "verbatim",
                *MNLI_PARSES,
                "The answer is yes.",
                "The answer is yes.",
                "entailment",
                "entailment",
                "entailment",
                "entailment",
                "entailment",
                "entailment",
            ),
        ],
    )
    write(
        root / "MNLI" / "test_matched.tsv",
        [
            tsv(*MNLI_TRAIN_HEADER),
            tsv(
                "0",
                "31493",
                "31493",
                "travel",
                *MNLI_PARSES,
                "Hierbas, ans seco, ans dulce.",
                "Hierbas is a name worth looking out for.",
            ),
        ],
    )
    write(
        root / "QQP" / "train.tsv",
        [
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            tsv(
                "133273",
                "213221",
                "213222",
                "How is the life of a math student?",
                "Which level of prepration is enough for the exam jlpt5?",
                "0",
            ),
            tsv(
                "402555",
                "536040",
                "536041",
                "How do I control my horny emotions?",
                "How do you control your horniness?",
                "1",
            ),
        ],
    )
    write(
        root / "QQP" / "test.tsv",
        [
            "id\tquestion1\tquestion2",
            tsv("0", "Why do rockets look white?", "Why are rockets and boosters painted white?"),
        ],
    )
    write(
        root / "QNLI" / "dev.tsv",
        [
            "index\tquestion\tsentence\tlabel",
            tsv(
                "0",
                "What came into force after the new constitution was herald?",
                "As of that day, the new constitution heralding the Second Republic came into force.",
                "entailment",
            ),
            tsv(
                "1",
                "What is the first major city in the stream of the Rhine?",
                "The most important tributaries in this area are the Ill below of Strasbourg.",
                "not_entailment",
            ),
        ],
    )
    write(
        root / "diagnostic" / "diagnostic.tsv",
        [
            "index\tsentence1\tsentence2",
            tsv("0", "The cat sat on the mat.", "The cat did not sit on the mat."),
            tsv("1", "The cat did not sit on the mat.", "The cat sat on the mat."),
        ],
    )
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
    with pytest.raises(
        DataError,
        match="test_mismatched.tsv; files there: dev_matched.tsv, dev_mismatched.tsv, test_matched.tsv, train.tsv",
    ):
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


@pytest.mark.parametrize(
    "task,file,lines,message",
    [
        (
            "rte",
            "RTE/train.tsv",
            ["index\tsentence1\tsentence2\tlabel", tsv("0", "a", "b", "entailment"), tsv("1", "a", "b")],
            r"RTE/train.tsv, line 3: expected 4 tab-separated fields",
        ),
        (
            "rte",
            "RTE/dev.tsv",
            ["index\tsentence1\tsentence2\tlabel", tsv("0", "a", "b", "maybe")],
            r"RTE/dev.tsv, line 2: unknown label 'maybe' \(known: entailment, not_entailment\)",
        ),
        (
            "stsb",
            "STS-B/dev.tsv",
            [tsv(*STSB_HEADER, "score"), tsv("0", *"gfyoxy", "a", "b", "4.2"), tsv("1", *"gfyoxy", "a", "b", "high")],
            r"STS-B/dev.tsv, line 3: score 'high' is not a finite number",
        ),
        (
            "cola",
            "CoLA/train.tsv",
            COLA_ROWS[:1] + ["gj04\t1\tOur friends"],
            r"CoLA/train.tsv, line 2: expected 4 tab-separated fields",
        ),
        (
            "qqp",
            "QQP/dev.tsv",
            ["id\tqid1\tqid2\tquestion1\tquestion2", tsv("0", "1", "2", "a", "b")],
            r"QQP/dev.tsv, line 1: header has no column 'is_duplicate'",
        ),
        ("sst2", "SST-2/train.tsv", ["sentence\tlabel", "fine\t0", "x\ty\t1"], r"SST-2/train.tsv, line 3"),
    ],
)
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
    pq.write_table(
        pa.table(
            {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"], "label": [2, 0, 1], "idx": [10, 11, 12]}
        ),
        path,
    )
    examples = load_examples("mnli", "validation_matched", source="hf", data_files=str(path), max_examples=0)
    assert examples.split == "dev_matched" and examples.text_a == ["p0", "p1", "p2"]
    assert examples.text_b == ["h0", "h1", "h2"] and examples.labels.tolist() == [2, 0, 1]
    assert examples.index.tolist() == [10, 11, 12] and examples.has_labels

    test_path = tmp_path / "stsb_test.parquet"
    pq.write_table(pa.table({"sentence1": ["a"], "sentence2": ["b"], "label": [-1.0], "idx": [0]}), test_path)
    test = read_hf_datasets("stsb", "test", data_files=[test_path], cache_dir=str(tmp_path / "c"))
    assert not test.has_labels and np.isnan(test.labels).all()

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"premise": ["p"], "hypothesis": ["h"], "label": [7]}), bad)
    with pytest.raises(DataError, match=r"row 1: unknown label '7'"):
        read_hf_datasets("mnli", "train", data_files=bad, cache_dir=str(tmp_path / "c"))


def test_hf_tsv_and_csv_files(tmp_path):
    # GLUE layout: bare quotes, strings that pandas would turn into NaN or numbers.
    path = write(
        tmp_path / "dev.tsv",
        [
            "index\tquestion\tsentence\tlabel",
            tsv("0", 'He said "hi', "null", "entailment"),
            tsv("1", "007", "NaN", "not_entailment"),
        ],
    )
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
    path = write(
        tmp_path / "dev.tsv",
        [
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            tsv("0", "1", "2", "a?", "b?", "0"),
            tsv("1", "3", "4", "c?", "d?", "1", "extra"),
        ],
    )
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


def test_an_unreachable_hub_fails_at_once_and_offline_mode_reads_the_cache(monkeypatch):
    import socket

    import datasets

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    called = []
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: called.append(a) or 1 / 0)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DataError, match="huggingface.co does not resolve") as e:
        load_examples("rte", "dev", source="hf")
    assert not called and "\n" not in str(e.value)  # no retries: the hub client never ran
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode: datasets' own cache decides
    with pytest.raises(DataError, match="ZeroDivisionError"):
        load_examples("rte", "dev", source="hf")
    assert called


def test_tfds_without_tensorflow(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(DataError) as e:
        load_examples("sst2", "dev", source="tfds")
    assert str(e.value) == (
        "tensorflow-datasets' GLUE needs TensorFlow: pip install tensorflow (or use data.source=dir)"
    )
