"""CAST pattern-search time per ViT-B/16 Linear shape and peak memory (docs/algorithms.md §8.7, §8.12).

`--mode search` (default): for each ViT-B/16 Linear shape (q/k/v/o 768x768, fc1 3072x768, fc2 768x3072) time the
CAST projection of one layer (`methods.cast.project`: source tuple, magnitude init, running-argmin search, new
weights) with ViT-style init weights (std 0.02) and C_g from 4096 Gaussian calibration rows; the total for the 72
encoder Linears is 12 x (4 t_attn + t_fc1 + t_fc2). `--mode full`: the whole pipeline through `MPPruner` on
`ViTForImageClassification(ViTConfig())` with `--images` random images (forwards included).

    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/bench_cast_vitb.py --pattern 2:4
    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/bench_cast_vitb.py --pattern 8:16
    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/bench_cast_vitb.py --mode full --images 32 --seed 0 --peer
"""

import argparse
import json
import os
import resource
import time


T_PROCESS = time.perf_counter()  # "end to end" includes imports, building the model and the random images


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from hf_mpprune.core.layers import PrunableLayer  # noqa: E402
from hf_mpprune.methods.kn.cast import CASTConfig, project  # noqa: E402
from hf_mpprune.methods.kn.geometry import candidates, cells  # noqa: E402


SHAPES = {
    "attn q/k/v/o (768x768)": (768, 768, 48),
    "mlp.fc1 (3072x768)": (3072, 768, 12),
    "mlp.fc2 (768x3072)": (768, 3072, 12),
}  # (out, in, count in ViT-B/16)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def search_mode(pattern: str, seed: int) -> dict:
    cfg = CASTConfig(pattern=pattern, seed=seed)
    cand, mode = candidates(cfg.pattern, cfg.max_patterns, cfg.num_sampled_patterns, seed)
    g = torch.Generator().manual_seed(seed)
    out = {"pattern": pattern, "search": mode, "candidates": len(cand), "layers": {}}
    total = 0.0
    for label, (rows, cols, count) in SHAPES.items():
        lin = nn.Linear(cols, rows, bias=False)
        with torch.no_grad():
            lin.weight.normal_(0.0, 0.02, generator=g)
        layer = PrunableLayer("bench", lin, "linear", "mlp")
        x = cells(torch.randn(4096, cols, generator=g, dtype=torch.float64), cfg.pattern.group)
        stat = {"gram": torch.einsum("rgi,rgj->gij", x, x), "count": 4096}
        t0 = time.perf_counter()
        with torch.no_grad():
            project(layer, stat, torch.ones_like(lin.weight, dtype=torch.bool), None, cfg, cand, 1.0)
        sec = time.perf_counter() - t0
        out["layers"][label] = round(sec, 3)
        total += sec * count
        print(f"{pattern} {label:<24} {sec:8.2f} s/layer x{count}", flush=True)
    out["total_72_linears_s"] = round(total, 1)
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return out


def full_mode(pattern: str, images: int, seed: int, with_peer: bool = False) -> dict:
    import copy

    from transformers import ViTConfig, ViTForImageClassification

    from hf_mpprune import MPPruner

    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig()).eval()
    data = [{"pixel_values": torch.randn(min(16, images - i), 3, 224, 224)} for i in range(0, images, 16)]
    dense = copy.deepcopy(model) if with_peer else None
    pr = MPPruner(model, CASTConfig(pattern=pattern, seed=seed, calibration_samples=images))
    t0 = time.perf_counter()
    pr.prune(calibration=data)
    ours = time.perf_counter() - t0
    process = time.perf_counter() - T_PROCESS
    rec = pr.ledger.steps[-1]
    extra = {}
    if with_peer:  # llm-compressor's SparseGPT with the same k:n on the same model and images
        from peer_run import run_peer_on

        extra["peer"] = run_peer_on(dense, data, "vit", torch.get_num_threads(), pattern=pattern)
        if "seconds" in extra["peer"]:
            extra["ratio_to_peer_sparsegpt"] = round(ours / extra["peer"]["seconds"], 3)
    return extra | {
        "pattern": pattern,
        "images": images,
        "seed": seed,
        "seconds": round(ours, 1),
        "process_seconds": round(process, 1),
        "time_split": rec.get("time_split"),
        "layers": len(rec["cast"]["layers"]),
        "legal": rec["legality"]["ok"],
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--mode", choices=["search", "full"], default="search")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peer", action="store_true", help="full mode: also run llm-compressor's SparseGPT (same k:n)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    res = (
        search_mode(args.pattern, args.seed)
        if args.mode == "search"
        else full_mode(args.pattern, args.images, args.seed, args.peer)
    )
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
