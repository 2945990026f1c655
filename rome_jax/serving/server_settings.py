"""What the Ray Serve deployment (`rome_jax.serving.ray_app`) serves and how, and the
Ray Serve options that follow from it. Plain Python: the settings are checked, and
read by tests, without importing Ray."""

from __future__ import annotations

import dataclasses
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What `build_app` serves and how.

    model_dir: an HF model directory (`save_pretrained`'s; a run's WORKDIR/model).
    criterion: as `predict`'s ("auto": the model's calibrated one, else full depth).
    max_batch_size / batch_wait_ms: `@serve.batch`'s: requests gathered per handler call,
      and how long the first one waits for more.
    rows_per_batch: texts per model batch inside a handler call (`predict`'s batch_size).
    max_texts / max_chars: a request's limits (413 beyond them).
    max_length: tokens per text (default: `predict`'s); long_texts: "truncate" or "refuse" (413).
    replicas, max_ongoing_requests, max_queued_requests: Ray Serve's, per deployment.
    max_replicas: above `replicas`, Ray Serve's autoscaling between the two, aiming at
      `max_batch_size` ongoing requests per replica (0: a fixed number of replicas).
    compile_at_start: compile every (length bucket, row bucket) program before the first
      request (`predict.compile_early_exit`), so that no request waits for XLA; False
      compiles one, the others on first use.
    threads: `OMP_NUM_THREADS` in each replica's process (0: the machine's CPUs). Ray
      sets it to 1 in a replica that reserves no more than one CPU, and XLA:CPU then
      runs its products on fewer threads (predict 1.5x slower on 2 cores).
    """

    model_dir: str
    criterion: str = "auto"
    max_batch_size: int = 64
    batch_wait_ms: float = 5.0
    rows_per_batch: int = 64
    max_texts: int = 256
    max_chars: int = 20000
    max_length: int | None = None
    long_texts: str = "truncate"
    replicas: int = 1
    max_replicas: int = 0
    max_ongoing_requests: int = 256
    max_queued_requests: int = 1024
    compile_at_start: bool = True
    threads: int = 0

    def __post_init__(self) -> None:
        if self.long_texts not in ("truncate", "refuse"):
            raise ValueError(f"long_texts must be truncate or refuse, not {self.long_texts!r}")
        for name in ("max_batch_size", "rows_per_batch", "max_texts", "max_chars", "replicas", "max_ongoing_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.max_replicas and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below replicas {self.replicas}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, not {self.threads}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, not {self.batch_wait_ms}")


def deployment_options(settings: ServerSettings) -> dict[str, Any]:
    """Ray Serve's `Deployment.options` for `settings`: a fixed number of replicas, or
    autoscaling between `replicas` and `max_replicas` aiming at `max_batch_size` ongoing
    requests per replica; the per-replica request limits; each replica's
    `OMP_NUM_THREADS` (`threads`, set before the replica's process imports JAX)."""
    replicas: dict[str, Any] = {"num_replicas": settings.replicas}
    if settings.max_replicas > settings.replicas:
        replicas = {
            "autoscaling_config": {
                "min_replicas": settings.replicas,
                "max_replicas": settings.max_replicas,
                "target_ongoing_requests": settings.max_batch_size,
            }
        }
    return {
        **replicas,
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "ray_actor_options": {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(replica_threads(settings))}}},
    }


def replica_threads(settings: ServerSettings) -> int:
    """The `OMP_NUM_THREADS` a replica runs with: `settings.threads`, else the CPUs."""
    return settings.threads or os.cpu_count() or 1
