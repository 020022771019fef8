"""k:n on the digits ViT with 3 epochs of frozen-mask KD (issue 5, docs/algorithms.md §11.2): magnitude / Wanda /
SparseGPT k:n vs CAST (+ permutation, + reconstruction), dense source, 3 seeds.

Per seed: the dense digits ViT (`hf_mpprune.builtins.digits`, 20 epochs, cached under benchmarks/out/), calibration = 128
shuffled training images (the same for every cell), one k:n prune per cell (legality asserted), then 3 epochs of
KD from the dense model with `MPDistillationTrainer` (α 0.5, T 2, LS 0.1, AdamW wd 0.01, warmup 10%, cosine,
batch 32). The KD learning rate of every (pattern, cell) is chosen from `--lrs` by the mean **val** accuracy over
the seeds; the test split is only reported.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_digits_kn.py --seeds 0 1 2 --out benchmarks/out/digits_kn.json
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


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.block_steps import STEP_C, STEP_E  # noqa: E402
from benchmarks.stats import bootstrap_diff  # noqa: E402
from hf_mpprune import MPDistillationArguments, MPDistillationTrainer, MPPruner, PruningConfig  # noqa: E402
from hf_mpprune.builtins.digits import accuracy, load_digits_splits, trained_digits_vit  # noqa: E402
from hf_mpprune.methods.kn.legality import legality_audit  # noqa: E402
from hf_mpprune.training.trainer import realised_sparsity  # noqa: E402


OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
CELLS = {  # label: (method, extra options)
    "magnitude": ("magnitude", {}),
    "wanda": ("wanda-kn", {}),
    "sparsegpt": ("sparsegpt-kn", {}),
    "cast": ("cast", {}),
    "cast+perm": ("cast", {"permute_align": True}),
    "cast+rec": ("cast", {"reconstruct": True}),
    # issue 22's 2:4 candidates: RIA's score with its channel reallocation, CAST + joint mask / weight optimisation
    "ria+perm": ("wanda-kn", {"score": "ria", "permute_align": True, "perm_importance": "ria"}),
    "cast+alps": ("cast", {"refine": "alps"}),
    # issue 22: block output reconstruction on Wanda's k:n mask + re-fit, and on CAST (aimed at the blocks with
    # CAST's source weights swapped in)
    "wanda+rec": ("wanda", {"reconstruct": True}),
    "wanda+rec+bt": ("wanda", {"reconstruct": True, "block_epochs": 10}),
    "cast+rec+bt": ("cast", {"reconstruct": True, "block_epochs": 10}),
    "cast+alps+bt": ("cast", {"refine": "alps", "block_epochs": 10}),
    # the MiniLM-chosen block step "(c)": 15 corrupted copies per batch, 5 epochs, cosine-decayed rate
    "cast+alps+bt+aug15cos": ("cast", STEP_C),
    # the MiniLM-chosen block step "(e)": 31 corrupted copies per batch, 3 epochs, cosine-decayed rate
    "cast+alps+bt+aug31e3cos": ("cast", STEP_E),
}


def prune(dense, label: str, pattern: str, calib):
    method, extra = CELLS[label]
    model = copy.deepcopy(dense)
    cfg = PruningConfig.from_dict({"method": method, "pattern": pattern, **extra})  # an unknown option is refused
    pruner = MPPruner(model, cfg)
    t0 = time.perf_counter()
    masks = pruner.prune(calibration=calib)
    step = pruner.ledger.steps[-1]
    if "legality" in step:  # the k:n methods audit themselves
        assert step["legality"]["ok"], step["legality"]
    else:  # an unstructured-family method given a pattern (wanda): audit the layers it sparsified
        sparse = [n for n in pruner.layers.names if not bool(masks[n].all())]
        rep = legality_audit(model, pattern, layers=sparse)
        assert sparse and rep.totals()["bad_groups"] == 0, rep.totals()
    return model, masks, time.perf_counter() - t0


def distill(student, teacher, masks, splits, lr: float, seed: int, epochs: float):
    with tempfile.TemporaryDirectory() as tmp:
        args = MPDistillationArguments(
            output_dir=tmp, kd_alpha=0.5, kd_temperature=2.0, label_smoothing=0.1, learning_rate=lr,
            weight_decay=0.01, num_train_epochs=epochs, warmup_steps=0.1, per_device_train_batch_size=32,
            use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=seed,
            optim="adamw_torch", report_to="none",
        )  # fmt: skip
        MPDistillationTrainer(student, teacher, masks, args=args, train_dataset=splits["train"]).train()
    assert realised_sparsity(student, masks) == masks.sparsity()
    return accuracy(student, splits["val"]), accuracy(student, splits["test"]), correct(student, splits["test"])


@torch.no_grad()
def correct(model, ds) -> list[int]:
    """Per-image top-1 correctness (0/1), for the paired bootstrap against the reference cell."""
    model.eval()
    return (model(pixel_values=ds.x).logits.argmax(-1) == ds.y).int().tolist()


def versus_ref(rows: list[dict], lrs: list[float], ref: str) -> list[str]:
    """Δ (points) of every cell to `ref` after KD (each cell at its own val-chosen LR), paired bootstrap over the
    test images of all seeds (rows stored before per-item results existed are skipped)."""
    if not all("kd_items" in r for r in rows) or ref not in {r["cell"] for r in rows}:
        return []
    out = [f"after KD, Δ to `{ref}` in points [95 % paired-bootstrap CI over the test images of all seeds]:", ""]
    for p in dict.fromkeys(r["pattern"] for r in rows):

        def items(cell, p=p):
            rs = sorted((r for r in rows if r["pattern"] == p and r["cell"] == cell), key=lambda r: r["seed"])
            best = max(lrs, key=lambda lr: statistics.mean(r["kd"][str(lr)][0] for r in rs))
            return [x for r in rs for x in r["kd_items"][str(best)]]

        base = items(ref)
        for cell in dict.fromkeys(r["cell"] for r in rows if r["pattern"] == p and r["cell"] != ref):
            ci = bootstrap_diff(items(cell), base, resamples=2000)
            out.append(f"- {p} {cell}: {100 * ci['diff']:+.2f} [{100 * ci['lo']:+.2f}, {100 * ci['hi']:+.2f}]")
    return out


def load_rows(paths: list[str]) -> list[dict]:
    """The rows of result files written by this script (`{"rows": ...}`) or merged ones (`{"runs": [...]}`). A
    (seed, pattern, cell) present in several files is kept once when the copies agree and refused when they differ
    (the bench is deterministic, so a disagreement means two different protocols)."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        data = json.load(open(path, encoding="utf-8"))
        for row in [r for run in data.get("runs", [data]) for r in run["rows"]]:
            key = (row["seed"], row["pattern"], row["cell"])
            if key in rows and (rows[key]["kd"], rows[key].get("kd_items")) != (row["kd"], row.get("kd_items")):
                raise ValueError(f"{path}: seed {key[0]} {key[1]} {key[2]} differs from an earlier file's row")
            rows.setdefault(key, row)
    return list(rows.values())


def _ms(xs) -> str:
    xs = [100 * x for x in xs]
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"


def summarise(rows: list[dict], lrs: list[float], epochs: float, ref: str = "cast+rec") -> str:
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    patterns = list(dict.fromkeys(r["pattern"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    dense = {r["seed"]: r["dense_test"] for r in rows}
    lines = [f"dense test: {_ms([dense[s] for s in seeds])} (seeds {seeds})", ""]
    head = "| pattern | " + " | ".join(cells) + " |"
    sep = "|---" * (len(cells) + 1) + "|"
    pre, post, chosen = [head, sep], [head, sep], [head, sep]
    for p in patterns:
        a, b, c = [], [], []
        for cell in cells:
            rs = [r for r in rows if r["pattern"] == p and r["cell"] == cell]
            a.append(_ms([r["pruned_test"] for r in rs]))
            best = max(lrs, key=lambda lr: statistics.mean(r["kd"][str(lr)][0] for r in rs))
            b.append(_ms([r["kd"][str(best)][1] for r in rs]))
            c.append(f"{best:g}")
        pre.append(f"| {p} | " + " | ".join(a) + " |")
        post.append(f"| {p} | " + " | ".join(b) + " |")
        chosen.append(f"| {p} | " + " | ".join(c) + " |")
    return "\n".join(lines + ["test accuracy right after the k:n prune (no fine-tune):", "", *pre, "",
                              f"test accuracy after {epochs:g} epochs of KD (LR chosen on val):", "", *post, "",
                              "KD learning rate chosen on val:", "", *chosen, "", *versus_ref(rows, lrs, ref)])  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--patterns", nargs="+", default=["2:4", "4:8", "8:16"])
    ap.add_argument("--cells", nargs="+", default=list(CELLS))
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--dense-epochs", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(OUT, "digits_kn.json"))
    ap.add_argument("--merge", nargs="+", default=None, help="only print the tables of these result files")
    ap.add_argument("--ref", default="cast+rec", help="the cell every other one is compared with after KD")
    a = ap.parse_args()
    if a.merge:
        rows = load_rows(a.merge)
        print(summarise(rows, a.lrs, a.epochs, a.ref))
        return 0
    torch.set_flush_denormal(True)
    rows, t_all = [], time.perf_counter()
    for seed in a.seeds:
        splits = load_digits_splits(seed)
        dense = trained_digits_vit(seed, splits, epochs=a.dense_epochs, cache_dir=OUT)
        for pattern in a.patterns:
            for cell in a.cells:
                model, masks, secs = prune(dense, cell, pattern, splits["train"])
                row = {"seed": seed, "pattern": pattern, "cell": cell, "prune_seconds": secs,
                       "sparsity": masks.sparsity(), "dense_test": accuracy(dense, splits["test"]),
                       "pruned_val": accuracy(model, splits["val"]), "pruned_test": accuracy(model, splits["test"]),
                       "kd": {}}  # fmt: skip
                row["kd_items"] = {}
                for lr in a.lrs:
                    val, test, items = distill(copy.deepcopy(model), dense, masks, splits, lr, seed, a.epochs)
                    row["kd"][str(lr)], row["kd_items"][str(lr)] = (val, test), items
                rows.append(row)
                print(json.dumps(row), flush=True)
                os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
                with open(a.out, "w") as f:
                    json.dump({"rows": rows, "lrs": a.lrs, "epochs": a.epochs}, f, indent=1)
    print(summarise(rows, a.lrs, a.epochs, a.ref))
    print(f"wall {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
