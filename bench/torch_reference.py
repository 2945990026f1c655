"""A PyTorch implementation of the reference RomeBERT training step, for comparison.

Written from the method (docs/methods.md) the way the reference code runs it
(romebert/RomeBERT, `examples/new_run_highway_glue.py`, `train()`, the `args.gp`
branch), not from our JAX code: one forward pass of a multi-exit BERT, then **two
backward passes** (`loss_A.backward(retain_graph=True)`, a copy of the selected
gradients, then `loss_B.backward()`, which accumulates, so every gradient is then
`g_A + g_B`), the projected group's gradient projected off the anchor over one
flattened vector of the selected weight matrices (encoder layers 1..L-1, no biases,
no LayerNorm), `g_K + g_P'` written back to the selected parameters only,
global-norm clipping, then the optimizer. Unlike the reference, whose
`torch.zeros([1]).cuda()` and loss `.item()` calls (after the projection, before the
clip) make the host wait mid-step, nothing waits for the GPU inside the step here:
`min(c, 0)` is taken on the device and the reported numbers are read after the
optimizer step (a faster PyTorch baseline, not a slower one). It serves two ends:

- `tests/test_torch_reference.py`: our jitted `romebert` step must produce the
  same update as this one from the same weights (an independent check of the
  losses, the projection and the clipping together);
- `bench/bench_reference_step.py`: the PyTorch side of the speed comparison
  (float32 as the reference runs, or bfloat16 autocast).

The model is `transformers.BertModel` (no pooler) plus one head per layer: pooler
(dense + tanh) on that layer's `[CLS]`, dropout, classifier. The last head is the
final classifier (the reference's separate final classifier and never-trained 12th
exit head are one head here, as in rome_jax). The optimizer is whatever the caller
passes (the benchmark: `torch.optim.AdamW`, foreach on CUDA, faster than the
reference's per-parameter `transformers.AdamW`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rome_jax.encoder.config import ModelConfig
from rome_jax.encoder.hf_io import hf_config_dict, state_dict_from_params

# Weight matrices of one encoder layer in HF BERT naming (the GR selection).
_LAYER_MATRICES = (
    "attention.self.query.weight",
    "attention.self.key.weight",
    "attention.self.value.weight",
    "attention.output.dense.weight",
    "intermediate.dense.weight",
    "output.dense.weight",
)


def _torch():
    import torch

    return torch


def build_model(config: ModelConfig, params: dict | None = None, attn_implementation: str = "sdpa"):
    """A `TorchMultiExitBert` for a BERT-family `config`, with our `params` copied in if given."""
    torch = _torch()
    from transformers import BertConfig, BertModel

    if config.family != "bert":
        raise ValueError(f"the PyTorch reference is BERT only, not {config.family!r}")
    hf = hf_config_dict(config)
    hf_config = BertConfig(
        **{k: v for k, v in hf.items() if k not in ("architectures", "rome_jax")},
        attn_implementation=attn_implementation,
    )

    class TorchMultiExitBert(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel(hf_config, add_pooling_layer=False)
            self.dropout = torch.nn.Dropout(config.exit_dropout)
            self.poolers = torch.nn.ModuleList(
                torch.nn.Linear(config.hidden_size, config.hidden_size) for _ in range(config.num_layers)
            )
            self.classifiers = torch.nn.ModuleList(
                torch.nn.Linear(config.hidden_size, config.num_labels) for _ in range(config.num_layers)
            )

        def forward(self, input_ids, attention_mask, token_type_ids):
            """[L, B, C] logits of every exit."""
            out = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                output_hidden_states=True,
            )
            logits = []
            for i, hidden in enumerate(out.hidden_states[1:]):
                pooled = torch.tanh(self.poolers[i](hidden[:, 0]))
                logits.append(self.classifiers[i](self.dropout(pooled)))
            return torch.stack(logits)

    model = TorchMultiExitBert()
    if params is not None:
        model_state, exits_state = state_dict_from_params(params, config)
        state = {
            k: torch.from_numpy(np.array(v))
            for k, v in model_state.items()
            if k.startswith("bert.") and ".pooler." not in k
        }
        for l in range(config.num_layers):
            for part, name in (("pooler", "poolers"), ("classifier", "classifiers")):
                for kind in ("weight", "bias"):
                    state[f"{name}.{l}.{kind}"] = torch.from_numpy(np.array(exits_state[f"exit.{l}.{part}.{kind}"]))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return model


def selected_names(model, num_layers: int) -> list[str]:
    """The GR selection: weight matrices of encoder layers 1..L-1 (0-based 0..L-2)."""
    names = [f"bert.encoder.layer.{l}.{m}" for l in range(num_layers - 1) for m in _LAYER_MATRICES]
    known = dict(model.named_parameters())
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"not in the model: {missing}")
    return names


def romebert_losses(logits, labels, gamma: float = 0.9, temperature: float = 3.0):
    """(loss_A, loss_B) as the reference computes them: CE of the final exit, and the
    exits' `(1-g) CE + g T^2 KLDivLoss()` (mean over batch x classes) summed."""
    torch = _torch()
    F = torch.nn.functional
    logits = logits.float()
    loss_a = F.cross_entropy(logits[-1], labels)
    teacher = torch.softmax(logits[-1].detach() / temperature, dim=-1)
    loss_b = logits.new_zeros(())
    for z in logits[:-1]:
        # KLDivLoss() with its default reduction="mean": the sum over batch x classes / (B*C)
        kd = F.kl_div(F.log_softmax(z / temperature, dim=-1), teacher, reduction="sum") / teacher.numel()
        loss_b = loss_b + (1 - gamma) * F.cross_entropy(z, labels) + gamma * temperature**2 * kd
    return loss_a, loss_b


@dataclass
class StepOutput:
    loss_a: float
    loss_b: float
    cosine: float
    projected: bool


def reference_step(
    model,
    optimizer,
    batch: dict,
    selection: list[str],
    *,
    anchor: str = "B",
    gamma: float = 0.9,
    temperature: float = 3.0,
    clip_norm: float = 1.0,
    autocast_dtype=None,
) -> StepOutput:
    """One RomeBERT step: forward, two backward passes, projection, clip, optimizer.

    `batch`: torch tensors `input_ids`, `attention_mask`, `token_type_ids` [B, T] and
    `labels` [B]. `anchor`: "B" keeps the exits' gradient and projects the final
    exit's (the reference's choice except MNLI/QQP), "A" the other way round.
    `autocast_dtype`: e.g. `torch.bfloat16` runs the forward under autocast.
    """
    torch = _torch()
    named = dict(model.named_parameters())
    chosen = [named[n] for n in selection]
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss_a, loss_b = romebert_losses(logits, batch["labels"], gamma, temperature)

    def flat_grads():
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in chosen])

    optimizer.zero_grad(set_to_none=True)
    loss_a.backward(retain_graph=True)
    flat_a = flat_grads()  # a copy (torch.cat), as the reference's
    loss_b.backward()  # accumulates: every .grad is now g_A + g_B
    flat_b = flat_grads() - flat_a

    dot = torch.dot(flat_a, flat_b)
    cosine = dot / (flat_a.norm() * flat_b.norm()).clamp_min(1e-30)
    keep, move = (flat_b, flat_a) if anchor == "B" else (flat_a, flat_b)
    keep_sq = torch.dot(keep, keep)
    # The reference: g_P <- g_P - min(c, 0) g_K, c = <g_P, g_K> / ||g_K||^2, on the
    # device (no host sync); ||g_K||^2 <= 1e-20 counts as no projection (rome_jax's eps).
    coef = torch.where(keep_sq > 1e-20, dot / keep_sq.clamp_min(1e-20), torch.zeros_like(dot)).clamp(max=0.0)
    total = keep + (move - coef * keep)
    offset = 0
    for p in chosen:  # g_K + g_P' written back; every other .grad stays g_A + g_B
        p.grad = total[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    if clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    # Read back after the step: no host sync inside it.
    return StepOutput(loss_a.item(), loss_b.item(), float(cosine), bool(coef < 0))


def torch_batch(batch: dict, device=None) -> dict:
    """Numpy [B, T] inputs and [B] labels to torch long tensors."""
    torch = _torch()
    return {k: torch.as_tensor(np.asarray(v), dtype=torch.long, device=device) for k, v in batch.items()}
