"""k:n legality audit of the weights actually in a model (docs/algorithms.md §8.7, §13.1; the 2:4 rules in docs/deploy.md).

No weight is rewritten. Per layer, on the `(out, in)` matrix view in grouping order (Conv2d flattened or
channel-grouped, GPT-2 Conv1D transposed): the k:n groups along the input dimension, the groups with more than
`k` nonzeros, the tail columns the pattern cannot cover, nonzeros, and the count of negative zeros (−0.0 breaks
some 2:4 kernels; `Masks.apply_` writes +0.0). With masks, every group must also keep exactly `k` slots.

Two verdicts per row:
* `ok`: the pattern holds where it applies (no bad group, no −0.0, exact kept slots); a tail is left dense.
* `legal`: eligible for a k:n kernel as is: at least one group, no bad group and no tail.
"""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ...core.config import KeepPattern
from ...core.layers import LayerSet, dense_view, discover_layers
from ...core.masks import Masks
from .geometry import cells, column_order, to_grouped


@dataclass
class LegalityRow:
    name: str
    shape: tuple[int, int]
    groups: int
    bad_groups: int
    tail_columns: int
    nonzeros: int
    negative_zeros: int
    numel: int
    bad_kept_slot_groups: int = 0  # groups whose mask does not keep exactly k slots (masks given)

    @property
    def ok(self) -> bool:
        return self.bad_groups == 0 and self.negative_zeros == 0 and self.bad_kept_slot_groups == 0

    @property
    def legal(self) -> bool:
        return self.groups > 0 and self.bad_groups == 0 and self.tail_columns == 0

    @property
    def zeros(self) -> int:
        return self.numel - self.nonzeros

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


_TOTALS = ("groups", "bad_groups", "tail_columns", "nonzeros", "negative_zeros", "bad_kept_slot_groups")


@dataclass
class LegalityReport:
    """Per-layer k:n legality of the weights in a model: groups checked, groups with more than k nonzeros, the
    dense tail, negative zeros; `ok` is True when no layer has a bad group. `to_markdown()` / `to_dict()` render it."""

    pattern: str
    conv_grouping: str = "flattened"
    rows: list[LegalityRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

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

    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(r, k) for r in self.rows) for k in _TOTALS}

    def to_dict(self) -> dict:
        return {
            "pattern": self.pattern,
            "conv_grouping": self.conv_grouping,
            "ok": self.ok,
            "legal": len(self.legal),
            "illegal": len(self.illegal),
            "totals": self.totals(),
            "rows": [asdict(r) | {"ok": r.ok, "legal": r.legal, "sparsity": r.sparsity} for r in self.rows],
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
        lines.append(f"\nlegality {self.pattern}: {'OK' if self.ok else 'FAILED'} {self.totals()}")
        return "\n".join(lines)


def audit_matrix(
    name: str, matrix: torch.Tensor, pattern: KeepPattern, keep: torch.Tensor | None = None
) -> LegalityRow:
    """Pure: one legality row for an `(out, in)` matrix already in grouping order (`keep`: its kept-slot mask)."""
    m = matrix.detach()
    c = cells(m, pattern.group)  # (M, G, n)
    zero = m == 0
    row = LegalityRow(
        name=name,
        shape=(int(m.shape[0]), int(m.shape[1])),
        groups=c.shape[0] * c.shape[1],
        bad_groups=int(((c != 0).sum(-1) > pattern.keep).sum()),
        tail_columns=m.shape[1] - c.shape[1] * pattern.group,
        nonzeros=int((~zero).sum()),
        negative_zeros=int((zero & torch.signbit(m)).sum()) if m.is_floating_point() else 0,
        numel=m.numel(),
    )
    if keep is not None:
        row.bad_kept_slot_groups = int((cells(keep, pattern.group).sum(-1) != pattern.keep).sum())
    return row


@torch.no_grad()
def legality_audit(
    target,
    pattern: KeepPattern | str = "2:4",
    *,
    layers: "LayerSet | list | Masks | None" = None,
    conv_grouping: str = "flattened",
) -> LegalityReport:
    """Audit k:n legality per layer.

    Args:
        target: a model (every Linear/Conv2d/Conv1D, head included), a `LayerSet`, or a `{name: (out, in) matrix}`
            mapping.
        pattern (`KeepPattern` or `str`, defaults to `"2:4"`): k kept of every n consecutive inputs.
        layers (*optional*): with a model, restrict to these layers (a `LayerSet`, `PrunableLayer`s or names); given
            `Masks`, the kept-slot count of every group is checked too.
        conv_grouping (`str`, defaults to `"flattened"`): conv column order (`"channel"` = TensorRT-style groups).
    """
    pattern = KeepPattern.parse(pattern)
    report = LegalityReport(str(pattern), conv_grouping)
    if isinstance(target, Mapping):
        report.rows = [audit_matrix(n, m, pattern) for n, m in target.items()]
        return report
    masks = layers if isinstance(layers, Masks) else None
    if isinstance(target, nn.Module):
        names = None if layers is None else [la if isinstance(la, str) else la.name for la in layers]
        registry = discover_layers(target, targets=names)
        order_names = names or registry.names
    else:  # a LayerSet
        registry, order_names = target, target.names
    for name in order_names:
        layer = registry[name]
        if layer.weight.is_meta:
            continue
        order = column_order(layer, conv_grouping)
        keep = to_grouped(layer, masks[name], order).cpu() if masks is not None else None
        weight = to_grouped(layer, dense_view(layer.weight), order).cpu()  # converted 2:4 weights: their dense copy
        report.rows.append(audit_matrix(name, weight, pattern, keep))
    return report
