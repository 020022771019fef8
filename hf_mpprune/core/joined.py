"""Transformer-block calls for `blockwise`: finding the repeated blocks, the hidden state of a block call, and
joining the cached block inputs of several calibration batches into one batch (one block forward per block)."""

import torch
from torch import nn

from .layers import PrunableLayer


__all__ = [
    "FUSE_MAX_ROWS",
    "FUSE_MAX_SCORES",
    "block_index",
    "find_blocks",
    "first_tensor",
    "fuse_batches",
    "fused_matches",
    "hidden_of",
    "with_hidden",
]


def block_index(name: str, prefix: str) -> int | None:
    """Index of the block of `prefix` (an nn.ModuleList path) that holds the module `name`, or None."""
    pre = f"{prefix}." if prefix else ""
    if not name.startswith(pre):
        return None
    head = name[len(pre) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def find_blocks(model: nn.Module, layers: list[PrunableLayer]) -> tuple[str, list[nn.Module]] | None:
    """(prefix, blocks) of the `nn.ModuleList` whose children hold the most registered layers (≥ 2 children)."""
    best, best_count = None, 0
    for prefix, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) < 2:
            continue
        idx = [block_index(la.name, prefix) for la in layers]
        idx = [i for i in idx if i is not None]
        if len(idx) > best_count and len(set(idx)) >= 2:
            best, best_count = (prefix, list(mod)), len(idx)
    return best


def first_tensor(args, kwargs) -> torch.Tensor | None:
    """The hidden-state tensor of a block call: the first positional tensor, else kwargs["hidden_states"]."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    hs = kwargs.get("hidden_states")
    return hs if isinstance(hs, torch.Tensor) else None


def with_hidden(args, kwargs, hidden):
    """The same block call with its hidden state replaced by `hidden`."""
    if args and isinstance(args[0], torch.Tensor):
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class _NoFuse(Exception):
    """The cached batches cannot be joined into one."""


FUSE_MAX_ROWS = 2**25  # hidden-state elements of the joined batch (128 MiB in float32)
FUSE_MAX_SCORES = 2**27  # batch x tokens² (attention scores per head of the joined batch)


def _merge(vals: list, sizes: list[int]):
    first = vals[0]
    if isinstance(first, torch.Tensor):
        if not all(isinstance(v, torch.Tensor) for v in vals):
            raise _NoFuse
        if first.dim() > 0 and all(
            v.dim() == first.dim() and v.shape[0] == b and v.shape[1:] == first.shape[1:] for v, b in zip(vals, sizes)
        ):
            return torch.cat(vals, 0)  # batch-major: joined along the batch
        if all(v.shape == first.shape and torch.equal(v, first) for v in vals[1:]):
            return first  # shared by every batch (e.g. a broadcast mask)
        raise _NoFuse
    if isinstance(first, (tuple, list)):
        if not all(type(v) is type(first) and len(v) == len(first) for v in vals):
            raise _NoFuse
        return type(first)(_merge([v[i] for v in vals], sizes) for i in range(len(first)))
    if all(type(v) is type(first) and v == first for v in vals[1:]):
        return first
    raise _NoFuse


def fuse_batches(cache: list[tuple]) -> tuple | None:
    """The cached block inputs of every calibration batch joined into ONE batch (tensors with the batch size as
    dim 0 concatenated, tensors identical in every batch kept once, equal plain values kept), or None when they
    do not line up (different sequence lengths, different flags) or the joined batch would exceed
    `FUSE_MAX_ROWS` / `FUSE_MAX_SCORES`."""
    if len(cache) < 2:
        return cache[0] if cache else None
    hidden = [first_tensor(a, k) for a, k in cache]
    sizes = [h.shape[0] for h in hidden]
    total = sum(h.numel() for h in hidden)
    tokens = hidden[0].shape[1] if hidden[0].dim() >= 3 else 1
    if total > FUSE_MAX_ROWS or sum(sizes) * tokens * tokens > FUSE_MAX_SCORES:
        return None
    if any(len(a) != len(cache[0][0]) or set(k) != set(cache[0][1]) for a, k in cache):
        return None
    try:
        args = tuple(_merge([a[i] for a, _ in cache], sizes) for i in range(len(cache[0][0])))
        kwargs = {key: _merge([k[key] for _, k in cache], sizes) for key in cache[0][1]}
    except _NoFuse:
        return None
    return args, kwargs


def hidden_of(out):
    """The hidden state of a block output (first element of a tuple output)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def fused_matches(blk: nn.Module, cache: list[tuple], fused: tuple) -> bool:
    """The dense block on the joined batch must give, row for row, what it gives on the first and the last batch."""
    got = hidden_of(blk(*fused[0], **fused[1]))
    first, last = hidden_of(blk(*cache[0][0], **cache[0][1])), hidden_of(blk(*cache[-1][0], **cache[-1][1]))
    if not all(isinstance(t, torch.Tensor) for t in (got, first, last)):
        return False
    if got.shape[0] != sum(first_tensor(a, k).shape[0] for a, k in cache) or got.shape[1:] != first.shape[1:]:
        return False
    ok = torch.allclose(got[: first.shape[0]], first, rtol=1e-4, atol=1e-5)
    return ok and torch.allclose(got[got.shape[0] - last.shape[0] :], last, rtol=1e-4, atol=1e-5)
