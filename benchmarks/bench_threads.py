"""Thread use under load (docs/algorithms.md §18.9): the CG re-fit on the layer shapes of all-MiniLM-L6-v2 (per block
4 × 384×384, 1536×384, 384×1536; 6 blocks; 10 steps; 60 % pruned) run three ways, quiet and with one other busy
process (`timing.Burner`: a 1-thread matmul loop), interleaved:

- `all-threads`: every op of the step on torch's intra-op threads (`refit._cg_rows` on the whole layer: how the
  re-fit ran before its rows were chunked);
- `chunks`: `refit.cg_refit` as shipped (row chunks on Python threads, torch at one thread each);
- `one-thread`: `refit._cg_rows` on the whole layer with torch at one thread.

Prints the median wall and CPU seconds per (variant, load) and each variant's loaded / quiet ratio. Timing: run it
alone on a quiet machine (`make bench-timing` does).

  python benchmarks/bench_threads.py --repeats 5 --out benchmarks/out/threads.json
"""

import argparse
import json
import os
import statistics
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from hf_mpprune.core import refit  # noqa: E402


SHAPES = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]  # one BERT block of MiniLM: q, k, v, o, fc1, fc2


def layers(seed: int = 0) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for rows, cols in SHAPES:
        x = torch.randn(4096, cols, generator=g, dtype=torch.float64)
        h = 2 * x.T @ x / 4096
        h.diagonal().add_(0.01 * float(h.diagonal().mean()))
        w = torch.randn(rows, cols, generator=g) * 0.05
        out.append((w, h, torch.rand(rows, cols, generator=g) > 0.6))
    return out


def run(variant: str, work: list[tuple], threads: int, blocks: int = 6) -> tuple[float, float]:
    torch.set_num_threads(1 if variant == "one-thread" else threads)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(blocks):
        for w, h, keep in work:
            if variant == "chunks":
                refit.cg_refit(w, h, keep, 10)
            else:
                refit._cg_rows(w, keep.float(), h.float(), 10)
    torch.set_num_threads(threads)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    from timing import Burner

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    work = layers()
    variants, res = ("all-threads", "chunks", "one-thread"), {}
    for _ in range(args.repeats):
        for load in ("quiet", "burner"):
            burner = Burner() if load == "burner" else None
            try:
                for v in variants:
                    res.setdefault(f"{v} {load}", []).append(run(v, work, args.threads))
            finally:
                if burner:
                    burner.stop()
    rows = {k: {"wall_s": statistics.median(w for w, _ in v), "cpu_s": statistics.median(c for _, c in v),
                "runs": [[round(w, 3), round(c, 3)] for w, c in v]} for k, v in res.items()}  # fmt: skip
    print(
        f"| variant | quiet wall / CPU s | one busy process wall / CPU s | loaded / quiet | threads {args.threads} |"
    )
    print("|---|---|---|---|---|")
    for v in variants:
        q, b = rows[f"{v} quiet"], rows[f"{v} burner"]
        print(f"| {v} | {q['wall_s']:.2f} / {q['cpu_s']:.2f} | {b['wall_s']:.2f} / {b['cpu_s']:.2f} | "
              f"×{b['wall_s'] / q['wall_s']:.2f} | |")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "repeats": args.repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
