"""Our side of the timing protocol (`benchmarks/timing.py`): a long-lived worker that loads the model once and
times `MPPruner(model, config)` + `prune(calibration=batches)` (MP methods: + `analyze`) on a fresh copy per call.
Protocol and measurement: `timing_proto.py`.

  request {"op": "load", "model": DIR, "batch_files": {"batches": FILE}, "threads": 2}
  request {"op": "prune", "spec": {"method": "mp-wanda", "sparsity": 0.6, "reconstruct": true}}
"""

import os
import sys
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing_proto import run_worker  # noqa: E402


IGNORE = ["re:pooler"]  # AutoModel: no classification head; the pooler is left dense, as the peer does


def rows(batches: list[dict]) -> int:
    """Calibration samples in `batches` (rows of the first tensor of each)."""
    return sum(int(next(iter(b.values())).shape[0]) for b in batches)


def load(req: dict) -> dict:
    import torch
    import transformers
    from transformers import AutoModel

    import hf_mpprune

    torch.set_num_threads(int(req["threads"]))
    model = AutoModel.from_pretrained(req["model"], dtype=torch.float32).eval()
    batches = torch.load(req["batch_files"]["batches"], weights_only=True)  # ours always gets the batches
    samples = rows(batches)
    info = {"side": "ours", "hf_mpprune": hf_mpprune.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(), "samples": samples}  # fmt: skip
    return {"model": model, "batches": batches, "info": info}


def prune(model, spec: dict, state: dict) -> dict:
    from hf_mpprune import MPPruner, PruningConfig

    batches = state["batches"][: spec.pop("warmup_batches", None)]  # a warm-up may use the first batch only
    cfg = {"ignore": IGNORE, "calibration_samples": rows(batches), **spec}
    t0 = time.perf_counter()
    pruner = MPPruner(model, PruningConfig.from_dict(cfg))
    t1 = time.perf_counter()
    if spec["method"].startswith("mp-"):
        pruner.analyze(progress=False)
    t2 = time.perf_counter()
    pruner.prune(calibration=batches)
    split = dict(pruner.ledger.steps[-1].get("time_split") or {})
    return {"setup_s": round(t1 - t0, 3), "spectra_s": round(t2 - t1, 3), **split}


if __name__ == "__main__":
    run_worker(load, prune)
