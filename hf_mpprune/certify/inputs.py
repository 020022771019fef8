"""Input validation of `budget_audit`: models, layers, samples, labels, options and the logits contract."""

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.layers import PrunableLayer, module_kind
from ..core.outputs import logits_of
from .bounds import ESTIMATORS


def audit_logits(model: nn.Module, batch: Any, forward: Callable | None) -> torch.Tensor:
    if forward is not None:
        out = forward(model, batch)
    else:
        out = logits_of(model(**batch) if isinstance(batch, Mapping) else model(batch))
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"the audit needs (N, K >= 2) logits from the model, got {got}; pass forward=lambda model, batch: "
            "<(N, K) logits> (e.g. the last-token logits of a language model)"
        )
    return out


def batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 0
    if isinstance(batch, Mapping):
        sizes = [int(v.shape[0]) for v in batch.values() if isinstance(v, torch.Tensor) and v.dim()]
        return sizes[0] if sizes else 0
    raise ConfigError(f"a batch of samples must be a Tensor or a dict of tensors, got {type(batch).__name__}")


def as_batches(samples: Any, batch_size: int) -> list[Any]:
    """Tensor / dict of tensors (sliced into `batch_size` chunks) or a list of such batches; never empty."""
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    if samples is None:
        raise ConfigError("samples is required: pass model inputs (a Tensor, a dict of tensors or a list of them)")
    if isinstance(samples, (torch.Tensor, Mapping)):
        n = batch_len(samples)
        if n == 0:
            raise ConfigError("samples is empty: the audit set T needs at least one sample")

        def cut(i):
            if isinstance(samples, torch.Tensor):
                return samples[i : i + batch_size]
            return {k: v[i : i + batch_size] if isinstance(v, torch.Tensor) else v for k, v in samples.items()}

        return [cut(i) for i in range(0, n, batch_size)]
    if isinstance(samples, (list, tuple)):
        if not samples or any(batch_len(b) == 0 for b in samples):
            raise ConfigError("samples is empty (or holds an empty batch): the audit set T needs at least one sample")
        return list(samples)
    raise ConfigError(
        f"samples must be a Tensor, a dict of tensors or a list of batches, got {type(samples).__name__}"
    )


def check_models(dense: nn.Module, pruned: nn.Module) -> list[str]:
    """Same architecture (state-dict keys and shapes); returns the keys whose values differ."""
    for m, what in ((dense, "dense_model"), (pruned, "pruned_model")):
        if not isinstance(m, nn.Module):
            raise ConfigError(f"{what} must be a torch.nn.Module, got {type(m).__name__}")
    if dense is pruned:
        raise ConfigError("dense_model and pruned_model are the same object: keep copy.deepcopy(model) before pruning")
    sd, sp = dense.state_dict(), pruned.state_dict()
    only = sorted(set(sd) ^ set(sp))
    shapes = [
        f"{k}: {tuple(sd[k].shape)} vs {tuple(sp[k].shape)}" for k in sd if k in sp and sd[k].shape != sp[k].shape
    ]
    if only or shapes:
        raise ConfigError(
            f"dense and pruned models have different architectures: keys in only one model {only[:5]}, shape "
            f"mismatches {shapes[:5]}. Pass the dense checkpoint the pruned model was made from"
        )
    return [k for k in sd if not torch.equal(sd[k], sp[k].to(sd[k].device))]


def resolve_layers(dense: nn.Module, pruned: nn.Module, layers: Any) -> list[tuple[str, nn.Module, nn.Module, str]]:
    if layers is None:
        raise ConfigError("layers is required: e.g. layers=['classifier'] or a LayerSet from discover_layers(model)")
    layers = [layers] if isinstance(layers, (str, PrunableLayer)) else list(layers)
    names = [la.name if isinstance(la, PrunableLayer) else la for la in layers]
    if not names:
        raise ConfigError("layers is empty: name at least one Linear/Conv2d/Conv1D layer to audit")
    dm, pm = dict(dense.named_modules()), dict(pruned.named_modules())
    bad = [n for n in names if not isinstance(n, str) or n not in dm or module_kind(dm[n]) is None]
    if bad:
        known = [n for n, m in dm.items() if n and module_kind(m) is not None]
        raise ConfigError(f"layer(s) {bad} are not Linear/Conv2d/Conv1D modules of the model; known: {known[:8]}...")
    order = {n: i for i, n in enumerate(dm)}
    return [(n, dm[n], pm[n], module_kind(dm[n])) for n in sorted(dict.fromkeys(names), key=order.get)]


def validate_options(lipschitz, lambdas, gaussian, names, tails) -> dict[str, str]:
    est = dict(lipschitz) if isinstance(lipschitz, Mapping) else dict.fromkeys(names, lipschitz)
    for n in names:
        if est.get(n) not in ESTIMATORS:
            raise ConfigError(f"lipschitz for layer {n!r} is {est.get(n)!r}; allowed: {', '.join(ESTIMATORS)}")
    try:
        bad_l = lambdas is not None and (len(lambdas) != 2 or any(float(v) < 0 for v in lambdas))
        ok_g = gaussian is None or (
            isinstance(gaussian, (tuple, list)) and len(gaussian) == 2 and 0 < float(gaussian[1]) < 1
            and (gaussian[0] == "empirical" or float(gaussian[0]) > 0)
        )  # fmt: skip
    except (TypeError, ValueError):
        bad_l, ok_g = lambdas is not None, gaussian is None
    if bad_l:
        raise ConfigError(f"lambdas must be (lambda1, lambda2) >= 0, got {lambdas!r}")
    if not ok_g:
        raise ConfigError(f"gaussian must be (g > 0 or 'empirical', 0 < delta < 1), got {gaussian!r}")
    if tails is not None and set(tails) - set(names):
        raise ConfigError(f"tails names layers that are not audited: {sorted(set(tails) - set(names))}")
    return est


def resolve_labels(labels, z_dense: np.ndarray) -> np.ndarray:
    if labels is None:
        return z_dense.argmax(1)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).reshape(-1)
    if len(y) != len(z_dense) or y.min() < 0 or y.max() >= z_dense.shape[1]:
        raise ConfigError(
            f"labels must be {len(z_dense)} class ids in [0, {z_dense.shape[1]}), got {len(y)} in "
            f"[{y.min()}, {y.max()}]; they must follow the order of samples"
        )
    return y
