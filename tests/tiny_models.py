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


def lm_inputs(batch=2, seq=8, vocab=99, pad_left=0):
    """Token ids and an attention mask; the last row has `pad_left` padding positions at the start (left padding,
    as a decoder tokenizer pads for generation), so the blocks get a real attention mask."""
    ids = torch.randint(0, vocab, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, :pad_left] = 0
    return {"input_ids": ids, "attention_mask": mask}


def tiny_lm_tokenizer():
    """A word-level tokenizer (lower-cased words and punctuation of the builtin template sentences, `<unk>`,
    `<eos>`) that decoder tests save next to a tiny LM; `len(tok)` is the model's vocabulary size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_mpprune.builtins.sources import make_sentences

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(make_sentences(640), trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def tiny_llama(kind="llama", **overrides):
    """A tiny causal LM with grouped-query attention (4 query heads, 2 key/value heads). `kind`: llama, mistral,
    qwen2, qwen3, gemma3 (Gemma 3 alternates sliding-window and global layers: `layer_types`)."""
    import transformers as tr

    classes = {
        "llama": (tr.LlamaConfig, tr.LlamaForCausalLM), "mistral": (tr.MistralConfig, tr.MistralForCausalLM),
        "qwen2": (tr.Qwen2Config, tr.Qwen2ForCausalLM), "qwen3": (tr.Qwen3Config, tr.Qwen3ForCausalLM),
        "gemma3": (tr.Gemma3TextConfig, tr.Gemma3ForCausalLM),
    }  # fmt: skip
    cfg_cls, model_cls = classes[kind]
    kw = {
        "vocab_size": 99, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 64,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
    }  # fmt: skip
    if kind == "gemma3":
        kw.update(num_hidden_layers=3, sliding_window=4, layer_types=["sliding_attention", "full_attention",
                                                                     "sliding_attention"])  # fmt: skip
    kw.update(overrides)
    torch.manual_seed(0)
    return _finish(model_cls(cfg_cls(**kw)), lm_inputs())


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
