"""The prunable-layer registry: which weights of a model are pruned, their role and their matrix view.

Layers are found by module **type** (Linear, Conv2d, transformers' Conv1D) and classified by **role patterns**
on path components, never by hard-coded full names, so transformers 5 ViT (`attention.q_proj`, `mlp.fc1`),
BERT-family (`attention.self.query`, `intermediate.dense`, `output.dense`), timm (`attn.qkv`, `mlp.fc1`),
ResNet/ConvNeXt, GPT-2 (fused Conv1D `c_attn`) and the decoder LMs (Llama / Mistral / Qwen / Gemma `q/k/v/o_proj`,
`gate/up/down_proj`; OPT `fc1/fc2`; fused `qkv_proj`, `gate_up_proj`, `query_key_value`) all work (docs/algorithms.md
§1.1–1.3, §12; docs/llm.md).
"""

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.sparse import SparseSemiStructuredTensor

from .constants import ROLES
from .errors import ConfigError, MPPruneWarning, NoPrunableLayersError


try:  # transformers' GPT-2 style Conv1D stores W as (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a core dependency
    Conv1D = ()  # type: ignore[assignment,misc]

_KINDS = {nn.Linear: "linear", nn.Conv2d: "conv2d"}
_TYPE_NAMES = ("Linear", "Conv2d", "Conv1D")

# Path-component vocabularies (matched against whole components, e.g. "fc1" but not "fc10x").
_HEAD = {"classifier", "head", "heads", "lm_head", "embed_out", "score", "fc", "qa_outputs", "cls", "head_fc"}
# OPT's project_in / project_out map between the word-embedding width and the hidden width (embedding side).
_EMBED = {
    "embeddings", "embedding", "patch_embed", "patch_embeddings", "embedder", "stem", "conv_stem", "wte",
    "project_in", "project_out",
}  # fmt: skip
_ATTN = {
    "attn", "attention", "self_attn", "self_attention", "q_proj", "k_proj", "v_proj", "o_proj", "out_proj",
    "query", "key", "value", "qkv", "c_attn", "in_proj", "crossattention", "qkv_proj", "query_key_value",
}  # fmt: skip
_MLP = {
    "mlp", "ffn", "feed_forward", "feedforward", "intermediate", "fc1", "fc2", "pwconv1", "pwconv2",
    "c_fc", "up_proj", "down_proj", "gate_proj", "gate_up_proj", "w1", "w2", "w3", "dense_h_to_4h", "dense_4h_to_h",
}  # fmt: skip
# Sibling names that form a q/k/v triple for the fused spectral view.
_QKV_TRIPLES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"))


def classify_role(name: str) -> str:
    """Role of a module from its qualified name: 'head', 'embed', 'attn', 'mlp' or 'other'."""
    parts = name.split(".")
    # A head sits outside the repeated blocks: no numeric component before it (`classifier.1` is a head).
    for i, p in enumerate(parts):
        if p in _HEAD and not any(q.isdigit() for q in parts[:i]):
            return "head"
    if any(p in _EMBED for p in parts):
        return "embed"
    if any(p in _ATTN for p in parts):
        return "attn"
    if any(p in _MLP for p in parts):
        return "mlp"
    # BERT/legacy-ViT block output `layer.{i}.output.dense` is the second MLP matrix (fc2).
    for i, p in enumerate(parts[1:], start=1):
        if p == "output" and parts[i - 1].isdigit():
            return "mlp"
    return "other"


def dense_view(weight: torch.Tensor) -> torch.Tensor:
    """A weight as an ordinary tensor: 2:4 semi-structured weights (`to_semi_structured`) support only their kernels'
    inference ops, so every reader that compares, counts or reshapes goes through their dense copy."""
    return weight.to_dense() if isinstance(weight, SparseSemiStructuredTensor) else weight


def module_kind(module: nn.Module) -> str | None:
    if Conv1D and isinstance(module, Conv1D):
        return "conv1d"
    for cls, kind in _KINDS.items():
        if isinstance(module, cls):
            return kind
    return None


@dataclass(eq=False)
class PrunableLayer:
    """One registered weight. Masks are stored in the **weight's own shape**; `matrix_view` maps any
    weight-shaped tensor to the `(out, in)` matrix of docs/algorithms.md §1.2 (a view, never a copy)."""

    name: str
    module: nn.Module = field(repr=False)
    kind: str
    role: str

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def matrix_view(self, t: torch.Tensor | None = None) -> torch.Tensor:
        t = self.module.weight if t is None else t
        if self.kind == "conv1d":
            return t.t()  # (in, out) -> (out, in)
        if self.kind == "conv2d":
            return t.reshape(t.shape[0], -1)  # (C_out, C_in/g * kh * kw), channel-major then kernel row/col
        return t

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        """Inverse of `matrix_view`: a matrix-shaped tensor back to the weight's shape."""
        if self.kind == "conv1d":
            return m.t()
        return m.reshape(self.module.weight.shape)

    @property
    def shape(self) -> tuple[int, int]:
        """(M, N) = (outputs, inputs) of the matrix view."""
        m = self.matrix_view()
        return int(m.shape[0]), int(m.shape[1])

    @property
    def numel(self) -> int:
        return self.module.weight.numel()


class LayerSet:
    """Ordered registry of prunable layers (`named_modules()` order) plus a record of what was excluded."""

    def __init__(self, layers: list[PrunableLayer], excluded: dict[str, str] | None = None):
        self.layers = list(layers)
        self._by_name = {layer.name: layer for layer in self.layers}
        self.excluded = dict(excluded or {})  # name -> reason

    def __iter__(self) -> Iterator[PrunableLayer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> PrunableLayer:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a registered layer; known: {self.names[:10]}...") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def total_params(self) -> int:
        return sum(layer.numel for layer in self.layers)

    def by_role(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {r: [] for r in ROLES}
        for layer in self.layers:
            out[layer.role].append(layer.name)
        return out

    def fused_qkv_groups(self) -> list[tuple[str, list[PrunableLayer]]]:
        """Sibling q/k/v Linears with equal input width, as (parent_name.qkv, [q, k, v]) groups."""
        groups = []
        for q, k, v in _QKV_TRIPLES:
            for layer in self.layers:
                if not layer.name.endswith("." + q) and layer.name != q:
                    continue
                parent = layer.name[: -len(q)]
                members = [self._by_name.get(parent + s) for s in (q, k, v)]
                if all(m is not None and m.kind == "linear" for m in members):
                    if len({m.shape[1] for m in members}) == 1:  # type: ignore[union-attr]
                        groups.append((parent + "qkv", members))
        return groups  # type: ignore[return-value]

    def explain(self) -> str:
        """Human-readable table of what matched (with role and shape) and what was excluded, and why."""
        lines = [f"{len(self)} prunable layers, {self.total_params:,} weights"]
        for layer in self.layers:
            lines.append(f"  + {layer.name:<60} {layer.kind:<7} {layer.role:<6} {layer.shape}")
        for name, reason in self.excluded.items():
            lines.append(f"  - {name:<60} {reason}")
        return "\n".join(lines)


# Roles left dense unless a target names them explicitly (a module name, "re:" or "role:" pattern; a bare type name
# such as "Linear" is not explicit): the task head and the input embeddings, as llm-compressor's `ignore` defaults.
DEFAULT_SKIPPED_ROLES = {
    "head": "task head: not pruned unless targeted explicitly (e.g. targets=['Linear', 'role:head'])",
    "embed": "input embedding: not pruned unless targeted explicitly (e.g. targets=['Linear', 'Conv2d', 'role:embed'])",
}


def _compile(pattern: str, model_names: set[str]):
    """Turn one target/ignore pattern into a predicate over (name, module, role)."""
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as e:
            raise ConfigError(f"invalid regex in pattern {pattern!r}: {e}") from e
        return lambda name, module, role: rx.search(name) is not None
    if pattern.startswith("role:"):
        role = pattern[5:]
        if role not in ROLES:
            raise ConfigError(f"unknown role in pattern {pattern!r}; roles are {', '.join(ROLES)}")
        return lambda name, module, r: r == role
    if pattern in _TYPE_NAMES:
        return lambda name, module, role: (
            type(module).__name__ == pattern or (pattern != "Conv1D" and module_kind(module) == pattern.lower())
        )
    if pattern in model_names:
        return lambda name, module, role: name == pattern
    raise ConfigError(
        f"pattern {pattern!r} is not a module type ({', '.join(_TYPE_NAMES)}), a module name of this model, "
        f"'role:<{'|'.join(ROLES)}>' or 're:<regex>'. Example: targets=['Linear'], ignore=['re:classifier$']"
    )


def _tied_to_embedding(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def discover_layers(model: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None) -> LayerSet:
    """Find every prunable Linear/Conv2d/Conv1D weight of `model`.

    Args:
        model (`torch.nn.Module`): any module; a [`~transformers.PreTrainedModel`] works as is.
        targets (`list[str]`, *optional*): restrict to layers matching any pattern (type name, exact module name,
            `role:<role>` or `re:<regex>`). Default: all candidate layers except the task head and the input
            embeddings (roles "head" / "embed"), which are pruned only when a target other than a bare type name
            matches them (e.g. `targets=["Linear", "Conv2d", "role:head", "role:embed"]`). Every layer left out is
            listed with its reason in `LayerSet.excluded`.
        ignore (`list[str]`, *optional*): exclude layers matching any pattern.

    Raises:
        NoPrunableLayersError: when nothing matched `targets`, or everything was ignored.
        ConfigError: for a pattern of unknown form or an invalid regex.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a torch.nn.Module, got {type(model).__name__}")
    named = [(n, m) for n, m in model.named_modules() if n]
    names = {n for n, _ in named}
    tgt = [(_compile(p, names), p) for p in targets] if targets else None
    ign = [(_compile(p, names), p) for p in (ignore or [])]
    tied = _tied_to_embedding(model)
    seen: set[int] = set()
    layers, excluded, candidates = [], {}, 0
    ign_hits = {p: 0 for _, p in ign}
    for name, module in named:
        kind = module_kind(module)
        if kind is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        if module.weight.numel() == 0:  # e.g. Linear(0, n): nothing to prune, and counts would divide by zero
            excluded[name] = f"empty weight {tuple(module.weight.shape)}: nothing to prune"
            continue
        if id(module.weight) in tied:
            excluded[name] = "weight tied to an input embedding"
            continue
        if id(module.weight) in seen:
            excluded[name] = "weight shared with an earlier layer"
            continue
        seen.add(id(module.weight))
        role = classify_role(name)
        matched = [p for pred, p in tgt if pred(name, module, role)] if tgt is not None else None
        if matched is not None and not matched:
            continue
        candidates += 1
        hit = [p for pred, p in ign if pred(name, module, role)]
        if hit:
            for p in hit:
                ign_hits[p] += 1
            excluded[name] = f"ignored by {hit[0]!r}"
            continue
        if role in DEFAULT_SKIPPED_ROLES and not any(p not in _TYPE_NAMES for p in matched or []):
            excluded[name] = DEFAULT_SKIPPED_ROLES[role]
            continue
        layers.append(PrunableLayer(name, module, kind, role))
    for p, count in ign_hits.items():
        if count == 0:
            warnings.warn(f"ignore pattern {p!r} matched no layer", MPPruneWarning, stacklevel=2)
    if not layers:
        skipped = [n for n, r in excluded.items() if r in DEFAULT_SKIPPED_ROLES.values()]
        if skipped and len(skipped) == candidates:
            raise NoPrunableLayersError(
                f"only task-head / embedding layers matched ({skipped[:5]}), and those are not pruned by default; "
                "target them explicitly, e.g. targets=['role:head'] or targets=[<module name>]"
            )
        if candidates:
            raise NoPrunableLayersError(f"all {candidates} candidate layers were excluded by ignore={ignore}")
        what = f"targets={targets}" if targets else "no Linear/Conv2d/Conv1D layers"
        raise NoPrunableLayersError(
            f"no prunable layer found in {type(model).__name__} ({what}); "
            "check the names with `[n for n, _ in model.named_modules()]`"
        )
    return LayerSet(layers, excluded)
