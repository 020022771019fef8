"""Does KD recover more than plain CE? Digits ViT, 60% global magnitude masks, 1 epoch each (issue 3 acceptance).

Per seed: train the dense digits ViT (cached under benchmarks/out/), prune 60% by global magnitude, then fine-tune
one epoch with frozen masks either with KD from the dense teacher (kd_alpha=0.5, T=2, LS 0.1) or with plain
label-smoothed CE (kd_alpha=0, LS 0.1). Everything else is identical (AdamW, wd 0.01, warmup 10%, cosine,
batch 32). The learning rate of each arm is chosen on the validation split (mean over seeds); the test split is
only reported.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_kd.py --seeds 0 1 2
"""

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_mpprune import MPDistillationArguments, MPDistillationTrainer, MPPruner, PruningConfig  # noqa: E402
from hf_mpprune.builtins.digits import accuracy, load_digits_splits, trained_digits_vit  # noqa: E402
from hf_mpprune.training.trainer import realised_sparsity  # noqa: E402


OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
ARMS = {"kd": 0.5, "ce": 0.0}


def dense_model(seed: int, splits, epochs: int):
    """The trained dense digits ViT of this seed, from the cache when present."""
    return trained_digits_vit(seed, splits, epochs=epochs, cache_dir=OUT)


def finetune(student, teacher, masks, splits, kd_alpha: float, lr: float, seed: int):
    with tempfile.TemporaryDirectory() as tmp:
        args = MPDistillationArguments(
            output_dir=tmp, kd_alpha=kd_alpha, learning_rate=lr, num_train_epochs=1, warmup_steps=0.1,
            use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=seed,
        )  # fmt: skip
        MPDistillationTrainer(student, teacher, masks, args=args, train_dataset=splits["train"]).train()
    assert realised_sparsity(student, masks) == masks.sparsity()
    return accuracy(student, splits["val"]), accuracy(student, splits["test"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sparsity", type=float, default=0.6)
    ap.add_argument("--dense-epochs", type=int, default=20)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    t0 = time.perf_counter()
    rows = []
    for seed in a.seeds:
        splits = load_digits_splits(seed)
        dense = dense_model(seed, splits, a.dense_epochs)
        row = {"seed": seed, "dense": (accuracy(dense, splits["val"]), accuracy(dense, splits["test"]))}
        pruned = copy.deepcopy(dense)
        masks = MPPruner(pruned, PruningConfig("magnitude", a.sparsity)).prune()
        row["pruned"] = (accuracy(pruned, splits["val"]), accuracy(pruned, splits["test"]))
        for arm, alpha in ARMS.items():
            for lr in a.lrs:
                row[f"{arm}@{lr:g}"] = finetune(copy.deepcopy(pruned), dense, masks, splits, alpha, lr, seed)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"dense": _stats(rows, "dense"), "pruned": _stats(rows, "pruned")}
    for arm in ARMS:  # LR chosen on validation (mean over seeds), test reported
        best = max(a.lrs, key=lambda lr, arm=arm: statistics.mean(r[f"{arm}@{lr:g}"][0] for r in rows))
        summary[f"{arm} (lr {best:g})"] = _stats(rows, f"{arm}@{best:g}")
    print("\n| model | val acc (mean ± sd) | test acc (mean ± sd) |\n|---|---|---|")
    for name, (v, t) in summary.items():
        print(f"| {name} | {v} | {t} |")
    print(f"\nseeds {a.seeds}, sparsity {a.sparsity}, {time.perf_counter() - t0:.0f} s")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "bench_kd.json"), "w") as f:
        json.dump({"rows": rows, "summary": summary}, f, indent=1)
    return 0


def _stats(rows, key):
    out = []
    for i in (0, 1):
        xs = [100 * r[key][i] for r in rows]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        out.append(f"{statistics.mean(xs):.2f} ± {sd:.2f}")
    return out


if __name__ == "__main__":
    sys.exit(main())
