"""Every exit of a rome_jax model in PyTorch: the modeling file an exported HF directory
carries as `rome_jax_modeling.py`, registered in its config.json's `auto_map`.

    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained("runs/sst2/model", trust_remote_code=True)
    out = model(**tokenizer(["a gem of a film"], return_tensors="pt"))
    out.all_logits        # [B, num_exits, C]: every exit, [CLS] or mean pooling as trained
    out.logits            # the final exit's
    model.early_exit(**tokenizer(["a gem of a film"], return_tensors="pt"), criterion="entropy:0.3")
    # -> (logits [1, C], exit layer (1-based)): the layers after the exit are not run

This file is standalone: it imports torch, transformers and safetensors, never
rome_jax (it is copied next to the weights and runs where rome_jax is not installed).
The encoder is the family's own transformers model (`AutoModel.from_config`, weights
from model.safetensors); the exits (pooler dense, the family's activation,
classifier, on the first token or the attended tokens' mean) come from
`rome_jax_exits.safetensors`. Criteria: entropy, max_prob, normalized_entropy,
patience and fixed, as rome_jax decides them; lte, saturation and meta need rome_jax.
Without `trust_remote_code=True`, transformers loads the family's own
`*ForSequenceClassification` from the same directory (the final exit, [CLS]-pooled).
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

EXITS_FILE = "rome_jax_exits.safetensors"
ACTIVATIONS = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": lambda x: nn.functional.gelu(x),
    "gelu_new": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: nn.functional.gelu(x, approximate="tanh"),
}


class _Exited(Exception):
    def __init__(self, logits: torch.Tensor, index: int):
        super().__init__(index)
        self.logits, self.index = logits, index


class RomeJaxExits(nn.Module):
    """The exits: a pooler dense and a classifier per layer."""

    def __init__(self, num_exits: int, hidden_size: int, num_labels: int):
        super().__init__()
        self.pooler = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_exits))
        self.classifier = nn.ModuleList(nn.Linear(hidden_size, num_labels) for _ in range(num_exits))


def _layers(base: nn.Module) -> list[nn.Module]:
    """The modules that run layer i (ALBERT's one shared layer, once per layer)."""
    for path in ("encoder.layer", "transformer.layer"):
        module = base
        try:
            for part in path.split("."):
                module = getattr(module, part)
        except AttributeError:
            continue
        return list(module.children())
    groups = getattr(getattr(base, "encoder", None), "albert_layer_groups", None)
    if groups is not None:
        return [groups[0]]
    raise ValueError(f"{type(base).__name__}: no layers found for layer-by-layer early exit")


class RomeJaxMultiExitModel(PreTrainedModel):
    """A multi-exit classifier: the family's encoder and an exit after every layer."""

    base_model_prefix = "rome_jax"
    _keys_to_ignore_on_load_missing = [r"^exits\."]  # from rome_jax_exits.safetensors
    _keys_to_ignore_on_load_unexpected = [r"^classifier\.", r"^pre_classifier\.", r"\.pooler\.", r"^pooler\."]

    def __init__(self, config):
        super().__init__(config)
        meta = getattr(config, "rome_jax", None) or {}
        self.exit_pooling = getattr(config, "rome_jax_exit_pooling", "cls")
        self.exit_activation = meta.get("exit_activation", "tanh")
        self.num_exits = int(meta.get("num_exits", config.num_hidden_layers))
        try:  # the exits pool: the family's own pooler (where it has one) is not needed
            encoder = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            encoder = AutoModel.from_config(config)
        self.encoder_attribute = encoder.base_model_prefix  # the checkpoint's prefix: bert, roberta, ...
        self.add_module(self.encoder_attribute, encoder)
        self.exits = RomeJaxExits(self.num_exits, config.hidden_size, config.num_labels)
        self.post_init()

    @property
    def encoder_model(self) -> nn.Module:
        return getattr(self, self.encoder_attribute)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        from safetensors.torch import load_file

        path = os.path.join(str(pretrained_model_name_or_path), EXITS_FILE)
        if not os.path.isfile(path):
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(str(pretrained_model_name_or_path), EXITS_FILE)
        state = load_file(path)
        with torch.no_grad():
            for i in range(model.num_exits):
                for part in ("pooler", "classifier"):
                    layer = getattr(model.exits, part)[i]
                    layer.weight.copy_(state[f"exit.{i}.{part}.weight"])
                    layer.bias.copy_(state[f"exit.{i}.{part}.bias"])
        return model

    def _init_weights(self, module):  # the encoder initialised itself; every weight is then loaded
        pass

    def exit_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor, index: int) -> torch.Tensor:
        """Exit `index`'s logits from layer `index`'s output hidden [B, T, H]."""
        if self.exit_pooling == "mean":
            keep = attention_mask.to(hidden.dtype).unsqueeze(-1)
            x = (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        else:
            x = hidden[:, 0]
        pooled = ACTIVATIONS[self.exit_activation](self.exits.pooler[index](x))
        return self.exits.classifier[index](pooled)

    def _encode(self, input_ids, attention_mask, token_type_ids, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.config.model_type not in ("distilbert", "modernbert"):
            inputs["token_type_ids"] = token_type_ids
        return self.encoder_model(**inputs, output_hidden_states=True, **kwargs)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        output_hidden_states=False,
        **kwargs,
    ):
        """Every exit's logits (`all_logits` [B, E, C], batch first as every output, so
        that pipelines split it per example); `logits` [B, C]: the final exit's."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self._encode(input_ids, attention_mask, token_type_ids, **kwargs)
        hidden = out.hidden_states[1:]
        all_logits = torch.stack([self.exit_logits(h, attention_mask, i) for i, h in enumerate(hidden)], dim=1)
        result = SequenceClassifierOutput(
            logits=all_logits[:, -1], hidden_states=out.hidden_states if output_hidden_states else None
        )
        result["all_logits"] = all_logits
        return result

    @torch.no_grad()
    def early_exit(self, input_ids, attention_mask=None, token_type_ids=None, criterion: str = "entropy:0.3"):
        """One example (batch 1): runs the layers until the criterion passes, then stops.
        Returns (logits [1, C] of the exit that answered, its 1-based layer)."""
        if input_ids.shape[0] != 1:
            raise ValueError("early_exit runs one example at a time (batch 1); forward gives every exit")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        name, _, value = criterion.partition(":")
        threshold = float(value)
        layers = _layers(self.encoder_model)
        calls, counter = [0], [0]  # layers run; patience's count
        previous: list[torch.Tensor] = []  # the last exit's logits
        regression = self.config.num_labels == 1

        def decide(logits: torch.Tensor, i: int) -> bool:
            if name == "fixed":
                return i + 1 >= threshold
            if name == "patience":
                if not previous:
                    same = False
                elif regression:
                    same = bool((logits - previous[0]).abs().max() < 0.1)
                else:
                    same = bool(logits.argmax(-1) == previous[0].argmax(-1))
                counter[0] = counter[0] + 1 if same else 0
                previous[:] = [logits]
                return counter[0] >= threshold
            log_p = torch.log_softmax(logits.float(), -1)
            p = log_p.exp()
            h = float(-(torch.where(p > 0, p * log_p, torch.zeros_like(p))).sum())
            if name == "entropy":
                return h < threshold
            if name == "normalized_entropy":
                return h / math.log(logits.shape[-1]) < threshold
            if name == "max_prob":
                return float(p.max()) >= threshold
            raise ValueError(
                f"criterion {name!r}: this file decides entropy, max_prob, normalized_entropy, "
                "patience and fixed (lte, saturation and meta need rome_jax)"
            )

        def hook(module, args, output):
            i = calls[0]
            calls[0] += 1
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            logits = self.exit_logits(hidden, attention_mask, i)
            if i == self.num_exits - 1 or decide(logits, i):
                raise _Exited(logits, i)

        handles = [layer.register_forward_hook(hook) for layer in layers]
        try:
            self._encode(input_ids, attention_mask, token_type_ids)
        except _Exited as done:
            return done.logits, done.index + 1
        finally:
            for handle in handles:
                handle.remove()
        raise RuntimeError("the encoder ran without reaching its last exit")
