"""Replaying transformer-block calls on cached inputs (for `blockwise`).

A block is called with its hidden state and keyword inputs that the model computes once per forward: rotary
position embeddings (a `(cos, sin)` tuple), the attention mask, `position_ids`, `cache_position`, flags. Most
models hand every block the same keyword inputs; some do not (Gemma 2 / 3 alternate sliding-window and global
layers, each kind with its own mask and, for Gemma 3, its own rotary table). Blocks are therefore grouped into
**kinds**: two blocks share a kind when their inputs on the first calibration batch are equal apart from the hidden
state, and the model's `config.layer_types` (where it has one) names the same layer type. For every calibration
batch one call per kind is captured (`joined.capture_calls`: a forward that stops at the first block of the last
kind), and block i is replayed with the captured inputs of its kind, its batch's token mask, and the hidden state
the previous block produced.

Calibration forwards never build a KV cache (`calibration.model_inputs` adds `use_cache=False`).
"""

import torch

from .joined import with_hidden


__all__ = ["block_kinds", "call_for", "simple_state"]

_SIMPLE = (type(None), bool, int, float, str, torch.dtype, torch.device)


def simple_state(obj) -> bool:
    """Only tensors, plain values and tuples / lists of them (no cache objects, no modules)."""
    if isinstance(obj, (torch.Tensor, *_SIMPLE)):
        return True
    if isinstance(obj, (tuple, list)):
        return all(simple_state(o) for o in obj)
    return False


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and a.dtype == b.dtype and torch.equal(a, b)
        )  # fmt: skip
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _rest(args: tuple, kwargs: dict) -> tuple:
    """The inputs of a block call without its hidden state."""
    if args and isinstance(args[0], torch.Tensor):
        return args[1:], kwargs
    return args, {k: v for k, v in kwargs.items() if k != "hidden_states"}


def block_kinds(block_inputs: list[tuple], layer_types=None) -> list[int]:
    """kinds[i]: the first block whose call takes the same inputs as block i's (hidden state aside) and, when
    `layer_types` lists one type per block, the same layer type."""
    n = len(block_inputs)
    types = list(layer_types) if isinstance(layer_types, (list, tuple)) and len(layer_types) == n else [None] * n
    kinds: list[int] = []
    for i, call in enumerate(block_inputs):
        rest = _rest(*call)
        same = (k for k in sorted(set(kinds)) if types[k] == types[i] and _equal(rest, _rest(*block_inputs[k])))
        kinds.append(next(same, i))
    return kinds


def call_for(calls: dict[int, list[tuple]], kinds: list[int], i: int, b: int, hidden: torch.Tensor) -> tuple:
    """The call of block `i` on batch `b` (args, kwargs, token mask): the captured inputs of its kind
    (`joined.capture_calls`) with `hidden` as the hidden state."""
    args, kwargs, mask = calls[kinds[i]][b]
    return (*with_hidden(args, kwargs, hidden), mask)
