"""Accuracy of a small digits ViT under off-the-shelf ToMe (r merged tokens per block), 3 seeds.

ViT: 8x8 sklearn digits, patch 2 (16 patches + cls = 17 tokens), width 96, 4 blocks, 4 heads, MLP 192.
Each seed trains a dense model (no ToMe), then evaluates the held-out split with ToMe r in {0..4} patched in.
Usage: OMP_NUM_THREADS=1 python benchmarks/bench_tome_digits.py [--epochs 40] [--seeds 0 1 2]
"""

import argparse
import json
import statistics
import time

import torch
from sklearn.datasets import load_digits
from transformers import ViTConfig, ViTForImageClassification

from hf_mpprune import apply_tome, mac_report, remove_tome


def data(seed_split: int = 0):
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.5) / 0.5
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed_split))
    tr, te = perm[:1347], perm[1347:]
    return x[tr], y[tr], x[te], y[te]


def build(seed: int):
    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=192, num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return ViTForImageClassification(cfg)


def train(model, x, y, epochs: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * ((len(y) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((model(pixel_values=x).logits.argmax(-1) == y).float().mean())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rs", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    xtr, ytr, xte, yte = data()
    acc = {r: [] for r in args.rs}
    macs = {}
    t0 = time.time()
    for seed in args.seeds:
        model = train(build(seed), xtr, ytr, args.epochs, seed)
        for r in args.rs:
            rec = apply_tome(model, r=r)
            acc[r].append(accuracy(model, xte, yte))
            if seed == args.seeds[0]:
                macs[r] = {
                    "macs": mac_report(model, {"pixel_values": xte[:1]}).dense_macs,
                    "tokens": rec["token_schedule"],
                }
            remove_tome(model)
    rows = []
    base = acc[args.rs[0]]
    print(f"| r | tokens per block | MACs/img | acc % (mean ± sd, {len(args.seeds)} seeds) | drop vs r=0 (pp) |")
    print("|---:|---|---:|---:|---:|")
    for r in args.rs:
        drops = [100 * (b - a) for a, b in zip(acc[r], base)]
        sd = statistics.stdev if len(args.seeds) > 1 else (lambda v: 0.0)
        row = {"r": r, "acc": acc[r], "drop_pp": drops, **macs[r]}
        rows.append(row)
        print(
            f"| {r} | {macs[r]['tokens']} | {macs[r]['macs']:,} | {100 * statistics.mean(acc[r]):.2f} ± "
            f"{100 * sd(acc[r]):.2f} | {statistics.mean(drops):.2f} ± {sd(drops):.2f} |"
        )
    print(f"wall {time.time() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
