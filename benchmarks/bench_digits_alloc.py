"""Issue 21: layer allocations on the digits ViT — the MP budget vs OWL vs AlphaPruning vs uniform, under the same
within-layer pruner (Wanda, and Wanda + least-squares re-fit) and the same short fine-tune (1 KD epoch).

Per seed (split, init, calibration draw and Trainer seed): the dense digits ViT of `hf_mpprune.builtins.digits`
(20 epochs, cached under benchmarks/out/), one-shot `wanda` at each sparsity with `allocation` = uniform / owl /
alphapruning / mp (published defaults; calibration = 128 shuffled training images), with and without
`reconstruct=True`; mp-wanda's default (global mapping) as a reference row. Top-1 on the test split right after
the prune, then after 1 epoch of frozen-mask KD from the dense model (`MPDistillationTrainer`: α 0.5, T 2, LS 0.1,
AdamW, wd 0.01, warmup 10 %, cosine, batch 32 → 34 steps; as `bench_kd.py`) at LR 1e-4, the LR that `bench_kd.py`
chose on validation for this fine-tune (benchmarks/RESULTS.md, issue 3); with several `--lrs`, each (pruner, sparsity,
allocation) takes the one with the best mean validation accuracy over the seeds. The test split is only reported.
Differences to uniform: paired bootstrap over the test images of all seeds (`benchmarks/stats.py`).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_digits_alloc.py --seeds 0 1 2 \\
        --out benchmarks/out/digits_alloc.json --md benchmarks/out/digits_alloc.md
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
from transformers import PrinterCallback


os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.block_steps import STEP_C, STEP_E  # noqa: E402
from benchmarks.stats import bootstrap_diff  # noqa: E402
from hf_mpprune import MPDistillationArguments, MPDistillationTrainer, MPPruner, PruningConfig  # noqa: E402
from hf_mpprune.builtins.digits import load_digits_splits, trained_digits_vit  # noqa: E402
from hf_mpprune.training.trainer import realised_sparsity  # noqa: E402


OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
ALLOCATIONS = ("uniform", "owl", "alphapruning", "mp", "mp-wanda-global")
REF_PRUNER = "wanda+refit"  # every other pruner is also compared with this one under the uniform allocation
PRUNERS = {  # name -> options of the within-layer pruner (issue 22 adds the joint optimisation and the swaps)
    "wanda": {"reconstruct": False},
    "wanda+refit": {"reconstruct": True},
    "wanda+alps": {"refine": "alps"},  # ADMM / PCG joint mask and weight optimisation, ends with the re-fit
    "wanda+dsnot+refit": {"refine": "dsnot", "reconstruct": True},  # prune-and-grow swaps, then the re-fit
    "wanda+refit[dense]": {"reconstruct": True, "refit_target": "dense"},  # the re-fit aimed at the dense model
    "wanda+alps[dense]": {"refine": "alps", "refit_target": "dense"},
    "wanda+alps+bt": {"refine": "alps", "block_epochs": 10},  # + block output reconstruction (masks frozen)
    "wanda+alps+bt+aug": {"refine": "alps", "block_epochs": 10, "block_augment": 3},  # + 3 corrupted copies per batch
    "wanda+alps+bt+aug15cos": STEP_C,  # the MiniLM-chosen step "(c)": 15 copies, 5 epochs, cosine-decayed rate
    "wanda+alps+bt+aug31e3cos": STEP_E,  # the MiniLM-chosen step "(e)": 31 copies, 3 epochs, cosine-decayed rate
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    ap.add_argument("--allocations", nargs="+", default=list(ALLOCATIONS), choices=ALLOCATIONS)
    ap.add_argument("--pruners", nargs="+", default=["wanda", "wanda+refit"], choices=list(PRUNERS))
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4])
    ap.add_argument("--ft-batch", type=int, default=32)
    ap.add_argument("--dense-epochs", type=int, default=20)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--out", default=os.path.join(OUT, "digits_alloc.json"))
    ap.add_argument("--md", default=None, help="also write the markdown tables here")
    ap.add_argument("--merge", nargs="+", default=None, help="summarise these result files (runs nothing)")
    a = ap.parse_args(argv)
    if "uniform" not in a.allocations:
        ap.error("--allocations must include 'uniform' (every difference is taken against it)")
    if any(not 0 < s < 1 for s in a.sparsities):
        ap.error(f"--sparsities must lie in (0, 1), got {a.sparsities}")
    return a


def config(allocation: str, options: dict, sparsity: float, seed: int) -> PruningConfig:
    common = {"sparsity": sparsity, "seed": seed, **options}
    if allocation == "mp-wanda-global":
        return PruningConfig.from_dict({"method": "mp-wanda", **common})
    return PruningConfig.from_dict({"method": "wanda", "allocation": allocation, **common})


@torch.no_grad()
def correct(model, ds) -> list[int]:
    """Per-item top-1 correctness (0/1) on a digits split."""
    model.eval()
    return (model(pixel_values=ds.x).logits.argmax(-1) == ds.y).int().tolist()


def finetune(student, teacher, splits, lr: float, seed: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        args = MPDistillationArguments(
            output_dir=tmp, kd_alpha=0.5, learning_rate=lr, num_train_epochs=1, warmup_steps=0.1, use_cpu=True,
            per_device_train_batch_size=batch, save_strategy="no", logging_strategy="no", disable_tqdm=True,
            seed=seed, report_to="none",
        )  # fmt: skip
        trainer = MPDistillationTrainer(student, teacher, args=args, train_dataset=splits["train"])
        trainer.remove_callback(PrinterCallback)  # quiet: no metrics dict per run
        trainer.train()


def run_cell(dense, splits, allocation: str, pruner: str, s: float, seed: int, a) -> dict:
    model = copy.deepcopy(dense)
    pr = MPPruner(model, config(allocation, PRUNERS[pruner], s, seed))
    masks = pr.prune(calibration=splits["train"])
    step = pr.ledger.steps[-1]
    spars = step["layer_sparsity"]
    row = {
        "seed": seed, "sparsity": s, "allocation": allocation, "pruner": pruner,
        "achieved": step["achieved_sparsity"], "layer_sparsity_range": [min(spars.values()), max(spars.values())],
        "statistic": {k: v for k, v in step.get("allocation", {}).items() if k in ("outlier_ratio", "alpha")},
        "pre": {"val": statistics.mean(correct(model, splits["val"])), "test": correct(model, splits["test"])},
        "ft": {},
    }  # fmt: skip
    for lr in a.lrs:
        student = copy.deepcopy(model)
        finetune(student, dense, splits, lr, seed, a.ft_batch)
        assert realised_sparsity(student, masks) == masks.sparsity()  # the fine-tune kept every pruned zero
        row["ft"][f"{lr:g}"] = {
            "val": statistics.mean(correct(student, splits["val"])),
            "test": correct(student, splits["test"]),
        }
    return row


def chosen_lr(rs: list[dict]) -> str:
    """The fine-tune LR with the best mean validation accuracy over the seeds (ties: the first in `--lrs`)."""
    return max(rs[0]["ft"], key=lambda k: statistics.mean(r["ft"][k]["val"] for r in rs))


def items_of(r: dict, phase: str, lr: str) -> list[int]:
    return r["pre"]["test"] if phase == "pre" else r["ft"][lr]["test"]


def summarise(rows: list[dict], boot: int) -> list[dict]:
    """One line per (pruner, sparsity, allocation): test top-1 mean ± sd over seeds before / after the fine-tune
    (LR chosen on mean val), and the paired-bootstrap difference to uniform over all seeds' test images."""
    cells: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        cells.setdefault((r["pruner"], r["sparsity"], r["allocation"]), []).append(r)
    out = []
    for (pruner, s, alloc), rs in sorted(cells.items(), key=lambda kv: (*kv[0][:2], ALLOCATIONS.index(kv[0][2]))):
        base = cells[(pruner, s, "uniform")]
        lr, base_lr = chosen_lr(rs), chosen_lr(base)
        line = {
            "pruner": pruner,
            "sparsity": s,
            "allocation": alloc,
            "lr": float(lr),
            "seeds": [r["seed"] for r in rs],
        }
        for phase in ("pre", "ft"):
            accs = [100 * statistics.mean(items_of(r, phase, lr)) for r in rs]
            a = [x for r in rs for x in items_of(r, phase, lr)]
            b = [x for r in base for x in items_of(r, phase, base_lr)]
            ci = bootstrap_diff(a, b, resamples=boot)
            d, lo, hi = ci["diff"], ci["lo"], ci["hi"]
            line[phase] = {"mean": statistics.mean(accs), "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                           "diff": 100 * d, "lo": 100 * lo, "hi": 100 * hi}  # fmt: skip
        ref = cells.get((REF_PRUNER, s, "uniform"))
        if ref is not None and pruner != REF_PRUNER:  # the new options against today's re-fit pipeline
            ref_lr = chosen_lr(ref)
            line["vs_ref"] = {}
            for phase in ("pre", "ft"):
                ci = bootstrap_diff([x for r in rs for x in items_of(r, phase, lr)],
                                    [x for r in ref for x in items_of(r, phase, ref_lr)], resamples=boot)  # fmt: skip
                line["vs_ref"][phase] = {"diff": 100 * ci["diff"], "lo": 100 * ci["lo"], "hi": 100 * ci["hi"]}
        line["layer_sparsity_range"] = [min(r["layer_sparsity_range"][0] for r in rs),
                                        max(r["layer_sparsity_range"][1] for r in rs)]  # fmt: skip
        out.append(line)
    return out


def markdown(summary: list[dict]) -> str:
    """Two tables (right after the prune / after 1 KD epoch): rows pruner × sparsity, a column per allocation with
    top-1 mean ± sd and, against uniform, Δ [95 % CI] in points."""
    allocs = [a for a in ALLOCATIONS if any(x["allocation"] == a for x in summary)]
    by = {(x["pruner"], x["sparsity"], x["allocation"]): x for x in summary}
    keys = sorted({(x["pruner"], x["sparsity"]) for x in summary})
    parts = []
    for phase, title in (("pre", "right after the one-shot prune"), ("ft", "after 1 KD epoch (LR chosen on val)")):
        lines = [f"test top-1 (%), {title}; Δ vs uniform [95 % paired-bootstrap CI], points", "",
                 "| pruner | s | " + " | ".join(allocs) + " |", "|---|---|" + "---|" * len(allocs)]  # fmt: skip
        for pruner, s in keys:
            cells = []
            for a in allocs:
                x = by.get((pruner, s, a))
                if x is None:
                    cells.append("–")
                    continue
                p = x[phase]
                cell = f"{p['mean']:.2f} ± {p['sd']:.2f}"
                if a != "uniform":
                    cell += f" ({p['diff']:+.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}])"
                cells.append(cell)
            lines.append(f"| {pruner} | {s:.2f} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    refd = [x for x in summary if "vs_ref" in x]
    if refd:
        lines = [
            f"Δ vs `{REF_PRUNER}` uniform at the same sparsity, points [95 % paired-bootstrap CI]",
            "",
            "| pruner | s | allocation | right after the prune | after 1 KD epoch |",
            "|---|---|---|---|---|",
        ]
        for x in refd:
            pre, ft = x["vs_ref"]["pre"], x["vs_ref"]["ft"]
            lines.append(f"| {x['pruner']} | {x['sparsity']:.2f} | {x['allocation']} | "
                         f"{pre['diff']:+.2f} [{pre['lo']:+.2f}, {pre['hi']:+.2f}] | "
                         f"{ft['diff']:+.2f} [{ft['lo']:+.2f}, {ft['hi']:+.2f}] |")  # fmt: skip
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_results(rows: list[dict], meta: dict, out: str, md: str | None, boot: int) -> list[dict]:
    summary = summarise(rows, boot)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=1)
    text = markdown(summary)
    if md:
        with open(md, "w", encoding="utf-8") as f:
            f.write(text)
    print(text, flush=True)
    return summary


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.merge:
        runs = [json.load(open(p, encoding="utf-8")) for p in a.merge]
        meta = {"argv": sys.argv, "merged": [r["meta"] for r in runs]}
        write_results([row for r in runs for row in r["rows"]], meta, a.out, a.md, a.boot)
        return 0
    torch.set_flush_denormal(True)
    t0 = time.perf_counter()
    rows = []
    for seed in a.seeds:
        splits = load_digits_splits(seed)
        dense = trained_digits_vit(seed, splits, epochs=a.dense_epochs, cache_dir=OUT)
        for s in a.sparsities:
            for pruner in a.pruners:
                for alloc in a.allocations:
                    rows.append(run_cell(dense, splits, alloc, pruner, s, seed, a))
                    r = rows[-1]
                    print(json.dumps({k: r[k] for k in ("seed", "sparsity", "pruner", "allocation")}
                                     | {"pre_test": statistics.mean(r["pre"]["test"]),
                                        "ft_val": {k: v["val"] for k, v in r["ft"].items()}}), flush=True)  # fmt: skip
    meta = {
        "argv": sys.argv,
        "args": vars(a),
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
    write_results(rows, meta, a.out, a.md, a.boot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
