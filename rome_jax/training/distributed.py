"""Several processes, one run: joining JAX's distributed runtime, barriers, one writer.

`initialize` joins the runtime (`jax.distributed.initialize`) with a bounded wait:
a process that cannot reach the coordinator fails with one line naming the
address (a `ConfigError`), not a hang. Without an address, JAX's automatic cluster
detection fills in the settings (Cloud TPU VMs, SLURM, Open MPI, ...). On CPUs the
processes' collectives go through gloo (JAX's default; set explicitly so an
environment that changed the default still works).

Once joined, process 0 is the only writer of a workdir's files (config.json,
metrics.jsonl, tensorboard/, tokenizer/, model/, eval/); every process takes part
in orbax's checkpoint saves. `barrier(name)` lines the processes up where process 0
changes files the others then read. A stop requested by SIGTERM goes through JAX's
preemption service: every process stops at the same step (see
`preemption.StopSignals.should_stop`). Launching: docs/multihost.md.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import jax
from jax._src import distributed as jax_distributed  # the runtime's client and address
from jax.experimental import multihost_utils

from rome_jax.errors import ConfigError, first_line

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300
"""How long `initialize` waits for the coordinator and every process (JAX's default)."""


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    heartbeat_timeout_s: int | None = None,
) -> None:
    """Joins JAX's distributed runtime; unset settings come from cluster detection.

    Raises ConfigError (one line, naming the coordinator's address) when the settings
    are incomplete or the runtime cannot be joined within `timeout_s` seconds.
    """
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id must be in [0, {num_processes}), got {process_id}")
    if timeout_s < 1:
        raise ConfigError(f"--initialization_timeout must be >= 1 second, got {timeout_s}")
    # a flag with a context manager: read as an attribute, which JAX's type stubs do not list
    if jax.config.jax_cpu_collectives_implementation is None:  # type: ignore[attr-defined]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = dict(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=int(timeout_s),
    )
    if heartbeat_timeout_s:
        kwargs["heartbeat_timeout_seconds"] = int(heartbeat_timeout_s)
    where = coordinator_address or "the address found by JAX's cluster detection"
    if coordinator_address and process_id:  # JAX's client aborts the process when it times out
        wait_for_coordinator(coordinator_address, timeout_s)
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, TypeError) as e:  # settings missing and not detected
        raise ConfigError(
            f"cannot join JAX's distributed runtime: {first_line(e)} (pass "
            "--coordinator_address, --num_processes and --process_id, or run where "
            "JAX detects the cluster: docs/multihost.md)"
        ) from None
    except Exception as e:  # the coordinator unreachable, or a process missing, in time
        address = getattr(_global_state(), "coordinator_address", None) or where
        raise ConfigError(
            f"cannot join JAX's distributed runtime at {address} within {timeout_s} s ({_reason(e)})"
        ) from None
    logger.info(
        "joined JAX's distributed runtime at %s: process %d of %d, %d local device(s)",
        _global_state().coordinator_address,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
    )


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Waits until `address` (HOST:PORT) accepts a TCP connection, or raises ConfigError
    naming it once `timeout_s` seconds have passed (JAX's own client would instead
    abort the process, a core dump and no word of the address, when it times out)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ConfigError(f"--coordinator_address {address!r} is not HOST:PORT")
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=max(min(left, 5.0), 0.1)):
                return
        except OSError as e:
            if left <= 0:
                raise ConfigError(
                    f"cannot reach JAX's coordinator at {address} within {timeout_s:g} s "
                    f"({e.strerror or type(e).__name__}): is process 0 started, and the "
                    "address right and reachable from here?"
                ) from None
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))


def _reason(error: BaseException) -> str:
    text = first_line(error, limit=160)
    for marker in ("DEADLINE_EXCEEDED", "UNAVAILABLE", "Barrier timed out"):
        if marker in str(error):
            return f"{marker}: is every process started, and the address reachable?"
    return text or type(error).__name__


def is_multiprocess() -> bool:
    return jax.process_count() > 1


_BARRIERS: dict[str, int] = {}


def barrier(name: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
    """Waits until every process reaches the barrier `name` (a no-op with one process)."""
    if jax.process_count() == 1:
        return
    client = _global_state().client
    if client is None:  # processes without the runtime's client: a collective barrier
        multihost_utils.sync_global_devices(name)
        return
    count = _BARRIERS[name] = _BARRIERS.get(name, 0) + 1  # every process passes the same ones
    try:
        client.wait_at_barrier(f"rome_jax:{name}:{count}", int(timeout_s * 1000))
    except Exception as e:
        raise ConfigError(
            f"process {jax.process_index()} waited {timeout_s} s at {name!r} for the "
            f"other processes, which did not come ({_reason(e)}); see process 0's "
            "error"
        ) from None


def _global_state() -> jax_distributed.State:
    return jax_distributed.global_state
