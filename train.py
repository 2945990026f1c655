r"""Fine-tunes a multi-exit BERT on a GLUE task.

    python train.py --config=configs/glue.py:rte --workdir=runs/rte
    python train.py --config=configs/demo.py --workdir=runs/demo \
        --config.train.learning_rate=5e-5

The program is rome_jax/commands/train.py (its flags, --help and what it does);
`python -m rome_jax.commands.train` runs it with the same flags from any directory,
with rome_jax installed and no checkout. This file only runs it.
"""

if __name__ == "__main__":  # first, before JAX starts: see rome_jax/host_memory.py
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()

    from rome_jax.commands.train import run

    run()
