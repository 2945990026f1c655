"""The run's config: every key with its default, documentation and check; loading,
resolving, comparing and validating `ml_collections` configs.

- `rome_jax.config.schema`: every key declared once (`Key`, `SECTIONS`), the default
  config, `KEYS`, `RUN_ONLY_KEYS`, `ADDED_KEYS`;
- `rome_jax.config.checks`: the checks of single values;
- `rome_jax.config.choices`: the allowed values of the choice keys (the training
  modes, ...), which the training package imports from here;
- `rome_jax.config.run_config`: rules across keys, resolving, comparing with a
  workdir, loading config files and workdirs;
- `rome_jax.config.markdown`: docs/configs.md's key tables from the schema.

May import: `rome_jax.data`, `rome_jax.encoder` and the core modules (it is read by
training, the commands and the experiments, and imports none of them).
"""
