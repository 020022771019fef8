"""`make gpu-check`: everything a lent GPU should run, in one script that fits a few minutes (< 6 min on one GPU).

1. `pytest -m gpu` (the GPU tests of the suite);
2. the deploy benchmark (`hf_mpprune.deploy.speed.speed_audit`) at batch 1 / 64 / 256, bf16, dense vs 2:4 (magnitude
   2:4 masks through `MPPruner`, random weights: timing and numerical equivalence only) for ViT-B/16 without and
   with ToMe r = 8 and for BERT-base (`BertModel`, headless, integer `input_ids`, sequence 128); torch.compile
   denominators only for ViT-B/16 without ToMe at batch 64 (compiling every case would not fit the budget);
3. a JSON and a Markdown report in `--out`.

Cases that would start after `--budget-s` are recorded as skipped, so the report always comes back. `--dry-run`
checks everything but the CUDA calls, on CPU, in seconds (run by the default test suite): the GPU tests are only
collected, the models are tiny stand-ins of the same architectures, and the benchmark runs `speed_audit(dry_run=True)`.

Usage: PYTHONPATH=. python benchmarks/gpu_check.py --out benchmarks/out/gpu_check [--dry-run] [--budget-s 330]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from transformers import BertConfig, BertModel, ViTConfig, ViTForImageClassification

from hf_mpprune import MPPruner, PruningConfig
from hf_mpprune.deploy.macs import macs_vs_dense
from hf_mpprune.deploy.speed import make_inputs, speed_audit, stamps


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES = (1, 64, 256)
CASES = (  # (model, ToMe r, compiled denominators)
    ("vit-b16", 0, True),
    ("vit-b16", 8, False),
    ("bert-base", 0, False),
)


def build(name: str, tiny: bool) -> torch.nn.Module:
    """ViT-B/16 (224, 1000 classes) or BERT-base with random weights; `tiny`: same architecture, small and fast."""
    torch.manual_seed(0)
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
    if name == "vit-b16":
        cfg = ViTConfig(num_labels=1000, **({"image_size": 32, "patch_size": 4, **small} if tiny else {}))
        return ViTForImageClassification(cfg).eval()
    cfg = BertConfig(**({"vocab_size": 99, "max_position_embeddings": 16, **small} if tiny else {}))
    return BertModel(cfg).eval()


def pruned(model: torch.nn.Module, device: str):
    """Magnitude 2:4 masks on the attention and MLP Linears (the registry's defaults), applied."""
    model.to(device)
    pruner = MPPruner(model, PruningConfig(method="magnitude", pattern="2:4"))
    return pruner.model, pruner.prune()


def gpu_tests(dry_run: bool) -> dict:
    """`pytest -m gpu` (collect only in a dry run): return code, summary line, seconds."""
    tests = os.path.join(ROOT, "tests")
    files = sorted(os.path.join("tests", f) for f in os.listdir(tests) if f.startswith("test_") and f.endswith(".py")
                   and "mark.gpu" in open(os.path.join(tests, f), encoding="utf-8").read())  # fmt: skip
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    cmd += ["--collect-only"] if dry_run else []
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)  # keep the caller's packages
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E ", "ERROR", "FAILED"))][-20:]  # why it failed, if it did
    return {"cmd": " ".join(cmd[2:]), "rc": proc.returncode, "summary": lines[-1] if lines else proc.stderr[-300:],
            "errors": errors, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def run(args) -> dict:
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the code path on CPU)")
    t0 = time.perf_counter()
    out = {"stamps": {**stamps(torch.device(device)), "dry_run": args.dry_run}, "budget_s": args.budget_s}
    out["pytest_gpu"] = gpu_tests(args.dry_run)
    batches = (1, 2) if args.dry_run else BATCHES
    reps, warmup = (1, 0) if args.dry_run else (args.reps, args.warmup)
    out["cases"] = []
    for name, tome_r, compiled in CASES:
        case = {"model": name, "tome_r": tome_r, "batches": list(batches)}
        if time.perf_counter() - t0 > args.budget_s:
            out["cases"].append(case | {"skipped": f"budget of {args.budget_s} s spent"})
            continue
        c0 = time.perf_counter()
        model, masks = pruned(build(name, tiny=args.dry_run), device)
        case["macs"] = macs_vs_dense(model, make_inputs(model, 1, device), tome_r=tome_r)  # vs dense, no ToMe
        rep = speed_audit(model, masks, batches=batches, tome_r=tome_r, compile=compiled, compile_batches=(64,),
                          warmup=warmup, reps=reps, device=device, dry_run=args.dry_run)  # fmt: skip
        case |= {"report": rep.to_dict(), "markdown": rep.to_markdown(), "seconds": round(time.perf_counter() - c0, 1)}
        out["cases"].append(case)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(out: dict) -> str:
    lines = ["# GPU check" + (" (dry run: no CUDA call, no claim)" if out["stamps"]["dry_run"] else ""), ""]
    lines += [", ".join(f"{k}={v}" for k, v in out["stamps"].items()), ""]
    p = out["pytest_gpu"]
    lines += [f"`pytest {p['cmd']}`: rc {p['rc']}, {p['summary']} ({p['seconds']} s)", ""]
    lines += [f"    {e}" for e in p["errors"]] + ([""] if p["errors"] else [])
    for c in out["cases"]:
        lines.append(f"## {c['model']}, ToMe r={c['tome_r']}")
        if "skipped" in c:
            lines += [f"skipped: {c['skipped']}", ""]
            continue
        lines += [
            f"sparse MACs / dense MACs without ToMe {c['macs']['ratio']:.3f}; {c['seconds']} s",
            "",
            c["markdown"],
            "",
        ]
        lines += [f"equivalence: {json.dumps(c['report']['equivalence'])}", ""]
    lines.append(f"wall {out['wall_s']} s (budget {out['budget_s']} s)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--dry-run", action="store_true", help="check everything but the CUDA calls, on CPU")
    p.add_argument("--budget-s", type=float, default=330.0, help="no new case starts after this many seconds")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)
    out = run(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(markdown(out))
    sys.stdout.write(markdown(out))
    clean = all("report" in c and not c["report"]["errors"] for c in out["cases"])
    return 0 if out["pytest_gpu"]["rc"] == 0 and clean else 1


if __name__ == "__main__":
    sys.exit(main())
