"""Issue 23 scaling rows: wall time and peak RSS of our methods against llm-compressor's SparseGPT on random-init
Llama-shaped causal LMs of growing size (vocabulary 32000, grouped-query attention, SwiGLU), up to the largest
that fits 24 GiB. For the lead to run alone on a quiet machine: timing on a shared box is meaningless.

Every (model, method) runs in a FRESH subprocess (peak RSS = that run's own `ru_maxrss`), seed 0, `--threads`
intra-op threads. Calibration: `--samples` random token windows of `--seq` tokens in batches of 8 (the 128 × 2048
convention scaled down). Registered layers: the q/k/v/o/gate/up/down projections of every block (embeddings and
LM head dense, llm-compressor's `ignore=["re:.*lm_head"]`); 50 % unstructured for the one-shot methods, CAST 2:4.
The peer (`peer-sparsegpt`): `peer_llmcompressor.py` in its own venv (`benchmarks/peer_venv.sh`) on the very same
model (saved) and batches, `sequential_targets=["LlamaDecoderLayer"]`. A run that exceeds `--timeout` or runs out
of memory is a row with its error. Growth exponents b (time / RSS ∝ params^b) over the sizes measured are printed
(`bench_scaling`).

  PYTHONPATH=. python benchmarks/bench_decoder_scaling.py --models llama-60m llama-160m llama-410m llama-1b \
      llama-2b --samples 16 --seq 512 --out benchmarks/out/decoder_scaling.json
"""

import argparse
import json
import os
import resource
import sys
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

from bench_scaling import print_exponents, print_table, run_cells  # noqa: E402


# Llama-shaped sizes (hidden, layers, heads, kv heads, intermediate); parameter counts include the 32000-token
# embedding and LM head. The 7B shape does not fit 24 GiB in float32 (27 GB of weights alone).
MODELS = {
    "llama-60m": (512, 8, 8, 4, 1376),
    "llama-160m": (768, 12, 12, 4, 2048),
    "llama-410m": (1024, 24, 16, 8, 2816),
    "llama-1b": (2048, 16, 32, 8, 5632),
    "llama-2b": (2560, 24, 32, 8, 6912),
}
METHODS = {
    "analyze": None,
    "wanda": {"method": "wanda", "sparsity": 0.5},
    "mp-wanda+rec": {"method": "mp-wanda", "sparsity": 0.5, "reconstruct": True},
    "sparsegpt": {"method": "sparsegpt", "sparsity": 0.5},
    "cast-2:4": {"method": "cast", "pattern": "2:4"},
    "peer-sparsegpt": None,  # llm-compressor's SparseGPT at 50 % in its own venv, same model and batches
}


def build(name: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, inter = MODELS[name]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=4096)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def one(name: str, method: str, samples: int, seq: int, threads: int) -> dict:
    import torch

    from hf_mpprune import MPPruner, PruningConfig

    torch.set_num_threads(threads)
    model = build(name)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32000, (samples, seq), generator=g)
    data = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in ids.split(8)]
    params = sum(p.numel() for p in model.parameters())
    row = {"model": name, "method": method, "params": params, "samples": samples, "seq": seq, "threads": threads}
    if method == "peer-sparsegpt":
        from peer_run import run_peer_on

        info = run_peer_on(model, data, "llama", threads, sparsity=0.5)
        if "error" in info:
            return {**row, "error": info["error"]}
        return {**row, "seconds": info["seconds"], "peak_rss_mib": info["peak_rss_mib"], "peer": info}
    t0 = time.perf_counter()
    if method == "analyze":
        MPPruner(model, PruningConfig(method="magnitude")).analyze(progress=False)
        split = {}
    else:
        cfg = {**METHODS[method], "calibration_samples": samples, "calibration_batch_size": 8}
        pruner = MPPruner(model, PruningConfig.from_dict(cfg))
        pruner.prune(calibration=data)
        split = pruner.ledger.steps[-1].get("time_split", {})
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**row, "seconds": round(secs, 2), "peak_rss_mib": round(rss), "time_split": split}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=7200, help="seconds per (model, method) subprocess")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.samples, args.seq, args.threads)), flush=True)
        return
    extra = ["--samples", str(args.samples), "--seq", str(args.seq), "--threads", str(args.threads)]
    rows = run_cells(os.path.abspath(__file__), args.models, args.methods, extra, args.timeout, args.out)
    print_table(rows, args.models, args.methods)
    print_exponents(rows, args.methods)


if __name__ == "__main__":
    main()
