"""Checkpoints: round trip, retention, incomplete and damaged steps, models that do not fit."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rome_jax.errors import CheckpointError
from rome_jax.training import checkpoints
from rome_jax.training.optim import make_optimizer
from rome_jax.training.step import create_train_state


def make_state(seed=0, width=4):
    rng = np.random.RandomState(seed)
    params = {
        "layers": {
            "kernel": jnp.asarray(rng.randn(3, width), jnp.float32),
            "bias": jnp.asarray(rng.randn(width), jnp.float32),
        },
        "LayerNorm": {"scale": jnp.ones((width,), jnp.float32)},
    }
    state = create_train_state(params, make_optimizer(1e-3, 10, params=params), seed)
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step, "rng": state.rng}


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_structure_values_and_meta(tmp_path):
    state = make_state()
    store = checkpoints.Checkpoints(tmp_path / "ckpt")
    meta = {"step": 3, "data": {"epoch": 1, "position": 2}, "best": None, "window": {"sum": {"loss": 0.5}}}
    store.save(3, state, meta)
    step, restored, restored_meta = store.restore_latest(checkpoints.abstract_like(state))
    assert step == 3 and restored_meta == meta
    assert_trees_equal(restored, state)
    store.close()


def test_keeps_the_latest_few_and_the_preserved(tmp_path):
    store = checkpoints.Checkpoints(tmp_path, keep=2)
    state = make_state()
    for step in (2, 4, 6, 8, 10):
        store.save(step, state, {"step": step}, preserve=[4])
    assert store.steps() == [4, 8, 10]
    store.save(10, make_state(seed=1), {"step": 10, "again": True})  # same step: replaced
    assert store.steps() == [8, 10]
    assert store.restore_meta(10) == {"step": 10, "again": True}
    store.close()


def test_incomplete_save_is_invisible_and_damaged_latest_falls_back(tmp_path, caplog):
    state = make_state()
    store = checkpoints.Checkpoints(tmp_path, keep=3)
    store.save(2, state, {"step": 2})
    store.save(4, make_state(seed=1), {"step": 4})
    store.close()
    # A process killed while saving step 6 leaves only orbax's temporary directory.
    partial = tmp_path / "6.orbax-checkpoint-tmp-1234567"
    shutil.copytree(tmp_path / "4", partial)
    os.remove(next((partial / "state").glob("*METADATA")))
    store = checkpoints.Checkpoints(tmp_path, keep=3)
    assert store.latest_step() == 4
    step, restored, meta = store.restore_latest(checkpoints.abstract_like(state))
    assert (step, meta) == (4, {"step": 4})
    assert_trees_equal(restored, make_state(seed=1))
    # A damaged complete step (files removed by hand): the previous one is used.
    shutil.rmtree(tmp_path / "4" / "state")
    step, restored, meta = store.restore_latest(checkpoints.abstract_like(state))
    assert (step, meta) == (2, {"step": 2})
    assert_trees_equal(restored, state)
    store.close()


def test_a_truncated_checkpoint_is_one_warning_line_not_orbax_tracebacks(tmp_path):
    """In a fresh process (pytest catches unraisable exceptions itself): every data
    file of the three latest checkpoints cut short; the oldest one is restored, with
    one warning per damaged checkpoint instead of orbax's leftover tracebacks
    (three damaged ones, as whether the leftovers show depends on timing)."""
    script = textwrap.dedent("""
        import gc, logging, sys, time
        import numpy as np
        sys.path.insert(0, "tests")
        from test_checkpoints import make_state
        from rome_jax.training import checkpoints
        logging.basicConfig(format="%(levelname)s %(message)s")
        directory = sys.argv[1]
        store = checkpoints.Checkpoints(directory, keep=4)
        store.save(2, make_state(width=64), {"step": 2})
        for step in (4, 6, 8):
            store.save(step, make_state(seed=step, width=64), {"step": step})
        store.close()
        for step in (4, 6, 8):
            for chunk in __import__("pathlib").Path(directory, str(step), "state").rglob("d/*"):
                chunk.write_bytes(chunk.read_bytes()[:20])
        store = checkpoints.Checkpoints(directory, keep=4)
        step, restored, _ = store.restore_latest(checkpoints.abstract_like(make_state(width=64)))
        store.close()
        time.sleep(0.5)
        gc.collect()  # orbax's abandoned reads finish or are collected by now
        np.testing.assert_array_equal(restored["params"]["layers"]["kernel"],
                                      make_state(width=64)["params"]["layers"]["kernel"])
        print(step)
    """)
    root = pathlib.Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ckpt")],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr[-3000:]
    # Unfiltered, orbax's abandoned reads (of the checkpoint's metadata, then of its
    # arrays) print up to hundreds of lines of tracebacks here, more on a loaded machine.
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("WARNING:absl:")]
    assert len(lines) == 3, proc.stderr[:3000]
    for line, step in zip(lines, (8, 6, 4)):
        assert (
            line.startswith(
                f"WARNING skipping unreadable checkpoint: checkpoint {tmp_path / 'ckpt' / str(step)} "
                "cannot be restored into this model ("
            )
            and "TensorStore details" not in line
        )


def test_kill_9_during_a_save_leaves_the_latest_complete_checkpoint(tmp_path):
    """A real crash: a process saving 16 MB checkpoints in a loop is killed mid-save."""
    script = textwrap.dedent("""
        import sys
        import jax.numpy as jnp
        from rome_jax.training.checkpoints import Checkpoints
        store = Checkpoints(sys.argv[1], keep=2)
        for step in range(1, 10_000):
            store.save(step, {"w": jnp.full((4_000_000,), step, jnp.float32)}, {"step": step})
            print(step, flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parent.parent)}
    for delay in (0.02, 0.05, 0.1):  # some land inside a save (a .orbax-checkpoint-tmp left)
        directory = tmp_path / f"after_{delay}"
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(directory)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        last = 0
        while last < 3:
            last = int(proc.stdout.readline())
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = checkpoints.Checkpoints(directory, keep=2)
        target = checkpoints.abstract_like({"w": jnp.zeros((4_000_000,), jnp.float32)})
        step, tree, meta = store.restore_latest(target)
        assert step >= last and meta == {"step": step}
        assert float(tree["w"].min()) == float(tree["w"].max()) == step
        store.close()


def test_a_checkpoint_that_does_not_fit_is_one_clear_error(tmp_path):
    store = checkpoints.Checkpoints(tmp_path)
    store.save(1, make_state(width=4), {"step": 1})
    with pytest.raises(
        CheckpointError,
        match=r"does not fit this model: params/LayerNorm/scale has "
        r"shape \(4,\), this model needs \(5,\)",
    ):
        store.restore_latest(checkpoints.abstract_like(make_state(width=5)))
    store.close()
    # a fresh manager (as in a new process) reads the shapes before restoring too,
    # instead of failing inside the restore and skipping the step as unreadable
    store = checkpoints.Checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint .*1 does not fit this model: params/LayerNorm"):
        store.restore_latest(checkpoints.abstract_like(make_state(width=5)))
    smaller = make_state()
    del smaller["params"]["LayerNorm"]
    with pytest.raises(CheckpointError, match="does not fit this model: it holds params/LayerNorm/scale"):
        store.restore(1, checkpoints.abstract_like(smaller))
    store.close()


def test_load_params_best_latest_and_by_step(tmp_path):
    store = checkpoints.Checkpoints(tmp_path / "checkpoints", keep=1)
    states = {step: make_state(seed=step) for step in (1, 2, 3)}
    for step, state in states.items():
        store.save(step, state, {"step": step, "best": {"step": 2, "score": 0.9}}, preserve=[2])
    store.close()
    for which, expected in (("best", 2), ("latest", 3), (2, 2)):
        step, params = checkpoints.load_params(tmp_path, which)
        assert step == expected
        assert_trees_equal(params, jax.tree.map(np.asarray, states[expected]["params"]))
    with pytest.raises(CheckpointError, match="no checkpoint of step 1"):
        checkpoints.load_params(tmp_path, 1)
    with pytest.raises(CheckpointError, match="no checkpoints in"):
        checkpoints.load_params(tmp_path / "nowhere")
