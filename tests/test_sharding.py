"""rome_jax.sharding: the data-axis mesh, in this process (one CPU device) and in a
fresh process with four fake CPU devices."""

import os
import subprocess
import sys
import textwrap

import numpy as np

from rome_jax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_device_leaves_batches_and_params_as_given():
    assert sharding.local_mesh() is None
    arrays = {"input_ids": np.zeros((4, 8), np.int32)}
    params = {"w": np.ones(3)}
    assert sharding.shard_rows(arrays) is arrays
    assert sharding.replicate_params(params) is params
    placed_params, placed = sharding.place(params, arrays)
    assert placed_params is params and placed is arrays
    mesh = sharding.make_mesh()
    assert mesh.axis_names == (sharding.DATA_AXIS,) and mesh.size == 1


def test_four_local_devices_split_rows_that_divide_and_leave_the_others_on_one():
    script = textwrap.dedent("""
        import jax, numpy as np
        from rome_jax import sharding
        mesh = sharding.local_mesh()
        assert mesh is not None and mesh.size == 4 and mesh.axis_names == ("data",)
        assert [d.id for d in mesh.devices] == sorted(d.id for d in jax.local_devices())
        params = {"w": np.arange(6.0)}
        eight = {"input_ids": np.arange(16).reshape(8, 2)}
        placed_params, placed = sharding.place(params, eight)
        assert len(placed["input_ids"].sharding.device_set) == 4
        assert placed["input_ids"].addressable_shards[0].data.shape == (2, 2)
        np.testing.assert_array_equal(np.asarray(placed["input_ids"]), eight["input_ids"])
        assert placed_params["w"].sharding.is_fully_replicated
        assert sharding.replicate_params(params) is placed_params  # cached for the same tree
        three = {"input_ids": np.arange(6).reshape(3, 2)}
        p3, b3 = sharding.place(params, three)
        assert p3 is params and b3 is three  # 3 rows: one device runs them
        batch = sharding.shard_batch(eight, sharding.make_mesh())
        assert batch["input_ids"].sharding == sharding.batch_sharding(sharding.make_mesh())
        x = jax.numpy.ones(3)
        copy = sharding.replicate({"a": x}, sharding.make_mesh())
        assert copy["a"].sharding.is_fully_replicated and copy["a"] is not x
        print("ok")
    """)
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={
            **os.environ,
            "XLA_FLAGS": flags,
            "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": ROOT,
            "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR", "") + "-devices-4",  # conftest.py
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
