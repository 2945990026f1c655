r"""Fine-tunes a multi-exit BERT on a GLUE task.

    python train.py --config=configs/glue.py:rte --workdir=runs/rte
    python train.py --config=configs/demo.py --workdir=runs/demo \
        --config.train.learning_rate=5e-5

Re-running the same command resumes from the latest checkpoint. See
rome_jax/training/workdir.py for what the workdir holds and rome_jax/commands/cli.py for the exit
statuses (0 done, 2 a user error, 3 a non-finite loss, 75 stopped by a signal
after saving: run again to resume).
"""

if __name__ == "__main__":  # first, before JAX starts: see rome_jax/host_memory.py
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()


import os
import sys
import time
import traceback

from absl import flags
from ml_collections import config_flags

from rome_jax.commands import cli
from rome_jax.errors import ConfigError, RomeError
from rome_jax.host_memory import reexec_with_malloc_tunables

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "A config file, e.g. configs/glue.py:rte; override its values with --config.train.learning_rate=3e-5.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the model go.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite",
    False,
    "Delete what an earlier run wrote in --workdir (config.json, metrics.jsonl, "
    "tensorboard/, checkpoints/, tokenizer/, model/, and eval.py's eval/ and calibration.json) and start afresh.",
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Join JAX's distributed runtime (jax.distributed.initialize; also: config "
    "train.multihost): one process per host; settings not given below come from JAX's cluster "
    "detection (Cloud TPU VMs, SLURM, ...). See docs/multihost.md.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "With several processes: HOST:PORT of process 0's coordinator "
    "(implies --multihost; default: $JAX_COORDINATOR_ADDRESS or cluster detection).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With several processes: how many (implies --multihost).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id",
    None,
    "With several processes: this one's index, 0 to num_processes - 1 "
    "(implies --multihost; process 0 writes the workdir's files).",
)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout",
    300,
    "With --multihost: seconds to wait for the coordinator and "
    "every process before failing with an error naming the address.",
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout",
    None,
    "With --multihost: seconds without a heartbeat after which the "
    "other processes consider a process dead and stop (JAX's default: 100).",
)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = cli.config_from_flag(_CONFIG)
    if not _WORKDIR.value:
        raise ConfigError("--workdir is required")
    # JAX and the library load only now: the process re-executed itself first (run)
    import jax

    explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _MULTIHOST.value or config.train.multihost or any(v is not None for v in explicit):
        from rome_jax.training import distributed  # JAX, as above

        distributed.initialize(*explicit, timeout_s=_INIT_TIMEOUT.value, heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value)
    from rome_jax.training import trainer  # JAX, as above

    try:
        result = trainer.train_and_evaluate(config, _WORKDIR.value, overwrite=_OVERWRITE.value)
    except BaseException as e:
        if jax.process_count() > 1:  # exit now, not at the runtime's shutdown barrier (300 s): the
            _exit_alone(e)  # others may wait in a collective; they stop when its heartbeats end
        raise
    if result.preempted:
        return trainer.PREEMPTED_EXIT_CODE
    if result.final_eval and jax.process_index() == 0:
        for split, record in result.final_eval.items():
            exits = sorted(
                {k.split("/")[0] for k in record if k.startswith("exit_")}, key=lambda name: int(name.split("_")[1])
            )
            print(
                f"step {record['step']} {split}: "
                + ", ".join(
                    f"{name} "
                    + " ".join(
                        f"{k.split('/')[1]}={v:.4f}"
                        for k, v in record.items()
                        if k.startswith(name + "/") and k.split("/")[1] != "loss"
                    )
                    for name in exits
                ),
                flush=True,
            )
    return 0


def _exit_alone(error: BaseException) -> None:
    """Reports `error` as run_main would (one line, or a traceback for a bug) and ends this
    process at once."""
    if isinstance(error, RomeError):
        cli.report(error, verbose=cli.VERBOSE.value)
        code = error.exit_code
    elif isinstance(error, KeyboardInterrupt):
        print(f"{cli.program_name()}: interrupted", file=sys.stderr)
        code = cli.INTERRUPTED_EXIT_CODE
    elif isinstance(error, SystemExit):
        code = error.code if isinstance(error.code, int) else 1
    else:
        traceback.print_exception(error, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    import jax  # loaded already by main (this module imports it there, after the re-exec)

    if jax.process_index() == 0:  # it hosts the runtime's coordinator: leaving at once would
        time.sleep(1.0)  # abort processes still printing the same error (a C++ stack dump)
    os._exit(code)


def run() -> None:
    """The entry point: `python train.py`, `python -m rome_jax.commands.train`."""
    reexec_with_malloc_tunables()  # a no-op when the module's first lines did it
    cli.run_main(main)


if __name__ == "__main__":
    run()
