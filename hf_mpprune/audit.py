"""k:n legality audit of the weights actually in a model (ALGORITHMS.md §8.7, §13.1; CONVENTIONS.md §5).

A group (n consecutive inputs of one output row, in the layer's grouping order) is bad when it holds more than k
nonzeros. −0.0 counts as zero for legality but is reported separately (some 2:4 kernels mishandle it), and makes
the audit fail. With masks, every group must also have exactly k kept slots.
"""

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .config import KeepPattern
from .kn import cells, column_order, to_grouped
from .layers import LayerSet, PrunableLayer, discover_layers
from .masks import Masks


@dataclass
class LegalityRow:
    name: str
    groups: int
    bad_groups: int
    tail_columns: int
    nonzeros: int
    negative_zeros: int
    bad_kept_slot_groups: int = 0  # groups whose mask does not keep exactly k slots (masks given)

    @property
    def ok(self) -> bool:
        return self.bad_groups == 0 and self.negative_zeros == 0 and self.bad_kept_slot_groups == 0


@dataclass
class LegalityReport:
    pattern: str
    conv_grouping: str
    rows: list[LegalityRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def totals(self) -> dict[str, int]:
        keys = ("groups", "bad_groups", "tail_columns", "nonzeros", "negative_zeros", "bad_kept_slot_groups")
        return {k: sum(getattr(r, k) for r in self.rows) for k in keys}

    def to_dict(self) -> dict:
        return {
            "pattern": self.pattern,
            "conv_grouping": self.conv_grouping,
            "ok": self.ok,
            "totals": self.totals(),
            "layers": [asdict(r) | {"ok": r.ok} for r in self.rows],
        }

    def table(self) -> str:
        head = f"{'layer':<56} {'groups':>9} {'bad':>7} {'tail':>5} {'nonzeros':>10} {'-0.0':>6}"
        lines = [head] + [
            f"{r.name:<56} {r.groups:>9} {r.bad_groups:>7} {r.tail_columns:>5} {r.nonzeros:>10} {r.negative_zeros:>6}"
            for r in self.rows
        ]
        return "\n".join(lines + [f"legality {self.pattern}: {'OK' if self.ok else 'FAILED'} {self.totals()}"])


def audit_matrix(name: str, matrix: torch.Tensor, pattern: KeepPattern, keep: torch.Tensor | None = None):
    """Audit one `(out, in)` matrix in grouping order (pure)."""
    c = cells(matrix, pattern.group)
    zero = matrix == 0
    row = LegalityRow(
        name=name,
        groups=c.shape[0] * c.shape[1],
        bad_groups=int(((c != 0).sum(-1) > pattern.keep).sum()),
        tail_columns=matrix.shape[1] - c.shape[1] * pattern.group,
        nonzeros=int((~zero).sum()),
        negative_zeros=int((zero & torch.signbit(matrix)).sum()),
    )
    if keep is not None:
        row.bad_kept_slot_groups = int((cells(keep, pattern.group).sum(-1) != pattern.keep).sum())
    return row


@torch.no_grad()
def legality_audit(
    model: nn.Module, layers: "LayerSet | list[PrunableLayer] | list[str] | Masks", pattern: "KeepPattern | str",
    *, conv_grouping: str = "flattened",
) -> LegalityReport:  # fmt: skip
    """Audit the named layers of `model` against k:n `pattern` (k kept of n along the input dimension).

    `layers` may be a `LayerSet`, a list of `PrunableLayer` or of module names, or `Masks` (then the kept-slot
    count of every group is checked too). Conv layers are audited in `conv_grouping` order.
    """
    pattern = KeepPattern.parse(pattern)
    masks = layers if isinstance(layers, Masks) else None
    names = [la if isinstance(la, str) else la.name for la in (masks.names if masks is not None else layers)]
    registry = discover_layers(model, targets=names)
    report = LegalityReport(str(pattern), conv_grouping)
    for name in names:
        layer = registry[name]
        order = column_order(layer, conv_grouping)
        keep = to_grouped(layer, masks[name], order).cpu() if masks is not None else None
        report.rows.append(audit_matrix(name, to_grouped(layer, layer.weight, order).detach().cpu(), pattern, keep))
    return report
