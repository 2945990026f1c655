"""Multi-host training with length buckets, and resuming on another process count.

SST-2's first 48 training rows at max_length 64 span the buckets 8, 32 and 64 (4,
7 and 1 batches of 4 rows an epoch), so the steps change bucket, and so the compiled
program, again and again; the 20 dev rows are evaluated in batches of 32 and 64
positions. Against one train.py process with four fake CPU devices:

- two processes with two devices each train as one (parameters within 1e-5, the
  dev accuracies equal, over 20 dev rows that span the buckets too);
- both processes killed with SIGKILL after a checkpoint whose next step takes
  another bucket, then re-run: the run ends exactly where the uninterrupted
  two-process run ends (every parameter and metrics.jsonl byte);
- the same killed two-process workdir resumed by ONE process with four devices,
  and a killed one-process workdir resumed by TWO processes with two devices
  each: each ends where the uninterrupted run ends, within the tolerance of the
  cross-process sums (1e-5): the global batch, its rows' places on the 4-device
  mesh and its dropout masks do not depend on how the devices are split into
  processes, and the checkpoint's replicated state is read whole by any number
  of processes.

Which lengths the steps take comes from `BatchIterator` (the run's own batching:
`bucket_batches` on the epoch's seeded permutation), and the seed is the first
whose epoch changes bucket at every checkpoint a kill can leave behind; the logs'
"compiled the train step for length L" lines (in order of first use) confirm the
run met those lengths, and a resumed run's first compiled length is the step
after its checkpoint's.
"""

import re
import shutil
import signal
import subprocess
import time

import pytest
import test_multihost
from test_multihost import (
    DEADLINE,
    REPO,
    Processes,
    assert_close_runs,
    command,
    metric_lines,
    run_one,
    run_two,
    with_devices,
)

pytestmark = pytest.mark.slow

env = test_multihost.env  # the fixture: GLUE_DIR, a fresh compilation cache, devices per run

SETTINGS = {"data.task": "sst2", "data.max_length": 64, "data.buckets": "8,32,64"}
BUCKETS = (8, 32, 64)
KILL_AFTER_LINES = 3  # steps 3 and 6 logged, step 6 evaluated: then SIGKILL


def training_batches(tiny_model: str, glue_dir: str):
    """(the run's train config, a function seed -> each training step's batch length,
    step 1 first), the batches formed as the trainer's `BatchIterator` forms them."""
    from transformers import AutoTokenizer

    from rome_jax.config import run_config
    from rome_jax.data import BatchIterator, length_buckets, load_examples, tokenize_examples

    overrides = {**SETTINGS, "model.name_or_path": tiny_model, "data.dir": glue_dir}
    config = run_config.resolve(run_config.load(f"{REPO}/configs/tiny.py", overrides))
    d, t = config.data, config.train
    examples = load_examples(d.task, "train", data_dir=glue_dir, max_examples=d.train_max_examples)
    features = tokenize_examples(examples, AutoTokenizer.from_pretrained(tiny_model), d.max_length)
    buckets = length_buckets(d.max_length, d.buckets)

    def step_lengths(seed: int) -> list[int]:
        batches = BatchIterator(features, t.batch_size, shuffle=True, seed=seed, drop_remainder=True, buckets=buckets)
        assert batches.steps_per_epoch >= t.max_steps  # one epoch: the whole run
        return [next(batches)["input_ids"].shape[1] for _ in range(t.max_steps)]

    return t, step_lengths


@pytest.fixture(scope="module")
def plan(tiny_model, glue_dir):
    """(overrides for train.py, each step's batch length): a seed whose epoch meets
    every bucket and changes bucket after every checkpoint before the last step."""
    t, step_lengths = training_batches(tiny_model, glue_dir)
    checkpoints = range(t.checkpoint_every, t.max_steps, t.checkpoint_every)  # 2, 4, ..., 10
    for seed in range(1000):
        lengths = step_lengths(seed)
        if set(lengths) == set(BUCKETS) and all(lengths[k - 1] != lengths[k] for k in checkpoints):
            overrides = tuple(f"{k}={v}" for k, v in {**SETTINGS, "train.seed": seed}.items())
            return overrides, lengths
    pytest.fail("no seed below 1000 changes bucket after every checkpoint")


def compiled_lengths(log: str) -> list[int]:
    """The lengths of the train step's compilations a process logged, in order."""
    return [int(n) for n in re.findall(r"compiled the train step for length (\d+)", log)]


def first_uses(lengths) -> list[int]:
    return list(dict.fromkeys(lengths))


def latest_checkpoint(workdir) -> int:
    from rome_jax.training import checkpoints

    step = checkpoints.Checkpoints(workdir / "checkpoints").latest_step()
    assert step is not None
    return step


@pytest.fixture(scope="module")
def straight(tmp_path_factory, env, tiny_model, plan):
    """(one process x 4 devices, two processes x 2 devices), both uninterrupted."""
    overrides, _ = plan
    root = tmp_path_factory.mktemp("buckets")
    one = run_one(env, root / "one", tiny_model, overrides)
    two = run_two(env, root / "two", tiny_model, overrides)
    return (root / "one", one.stderr), two


@pytest.fixture(scope="module")
def killed_two(tmp_path_factory, env, tiny_model, plan):
    """A two-process run killed with SIGKILL (process 1, then 0) after step 6's
    evaluation: (workdir, the step of its latest checkpoint). Tests resume copies."""
    overrides, lengths = plan
    workdir = tmp_path_factory.mktemp("killed_two") / "run"
    procs = Processes(env, workdir, tiny_model, overrides, tag="first")
    try:
        procs.wait_for_lines(KILL_AFTER_LINES)
        procs.procs[1].send_signal(signal.SIGKILL)
        time.sleep(1)
        procs.procs[0].send_signal(signal.SIGKILL)
        procs.wait(timeout=60)
    finally:
        procs.kill()
    assert not (workdir / "model").exists()
    killed_at = latest_checkpoint(workdir)
    assert 2 <= killed_at < len(lengths)
    for i in (0, 1):  # the lengths met before the kill, in order
        met = compiled_lengths(procs.log(i))
        assert met == first_uses(lengths)[: len(met)]
    return workdir, killed_at


def copy_run(workdir, to):
    shutil.copytree(workdir, to, symlinks=True)
    return to


def assert_resumed_across_a_bucket_change(log: str, killed_at: int, lengths: list[int]) -> None:
    assert f"resuming from the checkpoint of step {killed_at} (of {len(lengths)})" in log
    assert lengths[killed_at] != lengths[killed_at - 1]  # the next step takes another bucket
    assert compiled_lengths(log) == first_uses(lengths[killed_at:])


def test_bucketed_two_processes_train_as_one_with_four_devices(straight, plan):
    (one, one_log), two = straight
    _, lengths = plan
    assert sum(a != b for a, b in zip(lengths, lengths[1:])) >= 3
    assert compiled_lengths(one_log) == first_uses(lengths) and set(lengths) == set(BUCKETS)
    for i in (0, 1):
        assert compiled_lengths(two.log(i)) == first_uses(lengths)
    assert "data-parallel over 4 cpu device(s) in 2 process(es)" in two.log(0)
    assert "with length buckets 8,32,64" in two.log(0)
    assert_close_runs(two.workdir, one)


def test_kill_9_across_a_bucket_change_then_rerun_ends_as_uninterrupted(
    straight, killed_two, plan, env, tiny_model, tmp_path
):
    _, two = straight
    overrides, lengths = plan
    killed, killed_at = killed_two
    workdir = copy_run(killed, tmp_path / "run")
    again = run_two(env, workdir, tiny_model, overrides, tag="again")
    for i in (0, 1):
        assert_resumed_across_a_bucket_change(again.log(i), killed_at, lengths)
    assert_close_runs(workdir, two.workdir, atol=0)  # exactly the uninterrupted two-process run
    assert metric_lines(workdir) == metric_lines(two.workdir)


def test_two_processes_killed_then_resumed_by_one_process(straight, killed_two, plan, env, tiny_model, tmp_path):
    (one, _), two = straight
    overrides, lengths = plan
    killed, killed_at = killed_two
    workdir = copy_run(killed, tmp_path / "run")
    proc = run_one(env, workdir, tiny_model, overrides)
    assert "data-parallel over 4 cpu device(s) in 1 process(es)" in proc.stderr
    assert_resumed_across_a_bucket_change(proc.stderr, killed_at, lengths)
    assert_close_runs(workdir, two.workdir)
    assert_close_runs(workdir, one)


def test_one_process_killed_then_resumed_by_two_processes(straight, plan, env, tiny_model, tmp_path):
    (one, _), two = straight
    overrides, lengths = plan
    workdir = tmp_path / "run"
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command(workdir, tiny_model, overrides),
            cwd=REPO,
            env=with_devices(env, 4),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + DEADLINE
        while len(metric_lines(workdir)) < KILL_AFTER_LINES:
            assert proc.poll() is None, f"ended early: {log.read_text(errors='replace')[-2000:]}"
            assert time.time() < deadline, "timed out waiting for metrics"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert not (workdir / "model").exists()
    killed_at = latest_checkpoint(workdir)
    assert 2 <= killed_at < len(lengths)
    again = run_two(env, workdir, tiny_model, overrides, tag="again")
    for i in (0, 1):
        assert_resumed_across_a_bucket_change(again.log(i), killed_at, lengths)
    assert "data-parallel over 4 cpu device(s) in 2 process(es)" in again.log(0)
    assert_close_runs(workdir, one)
    assert_close_runs(workdir, two.workdir)
