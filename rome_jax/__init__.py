"""rome_jax: multi-exit BERT in JAX/Flax (RomeBERT, DeeBERT, PABEE, FastBERT)."""

from rome_jax.api import MultiExitModel, load_pretrained
from rome_jax.config import ModelConfig
from rome_jax.errors import CheckpointError, ConfigError, DataError, RomeError, TrainingError

__all__ = [
    "MultiExitModel", "load_pretrained", "ModelConfig",
    "RomeError", "ConfigError", "DataError", "CheckpointError", "TrainingError",
]
__version__ = "0.1.0"
