"""Train the small decoder of the issue 23 benchmarks, here, on natural text (no Hub weights exist offline).

A Llama-shaped causal LM (RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention: 4 query / 2 key-value
heads; tied input / output embeddings) of ~2.4M parameters, trained from scratch with transformers' `Trainer` on the
`train` split of a corpus folder (`benchmarks/decoder_data.py`: documents = module files, split by document).
Tokenizer: a byte-level BPE trained with `tokenizers` on the same train split (no other text). Training windows:
the train documents joined with blank lines into one token stream (`hf_mpprune.data.lm.token_stream`, the same
stream the perplexity is computed on) and cut into `--seq`-token windows (transformers' run_clm `group_texts`). The `selection` split is only watched (loss per epoch); the `evaluation`
split is scored once at the end: perplexity with `hf_mpprune.metrics.perplexity` (non-overlapping `--seq` windows)
and, as the floor any LM must beat, the unigram baseline (train-split token frequencies, add-one smoothing) on the
same target tokens.

Deterministic for a given corpus, seed and thread count on one machine (Trainer seeds, one process).
Writes `--out`: `config.json`, `model.safetensors`, the tokenizer files and `train_record.json` (arguments,
corpus provenance, versions, losses, perplexities, seconds). Run it niced on a shared machine:

  nice -n 10 python benchmarks/train_small_decoder.py --corpus ~/.cache/hf_mpprune/decoder/corpus-sklearn \
      --out ~/.cache/hf_mpprune/decoder/llama-5m
"""

import argparse
import json
import math
import os
import sys
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from decoder_data import load_corpus  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from hf_mpprune.data.lm import token_stream  # noqa: E402
from hf_mpprune.metrics.perplexity import perplexity, stride_windows, window_nll  # noqa: E402


EOT = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT, pad_token=EOT, model_max_length=1024
    )


def chunks(ids: list[int], seq: int) -> list[dict]:
    return [{"input_ids": ids[i : i + seq], "labels": ids[i : i + seq]} for i in range(0, len(ids) - seq + 1, seq)]


def unigram_ppl(train_ids: list[int], windows: list[dict], vocab: int) -> float:
    """Perplexity of add-one-smoothed train-split token frequencies on the same targets as the model's."""
    counts = np.bincount(np.asarray(train_ids), minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    targets = np.asarray([t for w in windows for t in w["labels"][1:] if t != -100])
    return float(np.exp(-logp[targets].mean()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="corpus folder (decoder_data.py output or <split>.jsonl files)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--watch-split", default="selection", help="loss watched per epoch (never used to stop early)")
    p.add_argument("--eval-split", default="evaluation")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    corpus = load_corpus(args.corpus)
    train_texts = list(corpus[args.train_split]["text"])
    tok = train_tokenizer(train_texts, args.vocab)
    train_ids = token_stream(train_texts, tok)
    train = chunks(train_ids, args.seq)
    watch = chunks(token_stream(list(corpus[args.watch_split]["text"]), tok), args.seq)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    n_params = sum(q.numel() for q in model.parameters())
    print(f"{n_params:,} parameters; {len(train_ids):,} train tokens in {len(train)} windows", flush=True)
    targs = TrainingArguments(
        output_dir=os.path.join(args.out, "trainer"), num_train_epochs=args.epochs, learning_rate=args.lr,
        per_device_train_batch_size=args.batch, per_device_eval_batch_size=args.batch, lr_scheduler_type="cosine",
        warmup_steps=0.05, weight_decay=0.1, adam_beta2=0.95, max_grad_norm=1.0, seed=args.seed,
        data_seed=args.seed, use_cpu=True, eval_strategy="epoch", save_strategy="no", logging_steps=50,
        report_to="none", dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=watch,
                      data_collator=default_data_collator)  # fmt: skip
    trainer.train()
    model.eval()
    eval_windows = stride_windows(token_stream(list(corpus[args.eval_split]["text"]), tok), args.seq)
    nll, count = window_nll(model, eval_windows, batch_size=args.batch)
    record = {
        "args": vars(args),
        "parameters": n_params,
        "train_tokens": len(train_ids),
        "eval_windows": len(eval_windows),
        "eval_targets": int(count.sum()),
        "eval_perplexity": perplexity(nll, count),
        "unigram_perplexity": unigram_ppl(train_ids, eval_windows, len(tok)),
        "watch_losses": [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h],
        "train_losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "seconds": round(time.perf_counter() - t0, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "corpus": _provenance(args.corpus),
    }
    record["watch_perplexity_last"] = math.exp(record["watch_losses"][-1]) if record["watch_losses"] else None
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    with open(os.path.join(args.out, "train_record.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    print(json.dumps({k: record[k] for k in ("parameters", "eval_perplexity", "unigram_perplexity", "seconds")}))


def _provenance(path: str) -> dict:
    f = os.path.join(os.path.expanduser(path), "provenance.json")
    if not os.path.exists(f):
        return {"path": path}
    with open(f, encoding="utf-8") as fh:
        return {"path": path, **json.load(fh)}


if __name__ == "__main__":
    main()
