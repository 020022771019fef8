"""Token merging (ToMe) for transformers ViT-family models, written from the ToMe paper (Bolya et al., ICLR 2023).

docs/algorithms.md §10.1. In every block, after the attention residual add and before the MLP, `r` tokens are merged:

* **metric**: the block's attention keys averaged over heads, cosine-normalised;
* **bipartite soft matching**: the non-protected tokens are split alternately into A (even) and B (odd); each A
  token takes its most similar B token; the `r` A tokens with the highest similarity are merged into their B
  partners; the class token (and DeiT's distillation token) is protected and stays in front;
* **size-weighted merging**: a token carries the number of patches it stands for (`size`); a merged token is the
  size-weighted mean and its size is the sum;
* **proportional attention**: the attention logits get `+ log(size)` of the key tokens, passed as an additive
  float mask to the model's attention function (SDPA by default).

Decisions [D] (also in the record returned by `apply_tome`):
* `r` per block is capped at half the mergeable tokens, `min(r, (N_l - protected) // 2)`; `apply_tome` raises when
  `r` exceeds that cap already for the first block (`r` too large for the token count).
* Unmerged A tokens keep their original relative order (then the B tokens), so outputs are deterministic;
  score ties are broken by token index (stable sort).
* Only `forward` of the `*Layer` and `*Attention` modules is replaced (instance attributes); no weight changes, so
  ToMe composes with masks and 2:4 conversion. `remove_tome` deletes the replacements, restoring the class
  forwards bit-identically. With `r = 0` the patched model is bit-identical to the unpatched one.
"""

import logging
import sys
import types
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..core.errors import ConfigError


logger = logging.getLogger(__name__)

_LAYERS = ("ViTLayer", "DeiTLayer")
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


# ---- patched forwards --------------------------------------------------------------------------------------------
@dataclass
class _ToMeState:
    r: int
    protected: int
    size: torch.Tensor | None = None
    metric: torch.Tensor | None = None
    token_counts: list[int] = field(default_factory=list)  # tokens entering each block in the last forward


def _attention_forward(self, hidden_states, attention_mask=None, **kwargs):
    """ViTAttention.forward plus: key metric saved for merging, `log(size)` added to the attention logits."""
    state: _ToMeState = getattr(self, _ATTR)
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    state.metric = key_states.mean(dim=1)  # (B, N, head_dim): keys averaged over heads
    if state.size is not None:
        _check_masks_nothing(attention_mask)
        attention_mask = state.size.log().to(query_states.dtype).transpose(1, 2).unsqueeze(1)  # (B, 1, 1, N)
    eager = sys.modules[type(self).__module__].eager_attention_forward
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager)
    attn_output, attn_weights = interface(
        self,
        query_states,
        key_states,
        value_states,
        attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=self.scaling,
        **kwargs,
    )
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


def _layer_forward(self, hidden_states, attention_mask=None, **kwargs):
    """ViTLayer.forward with a ToMe merge after the attention residual add, before the MLP."""
    state: _ToMeState = getattr(self, _ATTR)
    if self._mpprune_tome_index == 0:
        state.size, state.token_counts = None, []
    elif state.size is not None and tuple(state.size.shape[:2]) != tuple(hidden_states.shape[:2]):
        state.size = None  # a forward that skipped blocks: start from unit sizes
    state.token_counts.append(int(hidden_states.shape[1]))
    residual = hidden_states
    hidden_states = self.layernorm_before(hidden_states)
    hidden_states, _ = self.attention(hidden_states, attention_mask, **kwargs)
    hidden_states = self.dropout(hidden_states)
    hidden_states = hidden_states + residual
    if state.r > 0:
        hidden_states, state.size = merge_tokens(hidden_states, state.size, state.metric, state.r, state.protected)
    state.metric = None
    residual = hidden_states
    hidden_states = self.layernorm_after(hidden_states)
    hidden_states = self.mlp(hidden_states)
    hidden_states = self.dropout(hidden_states)
    return hidden_states + residual


# ---- glue ----------------------------------------------------------------------------------------------------
def _find(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], nn.Module]:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"apply_tome needs a torch.nn.Module, got {type(model).__name__}")
    layers = [(n, m) for n, m in model.named_modules() if type(m).__name__ in _LAYERS]
    embeds = [m for m in model.modules() if type(m).__name__ in _EMBEDDINGS]
    if not layers or len(embeds) != 1:
        raise ConfigError(
            f"ToMe supports transformers ViT-family models ({', '.join(_LAYERS)}); {type(model).__name__} has "
            f"{len(layers)} such layers and {len(embeds)} ViT/DeiT embeddings. Use ViTModel/ViTForImageClassification "
            "or the DeiT equivalents."
        )
    if "MaskedImageModeling" in type(model).__name__:
        raise ConfigError(f"ToMe cannot be used with {type(model).__name__}: its decoder needs every patch token")
    for name, layer in layers:
        att = getattr(layer, "attention", None)
        if not all(hasattr(att, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "config")):
            raise ConfigError(f"layer {name!r} does not have the transformers-5 ViT attention layout (q/k/v/o_proj)")
        impl = att.config._attn_implementation
        if impl not in _ATTN_IMPLS:
            raise ConfigError(
                f"ToMe needs an attention implementation that takes an additive float bias; got {impl!r}. "
                "Load the model with attn_implementation='sdpa' or 'eager'."
            )
    return layers, embeds[0]


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


def apply_tome(model: nn.Module, r: int = 8) -> dict:
    """Patch ToMe into every ViT/DeiT block of `model` in place and return a ledger record.

    Args:
        model (`torch.nn.Module`): a transformers ViT/DeiT model (`ViTModel`, `ViTForImageClassification`, DeiT...).
        r (`int`, defaults to 8): tokens merged per block (docs/algorithms.md §10.1 uses 8 for ViT-B/DeiT).

    Raises:
        ConfigError: `r` negative or not an int, `r` larger than half the mergeable tokens of the first block, a
            model without ViT/DeiT layers, or an attention implementation that takes no float bias.
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ConfigError(f"ToMe r must be an int >= 0 (tokens merged per block), got {r!r}")
    layers, embeddings = _find(model)
    protected = 1 + int(getattr(embeddings, "distillation_token", None) is not None)
    n0 = int(embeddings.patch_embeddings.num_patches) + protected
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
        _patch(layer, _layer_forward, state)
        layer._mpprune_tome_index = i
        _patch(layer.attention, _attention_forward, state)
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
        _unpatch(layer.attention)
        _unpatch(layer)
    return model


def tome_state(model: nn.Module) -> _ToMeState | None:
    """The live ToMe state of a patched model (`token_counts` of the last forward), or None."""
    patched = model.__dict__.get(_ATTR)
    return None if patched is None else patched[0]
