"""The peer's side of the timing protocol (`benchmarks/timing.py`): llm-compressor's `oneshot` + `SparseGPTModifier`
in a long-lived worker INSIDE the peer's own venv (`benchmarks/peer_venv.sh`); never imports hf_mpprune.

Loads the model and its processor once (the processor is handed to `oneshot`, so it is not re-loaded per call),
then per prune request runs `oneshot` on a fresh copy of the model with the same pre-saved batches as ours
(`feed: "batches"`, a DataLoader with batch_size=None: one dict per step) or all of them joined into one padded
batch (`feed: "joined"`). Phase times come from wrappers around llm-compressor's own pipeline stages (installed
once at load): `tracing_s` = `trace_subgraphs` (torch.fx tracing of the model into subgraphs), `forwards_s` =
`Subgraph.forward` (the calibration and propagation passes), of which `hessian_hooks_s` = the modifier's
`calibrate_module` hooks, `compression_s` = `compress_modules` (the SparseGPT solves), `other_s` = the rest of
`oneshot` (argument parsing, session and modifier set-up, data loader, finalisation).

  request {"op": "load", "model": DIR, "batch_files": {"batches": FILE, "joined": FILE}, "threads": 2}
  request {"op": "prune", "spec": {"sparsity": 0.6, "sequential_target": "BertLayer", "feed": "batches"}}
"""

import functools
import os
import sys
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing_proto import run_worker  # noqa: E402


PHASES: dict[str, float] = {}


def _timed(owner, name: str, key: str) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            PHASES[key] = PHASES.get(key, 0.0) + time.perf_counter() - t0

    setattr(owner, name, wrapper)


def _install_phase_timers() -> None:
    import llmcompressor.pipelines.sequential.pipeline as seq
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from llmcompressor.pipelines.sequential.helpers import Subgraph

    _timed(seq, "trace_subgraphs", "tracing_s")  # the name the pipeline module calls
    _timed(Subgraph, "forward", "forwards_s")
    _timed(SparseGPTModifier, "calibrate_module", "hessian_hooks_s")
    _timed(SparseGPTModifier, "compress_modules", "compression_s")


def load(req: dict) -> dict:
    import compressed_tensors
    import llmcompressor
    import torch
    import transformers
    from transformers import AutoModel, AutoProcessor

    torch.set_num_threads(int(req["threads"]))
    _install_phase_timers()
    model = AutoModel.from_pretrained(req["model"], dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(req["model"])
    feeds = {k: torch.load(v, weights_only=True) for k, v in req["batch_files"].items()}
    if "hf_mpprune" in sys.modules:
        raise RuntimeError("the peer worker imported hf_mpprune")
    info = {"side": "peer", "llmcompressor": llmcompressor.__version__,
            "compressed_tensors": compressed_tensors.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip
    return {"model": model, "processor": processor, "feeds": feeds, "info": info}


def prune(model, spec: dict, state: dict) -> dict:
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from torch.utils.data import DataLoader

    pattern = spec.get("pattern", "0:0")
    sparsity = spec.get("sparsity", 0.5)
    if pattern != "0:0":
        k, n = (int(v) for v in pattern.split(":"))
        sparsity = 1.0 - k / n
    batches = state["feeds"][spec.get("feed", "batches")][: spec.get("warmup_batches")]  # warm-up: first batch
    PHASES.clear()
    t0 = time.perf_counter()
    recipe = SparseGPTModifier(sparsity=sparsity, mask_structure=pattern, block_size=128, dampening_frac=0.01,
                               targets=["Linear"], ignore=[spec.get("ignore", "re:.*(pooler|classifier).*")])  # fmt: skip
    oneshot(
        model=model,
        processor=state["processor"],
        dataset=DataLoader(batches, batch_size=None, shuffle=False),
        recipe=recipe,
        num_calibration_samples=sum(int(next(iter(b.values())).shape[0]) for b in batches),
        sequential_targets=[spec["sequential_target"]],
        pipeline="sequential",
    )
    total = time.perf_counter() - t0
    phases = {k: round(v, 3) for k, v in PHASES.items()}
    done = sum(PHASES.get(k, 0.0) for k in ("tracing_s", "forwards_s", "compression_s"))
    phases["other_s"] = round(total - done, 3)
    return phases


def after() -> None:
    """Reset llm-compressor's global session: it keeps the last model copy alive until the next `oneshot`."""
    from llmcompressor.core import reset_session

    reset_session()


if __name__ == "__main__":
    run_worker(load, prune, after)
