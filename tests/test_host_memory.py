"""rome_jax.host_memory: the re-exec with glibc malloc tunables, and that it removes
the page faults of XLA:CPU's per-call temporary buffers."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rome_jax import host_memory
from rome_jax.host_memory import wants_tunables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "environ, linux_glibc, accelerator, expected",
    [
        ({}, True, False, True),  # CPU-only JAX on glibc
        ({}, False, False, False),  # macOS, musl, Windows
        ({}, True, True, False),  # a CUDA/TPU plugin is installed
        ({"JAX_PLATFORMS": "cpu"}, True, True, True),  # ... but the user asked for the CPU
        ({"JAX_PLATFORMS": "cuda,cpu"}, True, False, False),
        ({"JAX_PLATFORMS": " CPU "}, True, False, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, True, False, False),  # the user's own
        ({"ROME_JAX_SYSTEM_MALLOC": "1"}, True, False, False),  # opted out
        ({"ROME_JAX_SYSTEM_MALLOC": "0"}, True, False, True),
        ({"ROME_JAX_MALLOC_REEXEC": "1"}, True, False, False),  # already re-executed once
    ],
)
def test_wants_tunables(environ, linux_glibc, accelerator, expected):
    assert wants_tunables(environ, linux_glibc=linux_glibc, accelerator=accelerator) is expected


# Runs a jitted program whose 256 MiB intermediate (an outer product through a dot, which
# XLA cannot fuse away) is a temporary buffer, and reports minor page faults per call.
_PROBE = textwrap.dedent("""
    import json, os, resource, sys
    sys.path.insert(0, {repo!r})
    if __name__ == "__main__":
        from rome_jax.host_memory import reexec_with_malloc_tunables
        reexec_with_malloc_tunables()
    import jax, jax.numpy as jnp
    x = jnp.ones((8192, 8), jnp.float32)
    f = jax.jit(lambda x: (x @ x.T) @ x[:, 0])
    for _ in range(20):  # the heap reaches its steady size within a few calls
        f(x).block_until_ready()
    per_call = []
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    faults = sorted(per_call)[4]  # the median: a rare call that still grows the heap faults in full
    print(json.dumps({{"pid": os.getpid(), "argv": sys.argv[1:], "faults": faults, "per_call": per_call,
                      "tunables": os.environ.get("GLIBC_TUNABLES")}}))
""")


def _probe(tmp_path, **env):
    script = tmp_path / "probe.py"
    script.write_text(_PROBE.format(repo=REPO))
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GLIBC_TUNABLES", "ROME_JAX_MALLOC_REEXEC", "ROME_JAX_SYSTEM_MALLOC")
    }
    environ.update(JAX_PLATFORMS="cpu", **env)
    out = subprocess.run(
        [sys.executable, str(script), "a", "b c"], env=environ, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not (sys.platform.startswith("linux") and host_memory._glibc()), reason="glibc only")
def test_reexec_applies_the_tunables_and_temporaries_stop_faulting(tmp_path):
    system = _probe(tmp_path, ROME_JAX_SYSTEM_MALLOC="1")
    tuned = _probe(tmp_path)
    assert system["tunables"] is None
    assert tuned["tunables"] == host_memory.TUNABLES
    assert tuned["argv"] == system["argv"] == ["a", "b c"]  # the command survives the re-exec
    # glibc maps and unmaps the 256 MiB temporary on every call (65536 pages of 4 KiB);
    # with the tunables freed memory is reused once the heap has grown to its steady
    # size (after 20 calls, 0 faults in nearly every call we measured; after 3 calls some
    # processes still faulted on 20-80% of the pages, and once a call after 20 grew the
    # heap and faulted in full, hence the median of 9 calls).
    assert system["faults"] > 30000, system
    assert tuned["faults"] < 0.05 * system["faults"], (tuned, system)
