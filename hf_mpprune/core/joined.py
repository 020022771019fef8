"""Transformer-block calls for `blockwise`: finding the repeated blocks, the hidden state of a block call,
capturing the blocks' inputs per kind of block (`capture_calls`, each call with its batch's token mask), and
joining several calibration batches, padded text batches of different lengths included, into one batch (one
block forward per block)."""

import torch
from torch import nn

from .calibration import model_inputs, real_tokens, token_mask
from .layers import PrunableLayer


__all__ = [
    "FUSE_MAX_ROWS",
    "FUSE_MAX_SCORES",
    "StopForward",
    "block_index",
    "cache_block_inputs",
    "capture_calls",
    "find_blocks",
    "first_tensor",
    "fits_joined",
    "forward_until_stop",
    "hidden_of",
    "join_batches",
    "joined_matches",
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


FUSE_MAX_ROWS = 2**25  # hidden-state elements of the joined batch (128 MiB in float32)
FUSE_MAX_SCORES = 2**27  # batch x tokens² (attention scores per head of the joined batch)


def _batch_size(batch: dict, mask: torch.Tensor | None) -> int | None:
    if mask is not None:
        return mask.shape[0]
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    return None if first is None else first.shape[0]


def _pad_tokens(v: torch.Tensor, length: int) -> torch.Tensor:
    """`v` (B, T, ...) padded with zeros to (B, length, ...)."""
    return torch.cat([v, v.new_zeros((v.shape[0], length - v.shape[1], *v.shape[2:]))], 1)


def join_batches(batches: list[dict]) -> tuple[dict, torch.Tensor | None] | None:
    """Every calibration batch as ONE model input, and its real-token mask, or None when they cannot be joined.

    Tensors are concatenated along the batch. Padded text batches of different lengths are first padded to the
    longest: every tensor laid out like the batch's 2-D `attention_mask` (B, T) (input ids, token types, the mask
    itself) gets zeros on the right, so the added positions are masked; the model builds its attention mask from
    the joined `attention_mask`, and the hooks drop masked positions from every statistic (`real_tokens`).
    Non-tensor values must be equal in every batch. None when the keys differ, a tensor does not carry the batch
    as dim 0, shapes still differ after padding (no mask to pad with), or values differ."""
    if len(batches) < 2 or any(set(b) != set(batches[0]) for b in batches):
        return None
    masks = [token_mask(b) for b in batches]
    if any((m is None) != (masks[0] is None) for m in masks):
        return None
    length = max(m.shape[1] for m in masks) if masks[0] is not None else None
    sizes = [_batch_size(b, m) for b, m in zip(batches, masks)]
    out = {}
    for key, first in batches[0].items():
        vals = [b[key] for b in batches]
        if not isinstance(first, torch.Tensor):
            if any(isinstance(v, torch.Tensor) or type(v) is not type(first) or v != first for v in vals):
                return None
            out[key] = first
            continue
        if not all(isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n for v, n in zip(vals, sizes)):
            return None
        if length is not None:
            vals = [
                _pad_tokens(v, length) if v.dim() >= 2 and v.shape[:2] == m.shape else v for v, m in zip(vals, masks)
            ]
        if any(v.shape[1:] != vals[0].shape[1:] for v in vals):
            return None
        out[key] = torch.cat(vals)
    return out, token_mask(out)


def fits_joined(hidden: list[torch.Tensor]) -> bool:
    """The joined batch of these per-batch hidden states (padded to the longest) stays within `FUSE_MAX_ROWS`
    hidden elements and `FUSE_MAX_SCORES` attention scores per head."""
    rows = sum(h.shape[0] for h in hidden)
    tokens = max(h.shape[1] for h in hidden) if hidden[0].dim() >= 3 else 1
    width = hidden[0][0, 0].numel() if hidden[0].dim() >= 3 else hidden[0][0].numel()
    return rows * tokens * width <= FUSE_MAX_ROWS and rows * tokens * tokens <= FUSE_MAX_SCORES


class StopForward(Exception):
    """Raised from a hook to end a forward early."""


def forward_until_stop(model: nn.Module, batches: list[dict], device) -> None:
    """Forward every batch (`calibration.model_inputs`: on `device`, no KV cache; padding masked out of the
    statistics), each until a hook raises `StopForward` or to the end."""
    for batch in batches:
        try:
            with real_tokens(token_mask(batch)):
                model(**model_inputs(model, batch, device))
        except StopForward:
            pass


def capture_calls(model: nn.Module, blocks: list[nn.Module], kinds: list[int], batches: list[dict]) -> dict:
    """{kind: [(args, kwargs, token mask or None) of the kind's first block, one per batch]}: every forward ends at
    the first block of the last kind (`replay.block_kinds`; blocks before it run on the dense model)."""
    device = next(model.parameters()).device
    reps = sorted(set(kinds))
    calls: dict[int, list[tuple]] = {k: [] for k in reps}

    def grab(k):
        def hook(mod, args, kwargs):
            calls[k].append((args, kwargs))
            if k == reps[-1]:
                raise StopForward

        return hook

    handles = [blocks[k].register_forward_pre_hook(grab(k), with_kwargs=True) for k in reps]
    try:
        forward_until_stop(model, batches, device)
    finally:
        for h in handles:
            h.remove()
    masks = [token_mask(b) for b in batches]
    return {k: [(a, kw, m) for (a, kw), m in zip(c, masks)] for k, c in calls.items()}


def cache_block_inputs(
    model: nn.Module, blocks: list[nn.Module], kinds: list[int], batches: list[dict], join: bool = True
) -> tuple[dict[int, list[tuple]], int]:
    """`capture_calls` of every batch, and how many batches were joined into ONE call per kind (0: one call per
    batch). Joined when `join` is True, `join_batches` can, the joined batch `fits_joined`, and `joined_matches`
    holds for the first block of every kind."""
    calls = capture_calls(model, blocks, kinds, batches)
    joined = join_batches(batches) if len(batches) > 1 and join else None
    if joined is None or not fits_joined([first_tensor(a, k) for a, k, _ in calls[0]]):
        return calls, 0
    one = capture_calls(model, blocks, kinds, [joined[0]])
    if not all(joined_matches(blocks[k], calls[k], one[k][0]) for k in calls):
        return calls, 0
    return one, len(batches)


def hidden_of(out):
    """The hidden state of a block output (first element of a tuple output)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def joined_matches(blk: nn.Module, cache: list[tuple], joined: tuple) -> bool:
    """The dense block on the joined batch must give, at every real-token position, what it gives on the first and
    the last batch. Cache entries are (args, kwargs, token mask or None)."""
    outs = []
    for args, kwargs, mask in (joined, cache[0], cache[-1]):
        with real_tokens(mask):
            outs.append(hidden_of(blk(*args, **kwargs)))
    got, first, last = outs
    if not all(isinstance(t, torch.Tensor) for t in outs):
        return False
    if got.shape[0] != sum(first_tensor(a, k).shape[0] for a, k, _ in cache) or got.shape[2:] != first.shape[2:]:
        return False
    for ref, (_, _, mask), start in ((first, cache[0], 0), (last, cache[-1], got.shape[0] - last.shape[0])):
        part = got[start : start + ref.shape[0]]
        if ref.dim() >= 2 and ref.shape[1] != part.shape[1]:
            if ref.shape[1] > part.shape[1]:
                return False
            part = part[:, : ref.shape[1]]
        if mask is not None:
            part, ref = part[mask.to(part.device)], ref[mask.to(ref.device)]
        if part.shape != ref.shape or not torch.allclose(part, ref, rtol=1e-4, atol=1e-5):
            return False
    return True
