"""The training step of every mode, jit-compiled over a device mesh.

Modes (docs/methods.md, `train.mode`):
  romebert    self-distillation + gradient regularization, one stage (default)
  sd          self-distillation only
  gr          gradient regularization on plain per-exit cross-entropy
  joint       sum of every exit's cross-entropy
  pabee       PABEE's weighted average (weights proportional to the exit index)
  deebert     two stages: final exit, then the intermediate exits (sum of CE)
  deebert_sd  two stages, self-distillation in stage 2
  fastbert    two stages: final exit, then the exits ("students") by KL divergence
              to the final exit ("teacher") alone; stage 2 needs no labels

Data parallelism is `jax.jit` over a `Mesh` of all devices: parameters and
optimizer state replicated, the batch split on the `data` axis, the state donated.
This is the modern form of a pmapped step (`jax.pmap` is in maintenance mode). The
losses are means over the global batch, so the gradients are averaged over all
devices before the projection (docs/methods.md).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import cast

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

# The modes and choices live with the config's checks (still importable from here).
from rome_jax.config.choices import GR_MODES, GR_SCOPES, MODES, STAGE2_CLIPS, TWO_STAGE_MODES
from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.model import INPUT_KEYS, MultiExitEncoder
from rome_jax.encoder.pytree import Params
from rome_jax.sharding import batch_sharding, make_mesh, replicate, replicated, shard_batch  # noqa: F401 (also ts.*)
from rome_jax.training import losses, projection
from rome_jax.training.optim import exit_mask


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What one training step computes (static: changing it recompiles).

    `stage` is 1 or 2 for the two-stage modes. `anchor`: "A" keeps the final
    exit's gradient and projects the exits' ("B" the other way round).
    `stage2_clip`: "reference" clips stage 2's gradient with the frozen
    backbone's gradient counted in the global norm, as DeeBERT's code does
    (freezing = leaving parameters out of the optimizer); "trainable" stops the
    gradient at the backbone so only the exits' gradient is clipped (and the
    backward pass through the backbone is skipped).
    """

    mode: str = "romebert"
    stage: int = 1
    gamma: float = 0.9
    temperature: float = 3.0
    kl_reduction: str = "reference"
    anchor: str = "B"
    gr_scope: str = "reference"
    gr_granularity: str = "global"
    gr_symmetric: bool = False
    regression: bool = False
    grad_accum_steps: int = 1
    stage2_clip: str = "reference"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown train.mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.stage not in (1, 2) or (self.stage == 2 and self.mode not in TWO_STAGE_MODES):
            raise ValueError(f"stage {self.stage} is not a stage of mode {self.mode!r}")
        choices = {
            "kl_reduction": losses.REDUCTIONS,
            "anchor": projection.ANCHORS,
            "gr_scope": GR_SCOPES,
            "gr_granularity": projection.GRANULARITIES,
            "stage2_clip": STAGE2_CLIPS,
        }
        for name, known in choices.items():
            if getattr(self, name) not in known:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; known: {', '.join(known)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], not {self.gamma}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")
        if not (isinstance(self.grad_accum_steps, int) and self.grad_accum_steps >= 1):
            raise ValueError(f"grad_accum_steps must be an integer >= 1, not {self.grad_accum_steps!r}")

    @property
    def uses_projection(self) -> bool:
        return self.mode in GR_MODES


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. `rng` is the base dropout key."""

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    rng: jax.Array


def create_train_state(params: Params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=jax.random.PRNGKey(seed)
    )


def trainable_mask(params: Params, settings: StepSettings) -> Params | None:
    """Which parameters a stage updates (None: all of them)."""
    if settings.mode not in TWO_STAGE_MODES:
        return None
    if settings.stage == 1:
        return exit_mask(params, intermediate=False, backbone=True, final_exit=True)
    return exit_mask(params, intermediate=True, backbone=False, final_exit=False)


def selection_for(params: Params, config: ModelConfig, settings: StepSettings) -> Params:
    """The parameters the projection's dot products run over (docs/methods.md: GR scope)."""
    if settings.gr_scope == "reference" and config.shares_layers:
        # ALBERT: every layer is the shared layer, so its weight matrices are the
        # reference's "weight matrices of layers 1..L-1" (they also serve layer L).
        def kernels_of_shared_layer(path, leaf):
            names = [getattr(p, "key", p) for p in path]
            chosen = names[0] == "shared_layer" and names[-1] == "kernel"
            return jnp.full((1,) * leaf.ndim, float(chosen), jnp.float32)

        return jax.tree_util.tree_map_with_path(kernels_of_shared_layer, params)
    if settings.gr_scope == "reference":
        return projection.reference_selection(params, config.num_layers)
    if settings.gr_scope == "all":
        return projection.all_selection(params)
    raise ValueError(f"unknown gr_scope {settings.gr_scope!r}; known: {', '.join(GR_SCOPES)}")


def _forward(
    config: ModelConfig, params: Params, batch: dict, rng: jax.Array, stop_backbone: bool = False
) -> jax.Array:
    """Exit logits [E, B, C] with dropout on (training)."""
    if stop_backbone:
        # Stage 2 with "trainable" clipping: no gradient flows into the backbone, i.e.
        # everything but the exit heads (ALBERT's backbone is `shared_layer`, not
        # `layers/layer`).
        params = {
            **{k: jax.lax.stop_gradient(v) for k, v in params.items() if k != "layers"},
            "layers": {k: v if k == "exit" else jax.lax.stop_gradient(v) for k, v in params["layers"].items()},
        }
    inputs = {k: batch[k] for k in INPUT_KEYS if k in batch}
    outputs = MultiExitEncoder(config).apply({"params": params}, **inputs, deterministic=False, rngs={"dropout": rng})
    return cast(dict[str, jax.Array], outputs)["logits"]  # apply returns the output alone: no collection is mutable


def token_rows(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Token exits' logits [E, B, T, C] and token labels [B, T] (`TOKEN_IGNORE` = -100, or
    any negative id, where a position has no tag: other sub-tokens, special tokens,
    padding) as rows of the sequence losses: (logits [E, B*T, C], labels [B*T] with the
    ignored ones set to 0, weights [B*T] float32, 1 where a token is tagged). Every
    loss is then the mean over the batch's tagged tokens (HF's token-classification
    loss), self-distillation included."""
    E, B, T, C = logits.shape
    flat = labels.reshape(B * T)
    tagged = flat >= 0
    return logits.reshape(E, B * T, C), jnp.where(tagged, flat, 0), tagged.astype(jnp.float32)


def loss_groups(
    settings: StepSettings, logits: jax.Array, labels: jax.Array | None
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(loss_A, loss_B, aux) for every mode; the step's loss is loss_A + loss_B.

    logits [E, B, C]; labels [B] (None only for FastBERT's stage 2, which needs none).
    Token exits: logits [E, B, T, C] and labels [B, T] (`token_rows`).
    For modes without projection the split is only reported, never used to
    project: loss_B is then 0 and loss_A the whole loss where no split exists.
    """
    s = settings
    weight = None
    if logits.ndim == 4:  # token exits: every labelled token is a row of the losses
        if labels is None:
            raise ValueError(f"mode {s.mode!r} (stage {s.stage}) needs token labels for token exits")
        logits, labels, weight = token_rows(logits, labels)
    if s.mode == "fastbert" and s.stage == 2:  # self-distillation without labels
        distill = losses.distillation_losses(
            logits, temperature=s.temperature, reduction=s.kl_reduction, regression=s.regression, example_weight=weight
        )
        return jnp.zeros((), jnp.float32), jnp.sum(distill), {"distill_loss": distill}
    if labels is None:
        raise ValueError(f"mode {s.mode!r} (stage {s.stage}) trains on labels: none were given")
    if s.mode in ("romebert", "sd"):
        return losses.romebert_groups(
            logits,
            labels,
            gamma=s.gamma,
            temperature=s.temperature,
            reduction=s.kl_reduction,
            regression=s.regression,
            example_weight=weight,
        )
    if s.mode == "gr":
        return losses.plain_groups(logits, labels, regression=s.regression, example_weight=weight)
    exit_loss = losses.exit_losses(logits, labels, regression=s.regression, example_weight=weight)
    aux = {"exit_loss": exit_loss}
    zero = jnp.zeros((), jnp.float32)
    if s.mode == "joint":
        return exit_loss[-1], jnp.sum(exit_loss[:-1]), aux
    if s.mode == "pabee":
        return losses.pabee_loss(logits, labels, regression=s.regression, example_weight=weight), zero, aux
    if s.stage == 1:  # deebert, deebert_sd, fastbert: the final exit alone
        return exit_loss[-1], zero, aux
    if s.mode == "deebert":
        return zero, losses.deebert_stage2_loss(logits, labels, regression=s.regression, example_weight=weight), aux
    distill = losses.distillation_losses(
        logits, temperature=s.temperature, reduction=s.kl_reduction, regression=s.regression, example_weight=weight
    )
    aux["distill_loss"] = distill
    stage2 = losses.deebert_sd_stage2_loss(
        logits,
        labels,
        gamma=s.gamma,
        temperature=s.temperature,
        reduction=s.kl_reduction,
        regression=s.regression,
        example_weight=weight,
    )
    return zero, stage2, aux


def _microbatch_grads(config: ModelConfig, settings: StepSettings, params: Params, batch: dict, rng: jax.Array):
    """Gradients of one micro-batch: (g_A, g_B) for GR modes, else (g, None)."""
    stop = settings.stage == 2 and settings.stage2_clip == "trainable"

    def groups(p):
        logits = _forward(config, p, batch, rng, stop_backbone=stop)
        loss_a, loss_b, aux = loss_groups(settings, logits, batch.get("labels"))
        return (loss_a, loss_b), aux

    if settings.uses_projection:
        # One forward pass, pulled back with two cotangents (1, 0) and (0, 1).
        (loss_a, loss_b), pullback, aux = jax.vjp(groups, params, has_aux=True)
        one = jnp.ones((), loss_a.dtype)
        cotangents = (jnp.stack([one, 0 * one]), jnp.stack([0 * one, one]))
        (stacked,) = jax.vmap(pullback)(cotangents)
        g_a = jax.tree.map(lambda g: g[0], stacked)
        g_b = jax.tree.map(lambda g: g[1], stacked)
        return (g_a, g_b), (loss_a, loss_b, aux)

    def total(p):
        (loss_a, loss_b), aux = groups(p)
        return loss_a + loss_b, (loss_a, loss_b, aux)

    grads, (loss_a, loss_b, aux) = jax.grad(total, has_aux=True)(params)
    return (grads, None), (loss_a, loss_b, aux)


def train_step(
    state: TrainState,
    batch: dict,
    *,
    config: ModelConfig,
    settings: StepSettings,
    tx: optax.GradientTransformation,
    selection: Params,
    trainable: Params | None,
) -> tuple[TrainState, dict]:
    """One optimizer step on a global batch (dict of [B, ...] arrays with `labels`).

    `labels` [B]: class ids in 0..C-1 (float targets for regression); every row
    trains (`example_mask` is not read: the trainer's batches have no padding).
    Ids outside 0..C-1 get a zero one-hot target and add nothing to the loss; the
    trainer's data loading refuses them, so check labels built by hand. FastBERT's
    stage 2 needs no labels.

    With `grad_accum_steps = k` the batch is split into k micro-batches (rows
    i, i+k, ...) whose gradients are averaged before the projection. A non-finite loss leaves the
    state unchanged (the caller stops on `metrics['finite'] == 0`).
    """
    k = settings.grad_accum_steps
    rows = batch["input_ids"].shape[0]
    if rows % k:
        raise ValueError(f"a batch of {rows} rows does not split into grad_accum_steps={k} micro-batches")
    if "labels" not in batch and not (settings.mode == "fastbert" and settings.stage == 2):
        raise ValueError(
            f"mode {settings.mode!r} (stage {settings.stage}) trains on labels: the batch has "
            f"no 'labels' (keys: {', '.join(sorted(batch))})"
        )
    step_rng = jax.random.fold_in(state.rng, state.step)
    if k == 1:
        grads, (loss_a, loss_b, aux) = _microbatch_grads(config, settings, state.params, batch, step_rng)
    else:
        # Micro-batch i is rows i, i+k, i+2k, ...: every device's contiguous slice of
        # the batch splits into its k shares of the micro-batches without moving data.
        # (Contiguous micro-batches would each live on 1/k of the devices: XLA then
        # all-gathers the batch and every device computes k times its share.)
        micro = jax.tree.map(lambda x: x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1), batch)

        def body(acc, xs):
            mb, i = xs
            g, out = _microbatch_grads(config, settings, state.params, mb, jax.random.fold_in(step_rng, i))
            acc = jax.tree.map(lambda a, b: a + b / k, acc, g)
            return acc, out

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (zeros, zeros if settings.uses_projection else None)
        grads, outs = jax.lax.scan(body, init, (micro, jnp.arange(k)))
        loss_a, loss_b, aux = jax.tree.map(lambda x: jnp.mean(x, axis=0), outs)

    metrics: dict[str, jax.Array] = {}
    if settings.uses_projection:
        g_a, g_b = grads
        grads, gr_stats = projection.project_gradients(
            g_a,
            g_b,
            selection,
            anchor=settings.anchor,
            granularity=settings.gr_granularity,
            symmetric=settings.gr_symmetric,
        )
        metrics.update({f"gr/{k_}": v for k_, v in gr_stats.items()})
    else:
        grads = grads[0]
    if trainable is not None and not (settings.stage == 2 and settings.stage2_clip == "reference"):
        grads = jax.tree.map(lambda g, m: g * m, grads, trainable)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if trainable is not None:
        updates = jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, trainable)
    loss = loss_a + loss_b
    finite = jnp.isfinite(loss)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = dataclasses.replace(
        state, step=state.step + 1, params=keep(new_params, state.params), opt_state=keep(opt_state, state.opt_state)
    )
    metrics.update(
        {
            "loss": loss,
            "loss_A": loss_a,
            "loss_B": loss_b,
            "finite": finite.astype(jnp.float32),
            "grad_norm": optax.global_norm(grads),
            "update_norm": optax.global_norm(updates),
            "param_norm": optax.global_norm(new_state.params),
        }
    )
    for name, values in aux.items():
        for i in range(values.shape[0]):
            metrics[f"{name}/{i + 1}"] = values[i]
    return new_state, metrics


def compile_train_step(
    config: ModelConfig, settings: StepSettings, tx: optax.GradientTransformation, mesh: Mesh, params: Params
):
    """`train_step` jitted over `mesh`: (state, batch) -> (state, metrics), state donated."""
    selection = selection_for(params, config, settings) if settings.uses_projection else None
    trainable = trainable_mask(params, settings)
    step = functools.partial(
        train_step, config=config, settings=settings, tx=tx, selection=selection, trainable=trainable
    )
    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(rep, batch_sharding(mesh)), out_shardings=(rep, rep), donate_argnums=0)
