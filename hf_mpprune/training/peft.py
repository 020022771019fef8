"""PEFT adapters on a pruned model without losing its sparsity (optional extra `hf-mpprune[peft]`).

Two ways, documented in docs/training.md:

* `masked_merge(peft_model)`: LoRA / DoRA (any PEFT adapter with `merge_and_unload`). A LoRA update `B·A` is
  dense, so a plain merge writes nonzeros into pruned entries (8,093 of 32,768 in the issue's run). We merge, put
  the exact +0.0 zeros back and record a **lossy** step in the ledger with what was kept of the update: the
  energy retention `‖M⊙ΔW‖² / ‖ΔW‖²` over the masked layers and, given `eval_inputs`, the output retention
  `1 − ‖f_masked − f_merged‖ / ‖f_merged − f_base‖` (1 = the adapter's whole effect on the outputs survived).
* `sparse_adapter_config(model)`: a PEFT SHiRA config whose trainable entries are drawn **only from kept
  entries**, so the merged update is zero on every pruned entry by construction (retention 1.0, nothing lost).
  `masked_merge` works for it too and records retention 1.0.
"""

import logging
import time
from typing import Any

import torch
from torch import nn

from ..core.attached import attach, attached_masks, unwrap_model
from ..core.errors import ConfigError
from ..core.masks import Masks, layer_weight
from ..core.outputs import logits_of
from .record import model_ledger


logger = logging.getLogger(__name__)


def _masks_of(model: nn.Module, masks: Masks | None) -> Masks:
    masks = masks if masks is not None else attached_masks(model)
    if masks is None:
        raise ConfigError(
            f"{type(model).__name__} carries no masks: pass masks=..., or prune with MPPruner / load with "
            "MPPruner.from_pretrained before adding the adapter"
        )
    return masks


def _adapter_summary(peft_model: nn.Module) -> dict[str, Any]:
    configs = getattr(peft_model, "peft_config", {}) or {}
    out = {}
    for name, cfg in configs.items():
        d = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
        keep = ("peft_type", "r", "lora_alpha", "lora_dropout", "use_dora", "target_modules", "modules_to_save")
        out[name] = {k: (sorted(v) if isinstance(v, set) else str(v) if k == "peft_type" else v)
                     for k, v in d.items() if k in keep}  # fmt: skip
    return out


@torch.no_grad()
def masked_merge(peft_model: nn.Module, masks: Masks | None = None, *, eval_inputs: dict | None = None) -> nn.Module:
    """`merge_and_unload()` a PEFT model, re-apply the pruning masks (exact +0.0) and record the step.

    Args:
        peft_model: a `peft.PeftModel` (LoRA, DoRA, SHiRA, ...) built on a pruned model.
        masks ([`Masks`], *optional*): default: the masks attached to the base model by `MPPruner`.
        eval_inputs (`dict`, *optional*): one batch of model inputs to measure the output retention on.

    Returns the merged base model (the same object `get_peft_model` wrapped), with masks and ledger attached.
    """
    base = unwrap_model(peft_model)
    masks = _masks_of(base, masks)
    masks.check_model(base)
    t0 = time.perf_counter()
    before = {n: layer_weight(base, n).detach().clone() for n in masks}
    f_base = f_merged = None
    if eval_inputs is not None:
        was_training = peft_model.training
        peft_model.eval()
        f_merged = logits_of(peft_model(**eval_inputs)).float()
        with peft_model.disable_adapter():
            f_base = logits_of(peft_model(**eval_inputs)).float()
        peft_model.train(was_training)
    adapters = _adapter_summary(peft_model)
    merged = peft_model.merge_and_unload()
    kept_energy = total_energy = 0.0
    dropped, layers = 0, {}
    for name, m in masks.items():
        w = layer_weight(merged, name)
        delta = (w.detach().float() - before[name].float().to(w.device)).reshape(-1)
        keep = m.to(w.device).reshape(-1)
        e_all, e_kept = float(delta.pow(2).sum()), float(delta[keep].pow(2).sum())
        n_dropped = int((w.reshape(-1)[~keep] != 0).sum())
        kept_energy, total_energy, dropped = kept_energy + e_kept, total_energy + e_all, dropped + n_dropped
        layers[name] = {"retention": 1.0 if e_all == 0 else e_kept / e_all, "re_zeroed": n_dropped}
    masks.apply_(merged)
    record: dict[str, Any] = {
        "method": "adapter-merge",
        "kind": "adapter-merge",
        "status": "done",
        "lossy": dropped > 0,
        "adapters": adapters,
        "update_retention": 1.0 if total_energy == 0 else kept_energy / total_energy,
        "re_zeroed": dropped,
        "layer_retention": layers,
        "mask_sha256": masks.sha256(),
        "achieved_sparsity": masks.sparsity(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if eval_inputs is not None:
        was_training = merged.training
        merged.eval()
        f_masked = logits_of(merged(**eval_inputs)).float()
        merged.train(was_training)
        effect = float((f_merged - f_base).norm())
        record["output_retention"] = 1.0 if effect == 0 else 1.0 - float((f_masked - f_merged).norm()) / effect
    ledger = model_ledger(merged)
    ledger.add_step(**record)
    attach(merged, masks=masks, ledger=ledger)
    logger.log(
        logging.WARNING if dropped else logging.INFO,
        "adapter merge: %d pruned entries re-zeroed, %.4f of the update energy kept (masks re-applied)",
        dropped,
        record["update_retention"],
    )
    return merged


def sparse_adapter_config(model: nn.Module, masks: Masks | None = None, *, r: int = 8, seed: int = 0,
                          target_modules: list[str] | None = None, **kwargs: Any):  # fmt: skip
    """A `peft.ShiraConfig` whose sparse trainable entries lie only on kept entries of the pruned layers.

    Each targeted layer trains `r·(in + out)` entries (LoRA-sized), drawn with `seed` from its kept entries.
    `target_modules` defaults to the pruned (masked) Linear layers. Extra keyword arguments go to `ShiraConfig`.
    """
    from peft import ShiraConfig

    base = unwrap_model(model)
    masks = _masks_of(base, masks)
    by_weight = {id(layer_weight(base, n)): m for n, m in masks.items()}
    targets = target_modules or [n for n in masks.names if isinstance(base.get_submodule(n), nn.Linear)]

    def mask_fn(base_layer: nn.Module, r: int, **_: Any) -> torch.Tensor:
        w = base_layer.weight
        kept = by_weight.get(id(w))
        kept = (w != 0) if kept is None else kept.to(w.device)
        want = r * (w.shape[0] + w.shape[1])
        idx = kept.reshape(-1).nonzero().squeeze(1)
        if idx.numel() < want:
            raise ConfigError(
                f"SHiRA rank r={r} needs {want} trainable entries but the layer {tuple(w.shape)} keeps only "
                f"{idx.numel()}; pick a smaller r"
            )
        gen = torch.Generator().manual_seed(seed)
        pick = idx[torch.randperm(idx.numel(), generator=gen)[:want].to(idx.device)]
        out = torch.zeros(w.numel(), dtype=w.dtype, device=w.device)
        out[pick] = 1
        return out.reshape(w.shape)

    config = ShiraConfig(r=r, target_modules=targets, **kwargs)
    config.mask_fn = mask_fn
    return config
