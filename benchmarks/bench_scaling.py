"""Issue 17 scaling table: wall time and peak RSS of `analyze`, mp-wanda + reconstruct, sparsegpt and CAST 2:4 on
random-init ViT-S/16, ViT-B/16, ViT-L/16, ViT-H/16 (224 px) and a BERT-base-shaped encoder (seq 128), with the
growth exponents b of time ≈ a·params^b and of peak RSS fitted over the models measured; `peer-sparsegpt` runs
llm-compressor's SparseGPT on the same model and batches in its own venv (`benchmarks/peer_venv.sh`) and the
ratio of our `sparsegpt` to it is printed.

Every (model, method) runs in a FRESH subprocess (so peak RSS = that run's own `ru_maxrss`), seed 0, `--threads`
intra-op threads. Calibration: `--samples` random images / random token sequences in batches of 8 (CAST keeps ≤ 4096
rows per layer; the one-shot methods use every row). Prunes all encoder Linears (heads/poolers ignored), 50%
unstructured for the one-shot methods.

  python benchmarks/bench_scaling.py --models vit-s vit-b bert-base vit-l --samples 32 --out benchmarks/out/scaling.json
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MODELS = {
    "vit-s": {"kind": "vit", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536},
    "vit-b": {"kind": "vit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "vit-l": {"kind": "vit", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "vit-h": {"kind": "vit", "hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "intermediate_size": 5120},
    "bert-base": {"kind": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}  # fmt: skip
METHODS = {
    "analyze": None,
    "mp-wanda+rec": {"method": "mp-wanda", "sparsity": 0.5, "reconstruct": True, "calibration_batch_size": 8},
    "sparsegpt": {"method": "sparsegpt", "sparsity": 0.5, "calibration_batch_size": 8},
    "cast-2:4": {"method": "cast", "pattern": "2:4", "calibration_batch_size": 8},
    "peer-sparsegpt": None,  # llm-compressor's SparseGPT at 50 % in its own venv, same model and batches
}
IGNORE = ["re:classifier", "re:pooler"]


def build(name: str):
    import torch

    spec = dict(MODELS[name])
    kind = spec.pop("kind")
    torch.manual_seed(0)
    if kind == "vit":
        from transformers import ViTConfig, ViTModel

        model = ViTModel(ViTConfig(**spec), add_pooling_layer=False).eval()
        sample = lambda g: {"pixel_values": torch.randn(3, 224, 224, generator=g)}  # noqa: E731
    else:
        from transformers import BertConfig, BertModel

        model = BertModel(BertConfig(**spec), add_pooling_layer=False).eval()

        def sample(g):
            return {"input_ids": torch.randint(1000, 30000, (128,), generator=g),
                    "attention_mask": torch.ones(128, dtype=torch.long)}  # fmt: skip

    return model, sample


def one(name: str, method: str, samples: int, threads: int) -> dict:
    import torch

    from hf_mpprune import MPPruner, PruningConfig

    torch.set_num_threads(threads)
    model, sample = build(name)
    g = torch.Generator().manual_seed(0)
    rows = [sample(g) for _ in range(samples)]
    data = [{k: torch.stack([r[k] for r in rows[i : i + 8]]) for k in rows[0]} for i in range(0, samples, 8)]
    params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    if method == "peer-sparsegpt":
        return peer(name, model, data, params, samples, threads)
    if method == "analyze":
        MPPruner(model, PruningConfig(method="magnitude", ignore=IGNORE)).analyze(progress=False)
        split = {}
    else:
        cfg = dict(METHODS[method])
        cfg["calibration_samples"] = samples
        pruner = MPPruner(model, PruningConfig.from_dict({**cfg, "ignore": IGNORE}))
        pruner.prune(calibration=data)
        split = pruner.ledger.steps[-1].get("time_split", {})
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": name, "method": method, "params": params, "seconds": round(secs, 2), "peak_rss_mib": round(rss),
            "samples": samples, "threads": threads, "time_split": split}  # fmt: skip


def peer(name, model, data, params, samples, threads) -> dict:
    """llm-compressor's oneshot SparseGPT (50 %, the same Linears) on the same random model and batches, in the
    peer's venv (`peer_run.run_peer_on`); seconds = its `oneshot` call, memory = that process's peak RSS."""
    from peer_run import run_peer_on

    info = run_peer_on(model, data, MODELS[name]["kind"], threads, sparsity=0.5)
    if "error" in info:
        return {"model": name, "method": "peer-sparsegpt", "error": info["error"]}
    return {"model": name, "method": "peer-sparsegpt", "params": params, "seconds": info["seconds"],
            "peak_rss_mib": info["peak_rss_mib"], "samples": samples, "threads": threads, "peer": info}  # fmt: skip


def fit_exponent(rows, method, key="seconds") -> float | None:
    """Least-squares slope b of log(key) against log(params) over the models measured (time or memory ∝ params^b)."""
    pts = [(math.log(r["params"]), math.log(r[key])) for r in rows if r["method"] == method and key in r]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else None


def run_cells(script: str, models, methods, extra: list[str], timeout: int, out: str | None) -> list[dict]:
    """Run `script --one MODEL METHOD *extra` in a fresh process per (model, method); one JSON row each (an error
    row on a crash, out-of-memory or timeout), saved to `out` after every cell."""
    rows = []
    for name in models:
        for method in methods:
            cmd = [sys.executable, script, "--one", name, method, *extra]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                row = json.loads(lines[-1]) if lines else {"model": name, "method": method,
                                                           "error": f"rc {proc.returncode}: {proc.stderr[-500:]}"}  # fmt: skip
            except subprocess.TimeoutExpired:
                row = {"model": name, "method": method, "error": f"timeout after {timeout} s"}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if out:
                with open(out, "w") as f:
                    json.dump(rows, f, indent=1)
    return rows


def print_table(rows, models, methods) -> None:
    print("| model | params | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for name in models:
        got = {r["method"]: r for r in rows if r["model"] == name}
        params = next((r["params"] for r in got.values() if "params" in r), 0)
        cells = [f"{got[m]['seconds']:.1f} s, {got[m]['peak_rss_mib']} MiB" if "seconds" in got.get(m, {})
                 else got.get(m, {}).get("error", "–")[:40] for m in methods]  # fmt: skip
        print(f"| {name} | {params / 1e6:.1f} M | " + " | ".join(cells) + " |")


def print_exponents(rows, methods) -> None:
    for key, what in (("seconds", "time"), ("peak_rss_mib", "peak RSS")):
        fits = {m: fit_exponent([r for r in rows if "error" not in r], m, key) for m in methods}
        print(f"growth exponent b ({what} ∝ params^b): " + ", ".join(
            f"{m}: {b:.2f}" if b is not None else f"{m}: –" for m, b in fits.items()))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit-s", "vit-b", "bert-base", "vit-l"])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=3600, help="seconds per (model, method) subprocess")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.samples, args.threads)), flush=True)
        return
    extra = ["--samples", str(args.samples), "--threads", str(args.threads)]
    rows = run_cells(os.path.abspath(__file__), args.models, args.methods, extra, args.timeout, args.out)
    print_table(rows, args.models, args.methods)
    for name in args.models:
        got = {r["method"]: r for r in rows if r["model"] == name and "seconds" in r}
        if "sparsegpt" in got and "peer-sparsegpt" in got:
            print(f"{name}: sparsegpt / llm-compressor SparseGPT (same run) = "
                  f"x{got['sparsegpt']['seconds'] / got['peer-sparsegpt']['seconds']:.2f}")  # fmt: skip
    print_exponents(rows, args.methods)


if __name__ == "__main__":
    main()
