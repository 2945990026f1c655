"""The run's config: every key with its default, documentation and check; loading,
resolving, comparing and validating `ml_collections` configs.

May import: `rome_jax.data`, `rome_jax.encoder` and the core modules (it is read by
training, the commands and the experiments, and imports none of them).
"""
