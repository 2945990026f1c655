"""Old module paths, kept importable: `import rome_jax.api` gives `rome_jax.serving.api`.

Until version 0.2 the package was one flat folder; its modules now live in packages by
role (CHANGELOG.md lists every move). A finder on `sys.meta_path` answers an old name
with the module at its new home (the same module object, so patching either name
patches both) and a `DeprecationWarning` naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    "rome_jax.model_config": "rome_jax.encoder.config",
    "rome_jax.ops": "rome_jax.encoder.ops",
    "rome_jax.model": "rome_jax.encoder.model",
    "rome_jax.hf_io": "rome_jax.encoder.hf_io",
    "rome_jax.flops": "rome_jax.encoder.flops",
    "rome_jax.glue": "rome_jax.data.glue",
    "rome_jax.tasks": "rome_jax.data.tasks",
    "rome_jax.metrics": "rome_jax.data.metrics",
    "rome_jax.inference": "rome_jax.exits.executors",
    "rome_jax.calibration": "rome_jax.exits.calibration",
    "rome_jax.evaluation": "rome_jax.exits.evaluation",
    "rome_jax.api": "rome_jax.serving.api",
    "rome_jax.predict": "rome_jax.serving.predict",
    "rome_jax.predict_io": "rome_jax.serving.files",
    "rome_jax.export": "rome_jax.serving.export",
    "rome_jax.run_config": "rome_jax.config.run_config",
    "rome_jax.train_step": "rome_jax.training.step",
    "rome_jax.losses": "rome_jax.training.losses",
    "rome_jax.projection": "rome_jax.training.projection",
    "rome_jax.optim": "rome_jax.training.optim",
    "rome_jax.checkpoints": "rome_jax.training.checkpoints",
    "rome_jax.distributed": "rome_jax.training.distributed",
    "rome_jax.trainer": "rome_jax.training.trainer",
    "rome_jax.glue_runner": "rome_jax.experiments.glue_runner",
    "rome_jax.leaderboard": "rome_jax.experiments.leaderboard",
    "rome_jax.ablation": "rome_jax.experiments.ablation",
    "rome_jax.cli": "rome_jax.commands.cli",
}
"""Old module path -> new module path. (`rome_jax.exits` became a package that
re-exports the criteria, so it needs no alias.)"""


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}", DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The module was executed under its new name already."""


def install() -> None:
    """Puts the finder on `sys.meta_path` (once)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
