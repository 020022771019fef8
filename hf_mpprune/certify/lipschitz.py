"""L_s estimators that need the model (docs/algorithms.md §9.4): the ReLU-MLP tail product (`mlp_global`), the logits-
layer check (`head`) and the local Jacobian row-sum (`jacobian_local`). `const` and `secant` need no model."""

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.errors import ConfigError


# Coordinatewise maps that are 1-Lipschitz in every coordinate, hence in ℓ∞ (eval mode: Dropout is the identity).
_ONE_LIPSCHITZ = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Tanh, nn.Identity, nn.Dropout, nn.Flatten, nn.LeakyReLU)
_CONTAINERS = (nn.Sequential, nn.ModuleList)


def find_mlp_tail(model: nn.Module, name: str) -> list[nn.Module]:
    """Modules applied after layer `name`, read off the `nn.Sequential`/`nn.ModuleList` containers around it.

    Walks up from the layer through container parents, collecting the later siblings at each level, and stops at
    the first non-container ancestor. The caller must still check that the tail reproduces the logits
    (`verify_tail`): a container's children are only assumed to run in order.
    """
    modules = dict(model.named_modules())
    tail: list[nn.Module] = []
    path = name
    while path:
        parent_name, _, child = path.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        if not isinstance(parent, _CONTAINERS):
            break
        names = [n for n, _ in parent.named_children()]
        tail.extend(m for _, m in list(parent.named_children())[names.index(child) + 1 :])
        path = parent_name
    return tail


def flatten_tail(tail: Sequence[nn.Module], after: str) -> list[nn.Module]:
    """Expand nested `nn.Sequential`s and check every module is a Linear or a coordinatewise 1-Lipschitz map."""
    flat: list[nn.Module] = []
    for m in tail:
        if isinstance(m, nn.Sequential):
            flat.extend(flatten_tail(list(m), after))
            continue
        ok = isinstance(m, nn.Linear) or isinstance(m, _ONE_LIPSCHITZ)
        if isinstance(m, nn.LeakyReLU) and abs(m.negative_slope) > 1:
            ok = False
        if not ok:
            raise ConfigError(
                f"lipschitz='mlp_global' needs the network after layer {after!r} to be Linear layers and "
                f"coordinatewise 1-Lipschitz activations (ReLU, ReLU6, LeakyReLU, Hardtanh, Tanh, Dropout, "
                f"Flatten); found {type(m).__name__}. Use lipschitz='jacobian_local' (an estimate), 'head' if the "
                "layer produces the logits, or pass tails={layer: [modules...]} for an explicit ReLU tail"
            )
        flat.append(m)
    return flat


def mlp_tail_constant(tail: Sequence[nn.Module]) -> float:
    """L = Π_j ‖W_j‖_∞ (largest absolute row sum) over the Linear modules of a validated tail, in float64."""
    const = 1.0
    for m in tail:
        if isinstance(m, nn.Linear):
            const *= float(m.weight.detach().double().abs().sum(dim=1).max())
    return const


@torch.no_grad()
def verify_tail(tail: Sequence[nn.Module], layer_out: torch.Tensor, logits: torch.Tensor, name: str) -> None:
    """Refuse unless applying `tail` to the layer's output reproduces the model's logits on the audit batch."""
    x = layer_out
    for m in tail:
        x = m(x)
    scale = 1.0 + float(logits.abs().max())
    if x.shape != logits.shape or not torch.allclose(x.to(logits.dtype), logits, rtol=1e-4, atol=1e-5 * scale):
        raise ConfigError(
            f"lipschitz='mlp_global': the modules after layer {name!r} ({[type(m).__name__ for m in tail]}) do "
            "not reproduce the model's logits, so the network is not 'layer -> ReLU MLP tail' (e.g. a "
            "transformer, a residual block or activations called functionally). Use 'jacobian_local' or 'const' "
            "(estimates), 'head' for the logits layer, or pass tails={layer: [modules...]}"
        )


def verify_head(layer_out: torch.Tensor, logits: torch.Tensor, name: str) -> None:
    """`head` is exact only if the audited layer's output IS the logits tensor (so z_A - z_S = Rψ₁)."""
    if layer_out.shape != logits.shape or not torch.equal(layer_out.to(logits.dtype), logits):
        raise ConfigError(
            f"lipschitz='head' needs layer {name!r} to produce the logits, but its output "
            f"{tuple(layer_out.shape)} differs from the logits {tuple(logits.shape)}. Audit the classifier "
            "layer (e.g. 'classifier'), or use lipschitz='jacobian_local'/'const' (estimates) for inner layers"
        )


def jacobian_local(
    model: nn.Module, module: nn.Module, batch, forward: Callable[[nn.Module, object], torch.Tensor]
) -> np.ndarray:
    """max_k Σ_j |∂z_k/∂u_j| at u = the layer's current output, per sample (K backward passes).

    Samples of a batch must not interact (eval mode, no batch statistics); first-order estimate only.
    """
    state: dict[str, torch.Tensor] = {}

    def hook(mod, inputs, out):
        state["u"] = out.detach().requires_grad_(True)
        return state["u"]

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            z = forward(model, batch)
            u = state["u"]
            best = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
            for k in range(z.shape[1]):
                (grad,) = torch.autograd.grad(z[:, k].sum(), u, retain_graph=k < z.shape[1] - 1, allow_unused=True)
                if grad is not None:
                    best = torch.maximum(best, grad.detach().double().abs().flatten(1).sum(1))
    finally:
        handle.remove()
    return best.cpu().numpy()
