"""Issue 23: one-shot pruning of the small decoder trained here (`train_small_decoder.py`), perplexity on held-out
documents, every method against its controls and llm-compressor's SparseGPT, zero fine-tuning.

Protocol. Model: the Llama-shaped decoder in `--model` (with its tokenizer). Corpus: `--corpus` (documents = module
files, split by document; `decoder_data.py`). Calibration: the `calibration` documents joined with blank lines into
one token stream (`hf_mpprune.data.lm.token_stream`) cut into `--length`-token windows (the 128 × 2048 convention
scaled down); the windows are shuffled once (seed 1234) and cut into `len(--seeds)` NON-OVERLAPPING draws of
`--windows` windows (draw i for seed i), in batches of 16. Evaluation: perplexity on the `--split` documents
(default `evaluation`; `selection` for design choices only), non-overlapping `--length` windows
(`hf_mpprune.metrics.perplexity`), the same windows for every cell (`--eval-windows N`: a subset of N of them drawn
with seed 4321, fixed before any run). Registered layers: the q/k/v/o/gate/up/down projections of every block
(embeddings and the tied LM head stay dense, as in llm-compressor's `ignore=["re:.*lm_head"]`).

Cells are a plain list of (label, method, options) (OWL / AlphaPruning allocations are one more line each); each
names its control (the same pipeline without the MP statistic, or without the re-fit). For every cell and target:
perplexity mean ± sd over the calibration draws, and paired bootstrap 95 % CIs (`--boot` resamples of the
evaluation windows, the same resample for every seed) of the mean perplexity difference to its control and to the
rival (llm-compressor's SparseGPT on the same batches, in the venv at $PEER_VENV, default /work/peer-venv; our
`sparsegpt` with `--no-peer`). Quality only: timing on a shared machine is not reported here (see
`bench_decoder_scaling.py`).

  PYTHONPATH=. python benchmarks/bench_decoder.py --model ~/.cache/hf_mpprune/decoder/llama-small \
      --corpus ~/.cache/hf_mpprune/decoder/corpus-sklearn --targets 0.5 0.6 0.7 2:4 --seeds 0 1 2 \
      --out benchmarks/out/decoder.json
"""

import argparse
import copy
import json
import os
import sys


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from decoder_data import load_corpus  # noqa: E402
from peer_run import peer_prune  # noqa: E402

from hf_mpprune import MPPruner, PruningConfig  # noqa: E402
from hf_mpprune.data.lm import token_stream  # noqa: E402
from hf_mpprune.metrics.perplexity import perplexity, stride_windows, window_nll  # noqa: E402


# (label, method, options, control label). Unstructured cells run at fractional targets, k:n cells at patterns.
# An allocation rival is one more line, e.g. ("wanda owl", "wanda", {"allocation": "owl"}, "wanda").
UNSTRUCTURED = [
    ("magnitude", "magnitude", {}, None),
    ("wanda", "wanda", {}, "magnitude"),
    ("wanda+rec", "wanda", {"reconstruct": True}, "wanda"),
    ("mp-wanda beta=0", "mp-wanda", {"beta": 0.0}, "wanda"),
    ("mp-wanda", "mp-wanda", {}, "mp-wanda beta=0"),
    ("mp-wanda+rec", "mp-wanda", {"reconstruct": True}, "mp-wanda"),
    ("sparsegpt", "sparsegpt", {}, None),
    ("mp-sparsegpt", "mp-sparsegpt", {}, "sparsegpt"),
    # the rivals of the MP layer budget (OWL: outlier ratio of Wanda scores; AlphaPruning: α-Hill of the weight
    # spectra, no MP) under the same pruner, with and without the re-fit, and under SparseGPT
    ("wanda owl", "wanda", {"allocation": "owl"}, "wanda"),
    ("wanda alpha", "wanda", {"allocation": "alphapruning"}, "wanda"),
    ("wanda+rec owl", "wanda", {"allocation": "owl", "reconstruct": True}, "wanda+rec"),
    ("wanda+rec alpha", "wanda", {"allocation": "alphapruning", "reconstruct": True}, "wanda+rec"),
    ("sparsegpt owl", "sparsegpt", {"allocation": "owl"}, "sparsegpt"),
    ("sparsegpt alpha", "sparsegpt", {"allocation": "alphapruning"}, "sparsegpt"),
    # issue 22's joint mask / weight optimisation (ends with the re-fit)
    ("mp-wanda+alps", "mp-wanda", {"refine": "alps"}, "mp-wanda+rec"),
    # issue 22's block output reconstruction (block_epochs=10, chosen on MiniLM's selection split), and the same
    # step on the rival
    ("mp-wanda+alps+bt", "mp-wanda", {"refine": "alps", "block_epochs": 10}, "mp-wanda+alps"),
    ("sparsegpt+bt", "sparsegpt", {"block_epochs": 10}, "sparsegpt"),
]
KN = [
    ("wanda", "wanda", {}, None),
    ("wanda+rec", "wanda", {"reconstruct": True}, "wanda"),
    ("sparsegpt", "sparsegpt", {}, None),
    ("cast", "cast", {}, "wanda"),
    ("cast+rec", "cast", {"reconstruct": True}, "cast"),
    ("cast+alps", "cast", {"refine": "alps"}, "cast+rec"),
]
PEER = "llm-compressor sparsegpt"
DRAW_SEED = 1234
EVAL_SEED = 4321


def calibration_draws(texts, tok, length: int, windows: int, seeds: list[int]) -> dict[int, list[dict]]:
    ids = token_stream(texts, tok)
    rows = [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)]
    need = windows * len(seeds)
    if len(rows) < need:
        raise SystemExit(f"the calibration split holds {len(rows)} windows of {length}; {need} needed")
    perm = np.random.default_rng(DRAW_SEED).permutation(len(rows))
    out = {}
    for i, seed in enumerate(seeds):
        pick = torch.tensor([rows[j] for j in perm[i * windows : (i + 1) * windows]])
        out[seed] = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in pick.split(16)]
    return out


def prune_cell(dense, method, options, target, batches, seed, windows):
    model = copy.deepcopy(dense)
    cfg = {"method": method, "seed": seed, **options}
    cfg |= {"pattern": target} if isinstance(target, str) else {"sparsity": target}
    if method != "magnitude":
        cfg |= {"calibration_samples": windows, "calibration_batch_size": 16}
    pruner = MPPruner(model, PruningConfig.from_dict(cfg))
    masks = pruner.prune(calibration=batches if method != "magnitude" else None)
    step = pruner.ledger.steps[-1]  # which sequential path ran (the re-fit's, for +rec cells)
    split = step.get("time_split") or {}
    paths = (split, split.get("reconstruction") or {}, (step.get("reconstruct") or {}).get("time_split") or {})
    return model, {"achieved": masks.sparsity(), "path": next((d["path"] for d in paths if d.get("path")), None)}


def evaluate(model, windows, batch_size) -> tuple[np.ndarray, np.ndarray]:
    return window_nll(model, windows, batch_size=batch_size)


def boot_diff(rows_a, rows_b, count, boot: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean over seeds of ppl(a) − ppl(b), and its paired bootstrap 95 % CI over evaluation windows (a cell run
    once, such as magnitude, which takes no calibration, is the same for every seed)."""
    a, b = np.stack(rows_a), np.stack(rows_b)  # (seeds, windows)
    ppl = lambda nll, idx: np.exp(nll[:, idx].sum(1) / count[idx].sum())  # noqa: E731
    full = np.arange(count.size)
    point = float((ppl(a, full) - ppl(b, full)).mean())
    rng = np.random.default_rng(seed)
    draws = [
        float((ppl(a, i) - ppl(b, i)).mean()) for i in (rng.integers(0, count.size, count.size) for _ in range(boot))
    ]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return point, float(lo), float(hi)


def table(rows, targets, count, boot) -> str:
    out = []
    for t in targets:
        sel = [r for r in rows if r["target"] == t]
        cells = list(dict.fromkeys(r["cell"] for r in sel))
        nll = {
            c: [np.asarray(r["nll"]) for r in sorted(sel, key=lambda r: r["seed"]) if r["cell"] == c] for c in cells
        }
        rival = PEER if PEER in nll else "sparsegpt"
        ctrl = {r["cell"]: r.get("control") for r in sel}
        out += [f"\n### target {t}\n", f"| cell | perplexity (mean ± sd, n) | Δ vs control [95 % CI] | Δ vs {rival} [95 % CI] |",
                "|---|---|---|---|"]  # fmt: skip
        for c in cells:
            v = [r["perplexity"] for r in sel if r["cell"] == c]
            txt = f"{np.mean(v):.2f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.2f} (n={len(v)})"
            cols = []
            for other in (ctrl.get(c), rival):
                if other is None or other == c or other not in nll or len(nll[other]) not in (1, len(nll[c])):
                    cols.append("–")
                    continue
                d, lo, hi = boot_diff(nll[c], nll[other], count, boot)
                cols.append(f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}] vs {other}")
            out.append(f"| {c} | {txt} | {cols[0]} | {cols[1]} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--targets", nargs="+", default=["0.5", "0.6", "0.7", "2:4"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cells", nargs="+", default=None, help="labels of our cells to run (default: all)")
    p.add_argument("--split", choices=["evaluation", "selection"], default="evaluation")
    p.add_argument("--windows", type=int, default=128, help="calibration windows per draw")
    p.add_argument("--length", type=int, default=256, help="window length (calibration and perplexity)")
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument(
        "--sequential-target", default="LlamaDecoderLayer", help="the peer's block class (GPT-2: GPT2Block)"
    )
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true", help="keep the rows already in --out and run only the others")
    p.add_argument("--eval-windows", type=int, default=None, help="score a seeded subset of this many windows")
    p.add_argument("--table", nargs="+", default=None, metavar="JSON", help="only print the table of saved runs")
    args = p.parse_args()
    if args.table:
        rows, counts = [], set()
        for path in args.table:
            with open(path) as f:
                saved = json.load(f)
            rows += [r for r in saved["rows"] if r["cell"] != "dense"]
            counts.add(tuple(saved["count"]))
        if len(counts) != 1:
            raise SystemExit("the saved runs were scored on different evaluation windows")
        targets = list(dict.fromkeys(r["target"] for r in rows))
        print(table(rows, targets, np.asarray(counts.pop()), args.boot))
        return
    args.model = os.path.expanduser(args.model)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    dense = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    corpus = load_corpus(args.corpus)
    windows = stride_windows(token_stream(corpus[args.split]["text"], tok), args.length)
    if args.eval_windows and args.eval_windows < len(windows):  # a fixed subset, the same for every cell
        pick = np.sort(np.random.default_rng(EVAL_SEED).choice(len(windows), args.eval_windows, replace=False))
        windows = [windows[i] for i in pick]
    draws = calibration_draws(corpus["calibration"]["text"], tok, args.length, args.windows, args.seeds)
    rows = []
    if args.resume and args.out and os.path.exists(args.out):
        with open(args.out) as f:
            rows = json.load(f)["rows"]
    done = {(r["cell"], r["target"], r["seed"]) for r in rows}
    if ("dense", "dense", None) not in done:
        nll0, count = evaluate(dense, windows, args.eval_batch)
        rows.append({"cell": "dense", "target": "dense", "seed": None, "perplexity": perplexity(nll0, count),
                     "nll": nll0.tolist()})  # fmt: skip
    count = np.asarray([sum(t != -100 for t in w["labels"][1:]) for w in windows])  # targets per window
    print(json.dumps({"dense_perplexity": rows[0]["perplexity"], "eval_windows": len(windows),
                      "eval_targets": int(count.sum())}), flush=True)  # fmt: skip

    def add(row, model):
        nll, _ = evaluate(model, windows, args.eval_batch)
        row.update(perplexity=perplexity(nll, count), nll=nll.tolist())
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "nll"}), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"args": vars(args), "count": count.tolist(), "rows": rows}, f)

    for target_s in args.targets:
        target = target_s if ":" in target_s else float(target_s)
        cells = [
            c for c in (KN if isinstance(target, str) else UNSTRUCTURED) if args.cells is None or c[0] in args.cells
        ]
        for seed in args.seeds:
            if not args.no_peer and (PEER, target_s, seed) not in done:
                sparsity, pattern = (0.0, target) if isinstance(target, str) else (target, None)
                info = peer_prune(args.model, draws[seed], "llama", args.threads, sparsity, pattern, weights=True)
                if "error" in info:
                    print(f"# peer failed: {info['error']}", flush=True)
                else:
                    model = copy.deepcopy(dense)
                    weights = info.pop("weights")
                    missing = model.load_state_dict(weights, strict=False)
                    if missing.unexpected_keys or len(weights) != 7 * dense.config.num_hidden_layers:
                        raise SystemExit(f"peer weights do not match the model: {sorted(weights)[:5]}...")
                    add({"cell": PEER, "target": target_s, "seed": seed, "control": None, "achieved": info["achieved"],
                         "peer": info}, model)  # fmt: skip
            for label, method, options, control in cells:
                if (method == "magnitude" and seed != args.seeds[0]) or (label, target_s, seed) in done:
                    continue  # magnitude takes no calibration: one run per target
                model, info = prune_cell(dense, method, options, target, draws[seed], seed, args.windows)
                add({"cell": label, "target": target_s, "seed": seed, "control": control, **info}, model)
    print(table([r for r in rows if r["cell"] != "dense"], args.targets, count, args.boot))


if __name__ == "__main__":
    main()
