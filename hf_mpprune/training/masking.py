"""Which masks a training run freezes, and the callback that freezes them (docs/algorithms.md §1.4).

`resolve_masks` decides, in this order: the `masks=` given to the trainer; the masks attached to the model by
`MPPruner` (`prune()` or `from_pretrained`); masks derived from the exact zeros of the registered layers (logged
at WARNING with the count). A model with none of these is dense: training it is `transformers.Trainer`'s job, so
it raises `ConfigError` unless the caller opts in with `masks=False`.
"""

import logging

import torch
from torch import nn
from transformers import TrainerCallback

from ..core.attached import attached_masks, unwrap_model
from ..core.errors import ConfigError, NoPrunableLayersError
from ..core.layers import discover_layers
from ..core.masks import Masks, layer_weight


logger = logging.getLogger(__name__)


def realised_sparsity(model: nn.Module, masks: Masks) -> float:
    """Fraction of exactly-zero entries over the masked weights (what §1.4 step 2 keeps from drifting)."""
    model = unwrap_model(model)
    zeros = sum(int((layer_weight(model, n) == 0).sum()) for n in masks)
    return zeros / max(1, masks.numel)


@torch.no_grad()
def masks_from_zeros(model: nn.Module) -> Masks | None:
    """Masks = nonzero pattern of every registered layer that holds at least one exact zero (None if none does)."""
    try:
        layers = discover_layers(unwrap_model(model))
    except NoPrunableLayersError:
        return None
    names = [la.name for la in layers if bool((la.weight == 0).any())]
    return Masks.from_model(unwrap_model(model), names) if names else None


def resolve_masks(model: nn.Module, masks: "Masks | bool | None") -> tuple[Masks | None, str]:
    """`(masks, source)` for a training run; `source` is "given", "attached", "zeros" or "none".

    `masks=False` trains without masks (explicit opt-in to dense training); `masks=None` looks for attached
    masks, then zeros. When nothing is found the result is `(None, "none")`: the trainer raises at `train()`
    unless a resumed checkpoint brings masks.
    """
    if masks is False:
        return None, "none"
    if isinstance(masks, Masks):
        masks.check_model(unwrap_model(model))  # PatternError naming a missing layer / wrong shape, before any work
        return masks, "given"
    if masks is not None and masks is not True:
        raise ConfigError(f"masks must be a Masks object, None (use the model's) or False (none), got {masks!r}")
    found = attached_masks(model)
    if found is not None:
        found.check_model(unwrap_model(model))
        logger.info("freezing the %d masks attached to the model (sparsity %.4f)", len(found), found.sparsity())
        return found, "attached"
    derived = masks_from_zeros(model)
    if derived is not None:
        logger.warning(
            "no masks given or attached: freezing the %d exact zeros found in %d registered layers as masks; pass "
            "masks= (or load with MPPruner.from_pretrained) to be explicit, or masks=False to train them",
            derived.num_pruned,
            len(derived),
        )
        return derived, "zeros"
    return None, "none"


def dense_error(model: nn.Module) -> ConfigError:
    return ConfigError(
        f"{type(model).__name__} has no masks (none given, none attached by MPPruner, no exact zeros in its "
        "registered layers): it is dense, and training a dense model is transformers.Trainer's job. Prune it "
        "first (MPPruner(model, config).prune()), pass masks=..., load it with MPPruner.from_pretrained, or pass "
        "masks=False to train without masks on purpose"
    )


class MaskFreezeCallback(TrainerCallback):
    """Keep `masks` frozen through any optimizer (docs/algorithms.md §1.4, both steps).

    `on_train_begin` applies the masks (after a checkpoint was loaded) and registers gradient hooks, so clipping,
    gradient accumulation and the DDP all-reduce only ever see masked gradients; `on_optimizer_step` re-applies
    them with exact +0.0 (weight decay and momentum cannot resurrect a pruned entry); `on_train_end` removes the
    hooks.
    """

    def __init__(self, masks: Masks):
        self.masks = masks
        self._device_masks: Masks | None = None
        self._handles: list = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model = unwrap_model(model)  # mask names are those of the base model (under DDP / PEFT wrappers)
        self._remove_hooks()
        self.masks.check_model(model)
        device = layer_weight(model, self.masks.names[0]).device if len(self.masks) else torch.device("cpu")
        self._device_masks = self.masks.to(device)
        drift = sum(int((layer_weight(model, n)[~m] != 0).sum()) for n, m in self._device_masks.items())
        if drift:
            logger.warning("%d pruned entries were nonzero at train start (re-zeroed)", drift)
        self._device_masks.apply_(model)
        self._handles = self._device_masks.freeze_(model)  # gradient masking; no optimizer: re-mask below

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self._device_masks.apply_(unwrap_model(model))

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
