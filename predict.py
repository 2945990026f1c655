"""Predicts labels of a file of texts with early exit, streaming.

    python predict.py --workdir=runs/sst2 --input=reviews.tsv --output=predictions.jsonl
    python predict.py --model=path/to/hf_dir --input=- --criterion=entropy:0.3 < texts.jsonl

The program is rome_jax/commands/predict.py (its flags, --help and what it does);
`python -m rome_jax.commands.predict` runs it with the same flags from any
directory, with rome_jax installed and no checkout. This file only runs it.
"""

if __name__ == "__main__":  # first, before JAX starts: see rome_jax/host_memory.py
    from rome_jax.host_memory import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()

    from rome_jax.commands.predict import run

    run()
