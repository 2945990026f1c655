"""Tagged sentences (`rome_jax.data.tagging`): readers, the tag set, strict IOB2 checks,
and the alignment of words to the real MiniLM WordPiece sub-tokens."""

import json
import logging
import os
import pathlib

import numpy as np
import pytest

from rome_jax.data.tagging import (
    TOKEN_IGNORE,
    align,
    check_tags,
    read_conll,
    read_hf,
    read_jsonl,
    read_tagged_file,
    tag_set,
    word_predictions,
)
from rome_jax.errors import ConfigError, DataError

REPO = pathlib.Path(__file__).resolve().parent.parent
X = TOKEN_IGNORE

SENTENCE = ["Lufthansa", "flights", "to", "New", "York", "are", "unaffordable", "."]
SENTENCE_TAGS = ["B-ORG", "O", "O", "B-LOC", "I-LOC", "O", "O", "O"]
TAG_NAMES = ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG")  # O=0 B-LOC=1 I-LOC=2 B-ORG=3 I-ORG=4


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def conll_dir() -> str:
    return os.environ.get("CONLL_DIR", str(REPO.parent / "shared" / "conll2003"))


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text, encoding="utf-8")
    return path


def conll_text(sentences, tags=None) -> str:
    blocks = []
    for k, words in enumerate(sentences):
        blocks.append("\n".join(w if tags is None else f"{w} {t}" for w, t in zip(words, tags[k] if tags else words)))
    return "\n\n".join(blocks) + "\n"


def one_line_error(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------- alignment


def test_alignment_hand_worked(tmp_path, tokenizer):
    # WordPiece: Lufthansa -> lu ##ft ##han ##sa, unaffordable -> una ##ff ##ord ##able
    path = write(tmp_path / "one.txt", conll_text([SENTENCE, ["Bonn"]], [SENTENCE_TAGS, ["B-LOC"]]))
    tagged = align(read_conll(path), tokenizer, TAG_NAMES, 20)
    f = tagged.features
    #          [CLS]  lu    ##ft  ##han ##sa  flights to    new   york  are   una    ##ff  ##ord ##able .     [SEP] pad
    ids = [101, 11320, 6199, 4819, 3736, 7599, 2000, 2047, 2259, 2024, 14477, 4246, 8551, 3085, 1012, 102]
    np.testing.assert_array_equal(f.input_ids[0], ids + [0] * 4)
    np.testing.assert_array_equal(f.attention_mask[0], [1] * 16 + [0] * 4)
    np.testing.assert_array_equal(f.token_type_ids, 0)
    np.testing.assert_array_equal(tagged.word_ids[0], [-1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 7] + [-1] * 5)
    np.testing.assert_array_equal(f.labels[0], [X, 3, X, X, X, 0, 0, 1, 2, 0, 0, X, X, X, 0] + [X] * 5)
    np.testing.assert_array_equal(f.labels[1], [X, 1] + [X] * 18)  # bonn: one piece
    assert f.labels.dtype == np.int32 and f.input_ids.dtype == np.int32 and tagged.word_ids.dtype == np.int32
    assert f.has_labels and f.index.dtype == np.int64 and list(f.index) == [0, 1]
    assert list(tagged.num_words) == [8, 1] and list(tagged.kept_words) == [8, 1] and tagged.truncated == 0

    words = word_predictions(f.labels, tagged, fill=0)
    assert [w.tolist() for w in words] == [[3, 0, 0, 1, 2, 0, 0, 0], [1]]

    sub = tagged.subset(np.asarray([1]))
    assert len(sub) == 1 and list(sub.features.index) == [1] and list(sub.num_words) == [1]


def test_truncation_keeps_the_first_words_and_fills_the_rest(tmp_path, tokenizer, caplog):
    path = write(tmp_path / "long.txt", conll_text([SENTENCE, ["Bonn"]], [SENTENCE_TAGS, ["B-LOC"]]))
    sentences = read_conll(path)
    with caplog.at_level(logging.WARNING, logger="rome_jax.data.tagging"):
        tagged = align(sentences, tokenizer, TAG_NAMES, 8)
    # [CLS] lu ##ft ##han ##sa flights to [SEP]: 3 words keep a position, 5 do not
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 of 2 sentences" in warnings[0] and "last 5 words" in warnings[0]
    assert list(tagged.kept_words) == [3, 1] and list(tagged.num_words) == [8, 1] and tagged.truncated == 1
    np.testing.assert_array_equal(tagged.features.labels[0], [X, 3, X, X, X, 0, 0, X])
    np.testing.assert_array_equal(tagged.word_ids[0], [-1, 0, 0, 0, 0, 1, 2, -1])

    positions = np.arange(8)[None, :] + 100 * np.arange(2)[:, None]
    words = word_predictions(positions, tagged, fill=-1)
    assert [w.tolist() for w in words] == [[1, 5, 6, -1, -1, -1, -1, -1], [101]]
    ids = word_predictions(tagged.features.labels, tagged, fill=TAG_NAMES.index("O"))
    assert ids[0].tolist() == [3, 0, 0, 0, 0, 0, 0, 0]  # truncated words count as "O"
    probs = np.zeros((2, 8, 5), np.float32)
    probs[:, :, 3] = 1.0
    out = word_predictions(probs, tagged, fill=np.eye(5, dtype=np.float32)[0])
    assert out[0].shape == (8, 5) and out[0][:3, 3].tolist() == [1, 1, 1] and out[0][3:, 0].tolist() == [1] * 5
    with pytest.raises(ValueError, match="shape"):
        word_predictions(probs[:, :4], tagged, fill=0)

    # a word cut inside: its first sub-token fits, so it is kept
    cut = align(sentences, tokenizer, TAG_NAMES, 4)  # [CLS] lu ##ft [SEP]
    assert list(cut.kept_words) == [1, 1] and cut.features.labels[0].tolist() == [X, 3, X, X]


def test_unlabelled_sentences(tmp_path, tokenizer):
    path = write(tmp_path / "plain.conll", conll_text([SENTENCE, ["Bonn"]]))
    sentences = read_conll(path)
    assert sentences.tags is None and sentences.words[1] == ("Bonn",) and sentences.lines == (1, 10)
    tagged = align(sentences, tokenizer, TAG_NAMES, 20)
    assert not tagged.features.has_labels and (tagged.features.labels == X).all()
    with pytest.raises(DataError, match="no tags"):
        tag_set(sentences)


# --------------------------------------------------------------------- readers


def test_conll_reader_layout(tmp_path):
    text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n\nPeter NNP B-NP B-PER\n"
    text += "Blackburn NNP I-NP I-PER"
    sentences = read_conll(write(tmp_path / "c.txt", text))  # no final blank line nor line end
    assert sentences.words == (("EU", "rejects"), ("Peter", "Blackburn"))
    assert sentences.tags == (("B-ORG", "O"), ("B-PER", "I-PER"))
    assert sentences.lines == (3, 8) and sentences.index.tolist() == [0, 1] and len(sentences) == 2
    assert read_conll(tmp_path / "c.txt", tag_column=2).tags == (("B-NP", "B-VP"), ("B-NP", "I-NP"))
    assert tag_set(sentences) == ("O", "B-ORG", "I-ORG", "B-PER", "I-PER")
    sub = sentences.subset([1])
    assert sub.words == (("Peter", "Blackburn"),) and sub.lines == (8,) and sub.index.tolist() == [1]


def test_real_conll_train():
    path = pathlib.Path(conll_dir()) / "train.txt"
    if not path.is_file():
        pytest.skip(f"CoNLL-2003 not found at {path} (set CONLL_DIR)")
    sentences = read_conll(path)
    assert len(sentences) == 14041 and sum(len(w) for w in sentences.words) == 203621
    assert tag_set(sentences) == ("O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER")
    check_tags(sentences, tag_set(sentences))


SMALL_WORDS = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["BRUSSELS", "1996-08-22"]]
SMALL_TAGS = [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"], ["B-LOC", "O"]]


def same(a, b):
    assert a.words == b.words and a.tags == b.tags and a.index.tolist() == b.index.tolist()


def test_jsonl_and_hf_read_the_same_as_conll(tmp_path, monkeypatch):
    conll = read_tagged_file(write(tmp_path / "small.iob", conll_text(SMALL_WORDS, SMALL_TAGS)))
    names = list(tag_set(conll))
    rows = [json.dumps({"tokens": w, "tags": t}) for w, t in zip(SMALL_WORDS, SMALL_TAGS)]
    jsonl = read_tagged_file(write(tmp_path / "small.jsonl", "\n".join(rows) + "\n\n"))
    same(jsonl, conll)
    assert jsonl.lines == (1, 2, 3)
    ids = [json.dumps({"words": w, "ner": [names.index(x) for x in t]}) for w, t in zip(SMALL_WORDS, SMALL_TAGS)]
    path = write(tmp_path / "ids.data", "\n".join(ids))
    same(read_jsonl(path, tokens_key="words", tags_key="ner", tag_names=names), conll)
    with pytest.raises(DataError, match="no key 'tokens'"):
        read_tagged_file(path, "jsonl")  # the format given: .data read as JSON Lines

    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    data = {"tokens": SMALL_WORDS, "ner_tags": [[names.index(x) for x in t] for t in SMALL_TAGS]}
    dataset = datasets.Dataset.from_dict(data, features=features)
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved"))
    hf, class_names = read_hf(tmp_path / "saved", "train")
    same(hf, conll)
    assert class_names == tuple(names) and hf.lines == (0, 0, 0)
    with pytest.raises(DataError, match="no split 'validation'"):
        read_hf(tmp_path / "saved", "validation")

    (tmp_path / "files").mkdir()  # plain data files, read by load_dataset: string tags, no ClassLabel
    write(tmp_path / "files" / "train.jsonl", "\n".join(rows) + "\n")
    hf, class_names = read_hf(tmp_path / "files", "train", tags_column="tags")
    same(hf, conll)
    assert class_names is None

    bad = datasets.Dataset.from_dict({"tokens": [["a"], []], "ner_tags": [[0], []]}, features=features)
    bad.save_to_disk(str(tmp_path / "bad"))  # a single Dataset: used whatever split is named
    with pytest.raises(DataError) as e:
        read_hf(tmp_path / "bad", "test")
    assert one_line_error(e).startswith(f"{tmp_path / 'bad'} test, row 2: empty sentence")
    with pytest.raises(DataError, match="no column 'words'"):
        read_hf(tmp_path / "bad", "test", tokens_column="words")


# --------------------------------------------------------------------- bad input: one line, file and line


def test_conll_errors(tmp_path):
    path = write(tmp_path / "bad.txt", "EU B-ORG\nrejects\n")
    with pytest.raises(DataError) as e:
        read_conll(path)
    assert one_line_error(e).startswith(f"{path}, line 2: no tag")
    for text in ("", "\n\n-DOCSTART- O\n\n"):
        with pytest.raises(DataError, match="no sentence"):
            read_conll(write(tmp_path / "empty.txt", text))
    with pytest.raises(ConfigError, match="missing tagged data file"):
        read_tagged_file(tmp_path / "absent.txt")
    with pytest.raises(ConfigError, match="unknown tagged data format '.csv'"):
        read_tagged_file(tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="unknown tagged data format 'xml'"):
        read_tagged_file(path, "xml")


def test_tag_errors(tmp_path):
    path = write(tmp_path / "t.txt", "EU B-ORG\nrejects O\n\nthe O\nsays B-FOO\n")
    sentences = read_conll(path)
    with pytest.raises(DataError) as e:
        check_tags(sentences, TAG_NAMES)
    assert one_line_error(e) == (f"{path}, line 5: tag 'B-FOO' is not in the tag set (O, B-LOC, I-LOC, B-ORG, I-ORG)")
    with pytest.raises(DataError) as e:
        tag_set(read_conll(write(tmp_path / "e.txt", "EU B-ORG\n\nPeter E-PER\n")))
    assert one_line_error(e) == f"{tmp_path / 'e.txt'}, line 3: tag 'E-PER' is not IOB2 (O, B-TYPE or I-TYPE)"


def test_iob2_refusal(tmp_path, tokenizer):
    path = write(tmp_path / "iob1.txt", "EU B-ORG\n\nthe O\nvisit O\nof O\nPeter I-PER\n")
    names = ("O", "B-ORG", "I-ORG", "B-PER", "I-PER")
    with pytest.raises(DataError) as e:
        align(read_conll(path), tokenizer, names, 16)
    assert one_line_error(e).startswith(
        f"{path}, line 6: I-PER follows O; IOB2 needs B-PER to open an entity (IOB1 data: convert it first"
    )
    for text, message in (("Peter I-PER\n", "line 1: I-PER opens the sentence"), ("a B-ORG\nb I-PER", "follows B-ORG")):
        with pytest.raises(DataError, match=message):
            check_tags(read_conll(write(tmp_path / "x.txt", text)), names)


def test_jsonl_errors(tmp_path):
    cases = [
        ('{"tokens": ["a"], "tags": ["O"]}\n{"tokens": [], "tags": []}', "line 2: empty sentence"),
        ('{"tokens": ["a"], "tags": ["O"]}\n\n{"tokens": ["a"], "tags": ["O"]', "line 3: not valid JSON"),
        ('{"tokens": ["a"], "tags": ["O"]}\n{"words": ["a"]}', "line 2: no key 'tokens'"),
        ('{"tokens": ["a", "b"], "tags": ["O"]}', "line 1: 2 words in 'tokens' but 1 tags"),
        ('{"tokens": ["a", 3], "tags": ["O", "O"]}', "line 1: word 2 \\(3\\) of 'tokens' is not a non-empty string"),
        ('{"tokens": ["a", ""], "tags": ["O", "O"]}', "line 1: word 2 .* is not a non-empty string"),
        ('{"tokens": ["a"], "tags": [0]}', "line 1: tag 1 is the number 0; give tag_names"),
        ('{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a"]}', "line 2: no 'tags' \\(other sentences have them\\)"),
        ("[1, 2]", "line 1: expected a JSON object"),
        ("\n\n", "no sentence"),
    ]
    for k, (text, message) in enumerate(cases):
        path = write(tmp_path / f"bad{k}.jsonl", text)
        with pytest.raises(DataError) as e:
            read_jsonl(path)
        assert str(path) in one_line_error(e)
        assert e.match(message), (text, str(e.value))
    with pytest.raises(DataError, match="line 1: tag 1 is 7, outside the 5 tag names"):
        read_jsonl(write(tmp_path / "ids.jsonl", '{"tokens": ["a"], "tags": [7]}'), tag_names=TAG_NAMES)
    unlabelled = read_jsonl(write(tmp_path / "plain.jsonl", '{"tokens": ["a", "b"]}\n{"tokens": ["c"]}'))
    assert unlabelled.tags is None and unlabelled.words == (("a", "b"), ("c",))


def test_a_word_with_no_sub_token(tmp_path, tokenizer):
    assert tokenizer(["\u200b"], is_split_into_words=True, add_special_tokens=False)["input_ids"] == []
    path = write(tmp_path / "zw.txt", "EU B-ORG\n\nthe O\n\u200b O\nvisit O\n")
    with pytest.raises(DataError) as e:
        align(read_conll(path), tokenizer, ("O", "B-ORG", "I-ORG"), 16)
    assert one_line_error(e).startswith(f"{path}, line 4: word 2 '\\u200b' maps to no sub-token")
    # at the end of a sentence, and past the truncation limit: still refused
    path = write(tmp_path / "tail.txt", "the O\nvisit O\n\x7f O\n")
    for max_length in (16, 3):
        with pytest.raises(DataError, match=f"{path}, line 3: word 3 '\\\\x7f' maps to no sub-token"):
            align(read_conll(path), tokenizer, ("O",), max_length)
    path = write(tmp_path / "zw.jsonl", '{"tokens": ["a"]}\n{"tokens": ["a", "\\u200b"]}\n')
    with pytest.raises(DataError, match=f"{path}, line 2: word 2 "):
        align(read_jsonl(path), tokenizer, ("O",), 16)


def test_align_settings(tmp_path, tokenizer):
    sentences = read_conll(write(tmp_path / "s.txt", "EU B-ORG\n"))
    with pytest.raises(ConfigError, match="max_length must be at least 3"):
        align(sentences, tokenizer, ("O", "B-ORG", "I-ORG"), 2)
