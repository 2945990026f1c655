"""Tokenization (rome_jax.data.features): padding, truncation, the feature cache and
the tokenizer fingerprint, also through the inference API's tokenize.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rome_jax.data.examples import Examples, load_examples
from rome_jax.data.features import tokenize_examples, tokenizer_fingerprint

# The fixture-file helpers of test_data_examples.py, for the TSV round-trip property.


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def tsv(*fields: str) -> str:
    return "\t".join(fields)


# ----------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def pair_examples(a, b, task="rte"):
    n = len(a)
    return Examples(
        text_a=list(a),
        text_b=None if b is None else list(b),
        labels=np.zeros(n, np.int32),
        index=np.arange(n),
        task=task,
        split="dev",
    )


def test_tokenize_pairs_and_padding(tokenizer):
    features = tokenize_examples(pair_examples(["hello world"], ["how are you"]), tokenizer, 12)
    tokens = tokenizer.convert_ids_to_tokens(features.input_ids[0][:8].tolist())
    assert tokens == ["[CLS]", "hello", "world", "[SEP]", "how", "are", "you", "[SEP]"]
    assert features.input_ids.dtype == np.int32 and features.input_ids.shape == (1, 12)
    assert features.input_ids[0, 8:].tolist() == [tokenizer.pad_token_id] * 4
    assert features.attention_mask[0].tolist() == [1] * 8 + [0] * 4
    assert features.token_type_ids[0].tolist() == [0] * 4 + [1] * 4 + [0] * 4
    single = tokenize_examples(pair_examples(["hello world"], None, "sst2"), tokenizer, 6)
    assert single.token_type_ids.sum() == 0 and single.attention_mask[0].tolist() == [1] * 4 + [0] * 2


def test_tokenize_truncates_longest_first(tokenizer):
    long = " ".join(["word"] * 50)
    features = tokenize_examples(pair_examples([long], ["short answer"]), tokenizer, 16)
    tokens = tokenizer.convert_ids_to_tokens(features.input_ids[0].tolist())
    assert features.attention_mask.all() and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    assert tokens[-3:-1] == ["short", "answer"]  # the longer text lost the tokens
    assert tokens.count("word") == 16 - 5


def test_tokenize_matches_tokenizer_on_real_rows(glue_dir, tokenizer):
    examples = load_examples("rte", "dev", data_dir=glue_dir, max_examples=16)
    features = tokenize_examples(examples, tokenizer, 64)
    expected = tokenizer(examples.text_a, examples.text_b, max_length=64, truncation=True, padding="max_length")
    np.testing.assert_array_equal(features.input_ids, expected["input_ids"])
    np.testing.assert_array_equal(features.token_type_ids, expected["token_type_ids"])
    np.testing.assert_array_equal(features.labels, examples.labels)
    np.testing.assert_array_equal(features.index, examples.index)


def test_tokenize_cache_hit_skips_tokenizer(tokenizer, tmp_path, monkeypatch):
    examples = pair_examples(["a cat", "a dog sat"], ["it sat", "it ran"])
    first = tokenize_examples(examples, tokenizer, 10, cache_dir=tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].endswith(".npz") and files[0].startswith("rte-dev-")

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized although the cache holds the features")

    monkeypatch.setattr(type(tokenizer), "__call__", refuse)
    second = tokenize_examples(examples, tokenizer, 10, cache_dir=tmp_path)
    for key, value in first.arrays().items():
        np.testing.assert_array_equal(getattr(second, key), value)
    with pytest.raises(AssertionError, match="tokenized"):  # other max_length: a miss
        tokenize_examples(examples, tokenizer, 11, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="tokenized"):  # other texts: a miss
        tokenize_examples(pair_examples(["a cat", "a dog"], ["it sat", "it ran"]), tokenizer, 10, cache_dir=tmp_path)
    monkeypatch.undo()
    (tmp_path / files[0]).write_bytes(b"truncated")  # a broken cache is rebuilt
    third = tokenize_examples(examples, tokenizer, 10, cache_dir=tmp_path)
    np.testing.assert_array_equal(third.input_ids, first.input_ids)
    assert sorted(os.listdir(tmp_path)) == files  # no temporary files left behind


def test_fingerprint_ignores_call_state(tokenizer):
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["x y"], max_length=5, truncation=True, padding="max_length")
    assert tokenizer_fingerprint(tokenizer) == before


def test_tokenizer_without_token_type_ids(tokenizer):
    class NoTypes:  # like RoBERTa's tokenizer
        name_or_path = "no-types"

        def __call__(self, *args, **kwargs):
            encoded = dict(tokenizer(*args, **kwargs))
            encoded.pop("token_type_ids")
            return encoded

        def get_vocab(self):
            return {"a": 0}

    features = tokenize_examples(pair_examples(["a"], ["b"]), NoTypes(), 8, cache_dir=None)
    assert features.token_type_ids.shape == (1, 8) and not features.token_type_ids.any()
    assert features.attention_mask.sum() == 5


# ------------------------------------------------------------------------ properties

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"), max_size=40)


@settings(max_examples=40, deadline=None)
@given(a=TEXT, b=TEXT)
def test_any_text_survives_a_tsv_row(tokenizer, a, b):
    with tempfile.TemporaryDirectory() as root:
        write(
            Path(root) / "RTE" / "train.tsv",
            ["index\tsentence1\tsentence2\tlabel", tsv("0", a, b, "entailment"), tsv("1", b, a, "not_entailment")],
        )
        examples = load_examples("rte", "train", data_dir=root, max_examples=2)
        assert examples.text_a == [a, b] and examples.text_b == [b, a]
        features = tokenize_examples(examples, tokenizer, 16)
        assert features.input_ids.shape == (2, 16) and features.attention_mask[:, 0].all()


def test_tokenize_refuses_a_string_and_unpaired_pairs(minilm_path):
    from rome_jax.encoder.config import ModelConfig
    from rome_jax.serving.api import MultiExitModel, load_tokenizer

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

    from rome_jax.serving.api import load_tokenizer

    code = (
        "import sys; from rome_jax.serving.api import load_tokenizer; "
        "from rome_jax.training.metrics_log import _summary_writer_class; "
        f"load_tokenizer({minilm_path!r}); w = _summary_writer_class()({str(tmp_path / 'tb')!r}); "
        "w.add_scalar('x', 1.0, 1); w.close(); print('torch' in sys.modules); import torch; print(torch.ones(1).item())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
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
