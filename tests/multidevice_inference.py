"""The executors' outputs on a fixed tiny model and batches, on whatever devices this
process has: run in-process (one device) and as `python multidevice_inference.py
CRITERIA_JSON OUT.npz` under `--xla_force_host_platform_device_count=4` by
test_multihost.py, which compares the two."""

import json
import sys

import jax
import numpy as np
import test_inference as ti  # noqa: E402  (the tiny config, its parameters and spread exits)

from rome_jax.exits import executors as inference
from rome_jax.exits.criteria import Criterion


def inputs():
    rng = np.random.RandomState(3)
    batches = []
    for k in range(3):
        ids = rng.randint(3, 99, (8, 16)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[1::3, 9:] = 0
        example_mask = np.ones(8, bool)
        if k == 2:
            example_mask[6:] = False  # a padded last batch
        batches.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "token_type_ids": np.zeros_like(ids),
                "example_mask": example_mask,
            }
        )
    params = ti.spread_exits(
        ti.TINY, ti.random_params(ti.TINY), {k: batches[0][k] for k in batches[0] if k != "example_mask"}
    )
    return jax.device_get(params), batches


def run(criteria):
    params, batches = inputs()
    out = {"devices": np.int32(jax.local_device_count())}
    logits = inference.all_exits(ti.TINY, params, batches[0])
    out["spread"] = np.int32(len(logits.sharding.device_set))
    out["all_logits"] = np.concatenate([np.asarray(inference.all_exits(ti.TINY, params, b)) for b in batches], 1)
    for i, c in enumerate(criteria):
        c = Criterion(*c)
        loops = [inference.while_loop_exit(ti.TINY, params, b, c) for b in batches]
        out[f"loop_exit/{i}"] = np.concatenate([np.asarray(r["exit_index"]) for r in loops])
        out[f"loop_logits/{i}"] = np.concatenate([np.asarray(r["logits"]) for r in loops])
        out[f"loop_layers/{i}"] = np.asarray([int(r["layers_run"]) for r in loops])
        batched = inference.BatchedEarlyExit(ti.TINY, params, c).run_dataset(batches)
        out[f"batched_exit/{i}"] = np.asarray(batched["exit_index"])
        out[f"batched_logits/{i}"] = np.asarray(batched["logits"])
    return out


if __name__ == "__main__":
    np.savez(sys.argv[2], **run(json.loads(sys.argv[1])))
