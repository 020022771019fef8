"""2:4 semi-structured conversion of audited Linears for GPU inference (docs/algorithms.md §13.2/§13.4; the rules
in docs/deploy.md, "2:4 conversion on a GPU").

Order of checks (each refusal names what is wrong and how to fix it):

1. dtype: 2:4 kernels need fp16/bf16 (fp32 semi-structured is 1:2, so a 2:4 mask is not valid there); every
   floating parameter must already be in that dtype (or `cast=True`);
2. audit: every target Linear must be **exact 2:4 along the input dimension** (`legality_audit`); a target that is
   not is refused by name (`PatternError`). Targets are the masked plain `nn.Linear`s when `masks` is given, else
   every plain `nn.Linear` with at least 25% zeros ([D]: "pruned"; a 2:4 layer has >= 50%, so a damaged one is
   still caught and refused). Every other weight layer is listed in `report.skipped` with its reason (denser
   Linears, Linear subclasses, convolutions, GPT-2 Conv1D: PyTorch's 2:4 kernels replace plain Linear weights
   only). A model with no target at all is "unaudited" and refused. −0.0 is counted and written as +0.0;
3. hardware: CUDA only; cuSPARSELt on sm90+ (CUTLASS runs only on sm8x), on sm8x CUTLASS or cuSPARSELt chosen by
   a micro-benchmark on the largest target both accept (`backend="auto"`). CPU / other GPUs:
   `UnsupportedHardwareError` (or a logged no-op with `strict=False`): on CPU no speedup exists;
4. shape table per backend and dtype, read from torch's own constraints (`_DTYPE_SHAPE_CONSTRAINTS` of the
   backend's `SparseSemiStructuredTensor` subclass); misfits are skipped with the rule they break;
5. conversion by the backend's subclass (`from_dense`: no process-wide flag is touched); cuSPARSELt writes the
   product transposed (contiguous Linear outputs) with the kernel its own search picks per weight shape.

The converted model refuses (`ConfigError`) `save_pretrained` and any cast or move of a converted weight;
`dry_run=True` runs every check on any device and round-trips each target through PyTorch's pure-Python CUTLASS
pack / unpack, leaving the weights dense.
"""

import logging
import time
import types
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass,
    sparse_semi_structured_to_dense_cutlass,
)

from ..core.config import KeepPattern
from ..core.errors import ConfigError, PatternError, UnsupportedHardwareError
from ..core.layers import module_kind
from ..core.masks import Masks
from ..core.outputs import logits_of
from ..methods.kn.legality import audit_matrix
from .kernels import SUBCLASSES, compress, search_alg


logger = logging.getLogger(__name__)

TWO_FOUR = KeepPattern(2, 4)
_BACKENDS = ("auto", "cutlass", "cusparselt")
_HALF = (torch.float16, torch.bfloat16)
_PRUNED_ZEROS = 0.25  # [D] a Linear with at least this fraction of zeros counts as pruned (a 2:4 target)


@dataclass
class ConversionReport:
    """What `to_semi_structured` did: the backend and device, the layers converted, the layers skipped with their
    reasons, the seconds taken and, with example inputs, the largest logit difference to the dense model."""

    backend: str
    device: str
    dtype: str
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason
    negative_zeros: int = 0  # −0.0 entries found in the targets (written as +0.0 when converted)
    max_logit_diff: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    backend_timings_ms: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, str] = field(
        default_factory=lambda: {
            "targets": "masked Linears, else Linears with >= 25% zeros; every target must be exact 2:4 (input dim)",
            "backend": "cuSPARSELt on sm90+; on sm8x the faster of CUTLASS/cuSPARSELt on the largest target",
            "zeros": "-0.0 written as +0.0 before compression",
            "save": "converted model is never saved (save_pretrained raises)",
        }
    )

    def to_dict(self) -> dict:
        return asdict(self)


# ---- pure decisions --------------------------------------------------------------------------------------------
def shape_rule(backend: str, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """(rows multiple, cols multiple) of a 2:4 weight for `backend` in `dtype`, from torch's constraint table."""
    table = SUBCLASSES[backend]._DTYPE_SHAPE_CONSTRAINTS
    if dtype not in table:
        raise ConfigError(f"{backend} has no 2:4 kernel for {dtype} (torch supports {sorted(map(str, table))})")
    return table[dtype].sparse_min_rows, table[dtype].sparse_min_cols


def shape_reason(rows: int, cols: int, backend: str, dtype: torch.dtype = torch.bfloat16) -> str | None:
    """None when a `(rows=out, cols=in)` weight fits `backend`'s shape rule for `dtype`, else the reason."""
    mr, mc = shape_rule(backend, dtype)
    if rows % mr or cols % mc or rows < mr or cols < mc:
        return f"shape {rows}x{cols}: {backend} ({dtype}) needs rows % {mr} == 0 and cols % {mc} == 0"
    return None


def choose_backend(capability: tuple[int, int] | None, requested: str = "auto", cusparselt: bool = True) -> str:
    """Backend for a CUDA compute capability: 'cusparselt', 'cutlass' or 'benchmark' (sm8x with both available).

    Raises `UnsupportedHardwareError` for CPU (`capability=None`), pre-Ampere GPUs, CUTLASS outside sm8x, or
    cuSPARSELt requested/required but missing.
    """
    if requested not in _BACKENDS:
        raise ConfigError(f"backend must be one of {_BACKENDS}, got {requested!r}")
    if capability is None:
        raise UnsupportedHardwareError(
            "2:4 semi-structured kernels need a CUDA GPU (sm80+); the model is on CPU, where PyTorch has no 2:4 "
            "kernel and a 2:4 model runs dense-with-zeros (no speedup). Move it with model.to('cuda'), or pass "
            "strict=False to keep the dense-masked model."
        )
    major = capability[0]
    if major < 8:
        raise UnsupportedHardwareError(f"2:4 sparse tensor cores need sm80+; this GPU is sm{major}{capability[1]}")
    if requested == "cutlass" and major != 8:
        raise UnsupportedHardwareError(
            f"PyTorch's CUTLASS 2:4 backend runs only on sm8x; this GPU is sm{major}{capability[1]}: use 'cusparselt'"
        )
    if requested == "cutlass" or (major == 8 and not cusparselt):
        return "cutlass"
    if not cusparselt:
        raise UnsupportedHardwareError(
            f"sm{major}{capability[1]} needs the cuSPARSELt backend, but this torch build has no cuSPARSELt "
            f"(torch.backends.cusparselt.is_available() is False); install a CUDA torch >= 2.5"
        )
    if requested == "cusparselt" or major >= 9:
        return "cusparselt"
    return "benchmark"


# ---- glue ------------------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    try:
        out["cusparselt"] = str(torch.backends.cusparselt.version())
    except Exception:  # noqa: BLE001 - absent on CPU builds
        out["cusparselt"] = "n/a"
    return out


def _targets(model: nn.Module, masks: Masks | None) -> tuple[dict[str, nn.Linear], dict[str, str]]:
    """Plain Linears to convert, and every other weight layer with the reason it stays dense."""
    if masks is not None:
        masks.check_model(model)
    targets, skipped = {}, {}
    for name, mod in model.named_modules():
        kind = module_kind(mod)
        if kind is None or (masks is not None and name not in masks):
            if kind is not None:
                skipped[name] = "no mask"
            continue
        if type(mod) is not nn.Linear:
            skipped[name] = (
                f"{type(mod).__name__} ({kind}): PyTorch's 2:4 kernels replace plain nn.Linear weights only"
            )
            continue
        zeros = float((mod.weight == 0).float().mean())
        if masks is None and zeros < _PRUNED_ZEROS:
            skipped[name] = f"dense ({100 * zeros:.1f}% zeros): not pruned"
        else:
            targets[name] = mod
    return targets, skipped


def _audit(targets: dict[str, nn.Linear], masks: Masks | None) -> int:
    """Refuse the first non-2:4 target; return the number of −0.0 entries found."""
    neg = 0
    for name, lin in targets.items():
        row = audit_matrix(name, lin.weight, TWO_FOUR)
        if not row.legal:
            raise PatternError(
                f"layer {name!r} is not exact 2:4 along its input dim: {row.bad_groups}/{row.groups} groups have "
                f"more than 2 nonzeros, {row.tail_columns} tail columns. Prune it with a 2:4 pattern first "
                "(or leave it out of the masks); 2:4 kernels would silently compute a different layer."
            )
        if masks is not None and bool((lin.weight.detach()[~masks[name].to(lin.weight.device)] != 0).any()):
            raise PatternError(f"layer {name!r} has nonzeros where its mask prunes: apply the masks first")
        neg += row.negative_zeros
    return neg


def _check_dtype(model: nn.Module, dtype: torch.dtype, cast: bool) -> None:
    """Every floating parameter must be in `dtype` (or `cast=True` casts the model)."""
    other = {n: p.dtype for n, p in model.named_parameters() if p.is_floating_point() and p.dtype != dtype}
    if other and not cast:
        shown = ", ".join(f"{n} ({d})" for n, d in list(other.items())[:5])
        raise ConfigError(
            f"{len(other)} parameter(s) of the model are not in {dtype}, which 2:4 needs: {shown}. Cast the model "
            f"first (model.to({dtype})) or pass cast=True; compare speed against dense in the same dtype"
        )
    if other:
        model.to(dtype)


def layout_round_trip(weight: torch.Tensor, backend: str) -> torch.Tensor:
    """Dry run: pack `weight` into CUTLASS 2:4 values + metadata with PyTorch's pure-Python helper (any device) and
    unpack it; the result must equal `weight` bit for bit (PatternError otherwise). Returns `weight` (dense)."""
    packed, meta = sparse_semi_structured_from_dense_cutlass(weight)
    if not torch.equal(sparse_semi_structured_to_dense_cutlass(packed, meta), weight):
        raise PatternError("the CUTLASS 2:4 pack / unpack round trip changed the weight (a layout bug)")
    return weight


def _bench(backend: str, weight: torch.Tensor, reps: int = 20) -> float:
    w = compress(weight, backend)
    x = torch.randn(4096, weight.shape[1], dtype=weight.dtype, device=weight.device)
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        torch.nn.functional.linear(x, w)
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t) / reps


def _pick_by_benchmark(targets: dict[str, nn.Linear], dtype: torch.dtype, report: ConversionReport) -> str:
    """sm8x with both backends: time the largest target that both shape rules accept; none = cuSPARSELt."""
    fits = [m.weight for m in targets.values() if not any(shape_reason(*m.weight.shape, b, dtype) for b in SUBCLASSES)]
    if not fits:
        report.decisions["backend"] = "no target fits both backends' shape rules: cuSPARSELt, not benchmarked"
        return "cusparselt"
    big = max(fits, key=lambda w: w.numel()).detach().contiguous()
    report.backend_timings_ms = {b: _bench(b, big) for b in SUBCLASSES}
    return min(report.backend_timings_ms, key=report.backend_timings_ms.get)


# ---- the converted model: no save, no cast or move that would touch a converted weight --------------------------
_MOVES = ("to", "half", "float", "double", "bfloat16", "cuda", "cpu", "type")


def _guard(model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    def save_pretrained(*_a, **_k):
        raise ConfigError(
            "this model holds 2:4 semi-structured kernels and must not be saved; save the dense-masked model "
            "(before to_semi_structured) instead"
        )

    model.save_pretrained = save_pretrained
    for name in _MOVES:  # bound methods of the instance: a deepcopy rebinds them to the copy
        setattr(model, name, types.MethodType(_guarded(name, dtype, device), model))


_DTYPE_OF = {"half": torch.float16, "float": torch.float32, "double": torch.float64, "bfloat16": torch.bfloat16}


def _destination(name: str, args, kwargs) -> tuple[torch.device | None, torch.dtype | None]:
    """(device, dtype) a `Module.<name>(*args, **kwargs)` call would move / cast to (None = unchanged)."""
    if name == "to":
        device, dtype, *_ = torch._C._nn._parse_to(*args, **kwargs)
        return device, dtype
    if name == "cpu":
        return torch.device("cpu"), None
    if name == "cuda":
        d = args[0] if args else kwargs.get("device")
        return (torch.device("cuda", d) if isinstance(d, int) else torch.device(d or "cuda")), None
    return None, _DTYPE_OF.get(name)


def _guarded(name: str, dtype: torch.dtype, device: torch.device):
    def call(self, *args, **kwargs):
        to_device, to_dtype = _destination(name, args, kwargs)
        moves = to_device is not None and (to_device.type, to_device.index or 0) != (device.type, device.index or 0)
        if name == "type" or moves or (to_dtype is not None and to_dtype != dtype):
            raise ConfigError(
                f"model.{name}(...) would cast or move 2:4 semi-structured weights, which support only the inference "
                f"ops of their kernels ({dtype} on {device}); nothing was changed. Cast / move the dense-masked "
                "model, then call to_semi_structured again"
            )
        return getattr(type(self), name)(self, *args, **kwargs)

    return call


@torch.no_grad()
def _logits(model: nn.Module, inputs) -> torch.Tensor:
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return logits_of(out, hidden_fallback=True).float()


@torch.no_grad()
def to_semi_structured(
    model: nn.Module,
    dtype: torch.dtype = torch.bfloat16,
    backend: str = "auto",
    strict: bool = True,
    *,
    masks: Masks | None = None,
    example_inputs=None,
    cast: bool = False,
    dry_run: bool = False,
    search_rows: int = 8192,
) -> ConversionReport:
    """Convert audited exact-2:4 Linears of `model` (in place) to `torch.sparse` semi-structured weights.

    Args:
        model (`torch.nn.Module`): a pruned model already in `dtype` on a CUDA device (or `cast=True`).
        dtype (`torch.dtype`, defaults to `torch.bfloat16`): fp16 or bf16; fp32 is refused (2:4 is not its pattern).
        backend (`str`, defaults to `"auto"`): `"auto"`, `"cutlass"` (sm8x only) or `"cusparselt"`.
        strict (`bool`, defaults to `True`): on CPU / unsupported GPUs raise; with `False` log and return a no-op.
        masks (`Masks`, *optional*): the layers to convert (each must be exact 2:4 and applied).
        example_inputs (*optional*): inputs for a dense-vs-converted logit check (`max_logit_diff`).
        cast (`bool`, defaults to `False`): cast the model to `dtype` first instead of refusing another dtype.
        dry_run (`bool`, defaults to `False`): every check on any device, the shape rules of `backend` (cuSPARSELt
            for "auto"), and a CUTLASS pack / unpack round trip per target instead of the conversion: the weights
            stay dense and the model is not guarded (`report.backend` = "dry-run:<backend>").
        search_rows (`int`, defaults to 8192): cuSPARSELt only: pick each weight shape's kernel by cuSPARSELt's
            own search at this many input rows (tokens in a batch); 0 keeps the default kernel.

    Raises:
        ConfigError: fp32 / unknown dtype or backend, or a model in another dtype without `cast=True`.
        PatternError: a target layer that is not exact 2:4 (named), or no target at all (unaudited model).
        UnsupportedHardwareError: CPU, pre-sm80, or no fitting backend (only with `strict=True`).
    """
    if dtype not in _HALF:
        raise ConfigError(
            f"2:4 semi-structured kernels need dtype float16 or bfloat16, got {dtype}; fp32 semi-structured uses "
            "a 1:2 pattern, so a 2:4 mask is not valid there. Use dtype=torch.bfloat16."
        )
    if search_rows < 0:
        raise ConfigError(f"search_rows must be >= 0 (0: default cuSPARSELt kernel), got {search_rows}")
    _check_dtype(model, dtype, cast)
    targets, skipped = _targets(model, masks)
    if not targets:
        raise PatternError(
            f"no Linear of {type(model).__name__} is a 2:4 target (unaudited model: nothing is pruned to 2:4). "
            "Prune with pattern '2:4' first, or pass the masks."
        )
    neg = _audit(targets, masks)
    device = next(iter(targets.values())).weight.device
    report = ConversionReport(backend="none", device=str(device), dtype=str(dtype), versions=_versions())
    report.skipped.update(skipped)
    report.negative_zeros = neg
    if dry_run:
        chosen = "cusparselt" if backend == "auto" else choose_backend((8, 0), backend)
    else:
        try:
            cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
            chosen = choose_backend(cap, backend, cusparselt=torch.backends.cusparselt.is_available())
        except UnsupportedHardwareError as e:
            if strict:
                logger.error("%s", e)
                raise
            logger.warning("to_semi_structured: no-op (strict=False): %s", e)
            report.skipped.update(dict.fromkeys(targets, f"not converted: {e}"))
            return report
        report.device = torch.cuda.get_device_name(device)
        if chosen == "benchmark":
            chosen = _pick_by_benchmark(targets, dtype, report)
    report.backend = f"dry-run:{chosen}" if dry_run else chosen
    ref = _logits(model, example_inputs) if example_inputs is not None else None
    _convert(targets, chosen, report, dtype, layout_round_trip if dry_run else compress, 0 if dry_run else search_rows)
    if ref is not None:
        report.max_logit_diff = float((_logits(model, example_inputs) - ref).abs().max())
    if not dry_run:
        _guard(model, dtype, device)
    logger.info(
        "2:4 (%s): converted %d Linears, skipped %d", report.backend, len(report.converted), len(report.skipped)
    )
    return report


def _convert(targets: dict[str, nn.Linear], backend: str, report: ConversionReport, dtype, fn=compress, rows=0):
    algs: dict[tuple, int] = {}  # per weight shape: cuSPARSELt's fastest kernel at `rows` input rows
    for name, lin in targets.items():
        if (reason := shape_reason(*lin.weight.shape, backend, dtype)) is not None:
            report.skipped[name] = reason
            continue
        w = (lin.weight.detach() + 0.0).contiguous()  # −0.0 + 0.0 = +0.0: canonical zeros
        packed = fn(w, backend)
        if rows and backend == "cusparselt":
            k = tuple(w.shape)
            packed.alg_id_cusparselt = algs[k] = algs[k] if k in algs else search_alg(packed, rows)
        lin.weight = nn.Parameter(packed, requires_grad=False)
        report.converted.append(name)
    if algs:  # (out, in): kernel id
        report.decisions["cusparselt_alg_id"] = f"searched at {rows} rows: {algs}"
