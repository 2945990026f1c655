"""glibc malloc settings that let XLA:CPU reuse its per-step buffers.

XLA:CPU allocates a step's temporary buffers when the step starts and frees them
when it ends: 1.7 GB for the MiniLM `joint` step at batch 32, length 128. glibc's
malloc serves blocks that large with `mmap` and returns them with `munmap`, so each
step faults its temporaries in afresh; on the 2-core machine of docs/performance.md
that was 438k minor page faults and 0.7 s of kernel time per 2 s step. With one
malloc arena, no `mmap` and no trimming, freed memory is reused instead: 0 faults,
kernel time 0.02 s, the step 4-15% faster in alternating runs (docs/performance.md,
"glibc malloc"). Small steps (the demo's batch 16, length 48) gain nothing.

glibc reads these settings (`GLIBC_TUNABLES`) only when a process starts, so
`train.py`, `eval.py` and the benchmarks call `reexec_with_malloc_tunables()` first
thing: it re-executes the same command with the variable set, once, and only where
it helps (Linux with glibc, JAX on the CPU, `GLIBC_TUNABLES` not already set).
`ROME_JAX_SYSTEM_MALLOC=1` turns it off. In a notebook or your own script, start
Python with `GLIBC_TUNABLES` set to `TUNABLES` to get the same effect.

This module imports nothing heavy: it runs before JAX is imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping

TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615"
OPT_OUT = "ROME_JAX_SYSTEM_MALLOC"
_MARKER = "ROME_JAX_MALLOC_REEXEC"
# Modules whose presence means JAX will pick an accelerator (device memory is
# pooled there; one malloc arena could slow a many-threaded input pipeline).
_ACCELERATOR_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def _glibc() -> bool:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return False
    return version is not None and version.startswith("glibc")


def _accelerator_installed() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_MODULES)


def wants_tunables(environ: Mapping[str, str], *, linux_glibc: bool, accelerator: bool) -> bool:
    """Whether to re-execute with `TUNABLES`: a CPU-only JAX on glibc, nothing set yet."""
    if not linux_glibc or _MARKER in environ or "GLIBC_TUNABLES" in environ:
        return False
    if environ.get(OPT_OUT, "").strip().lower() in ("1", "true", "yes"):
        return False
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not accelerator


def reexec_with_malloc_tunables() -> None:
    """Re-executes this process's command with `GLIBC_TUNABLES=TUNABLES`, when wanted.

    Returns normally when nothing is to be done (or when exec fails); otherwise does
    not return. Call it before anything starts threads or allocates much.
    """
    linux_glibc = sys.platform.startswith("linux") and _glibc()
    if not wants_tunables(os.environ, linux_glibc=linux_glibc, accelerator=linux_glibc and _accelerator_installed()):
        return
    os.environ["GLIBC_TUNABLES"] = TUNABLES
    os.environ[_MARKER] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    try:
        os.execv(sys.executable, [sys.executable, *argv[1:]])
    except OSError:  # e.g. no exec permission in a sandbox: run on with the system's malloc
        del os.environ["GLIBC_TUNABLES"]
