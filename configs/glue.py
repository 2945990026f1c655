r"""A GLUE task with the reference hyper-parameters: `configs/glue.py:TASK[,MODE]`.

    python train.py --config=configs/glue.py:rte --workdir=runs/rte
    python train.py --config=configs/glue.py:sst2,deebert --workdir=runs/sst2-deebert \
        --config.model.name_or_path=/models/bert-base-uncased

TASK is a GLUE task name in any spelling (rte, SST-2, mnli, ...); MODE one of
`rome_jax.train_step.MODES` (default romebert). The model defaults to
bert-base-uncased from the hub; point model.name_or_path at a local HF
directory to work offline.
"""

import ml_collections

from configs import default
from rome_jax.errors import ConfigError
from rome_jax.glue import get_task


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if not arg:
        raise ConfigError("configs/glue.py needs a task: --config=configs/glue.py:rte "
                          "(or configs/glue.py:rte,deebert)")
    parts = [p.strip() for p in arg.split(",")]
    if len(parts) > 2:
        raise ConfigError(f"configs/glue.py takes TASK[,MODE], got {arg!r}")
    config = default.get_config()
    config.data.task = get_task(parts[0]).name
    if len(parts) == 2:
        config.train.mode = parts[1]
    if config.train.mode == "fastbert":
        # FastBERT's students learn the teacher's distribution itself: KL at T = 1,
        # summed over classes and averaged over the batch (our reading of its code).
        config.train.temperature = 1.0
        config.train.kl_reduction = "batchmean"
        # Its stage 2 runs the backbone under torch.no_grad() (and clips nothing): no
        # backbone gradient, so none in the clip norm either, unlike DeeBERT's.
        config.train.stage2_clip = "trainable"
        # Not copied: its script distils for 10 epochs at 10x the learning rate (with a
        # schedule sized for stage 1 that reaches 0 after 3 of them); stage 2 here uses
        # train.stage2_epochs (default num_epochs) and the same learning rate.
    if config.train.mode == "pabee":
        # PABEE's published setting for GLUE: batch 32, the reference lr; its
        # patience exit is swept at t = 1..6 by eval.py (`--sweeps=patience`).
        config.train.batch_size = 32
    return config
