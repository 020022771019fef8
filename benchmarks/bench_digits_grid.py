"""Benchmark (b): digits ViT trained from scratch, cyclic grid, 1 fine-tune epoch per cycle (ALGORITHMS.md §16 #9).

Methods: global magnitude, SEB (cyclic: SEB scores |W|/w_ℓ(s) with the four-regime table, cumulative, same FT),
SER (from the first grid point), Hybrid (magnitude ≤ 0.20, SER after) and optionally classical RMT.
Splits: stratified 60/20/20 train/selection/test; the test split is only reported, never used for a choice
(all hyper-parameters below were fixed before any run). Per-cycle FT: plain CE with label smoothing 0.1 (§11.1),
SGD momentum 0.9, 1 epoch; SER steps use the §6 ratios (keep-FT LR = 5/3 × magnitude LR, linear ramp 1→2).

    python benchmarks/bench_digits_grid.py --seeds 0 1 2 --out results.json
    python benchmarks/bench_digits_grid.py --timing       # 50% Hybrid run, 3 cycles
"""

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from hf_mpprune import (  # noqa: E402
    CycleFinetune,
    HybridConfig,
    MPPruner,
    PruningConfig,
    RMTConfig,
    SERConfig,
    make_train_step,
    register_method,
    run_cycles,
)
from hf_mpprune.digits import build_digits_vit  # noqa: E402
from hf_mpprune.methods.magnitude import MagnitudeConfig, select  # noqa: E402
from hf_mpprune.methods.ser import layer_weights  # noqa: E402


# The data pipeline and trainer behind the published grid numbers (standardised pixels, train/selection/test,
# a plain AdamW loop); the package's `hf_mpprune.digits` uses the Trainer-based variant of the KD benchmark.
def load_digits_splits(seed: int = 0) -> dict[str, TensorDataset]:
    """Stratified 60/20/20 `train` / `selection` / `test` splits of `load_digits`, pixels scaled to [0, 1] and
    standardised with the training split's mean/std. Items are `(pixel_values (1, 8, 8), label)`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=seed)
    sel, te = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    x = x.astype(np.float32) / 16.0
    mu, sd = x[tr].mean(), x[tr].std()
    out = {}
    for name, ids in (("train", tr), ("selection", sel), ("test", te)):
        px = torch.from_numpy((x[ids] - mu) / sd).reshape(-1, 1, 8, 8)
        out[name] = TensorDataset(px, torch.from_numpy(y[ids]).long())
    return out


def train_digits_vit(model, train: TensorDataset, *, epochs: int = 12, lr: float = 3e-3, batch_size: int = 64,
                     weight_decay: float = 0.05, seed: int = 0):  # fmt: skip
    """AdamW with linear warmup (1 epoch) and cosine decay; returns the model (trained in place)."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * len(loader)
    warm = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: (k + 1) / warm if k < warm else 0.5 * (1 + np.cos(np.pi * (k - warm) / (total - warm)))
    )
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(pixel_values=x).logits, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


@torch.no_grad()
def evaluate_accuracy(model, dataset: TensorDataset, batch_size: int = 512) -> float:
    """Top-1 accuracy as a fraction in [0, 1] (eval mode, restored afterwards)."""
    was = model.training
    model.eval()
    correct = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += int((model(pixel_values=x).logits.argmax(-1) == y).sum())
    model.train(was)
    return correct / len(dataset)


GRID = [0.2, 0.4, 0.55, 0.7]  # shortened for the 2-core box (spec grid: 0.05 … 0.70)
FT_LR = 1e-2  # magnitude / SEB / RMT per-cycle SGD LR (digits scale; paper 3e-5 for ViT-B)
SER_KW = {
    "keep_ft_lr": FT_LR * 5 / 3,  # the §6 ratio 5e-5 : 3e-5
    "phase_a_lr": 1e-3,  # AdamW, half the pre-training LR (8 × keep LR is far too large for AdamW here)
    "phase_a_batch_size": 128,
    "phase_a_min_batches": 4,  # the paper's 128 batches/epoch is ~15 digits epochs; scaled down
}


@dataclass
class BenchSEBConfig(PruningConfig):
    method: str = "bench-seb"


@register_method("bench-seb", BenchSEBConfig, needs_spectra=True)
def bench_seb(ctx):
    """SEB scores |W|/w_ℓ(s) (four-regime table, dense spectra), cumulative global selection."""
    w = layer_weights(ctx, ctx.config.sparsity)
    ctx.record["layer_weights"] = w
    return select(ctx, {la.name: la.weight.abs() / w[la.name] for la in ctx.layers}, "global")


def configs(s_max: float) -> dict:
    return {
        "magnitude": MagnitudeConfig(sparsity=s_max),
        "seb": BenchSEBConfig(sparsity=s_max),
        "ser": SERConfig(sparsity=s_max, **SER_KW),
        "hybrid": HybridConfig(sparsity=s_max, **SER_KW),
        "rmt": RMTConfig(sparsity=s_max),
    }


def dense_model(seed: int, splits, epochs: int):
    """Train the dense ViT; if it fails on the SELECTION split (< 80%), retrain once at half the LR (rule fixed
    after seed 2 diverged at LR 3e-3; the test split plays no part)."""
    t0 = time.perf_counter()
    model = train_digits_vit(build_digits_vit(seed), splits["train"], epochs=epochs, seed=seed)
    lr = 3e-3
    if evaluate_accuracy(model, splits["selection"]) < 0.8:
        lr = 1.5e-3
        model = train_digits_vit(build_digits_vit(seed), splits["train"], epochs=epochs, lr=lr, seed=seed)
    model.dense_lr = lr
    return model, time.perf_counter() - t0


def run_method(dense, splits, cfg, grid, seed: int) -> dict:
    model = copy.deepcopy(dense)
    pruner = MPPruner(model, cfg)
    step = make_train_step(splits["train"], batch_size=64, loss="ce", seed=seed)
    t0 = time.perf_counter()
    recs = run_cycles(
        pruner, grid, train_step=step, progress=False, finetune=CycleFinetune(epochs=1.0, lr=FT_LR),
        evaluate=lambda m: {"accuracy": evaluate_accuracy(m, splits["test"])},
        selection_eval=lambda m: {"accuracy": evaluate_accuracy(m, splits["selection"])},
    )  # fmt: skip
    return {
        "seconds": time.perf_counter() - t0,
        "steps": [
            {
                k: r.get(k)
                for k in (
                    "target_sparsity",
                    "achieved_sparsity",
                    "stage",
                    "pre_ft",
                    "post_ft",
                    "post_ft_selection",
                    "restore_count",
                    "cycle_seconds",
                )
            }  # fmt: skip
            for r in recs
        ],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="*", default=["magnitude", "seb", "ser", "hybrid"])
    ap.add_argument("--grid", type=float, nargs="+", default=GRID)
    ap.add_argument("--pretrain-epochs", type=int, default=12)
    ap.add_argument("--timing", action="store_true", help="also time a 50%% Hybrid run, 3 cycles (0.2, 0.35, 0.5)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="+", default=None, help="only print the table of these result JSON files")
    args = ap.parse_args(argv)
    if args.merge:
        runs = {}
        for path in args.merge:
            with open(path) as f:
                runs.update(json.load(f)["runs"])
        sys.stdout.write(summarise({"runs": runs}) + "\n")
        return 0
    out = {"grid": args.grid, "seeds": args.seeds, "threads": torch.get_num_threads(), "runs": {}}
    for seed in args.seeds:
        splits = load_digits_splits(seed)
        dense, t_dense = dense_model(seed, splits, args.pretrain_epochs)
        row = {
            "dense_test": evaluate_accuracy(dense, splits["test"]),
            "dense_seconds": t_dense,
            "dense_lr": dense.dense_lr,
        }
        for name in args.methods:
            row[name] = run_method(dense, splits, configs(max(args.grid))[name], args.grid, seed)
        if args.timing:
            row["timing_hybrid50"] = run_method(dense, splits, configs(0.5)["hybrid"], [0.2, 0.35, 0.5], seed)
        out["runs"][str(seed)] = row
        sys.stdout.write(json.dumps({"seed": seed, "dense_test": row["dense_test"]}) + "\n")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    if args.methods:
        sys.stdout.write(summarise(out) + "\n")
    for seed, row in out["runs"].items():
        if "timing_hybrid50" in row:
            t = row["timing_hybrid50"]
            acc = [round(st["post_ft"]["accuracy"] * 100, 2) for st in t["steps"]]
            sys.stdout.write(f"seed {seed}: dense {row['dense_seconds']:.1f} s, Hybrid 0.2/0.35/0.5 {t['seconds']:.1f} s, "
                             f"post-FT test {acc}\n")  # fmt: skip
    return 0


def summarise(out: dict) -> str:
    """Markdown table: post-FT test accuracy mean ± sd over seeds per method and grid point."""
    runs = list(out["runs"].values())
    methods = [k for k in runs[0] if isinstance(runs[0][k], dict) and not k.startswith("timing")]
    dense = [r["dense_test"] * 100 for r in runs]
    lines = [f"dense: {_ms(dense)}", "", "| s | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    grid = [st["target_sparsity"] for st in runs[0][methods[0]]["steps"]]
    for i, s in enumerate(grid):
        cells = [_ms([r[m]["steps"][i]["post_ft"]["accuracy"] * 100 for r in runs]) for m in methods]
        lines.append(f"| {s:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "pre-FT (right after the prune step) test accuracy:", ""]
    lines += ["| s | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for i, s in enumerate(grid):
        cells = [_ms([r[m]["steps"][i]["pre_ft"]["accuracy"] * 100 for r in runs]) for m in methods]
        lines.append(f"| {s:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| seconds | " + " | ".join(_ms([r[m]["seconds"] for r in runs]) for m in methods) + " |")
    lines += ["", "paired difference vs magnitude (pp, same seed and dense model), mean ± sd:", ""]
    others = [m for m in methods if m != "magnitude"]
    lines += ["| s | " + " | ".join(others) + " |", "|---" * (len(others) + 1) + "|"]
    for i, s in enumerate(grid):
        acc = {m: [r[m]["steps"][i]["post_ft"]["accuracy"] * 100 for r in runs] for m in methods}
        diffs = [_ms([a - b for a, b in zip(acc[m], acc["magnitude"])]) for m in others]
        lines.append(f"| {s:.2f} | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def _ms(xs: list[float]) -> str:
    mu = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return f"{mu:.2f} ± {sd:.2f}"


if __name__ == "__main__":
    sys.exit(main())
