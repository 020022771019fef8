"""hf_mpprune: Marchenko–Pastur random-matrix pruning for Hugging Face models.

The pipeline, one subpackage per stage (docs/architecture.md): `core` (layers, masks, ledger, configs, registry)
→ `spectral` (MP fit) → `methods` (one file per pruning method) → `training` (frozen-mask Trainer, cycles) →
`deploy` (2:4, ToMe, MACs) → `certify` (data-path audits) → `hub` (checkpoints, cards) → `MPPruner` →
`recipes` / `cli`. Every public name is importable from here.

`import hf_mpprune` is light: it imports neither torch nor transformers. A public name is looked up in `_EXPORTS`
and its module imported at first use (as transformers' lazy modules do); the method registry imports
`hf_mpprune.methods` at its first lookup. Adding a public name is one line in `_EXPORTS`.
"""

import importlib
import logging as _logging
import os as _os
from typing import Any

from .core.constants import __version__
from .core.plugins import add_provider


_root = _logging.getLogger("hf_mpprune")
_root.addHandler(_logging.NullHandler())
if _os.environ.get("HF_MPPRUNE_VERBOSITY"):
    _root.setLevel(_os.environ["HF_MPPRUNE_VERBOSITY"].upper())

add_provider("hf_mpprune.methods")  # the built-in methods register themselves when the registry is first asked

# public name -> the module that defines it (relative to this package), imported at the name's first use
_EXPORTS: dict[str, str] = {
    "CASTConfig": ".methods.kn.cast",
    "CheckpointError": ".core.errors",
    "ConfigError": ".core.errors",
    "ConversionReport": ".deploy.semi_structured",
    "GraphReplay": ".deploy.speed",
    "CycleFinetune": ".training.cycles",
    "DataError": ".core.errors",
    "DatasetSpec": ".data",
    "ExportReport": ".deploy.export",
    "HubError": ".core.errors",
    "HybridConfig": ".methods.ser",
    "InvalidPatternError": ".core.errors",
    "KNCalibration": ".methods.kn.geometry",
    "KeepPattern": ".core.config",
    "LayerSet": ".core.layers",
    "Ledger": ".core.ledger",
    "LedgerMismatchError": ".core.errors",
    "LegalityReport": ".methods.kn.legality",
    "MACReport": ".deploy.macs",
    "MPDistillationArguments": ".training.trainer",
    "MPDistillationTrainer": ".training.trainer",
    "MPFit": ".spectral.fit",
    "MPPruneError": ".core.errors",
    "MPPruneWarning": ".core.errors",
    "MPPruner": ".pruner",
    "MPSparseGPTConfig": ".methods.sparsegpt",
    "MPWandaConfig": ".methods.mp_wanda",
    "MagnitudeConfig": ".methods.magnitude",
    "MaskFreezeCallback": ".training.trainer",
    "Masks": ".core.masks",
    "NoPrunableLayersError": ".core.errors",
    "PatternError": ".core.errors",
    "PrunableLayer": ".core.layers",
    "PruningConfig": ".core.config",
    "RMTConfig": ".methods.rmt",
    "Recipe": ".recipes.schema",
    "SEBConfig": ".methods.seb",
    "SERConfig": ".methods.ser",
    "SparseGPTConfig": ".methods.sparsegpt",
    "SparseGPTKNConfig": ".methods.kn.baselines",
    "SpectralConfig": ".core.config",
    "SpectralError": ".core.errors",
    "SpectralReport": ".spectral.fit",
    "TrainStep": ".training.cycles",
    "UnsupportedHardwareError": ".core.errors",
    "WandaConfig": ".methods.wanda",
    "WandaKNConfig": ".methods.kn.baselines",
    "analyze": ".spectral.fit",
    "apply_tome": ".deploy.tome",
    "attach_permutations": ".methods.kn.permute",
    "attached_ledger": ".core.attached",
    "attached_masks": ".core.attached",
    "budget_audit": ".certify.audit",
    "discover_layers": ".core.layers",
    "export": ".deploy.export",
    "fit_mp": ".spectral.fit",
    "get_method": ".core.registry",
    "kd_loss": ".training.trainer",
    "latest_complete_checkpoint": ".training.checkpoints",
    "legality_audit": ".methods.kn.legality",
    "list_methods": ".core.registry",
    "load_recipe": ".recipes.schema",
    "mac_report": ".deploy.macs",
    "make_train_step": ".training.cycles",
    "masked_merge": ".training.peft",
    "oneshot": ".recipes.oneshot",
    "register_method": ".core.registry",
    "remove_tome": ".deploy.tome",
    "run_cycles": ".training.cycles",
    "sparse_adapter_config": ".training.peft",
    "to_semi_structured": ".deploy.semi_structured",
}
__all__ = ["__version__", *sorted(_EXPORTS)]  # noqa: PLE0604


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_mpprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
