"""LoRA (masked merge) and SHiRA-on-kept-entries vs full fine-tuning on a 50%-pruned digits ViT (issue 14).

Per seed: the dense digits ViT (trained 20 epochs, cached under benchmarks/out/), 50% global magnitude masks, then
2 epochs of KD (kd_alpha=0.5, T=2, LS 0.1, AdamW, warmup 10%, cosine, batch 32) from the dense model with frozen
masks, in one of three arms:

* full: every weight trains (pruned entries frozen at +0.0);
* lora: PEFT LoRA r=8, alpha 16 on q/k/v/o/fc1/fc2 (+ the classifier trained in full), then `masked_merge`
  (accuracy reported before the merge, i.e. with the dense adapter update, and after re-masking);
* shira: PEFT SHiRA r=8 restricted to kept entries (`sparse_adapter_config`, + classifier), merged (no loss).

The learning rate of each arm is chosen from its grid by mean validation accuracy over the seeds; the test split is
only reported.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_lora.py --seeds 0 1 2
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
from hf_mpprune.training.masking import realised_sparsity  # noqa: E402
from hf_mpprune.training.peft import masked_merge, sparse_adapter_config  # noqa: E402


OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]
GRID = {"full": [1e-4, 3e-4], "lora": [1e-3, 3e-3], "shira": [1e-3, 3e-3]}


def run_arm(arm, dense, splits, lr, seed, sparsity):
    import peft

    teacher = dense
    student = copy.deepcopy(dense)
    pruner = MPPruner(student, PruningConfig("magnitude", sparsity, targets=["role:attn", "role:mlp"]))
    masks = pruner.prune()
    model, extra = student, {}
    if arm == "lora":
        cfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=LINEARS, modules_to_save=["classifier"])
        model = peft.get_peft_model(student, cfg)
    elif arm == "shira":
        model = peft.get_peft_model(student, sparse_adapter_config(student, r=8, seed=seed,
                                                                   modules_to_save=["classifier"]))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        args = MPDistillationArguments(
            output_dir=tmp, kd_alpha=0.5, learning_rate=lr, num_train_epochs=2, warmup_steps=0.1, use_cpu=True,
            save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=seed,
        )  # fmt: skip
        MPDistillationTrainer(model=model, teacher=teacher, args=args, train_dataset=splits["train"]).train()
    if arm != "full":
        extra["val_before_merge"] = accuracy(model, splits["val"])
        extra["test_before_merge"] = accuracy(model, splits["test"])
        model = masked_merge(model)
        step = pruner.ledger.steps[-1]
        extra["update_retention"] = step["update_retention"]
        extra["re_zeroed"] = step["re_zeroed"]
    assert realised_sparsity(model, masks) == masks.sparsity()
    trainable = sum(p.numel() for p in model.parameters())
    return {"val": accuracy(model, splits["val"]), "test": accuracy(model, splits["test"]), "params": trainable,
            **extra}  # fmt: skip


def ms(xs):
    return (
        f"{100 * statistics.mean(xs):.2f} ± {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{100 * xs[0]:.2f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sparsity", type=float, default=0.5)
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    t0 = time.perf_counter()
    rows = []
    for seed in a.seeds:
        splits = load_digits_splits(seed)
        dense = trained_digits_vit(seed, splits, epochs=20, cache_dir=OUT)
        pruned = copy.deepcopy(dense)
        MPPruner(pruned, PruningConfig("magnitude", a.sparsity, targets=["role:attn", "role:mlp"])).prune()
        rows.append({"seed": seed, "arm": "dense", "lr": None, "test": accuracy(dense, splits["test"]),
                     "val": accuracy(dense, splits["val"])})  # fmt: skip
        rows.append({"seed": seed, "arm": "pruned", "lr": None, "test": accuracy(pruned, splits["test"]),
                     "val": accuracy(pruned, splits["val"])})  # fmt: skip
        for arm, lrs in GRID.items():
            for lr in lrs:
                r = run_arm(arm, dense, splits, lr, seed, a.sparsity)
                rows.append({"seed": seed, "arm": arm, "lr": lr, **r})
                print(json.dumps(rows[-1]), flush=True)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "bench_lora.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n| arm | LR (val-chosen) | val acc % | test acc % | test before merge % | update retention |")
    print("|---|---|---|---|---|---|")
    for arm in ["dense", "pruned", *GRID]:
        sel = [r for r in rows if r["arm"] == arm]
        if arm in GRID:
            best = max(GRID[arm], key=lambda lr: statistics.mean(r["val"] for r in sel if r["lr"] == lr))
            sel = [r for r in sel if r["lr"] == best]
        else:
            best = None
        before = ms([r["test_before_merge"] for r in sel]) if arm in ("lora", "shira") else "–"
        ret = f"{statistics.mean(r['update_retention'] for r in sel):.3f}" if arm in ("lora", "shira") else "–"
        print(f"| {arm} | {best or '–'} | {ms([r['val'] for r in sel])} | {ms([r['test'] for r in sel])} | {before} "
              f"| {ret} |")  # fmt: skip
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
