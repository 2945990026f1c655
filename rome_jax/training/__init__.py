"""Training: the loop, its stages and optimizer, the jitted step, the losses and the
gradient projection, checkpoints, preemption and several processes.

May import: `rome_jax.serving`, `rome_jax.config`, `rome_jax.exits`, `rome_jax.data`,
`rome_jax.encoder` and the core modules; never the commands or the experiments.
"""
