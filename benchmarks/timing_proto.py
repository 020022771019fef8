"""The request loop and the per-call measurement shared by the two timing workers (ours: `timing_ours.py`, the
peer: `peer_worker.py`, driven by `timing.py`). Standard library only: the peer worker runs inside llm-compressor's
own venv and never imports hf_mpprune.

Protocol: one JSON object per line. The driver writes requests to the worker's stdin; the worker answers each on
its ORIGINAL stdout, which `serve` keeps for itself before pointing fd 1 at stderr (whatever the libraries print
cannot corrupt the protocol). Every answer carries the request's `id` and `ok`; a failed request answers
`{"ok": false, "error": ..., "traceback": ...}` and the worker stays up for the next one.

  {"id": 1, "op": "load", "model": DIR, "batch_files": {"batches": FILE}, "threads": 2}  -> {"id": 1, "ok": true, ...}
  {"id": 2, "op": "prune", "spec": {...}, "warmup": false}  -> {"id": 2, "ok": true, "wall_s": ..., "cpu_s": ...,
        "peak_rss_mib": ..., "rss_before_mib": ..., "peak_method": "vmhwm", "achieved": ..., "phases": {...}}
  {"id": 3, "op": "quit"}

Per prune call the worker deep-copies its pre-loaded model (outside the timed span), then measures the call:
wall time (`perf_counter`), CPU time of the whole process (`process_time`: every thread, spin-waits included) and
peak resident memory (`PeakMemory`); with the `omp_regions.c` shim preloaded, also the number of multi-thread OpenMP
regions the call started (a count that does not depend on the machine's load).
"""

import copy
import ctypes
import gc
import json
import os
import re
import sys
import threading
import time
import traceback


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_hwm() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS; True if the reset took effect."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 4096  # within 4 MiB: the reset worked


class PeakMemory:
    """Peak resident memory (MiB) of this process inside a `with` block.

    Linux: the block starts by writing "5" to /proc/self/clear_refs (resets VmHWM to the current RSS) and ends by
    reading VmHWM, so the peak is exact and costs nothing during the block (`method = "vmhwm"`). Where the reset is
    not allowed, a thread samples VmRSS every `interval` s (`method = "sampled"`; it can miss peaks shorter than
    the interval).
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.before_mib = self.peak_mib = 0.0
        self.method = ""

    def __enter__(self):
        gc.collect()
        self.before_mib = (_status_kib("VmRSS") or 0) / 1024
        if _reset_hwm():
            self.method = "vmhwm"
        else:
            self.method = "sampled"
            self._stop = threading.Event()
            self._max = 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, _status_kib("VmRSS") or 0)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        if self.method == "vmhwm":
            self.peak_mib = (_status_kib("VmHWM") or 0) / 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self._max, _status_kib("VmRSS") or 0) / 1024
        return False


def _region_counter():
    """omp_regions_multi() of the preloaded `omp_regions.c` shim (`timing.py --count-regions`), else None."""
    try:
        fn = ctypes.CDLL(None).omp_regions_multi
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return fn


REGIONS = _region_counter()


def measure(fn):
    """Run `fn()`; return (its result, {wall_s, cpu_s, peak_rss_mib, rss_before_mib, peak_method}), plus
    `omp_regions` (multi-thread OpenMP regions started during the call) when the counting shim is preloaded."""
    r0 = REGIONS() if REGIONS else 0
    with PeakMemory() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = {
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "peak_rss_mib": round(mem.peak_mib, 1),
        "rss_before_mib": round(mem.before_mib, 1),
        "peak_method": mem.method,
    }
    if REGIONS:
        stats["omp_regions"] = REGIONS() - r0
    return out, stats


def serve(handle) -> None:
    """Answer JSON-line requests from stdin with `handle(request) -> dict` until {"op": "quit"} or end of input."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints (tqdm, loggers, print) go to stderr; fd `proto` carries only answers
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            out = {"id": req.get("id"), "ok": True, **handle(req)}
        except Exception as e:
            out = {"id": req.get("id"), "ok": False, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        proto.write(json.dumps(out) + "\n")
        if req.get("op") == "quit":
            break


def linear_sparsity(model) -> float:
    """Zero fraction over the model's Linear weights outside the (ignored) pooler / classifier."""
    import torch

    zeros = total = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not any(k in name for k in ("pooler", "classifier")):
            zeros += int((mod.weight == 0).sum())
            total += mod.weight.numel()
    return round(zeros / max(total, 1), 6)


def run_worker(load, prune, after=None) -> None:
    """A long-lived worker: `load(request) -> state` (must hold "model"; may hold "info", answered to the load
    request) once, then per prune request a fresh deep copy of state["model"], `prune(copy, spec, state) -> phases`
    timed by `measure`, then (untimed) the sparsity reached (`linear_sparsity`) and `after()` (release what the
    library still holds, so the next call starts from the same memory)."""
    state: dict = {}

    def handle(req: dict) -> dict:
        op = req.get("op")
        if op == "load":
            state.clear()
            t0 = time.perf_counter()
            state.update(load(req))
            return {"load_s": round(time.perf_counter() - t0, 3), **state.get("info", {})}
        if op == "prune":
            model = copy.deepcopy(state["model"])
            phases, stats = measure(lambda: prune(model, req["spec"], state))
            out = {**stats, "phases": phases, "achieved": linear_sparsity(model)}
            if after is not None:
                after()
            del model
            gc.collect()
            return out
        if op == "quit":
            return {}
        raise ValueError(f"unknown op {op!r}")

    serve(handle)
