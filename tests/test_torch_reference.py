"""Our jitted RomeBERT step against an independent PyTorch reference step.

The reference (bench/torch_reference.py) runs the method as the reference code
does: two backward passes, the projection over one flattened vector of the
selected weight matrices, clipping, the optimizer. With dropout off and plain SGD
(lr 1) after the clip, the parameter change of one step *is* the clipped,
projected gradient, so comparing the two models after one step checks the
losses, the two gradients, the projection and the clip together. The clip norm is
set below some of the steps' gradient norms (about 0.2-0.4 on this model) so that
both the clipped and the unclipped path run.
"""

import jax
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from bench import torch_reference as ref  # noqa: E402
from rome_jax.encoder.config import ModelConfig  # noqa: E402
from rome_jax.encoder.hf_io import state_dict_from_params  # noqa: E402
from rome_jax.encoder.model import init_params  # noqa: E402
from rome_jax.training import step as ts  # noqa: E402

pytestmark = pytest.mark.slow  # subprocess runs / long training: deselected by -m "not slow"

CFG = ModelConfig(
    vocab_size=60,
    hidden_size=32,
    num_layers=3,
    num_heads=4,
    intermediate_size=40,
    max_position_embeddings=32,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


def _batch(seed: int, n: int = 6, t: int = 10) -> dict:
    rng = np.random.RandomState(seed)
    mask = np.ones((n, t), np.int32)
    mask[1, 6:] = 0
    mask[4, 3:] = 0
    ids = np.where(mask == 1, rng.randint(3, 60, (n, t)), 0).astype(np.int32)
    types = np.zeros((n, t), np.int32)
    types[:, 5:] = 1
    types[mask == 0] = 0
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=rng.randint(0, 2, n).astype(np.int32))


CLIP = 0.25


def _our_step(params, batch, anchor):
    tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.sgd(1.0))
    mesh = ts.make_mesh(jax.devices()[:1])
    settings = ts.StepSettings(mode="romebert", anchor=anchor)
    step = ts.compile_train_step(CFG, settings, tx, mesh, params)
    state = ts.replicate(ts.create_train_state(params, tx, 0), mesh)
    state, metrics = step(state, ts.shard_batch(batch, mesh))
    return jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.parametrize("anchor", ["B", "A"])
def test_romebert_step_matches_the_two_backward_pass_reference(anchor):
    torch.manual_seed(0)
    projected_seen, clipped_seen = set(), set()
    for seed in range(6):
        params = jax.device_get(init_params(CFG, seed))
        batch = _batch(seed)
        model = ref.build_model(CFG, params, attn_implementation="eager").train()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        with torch.no_grad():
            before = {k: v.detach().clone() for k, v in model.named_parameters()}
        out = ref.reference_step(
            model, opt, ref.torch_batch(batch), ref.selected_names(model, CFG.num_layers), anchor=anchor, clip_norm=CLIP
        )
        new_params, metrics = _our_step(params, batch, anchor)

        assert out.loss_a == pytest.approx(float(metrics["loss_A"]), rel=1e-5)
        assert out.loss_b == pytest.approx(float(metrics["loss_B"]), rel=1e-5)
        assert out.projected == bool(metrics["gr/projected"] > 0.5)
        assert out.cosine == pytest.approx(float(metrics["gr/cosine"]), abs=1e-4)
        projected_seen.add(out.projected)
        clipped_seen.add(bool(metrics["grad_norm"] > CLIP))  # the norm before the clip

        model_state, exits_state = state_dict_from_params(new_params, CFG)
        ours = {k: v for k, v in model_state.items() if k.startswith("bert.") and ".pooler." not in k}
        for l in range(CFG.num_layers):
            for part, name in (("pooler", "poolers"), ("classifier", "classifiers")):
                for kind in ("weight", "bias"):
                    ours[f"{name}.{l}.{kind}"] = exits_state[f"exit.{l}.{part}.{kind}"]
        theirs = dict(model.named_parameters())
        assert set(ours) == set(theirs)
        for name, value in ours.items():
            delta_theirs = (theirs[name].detach() - before[name]).numpy()
            delta_ours = value - before[name].numpy()
            scale = max(np.abs(delta_theirs).max(), 1e-6)
            np.testing.assert_allclose(delta_ours, delta_theirs, atol=2e-4 * scale + 1e-7, err_msg=name)
    # Both branches of the projection and of the clip ran (otherwise the comparison proves less).
    assert projected_seen == {True, False}, projected_seen
    assert clipped_seen == {True, False}, clipped_seen
