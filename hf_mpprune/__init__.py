"""hf_mpprune: Marchenko–Pastur random-matrix pruning for Hugging Face models."""

import logging as _logging
import os as _os


_root = _logging.getLogger("hf_mpprune")
_root.addHandler(_logging.NullHandler())
if _os.environ.get("HF_MPPRUNE_VERBOSITY"):
    _root.setLevel(_os.environ["HF_MPPRUNE_VERBOSITY"].upper())

from . import methods  # noqa: E402  (fills the registry)
from .certify.audit import budget_audit  # noqa: E402
from .core.config import KeepPattern, PruningConfig, SpectralConfig  # noqa: E402
from .core.constants import __version__  # noqa: E402
from .core.errors import (  # noqa: E402
    ConfigError,
    LedgerMismatchError,
    MPPruneError,
    MPPruneWarning,
    NoPrunableLayersError,
    PatternError,
    SpectralError,
    UnsupportedHardwareError,
)
from .core.layers import LayerSet, PrunableLayer, discover_layers  # noqa: E402
from .core.ledger import Ledger  # noqa: E402
from .core.masks import Masks  # noqa: E402
from .core.registry import get_method, list_methods, register_method  # noqa: E402
from .data import DatasetSpec  # noqa: E402
from .deploy.macs import MACReport, mac_report  # noqa: E402
from .deploy.semi_structured import ConversionReport, to_semi_structured  # noqa: E402
from .deploy.tome import apply_tome, remove_tome  # noqa: E402
from .methods.hybrid import HybridConfig  # noqa: E402
from .methods.kn.geometry import KNCalibration  # noqa: E402
from .methods.kn.legality import LegalityReport, legality_audit  # noqa: E402
from .methods.kn.permute import attach_permutations  # noqa: E402
from .methods.mp_wanda import MPWandaConfig  # noqa: E402
from .methods.rmt import RMTConfig  # noqa: E402
from .methods.seb import SEBConfig  # noqa: E402
from .methods.ser import SERConfig  # noqa: E402
from .methods.sparsegpt import SparseGPTConfig  # noqa: E402
from .methods.wanda import WandaConfig  # noqa: E402
from .pruner import MPPruner  # noqa: E402
from .recipes.oneshot import oneshot  # noqa: E402
from .recipes.schema import Recipe, load_recipe  # noqa: E402
from .spectral.fit import MPFit, SpectralReport, analyze, fit_mp  # noqa: E402
from .training.cycles import CycleFinetune, TrainStep, make_train_step, run_cycles  # noqa: E402
from .training.trainer import (  # noqa: E402
    MaskFreezeCallback,
    MPDistillationArguments,
    MPDistillationTrainer,
    kd_loss,
)


__all__ = [
    "ConfigError",
    "ConversionReport",
    "CycleFinetune",
    "DatasetSpec",
    "HybridConfig",
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
    "MPWandaConfig",
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
    "SpectralConfig",
    "SpectralError",
    "SpectralReport",
    "TrainStep",
    "UnsupportedHardwareError",
    "WandaConfig",
    "__version__",
    "analyze",
    "apply_tome",
    "attach_permutations",
    "budget_audit",
    "discover_layers",
    "fit_mp",
    "get_method",
    "kd_loss",
    "legality_audit",
    "list_methods",
    "load_recipe",
    "mac_report",
    "make_train_step",
    "oneshot",
    "register_method",
    "remove_tome",
    "run_cycles",
    "to_semi_structured",
]
