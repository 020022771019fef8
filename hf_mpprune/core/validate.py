"""Input validation in one place: config field types by introspection, finite numbers, calibration batch keys.

- `check_field_types(config)`: every dataclass field against its annotation (`int`, `float`, `str | None`,
  `list[str]`, `tuple[float, float]`, nested dataclasses, ...). Called by `PruningConfig.__post_init__`, so every
  method's config is checked the same way; the message names the class, the field, the value and the allowed type.
- `nested_config(cls, value, owner)`: build a nested config from a dict, listing its allowed keys on a typo.
- `check_finite` / `check_weights_finite`: NaN/Inf in weights or calibration statistics, named by layer
  (`DataError`). `MPPruner.prune` checks every parameter before any method runs and the registered weights after
  it; every statistic a method computes (input norms, Hessians, CAST's moments, permutation importances) is built
  from layer inputs, which are checked where they are captured (`calibration.layer_input_rows`).
- `check_batch_keys(model, batch)`: calibration batches must carry the model's main input (`ConfigError`
  naming the keys given and the keys the model's forward expects).
"""

import dataclasses
import inspect
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, DataError


def _describe(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(t))
    if t is type(None):
        return "None"
    if origin in (list, tuple):
        args = typing.get_args(t)
        inner = ", ".join(_describe(a) for a in args if a is not Ellipsis)
        return f"a list of {inner}" if origin is list else f"a pair/tuple ({inner})"
    return getattr(t, "__name__", str(t))


def _matches(value: Any, t: Any) -> bool:
    if t is Any:
        return True
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(t))
    if t is type(None):
        return value is None
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is list:
        (inner,) = typing.get_args(t) or (Any,)
        return isinstance(value, list | tuple) and all(_matches(v, inner) for v in value)
    if origin is tuple:
        args = typing.get_args(t)
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(t, type):
        return isinstance(value, t)
    return True  # annotations we do not model (callables, type vars) are left to the class


def check_field_types(obj: Any, skip: Iterable[str] = ()) -> None:
    """Raise `ConfigError` for the first dataclass field of `obj` whose value does not match its annotation."""
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(obj):
        if f.name in skip or f.name not in hints:
            continue
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise ConfigError(
                f"{cls.__name__}.{f.name}={value!r} ({type(value).__name__}) must be {_describe(hints[f.name])}"
            )


def nested_config(cls: type, value: Any, owner: str) -> Any:
    """`value` as a `cls` instance: an instance passes, a dict is checked for unknown keys (the message lists
    `cls`'s allowed keys), anything else is a `ConfigError`."""
    if isinstance(value, cls):
        return value
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{owner} must be a {cls.__name__} or a dict with keys {allowed}, got {type(value).__name__} {value!r}"
        )
    bad = sorted(str(k) for k in value if k not in allowed)
    if bad:
        raise ConfigError(f"unknown key(s) {bad} in {owner}; {cls.__name__} allows {allowed}")
    return cls(**dict(value))


# ---- numbers ------------------------------------------------------------------------------------------------------
def check_finite(t: torch.Tensor, what: str) -> None:
    """`DataError` naming `what` when `t` holds NaN or Inf (counts given)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return
    nan = int(torch.isnan(t).sum())
    inf = int((~finite).sum()) - nan
    raise DataError(
        f"{what} has {nan} NaN and {inf} Inf value(s) out of {t.numel()}; masks built from them are meaningless"
    )


def check_weights_finite(layers: Iterable[Any], model: nn.Module | None = None) -> None:
    """Every registered layer's weight, then every other parameter of `model`, must be finite (`DataError` naming
    the layer or parameter and how to proceed). A non-finite norm or bias poisons every statistic after it."""
    seen = set()
    for layer in layers:
        seen.add(id(layer.weight))
        try:
            check_finite(layer.weight.detach(), f"weight of layer {layer.name!r}")
        except DataError as e:
            raise DataError(f"{e}: repair or reload the weights, or exclude the layer with ignore=[...]") from None
    for name, p in model.named_parameters() if model is not None else ():
        if id(p) not in seen:
            try:
                check_finite(p.detach(), f"parameter {name!r}")
            except DataError as e:
                raise DataError(f"{e}: repair or reload the model before pruning") from None


def check_batch_inputs(batch: Mapping, index: int) -> None:
    """Floating-point tensors of a calibration batch must be finite (`DataError` naming the key)."""
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            check_finite(v, f"calibration batch {index} input {k!r}")


def forward_inputs(model: nn.Module) -> tuple[list[str], bool]:
    """(named parameters of `model.forward`, whether it takes **kwargs)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_batch_keys(model: nn.Module, batch: Mapping) -> None:
    """`ConfigError` when a calibration batch lacks the model's main input or has keys its forward rejects."""
    keys = sorted(str(k) for k in batch)
    names, var_kw = forward_inputs(model)
    main = getattr(model, "main_input_name", None)
    unknown = [] if var_kw or not names else [k for k in keys if k not in names]
    missing_main = isinstance(main, str) and main in names and main not in batch and "inputs_embeds" not in batch
    if not unknown and not missing_main:
        return
    expected = [n for n in names if n not in ("kwargs", "return_dict", "output_attentions", "output_hidden_states")]
    what = f"lacks its main input {main!r}" if missing_main else f"has key(s) {unknown} its forward does not take"
    raise ConfigError(
        f"calibration batch with keys {keys} does not fit {type(model).__name__}: it {what}; the model expects "
        f"{main!r} (its forward takes {expected[:8]}): build the batches with the model's processor or tokenizer"
    )
