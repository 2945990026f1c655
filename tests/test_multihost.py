"""Multi-host training for real: two train.py processes on localhost, each with two
fake CPU devices, joined by JAX's distributed runtime (gloo collectives), against
one process with four devices on the same global batch.

Who wrote what: process 1 runs under another group id (Popen's `group`, possible
as root), so every file or directory it creates carries that group; the
test asserts all of them lie under checkpoints/ (orbax's share). Files process 1
merely opened without creating would not show, but the trainer never does that
(metrics.jsonl, TensorBoard, config.json, tokenizer/ and model/ are created by
their writer). Without the privilege that check is skipped, nothing else.

Every subprocess has a deadline and is killed at the end (try/finally); ports are
found free by binding port 0.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = "configs/tiny.py:wnli"
DEEBERT = ("train.mode=deebert", "train.max_steps=6", "train.eval_every=0")  # 6 + 6 steps
OTHER_GID = 4242  # process 1's group: marks what it creates
DEADLINE = 240  # seconds, for any one run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory, glue_dir):
    cache = tmp_path_factory.mktemp("jax_cache")
    base = " ".join(
        f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")
    )
    return {
        **os.environ,
        "GLUE_DIR": glue_dir,
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PLATFORMS": "cpu",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "PYTHONPATH": str(REPO),
        "XLA_FLAGS": base,
    }


def command(workdir, model, overrides=(), extra=()):
    return (
        [
            sys.executable,
            str(REPO / "train.py"),
            f"--config={TINY}",
            f"--workdir={workdir}",
            f"--config.model.name_or_path={model}",
        ]
        + [f"--config.{o}" for o in overrides]
        + list(extra)
    )


def with_devices(env, count):
    """`env` with `count` fake CPU devices per process, and a compilation cache of their
    own (JAX leaves the device count out of its cache keys; a program compiled for one
    count can crash a process with another)."""
    return {
        **env,
        "XLA_FLAGS": f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={count}".strip(),
        "JAX_COMPILATION_CACHE_DIR": f"{env['JAX_COMPILATION_CACHE_DIR']}-devices-{count}",
    }


def can_mark_process_1() -> bool:
    return hasattr(os, "setgid") and os.geteuid() == 0


class Processes:
    """Two train.py processes joined on a free localhost port; logs in workdir's parent."""

    def __init__(self, env, workdir, model, overrides=(), tag="run"):
        port = free_port()
        self.workdir = pathlib.Path(workdir)
        self.logs = [self.workdir.parent / f"{self.workdir.name}.{tag}.p{i}.log" for i in (0, 1)]
        self.procs = []
        for i in (0, 1):
            extra = (
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                "--initialization_timeout=60",
                "--heartbeat_timeout=10",
            )
            mark = OTHER_GID if i == 1 and can_mark_process_1() else None  # set in the child, in C
            with open(self.logs[i], "w") as log:
                self.procs.append(
                    subprocess.Popen(
                        command(workdir, model, overrides, extra),
                        cwd=REPO,
                        env=with_devices(env, 2),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        group=mark,
                    )
                )

    def log(self, i) -> str:
        return self.logs[i].read_text(errors="replace")

    def wait(self, timeout=DEADLINE) -> list[int]:
        deadline = time.time() + timeout
        codes = []
        for i, proc in enumerate(self.procs):
            try:
                codes.append(proc.wait(timeout=max(deadline - time.time(), 1)))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"process {i} still running after {timeout} s: {self.log(i)[-2000:]}")
        return codes

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    def wait_for_lines(self, count, timeout=DEADLINE) -> None:
        deadline = time.time() + timeout
        while len(metric_lines(self.workdir)) < count:
            for i, proc in enumerate(self.procs):
                assert proc.poll() is None, f"process {i} ended early: {self.log(i)[-2000:]}"
            assert time.time() < deadline, "timed out waiting for metrics"
            time.sleep(0.005)


def run_two(env, workdir, model, overrides=(), tag="run", expect=(0, 0)) -> Processes:
    procs = Processes(env, workdir, model, overrides, tag)
    try:
        codes = procs.wait()
    finally:
        procs.kill()
    assert codes == list(expect), procs.log(0)[-3000:] + "\n---- process 1:\n" + procs.log(1)[-3000:]
    return procs


def run_one(env, workdir, model, overrides=()):
    """One process with four devices: the reference."""
    proc = subprocess.run(
        command(workdir, model, overrides),
        cwd=REPO,
        env=with_devices(env, 4),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def metric_lines(workdir):
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def leaves(workdir):
    import jax

    from rome_jax.training import checkpoints

    step, params = checkpoints.load_params(workdir, "latest")
    return step, [np.asarray(x) for x in jax.tree.leaves(params)]


def assert_close_runs(workdir, reference, atol=1e-5):
    """Same final step and parameters within `atol`; the same records, metrics within `atol`,
    dev records over the whole dev set (20 examples), accuracies equal."""
    step, got = leaves(workdir)
    ref_step, want = leaves(reference)
    assert step == ref_step
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)
    records = [json.loads(line) for line in metric_lines(workdir)]
    expected = [json.loads(line) for line in metric_lines(reference)]
    assert [(r["step"], r["split"]) for r in records] == [(r["step"], r["split"]) for r in expected]
    for r, e in zip(records, expected):
        assert r.keys() == e.keys()
        for key, value in e.items():
            if key.endswith("/accuracy") or not isinstance(value, float):
                assert r[key] == value, (r["step"], key)
            else:
                assert r[key] == pytest.approx(value, abs=atol), (r["step"], key)
    assert all(r["num_examples"] == 20 for r in records if r["split"] == "dev")


def assert_only_process_0_writes(procs: Processes):
    workdir = procs.workdir
    assert (workdir / "model" / "model.safetensors").is_file()
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert "wrote the final model" in procs.log(0) and "wrote the final model" not in procs.log(1)
    if not can_mark_process_1():
        pytest.skip("not root: cannot run process 1 under another group to see what it creates")
    by_1 = [p.relative_to(workdir) for p in workdir.rglob("*") if p.lstat().st_gid == OTHER_GID]
    assert by_1, "process 1 wrote nothing at all: is the group marking working?"
    assert all(p.parts[0] == "checkpoints" for p in by_1), [str(p) for p in by_1 if p.parts[0] != "checkpoints"]


@pytest.fixture(scope="module")
def romebert(tmp_path_factory, env, tiny_model):
    """(one process x 4 devices, two processes x 2 devices), both uninterrupted."""
    root = tmp_path_factory.mktemp("romebert")
    run_one(env, root / "one", tiny_model)
    procs = run_two(env, root / "two", tiny_model)
    return root / "one", procs


def test_two_processes_train_as_one_with_four_devices(romebert):
    one, procs = romebert
    assert_close_runs(procs.workdir, one)
    assert "data-parallel over 4 cpu device(s) in 2 process(es)" in procs.log(0)
    assert_only_process_0_writes(procs)


def test_kill_9_of_one_then_all_then_rerun_ends_as_uninterrupted(romebert, env, tiny_model, tmp_path):
    _, straight = romebert
    workdir = tmp_path / "killed"
    procs = Processes(env, workdir, tiny_model, tag="first")
    try:
        procs.wait_for_lines(3)  # step 6's evaluation written
        procs.procs[1].send_signal(signal.SIGKILL)
        time.sleep(1)
        procs.procs[0].send_signal(signal.SIGKILL)  # as a scheduler ends the job
        procs.wait(timeout=60)
    finally:
        procs.kill()
    assert not (workdir / "model").exists()
    from rome_jax.training import checkpoints

    killed_at = checkpoints.Checkpoints(workdir / "checkpoints").latest_step()
    assert killed_at is not None and 2 <= killed_at < 12
    again = run_two(env, workdir, tiny_model, tag="again")
    assert f"resuming from the checkpoint of step {killed_at} (of 12)" in again.log(0)
    assert f"resuming from the checkpoint of step {killed_at} (of 12)" in again.log(1)
    assert_close_runs(workdir, straight.workdir, atol=0)  # exactly the uninterrupted two-process run
    assert metric_lines(workdir) == metric_lines(straight.workdir)


def test_deebert_sigterm_to_one_process_stops_all_at_one_step(env, tiny_model, tmp_path):
    """SIGTERM to process 1 only: both save at the same step and exit 75; the re-run ends
    as the one-process run (two stages, evaluations at both stages' ends)."""
    reference = tmp_path / "one"
    run_one(env, reference, tiny_model, DEEBERT)
    workdir = tmp_path / "two"
    procs = Processes(env, workdir, tiny_model, DEEBERT, tag="first")
    try:
        procs.wait_for_lines(1)
        procs.procs[1].send_signal(signal.SIGTERM)
        codes = procs.wait(timeout=120)
    finally:
        procs.kill()
    assert codes == [75, 75], procs.log(0)[-2000:] + procs.log(1)[-2000:]
    stops = [[line for line in procs.log(i).splitlines() if "stopped at step" in line] for i in (0, 1)]
    assert len(stops[0]) == len(stops[1]) == 1
    step = int(stops[0][0].split("stopped at step ")[1].split()[0])
    assert f"stopped at step {step} " in stops[1][0]
    from rome_jax.training import checkpoints

    assert checkpoints.Checkpoints(workdir / "checkpoints").latest_step() == step
    assert "Traceback" not in procs.log(0) + procs.log(1)
    again = run_two(env, workdir, tiny_model, DEEBERT, tag="again")
    assert f"resuming from the checkpoint of step {step} (of 12)" in again.log(0)
    records = [json.loads(line) for line in metric_lines(workdir)]
    assert [(r["step"], r["stage"]) for r in records if r["split"] == "dev"] == [(6, 1), (12, 2)]
    assert_close_runs(workdir, reference)
    assert_only_process_0_writes(again)


def test_unreachable_coordinator_is_one_line_naming_it_in_bounded_time(env, tiny_model, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nobody listens there
    start = time.time()
    proc = subprocess.run(
        command(
            tmp_path / "w",
            tiny_model,
            extra=(
                f"--coordinator_address={address}",
                "--num_processes=2",
                "--process_id=1",
                "--initialization_timeout=3",
            ),
        ),
        cwd=REPO,
        env=with_devices(env, 2),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"train.py: error: cannot reach JAX's coordinator at {address} within 3 s"
    ), proc.stderr
    assert time.time() - start < 60
    assert not (tmp_path / "w").exists()


def test_inference_on_every_local_device_decides_as_one_device(env, tmp_path):
    """The executors on four fake CPU devices (batches split on a `data` axis, params
    replicated) against one device: the same exits, layers and predictions."""
    import jax
    import multidevice_inference
    import test_inference

    from rome_jax.exits import executors as inference

    if jax.local_device_count() != 1:
        pytest.skip("the test process itself must have one device")
    params, batches = multidevice_inference.inputs()
    all_logits = np.concatenate([np.asarray(inference.all_exits(test_inference.TINY, params, b)) for b in batches], 1)
    criteria = [(c.name, c.threshold) for c in test_inference.criteria_for(all_logits)]
    one = multidevice_inference.run(criteria)
    out = tmp_path / "four.npz"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "multidevice_inference.py"), json.dumps(criteria), str(out)],
        cwd=REPO / "tests",
        env=with_devices(env, 4),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    four = dict(np.load(out))
    assert int(one["devices"]) == 1 and int(four["devices"]) == 4
    assert int(one["spread"]) == 1 and int(four["spread"]) == 4  # the batch really was split
    assert one.keys() == four.keys()
    for key in set(one) - {"devices", "spread"}:
        if "logits" in key:
            np.testing.assert_allclose(four[key], one[key], rtol=0, atol=1e-5, err_msg=key)
        else:  # exits and layers run
            np.testing.assert_array_equal(four[key], one[key], err_msg=key)


def test_a_user_error_stops_every_process_at_once_with_one_line(romebert, env, tiny_model, tmp_path):
    """A workdir holding another run: every process checks it before process 0 writes, so
    all fail alike, promptly (not at the runtime's 300 s shutdown barrier)."""
    import shutil

    _, straight = romebert
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(straight.workdir / name, other / name)
    start = time.time()
    procs = run_two(env, other, tiny_model, ("train.learning_rate=3e-5",), expect=(2, 2))
    assert time.time() - start < 90
    for i in (0, 1):
        errors = [line for line in procs.log(i).splitlines() if "error" in line.lower()]
        assert errors == [
            f"train.py: error: workdir {other} holds a run with a different config "
            "(train.learning_rate: 0.001 -> 3e-05); use another --workdir, or --overwrite "
            "to delete that run"
        ], procs.log(i)[-2000:]
    assert (other / "metrics.jsonl").read_bytes() == (straight.workdir / "metrics.jsonl").read_bytes()
