"""Serves a model over HTTP on Ray Serve, with early exit inside dynamic batches.

    python serve.py --workdir=runs/sst2 --port=8000 --replicas=1 --max_batch_size=64 --batch_wait_ms=5
    python serve.py --model=path/to/hf_dir --criterion=entropy:0.3
    curl -s localhost:8000/ -d '{"texts": ["a gem of a film", "dull and long"]}'

Routes, request and answer formats: `rome_jax.serving.ray_app` (POST / with one text, a
pair or lists; GET /health, /info, /stats). Without --address it starts a Ray instance
on this machine; `--address=auto` (or `ray://host:10001`) joins a running Ray cluster,
whose replicas then spread over its machines. Runs until interrupted (Ctrl-C).
"""

from __future__ import annotations

import os

from absl import flags

from rome_jax.commands import cli
from rome_jax.errors import CheckpointError, ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir: its exported model (WORKDIR/model).")
_MODEL = flags.DEFINE_string("model", None, "Instead of --workdir: an HF model directory.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
_PORT = flags.DEFINE_integer("port", 8000, "HTTP port.")
_CRITERION = flags.DEFINE_string(
    "criterion", "auto", "auto (the model's calibrated threshold, else full depth), none, or e.g. entropy:0.3."
)
_REPLICAS = flags.DEFINE_integer("replicas", 1, "Replicas of the model (the least, with --max_replicas).")
_MAX_REPLICAS = flags.DEFINE_integer(
    "max_replicas", 0, "Above --replicas: autoscale up to this many replicas with the load (0: fixed)."
)
_MAX_BATCH_SIZE = flags.DEFINE_integer("max_batch_size", 64, "Requests gathered into one handler call.")
_BATCH_WAIT_MS = flags.DEFINE_float("batch_wait_ms", 5.0, "How long the first request of a batch waits for more.")
_ROWS = flags.DEFINE_integer("rows_per_batch", 64, "Texts per model batch inside a handler call.")
_MAX_TEXTS = flags.DEFINE_integer("max_texts", 256, "Texts per request at most (413 beyond).")
_MAX_CHARS = flags.DEFINE_integer("max_chars", 20000, "Characters per text at most (413 beyond).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", None, "Tokens per text (default: the calibration's, else 512).")
_LONG = flags.DEFINE_enum("long_texts", "truncate", ["truncate", "refuse"], "Texts over max_length tokens.")
_MAX_ONGOING = flags.DEFINE_integer("max_ongoing_requests", 256, "Requests a replica runs at once.")
_MAX_QUEUED = flags.DEFINE_integer("max_queued_requests", 1024, "Requests waiting beyond those (503 beyond).")
_ADDRESS = flags.DEFINE_string("address", None, "A running Ray cluster to join (auto, or ray://host:port).")
_COMPILE = flags.DEFINE_bool(
    "compile_at_start", True, "Compile every length and row bucket before serving (no request waits for XLA)."
)
_NUM_CPUS = flags.DEFINE_integer("num_cpus", None, "CPUs of the local Ray instance (default: all).")
_THREADS = flags.DEFINE_integer(
    "threads", 0, "OMP_NUM_THREADS of each replica (0: the machine's CPUs; Ray would set 1, slowing XLA:CPU)."
)


def model_dir_of(workdir: str | None, model: str | None) -> str:
    if bool(workdir) == bool(model):
        raise ConfigError("give either --workdir (a train.py run) or --model (an HF directory)")
    path = os.path.join(workdir, "model") if workdir else str(model)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path}: no exported model (config.json); train.py writes WORKDIR/model at the end")
    return os.path.abspath(path)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    from rome_jax.serving.server_settings import ServerSettings

    try:
        settings = ServerSettings(
            model_dir=model_dir_of(_WORKDIR.value, _MODEL.value),
            criterion=_CRITERION.value,
            max_batch_size=_MAX_BATCH_SIZE.value,
            batch_wait_ms=_BATCH_WAIT_MS.value,
            rows_per_batch=_ROWS.value,
            max_texts=_MAX_TEXTS.value,
            max_chars=_MAX_CHARS.value,
            max_length=_MAX_LENGTH.value,
            long_texts=_LONG.value,
            replicas=_REPLICAS.value,
            max_replicas=_MAX_REPLICAS.value,
            max_ongoing_requests=_MAX_ONGOING.value,
            max_queued_requests=_MAX_QUEUED.value,
            compile_at_start=_COMPILE.value,
            threads=_THREADS.value,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    start(settings, host=_HOST.value, port=_PORT.value, address=_ADDRESS.value, num_cpus=_NUM_CPUS.value)
    return 0


def start(
    settings,
    *,
    host: str,
    port: int,
    address: str | None = None,
    num_cpus: int | None = None,
    block: bool = True,
    object_store_memory: int | None = None,
):
    """Starts Ray (or joins `address`), Serve on host:port and the app; with `block`,
    serves until interrupted."""
    from ray import serve

    from rome_jax.serving.ray_app import build_app

    start_serve(host=host, port=port, address=address, num_cpus=num_cpus, object_store_memory=object_store_memory)
    serve.run(build_app(settings), name="rome_jax", route_prefix="/", blocking=False)
    print(f"serving {settings.model_dir} at http://{host}:{port}/ (GET /health, /info, /stats)", flush=True)
    if block:
        import time

        try:
            while True:
                time.sleep(3600)
        finally:
            serve.shutdown()


def start_serve(
    *,
    host: str,
    port: int,
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
) -> None:
    """Ray (a local instance, or the cluster at `address`) and Ray Serve's HTTP proxy on
    host:port. `object_store_memory` (bytes) caps a local instance's shared-memory
    object store (Ray's default takes 30% of the machine's memory; the server passes
    only small requests and answers through it)."""
    import ray
    from ray import serve

    # A proxy that imports Ray Serve on a loaded machine can take more than Ray's 5 s to
    # report ready; Ray then kills and restarts it forever. Slow hosts get a minute.
    for name in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        os.environ.setdefault(name, "60")
    if not ray.is_initialized():
        ray.init(
            address=address,
            num_cpus=num_cpus,
            object_store_memory=None if address else object_store_memory,
            include_dashboard=False,
            log_to_driver=False,
        )
    serve.start(http_options={"host": host, "port": port})


def run() -> None:
    """The entry point: `python serve.py`, `python -m rome_jax.commands.serve`."""
    cli.run_main(main)


if __name__ == "__main__":
    run()
