"""2:4 semi-structured conversion of audited Linears for GPU inference (docs/algorithms.md §13.2/§13.4, CONVENTIONS §5).

Order of checks (each refusal names what is wrong and how to fix it):

1. dtype: 2:4 kernels need fp16/bf16 (fp32 semi-structured is 1:2, so a 2:4 mask is not valid there);
2. audit: every target Linear must be **exact 2:4 along the input dimension** (`legality_audit`); a target that is
   not is refused by name (`PatternError`). Targets are the masked Linears when `masks` is given, else every
   Linear with at least 25% zeros ([D]: "pruned"; a 2:4 layer has >= 50%, so a damaged one is still caught and
   refused); denser Linears (e.g. an unpruned head) are skipped with a reason. A model
   with no target at all is "unaudited" and refused. −0.0 is counted and canonicalised to +0.0 before converting;
3. hardware: CUDA only; cuSPARSELt on sm90+ (CUTLASS runs only on sm8x), on sm8x CUTLASS or cuSPARSELt chosen by
   a micro-benchmark (`backend="auto"`). CPU / other GPUs: `UnsupportedHardwareError` (or a logged no-op with
   `strict=False`): on CPU the dense-masked model is the deployment and no speedup exists;
4. shape table per backend (weight rows/cols multiples: CUTLASS 32/64, cuSPARSELt 16/16); misfits are skipped;
5. conversion with `torch.sparse.to_sparse_semi_structured`, optional logit comparison against the dense model.

The converted model must never be saved: its `save_pretrained` is replaced by one that raises.
"""

import logging
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

from ..core.config import KeepPattern
from ..core.errors import ConfigError, PatternError, UnsupportedHardwareError
from ..core.masks import Masks
from ..core.outputs import logits_of
from ..methods.kn.legality import audit_matrix


logger = logging.getLogger(__name__)

TWO_FOUR = KeepPattern(2, 4)
# (weight rows multiple, weight cols multiple) for fp16/bf16 (docs/deploy.md, "2:4 shape rules")
SHAPE_RULES = {"cutlass": (32, 64), "cusparselt": (16, 16)}
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
def shape_reason(rows: int, cols: int, backend: str) -> str | None:
    """None when a `(rows=out, cols=in)` fp16/bf16 weight fits `backend`'s shape rules, else the reason."""
    mr, mc = SHAPE_RULES[backend]
    if rows % mr or cols % mc or rows < mr or cols < mc:
        return f"shape {rows}x{cols}: {backend} needs rows % {mr} == 0 and cols % {mc} == 0"
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
    linears = {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    if masks is not None:
        masks.check_model(model)
        targets = {n: linears[n] for n in masks.names if n in linears}
        skipped = {n: "no mask" for n in linears if n not in targets}
        return targets, skipped
    targets, skipped = {}, {}
    for n, m in linears.items():
        zeros = float((m.weight == 0).float().mean())
        if zeros >= _PRUNED_ZEROS:
            targets[n] = m
        else:
            skipped[n] = f"dense ({100 * zeros:.1f}% zeros): not pruned"
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


def _bench(backend: str, weight: torch.Tensor, reps: int = 20) -> float:

    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    w = to_sparse_semi_structured(weight)
    x = torch.randn(4096, weight.shape[1], dtype=weight.dtype, device=weight.device)
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        torch.nn.functional.linear(x, w)
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t) / reps


def _forbid_save(model: nn.Module) -> None:
    def save_pretrained(*_a, **_k):
        raise ConfigError(
            "this model holds 2:4 semi-structured kernels and must not be saved; save the dense-masked model "
            "(before to_semi_structured) instead"
        )

    model.save_pretrained = save_pretrained


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
    w0 = next((p for p in model.parameters() if p.is_floating_point()), None)
    if w0 is not None and w0.dtype != dtype:
        if not cast:
            raise ConfigError(
                f"the model is in {w0.dtype} but 2:4 needs {dtype}: cast it first (model.to({dtype})) or pass "
                "cast=True; compare speed against dense in the same dtype"
            )
        model.to(dtype)
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
        big = max(targets.values(), key=lambda m: m.weight.numel()).weight
        report.backend_timings_ms = {b: _bench(b, big.contiguous()) for b in ("cutlass", "cusparselt")}
        chosen = min(report.backend_timings_ms, key=report.backend_timings_ms.get)
    report.backend = chosen
    ref = _logits(model, example_inputs) if example_inputs is not None else None
    _convert(targets, chosen, report)
    if ref is not None:
        report.max_logit_diff = float((_logits(model, example_inputs) - ref).abs().max())
    _forbid_save(model)
    logger.info("2:4 (%s): converted %d Linears, skipped %d", chosen, len(report.converted), len(report.skipped))
    return report


def _convert(targets: dict[str, nn.Linear], backend: str, report: ConversionReport) -> None:

    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    for name, lin in targets.items():
        reason = shape_reason(*lin.weight.shape, backend)
        if reason is not None:
            report.skipped[name] = reason
            continue
        w = (lin.weight.detach() + 0.0).contiguous()  # −0.0 + 0.0 = +0.0: canonical zeros
        lin.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
        report.converted.append(name)
