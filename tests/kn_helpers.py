"""Test helper: exact k:n magnitude masks (top-k |w| of every n consecutive inputs) for a model's Linears."""

import torch
from torch import nn

from hf_mpprune import Masks
from hf_mpprune.core.config import KeepPattern


def kn_mask(weight: torch.Tensor, keep: int = 2, group: int = 4) -> torch.Tensor:
    g = weight.detach().reshape(weight.shape[0], -1, group)
    idx = g.abs().float().topk(keep, dim=-1).indices
    return torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True).reshape(weight.shape)


def block_linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]


def two_four_masks(model: nn.Module, names=None) -> Masks:
    names = block_linear_names(model) if names is None else names
    return Masks({n: kn_mask(model.get_submodule(n).weight) for n in names}, KeepPattern(2, 4))
