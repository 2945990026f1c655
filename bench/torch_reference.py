"""A PyTorch implementation of the reference RomeBERT training step, for comparison.

Written from the method (GUIDE section 1) the way the reference code runs it, not
from our JAX code: one forward pass of a multi-exit BERT, then **two backward
passes** (`loss_A.backward(retain_graph=True)`, then `loss_B.backward()`), the
two gradients copied out, the projected group's gradient projected off the anchor
over one flattened vector of the selected weight matrices (encoder layers
1..L-1, no biases, no LayerNorm), the sum written back, global-norm clipping,
then the optimizer. It serves two ends:

- `tests/test_torch_reference.py`: our jitted `romebert` step must produce the
  same update as this one from the same weights (an independent check of the
  losses, the projection and the clipping together);
- `bench/bench_reference_step.py`: the PyTorch side of the speed comparison
  (float32 as the reference runs, or bfloat16 autocast).

The model is `transformers.BertModel` (no pooler) plus one head per layer: pooler
(dense + tanh) on that layer's `[CLS]`, dropout, classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rome_jax.config import ModelConfig
from rome_jax.hf_io import hf_config_dict, state_dict_from_params

# Weight matrices of one encoder layer in HF BERT naming (the GR selection).
_LAYER_MATRICES = ("attention.self.query.weight", "attention.self.key.weight",
                   "attention.self.value.weight", "attention.output.dense.weight",
                   "intermediate.dense.weight", "output.dense.weight")


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
    hf_config = BertConfig(**{k: v for k, v in hf.items() if k not in ("architectures", "rome_jax")},
                           attn_implementation=attn_implementation)

    class TorchMultiExitBert(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel(hf_config, add_pooling_layer=False)
            self.dropout = torch.nn.Dropout(config.exit_dropout)
            self.poolers = torch.nn.ModuleList(
                torch.nn.Linear(config.hidden_size, config.hidden_size) for _ in range(config.num_layers))
            self.classifiers = torch.nn.ModuleList(
                torch.nn.Linear(config.hidden_size, config.num_labels) for _ in range(config.num_layers))

        def forward(self, input_ids, attention_mask, token_type_ids):
            """[L, B, C] logits of every exit."""
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids, output_hidden_states=True)
            logits = []
            for i, hidden in enumerate(out.hidden_states[1:]):
                pooled = torch.tanh(self.poolers[i](hidden[:, 0]))
                logits.append(self.classifiers[i](self.dropout(pooled)))
            return torch.stack(logits)

    model = TorchMultiExitBert()
    if params is not None:
        model_state, exits_state = state_dict_from_params(params, config)
        state = {k: torch.from_numpy(np.array(v)) for k, v in model_state.items() if k.startswith("bert.")
                 and ".pooler." not in k}
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


def reference_step(model, optimizer, batch: dict, selection: list[str], *, anchor: str = "B",
                   gamma: float = 0.9, temperature: float = 3.0, clip_norm: float = 1.0,
                   autocast_dtype=None) -> StepOutput:
    """One RomeBERT step: forward, two backward passes, projection, clip, optimizer.

    `batch`: torch tensors `input_ids`, `attention_mask`, `token_type_ids` [B, T] and
    `labels` [B]. `anchor`: "B" keeps the exits' gradient and projects the final
    exit's (the reference's choice except MNLI/QQP), "A" the other way round.
    `autocast_dtype`: e.g. `torch.bfloat16` runs the forward under autocast.
    """
    torch = _torch()
    params = [p for p in model.parameters() if p.requires_grad]
    named = dict(model.named_parameters())
    chosen = [named[n] for n in selection]
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss_a, loss_b = romebert_losses(logits, batch["labels"], gamma, temperature)
    optimizer.zero_grad(set_to_none=True)
    loss_a.backward(retain_graph=True)
    g_a = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    optimizer.zero_grad(set_to_none=True)
    loss_b.backward()
    g_b = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]

    index = {id(p): i for i, p in enumerate(params)}
    flat_a = torch.cat([g_a[index[id(p)]].flatten() for p in chosen])
    flat_b = torch.cat([g_b[index[id(p)]].flatten() for p in chosen])
    dot = torch.dot(flat_a, flat_b)
    cosine = float(dot / (flat_a.norm() * flat_b.norm()).clamp_min(1e-30))
    keep, move = (flat_b, flat_a) if anchor == "B" else (flat_a, flat_b)
    projected = bool(dot < 0) and float(keep.dot(keep)) > 1e-20
    coef = dot / keep.dot(keep) if projected else dot.new_zeros(())
    chosen_ids = {id(p) for p in chosen}
    for p, a, b in zip(params, g_a, g_b):
        if id(p) in chosen_ids and projected:
            # g_P - c g_K, plus the anchor g_K
            k, m = (b, a) if anchor == "B" else (a, b)
            p.grad = k + (m - coef * k)
        else:
            p.grad = a + b
    if clip_norm:
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    return StepOutput(loss_a.item(), loss_b.item(), cosine, projected)


def torch_batch(batch: dict, device=None) -> dict:
    """Numpy [B, T] inputs and [B] labels to torch long tensors."""
    torch = _torch()
    return {k: torch.as_tensor(np.asarray(v), dtype=torch.long, device=device) for k, v in batch.items()}
