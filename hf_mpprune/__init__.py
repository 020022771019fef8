"""hf_mpprune: Marchenko–Pastur random-matrix pruning for Hugging Face models.

The pipeline, one subpackage per stage (docs/architecture.md): `core` (layers, masks, ledger, configs, registry)
→ `spectral` (MP fit) → `methods` (one file per pruning method) → `training` (frozen-mask Trainer, cycles) →
`deploy` (2:4, ToMe, MACs) → `certify` (data-path audits) → `hub` (checkpoints, cards) → `MPPruner` →
`recipes` / `cli`. Every public name is importable from here.
"""

# ruff: noqa: E402
import logging as _logging
import os as _os


_root = _logging.getLogger("hf_mpprune")
_root.addHandler(_logging.NullHandler())
if _os.environ.get("HF_MPPRUNE_VERBOSITY"):
    _root.setLevel(_os.environ["HF_MPPRUNE_VERBOSITY"].upper())

from . import methods  # fills the registry
from .certify.audit import budget_audit
from .core.attached import attached_ledger, attached_masks
from .core.config import KeepPattern, PruningConfig, SpectralConfig
from .core.constants import __version__
from .core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    HubError,
    InvalidPatternError,
    LedgerMismatchError,
    MPPruneError,
    MPPruneWarning,
    NoPrunableLayersError,
    PatternError,
    SpectralError,
    UnsupportedHardwareError,
)
from .core.layers import LayerSet, PrunableLayer, discover_layers
from .core.ledger import Ledger
from .core.masks import Masks
from .core.registry import get_method, list_methods, register_method
from .data import DatasetSpec
from .deploy.export import ExportReport, export
from .deploy.macs import MACReport, mac_report
from .deploy.semi_structured import ConversionReport, to_semi_structured
from .deploy.tome import apply_tome, remove_tome
from .methods.kn.baselines import SparseGPTKNConfig, WandaKNConfig
from .methods.kn.cast import CASTConfig
from .methods.kn.geometry import KNCalibration
from .methods.kn.legality import LegalityReport, legality_audit
from .methods.kn.permute import attach_permutations
from .methods.magnitude import MagnitudeConfig
from .methods.mp_wanda import MPWandaConfig
from .methods.rmt import RMTConfig
from .methods.seb import SEBConfig
from .methods.ser import HybridConfig, SERConfig
from .methods.sparsegpt import MPSparseGPTConfig, SparseGPTConfig
from .methods.wanda import WandaConfig
from .pruner import MPPruner
from .recipes.oneshot import oneshot
from .recipes.schema import Recipe, load_recipe
from .spectral.fit import MPFit, SpectralReport, analyze, fit_mp
from .training.checkpoints import latest_complete_checkpoint
from .training.cycles import CycleFinetune, TrainStep, make_train_step, run_cycles
from .training.peft import masked_merge, sparse_adapter_config
from .training.trainer import MaskFreezeCallback, MPDistillationArguments, MPDistillationTrainer, kd_loss


__all__ = [
    "CASTConfig",
    "CheckpointError",
    "ConfigError",
    "ConversionReport",
    "CycleFinetune",
    "DataError",
    "DatasetSpec",
    "ExportReport",
    "HubError",
    "HybridConfig",
    "InvalidPatternError",
    "KNCalibration",
    "KeepPattern",
    "LayerSet",
    "Ledger",
    "LedgerMismatchError",
    "LegalityReport",
    "MACReport",
    "MPDistillationArguments",
    "MPDistillationTrainer",
    "MPFit",
    "MPPruneError",
    "MPPruneWarning",
    "MPPruner",
    "MPSparseGPTConfig",
    "MPWandaConfig",
    "MagnitudeConfig",
    "MaskFreezeCallback",
    "Masks",
    "NoPrunableLayersError",
    "PatternError",
    "PrunableLayer",
    "PruningConfig",
    "RMTConfig",
    "Recipe",
    "SEBConfig",
    "SERConfig",
    "SparseGPTConfig",
    "SparseGPTKNConfig",
    "SpectralConfig",
    "SpectralError",
    "SpectralReport",
    "TrainStep",
    "UnsupportedHardwareError",
    "WandaConfig",
    "WandaKNConfig",
    "__version__",
    "analyze",
    "apply_tome",
    "attach_permutations",
    "attached_ledger",
    "attached_masks",
    "budget_audit",
    "discover_layers",
    "export",
    "fit_mp",
    "get_method",
    "kd_loss",
    "latest_complete_checkpoint",
    "legality_audit",
    "list_methods",
    "load_recipe",
    "mac_report",
    "make_train_step",
    "masked_merge",
    "oneshot",
    "register_method",
    "remove_tome",
    "run_cycles",
    "sparse_adapter_config",
    "to_semi_structured",
]
