"""rome_jax: multi-exit BERT in JAX/Flax (RomeBERT, DeeBERT, PABEE, FastBERT).

The names below load on first use, so `import rome_jax.host_memory` (which the
command-line scripts run before JAX starts) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from rome_jax import _moved

_EXPORTS = {
    "MultiExitModel": "rome_jax.serving.api",
    "load_pretrained": "rome_jax.serving.api",
    "ModelConfig": "rome_jax.encoder.config",
    "RomeError": "rome_jax.errors",
    "ConfigError": "rome_jax.errors",
    "DataError": "rome_jax.errors",
    "CheckpointError": "rome_jax.errors",
    "TrainingError": "rome_jax.errors",
}
__all__ = list(_EXPORTS)

_moved.install()  # old module paths (rome_jax.api, rome_jax.trainer, ...) still import
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rome_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
