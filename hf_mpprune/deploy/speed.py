"""Honest speed audit of a 2:4 model (docs/algorithms.md §13.4): same-dtype dense is the primary denominator.

Variants, each optionally with the same ToMe `r`:
* `dense_bf16` (primary denominator), `dense_fp32_autocast` (the paper's headline denominator, §13.2), and
  `dense_bf16_compiled` when `torch.compile` works (compiled only at `compile_batches`, to bound compile time);
* `sparse_bf16` (`to_semi_structured`) and `sparse_bf16_compiled`;
* on a GPU, `dense_bf16_graph` and `sparse_bf16_graph`: the same models replayed from a CUDA graph (`GraphReplay`),
  the only path on which 2:4 was faster than dense in our H200 measurement (benchmarks/RESULTS.md).
Every variant is timed per forward with `torch.utils.benchmark.Timer` after warm-up; median and IQR are reported. On CPU only the
dense-masked model is timed, and no speedup is claimed: PyTorch has no CPU 2:4 kernel.

Inputs keep their dtypes (only floating inputs such as `pixel_values` are cast; `input_ids` stay integer) and
outputs are read through `core.outputs.logits_of` (headless encoders compare `last_hidden_state`), so text and
sentence-encoder checkpoints run the same path as classifiers. A variant that fails (out of memory, a
`torch.compile` error) is recorded in `errors` and appears in the ratio table as failed, never silently dropped.
`dry_run=True` runs the GPU path on any device (CPU included) with `to_semi_structured(dry_run=True)` (every check,
weights left dense), no `torch.compile`, and no claim: its timings only prove the code path runs.
"""

import copy
import logging
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass, field

import torch
import torch.utils.benchmark as benchmark
import transformers
from torch import nn

from ..core.errors import ConfigError
from ..core.masks import Masks
from ..core.outputs import logits_of
from ..core.tasks import dummy_inputs
from .semi_structured import to_semi_structured
from .tome import apply_tome


logger = logging.getLogger(__name__)
DENOMINATORS = ("dense_bf16", "dense_fp32_autocast", "dense_bf16_compiled", "dense_bf16_graph")


@dataclass
class Timing:
    variant: str
    batch: int
    median_ms: float
    q25_ms: float
    q75_ms: float
    reps: int

    @property
    def iqr_ms(self) -> float:
        return self.q75_ms - self.q25_ms

    @property
    def items_per_s(self) -> float:
        return 1e3 * self.batch / self.median_ms


@dataclass
class SpeedReport:
    stamps: dict = field(default_factory=dict)
    timings: list[Timing] = field(default_factory=list)
    equivalence: dict = field(default_factory=dict)
    conversion: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def ratios(self) -> list[dict]:
        """Speedup of `sparse_bf16*` over each dense denominator at each batch (t_dense / t_sparse); a pair where
        either side failed has `speedup` None and the error (`errors["<variant>@<batch>"]`); every pair of a dry run
        has `speedup` None and a note (no claim)."""
        by = {(t.variant, t.batch): t.median_ms for t in self.timings}
        failed = {}
        for key, msg in self.errors.items():
            name, _, b = key.rpartition("@")
            if b.isdigit():
                failed[(name, int(b))] = msg
        out = []
        for v, b in sorted(set(by) | set(failed), key=lambda vb: (vb[1], vb[0])):
            for d in DENOMINATORS if v.startswith("sparse") else ():
                if (d, b) not in by and (d, b) not in failed:
                    continue
                err = failed.get((v, b)) or failed.get((d, b))
                row = {"batch": b, "sparse": v, "dense": d, "speedup": None}
                if err:
                    row["error"] = err
                elif self.stamps.get("dry_run"):
                    row["note"] = "dry run: no timing claim"
                else:
                    row["speedup"] = by[(d, b)] / by[(v, b)]
                out.append(row)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        for t, row in zip(self.timings, d["timings"]):
            row.update(iqr_ms=t.iqr_ms, items_per_s=t.items_per_s)
        d["ratios"] = self.ratios()
        return d

    def to_markdown(self) -> str:
        lines = [", ".join(f"{k}={v}" for k, v in self.stamps.items()), ""]
        lines += ["| variant | batch | median ms | IQR ms | items/s |", "|---|---:|---:|---:|---:|"]
        for t in self.timings:
            lines.append(f"| {t.variant} | {t.batch} | {t.median_ms:.3f} | {t.iqr_ms:.3f} | {t.items_per_s:.1f} |")
        if self.ratios():
            lines += ["", "| batch | sparse | vs dense | speedup |", "|---:|---|---|---:|"]
            lines += [f"| {r['batch']} | {r['sparse']} | {r['dense']} | {_cell(r)} |" for r in self.ratios()]
        lines += [f"- {n}" for n in self.notes] + [f"- error {k}: {v}" for k, v in self.errors.items()]
        return "\n".join(lines)


def _cell(row: dict) -> str:
    if row["speedup"] is not None:
        return f"{row['speedup']:.3f}x"
    return row["note"] if "note" in row else f"failed: {row['error'][:80]}"


# ---- pure helpers ------------------------------------------------------------------------------------------------
def summarize(times_ms: list[float]) -> tuple[float, float, float]:
    """(median, q25, q75) of a list of timings."""
    q = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) > 1 else [times_ms[0]] * 3
    return statistics.median(times_ms), q[0], q[2]


def make_inputs(model: nn.Module, batch: int, device, dtype=None, seq_len: int = 128) -> dict:
    """Dummy inputs of the model's native size from optimum's generators (`core.tasks.dummy_inputs`)."""
    return dummy_inputs(model, batch, seq_len, device=device, dtype=dtype)


def cast_floats(inputs: dict, dtype) -> dict:
    """`inputs` with floating tensors cast to `dtype` (None: unchanged); integer tensors keep their dtype."""
    if dtype is None:
        return inputs
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}


# ---- timing ------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def time_forward(fn, inputs: dict, warmup: int = 10, reps: int = 50) -> list[float]:
    """Per-call times in ms from `torch.utils.benchmark.Timer` (it synchronises CUDA around every measurement):
    `warmup` calls, then `reps` single-call measurements."""
    timer = benchmark.Timer(
        stmt="fn(**inputs)", globals={"fn": fn, "inputs": inputs}, num_threads=torch.get_num_threads()
    )  # Timer defaults to one thread
    if warmup:
        timer.timeit(warmup)
    return [1e3 * timer.timeit(1).mean for _ in range(reps)]


def stamps(device: torch.device) -> dict:

    s = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        s.update(device=torch.cuda.get_device_name(device), capability=f"sm{major}{minor}")
        s.update(cuda=str(torch.version.cuda), cusparselt=str(torch.backends.cusparselt.version()))
        try:
            q = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            s["driver"] = subprocess.run(q, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            s["driver"] = "unknown"
    else:
        s.update(device=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return s


class GraphReplay:
    """`model(**inputs)` replayed from a CUDA graph captured once per input signature (static input buffers; the
    returned output is the captured one, overwritten by the next replay). A replay skips the per-call host work:
    PyTorch's cuSPARSELt path rebuilds its plan on every eager call, which made eager 2:4 slower than dense on an
    H200 (benchmarks/RESULTS.md)."""

    def __init__(self, model: nn.Module):
        if not any(p.is_cuda for p in model.parameters()):
            raise ConfigError("GraphReplay captures CUDA graphs: move the model to a CUDA GPU first")
        self.model, self.graphs = model, {}

    def _capture(self, inputs: dict) -> tuple:
        static = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up off the default stream, as capture requires
                self.model(**static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.model(**static)
        return graph, static, out

    def __call__(self, **inputs):
        key = tuple(
            (k, tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (k, repr(v)) for k, v in inputs.items()
        )
        if key not in self.graphs:
            self.graphs[key] = self._capture(inputs)
        graph, static, out = self.graphs[key]
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                static[k].copy_(v)
        graph.replay()
        return out


def _compiled(model: nn.Module):
    """`torch.compile(model)`, or a stand-in that raises the compile error when timed (so the failure is recorded
    per batch and shows in the ratio table like any other failure; most compile errors only surface there)."""
    try:
        return torch.compile(model)
    except Exception as e:  # noqa: BLE001
        msg = f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}"

        def failed(**_kw):
            raise RuntimeError(msg)

        return failed


def _variants(model, masks, device, tome_r, compile_ok, report, dry_run=False) -> dict:
    """Build the variants of the GPU path (name -> callable); the 2:4 conversion and the equivalence check."""
    bf16 = copy.deepcopy(model).to(device=device, dtype=torch.bfloat16).eval()
    fp32 = copy.deepcopy(model).to(device).float().eval()
    sparse = copy.deepcopy(model).to(device=device, dtype=torch.bfloat16).eval()
    for m in (bf16, fp32, sparse) if tome_r else ():
        apply_tome(m, r=tome_r)
    eq_in = make_inputs(model, 2, device, torch.bfloat16)
    conv = to_semi_structured(sparse, masks=masks, example_inputs=eq_in, dry_run=dry_run)
    report.conversion = conv.to_dict()

    def autocast(**kw):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return fp32(**cast_floats(kw, torch.float32))

    v = {"dense_bf16": bf16, "dense_fp32_autocast": autocast, "sparse_bf16": sparse}
    if device.type == "cuda" and not dry_run:
        v["dense_bf16_graph"], v["sparse_bf16_graph"] = GraphReplay(bf16), GraphReplay(sparse)
    if compile_ok:
        v["dense_bf16_compiled"], v["sparse_bf16_compiled"] = _compiled(bf16), _compiled(sparse)
    with torch.inference_mode():
        ref, out = logits_of(bf16(**eq_in), hidden_fallback=True), logits_of(sparse(**eq_in), hidden_fallback=True)
        ref, out = ref.float(), out.float()
        r32 = logits_of(autocast(**eq_in), hidden_fallback=True).float()
    report.equivalence = {
        "batch": 2,
        "max_abs_diff_sparse_vs_dense_bf16": float((out - ref).abs().max()),
        "max_abs_diff_dense_autocast_vs_dense_bf16": float((r32 - ref).abs().max()),
        "max_abs_logit_dense_bf16": float(ref.abs().max()),
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
    }
    return v


def speed_audit(
    model: nn.Module,
    masks: Masks | None = None,
    batches=(1, 16, 64, 128, 256),
    tome_r: int = 0,
    compile: bool = True,
    compile_batches=(128,),
    warmup: int = 10,
    reps: int = 50,
    device: str | None = None,
    dry_run: bool = False,
) -> SpeedReport:
    """Time dense-masked vs 2:4 variants over a batch sweep (see the module docstring; `dry_run`: the GPU path
    on any device, weights left dense, nothing compiled, no claim)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = SpeedReport(stamps={**stamps(dev), "tome_r": tome_r, "dry_run": dry_run})
    if dry_run:
        report.notes.append("dry run: every check and forward of the GPU path, weights dense, timings meaningless")
    elif dev.type != "cuda":
        report.notes.append("CPU: no 2:4 kernel exists; timing the dense-masked model only, no speedup claimed")
        m = copy.deepcopy(model).eval()
        if tome_r:
            apply_tome(m, r=tome_r)
        for b in batches:
            med, q25, q75 = summarize(time_forward(m, make_inputs(m, b, dev), warmup, reps))
            report.timings.append(Timing("dense_fp32", b, med, q25, q75, reps))
        return report
    variants = _variants(model, masks, dev, tome_r, compile and not dry_run, report, dry_run)
    for b in batches:
        x = make_inputs(model, b, dev, torch.bfloat16)
        for name, fn in variants.items():
            if name.endswith("compiled") and b not in compile_batches:
                continue
            try:
                med, q25, q75 = summarize(time_forward(fn, x, warmup, reps))
            except Exception as e:  # noqa: BLE001 - OOM / compile failures are recorded, not fatal
                report.errors[f"{name}@{b}"] = f"{type(e).__name__}: {str(e)[:200]}"
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            report.timings.append(Timing(name, b, med, q25, q75, reps))
            logger.info("%s b=%d: %.3f ms", name, b, med)
    return report
