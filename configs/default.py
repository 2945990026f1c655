r"""The default configuration: the reference hyper-parameters (docs/methods.md).

Every other config starts from this one. Override any value on the command line:

    python train.py --config=configs/default.py --workdir=runs/rte \
        --config.data.task=rte --config.train.learning_rate=3e-5

Every key, with its default, its check and its meaning, is declared once in
`rome_jax/config/schema.py` (`SECTIONS`); this file returns those defaults
(`data.dir` is `$GLUE_DIR`, else "": the Hugging Face hub). docs/configs.md lists
them; `rome_jax.config.run_config.validate` checks a config when training starts.
A preset changes what its runs need after `config = default.get_config()`.
"""

import ml_collections

from rome_jax.config import schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return schema.default_config()
