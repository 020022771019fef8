"""Export a (pruned, optionally ToMe-merged) transformers model to ONNX or to a `torch.export` program (`.pt2`).

Both formats go through PyTorch's own exporters: `torch.export.export` for `.pt2`, and
`torch.onnx.export(..., dynamo=True)` (the same `torch.export` graph, translated by onnxscript) for ONNX. No
optimum release importable with transformers 5 ships an ONNX exporter (docs/deploy.md lists the versions checked);
optimum's input generators build the example inputs.

Guarantees, checked after every export unless `verify=False`:

* **pruned zeros survive bit-exactly**: every weight of the prunable layers (the masked layers, or every Linear
  and Conv weight when no masks are known) is found in the artifact with the same bits (`+0.0` stays `+0.0`);
  ONNX initializers keep the PyTorch parameter names (the graph is saved unoptimised, `optimize=False`; ONNX
  Runtime applies its own graph optimisations when it loads the file);
* **dynamic batch size** (and sequence length for text models): the artifact is run at two batch sizes other
  than the traced one (the second also 5 tokens shorter for text models) and compared with the eager model; the
  largest absolute difference must be `<= atol`.

ToMe (`tome=r`) is applied for the export and removed afterwards when the model did not have it before. Decoder
language models are exported as their full-sequence forward (`config.use_cache` off during the export: logits
only, no KV cache among the outputs); a generation loop with a cache is not exported.
"""

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.constants import MASKS_NAME
from ..core.errors import ConfigError, LedgerMismatchError
from ..core.loading import load_model
from ..core.masks import Masks
from ..core.tasks import dummy_inputs
from .tome import apply_tome, remove_tome, tome_state


logger = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
DEFAULT_OPSET = 18
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class ExportReport:
    """What `export` wrote and what it checked."""

    format: str
    path: str
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    opset: int | None = None
    tome: dict | None = None
    checked_batch_sizes: list[int] = field(default_factory=list)
    max_abs_diff: float | None = None
    layers_checked: int = 0
    zeros_checked: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- inputs --------------------------------------------------------------------------------------------------
def example_inputs(model: nn.Module, batch_size: int = 2, seq_len: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Dummy inputs of the right names, shapes and dtypes from optimum's input generators (`core.tasks`).

    Text inputs carry an attention mask with right padding, so masking is exercised by the checks.
    """
    return dummy_inputs(model, batch_size, seq_len, seed=seed)


def _dynamic_shapes(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[dict, dict[str, dict[int, str]]]:
    batch = torch.export.Dim("batch", min=1, max=4096)
    max_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    seq = torch.export.Dim("sequence", min=2, max=max_len if isinstance(max_len, int) and max_len > 2 else 4096)
    shapes, names = {}, {}
    for k, v in inputs.items():
        axes = {0: batch}
        if k in _TEXT_INPUTS and v.dim() == 2:
            axes[1] = seq
        shapes[k] = axes
        names[k] = {i: d.__name__ for i, d in axes.items()}
    return shapes, names


def _resize_batch(inputs: dict[str, torch.Tensor], batch: int, seed: int, shorter: int = 0) -> dict[str, torch.Tensor]:
    """Rows of `inputs` resampled to `batch` (images perturbed); text inputs also cut `shorter` tokens shorter."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in inputs.items():
        idx = torch.randint(0, v.shape[0], (batch,), generator=g)
        t = v[idx].clone()
        if k in _TEXT_INPUTS and t.dim() == 2 and shorter:
            t = t[:, : max(2, t.shape[1] - shorter)]
        if t.is_floating_point():
            t = t + 0.1 * torch.randn(t.shape, generator=g).to(t)
        out[k] = t
    return out


# ---- running the model --------------------------------------------------------------------------------------------
def _flat_outputs(out: Any) -> tuple[list[str], list[torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        return ["output"], [out]
    if hasattr(out, "items"):
        pairs = [(k, v) for k, v in out.items() if isinstance(v, torch.Tensor)]
        return [k for k, _ in pairs], [v for _, v in pairs]
    tensors = [t for t in out if isinstance(t, torch.Tensor)]
    return [f"output_{i}" for i in range(len(tensors))], tensors


@torch.no_grad()
def _eager(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    return [t.float().cpu().numpy() for t in _flat_outputs(model(**inputs))[1]]


# ---- the artifact's weights ---------------------------------------------------------------------------------------
def _pruned_weights(model: nn.Module, masks: Masks | None) -> dict[str, torch.Tensor]:
    if masks is not None:
        return {f"{n}.weight": model.get_submodule(n).weight.detach() for n in masks.names}
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return {f"{n}.weight": m.weight.detach() for n, m in model.named_modules() if isinstance(m, kinds)}


def _artifact_weights(path: str, fmt: str) -> dict[str, np.ndarray]:
    if fmt == "pt2":
        ep = torch.export.load(path)
        return {k: v.detach().cpu().numpy() for k, v in ep.state_dict.items()}
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(path)
    return {t.name: numpy_helper.to_array(t, base_dir=os.path.dirname(path)) for t in proto.graph.initializer}


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def check_exported_zeros(model: nn.Module, path: str, fmt: str, masks: Masks | None = None) -> tuple[int, int]:
    """Every prunable weight is in the artifact with the same bits; returns (layers, exact zeros checked).

    A weight is looked up by its parameter name, then (for optimised graphs) by value, as is or transposed.
    Raises `LedgerMismatchError` naming the weight when it is missing or its bits changed.
    """
    found = _artifact_weights(path, fmt)
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for arr in found.values():
        by_shape.setdefault(tuple(arr.shape), []).append(arr)
    layers = zeros = 0
    for name, w in _pruned_weights(model, masks).items():
        want = w.cpu().numpy()
        cands = [found[name]] if name in found else []
        cands += by_shape.get(tuple(want.shape), []) + [a.T for a in by_shape.get(tuple(want.shape[::-1]), [])]
        if not any(
            c.dtype == want.dtype and c.shape == want.shape and np.array_equal(_bits(c), _bits(want)) for c in cands
        ):
            raise LedgerMismatchError(
                f"weight {name!r} is not in the exported {fmt} file {path!r} with the same bits: the export changed "
                "pruned weights (e.g. folded or quantised them); export with optimize=False"
            )
        layers += 1
        zeros += int((want == 0).sum())
    return layers, zeros


# ---- export ------------------------------------------------------------------------------------------------------
def _load(model_or_path: Any) -> tuple[nn.Module, Masks | None]:
    if isinstance(model_or_path, nn.Module):
        return model_or_path, None
    path = os.path.expanduser(os.fspath(model_or_path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"export needs a model or a local checkpoint directory; no directory at {path!r}")
    model = load_model(path)
    masks_file = os.path.join(path, MASKS_NAME)
    masks = Masks.load(masks_file) if os.path.isfile(masks_file) else None
    return model, masks


def _check_args(fmt: str, output: str, tome: int | None, opset: int | None, overwrite: bool) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"export format must be one of {FORMATS}, got {fmt!r}")
    if tome is not None and (isinstance(tome, bool) or not isinstance(tome, int) or tome < 0):
        raise ConfigError(f"tome must be an int >= 0 (tokens merged per block), got {tome!r}")
    if opset is not None and fmt != "onnx":
        raise ConfigError(f"opset applies to --format onnx only, got opset={opset} with format {fmt!r}")
    if opset is not None and not 18 <= opset <= 23:
        raise ConfigError(f"opset must be between 18 and 23 for torch.onnx's dynamo exporter, got {opset}")
    if os.path.isdir(output):
        raise ConfigError(f"output {output!r} is a directory; give a file path such as model.{fmt}")
    if os.path.lexists(output) and not overwrite:
        raise ConfigError(
            f"output {output!r} already exists; pass overwrite=True (CLI: --overwrite) to replace it, or give a new path"
        )


def _write(model, fmt, output, inputs, shapes, opset, optimize) -> tuple[list[str], int | None]:
    names = _flat_outputs(model(**inputs))[0]
    if fmt == "pt2":
        ep = torch.export.export(model, (), dict(inputs), dynamic_shapes=shapes, strict=False)
        torch.export.save(ep, output)
        return names, None
    opset = opset or DEFAULT_OPSET
    program = torch.onnx.export(
        model, (), kwargs=dict(inputs), dynamo=True, input_names=list(inputs), output_names=names,
        dynamic_shapes=shapes, opset_version=opset, optimize=optimize, verbose=False,
    )  # fmt: skip
    program.save(output)
    return names, opset


def _runner(fmt: str, path: str):
    """A callable `inputs -> [np.ndarray]` for the written artifact (loaded once)."""
    if fmt == "pt2":
        module = torch.export.load(path).module()

        @torch.no_grad()
        def run(inputs):
            return [t.float().cpu().numpy() for t in _flat_outputs(module(**inputs))[1]]

        return run
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the unoptimised graph makes ORT log harmless folding notes
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(inputs):
        return [
            np.asarray(o, dtype=np.float32) for o in session.run(None, {k: inputs[k].cpu().numpy() for k in names})
        ]

    return run


def _verify(model, fmt, path, inputs, atol, report: ExportReport) -> None:
    batch = next(iter(inputs.values())).shape[0]
    worst, run = 0.0, _runner(fmt, path)
    for i, b in enumerate((1, batch + 1)):
        x = _resize_batch(inputs, b, seed=i + 1, shorter=5 * i)  # the second check also changes the length
        ref, got = _eager(model, x), run(x)
        if len(ref) != len(got):
            raise LedgerMismatchError(f"the exported {fmt} model returns {len(got)} outputs, eager {len(ref)}")
        for r, o in zip(ref, got):
            if r.shape != o.shape:
                raise LedgerMismatchError(f"exported output shape {o.shape} != eager {r.shape} at batch size {b}")
            worst = max(worst, float(np.abs(r - o).max()) if r.size else 0.0)
        report.checked_batch_sizes.append(b)
    report.max_abs_diff = worst
    if worst > atol:
        raise LedgerMismatchError(
            f"the exported {fmt} model differs from eager by {worst:.3g} > atol={atol:g} ({path}); "
            "raise atol if this is expected (e.g. half precision)"
        )


def export(
    model_or_path: nn.Module | str | os.PathLike,
    output: str | os.PathLike,
    *,
    format: str = "onnx",
    tome: int | None = None,
    opset: int | None = None,
    inputs: dict[str, torch.Tensor] | None = None,
    masks: Masks | None = None,
    verify: bool = True,
    atol: float = 1e-5,
    optimize: bool = False,
    overwrite: bool = False,
) -> ExportReport:
    """Export a model to ONNX (`format="onnx"`) or a `torch.export` program (`format="pt2"`).

    Args:
        model_or_path: a transformers model, or a checkpoint directory (an hf_mpprune checkpoint's masks are read
            from its sidecar and used for the zero check).
        output: the file to write (`model.onnx` / `model.pt2`); its folder is created.
        format: `"onnx"` (`torch.onnx.export(..., dynamo=True)`) or `"pt2"` (`torch.export`).
        tome: apply ToMe with this `r` (ViT/DeiT) for the export; it is removed afterwards.
        opset: ONNX opset (18 by default).
        inputs: example inputs (keyword name -> tensor); by default `example_inputs(model)`.
        masks: the pruning masks (default: the checkpoint's, else every Linear/Conv weight is checked).
        verify: run the artifact at two other batch sizes against eager and check the weights' bits.
        atol: largest allowed absolute difference to eager.
        optimize: run onnxscript's graph optimiser (folds transposes into unnamed constants; the zero check then
            matches weights by value).
        overwrite: replace an existing `output` (refused by default). A file this call wrote is removed again when
            writing or a check fails.

    Returns:
        `ExportReport`. Raises `ConfigError` for bad arguments and `LedgerMismatchError` when a check fails.
    """
    output = os.path.abspath(os.fspath(output))
    _check_args(format, output, tome, opset, overwrite)
    model, found_masks = _load(model_or_path)
    masks = masks if masks is not None else found_masks
    if masks is not None:
        masks.check_model(model)
    was_training = model.training
    model.eval()
    cfg = getattr(model, "config", None)
    use_cache = getattr(cfg, "use_cache", None)
    if use_cache:  # decoder LMs: the full-sequence graph (logits only), no KV cache among the outputs
        cfg.use_cache = False
    added_tome = tome is not None and tome_state(model) is None
    tome_record = apply_tome(model, r=tome) if tome is not None else None
    existed = os.path.lexists(output)
    try:
        inputs = dict(inputs) if inputs is not None else example_inputs(model)
        shapes, axes = _dynamic_shapes(model, inputs)
        os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
        with torch.no_grad():
            names, used_opset = _write(model, format, output, inputs, shapes, opset, optimize)
        report = ExportReport(format, output, list(inputs), names, axes, opset=used_opset, tome=tome_record)
        if verify:
            _verify(model, format, output, inputs, atol, report)
            report.layers_checked, report.zeros_checked = check_exported_zeros(model, output, format, masks)
    except BaseException:
        if not existed and os.path.isfile(output):
            os.remove(output)  # a failed export leaves nothing behind
        raise
    finally:
        if added_tome:
            remove_tome(model)
        if use_cache:
            cfg.use_cache = use_cache
        model.train(was_training)
    logger.info(
        "exported %s to %s (max |diff| %s, %d exact zeros in %d layers checked)",
        format, output, report.max_abs_diff, report.zeros_checked, report.layers_checked,
    )  # fmt: skip
    return report
