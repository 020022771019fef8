"""The one plug-in mechanism: a dict from method name to `MethodSpec`, filled by explicit imports
(`hf_mpprune.methods`, imported at the first lookup: `plugins`).

Adding a method = one module in `hf_mpprune/methods/` that calls `@register_method(...)` on its mask
function, plus one import line in `methods/__init__.py`. Every mask function has one signature:
`fn(ctx: PruneContext) -> Masks`; it never touches hooks, the Trainer or files.
"""

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .config import PruningConfig, add_config_class
from .errors import ConfigError
from .layers import LayerSet
from .masks import Masks
from .plugins import load_providers
from .snapshot import SCOPES


@dataclass
class PruneContext:
    """Everything a mask function may read. Optional parts are None when the method does not need them."""

    layers: LayerSet
    config: PruningConfig
    model: nn.Module | None = None
    spectra: Any = None  # a `hf_mpprune.spectral.SpectralReport` when the method needs spectra
    calibration: Any = None  # method-specific statistics (e.g. input norms), or the raw batches
    previous: Masks | None = None  # masks of the previous cycle (cumulative pruning)
    train_step: Callable | None = None  # for methods that train (SER, Hybrid)
    record: dict = field(default_factory=dict)  # the method writes ledger details here


@dataclass(frozen=True)
class CycleHooks:
    """What a method tells the cyclic driver (`hf_mpprune.training.run_cycles`), so the driver never tests names.

    Every hook is optional; `state` is a dict the driver keeps for the whole run.
    - `start(config, selection_eval, model, state)`: once before the first cycle (e.g. validate that a selection
      evaluator is given, measure a reference metric on it).
    - `finetune(config, stage, sparsity, grid, state) -> dict | None`: keyword arguments (epochs, lr, optimizer) of
      the keep fine-tune after a step of `stage`; None = the run's default `CycleFinetune`.
    - `after(config, sparsity, selection_metrics, state) -> (new config or None, ledger record or None)`: after
      each fine-tune (e.g. a switch rule that changes the config for the next cycles).
    """

    start: Callable | None = None
    finetune: Callable | None = None
    after: Callable | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its config class, mask function and what it needs. `needs_spectra` may be a
    function of the config (an option such as an allocation can make a method read the spectra)."""

    name: str
    config_cls: type[PruningConfig]
    fn: Callable[[PruneContext], Masks]
    needs_spectra: bool | Callable[[PruningConfig], bool] = False
    needs_calibration: bool = False
    needs_training: bool = False
    structured: bool = False  # produces k:n masks
    experimental: bool = False
    description: str = ""
    cycle: CycleHooks = field(default_factory=CycleHooks)
    writes: str = "layers"  # what the method may write: "layers" (registered weights) or "model" (anything)

    def uses_spectra(self, config: PruningConfig) -> bool:
        """Whether this method with `config` reads the dense model's spectra (the pruner fits them first)."""
        return bool(self.needs_spectra(config) if callable(self.needs_spectra) else self.needs_spectra)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    config_cls: type[PruningConfig] = PruningConfig,
    *,
    needs_spectra: bool | Callable[[PruningConfig], bool] = False,
    needs_calibration: bool = False,
    needs_training: bool = False,
    structured: bool = False,
    experimental: bool = False,
    cycle: CycleHooks | None = None,
    writes: str = "layers",
):
    """Decorator registering a mask function under `name`. Validates eagerly: a broken method fails at import.

    `writes` says what the method may change, so that `MPPruner.prune` can put it back when anything fails
    (`hf_mpprune.core.snapshot`): `"layers"` = the weights of the registered layers (default), `"model"` = any
    parameter, buffer, hook or attribute of the model (methods that train, or that permute channels)."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise ConfigError(f"method name {name!r} must be lowercase letters, digits, '-' or '_'")
    if name in _REGISTRY:
        raise ConfigError(f"method {name!r} is already registered")
    if writes not in SCOPES:
        raise ConfigError(f"writes={writes!r} of method {name!r} must be one of {SCOPES}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, PruningConfig)):
        raise ConfigError(f"config class of {name!r} must subclass PruningConfig")
    if config_cls is not PruningConfig:
        default = {f.name: f.default for f in dataclasses.fields(config_cls)}["method"]
        if default != name:
            raise ConfigError(f"{config_cls.__name__}.method defaults to {default!r}, expected {name!r}")

    def wrap(fn: Callable[[PruneContext], Any]):
        doc = (fn.__doc__ or "").strip().splitlines()
        add_config_class(name, config_cls)
        _REGISTRY[name] = MethodSpec(
            name, config_cls, fn, needs_spectra, needs_calibration, needs_training, structured, experimental,
            doc[0] if doc else "", cycle or CycleHooks(), writes,
        )  # fmt: skip
        return fn

    return wrap


def get_method(name: str) -> MethodSpec:
    """The registered `MethodSpec` of `name` (its config class, mask function and needs), or a `ConfigError` that
    lists the registered names."""
    load_providers()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown pruning method {name!r}; registered methods: {', '.join(list_methods())}"
        ) from None


def list_methods() -> list[str]:
    """Names of every registered pruning method, sorted (what `PruningConfig(method=...)` accepts)."""
    load_providers()
    return sorted(_REGISTRY)
