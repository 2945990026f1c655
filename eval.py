"""Evaluates every exit and the early-exit sweeps of a trained model.

    python eval.py --workdir=runs/demo                  # the run's best checkpoint
    python eval.py --workdir=runs/demo --checkpoint=latest
    python eval.py --model=path/to/hf_dir --task=sst2 --data_dir=$GLUE_DIR

The program is rome_jax/commands/eval.py (its flags, --help and what it does);
`python -m rome_jax.commands.eval` runs it with the same flags from any directory,
with rome_jax installed and no checkout. This file only runs it.
"""

if __name__ == "__main__":  # first, before JAX starts: see rome_jax/host_memory.py
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()

    from rome_jax.commands.eval import run

    run()
