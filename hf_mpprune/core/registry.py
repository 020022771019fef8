"""The one plug-in mechanism: a dict from method name to `MethodSpec`, filled by explicit imports.

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
class MethodSpec:
    name: str
    config_cls: type[PruningConfig]
    fn: Callable[[PruneContext], Masks]
    needs_spectra: bool = False
    needs_calibration: bool = False
    needs_training: bool = False
    structured: bool = False  # produces k:n masks
    experimental: bool = False
    description: str = ""


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    config_cls: type[PruningConfig] = PruningConfig,
    *,
    needs_spectra: bool = False,
    needs_calibration: bool = False,
    needs_training: bool = False,
    structured: bool = False,
    experimental: bool = False,
):
    """Decorator registering a mask function under `name`. Validates eagerly: a broken method fails at import."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise ConfigError(f"method name {name!r} must be lowercase letters, digits, '-' or '_'")
    if name in _REGISTRY:
        raise ConfigError(f"method {name!r} is already registered")
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
            doc[0] if doc else "",
        )  # fmt: skip
        return fn

    return wrap


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown pruning method {name!r}; registered methods: {', '.join(list_methods())}"
        ) from None


def list_methods() -> list[str]:
    return sorted(_REGISTRY)
