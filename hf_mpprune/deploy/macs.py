"""Exact MAC accounting by forward hooks, with k:n sparse-execution estimates (docs/algorithms.md §10.2).

* 1 MAC = one multiply-add. Linear / GPT-2 Conv1D: `tokens · in · out`; ConvNd: `out_elements · (C_in/g) · prod(k)`;
  attention matmuls `2 · N² · D` per sequence (QKᵀ and AV), counted by hooking every attention module that owns
  q/k/v projections (separate, timm `qkv` or GPT-2 `c_attn`) and reading the **real** token count it receives (so ToMe's merged graph is counted exactly).
  Norms, activations, softmax and pooling are not counted.
* Only layers whose weights (or given masks) pass the k:n legality check along the input dimension are
  *eligible*; `MACs_sparse = MACs_dense − (1 − k/n) · MACs_eligible`. Attention matmuls always stay dense.
* Conv weights are checked on the flattened `(C_out, C_in/g · k_h · k_w)` view (§13.1 "flattened 2:4").

`vit_closed_form` reproduces the paper's closed-form convention (ToMe: block `l` processes `N_0 − r·l` tokens in
both attention and MLP), which gives ViT-B/16 −22.81% (ToMe r=8) and −59.81% (ToMe + 2:4).
"""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..core.config import KeepPattern
from ..core.layers import dense_view
from ..core.masks import Masks, kn_violations
from .tome import apply_tome, remove_tome


try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()  # type: ignore[assignment,misc]

_QKV = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))


@dataclass
class MACRow:
    name: str
    kind: str  # linear | conv1d | conv | attn_matmul
    dense_macs: int = 0
    eligible: bool = False
    sparse_macs: int = 0
    calls: int = 0
    tokens: int = 0  # rows (Linear) / tokens per sequence (attention) of the last call
    reason: str = ""


@dataclass
class MACReport:
    """Totals and a per-layer table. `mac_reduction = 1 − sparse/dense`; `theoretical_speedup = dense/sparse`."""

    rows: list[MACRow] = field(default_factory=list)
    pattern: str = "2:4"
    dense_macs: int = 0
    eligible_macs: int = 0
    sparse_macs: int = 0

    @property
    def mac_reduction(self) -> float:
        return 1.0 - self.sparse_macs / self.dense_macs if self.dense_macs else 0.0

    @property
    def theoretical_speedup(self) -> float:
        return self.dense_macs / self.sparse_macs if self.sparse_macs else math.inf

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.kind] = out.get(row.kind, 0) + row.dense_macs
        return out

    def to_dict(self) -> dict:
        return {
            "pattern": self.pattern,
            "dense_macs": self.dense_macs,
            "eligible_macs": self.eligible_macs,
            "sparse_macs": self.sparse_macs,
            "mac_reduction": self.mac_reduction,
            "theoretical_speedup": self.theoretical_speedup,
            "by_kind": self.by_kind(),
            "rows": [asdict(r) for r in self.rows],
        }

    def to_markdown(self) -> str:
        lines = [
            f"dense {self.dense_macs / 1e9:.4f} GMAC, eligible ({self.pattern}) {self.eligible_macs / 1e9:.4f} GMAC, "
            f"sparse {self.sparse_macs / 1e9:.4f} GMAC, reduction {100 * self.mac_reduction:.2f}%",
            "",
            "| layer | kind | tokens | dense MACs | eligible | sparse MACs |",
            "|---|---|---:|---:|:-:|---:|",
        ]
        for r in self.rows:
            mark = "yes" if r.eligible else (r.reason or "no")
            lines.append(f"| {r.name} | {r.kind} | {r.tokens} | {r.dense_macs:,} | {mark} | {r.sparse_macs:,} |")
        return "\n".join(lines)


# ---- pure math -----------------------------------------------------------------------------------------------
def sparse_macs(dense: int, eligible: int, pattern: KeepPattern) -> int:
    """`MACs_dense − (1 − k/n)·MACs_eligible`, exact in integers."""
    return dense - (eligible * (pattern.group - pattern.keep)) // pattern.group


def vit_closed_form(
    depth: int = 12,
    dim: int = 768,
    mlp_dim: int = 3072,
    n0: int = 197,
    r: int = 0,
    density: float = 1.0,
    embed_macs: int = 196 * 768 * 768,
    head_macs: int = 768 * 1000,
    merge_before_mlp: bool = False,
) -> float:
    """Closed-form ViT MACs (§10.2). Block `l` has `N_l = N_0 − r·l` tokens in attention (and MLP, unless
    `merge_before_mlp`, where the MLP sees `N_l − r`: the real ToMe graph). Block Linears scale by `density`
    (0.5 for 2:4); attention matmuls, patch embedding and head stay dense."""
    total = float(embed_macs + head_macs)
    for layer in range(depth):
        n = n0 - r * layer
        n_mlp = n - r if merge_before_mlp else n
        total += density * (n * 4 * dim * dim + n_mlp * 2 * dim * mlp_dim) + 2 * n * n * dim
    return total


# ---- legality ------------------------------------------------------------------------------------------------
def _matrix(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    if Conv1D and isinstance(module, Conv1D):
        return t.t()
    return t.reshape(t.shape[0], -1)


def _legality(name: str, module: nn.Module, masks: Masks | None, pattern: KeepPattern) -> tuple[bool, str]:
    if masks is not None:
        if name not in masks:
            return False, "no mask"
        nz = masks[name]
    else:
        w = dense_view(module.weight)
        if w.is_meta:
            return False, "meta weight"
        nz = w.detach() != 0
    groups, bad, tail = kn_violations(_matrix(module, nz), pattern)
    if groups == 0 or tail:
        return False, f"shape: {tail} tail columns"
    return (True, "") if bad == 0 else (False, f"{bad}/{groups} groups not {pattern}")


# ---- hooks ---------------------------------------------------------------------------------------------------
def _weight_kind(module: nn.Module) -> str | None:
    if Conv1D and isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    return None


def _weight_macs(module: nn.Module, kind: str, inp: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    if kind == "conv":
        k = math.prod(module.kernel_size) * (module.in_channels // module.groups)
        return out.numel() * k, out.numel() // out.shape[1]
    w = module.weight
    n_in, n_out = (w.shape[0], w.shape[1]) if kind == "conv1d" else (w.shape[1], w.shape[0])
    tokens = inp.numel() // n_in
    return tokens * n_in * n_out, tokens


def _attn_width(module: nn.Module) -> int | None:
    """Total q width D of an attention module with q/k/v projections (separate or fused), else None."""
    for names in _QKV:
        mods = [getattr(module, n, None) for n in names]
        if all(isinstance(m, nn.Linear) for m in mods):
            return mods[0].out_features
    fused = getattr(module, "qkv", None) if isinstance(getattr(module, "qkv", None), nn.Linear) else None
    if fused is not None:
        return fused.out_features // 3  # timm-style fused qkv
    c_attn = getattr(module, "c_attn", None)
    if Conv1D and isinstance(c_attn, Conv1D):
        return c_attn.nf // 3  # GPT-2 fused c_attn
    return None


def _install(model: nn.Module, rows: dict[str, MACRow]) -> list:
    handles = []
    for name, module in model.named_modules():
        kind = _weight_kind(module)
        if kind is not None:

            def hook(mod, args, out, name=name, kind=kind):
                macs, tokens = _weight_macs(mod, kind, args[0], out)
                row = rows.setdefault(name, MACRow(name, kind))
                row.dense_macs += macs
                row.calls += 1
                row.tokens = tokens

            handles.append(module.register_forward_hook(hook))
        width = _attn_width(module)
        if width is not None:

            def pre(mod, args, kwargs, name=name, width=width):
                h = args[0] if args else kwargs["hidden_states"]
                n = h.shape[-2]
                seqs = h.numel() // (n * h.shape[-1])
                row = rows.setdefault(name + ".matmuls", MACRow(name + ".matmuls", "attn_matmul"))
                row.dense_macs += 2 * seqs * n * n * width
                row.calls += 1
                row.tokens = n

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
    return handles


@torch.no_grad()
def mac_report(
    model: nn.Module,
    inputs: Mapping | torch.Tensor,
    masks: Masks | None = None,
    pattern: KeepPattern | str | None = None,
) -> MACReport:
    """Count exact MACs of one forward of `model` on `inputs` (use batch 1 for per-image numbers).

    Args:
        model (`torch.nn.Module`): any model; ToMe-patched ViTs are counted on their real merged graph.
        inputs (`dict` or `torch.Tensor`): keyword inputs (`model(**inputs)`) or a single positional tensor.
        masks (`Masks`, *optional*): legality is checked on these masks (True = kept); layers without a mask stay
            dense. Default: on each weight's nonzero pattern.
        pattern (`KeepPattern` or `str`, *optional*): the k:n pattern; default `masks.pattern` or 2:4.
    """
    pattern = KeepPattern.parse(pattern or (masks.pattern if masks is not None and masks.pattern else "2:4"))
    rows: dict[str, MACRow] = {}
    handles = _install(model, rows)
    try:
        model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    finally:
        for h in handles:
            h.remove()
    report = MACReport(pattern=str(pattern))
    for name, row in rows.items():
        if row.kind != "attn_matmul":
            row.eligible, row.reason = _legality(name, model.get_submodule(name), masks, pattern)
        eligible = row.dense_macs if row.eligible else 0
        row.sparse_macs = sparse_macs(row.dense_macs, eligible, pattern)
        report.rows.append(row)
        report.dense_macs += row.dense_macs
        report.eligible_macs += eligible
        report.sparse_macs += row.sparse_macs
    return report


def macs_vs_dense(
    model: nn.Module, inputs: Mapping | torch.Tensor, masks: Masks | None = None,
    pattern: KeepPattern | str | None = None, tome_r: int = 0,
) -> dict:  # fmt: skip
    """The deployed graph against the dense model: sparse MACs with `tome_r` tokens merged per block (ToMe applied
    for the count and removed after; 0 = none) over the dense MACs without ToMe, the "−x% MACs" of a paper table.
    `model` must come without ToMe. Returns `{dense_macs, sparse_macs, sparse_macs_without_tome, ratio, tome_r}`."""
    plain = mac_report(model, inputs, masks=masks, pattern=pattern)
    merged = plain
    if tome_r:
        apply_tome(model, r=tome_r)
        try:
            merged = mac_report(model, inputs, masks=masks, pattern=pattern)
        finally:
            remove_tome(model)
    return {"dense_macs": plain.dense_macs, "sparse_macs": merged.sparse_macs, "tome_r": tome_r,
            "sparse_macs_without_tome": plain.sparse_macs, "ratio": merged.sparse_macs / plain.dense_macs}  # fmt: skip
