"""The module paths of version 0.1 still import (rome_jax/_moved.py), as the same module
objects as their new homes, with a DeprecationWarning naming the new path; the package's
public names are unchanged."""

import importlib
import subprocess
import sys

import pytest

import rome_jax
from rome_jax._moved import MOVED


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_path_is_the_new_module(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_old_names_the_users_imported_still_resolve():
    for old in ("rome_jax.api", "rome_jax.checkpoints", "rome_jax.trainer"):
        sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning):
        from rome_jax.api import load_pretrained  # noqa: F401
        from rome_jax.checkpoints import params_mismatch  # noqa: F401
        from rome_jax.trainer import train_and_evaluate  # noqa: F401
    from rome_jax.exits import CRITERIA, Criterion, simulate  # the package re-exports the criteria

    assert "entropy" in CRITERIA and Criterion("entropy", 0.1).name == "entropy" and callable(simulate)


def test_the_public_names():
    assert {"load_pretrained", "MultiExitModel", "ModelConfig", "RomeError", "ConfigError", "DataError"} <= set(
        rome_jax.__all__
    )
    assert rome_jax.load_pretrained is importlib.import_module("rome_jax.serving.api").load_pretrained


def test_importing_the_package_loads_no_jax():
    code = "import sys, rome_jax, rome_jax.host_memory; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
