"""k:n legality audit of weight tensors (ALGORITHMS.md §13.1): no weight is rewritten.

Per layer, on the `(out, in)` matrix view (Conv2d flattened, GPT-2 Conv1D transposed): the number of k:n groups
along the input dimension, the groups with more than `k` nonzeros, the tail columns the pattern cannot cover, and
the count of negative zeros (−0.0 breaks some 2:4 kernels; `Masks.apply_` writes +0.0).
A layer is *legal* iff it has at least one group, no bad group and no tail.
"""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .config import KeepPattern
from .layers import LayerSet, discover_layers
from .masks import kn_violations


@dataclass
class LegalityRow:
    name: str
    shape: tuple[int, int]
    groups: int
    bad_groups: int
    tail_columns: int
    negative_zeros: int
    zeros: int
    numel: int

    @property
    def legal(self) -> bool:
        return self.groups > 0 and self.bad_groups == 0 and self.tail_columns == 0

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class LegalityAudit:
    pattern: str
    rows: list[LegalityRow] = field(default_factory=list)

    @property
    def legal(self) -> list[str]:
        return [r.name for r in self.rows if r.legal]

    @property
    def illegal(self) -> list[str]:
        return [r.name for r in self.rows if not r.legal]

    def __getitem__(self, name: str) -> LegalityRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"{name!r} was not audited")

    def to_dict(self) -> dict:
        return {
            "pattern": self.pattern,
            "legal": len(self.legal),
            "illegal": len(self.illegal),
            "rows": [{**asdict(r), "legal": r.legal, "sparsity": r.sparsity} for r in self.rows],
        }

    def to_markdown(self) -> str:
        lines = [
            f"{len(self.legal)}/{len(self.rows)} layers pass {self.pattern} (k kept of n, along the input dim)",
            "",
            "| layer | shape | groups | bad groups | tail cols | -0.0 | sparsity | legal |",
            "|---|---|---:|---:|---:|---:|---:|:-:|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.name} | {r.shape[0]}x{r.shape[1]} | {r.groups} | {r.bad_groups} | {r.tail_columns} | "
                f"{r.negative_zeros} | {100 * r.sparsity:.1f}% | {'yes' if r.legal else 'no'} |"
            )
        return "\n".join(lines)


def audit_matrix(name: str, matrix: torch.Tensor, pattern: KeepPattern) -> LegalityRow:
    """Pure: one legality row for an `(out, in)` matrix."""
    m = matrix.detach()
    zero = m == 0
    groups, bad, tail = kn_violations(m, pattern)
    neg = int((zero & torch.signbit(m)).sum()) if m.is_floating_point() else 0
    return LegalityRow(name, tuple(m.shape), groups, bad, tail, neg, int(zero.sum()), m.numel())


def _matrices(target) -> list[tuple[str, torch.Tensor]]:
    if isinstance(target, Mapping):
        return [(n, t) for n, t in target.items()]
    if isinstance(target, nn.Module):
        target = discover_layers(target)
    if isinstance(target, LayerSet):
        return [(layer.name, layer.matrix_view()) for layer in target if not layer.weight.is_meta]
    return [(layer.name, layer.matrix_view()) for layer in target]


@torch.no_grad()
def legality_audit(target, pattern: KeepPattern | str = "2:4") -> LegalityAudit:
    """Audit k:n legality per layer.

    Args:
        target: a model (every Linear/Conv2d/Conv1D, head included), a `LayerSet`, an iterable of
            `PrunableLayer`, or a `{name: (out, in) matrix}` mapping.
        pattern (`KeepPattern` or `str`, defaults to `"2:4"`): k kept of every n consecutive inputs.
    """
    pattern = KeepPattern.parse(pattern)
    return LegalityAudit(str(pattern), [audit_matrix(n, m, pattern) for n, m in _matrices(target)])
