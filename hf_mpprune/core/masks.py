"""Boolean masks (True = kept) per registered layer: apply with exact +0.0, account, hash, save, freeze.

The hand-off contract (torchao's): pruned weights are **dense tensors with exact +0.0 zeros**; masks travel
beside them as a bit-packed safetensors sidecar whose SHA-256 goes to the ledger.
"""

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from torch import nn

from .config import KeepPattern
from .errors import LedgerMismatchError, PatternError


_FORMAT = "hf_mpprune.masks"
_FORMAT_VERSION = "1"
_RECOVER = (
    "restore it from a backup or re-save the checkpoint; to load the dense weights anyway delete it and pass "
    "allow_missing_masks=True to MPPruner.from_pretrained (docs/errors.md)"
)


class Masks:
    """One boolean mask per registered layer, in the weight's own shape. True = kept / trainable."""

    def __init__(self, masks: dict[str, torch.Tensor], pattern: KeepPattern | None = None):
        self._m = {}
        for name, m in masks.items():
            if not isinstance(m, torch.Tensor):
                raise PatternError(f"mask of {name!r} must be a torch.Tensor, got {type(m).__name__}")
            self._m[name] = m.detach().to(dtype=torch.bool)
        self.pattern = pattern

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, names: list[str], pattern: KeepPattern | None = None) -> "Masks":
        """Masks = nonzero pattern of the named weights."""
        return cls({n: layer_weight(model, n) != 0 for n in names}, pattern)

    # ---- mapping protocol ---------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._m[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._m)

    def __len__(self) -> int:
        return len(self._m)

    def __contains__(self, name: object) -> bool:
        return name in self._m

    def items(self):
        return self._m.items()

    @property
    def names(self) -> list[str]:
        return list(self._m)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Masks) or self.names != other.names:
            return False
        return all(torch.equal(self[n].cpu(), other[n].cpu()) for n in self.names)

    def to(self, device) -> "Masks":
        return Masks({n: m.to(device) for n, m in self._m.items()}, self.pattern)

    # ---- accounting ---------------------------------------------------------------------------------------
    @property
    def numel(self) -> int:
        return sum(m.numel() for m in self._m.values())

    @property
    def num_pruned(self) -> int:
        return sum(int((~m).sum()) for m in self._m.values())

    def sparsity(self) -> float:
        """Fraction of pruned entries over all masked weights."""
        return self.num_pruned / max(1, self.numel)

    def layer_sparsity(self) -> dict[str, float]:
        return {n: float((~m).sum()) / m.numel() for n, m in self._m.items()}

    def is_subset_of(self, previous: "Masks") -> bool:
        """True when every entry pruned in `previous` is still pruned here (cumulative pruning)."""
        return all(not bool((m & ~previous[n].to(m.device)).any()) for n, m in self._m.items() if n in previous)

    # ---- model interaction --------------------------------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:
        """Raise a clear error if a mask names a missing layer or has the wrong shape."""
        for n, m in self._m.items():
            w = layer_weight(model, n)
            if tuple(w.shape) != tuple(m.shape):
                raise PatternError(f"mask of {n!r} has shape {tuple(m.shape)} but the weight is {tuple(w.shape)}")

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> nn.Module:
        """Zero pruned weights in place. Zeros are written as +0.0 (−0.0 breaks some 2:4 kernels)."""
        for n, m in self._m.items():
            w = layer_weight(model, n)
            w.masked_fill_(~m.to(w.device), 0.0)
            # canonicalise −0.0 among kept entries too, so "zero" always means +0.0
            w.add_(0.0)
        return model

    def freeze_(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list:
        """Freeze masks during any training (docs/algorithms.md §1.4): mask each gradient after backward, and
        (if `optimizer` is given) re-apply the masks after every `optimizer.step()`. Returns removable handles.
        Weights that do not require grad (frozen by the user) get no gradient hook: they cannot move."""
        handles = []
        for n, m in self._m.items():
            w = layer_weight(model, n)
            if not w.requires_grad:
                continue
            mask = m.to(w.device)
            handles.append(w.register_hook(lambda g, mask=mask: g * mask))
        if optimizer is not None:
            handles.append(optimizer.register_step_post_hook(lambda *_: self.apply_(model)))
        return handles

    # ---- identity and files -------------------------------------------------------------------------------
    def _packed(self) -> dict[str, np.ndarray]:
        return {n: np.packbits(m.cpu().numpy().reshape(-1)) for n, m in self._m.items()}

    def sha256(self) -> str:
        """Hash of names, shapes, pattern and bits (independent of device and dict order)."""
        h = hashlib.sha256()
        h.update(str(self.pattern).encode())
        for n, bits in sorted(self._packed().items()):
            h.update(n.encode() + b"\0" + json.dumps(list(self._m[n].shape)).encode() + b"\0")
            h.update(bits.tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike) -> str:
        """Write a bit-packed safetensors file; returns the SHA-256 stored in its header."""
        digest = self.sha256()
        meta = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "shapes": json.dumps({n: list(m.shape) for n, m in self._m.items()}),
            "pattern": "" if self.pattern is None else str(self.pattern),
            "sha256": digest,
        }
        save_file(self._packed(), str(path), metadata=meta)
        return digest

    @classmethod
    def load(cls, path: str | os.PathLike, *, expected_sha256: str | None = None) -> "Masks":
        """Read a mask file; verify its stored (and, if given, the expected) SHA-256."""
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
            packed = load_file(str(path))
        except Exception as e:  # safetensors raises several types for a damaged file
            raise LedgerMismatchError(f"cannot read mask file {path}: {e}; {_RECOVER}") from e
        if meta.get("format") != _FORMAT:
            raise LedgerMismatchError(f"{path} is not an hf_mpprune mask file (format={meta.get('format')!r})")
        try:
            shapes = json.loads(meta["shapes"])
            masks = {}
            for n, shape in shapes.items():
                count = int(np.prod(shape))
                bits = np.unpackbits(packed[n])[:count].astype(bool)
                masks[n] = torch.from_numpy(bits.reshape(shape))
            pattern = KeepPattern.parse(meta["pattern"]) if meta.get("pattern") else None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise LedgerMismatchError(
                f"mask file {path} has a damaged header ({type(e).__name__}: {e}); {_RECOVER}"
            ) from e
        out = cls(masks, pattern)
        digest = out.sha256()
        for want, what in ((meta.get("sha256"), "its header"), (expected_sha256, "the ledger")):
            if want is not None and want != digest:
                raise LedgerMismatchError(
                    f"mask file {path} is corrupted: SHA-256 {digest[:12]}… != {what} {want[:12]}…"
                )
        return out


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The `.weight` of the submodule `name` (`PatternError` naming the layer when it does not exist)."""
    try:
        return model.get_submodule(name).weight
    except AttributeError:
        raise PatternError(f"mask names layer {name!r}, which does not exist in {type(model).__name__}") from None


def kn_violations(matrix: torch.Tensor, pattern: KeepPattern) -> tuple[int, int, int]:
    """Count k:n violations of a weight matrix `(out, in)` along the input dimension.

    Returns `(groups, bad_groups, tail_columns)`: a group is bad when it has more than `keep` nonzeros;
    the last `in % group` columns are a tail that the pattern leaves untouched.
    """
    m, n_in = matrix.shape
    g = n_in // pattern.group
    grouped = (matrix[:, : g * pattern.group] != 0).reshape(m, g, pattern.group)  # (M, G, n)
    bad = int((grouped.sum(-1) > pattern.keep).sum())
    return m * g, bad, n_in - g * pattern.group


def keep_top(scores: list[torch.Tensor], num_prune: int) -> list[torch.Tensor]:
    """Masks (True = kept) that prune exactly `num_prune` entries with the lowest scores, across all tensors.

    Ties are broken by position in the concatenation (earlier layers, then row-major index, go first), so the
    result is exact to the entry and deterministic. Memory: one float32 copy of all scores, no sort.
    """
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores])  # (P,)
    total = flat.numel()
    if not 0 <= num_prune <= total:
        raise ValueError(f"cannot prune {num_prune} of {total} entries")
    if num_prune == 0:
        keep = torch.ones(total, dtype=torch.bool)
    else:
        thr = torch.kthvalue(flat, num_prune).values
        below = flat < thr
        tie = (flat == thr).nonzero().squeeze(1)
        need = num_prune - int(below.sum())
        keep = ~below
        keep[tie[:need]] = False
    out, start = [], 0
    for s in scores:
        out.append(keep[start : start + s.numel()].reshape(s.shape))
        start += s.numel()
    return out


_DIGITS = 1 << 16  # radix of the streamed selection: two passes of 16-bit digits cover a float32


def _order_keys(scores: torch.Tensor) -> torch.Tensor:
    """Flat int32 keys whose signed order is the float order of `scores` (float32; −0.0 counts as +0.0; no NaN)."""
    bits = (scores.detach().reshape(-1).float() + 0.0).view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip the magnitude bits so larger |x| sorts lower


def _digit_histogram(score_fns: Sequence[Callable[[], torch.Tensor]], high: int | None) -> torch.Tensor:
    """Counts of the high 16-bit digit of every key (`high=None`), or of the low digit among keys whose high digit
    is `high`. One layer's scores in memory at a time."""
    hist = torch.zeros(_DIGITS, dtype=torch.long)
    for fn in score_fns:
        keys = _order_keys(fn())
        digits = (keys >> 16) + _DIGITS // 2 if high is None else keys[(keys >> 16) == high] & 0xFFFF
        hist += torch.bincount(digits, minlength=_DIGITS)
        del keys, digits
    return hist


def _bucket(hist: torch.Tensor, rank: int) -> tuple[int, int]:
    """The bucket holding the `rank`-th smallest entry (1-based) and that entry's rank inside the bucket."""
    cum = hist.cumsum(0)
    b = int(torch.searchsorted(cum, rank))
    return b, rank - (int(cum[b - 1]) if b else 0)


def keep_top_streamed(
    score_fns: Sequence[Callable[[], torch.Tensor]], numels: Sequence[int], num_prune: int
) -> list[torch.Tensor]:
    """`keep_top` with the scores produced on demand: `score_fns[i]()` returns tensor i (float32 values, no NaN).

    Same masks to the bit as `keep_top` on the materialised list (the lowest `num_prune` entries pruned, ties at the
    threshold in concatenation order), but only one tensor's scores are held at a time (docs/algorithms.md §18.2):
    the threshold is found exactly by a radix select on the float bit patterns, two passes of 16-bit histograms,
    and a third pass builds the masks. Each function is therefore called three times and must return the same
    values every time.
    """
    total = sum(numels)
    if not 0 <= num_prune <= total:
        raise ValueError(f"cannot prune {num_prune} of {total} entries")
    thr, need = -(2**31), 0  # num_prune = 0: no key is below the smallest int32, no tie taken
    if num_prune:
        high, rank = _bucket(_digit_histogram(score_fns, None), num_prune)
        high -= _DIGITS // 2
        low, need = _bucket(_digit_histogram(score_fns, high), rank)
        thr = high * _DIGITS + low  # the num_prune-th smallest key; `need` entries equal to it are pruned
    out = []
    for fn, numel in zip(score_fns, numels):
        scores = fn()
        if scores.numel() != numel:
            raise ValueError(f"a score function returned {scores.numel()} entries where numels says {numel}")
        keys = _order_keys(scores)
        keep = keys >= thr
        if need:
            tie = (keys == thr).nonzero().squeeze(1)[:need]
            keep[tie] = False
            need -= tie.numel()
        out.append(keep.reshape(scores.shape))
        del scores, keys  # before the next layer's scores are made
    return out
