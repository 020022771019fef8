"""Sequential layer-by-layer calibration (SparseGPT-style): each registered layer, in forward order, sees the
inputs produced by the already pruned / re-fitted earlier layers.

Cost: the calibration batches run once up to the first transformer block, then one block at a time on cached block
inputs (`hf_mpprune.core.blockwise`; one partial block forward per group of layers sharing an input), so O(L) layer
forwards; models that cannot be chained fall back to one partial forward per layer. Memory: one (N, N) float64
Hessian at a time plus the cached block inputs. If anything fails midway, `MPPruner.prune` restores what the method
wrote (`hf_mpprune.core.snapshot`), so the model is unmodified.
"""

import logging
from collections.abc import Callable, Iterable

import torch
from huggingface_hub.utils import tqdm
from torch import nn

from .blockwise import Timings, block_sequential
from .layers import LayerSet, PrunableLayer
from .refit import BlockTune
from .validate import check_finite


logger = logging.getLogger(__name__)


@torch.no_grad()
def sequential_hessians(
    model: nn.Module, layers: Iterable[PrunableLayer], batches: Iterable[dict],
    on_layer: Callable[[PrunableLayer, torch.Tensor], None], *, timings=None, hessian_dtype=torch.float64,
    tune: BlockTune | None = None, dense_weights: dict[str, torch.Tensor] | None = None,
):  # fmt: skip
    """For each layer in the given order: H = 2·XᵀX of its inputs (float64) on the CURRENT model, then
    `on_layer(layer, H)`, which may rewrite the layer; later layers see the rewritten upstream. Runs on cached
    transformer-block inputs (`blockwise.block_sequential`; plain partial forwards where a model cannot be chained).
    Returns the phase timings. `hessian_dtype`: precision of the per-batch XᵀX products (accumulated in float64).
    `tune` / `dense_weights`: block output reconstruction, aimed at the model with `dense_weights` swapped in."""
    return block_sequential(model, list(layers), batches, on_layer, timings=timings, hessian_dtype=hessian_dtype,
                            tune=tune, dense_weights=dense_weights)  # fmt: skip


def sequential_apply(
    model: nn.Module,
    layers: LayerSet,
    batches: list[dict],
    fn: Callable[[PrunableLayer, torch.Tensor], torch.Tensor],
    *,
    desc: str = "sequential",
    hessian_dtype: torch.dtype = torch.float64,
    timings: "Timings | None" = None,
    granularity: str = "layer",
    dense_target: bool = False,
    tune: BlockTune | None = None,
) -> "Timings":
    """For each layer in forward order: H from the current model, `new = fn(layer, H)` ((out, in) matrix), write
    it into the layer's weight. Nothing is restored here if a step raises: `MPPruner.prune` puts back every weight a
    method may write (`hf_mpprune.core.snapshot`), whichever helper it used.

    Runs on cached transformer-block inputs (`hf_mpprune.core.blockwise`: same result, O(L) instead of O(L²) layer
    forwards; layers fed the same tensor share one Hessian) and falls back to one partial forward per layer for
    models it cannot chain. Returns the phase timings. `dense_target=True`: block layers get `fn(layer, H, target)`
    with a `refit.DenseTarget` (`blockwise.block_sequential`); `tune`: block output reconstruction after each
    block (`blocktune`)."""
    layer_list = list(layers)
    bar = tqdm(total=len(layer_list), desc=desc, disable=len(layer_list) < 8)

    def step(layer: PrunableLayer, h: torch.Tensor, target=None) -> None:
        new = fn(layer, h) if target is None else fn(layer, h, target)
        check_finite(new, f"weights computed by {desc} for layer {layer.name!r}")  # before later layers see them
        with torch.no_grad():
            layer.weight.copy_(layer.from_matrix(new.to(layer.weight.dtype)))
        bar.update(1)

    try:
        return block_sequential(
            model, layer_list, batches, step, hessian_dtype=hessian_dtype, timings=timings, granularity=granularity,
            dense_target=dense_target, tune=tune,
        )  # fmt: skip
    finally:
        bar.close()


__all__ = ["sequential_apply", "sequential_hessians"]
