"""Tiny random HF PyTorch models saved with `save_pretrained`, for parity tests."""

from __future__ import annotations

import numpy as np

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


def make_bert(path, num_labels=3, seed=0, **overrides):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(**{**TINY, **overrides}, num_labels=num_labels))
    model.eval().save_pretrained(str(path))
    return model


def make_roberta(path, num_labels=3, seed=0, **overrides):
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    cfg = RobertaConfig(
        **{**TINY, "max_position_embeddings": 70, **overrides},
        num_labels=num_labels,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = RobertaForSequenceClassification(cfg)
    model.eval().save_pretrained(str(path))
    return model


def random_batch(batch=4, length=16, vocab=99, seed=0, pad_id=0, two_segments=True):
    """Token ids with padding (rows 1 and 3 padded) and, optionally, a second segment."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    mask[3, 5:] = 0
    ids[mask == 0] = pad_id
    types = np.zeros_like(ids)
    if two_segments:
        types[:, length // 2 :] = 1
        types[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def torch_logits(model, batch, token_types=True):
    import torch

    with torch.no_grad():
        kwargs = {
            k: torch.tensor(v, dtype=torch.long) for k, v in batch.items() if token_types or k != "token_type_ids"
        }
        return model(**kwargs).logits.numpy()


def make_albert(path, num_labels=3, seed=0, **overrides):
    import torch
    from transformers import AlbertConfig, AlbertForSequenceClassification

    torch.manual_seed(seed)
    cfg = AlbertConfig(
        **{**TINY, **overrides},
        embedding_size=16,
        num_labels=num_labels,
        hidden_act="gelu_new",
        hidden_dropout_prob=0.1,
        classifier_dropout_prob=0.1,
    )
    model = AlbertForSequenceClassification(cfg)
    model.eval().save_pretrained(str(path))
    return model


def make_distilbert(path, num_labels=3, seed=0, **overrides):
    """DistilBERT with TINY's sizes in its own field names (dim, hidden_dim, n_layers, n_heads)."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    cfg = DistilBertConfig(
        **{
            "vocab_size": TINY["vocab_size"],
            "dim": TINY["hidden_size"],
            "hidden_dim": TINY["intermediate_size"],
            "n_layers": TINY["num_hidden_layers"],
            "n_heads": TINY["num_attention_heads"],
            "max_position_embeddings": TINY["max_position_embeddings"],
            **overrides,
        },
        num_labels=num_labels,
    )
    model = DistilBertForSequenceClassification(cfg)
    model.eval().save_pretrained(str(path))
    return model


def make_electra(path, num_labels=3, seed=0, **overrides):
    """ELECTRA discriminator with embeddings narrower than the hidden size (embedding_size
    16: an `embeddings_project`), unless `embedding_size` is overridden."""
    import torch
    from transformers import ElectraConfig, ElectraForSequenceClassification

    torch.manual_seed(seed)
    cfg = ElectraConfig(**{**TINY, "embedding_size": 16, **overrides}, num_labels=num_labels)
    model = ElectraForSequenceClassification(cfg)
    model.eval().save_pretrained(str(path))
    return model


def make_xlm_roberta(path, num_labels=3, seed=0, **overrides):
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(
        **{**TINY, "max_position_embeddings": 70, **overrides},
        num_labels=num_labels,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = XLMRobertaForSequenceClassification(cfg)
    model.eval().save_pretrained(str(path))
    return model


def torch_hidden_states(model, batch, token_types=True):
    """transformers' `output_hidden_states=True` of a `*ForSequenceClassification`:
    [L + 1, B, T, H] numpy (row 0 the embeddings' output, row l the output of layer l)."""
    import torch

    with torch.no_grad():
        kwargs = {
            k: torch.tensor(v, dtype=torch.long) for k, v in batch.items() if token_types or k != "token_type_ids"
        }
        out = model(**kwargs, output_hidden_states=True)
    return np.stack([h.numpy() for h in out.hidden_states])


MODERNBERT = dict(
    vocab_size=99,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=128,
    global_attn_every_n_layers=2,
    local_attention=8,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
)


def make_modernbert(path, num_labels=3, seed=0, token_classification=False, **overrides):
    """ModernBERT (hidden 64, 3 layers, 4 heads, GeGLU 96, layers 0 and 2 global, a local
    window of 8 tokens) for sequence (or token) classification; `overrides` e.g.
    `classifier_pooling="mean"`, `norm_bias=True`. Layer norms and biases are randomised
    (transformers initialises them to ones and zeros) so that every one matters."""
    import torch
    from transformers import ModernBertConfig, ModernBertForSequenceClassification, ModernBertForTokenClassification

    torch.manual_seed(seed)
    cfg = ModernBertConfig(**{**MODERNBERT, **overrides}, num_labels=num_labels)
    cls = ModernBertForTokenClassification if token_classification else ModernBertForSequenceClassification
    model = cls(cfg)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                weight.copy_(1.0 + 0.2 * torch.randn_like(weight))
            elif name.endswith("bias"):
                weight.copy_(0.1 * torch.randn_like(weight))
    model.eval().save_pretrained(str(path))
    return model


def modernbert_batch(batch=4, length=24, vocab=99, seed=0):
    """A right-padded batch of `length` tokens (rows 1 and 3 padded: 17 and 6 real tokens),
    long enough that a local window of 8 matters."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 17:] = 0
    mask[3, 6:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


DEBERTA = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    relative_attention=True,
    position_buckets=8,
    pos_att_type=["p2c", "c2p"],
    share_att_key=True,
    norm_rel_ebd="layer_norm",
    position_biased_input=False,
    type_vocab_size=0,
    hidden_act="gelu",
    pooler_hidden_act="gelu",
    pooler_hidden_size=32,
    pad_token_id=0,
)


def make_deberta(path, num_labels=3, seed=0, token_classification=False, **overrides):
    """DeBERTa-v3-like (hidden 32, 3 layers, 4 heads, 37 intermediate, 8 position buckets,
    c2p and p2c, shared keys, normalised relative embeddings, no token types) for sequence
    (or token) classification. Layer norms and biases are randomised (transformers
    initialises them to ones and zeros) so that every one matters; the query and key
    projections and the relative embeddings are scaled up so that attention, and the
    relative positions in it, are far from uniform."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2ForTokenClassification

    torch.manual_seed(seed)
    cfg = DebertaV2Config(**{**DEBERTA, **overrides}, num_labels=num_labels)
    cls = DebertaV2ForTokenClassification if token_classification else DebertaV2ForSequenceClassification
    model = cls(cfg)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "LayerNorm" in name and name.endswith("weight"):
                weight.copy_(1.0 + 0.2 * torch.randn_like(weight))
            elif name.endswith("bias"):
                weight.copy_(0.1 * torch.randn_like(weight))
            if name.endswith(("query_proj.weight", "key_proj.weight")):
                weight.mul_(8.0)  # attention far from uniform, so that positions matter
            if name.endswith("rel_embeddings.weight"):
                weight.mul_(50.0)  # O(1) without their LayerNorm too
    model.eval().save_pretrained(str(path))
    return model


def deberta_batch(batch=4, length=20, vocab=99, seed=0):
    """A right-padded batch of `length` tokens (rows 1 and 3 padded: 13 and 5 real
    tokens), longer than the 4 exact relative positions of 8 buckets."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 13:] = 0
    mask[3, 5:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
