"""Where the 2:4 time goes on a GPU: host overhead of PyTorch's cuSPARSELt path vs the kernel itself.

`make gpu-check` found 2:4 ViT-B/16 and BERT-base forwards 3-14x SLOWER than dense bf16 on an H200 (torch 2.11.0,
cuSPARSELt 0.8.0), with a ~1 ms floor per converted Linear whatever the batch. PyTorch issue #153825 reports the
cause: `_cslt_sparse_mm` builds and frees its cuSPARSELt descriptors, plan and workspace on every call. A CUDA graph
replays only the GPU work, so timing both paths eagerly and as a captured graph separates the host overhead from the
kernel time:

1. one Linear at the ViT-B/16 shapes (768x768, 3072x768, 768x3072) with M = 197 x {1, 64, 256} tokens;
2. the whole ViT-B/16 forward (magnitude 2:4 masks on the 72 block Linears through `to_semi_structured`), batch
   64 and 256, eager and captured in one `torch.cuda.CUDAGraph`.

Times: CUDA events around each call (replay), 10 warm-up + `--reps` timed, median and IQR. Random weights: timing
and numerical agreement only. `--dry-run`: the same code on CPU with dense weights, no graph, no claim.

Usage: PYTHONPATH=. python benchmarks/gpu_overhead.py --out DIR [--reps 50] [--dry-run]
"""

import argparse
import inspect
import json
import os
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
import torch.sparse.semi_structured as sst

from benchmarks.gpu_check import build, pruned
from hf_mpprune.core.config import KeepPattern
from hf_mpprune.deploy.kernels import compress, search_alg
from hf_mpprune.deploy.semi_structured import to_semi_structured
from hf_mpprune.deploy.speed import make_inputs, stamps, summarize
from hf_mpprune.methods.kn.geometry import kn_keep


SHAPES = ((768, 768), (3072, 768), (768, 3072))  # (out, in) of ViT-B/16's Linears
TOKENS = 197


def logits(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits


def two_four(w: torch.Tensor) -> torch.Tensor:
    """`w` with the 2 smallest-magnitude entries of every 4 consecutive inputs set to zero (the package's k:n keep)."""
    return w * kn_keep(w.abs(), KeepPattern(2, 4), tail_keep=torch.ones_like(w, dtype=torch.bool))


def time_calls(fn, reps: int, warmup: int = 10) -> list[float]:
    """Per-call ms: CUDA events on a GPU, perf_counter on CPU."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            out.append(1e3 * (time.perf_counter() - t))
    return out


def graphed(fn):
    """`fn` (no arguments, static inputs) captured in a CUDA graph; returns (replay, output of the capture)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g.replay, out


def row(name: str, times: list[float], **extra) -> dict:
    med, q25, q75 = summarize(times)
    return {"variant": name, "median_ms": round(med, 4), "iqr_ms": round(q75 - q25, 4), **extra}


def variants(dense, sparse, use_graph: bool) -> dict:
    """name -> zero-argument callable: eager dense / sparse, and their CUDA-graph replays where asked."""
    v = {"dense_eager": dense, "sparse_eager": sparse}
    if use_graph:
        for name, fn in (("dense_graph", dense), ("sparse_graph", sparse)):
            try:
                v[name] = graphed(fn)[0]
            except Exception as e:  # noqa: BLE001 - a capture failure is a result, recorded
                v[name] = f"{type(e).__name__}: {str(e)[:200]}"
    return v


def measure(v: dict, reps: int, **where) -> list[dict]:
    out = []
    for name, fn in v.items():
        out.append(
            {"variant": name, "error": fn, **where}
            if isinstance(fn, str)
            else row(name, time_calls(fn, reps), **where)
        )
    return out


@torch.inference_mode()
def linear_rows(device: str, reps: int, dry_run: bool) -> list[dict]:
    rows = []
    for n_out, n_in in SHAPES:
        w = two_four(torch.randn(n_out, n_in, device=device, dtype=torch.bfloat16))
        ws = w if dry_run else compress(w.contiguous(), "cusparselt")
        if not dry_run:
            ws.alg_id_cusparselt = search_alg(ws, TOKENS * 256)
        for batch in (1, 64, 256):
            x = torch.randn(TOKENS * (1 if dry_run else batch), n_in, device=device, dtype=torch.bfloat16)
            diff = float((F.linear(x, ws) - F.linear(x, w)).abs().max())
            v = variants(partial(F.linear, x, w), partial(F.linear, x, ws), use_graph=not dry_run)
            rows += measure(v, reps, shape=f"{n_out}x{n_in}", m=x.shape[0], max_abs_diff=diff)
    return rows


@torch.inference_mode()
def model_rows(device: str, reps: int, dry_run: bool) -> list[dict]:
    model, masks = pruned(build("vit-b16", tiny=dry_run), device)
    dense = model.to(torch.bfloat16).eval()
    sparse = build("vit-b16", tiny=dry_run).to(device=device, dtype=torch.bfloat16).eval()
    sparse.load_state_dict(dense.state_dict())
    conv = to_semi_structured(sparse, masks=masks, dry_run=dry_run)
    rows = []
    for batch in (2,) if dry_run else (64, 256):
        x = make_inputs(dense, batch, device, torch.bfloat16)
        diff = float((sparse(**x).logits - dense(**x).logits).abs().max())
        v = variants(partial(logits, dense, x), partial(logits, sparse, x), use_graph=not dry_run)
        rows += measure(v, reps, model="vit-b16", batch=batch, converted=len(conv.converted), max_abs_logit_diff=diff)
    return rows


@torch.inference_mode()
def bias_rows(device: str, reps: int, dry_run: bool) -> list[dict]:
    """At 256 images' tokens, graph-timed (kernel time only): what the model's call adds to the bare product —
    the bias, the 3-D input — and the alg id cuSPARSELt's own search picks instead of 0."""
    rows, m = [], TOKENS * (1 if dry_run else 256)
    for n_out, n_in in SHAPES:
        w = two_four(torch.randn(n_out, n_in, device=device, dtype=torch.bfloat16))
        b = torch.randn(n_out, device=device, dtype=torch.bfloat16)
        ws = w if dry_run else compress(w.contiguous(), "cusparselt")
        x2 = torch.randn(m, n_in, device=device, dtype=torch.bfloat16)
        x3 = x2.view(-1, TOKENS, n_in)
        v = {"dense_bias_3d": partial(F.linear, x3, w, b), "sparse_bias_3d": partial(F.linear, x3, ws, b),
             "sparse_bias_2d": partial(F.linear, x2, ws, b), "sparse_2d": partial(F.linear, x2, ws)}  # fmt: skip
        if not dry_run:
            try:
                alg = int(torch._cslt_sparse_mm_search(ws.packed, x2.t()))
                v["sparse_searched_alg"] = partial(torch._cslt_sparse_mm, ws.packed, x2.t(), bias=b, alg_id=alg)
            except Exception as e:  # noqa: BLE001
                v["sparse_searched_alg"] = f"{type(e).__name__}: {str(e)[:200]}"
        for name, fn in v.items():
            if isinstance(fn, str) or dry_run:
                rows += measure({name: fn}, reps, shape=f"{n_out}x{n_in}", m=m)
                continue
            try:
                rows += measure({name + "_graph": graphed(fn)[0]}, reps, shape=f"{n_out}x{n_in}", m=m)
            except Exception as e:  # noqa: BLE001
                rows.append({"variant": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
    return rows


def profile_table(device: str, dry_run: bool) -> str:
    """torch.profiler's top kernels (by device time) of one sparse ViT-B/16 forward at batch 256."""
    model, masks = pruned(build("vit-b16", tiny=dry_run), device)
    model = model.to(torch.bfloat16).eval()
    to_semi_structured(model, masks=masks, dry_run=dry_run)
    x = make_inputs(model, 2 if dry_run else 256, device, torch.bfloat16)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([] if dry_run else [torch.profiler.ProfilerActivity.CUDA])
    with torch.inference_mode():
        for _ in range(3):
            model(**x)
        with torch.profiler.profile(activities=acts) as prof:
            model(**x)
            if not dry_run:
                torch.cuda.synchronize()
    key = "cpu_time_total" if dry_run else "device_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=80)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    torch.manual_seed(0)
    out = {"stamps": {**stamps(torch.device(device)), "dry_run": args.dry_run}}
    out["linear"] = linear_rows(device, args.reps, args.dry_run)
    out["model"] = model_rows(device, args.reps, args.dry_run)
    out["bias"] = bias_rows(device, args.reps, args.dry_run)
    out["profile"] = profile_table(device, args.dry_run)
    out["torch_cusparselt_source"] = [
        ln
        for ln in inspect.getsource(sst).splitlines()
        if "_cslt_sparse_mm(" in ln or "transpose_result" in ln or "fuse_transpose" in ln
    ]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_overhead.json"), "w") as f:
        json.dump(out, f, indent=1)
    for r in out["linear"] + out["model"] + out["bias"]:
        sys.stdout.write(json.dumps(r) + "\n")
    sys.stdout.write(out["profile"] + "\n" + "\n".join(out["torch_cusparselt_source"]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
