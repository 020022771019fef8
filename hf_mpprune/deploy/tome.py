"""Token merging (ToMe) for transformers ViT / DeiT and timm vision transformers, written from the ToMe paper (Bolya et al., ICLR 2023).

docs/algorithms.md §10.1. In every block, after the attention residual add and before the MLP, `r` tokens are merged:

* **metric**: the block's attention keys averaged over heads, cosine-normalised;
* **bipartite soft matching**: the non-protected tokens are split alternately into A (even) and B (odd); each A
  token takes its most similar B token; the `r` A tokens with the highest similarity are merged into their B
  partners; the class token (and DeiT's distillation token) is protected and stays in front;
* **size-weighted merging**: a token carries the number of patches it stands for (`size`); a merged token is the
  size-weighted mean and its size is the sum;
* **proportional attention**: the attention logits get `+ log(size)` of the key tokens, passed as an additive
  float mask to the model's own attention (SDPA by default).

What is the model's own and what is ours: the attention modules are never replaced. Both families expose what ToMe
needs inside attention: an attention-mask argument that reaches the attention function (the size bias goes there)
and a key projection (`k_proj`, or timm's fused `qkv`) whose output a forward hook reads for the metric. No block
exposes a point between the attention residual add and the MLP, so the block `forward` is ours (`_hf_layer_forward`,
`_timm_block_forward`: the upstream forward with the merge inserted). `tests/test_tome.py` pins the SHA-256 of the
upstream forward source each was written against (`upstream_forward_sha256`) and checks that `r = 0` is
bit-identical, so a change upstream fails a test instead of drifting silently.

Decisions [D] (also in the record returned by `apply_tome`):
* `r` per block is capped at half the mergeable tokens, `min(r, (N_l - protected) // 2)`; `apply_tome` raises when
  `r` exceeds that cap already for the first block (`r` too large for the token count).
* Unmerged A tokens keep their original relative order (then the B tokens), so outputs are deterministic;
  score ties are broken by token index (stable sort).
* Only the blocks' `forward` is replaced (instance attributes) and a hook added on the key projection; no weight changes, so
  ToMe composes with masks and 2:4 conversion. `remove_tome` deletes the replacements, restoring the class
  forwards bit-identically. With `r = 0` the patched model is bit-identical to the unpatched one.
"""

import hashlib
import inspect
import logging
import types
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import ConfigError


logger = logging.getLogger(__name__)

_EMBEDDINGS = ("ViTEmbeddings", "DeiTEmbeddings")
_ATTN_IMPLS = ("eager", "sdpa", None)
_ATTR = "_mpprune_tome"


# ---- pure math ---------------------------------------------------------------------------------------------------
def tome_token_schedule(n0: int, r: int, depth: int, protected: int = 1) -> list[int]:
    """Tokens entering each block's attention: `N_l = N_{l-1} - min(r, (N_{l-1} - protected) // 2)`."""
    counts, n = [], n0
    for _ in range(depth):
        counts.append(n)
        n -= min(r, max(0, n - protected) // 2)
    return counts


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def _split_by_rank(best: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(src, unm)` for scores `best` (B, M): `src` = the `r` highest scores (descending, ties by lower index first,
    as a stable descending argsort), `unm` = the other indices in ascending order.

    Computed by pairwise comparison instead of `sort`, so that it traces to ONNX (which has no stable sort); the
    indices are exactly those of `best.argsort(descending=True, stable=True)`. Cost O(M^2) per image (M ≈ N/2).
    """
    m = best.shape[-1]
    pos = torch.arange(m, device=best.device)
    bi, bj = best.unsqueeze(-1), best.unsqueeze(-2)  # i = row (the ranked element), j = column (a competitor)
    before = (bj > bi) | ((bj == bi) & (pos.unsqueeze(0) < pos.unsqueeze(1)))
    rank = before.sum(dim=-1)  # (B, M): position in the stable descending order
    kept = rank >= r
    final = torch.where(kept, r + kept.long().cumsum(dim=-1) - 1, rank)  # unmerged: r.. in index order
    order = torch.empty_like(final).scatter_(1, final, pos.expand_as(final).contiguous())
    return order[:, :r], order[:, r:]


def merge_tokens(
    x: torch.Tensor, size: torch.Tensor | None, metric: torch.Tensor, r: int, protected: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `r` tokens of `x` (B, N, C) by bipartite soft matching on `metric` (B, N, d).

    Returns `(x', size')` with `N - min(r, (N - protected) // 2)` tokens: the protected prefix, the unmerged A
    tokens (original order), then the B tokens (size-weighted means where something was merged into them).
    """
    b, n, c = x.shape
    r = min(r, max(0, n - protected) // 2)
    if size is None:
        size = torch.ones(b, n, 1, dtype=x.dtype, device=x.device)
    if r <= 0:
        return x, size
    k = nn.functional.normalize(metric[:, protected:].float(), dim=-1)
    scores = k[:, ::2] @ k[:, 1::2].transpose(-1, -2)  # (B, |A|, |B|) cosine similarities
    best, partner = scores.max(dim=-1)
    src, unm = _split_by_rank(best, r)
    dst = partner.gather(1, src)

    xt, st = x[:, protected:], size[:, protected:]
    xa, xb, sa, sb = xt[:, ::2], xt[:, 1::2], st[:, ::2], st[:, 1::2]
    idx = dst.unsqueeze(-1)
    weighted = (xb * sb).scatter_add(1, idx.expand(-1, -1, c), _gather(xa * sa, src))
    new_sb = sb.scatter_add(1, idx, _gather(sa, src))
    received = torch.zeros_like(sb, dtype=torch.bool).scatter(1, idx, True)
    new_xb = torch.where(received, weighted / new_sb, xb)
    x_out = torch.cat([x[:, :protected], _gather(xa, unm), new_xb], dim=1)
    s_out = torch.cat([size[:, :protected], _gather(sa, unm), new_sb], dim=1)
    return x_out, s_out


# ---- attention masks ------------------------------------------------------------------------------------------
def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _check_masks_nothing(attention_mask: torch.Tensor | None) -> None:
    """Merged tokens have no per-token mask, so only a mask that hides nothing may reach a merged block.

    transformers 5 builds an all-visible boolean mask while tracing (`torch.export`, ONNX dynamo) even when the
    caller passes none; that mask is dropped (dropping it is exact). In eager mode a mask that hides any key
    (boolean False, or an additive float entry other than 0) raises `ConfigError`. While tracing the values are
    symbolic: the mask is accepted (boolean for SDPA, additive float for eager attention: the forms transformers
    builds) and a runtime assertion that it hides nothing is recorded in the graph.
    """
    if attention_mask is None:
        return
    visible = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
    if _tracing():
        torch._assert_async(visible.all(), "ToMe: the attention mask hides tokens; call the model without one")
        return
    if not bool(visible.all()):
        raise ConfigError(
            "ToMe cannot combine an attention_mask that hides tokens with merged tokens (merging changes which "
            "token each mask column means); call the model without attention_mask, or remove ToMe with remove_tome"
        )


# ---- patched blocks ------------------------------------------------------------------------------------------------
@dataclass
class _ToMeState:
    r: int
    protected: int
    size: torch.Tensor | None = None
    metric: torch.Tensor | None = None
    token_counts: list[int] = field(default_factory=list)  # tokens entering each block in the last forward


def size_bias(size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Proportional attention: the additive `log(size)` bias (B, 1, 1, N) on the key tokens, passed to the model's
    own attention as its (float) attention mask."""
    return size.log().to(dtype).transpose(1, 2).unsqueeze(1)


def _begin(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[_ToMeState, torch.Tensor | None]:
    """Start a block: reset the state in block 0, record the token count, and turn the sizes into the mask."""
    state: _ToMeState = getattr(block, _ATTR)
    if block._mpprune_tome_index == 0:
        state.size, state.token_counts = None, []
    elif state.size is not None and tuple(state.size.shape[:2]) != tuple(x.shape[:2]):
        state.size = None  # a forward that skipped blocks: start from unit sizes
    state.token_counts.append(int(x.shape[1]))
    if state.size is None:
        return state, mask
    _check_masks_nothing(mask)
    return state, size_bias(state.size, x.dtype)


def _merge(state: _ToMeState, x: torch.Tensor) -> torch.Tensor:
    if state.r > 0:
        x, state.size = merge_tokens(x, state.size, state.metric, state.r, state.protected)
    state.metric = None
    return x


def _hf_layer_forward(self, hidden_states, attention_mask=None, **kwargs):
    """transformers' ViTLayer / DeiTLayer forward with the merge after the attention residual add. The attention is
    the model's own, given the size bias as its attention mask; the keys come from a hook on `k_proj`."""
    state, attention_mask = _begin(self, hidden_states, attention_mask)
    residual = hidden_states
    hidden_states, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
    hidden_states = _merge(state, self.dropout(hidden_states) + residual)
    return self.dropout(self.mlp(self.layernorm_after(hidden_states))) + hidden_states


def _timm_block_forward(self, x, attn_mask=None, **kwargs):
    """timm's vision_transformer.Block forward with the merge after the attention residual add. The attention is
    timm's own, given the size bias as `attn_mask`; the keys come from a hook on the fused `qkv`."""
    state, attn_mask = _begin(self, x, attn_mask)
    x = _merge(state, x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, **kwargs))))
    return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


# Key hooks read the state and head count from the projection module itself (no closure), so a deep copy of a
# patched model (e.g. a teacher copied after apply_tome) writes into its own state.
def _hf_keys(module, args, out):  # k_proj output (B, N, H*d) -> keys averaged over heads (B, N, d)
    getattr(module, _ATTR).metric = out.unflatten(-1, (module._mpprune_tome_heads, -1)).mean(dim=2)


def _timm_keys(module, args, out):  # fused qkv output (B, N, 3*H*d): the k third, averaged over heads (pre k_norm)
    getattr(module, _ATTR).metric = out.unflatten(-1, (3, module._mpprune_tome_heads, -1))[:, :, 1].mean(dim=2)


@dataclass(frozen=True)
class _Family:
    """Where a model family exposes what ToMe needs: its blocks, the key projection inside a block, the token
    counts, and the one forward ToMe has to replace (no block exposes a hook between attention and MLP)."""

    name: str
    forward: object
    keys: object
    projection: str  # path of the key (or fused qkv) projection inside a block
    heads: str  # path of the head count inside a block
    written_against: str  # `upstream_forward_sha256` of the upstream forward `forward` replaces


_HF_VIT = "33a0d8fea42bee15ba0af2613126b7cd34fe4ff0da2468e7815fdf57d5c74481"  # transformers 5.25 ViT/DeiTLayer
_TIMM_BLOCK = "2cb6f77c3039d89cb550de426742c13fd3d322b693dea0bdadedc6ad162a04b9"  # timm 1.0.30 Block
_FAMILIES = {
    ("transformers", "ViTLayer"): _Family("transformers ViT", _hf_layer_forward, _hf_keys, "attention.k_proj",
                                          "attention.config.num_attention_heads", _HF_VIT),
    ("transformers", "DeiTLayer"): _Family("transformers DeiT", _hf_layer_forward, _hf_keys, "attention.k_proj",
                                           "attention.config.num_attention_heads", _HF_VIT),
    ("timm", "Block"): _Family("timm ViT", _timm_block_forward, _timm_keys, "attn.qkv", "attn.num_heads",
                               _TIMM_BLOCK),
}  # fmt: skip


def block_family(module: nn.Module) -> _Family | None:
    """The ToMe family of a transformer block (transformers ViT / DeiT layers, timm's vision_transformer.Block)."""
    return _FAMILIES.get((type(module).__module__.split(".")[0], type(module).__name__))


def upstream_forward_sha256(cls: type) -> str:
    """SHA-256 of the source of a block class's `forward`: the code `_FAMILIES`' forwards were written against."""
    return hashlib.sha256(inspect.getsource(cls.forward).encode()).hexdigest()


# ---- glue ------------------------------------------------------------------------------------------------------------
def _get(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _tokens(model: nn.Module, family: _Family) -> tuple[int, int]:
    """(tokens entering block 0, protected prefix tokens) from the model's embeddings."""
    if family.name.startswith("timm"):
        vit = next(m for m in model.modules() if hasattr(m, "num_prefix_tokens") and hasattr(m, "patch_embed"))
        return int(vit.patch_embed.num_patches) + int(vit.num_prefix_tokens), int(vit.num_prefix_tokens)
    embeds = [m for m in model.modules() if type(m).__name__ in _EMBEDDINGS]
    if len(embeds) != 1:
        raise ConfigError(f"{type(model).__name__} has {len(embeds)} ViT/DeiT embeddings; ToMe needs exactly one")
    protected = 1 + int(getattr(embeds[0], "distillation_token", None) is not None)
    return int(embeds[0].patch_embeddings.num_patches) + protected, protected


def _find(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], _Family]:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"apply_tome needs a torch.nn.Module, got {type(model).__name__}")
    layers = [(n, m) for n, m in model.named_modules() if block_family(m) is not None]
    if not layers or len({block_family(m).name for _, m in layers}) != 1:
        raise ConfigError(
            f"ToMe supports transformers ViT / DeiT models and timm vision transformers (also through "
            f"TimmWrapperForImageClassification); {type(model).__name__} has {len(layers)} such blocks"
        )
    if "MaskedImageModeling" in type(model).__name__:
        raise ConfigError(f"ToMe cannot be used with {type(model).__name__}: its decoder needs every patch token")
    family = block_family(layers[0][1])
    if upstream_forward_sha256(type(layers[0][1])) != family.written_against:
        logger.warning(
            "%s.forward differs from the version ToMe's block forward was written against: the installed library "
            "changed it; check the outputs (r=0 must be identical to the model without ToMe)",
            type(layers[0][1]).__name__,
        )
    for name, layer in layers:
        att = getattr(layer, "attention", None)
        if (
            family.keys is _hf_keys
            and getattr(getattr(att, "config", None), "_attn_implementation", None) not in _ATTN_IMPLS
        ):
            raise ConfigError(
                f"ToMe needs an attention implementation that takes an additive float bias; got "
                f"{att.config._attn_implementation!r} in {name!r}. Load the model with attn_implementation='sdpa' or 'eager'."
            )
    return layers, family


def _patch(module: nn.Module, fn, state: _ToMeState) -> None:
    module._mpprune_tome_saved = module.__dict__.get("forward")
    setattr(module, _ATTR, state)
    module.forward = types.MethodType(fn, module)


def _unpatch(module: nn.Module) -> None:
    saved = module.__dict__.pop("_mpprune_tome_saved", None)
    module.__dict__.pop("forward", None)
    if saved is not None:
        module.forward = saved
    module.__dict__.pop(_ATTR, None)
    module.__dict__.pop("_mpprune_tome_index", None)
    for handle in module.__dict__.pop("_mpprune_tome_hooks", []):
        handle.remove()
    family = block_family(module)
    if family is not None:
        proj = _get(module, family.projection)
        proj.__dict__.pop(_ATTR, None)
        proj.__dict__.pop("_mpprune_tome_heads", None)


def apply_tome(model: nn.Module, r: int = 8) -> dict:
    """Patch ToMe into every ViT / DeiT / timm ViT block of `model` in place and return a ledger record.

    Args:
        model (`torch.nn.Module`): a transformers ViT/DeiT model (`ViTModel`, `ViTForImageClassification`, DeiT...)
            or a timm vision transformer (also inside `TimmWrapperForImageClassification`).
        r (`int`, defaults to 8): tokens merged per block (docs/algorithms.md §10.1 uses 8 for ViT-B/DeiT).

    Raises:
        ConfigError: `r` negative or not an int, `r` larger than half the mergeable tokens of the first block, a
            model without such blocks, or an attention implementation that takes no float bias.
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ConfigError(f"ToMe r must be an int >= 0 (tokens merged per block), got {r!r}")
    layers, family = _find(model)
    n0, protected = _tokens(model, family)
    cap = (n0 - protected) // 2
    if r > cap:
        raise ConfigError(
            f"ToMe r={r} is too large: the first block has {n0 - protected} mergeable tokens, so r may be at most "
            f"{cap} (half of them). Use a smaller r."
        )
    if getattr(model, _ATTR, None) is not None:
        remove_tome(model)
    state = _ToMeState(r=r, protected=protected)
    for i, (_, layer) in enumerate(layers):
        _patch(layer, family.forward, state)
        layer._mpprune_tome_index = i
        proj = _get(layer, family.projection)
        setattr(proj, _ATTR, state)
        proj._mpprune_tome_heads = int(_get(layer, family.heads))
        layer._mpprune_tome_hooks = [proj.register_forward_hook(family.keys)]
    schedule = tome_token_schedule(n0, r, len(layers), protected)
    record = {
        "method": "tome",
        "r": r,
        "protected_tokens": protected,
        "num_blocks": len(layers),
        "tokens_in": n0,
        "token_schedule": schedule,
        "tokens_out": schedule[-1] - min(r, (schedule[-1] - protected) // 2),
        "layers": [n for n, _ in layers],
        "family": family.name,
        "decisions": {
            "metric": "keys averaged over heads, cosine",
            "split": "alternate A (even) / B (odd) over non-protected tokens",
            "merge_location": "after the attention residual add, before the MLP",
            "merge": "size-weighted mean",
            "proportional_attention": "additive log(size) bias on key tokens",
            "r_cap": "min(r, (N_l - protected) // 2) per block; error if r exceeds it in block 0",
            "order": "protected, unmerged A (original order), B",
        },
    }
    object.__setattr__(model, _ATTR, (state, [m for _, m in layers]))
    logger.info("ToMe r=%d on %d blocks: tokens %s", r, len(layers), schedule)
    return record


def remove_tome(model: nn.Module) -> nn.Module:
    """Undo `apply_tome`: restore every patched forward (bit-identical outputs). A no-op without ToMe."""
    patched = model.__dict__.pop(_ATTR, None)
    if patched is None:
        return model
    for layer in patched[1]:
        _unpatch(layer)
    return model


def tome_state(model: nn.Module) -> _ToMeState | None:
    """The live ToMe state of a patched model (`token_counts` of the last forward), or None."""
    patched = model.__dict__.get(_ATTR)
    return None if patched is None else patched[0]
