"""Input-channel permutation alignment for k:n (docs/algorithms.md §8.8).

A permutation π of a consumer's input channels is exact when the inputs are routed through it too:
`y = W[:, π] · x[π] = W · x`. Where the consumer's input comes from one producer through elementwise or per-channel
ops only (ViT `mlp.fc1 → mlp.fc2`, BERT `intermediate.dense → output.dense`, ConvNeXt `pwconv1 → pwconv2`, ResNet
`layer.{j-1}.convolution(+BN) → layer.{j}.convolution`), π is FOLDED into the producer's output rows (+ bias, + BN):
plain weights, no hook, survives `save_pretrained`/`from_pretrained` unchanged. Otherwise (only with
`permute_unfoldable=True`) the consumer gets a `_cin_perm` buffer and a forward pre-hook gathering `x[π]`; hooks are
not saved, so after loading call `attach_permutations(model, perms)` with the perms recorded in the ledger.
"""

import re
from dataclasses import dataclass

import torch
from torch import nn

from ...core.errors import ConfigError
from ...core.layers import PrunableLayer
from .select import ria_scores


IMPORTANCE_FORMS = ("act_sq", "weight_sq", "paper", "ria")


@dataclass
class PermuteOptions:
    """Input-channel permutation before a k:n selection (mixed into CAST and the k:n baselines).

    Args:
        permute_align (`bool`, defaults to `False`): §8.8 input-channel permutation; folded into the producer for
            fc1→fc2-type pairs; other layers stay unpermuted unless `permute_unfoldable=True` (runtime gather hook,
            re-attach on load with `hf_mpprune.methods.kn.permute.attach_permutations(model, record["permutations"])`).
        perm_importance (`str`, defaults to `"act_sq"`): channel importance ‖W[:,c]‖²·E[h_c²]; `"weight_sq"`;
            `"paper"` [D]; `"ria"` = RIA's channel reallocation: the column sums of the RIA score, channels dealt
            to the groups in snake order (`bucket_permutation(snake=True)`).
    """

    permute_align: bool = False
    permute_unfoldable: bool = False
    perm_importance: str = "act_sq"

    def _check_permute(self) -> None:
        if self.perm_importance not in IMPORTANCE_FORMS:
            raise ConfigError(f"perm_importance={self.perm_importance!r} must be one of {IMPORTANCE_FORMS}")
        if not self.permute_align and (self.permute_unfoldable or self.perm_importance != "act_sq"):
            raise ConfigError(
                "permute_unfoldable / perm_importance do nothing without permute_align=True (the channel permutation)"
            )


# (consumer regex, producer name template) pairs of known elementwise-connected sibling Linears / convs.
_FOLD_RULES = (
    (r"^(.*\.)?mlp\.fc2$", "{p}mlp.fc1"),
    (r"^(.*\.)?output\.dense$", "{p}intermediate.dense"),
    (r"^(.*\.)?pwconv2$", "{p}pwconv1"),
)
_CONV_RULE = re.compile(r"^(.*\.layer\.)(\d+)\.convolution$")  # HF ResNet ResNetConvLayer chains


@dataclass
class FoldPair:
    producer: str  # module whose output rows are permuted
    norm: str | None = None  # per-channel BatchNorm after the producer (permuted too)


def channel_importance(weight_sq: torch.Tensor, act_sq: torch.Tensor, act_abs: torch.Tensor, w_abs: torch.Tensor,
                       form: str, w: torch.Tensor | None = None, col_sq: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """I_c per input channel: `act_sq` ‖W[:,c]‖²·E[h_c²] (default), `weight_sq` ‖W[:,c]‖², `paper` Σ|W_ic|·E|h_c|,
    `ria` Σ_i of the RIA score of the (out, in) matrix `w` with per-column mean squares `col_sq`, summed per channel.
    """
    if form == "ria":
        return ria_scores(w.abs(), col_sq).reshape(w.shape[0], weight_sq.numel(), -1).sum((0, 2))
    if form == "act_sq":
        return weight_sq * act_sq
    if form == "weight_sq":
        return weight_sq
    if form == "paper":
        return w_abs * act_abs
    raise ConfigError(f"perm_importance={form!r} must be one of {IMPORTANCE_FORMS}")


def bucket_permutation(importance: torch.Tensor, n: int, snake: bool = False) -> torch.Tensor:
    """§8.8 step 2: sort by decreasing I; bucket t holds ranks t·G..t·G+G-1; group g gets the g-th channel of
    every bucket, `π[g·n + t] = order[t·G + g]`; the `C mod n` leftover channels go to the tail in natural order.
    `snake=True` (RIA's reallocation): every other bucket is dealt in reverse, `π[g·n + t] = order[t·G + G-1-g]`
    for odd t, so the group totals even out."""
    c = importance.numel()
    g = c // n
    order = torch.sort(importance.double(), descending=True, stable=True).indices
    buckets = order[: g * n].reshape(n, g)
    if snake:
        buckets[1::2] = buckets[1::2].flip(1)
    body = buckets.T.reshape(-1)  # [g, t] = order[t*G + g]
    tail = order[g * n :].sort().values
    return torch.cat([body, tail])


def in_axis(layer: PrunableLayer) -> int:
    return 0 if layer.kind == "conv1d" else 1


def fold_pairs(model: nn.Module, layers: list[PrunableLayer]) -> dict[str, FoldPair]:
    """Consumers whose permutation can be folded into a producer, detected from the module structure."""
    modules = dict(model.named_modules())
    out = {}
    for layer in layers:
        pair = None
        for rx, tmpl in _FOLD_RULES:
            m = re.match(rx, layer.name)
            if m and tmpl.format(p=m.group(1) or "") in modules:
                pair = FoldPair(tmpl.format(p=m.group(1) or ""))
        m = _CONV_RULE.match(layer.name)
        if m and int(m.group(2)) > 0:
            prev = f"{m.group(1)}{int(m.group(2)) - 1}"
            norm = modules.get(prev + ".normalization")
            if prev + ".convolution" in modules and isinstance(norm, nn.BatchNorm2d | nn.Identity):
                pair = FoldPair(
                    prev + ".convolution", prev + ".normalization" if isinstance(norm, nn.BatchNorm2d) else None
                )
        if pair is None:
            continue
        prod = modules[pair.producer]
        if (
            isinstance(prod, nn.Linear | nn.Conv2d)
            and getattr(prod, "groups", 1) == 1
            and _width(prod) == _fan_in(layer)
        ):
            out[layer.name] = pair
    return out


def _width(mod: nn.Module) -> int:
    return mod.weight.shape[0]


def _fan_in(layer: PrunableLayer) -> int:
    return layer.weight.shape[in_axis(layer)]


@torch.no_grad()
def fold(model: nn.Module, consumer: PrunableLayer, pair: FoldPair, perm: torch.Tensor) -> None:
    """Permute the consumer's input channels and the producer's output channels (+ bias, + BN) in place."""
    w = consumer.weight
    w.copy_(w.index_select(in_axis(consumer), perm.to(w.device)))
    prod = model.get_submodule(pair.producer)
    tensors = [prod.weight, prod.bias]
    if pair.norm is not None:
        bn = model.get_submodule(pair.norm)
        tensors += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    for t in tensors:
        if t is not None:
            t.copy_(t.index_select(0, perm.to(t.device)))


def _gather_hook(module: nn.Module, args):
    x = args[0]
    dim = 1 if isinstance(module, nn.Conv2d) else -1
    return (x.index_select(dim, module._cin_perm), *args[1:])


def attach_permutations(model: nn.Module, perms: dict[str, list[int]]) -> dict[str, object]:
    """(Re-)attach runtime gathers: register `_cin_perm` buffers and forward pre-hooks on the named modules.

    Does NOT permute weights (a loaded checkpoint already holds permuted weights). Returns the hook handles."""
    handles = {}
    for name, perm in perms.items():
        mod = model.get_submodule(name)
        idx = torch.as_tensor(perm, dtype=torch.long, device=mod.weight.device)
        if "_cin_perm" in mod._buffers:
            mod._cin_perm = idx
        else:
            mod.register_buffer("_cin_perm", idx)
        if not getattr(mod, "_cin_perm_hooked", False):
            handles[name] = mod.register_forward_pre_hook(_gather_hook)
            mod._cin_perm_hooked = True
    return handles


@torch.no_grad()
def permute_with_hook(model: nn.Module, consumer: PrunableLayer, perm: torch.Tensor) -> None:
    """Permute the consumer's input channels and gather its inputs at runtime (non-foldable case)."""
    w = consumer.weight
    w.copy_(w.index_select(in_axis(consumer), perm.to(w.device)))
    attach_permutations(model, {consumer.name: perm.tolist()})


def permute_tensor(t: torch.Tensor, layer: PrunableLayer, perm: torch.Tensor, *, producer: bool) -> torch.Tensor:
    """Apply the same permutation to a weight-shaped tensor (dense weights, masks): producer rows or consumer
    input channels."""
    axis = (1 if layer.kind == "conv1d" else 0) if producer else in_axis(layer)
    return t.index_select(axis, perm.to(t.device))
