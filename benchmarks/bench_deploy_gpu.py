"""ViT-B/16 (ViTConfig(), random init, 2:4 magnitude masks on the 72 block Linears) 2:4 conversion + speed audit.

Usage (GPU): python benchmarks/bench_deploy_gpu.py --out DIR [--tome 8] [--batches 1 16 64 128 256]
Writes DIR/speed_r{r}.json and prints markdown. Random weights: timing and numerical equivalence only.
"""

import argparse
import json
import os
import time

import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from hf_mpprune import Masks, mac_report
from hf_mpprune.core.config import KeepPattern
from hf_mpprune.deploy.speed import speed_audit


def two_four_masks(model):
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and ".layers." in name:
            g = mod.weight.detach().reshape(mod.weight.shape[0], -1, 4)
            idx = g.abs().topk(2, dim=-1).indices
            out[name] = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True).reshape(mod.weight.shape)
    return Masks(out, KeepPattern(2, 4))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--tome", type=int, nargs="+", default=[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 128, 256])
    p.add_argument("--compile-batches", type=int, nargs="+", default=[128])
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(num_labels=1000)).eval()
    masks = two_four_masks(model)
    masks.apply_(model)
    for r in args.tome:
        t0 = time.time()
        rep = speed_audit(
            model, masks, batches=tuple(args.batches), tome_r=r, compile=not args.no_compile,
            compile_batches=tuple(args.compile_batches), reps=args.reps,
        )  # fmt: skip
        d = rep.to_dict()
        m = model if not r else None
        if m is not None:
            d["macs"] = {
                k: v
                for k, v in mac_report(m, {"pixel_values": torch.randn(1, 3, 224, 224)}, masks).to_dict().items()
                if k != "rows"
            }
        d["wall_s"] = time.time() - t0
        with open(os.path.join(args.out, f"speed_r{r}.json"), "w") as f:
            json.dump(d, f, indent=2, default=str)
        print(
            f"## ToMe r={r} ({d['wall_s']:.0f} s)\n{rep.to_markdown()}\n{json.dumps(rep.equivalence)}\n{json.dumps({k: v for k, v in rep.conversion.items() if k != 'skipped'})[:600]}\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
