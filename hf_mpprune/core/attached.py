"""Masks and ledger that travel with a model, in a side table keyed by the model object (no hooks, no attributes).

`MPPruner.prune()` and `MPPruner.from_pretrained` attach their masks and ledger here; the Trainer reads them when
no `masks=` is given, freezes exactly those, and appends its fine-tuning step to the same ledger. The table holds
weak references: a model that is garbage-collected takes its entry with it, and `copy.deepcopy(model)` gives a
model with nothing attached (a dense teacher copied before pruning stays dense).

Wrappers are looked through: `DistributedDataParallel` (`.module`), PEFT models (`.get_base_model()`) and
`SentenceTransformer` (`.transformers_model`).
"""

import weakref
from typing import Any

from torch import nn

from .masks import Masks


_TABLE: "weakref.WeakKeyDictionary[nn.Module, dict[str, Any]]" = weakref.WeakKeyDictionary()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model under DDP / accelerate (`.module`), PEFT (`.get_base_model()`) and sentence-transformers
    (`.transformers_model`) wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif isinstance(getattr(model, "transformers_model", None), nn.Module):
            model = model.transformers_model
    return model


def attach(model: nn.Module, *, masks: Masks | None = None, ledger: Any = None) -> None:
    """Attach `masks` and/or a `Ledger` to `model` (replacing what was attached; None leaves an item as is)."""
    entry = _TABLE.setdefault(unwrap_model(model), {})
    if masks is not None:
        entry["masks"] = masks
    if ledger is not None:
        entry["ledger"] = ledger


def attached_masks(model: nn.Module) -> Masks | None:
    """The masks attached to `model` by `MPPruner` (or `attach`), or None."""
    return _TABLE.get(unwrap_model(model), {}).get("masks")


def attached_ledger(model: nn.Module) -> Any:
    """The `Ledger` attached to `model`, or None."""
    return _TABLE.get(unwrap_model(model), {}).get("ledger")


def detach(model: nn.Module) -> None:
    """Forget the masks and ledger attached to `model` (its weights keep their zeros)."""
    _TABLE.pop(unwrap_model(model), None)
