"""Calibration data: normalise what the user passes into batches of model inputs (shuffled with a seed, indices
hashed for the ledger), and capture each registered layer's inputs through forward hooks that are always removed.

Accepted inputs: a `datasets.Dataset` (or any sized, indexable collection of input dicts; one with a `collator`
attribute, such as `hf_mpprune.data.Prepared`, is batched with it), a DataLoader or any
iterable of input dicts (taken in order, it cannot be shuffled here), or one dict of batched tensors.

Padding never enters a statistic: while a batch with a 2-D `attention_mask` (B, T) runs, every layer input laid out
as (B, T, ...) gives only the rows of its unmasked positions (`layer_input_rows`), so XᵀX, ‖x_j‖ and the captured
rows are those of real tokens whatever the padding of the batch.
"""

import contextlib
import contextvars
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import default_data_collator

from .errors import ConfigError, MPPruneError
from .layers import LayerSet, PrunableLayer
from .validate import check_batch_inputs, check_batch_keys, check_finite, forward_inputs


logger = logging.getLogger(__name__)


@dataclass
class CalibrationBatches:
    """Calibration batches as sampled by `as_batches`, with what the ledger records about them. Passed to
    `prune(calibration=...)` directly, they are used as they are (`prebuilt`): the config's calibration_samples /
    calibration_batch_size / seed are not applied, and the ledger step records these batches instead."""

    batches: list[dict[str, torch.Tensor]]
    num_samples: int
    source: str  # "indexed" (sampled with the seed) or "stream" (taken in order)
    indices_sha256: str  # hash of the chosen row indices (indexed) or of the first batch's bytes (stream)
    seed: int
    prebuilt: bool = False  # given to the method as a CalibrationBatches (not sampled by it)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.batches)

    @property
    def batch_size(self) -> int:
        """Rows of the largest batch."""
        return max((_rows(b) for b in self.batches), default=0)

    def record(self) -> dict:
        out = {
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "source": self.source,
            "sha256": self.indices_sha256,
            "seed": self.seed,
        }
        return out | ({"prebuilt": True} if self.prebuilt else {})


def _rows(batch: Mapping) -> int:
    first = next(iter(batch.values()), None)
    return first.shape[0] if isinstance(first, torch.Tensor) and first.dim() > 0 else 1


def _collate(rows: list[Mapping]) -> dict[str, torch.Tensor]:

    return default_data_collator([dict(r) for r in rows])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def as_batches(
    calibration, *, num_samples: int = 128, batch_size: int = 16, seed: int = 0, drop_columns=("label", "labels")
) -> CalibrationBatches:
    """Turn `calibration` into at most `num_samples` samples in batches of `batch_size` (see module docstring)."""
    if calibration is None:
        raise ConfigError("calibration data is required for this method: pass calibration=<dataset or batches>")
    if num_samples < 1 or batch_size < 1:
        raise ConfigError(f"num_samples={num_samples} and batch_size={batch_size} must be >= 1")
    if isinstance(calibration, CalibrationBatches):
        return dataclasses.replace(calibration, prebuilt=True)  # used as given: the ledger says so
    if isinstance(calibration, Mapping):  # one dict of batched tensors
        calibration = [calibration]
    if hasattr(calibration, "__len__") and hasattr(calibration, "__getitem__") and not isinstance(calibration, list):
        n = len(calibration)
        if n == 0:
            raise ConfigError("calibration dataset is empty")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[: min(num_samples, n)].tolist()
        rows = [{k: v for k, v in dict(calibration[i]).items() if k not in drop_columns} for i in idx]
        collate = getattr(calibration, "collator", None) or _collate  # prepared data pads text with its own
        batches = [collate(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
        for i, b in enumerate(batches):
            check_batch_inputs(b, i)
        return CalibrationBatches(batches, len(rows), "indexed", _sha(str(sorted(idx)).encode()), seed)
    if not isinstance(calibration, Iterable):
        raise ConfigError(
            f"calibration must be a Dataset, DataLoader or iterable of input dicts, got {type(calibration).__name__}"
        )
    batches, count = [], 0
    for b in calibration:
        if not isinstance(b, Mapping):
            raise ConfigError(f"calibration batches must be dicts of model inputs, got {type(b).__name__}")
        b = {k: v for k, v in b.items() if k not in drop_columns}
        check_batch_inputs(b, len(batches))
        batches.append(b)
        count += _rows(b)
        if count >= num_samples:
            break
    if not batches:
        raise ConfigError("calibration data is empty")
    first_bytes = b"".join(
        v.detach().cpu().contiguous().numpy().tobytes() for v in batches[0].values() if isinstance(v, torch.Tensor)
    )
    return CalibrationBatches(batches, count, "stream", _sha(first_bytes), seed)


_TOKEN_MASK: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("token_mask", default=None)


def token_mask(batch: Mapping) -> torch.Tensor | None:
    """The real-token positions of a batch: its 2-D `attention_mask` as bool (B, T), or None (no mask: all real)."""
    mask = batch.get("attention_mask")
    return mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


@contextlib.contextmanager
def real_tokens(mask: torch.Tensor | None):
    """Inside the block, `layer_input_rows` keeps only the rows of the positions where `mask` (B, T) is True."""
    token = _TOKEN_MASK.set(None if mask is None or bool(mask.all()) else mask)
    try:
        yield
    finally:
        _TOKEN_MASK.reset(token)


def layer_input_rows(layer: PrunableLayer, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as rows of its matrix view's input space: (rows, N). Inside `real_tokens(mask)`, an input
    laid out as (B, T, ..., N) with (B, T) = mask.shape gives the rows of the real (unmasked) positions only.
    Every calibration statistic is built from these rows, so this is where they are checked: NaN / Inf is a
    `DataError` naming the layer."""
    check_finite(x, f"calibration statistics (inputs) of layer {layer.name!r}")
    mod = layer.module
    if layer.kind == "conv2d":
        padding = mod.padding
        if isinstance(padding, str):  # "same" / "valid"
            x = F.pad(x, mod._reversed_padding_repeated_twice) if padding == "same" else x
            padding = 0
        cols = F.unfold(
            x, mod.kernel_size, dilation=mod.dilation, padding=padding, stride=mod.stride
        )  # (B, C*kh*kw, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    mask = _TOKEN_MASK.get()
    if mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        x = x[mask.to(x.device)]
    return x.reshape(-1, x.shape[-1])


@contextlib.contextmanager
def capture(model: nn.Module, layers: LayerSet, on_input: Callable[[PrunableLayer, torch.Tensor], None]):
    """Call `on_input(layer, rows)` with each registered layer's input rows during forwards inside the block.
    Hooks are removed on exit, also when an exception is raised."""
    handles = []
    try:
        for layer in layers:
            hook = lambda mod, args, layer=layer: on_input(layer, layer_input_rows(layer, args[0].detach()))  # noqa: E731
            handles.append(layer.module.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def model_inputs(model: nn.Module, batch: dict, device) -> dict:
    """A calibration batch as keyword arguments of `model`: tensors on `device`, and `use_cache=False` when the
    forward takes `use_cache` and the batch does not set it (no KV cache is built or handed to the blocks)."""
    out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if "use_cache" not in out and "use_cache" in forward_inputs(model)[0]:
        out["use_cache"] = False
    return out


@torch.no_grad()
def run_batches(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> None:
    """Forward every batch (eval mode, no grad) on the model's device. A batch that does not fit the model raises a
    clear `ConfigError` naming the model and the batch keys."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            check_batch_keys(model, b)
            try:
                with real_tokens(token_mask(b)):
                    model(**model_inputs(model, b, device))
            except MPPruneError:  # raised by our own hooks (e.g. non-finite layer inputs): already clear
                raise
            except (TypeError, RuntimeError, ValueError, AttributeError, KeyError, IndexError) as e:
                shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in b.items()}
                raise ConfigError(f"calibration batch {shapes} does not fit {type(model).__name__}: {e}") from e
    finally:
        model.train(was_training)


def input_sq_norms(model: nn.Module, layers: LayerSet, batches: CalibrationBatches) -> dict[str, torch.Tensor]:
    """Sum over calibration rows (real tokens only) of x_j² for every input column j of every layer (Wanda's
    ‖x_j‖₂²), float64."""
    acc: dict[str, torch.Tensor] = {}

    def add(layer: PrunableLayer, rows: torch.Tensor) -> None:
        s = rows.double().square().sum(0).cpu()
        acc[layer.name] = acc[layer.name] + s if layer.name in acc else s

    with capture(model, layers, add):
        run_batches(model, batches)
    missing = [la.name for la in layers if la.name not in acc]
    if missing:
        raise ConfigError(f"calibration forwards never reached layer(s) {missing[:10]}")
    return acc
