"""kill -9 during `MPPruner.save_pretrained`: the previous checkpoint must stay intact (or be replaced by a
complete new one if the kill lands after the swap), never half-written.

    python benchmarks/bench_atomic_save.py --trials 8 --out /tmp/atomic.json

A parent saves checkpoint A (30% magnitude), then repeatedly starts a child that prunes the same model to 60% and
calls `save_pretrained` on the same directory; the parent sends SIGKILL at a random moment inside the save window
(measured first). After each kill it checks the directory is exactly A (SHA-256 of every file) or a complete,
verified B, and that `MPPruner.from_pretrained` loads it.
"""

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's hf_mpprune, not an installed one
CHILD = r"""
import sys, time
sys.path.insert(0, {root!r})
from benchmarks.bench_atomic_save import build
pruner = build({sparsity})
sys.stdout.write("SAVING\n"); sys.stdout.flush()
t0 = time.perf_counter()
pruner.save_pretrained({target!r})
sys.stdout.write(f"DONE {{time.perf_counter() - t0:.3f}}\n"); sys.stdout.flush()
"""


def build(sparsity: float):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from hf_mpprune import MPPruner, PruningConfig

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=4, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                    intermediate_size=2048, num_labels=10)  # fmt: skip
    pruner = MPPruner(ViTForImageClassification(cfg), PruningConfig("magnitude", sparsity))
    pruner.prune()
    return pruner


def digest(path: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def verify(target: str, names: set[str]) -> tuple[float, bool]:
    """Load with full verification (mask SHA, mask vs zeros, weights SHA vs ledger); complete = no warning and
    every file of a full save present. (B's bytes differ run to run: its ledger carries timestamps.)"""
    import warnings

    from hf_mpprune import MPPruner

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pruner = MPPruner.from_pretrained(target)
        except Exception as e:  # a corrupt checkpoint is exactly what we are looking for
            print("load failed:", e)
            return float("nan"), False
    ok = not caught and set(os.listdir(target)) == names
    return pruner.masks.sparsity(), ok


def child(target: str, sparsity: float) -> subprocess.Popen:
    code = CHILD.format(root=ROOT, sparsity=sparsity, target=target)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 300) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            raise RuntimeError(f"child exited ({proc.returncode}) before {prefix!r}")
    raise TimeoutError(prefix)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, "ckpt")
        a = build(0.3)
        a.save_pretrained(target)
        good_a = digest(target)
        size_mb = sum(os.path.getsize(os.path.join(target, n)) for n in os.listdir(target)) / 2**20
        p = child(target, 0.6)  # one full save of B to time the window, then restore A
        wait_line(p, "SAVING")
        save_s = float(wait_line(p, "DONE").split()[1])
        p.wait()
        good_b = digest(target)
        a.save_pretrained(target)  # back to A (its card is now an *update* of B's, so re-take the digest)
        good_a = digest(target)
        rows = []
        for trial in range(args.trials):
            delay = rng.uniform(0.0, save_s)
            p = child(target, 0.6)
            wait_line(p, "SAVING")
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            p.wait()
            now = digest(target)
            leftovers = [n for n in os.listdir(tmp) if n != "ckpt"]
            loaded, complete = verify(target, set(good_b))
            state = "A (previous, intact)" if now == good_a else "B (new, complete)" if complete else "CORRUPT"
            rows.append({"trial": trial, "kill_after_s": round(delay, 3), "state": state, "leftover_temp_dirs": len(leftovers),
                         "loaded_sparsity": round(loaded, 4)})  # fmt: skip
            print(rows[-1], flush=True)
            if now != good_a:
                a.save_pretrained(target)  # back to A for the next trial (also cleans leftovers of dead writers)
                good_a = digest(target)
        a.save_pretrained(target)
        cleaned = [n for n in os.listdir(tmp) if n != "ckpt"] == []
    summary = {
        "checkpoint_mb": round(size_mb, 1), "full_save_s": save_s, "trials": rows,
        "corrupt": sum(r["state"] == "CORRUPT" for r in rows), "intact_previous": sum(r["state"].startswith("A") for r in rows),
        "complete_new": sum(r["state"].startswith("B") for r in rows), "leftovers_cleaned_by_next_save": cleaned,
    }  # fmt: skip
    print(json.dumps({k: v for k, v in summary.items() if k != "trials"}, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if summary["corrupt"] else 0


if __name__ == "__main__":
    sys.exit(main())
