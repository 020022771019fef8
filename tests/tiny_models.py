"""Tiny, seeded, real-architecture models built in code (no Hub). Sizes keep every k:n pattern legal
(hidden 64, intermediate 128: divisible by 4, 8 and 16); one awkward variant (intermediate 37)."""

import torch
from torch import nn


def _finish(model, inputs):
    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out.last_hidden_state
    assert torch.isfinite(logits).all(), "tiny model produced NaN/Inf"
    return model


def vit_inputs(batch=2, image_size=32):
    return {"pixel_values": torch.randn(batch, 3, image_size, image_size)}


def bert_inputs(batch=2, seq=8, vocab=99):
    return {
        "input_ids": torch.randint(0, vocab, (batch, seq)),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
    }


def tiny_vit(intermediate_size=128, num_labels=10):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=intermediate_size, num_labels=num_labels,
    )  # fmt: skip
    return _finish(ViTForImageClassification(cfg), vit_inputs())


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64,
    )  # fmt: skip
    return _finish(BertModel(cfg), bert_inputs())


def tiny_resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10)
    return _finish(ResNetForImageClassification(cfg), vit_inputs())


def tiny_convnext():
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(0)
    cfg = ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=10)
    return _finish(ConvNextForImageClassification(cfg), vit_inputs())


def tiny_deit():
    from transformers import DeiTConfig, DeiTForImageClassification

    torch.manual_seed(0)
    cfg = DeiTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=10,
    )  # fmt: skip
    return _finish(DeiTForImageClassification(cfg), vit_inputs())


def tiny_swin():
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    cfg = SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=10
    )
    return _finish(SwinForImageClassification(cfg), vit_inputs())


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=99, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    return _finish(GPT2LMHeadModel(cfg), {"input_ids": torch.randint(0, 99, (2, 8))})


class MLP(nn.Module):
    """Plain ReLU MLP for pure-torch paths."""

    def __init__(self, sizes=(64, 128, 128, 10)):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x
