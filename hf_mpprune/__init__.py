"""hf_mpprune: Marchenko–Pastur random-matrix pruning for Hugging Face models."""

import logging as _logging
import os as _os


__version__ = "0.1.0"

_root = _logging.getLogger("hf_mpprune")
_root.addHandler(_logging.NullHandler())
if _os.environ.get("HF_MPPRUNE_VERBOSITY"):
    _root.setLevel(_os.environ["HF_MPPRUNE_VERBOSITY"].upper())

from . import methods  # noqa: E402  (fills the registry)
from .config import KeepPattern, PruningConfig, SpectralConfig  # noqa: E402
from .cycles import CycleFinetune, TrainStep, make_train_step, run_cycles  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError,
    LedgerMismatchError,
    MPPruneError,
    MPPruneWarning,
    NoPrunableLayersError,
    PatternError,
    SpectralError,
    UnsupportedHardwareError,
)
from .layers import LayerSet, PrunableLayer, discover_layers  # noqa: E402
from .masks import Masks  # noqa: E402
from .methods.hybrid import HybridConfig  # noqa: E402
from .methods.rmt import RMTConfig  # noqa: E402
from .methods.ser import SERConfig  # noqa: E402
from .pruner import MPPruner  # noqa: E402
from .registry import get_method, list_methods, register_method  # noqa: E402
from .spectral import MPFit, SpectralReport, analyze, fit_mp  # noqa: E402


__all__ = [
    "ConfigError",
    "CycleFinetune",
    "HybridConfig",
    "KeepPattern",
    "LayerSet",
    "LedgerMismatchError",
    "MPFit",
    "MPPruneError",
    "MPPruneWarning",
    "MPPruner",
    "Masks",
    "NoPrunableLayersError",
    "PatternError",
    "PrunableLayer",
    "PruningConfig",
    "RMTConfig",
    "SERConfig",
    "SpectralConfig",
    "SpectralError",
    "SpectralReport",
    "TrainStep",
    "UnsupportedHardwareError",
    "__version__",
    "analyze",
    "discover_layers",
    "fit_mp",
    "get_method",
    "list_methods",
    "make_train_step",
    "register_method",
    "run_cycles",
]
