"""The allowed values of the config's choice keys, for the config's checks and the code that uses them.

Defined here, below the training package, so that the config's checks never import
the modules that run the values (they import JAX); `rome_jax.training.step`,
`losses` and `projection` import their tuples from here (and still export them
under the old names). Choices of lower packages stay there:
`rome_jax.encoder.config` (`DTYPES`, `ATTENTION_KERNELS`, `EXIT_POOLINGS`) and
`rome_jax.data.examples` (`SOURCES`).

Plain tuples of strings, no imports: importing this module costs nothing.
"""

MODES = ("romebert", "sd", "gr", "joint", "pabee", "deebert", "deebert_sd", "fastbert")
"""train.mode: the training modes (docs/methods.md)."""

TWO_STAGE_MODES = ("deebert", "deebert_sd", "fastbert")
"""The modes that train the exits in a second stage (train.stage2_* keys)."""

GR_MODES = ("romebert", "gr")
"""The modes that project the exits' gradients (gradient regularization)."""

GR_SCOPES = ("reference", "all")
"""train.gr_scope: the parameters GR projects (see rome_jax.training.step.selection_for)."""

STAGE2_CLIPS = ("reference", "trainable")
"""train.stage2_clip (see rome_jax.training.step.StepSettings.stage2_clip)."""

STAGE2_STARTS = ("last", "best")
"""train.stage2_start: where stage 2 of a two-stage mode starts (stage 1's last
step or its best evaluation)."""

REDUCTIONS = ("reference", "batchmean")
"""train.kl_reduction: how the distillation KL is averaged (rome_jax.training.losses)."""

ANCHORS = ("A", "B")
"""train.anchor (besides "auto"): which gradient group GR keeps (rome_jax.training.projection)."""

GRANULARITIES = ("global", "per_tensor")
"""train.gr_granularity: GR over one flattened vector or tensor by tensor."""
