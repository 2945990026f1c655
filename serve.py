"""Serves a model over HTTP on Ray Serve, with early exit inside dynamic batches.

    python serve.py --workdir=runs/sst2 --port=8000 --replicas=1 --max_batch_size=64 --batch_wait_ms=5

The program is rome_jax/commands/serve.py (its flags, --help and what it does);
`python -m rome_jax.commands.serve` runs it with the same flags from any directory.
This file only runs it.
"""

if __name__ == "__main__":
    from rome_jax.commands.serve import run

    run()
