"""The training step: modes, two gradients from one forward, freezing, accumulation, devices."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import MultiExitEncoder, init_params
from rome_jax.training import losses
from rome_jax.training import step as ts
from rome_jax.training.optim import make_optimizer, weight_decay_mask

CFG = ModelConfig(
    vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32, max_position_embeddings=32
)
NO_DROPOUT = CFG.replace(hidden_dropout=0.0, attention_dropout=0.0)


def make_batch(n=8, t=12, seed=0, regression=False):
    rng = np.random.RandomState(seed)
    mask = np.ones((n, t), np.int32)
    mask[1, 6:] = 0
    labels = rng.rand(n).astype(np.float32) * 5 if regression else rng.randint(0, 2, n).astype(np.int32)
    return dict(
        input_ids=rng.randint(1, 50, (n, t)).astype(np.int32),
        attention_mask=mask,
        token_type_ids=np.zeros((n, t), np.int32),
        labels=labels,
    )


@functools.cache
def compiled(settings, config, lr, num_devices):
    """One compiled step per (settings, config, lr, devices): compiling dominates these tests."""
    params = init_params(config, 0)
    tx = make_optimizer(lr, 100, params=params)
    mesh = ts.make_mesh(jax.devices()[:num_devices])
    return ts.compile_train_step(config, settings, tx, mesh, params), tx, mesh


def run_steps(settings, config=CFG, steps=2, seed=0, lr=1e-3, batch=None, num_devices=1):
    """Returns (initial params, final state, last metrics, every step's loss)."""
    params = init_params(config, 0)
    step, tx, mesh = compiled(settings, config, lr, num_devices)
    state = ts.replicate(ts.create_train_state(params, tx, seed), mesh)
    batch = batch or make_batch()
    step_losses = []
    for _ in range(steps):
        state, metrics = step(state, ts.shard_batch(batch, mesh))
        step_losses.append(float(metrics["loss"]))
    return params, jax.device_get(state), jax.device_get(metrics), step_losses


@pytest.mark.slow
def test_two_gradients_from_one_forward_equal_separate_gradients():
    params = init_params(CFG, 0)
    batch = make_batch()
    settings = ts.StepSettings(mode="romebert")
    rng = jax.random.PRNGKey(3)
    (g_a, g_b), _ = ts._microbatch_grads(CFG, settings, params, batch, rng)

    def group(p, which):
        logits = MultiExitEncoder(CFG).apply(
            {"params": p},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=False,
            rngs={"dropout": rng},
        )["logits"]
        return losses.romebert_groups(logits, batch["labels"])[which]

    ref_a, ref_b = jax.grad(group)(params, 0), jax.grad(group)(params, 1)
    for got, ref in ((g_a, ref_a), (g_b, ref_b)):
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5)
    # the final exit's classifier only learns from group A (the teacher is stopped in B)
    assert np.abs(np.asarray(g_b["layers"]["exit"]["classifier"]["kernel"][-1])).max() == 0


@pytest.mark.slow
def test_gr_step_with_nothing_selected_equals_the_joint_step():
    params = init_params(CFG, 0)
    tx = make_optimizer(1e-3, 100, params=params)
    batch = make_batch()
    nothing = jax.tree.map(lambda x: jnp.zeros((1,) * x.ndim), params)
    state = ts.create_train_state(params, tx, 0)
    gr, _ = ts.train_step(
        state, batch, config=CFG, settings=ts.StepSettings(mode="gr"), tx=tx, selection=nothing, trainable=None
    )
    joint, _ = ts.train_step(
        state, batch, config=CFG, settings=ts.StepSettings(mode="joint"), tx=tx, selection=None, trainable=None
    )
    for x, y in zip(jax.tree.leaves(gr.params), jax.tree.leaves(joint.params)):
        np.testing.assert_allclose(x, y, atol=1e-7, rtol=1e-6)


def test_romebert_step_projects_and_logs_the_statistics():
    _, _, m, _ = run_steps(ts.StepSettings(mode="romebert"), steps=1)
    for key in (
        "gr/cosine",
        "gr/projected",
        "gr/norm_A",
        "gr/norm_B",
        "loss",
        "grad_norm",
        "exit_loss/1",
        "exit_loss/3",
        "distill_loss/2",
    ):
        assert key in m and np.isfinite(m[key]), key
    assert -1 <= m["gr/cosine"] <= 1 and m["gr/projected"] in (0.0, 1.0)
    np.testing.assert_allclose(m["loss"], m["loss_A"] + m["loss_B"], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ts.MODES)
def test_every_mode_trains_and_lowers_its_loss(mode):
    settings = ts.StepSettings(mode=mode, stage=2 if mode in ts.TWO_STAGE_MODES else 1)
    step_losses = run_steps(settings, config=NO_DROPOUT, steps=15, lr=3e-3)[3]
    assert np.isfinite(step_losses[-1]) and step_losses[-1] < step_losses[0]


@pytest.mark.slow
def test_regression_step_uses_mse():
    cfg = NO_DROPOUT.replace(num_labels=1)
    _, _, m, _ = run_steps(
        ts.StepSettings(mode="romebert", regression=True), config=cfg, steps=1, batch=make_batch(regression=True)
    )
    assert np.isfinite(m["loss"]) and m["exit_loss/3"] > 1.0  # squared error of scores in 0..5


def changed(before, after):
    return jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), before, after)


@pytest.mark.slow
def test_deebert_stage_1_leaves_intermediate_exits_and_stage_2_only_trains_them():
    before, state, _, _ = run_steps(ts.StepSettings(mode="deebert", stage=1), steps=2)
    c = changed(before, state.params)
    exits = state.params["layers"]["exit"]["classifier"]["kernel"]
    np.testing.assert_array_equal(exits[:-1], before["layers"]["exit"]["classifier"]["kernel"][:-1])
    assert not np.array_equal(exits[-1], before["layers"]["exit"]["classifier"]["kernel"][-1])
    assert c["layers"]["layer"]["attention"]["query"]["kernel"] and c["embeddings"]["LayerNorm"]["scale"]

    for clip in ("reference", "trainable"):
        before, state, _, _ = run_steps(ts.StepSettings(mode="deebert", stage=2, stage2_clip=clip), steps=2)
        c = changed(before, state.params)
        assert not any(jax.tree.leaves(c["embeddings"])) and not any(jax.tree.leaves(c["layers"]["layer"]))
        exits = state.params["layers"]["exit"]["pooler"]["kernel"]
        np.testing.assert_array_equal(exits[-1], before["layers"]["exit"]["pooler"]["kernel"][-1])
        assert not np.array_equal(exits[:-1], before["layers"]["exit"]["pooler"]["kernel"][:-1])


def test_reference_stage2_clipping_counts_the_backbone_gradient():
    """DeeBERT's code clips with the frozen backbone's gradient in the norm."""
    m_ref = run_steps(ts.StepSettings(mode="deebert", stage=2, stage2_clip="reference"), steps=1)[2]
    m_own = run_steps(ts.StepSettings(mode="deebert", stage=2, stage2_clip="trainable"), steps=1)[2]
    assert m_ref["grad_norm"] > m_own["grad_norm"] > 0


# The families whose backbones hold more than BERT's: ALBERT's shared layer and embedding
# mapping (ELECTRA's projection is the same parameter), ModernBERT's final norm (read by
# every exit, trained with the backbone), DeBERTa's relative-position embeddings and norm.
STAGE2_FAMILIES = {
    "bert": CFG,
    "albert": CFG.replace(family="albert", embedding_size=8),
    "modernbert": CFG.replace(family="modernbert", type_vocab_size=1, local_attention=4, global_attn_every_n_layers=2),
    "deberta-v2": CFG.replace(family="deberta-v2", position_buckets=4),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(STAGE2_FAMILIES))
def test_trainable_stage2_clipping_stops_the_whole_backbone(family):
    """stage2_clip=trainable: the exits get the same gradient as with `reference`,
    every backbone parameter (each family's own top-level ones included) none."""
    cfg = STAGE2_FAMILIES[family]
    params, batch, rng = init_params(cfg, 0), make_batch(), jax.random.PRNGKey(1)
    grads = {
        clip: ts._microbatch_grads(cfg, ts.StepSettings(mode="deebert", stage=2, stage2_clip=clip), params, batch, rng)[
            0
        ][0]
        for clip in ("reference", "trainable")
    }
    for x, y in zip(
        jax.tree.leaves(grads["reference"]["layers"]["exit"]), jax.tree.leaves(grads["trainable"]["layers"]["exit"])
    ):
        np.testing.assert_allclose(x, y, atol=1e-7, rtol=1e-6)
    backbone = {k: v for k, v in grads["trainable"].items() if k != "layers"}
    backbone["stacked"] = {k: v for k, v in grads["trainable"]["layers"].items() if k != "exit"}
    assert jax.tree.leaves(backbone) and all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(backbone))
    own = {
        "albert": ("shared_layer", "embedding_hidden_mapping_in"),
        "modernbert": ("final_norm",),
        "deberta-v2": ("rel_embeddings", "rel_norm"),
    }
    structure = str(jax.tree_util.tree_structure(backbone))
    assert all(f"'{name}'" in structure for name in own.get(family, ()))  # checked above, all zero
    reference_backbone = {k: v for k, v in grads["reference"].items() if k != "layers"}
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(reference_backbone))


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch_without_dropout():
    one = run_steps(ts.StepSettings(mode="romebert"), config=NO_DROPOUT, steps=2)[1]
    two = run_steps(ts.StepSettings(mode="romebert", grad_accum_steps=2), config=NO_DROPOUT, steps=2)[1]
    for x, y in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(x, y, atol=2e-6, rtol=1e-5)


def test_same_seed_same_parameters_and_other_seed_other_dropout():
    a = run_steps(ts.StepSettings(mode="romebert"), seed=5)[1]
    b = run_steps(ts.StepSettings(mode="romebert"), seed=5)[1]
    c = run_steps(ts.StepSettings(mode="romebert"), seed=6)[1]
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


@pytest.mark.slow
def test_non_finite_loss_leaves_the_state_unchanged():
    params = init_params(CFG, 0)
    params = jax.tree.map(lambda x: x, params)
    params["layers"]["exit"]["classifier"]["bias"] = (
        params["layers"]["exit"]["classifier"]["bias"].at[-1, 0].set(jnp.nan)
    )
    tx = make_optimizer(1e-3, 100, params=params)
    state = ts.create_train_state(params, tx, 0)
    new, m = ts.train_step(
        state, make_batch(), config=CFG, settings=ts.StepSettings(mode="joint"), tx=tx, selection=None, trainable=None
    )
    assert m["finite"] == 0
    for x, y in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(x, y)


def test_no_weight_decay_on_layernorm_or_biases():
    mask = weight_decay_mask(init_params(CFG, 0))
    assert mask["layers"]["layer"]["attention"]["query"]["kernel"] is True
    assert mask["layers"]["layer"]["attention"]["query"]["bias"] is False
    assert mask["layers"]["layer"]["output"]["LayerNorm"]["scale"] is False
    assert mask["embeddings"]["LayerNorm"]["scale"] is False


@pytest.mark.slow
def test_eight_fake_devices_equal_one_device():
    """The step over a mesh of 8 CPU devices equals the step on one (fresh process);
    the replicated state is a copy of the caller's."""
    script = textwrap.dedent("""
        import jax, numpy as np, sys
        sys.path.insert(0, "tests")
        from test_train_step import run_steps, make_batch
        from rome_jax.training import step as ts
        assert len(jax.devices()) == 8
        for settings in (ts.StepSettings(mode="romebert"), ts.StepSettings(mode="joint"),
                         ts.StepSettings(mode="romebert", grad_accum_steps=2)):
            batch = make_batch(n=16)
            one = run_steps(settings, steps=3, batch=batch, num_devices=1)[1]
            eight = run_steps(settings, steps=3, batch=batch, num_devices=8)[1]
            diff = max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                       for x, y in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)))
            print(settings, diff)
            assert diff < 1e-5, (settings, diff)
        # Micro-batches are split over all devices: the batch is never gathered
        # (each device would compute grad_accum_steps times its share).
        from test_train_step import compiled, CFG
        from rome_jax.encoder.model import init_params
        step, tx, mesh = compiled(ts.StepSettings(mode="romebert", grad_accum_steps=2), CFG, 1e-3, 8)
        state = ts.replicate(ts.create_train_state(init_params(CFG, 0), tx, 0), mesh)
        hlo = step.lower(state, ts.shard_batch(make_batch(n=16), mesh)).compile().as_text()
        assert "all-gather" not in hlo, [l for l in hlo.splitlines() if "all-gather" in l][:2]
        # replicate copies: donating its result leaves the caller's arrays alive
        x = jax.numpy.ones(3)
        donated = jax.jit(lambda s: {"a": s["a"] + 1}, donate_argnums=0)(ts.replicate({"a": x}, ts.make_mesh()))
        assert not x.is_deleted() and float(donated["a"][0]) == 2.0
    """)
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "") + "-devices-8"  # see conftest.py
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env={**env, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_fastbert_stage_2_needs_no_labels_and_only_trains_exits():
    batch = make_batch()
    del batch["labels"]
    before, state, m, step_losses = run_steps(
        ts.StepSettings(mode="fastbert", stage=2, temperature=1.0, kl_reduction="batchmean"),
        config=NO_DROPOUT,
        steps=8,
        lr=3e-3,
        batch=batch,
    )
    c = changed(before, state.params)
    assert not any(jax.tree.leaves(c["embeddings"])) and not any(jax.tree.leaves(c["layers"]["layer"]))
    final = state.params["layers"]["exit"]["classifier"]["kernel"][-1]
    np.testing.assert_array_equal(final, before["layers"]["exit"]["classifier"]["kernel"][-1])
    assert "exit_loss/1" not in m and step_losses[-1] < step_losses[0]


@pytest.mark.slow
def test_albert_gradient_regularization_projects_the_shared_layer():
    cfg = CFG.replace(family="albert", embedding_size=8)
    before, state, m, _ = run_steps(ts.StepSettings(mode="romebert"), config=cfg, steps=2)
    assert m["gr/norm_A"] > 0 and m["gr/norm_B"] > 0  # the selection is not empty
    assert "layer" not in state.params["layers"]
    assert any(jax.tree.leaves(changed(before["shared_layer"], state.params["shared_layer"])))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stage2_clip="none"), "unknown stage2_clip 'none'"),
        (dict(anchor="C"), "unknown anchor 'C'"),
        (dict(kl_reduction="mean"), "unknown kl_reduction 'mean'"),
        (dict(gamma=5.0), r"gamma must be in \[0, 1\], not 5.0"),
        (dict(temperature=0.0), "temperature must be > 0, not 0.0"),
        (dict(grad_accum_steps=0), "grad_accum_steps must be an integer >= 1, not 0"),
    ],
)
def test_step_settings_refuse_values_that_would_train_something_else(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ts.StepSettings(**kwargs)


@pytest.mark.slow
def test_step_names_a_batch_it_cannot_train_on():
    with pytest.raises(ValueError, match="a batch of 8 rows does not split into grad_accum_steps=3"):
        run_steps(ts.StepSettings(mode="joint", grad_accum_steps=3), steps=1)
    unlabeled = {k: v for k, v in make_batch().items() if k != "labels"}
    with pytest.raises(ValueError, match="mode 'joint' .* the batch has no 'labels'"):
        run_steps(ts.StepSettings(mode="joint"), steps=1, batch=unlabeled)


# Every family's parameter tree (the stage-2 families above, and the rest).
ALL_FAMILIES = {
    **STAGE2_FAMILIES,
    "roberta": CFG.replace(family="roberta", pad_token_id=1, max_position_embeddings=34),
    "distilbert": CFG.replace(family="distilbert"),
    "electra": CFG.replace(family="electra", embedding_size=8),
}


@pytest.mark.parametrize("family", sorted(ALL_FAMILIES))
def test_every_mode_builds_on_every_family(family):
    """Each mode's step (each stage of the two-stage ones) traces on each family's
    parameters (`jax.eval_shape`: shapes and names, nothing compiled), and the parts it
    trains and projects are the family's: stage 1 the backbone and final exit, stage 2
    the intermediate exits only, together every parameter once; the projection's
    selection only layer weights, never an exit's, nor the last layer's."""
    cfg = ALL_FAMILIES[family]
    params = jax.eval_shape(lambda: init_params(cfg, 0))
    tx = make_optimizer(1e-3, 100, params=params)
    mesh = ts.make_mesh(jax.devices()[:1])
    state = jax.eval_shape(lambda p: ts.create_train_state(p, tx, 0), params)
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]  # noqa: E731
    for mode in ts.MODES:
        for stage in (1, 2) if mode in ts.TWO_STAGE_MODES else (1,):
            settings = ts.StepSettings(mode=mode, stage=stage)
            new_state, metrics = jax.eval_shape(
                ts.compile_train_step(cfg, settings, tx, mesh, params), state, make_batch()
            )
            assert jax.tree.structure(new_state.params) == jax.tree.structure(params), (mode, stage)
            assert metrics["loss"].shape == (), (mode, stage)
        if mode in ts.TWO_STAGE_MODES:
            one = leaves(ts.trainable_mask(params, ts.StepSettings(mode=mode, stage=1)))
            two = leaves(ts.trainable_mask(params, ts.StepSettings(mode=mode, stage=2)))
            for a, b, p in zip(one, two, jax.tree.leaves(params)):
                both = np.broadcast_to(a, p.shape) + np.broadcast_to(b, p.shape)
                np.testing.assert_array_equal(both, 1.0)  # every parameter in exactly one stage
    exit_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params["layers"]["exit"])[0]}
    selection = ts.selection_for(params, cfg, ts.StepSettings(mode="romebert"))
    chosen = [
        (jax.tree_util.keystr(path), np.asarray(m))
        for path, m in jax.tree_util.tree_flatten_with_path(selection)[0]
        if np.asarray(m).any()
    ]
    assert chosen, "the projection selects nothing"
    for name, m in chosen:
        assert "['exit']" not in name and name.endswith("['kernel']"), name
        if m.shape[0] == cfg.num_layers and not cfg.shares_layers:
            assert m[-1].max() == 0 and m[:-1].min() == 1, name  # layers 1..L-1, not the last
    assert exit_paths  # the exits exist, and none is selected (above)
