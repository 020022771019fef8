"""Local datasets and tiny saved models for the data-layer tests (built in code, offline): an imagefolder of sklearn
digits as 32×32 RGB PNGs (train / validation), a jsonl of sentences, tiny ViT / ConvNeXtV2 / ResNet folders saved
with their image processors."""

import json
import os

import numpy as np
import torch


N_TRAIN, N_VAL = 300, 100


def digits_imagefolder(
    root: str, n_train: int = N_TRAIN, n_val: int = N_VAL, size: int = 32, mode: str = "RGB"
) -> str:
    """`root/train/<digit>/<i>.png` and `root/validation/<digit>/<i>.png` (first rows of load_digits)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    for split, rows in (("train", range(n_train)), ("validation", range(n_train, n_train + n_val))):
        for i in rows:
            d = os.path.join(root, split, str(int(data.target[i])))
            os.makedirs(d, exist_ok=True)
            im = Image.fromarray((data.images[i] * 15).astype(np.uint8), mode="L").resize((size, size), Image.BILINEAR)
            im.convert(mode).save(os.path.join(d, f"{i}.png"))
    return root


def sentences_jsonl(path: str, n: int = 96) -> str:
    from hf_mpprune.builtins.sources import make_sentences

    with open(path, "w", encoding="utf-8") as f:
        for i, s in enumerate(make_sentences(n, seed=7)):
            f.write(json.dumps({"id": i, "sentence": s}) + "\n")
    return path


def _labels(cfg):
    cfg.id2label = {i: str(i) for i in range(10)}
    cfg.label2id = {str(i): i for i in range(10)}
    return cfg


def tiny_vit_dir(path: str, *, hidden: int = 32, layers: int = 2, mlp: int = 64, do_resize: bool = True) -> str:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = _labels(ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=2, intermediate_size=mlp, num_labels=10))  # fmt: skip
    ViTForImageClassification(cfg).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, do_resize=do_resize).save_pretrained(path)
    return path


def tiny_convnextv2_dir(path: str) -> str:
    from transformers import ConvNextImageProcessor, ConvNextV2Config, ConvNextV2ForImageClassification

    torch.manual_seed(0)
    cfg = _labels(ConvNextV2Config(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=32, num_labels=10))
    ConvNextV2ForImageClassification(cfg).save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(path)
    return path


def tiny_resnet_dir(path: str) -> str:
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = _labels(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck",
                               num_labels=10))  # fmt: skip
    ResNetForImageClassification(cfg).save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(path)
    return path


def tiny_bert_dir(path: str, tokenizer_from: str) -> str:
    """A tiny BertModel (MiniLM's family) saved with a real WordPiece tokenizer (copied from `tokenizer_from`)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_llama_dir(path: str) -> str:
    """A tiny LlamaForCausalLM (grouped-query attention) saved with a word-level tokenizer of the template
    sentences' words (`tiny_models.tiny_lm_tokenizer`)."""
    from .tiny_models import tiny_llama, tiny_lm_tokenizer

    tok = tiny_lm_tokenizer()
    tiny_llama(vocab_size=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


FAMILIES = {"vit": tiny_vit_dir, "convnextv2": tiny_convnextv2_dir, "resnet": tiny_resnet_dir, "llama": tiny_llama_dir}


def family(model_id: str) -> str:
    """The architecture family of a shipped recipe's model: vit, convnextv2, resnet, bert or llama."""
    mid = model_id.lower()
    pairs = (
        ("vit", "vit"),
        ("convnextv2", "convnextv2"),
        ("resnet", "resnet"),
        ("minilm", "bert"),
        ("llama", "llama"),
    )
    for key, fam in pairs:
        if key in mid:
            return fam
    raise ValueError(f"no tiny stand-in for {model_id!r}")


def local_overrides(raw: dict, model_dir: str, data: str, text: bool) -> list[str]:
    """`--set` overrides that point a shipped recipe at a tiny local model and local data, at CI size."""
    sets = [f"model.id={model_id_value(model_dir)}", "model.dtype=null", "model.revision=null", "model.device=null",
            "output.plots=false", "push=null"]  # fmt: skip
    for role in ("train", "calibration", "evaluation"):
        if role in raw:
            sets.append(f"{role}.dataset={data}")
            sets.append(f"{role}.batch_size=32")
    if "calibration" in raw:
        sets += ["calibration.size=16"] + (["calibration.split=train[:32]"] if text else [])
    if "evaluation" in raw:
        sets += ["evaluation.split=train[32:]" if text else "evaluation.split=validation"]
    if "train" in raw:
        sets.append("train.selection=0.2")
    if "distill" in raw:
        sets += ["distill.num_train_epochs=1", "distill.warmup_steps=0", "distill.per_device_train_batch_size=32"]
    if "finetune" in raw:
        sets.append("finetune.epochs=0.5")
    steps = raw["pruning"] if isinstance(raw["pruning"], list) else [raw["pruning"]]
    for i, step in enumerate(steps):  # SER phase A: a few small batches instead of 128 x 256 rows
        if step.get("method") in ("ser", "hybrid"):
            where = f"pruning.{i}" if isinstance(raw["pruning"], list) else "pruning"
            sets += [f"{where}.phase_a_min_batches=2", f"{where}.phase_a_batch_size=32"]
    schedule = raw["pruning"].get("schedule") if isinstance(raw["pruning"], dict) else None
    if schedule and len(schedule) > 3:  # a 10-step paper grid: keep the first, the switch point and the target
        sets.append(f"pruning.schedule=[{schedule[0]}, 0.25, {schedule[-1]}]")
    return sets


def model_id_value(path: str) -> str:
    return path
