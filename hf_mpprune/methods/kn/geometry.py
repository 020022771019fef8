"""Shared k:n helpers (docs/algorithms.md §8.2, §8.7, §8.10): eligibility, grouping, candidate patterns, per-group
top-k, and sequential per-layer Hessian capture (SparseGPT k:n, CAST `reconstruct=True`).

Conventions: "k:n" = k KEPT of every n consecutive inputs of the matrix view `(out, in)`. A layer's "grouping
order" is its matrix view with columns reordered so that contiguous n-tuples are the groups: identity for Linear and
for flattened conv grouping; pixel-major `(kh, kw, C_in)` for `conv_grouping="channel"` (groups `W[o, c:c+n, i, j]`).
"""

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from ...core.config import KeepPattern, PruningConfig
from ...core.errors import ConfigError, PatternError
from ...core.layers import LayerSet, PrunableLayer


logger = logging.getLogger(__name__)

CONV_GROUPINGS = ("flattened", "channel")


# ---- eligibility ------------------------------------------------------------------------------------------------
def skip_reason(layer: PrunableLayer, pattern: KeepPattern, *, skip_head: bool, conv_grouping: str) -> str | None:
    """Why `layer` is left out of a k:n projection (None = eligible). Rows < n is an error, raised by `plan`."""
    n = pattern.group
    if skip_head and layer.role == "head":
        return "task head (role 'head'; skip_head=True)"
    if layer.kind == "conv2d":
        mod = layer.module
        if mod.groups != 1:
            return f"grouped/depthwise conv (groups={mod.groups})"
        if mod.in_channels % n:
            return f"C_in={mod.in_channels} not divisible by n={n} (stems are excluded, docs/algorithms.md §8.2)"
    if layer.shape[1] < n:
        return f"fan-in {layer.shape[1]} < n={n}: no complete group"
    return None


def plan(
    layers: LayerSet, pattern: KeepPattern, *, skip_head: bool = True, conv_grouping: str = "flattened",
    strict_tail: bool = False,
) -> tuple[list[PrunableLayer], dict[str, str]]:  # fmt: skip
    """Split the registry into layers projected to k:n and skipped ones (name -> reason).

    Raises `PatternError` for an eligible layer with fewer output rows than n (add it to `ignore`), and, with
    `strict_tail=True`, for a fan-in not divisible by n (by default the last `N mod n` columns stay as they are).
    """
    if conv_grouping not in CONV_GROUPINGS:
        raise ConfigError(f"conv_grouping={conv_grouping!r} must be one of {CONV_GROUPINGS}")
    eligible, skipped = [], {}
    for layer in layers:
        reason = skip_reason(layer, pattern, skip_head=skip_head, conv_grouping=conv_grouping)
        if reason:
            skipped[layer.name] = reason
            continue
        rows, cols = layer.shape
        if rows < pattern.group:
            raise PatternError(
                f"layer {layer.name!r} has {rows} output rows, fewer than n={pattern.group} of pattern {pattern}; "
                f"exclude it with ignore=[{layer.name!r}] or use a smaller group"
            )
        if cols % pattern.group and strict_tail:
            raise PatternError(
                f"layer {layer.name!r} has fan-in {cols}, not divisible by n={pattern.group}: the last "
                f"{cols % pattern.group} columns cannot follow {pattern}; set strict_tail=False to leave them dense"
            )
        eligible.append(layer)
    if skipped:
        logger.info("k:n %s skips %d layer(s): %s", pattern, len(skipped), skipped)
    return eligible, skipped


# ---- grouping order -----------------------------------------------------------------------------------------
def column_order(layer: PrunableLayer, conv_grouping: str = "flattened") -> torch.Tensor | None:
    """Index `idx` with `grouped = matrix[:, idx]` (None = identity). Channel grouping puts columns pixel-major."""
    if layer.kind != "conv2d" or conv_grouping == "flattened":
        return None
    c = layer.module.in_channels
    kk = math.prod(layer.module.kernel_size)
    # new column p*C + c  <-  flattened column c*kk + p
    return (torch.arange(c).unsqueeze(0) * kk + torch.arange(kk).unsqueeze(1)).reshape(-1)


def to_grouped(layer: PrunableLayer, t: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """A weight-shaped tensor as the `(out, in)` matrix in grouping order (a copy when reordered)."""
    m = layer.matrix_view(t)
    return m if order is None else m[:, order.to(m.device)]


def from_grouped(layer: PrunableLayer, m: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Inverse of `to_grouped`: a grouping-order matrix back to the weight's shape."""
    if order is not None:
        out = torch.empty_like(m)
        out[:, order.to(m.device)] = m
        m = out
    return layer.from_matrix(m)


def cells(matrix: torch.Tensor, n: int) -> torch.Tensor:
    """The `(M, G, n)` view of the first `G*n` columns (G = N // n)."""
    g = matrix.shape[1] // n
    return matrix[:, : g * n].reshape(matrix.shape[0], g, n)


# ---- candidate patterns -------------------------------------------------------------------------------------
def all_patterns(k: int, n: int) -> torch.Tensor:
    """Every keep pattern with k of n slots, `(C(n,k), n)` bool, lexicographic order of the kept slots."""
    combos = torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long)
    out = torch.zeros(len(combos), n, dtype=torch.bool)
    return out.scatter_(1, combos, True)


def sample_patterns(k: int, n: int, num: int, seed: int) -> torch.Tensor:
    """`num` distinct random k-subsets of n (without replacement), `(num, n)` bool, seeded."""
    total = math.comb(n, k)
    if num >= total:
        return all_patterns(k, n)
    g = torch.Generator().manual_seed(seed)
    seen: dict[tuple, None] = {}
    while len(seen) < num:
        draw = torch.rand(num, n, generator=g).argsort(1)[:, :k].sort(1).values
        for row in draw.tolist():
            seen.setdefault(tuple(row), None)
            if len(seen) == num:
                break
    idx = torch.tensor(list(seen), dtype=torch.long)
    return torch.zeros(num, n, dtype=torch.bool).scatter_(1, idx, True)


def candidates(pattern: KeepPattern, max_patterns: int, num_samples: int, seed: int) -> tuple[torch.Tensor, str]:
    """Exhaustive candidates when C(n,k) <= max_patterns, else `num_samples` sampled ones (and the mode name)."""
    if math.comb(pattern.group, pattern.keep) <= max_patterns:
        return all_patterns(pattern.keep, pattern.group), "exhaustive"
    return sample_patterns(pattern.keep, pattern.group, num_samples, seed), "sampled"


def topk_cells(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores of every cell `(..., n)`; ties go to the lower slot index (stable)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, True)


def kn_keep(scores: torch.Tensor, pattern: KeepPattern, tail_keep: torch.Tensor) -> torch.Tensor:
    """Keep mask `(M, N)`: top-k scores per (row, group); tail columns take `tail_keep` `(M, N)`."""
    keep = tail_keep.clone()
    c = cells(scores, pattern.group)
    g = c.shape[1] * pattern.group
    keep[:, :g] = topk_cells(c, pattern.keep).reshape(scores.shape[0], g)
    return keep


# ---- shared config and calibration wrapper ------------------------------------------------------------------
@dataclass
class KNMethodConfig(PruningConfig):
    """Fields shared by the calibration-based k:n methods (CAST, Wanda k:n, SparseGPT k:n); never registered.

    Args:
        pattern (`KeepPattern` or `str`): REQUIRED, "k:n" = k kept of every n inputs (e.g. "2:4", "8:16").
        skip_head (`bool`, defaults to `True`): leave the task head (registry role "head", found structurally) dense.
        conv_grouping (`str`, defaults to `"flattened"`): conv groups over the flattened `C_in·kh·kw` axis
            (paper parity) or `"channel"`: `W[o, c:c+n, i, j]` (the deployable sparse-conv layout).
        strict_tail (`bool`, defaults to `False`): a fan-in not divisible by n raises `PatternError` instead of
            leaving the last `N mod n` columns as they are.
        calibration_samples (`int`, defaults to 128), calibration_batch_size (`int`, defaults to 16).
    """

    method: str = "kn"
    skip_head: bool = True
    conv_grouping: str = "flattened"
    strict_tail: bool = False
    calibration_samples: int = 128
    calibration_batch_size: int = 16

    def __post_init__(self):
        super().__post_init__()
        if self.pattern is None:
            raise ConfigError(
                f"method {self.method!r} needs a k:n pattern (k kept of n), e.g. pattern='2:4'; got pattern=None"
            )
        if self.conv_grouping not in CONV_GROUPINGS:
            raise ConfigError(f"conv_grouping={self.conv_grouping!r} must be one of {CONV_GROUPINGS}")
        if self.calibration_samples < 1 or self.calibration_batch_size < 1:
            raise ConfigError(
                f"calibration_samples={self.calibration_samples} and calibration_batch_size="
                f"{self.calibration_batch_size} must be >= 1"
            )
        self.sparsity = 1.0 - self.pattern.density if self.pattern.keep < self.pattern.group else 0.0


@dataclass
class KNCalibration:
    """Calibration data plus (optionally) the DENSE weights `{layer_name: weight-shaped tensor}` for CAST's free
    restoration from an unstructured-sparse source: `pruner.prune(calibration=KNCalibration(ds, dense))`.
    The pruner keeps no dense copy, so take it (`{n: la.weight.detach().clone() for ...}`) before sparsifying."""

    data: Any
    dense_weights: dict[str, torch.Tensor] | None = None


def unwrap(calibration) -> tuple[Any, dict[str, torch.Tensor] | None]:
    if isinstance(calibration, KNCalibration):
        return calibration.data, calibration.dense_weights
    return calibration, None


def source_keep(layer: PrunableLayer, previous) -> torch.Tensor:
    """M^SER in weight shape: the previous step's mask when there is one, else the nonzero pattern of the weights."""
    if previous is not None and layer.name in previous:
        return previous[layer.name].to(layer.weight.device).clone()
    return layer.weight.detach() != 0
