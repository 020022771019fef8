import copy

import pytest
import torch
from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification
from transformers.models.deit.modeling_deit import DeiTLayer
from transformers.models.vit.modeling_vit import ViTLayer

from hf_mpprune import ConfigError, apply_tome, remove_tome
from hf_mpprune.deploy.tome import (
    block_family,
    merge_tokens,
    size_bias,
    tome_state,
    tome_token_schedule,
    upstream_forward_sha256,
)
from tests.kn_helpers import two_four_masks
from tests.tiny_models import vit_inputs


def _vit(layers=4, cls=ViTForImageClassification, cfg_cls=ViTConfig):
    torch.manual_seed(0)
    cfg = cfg_cls(
        image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=128, num_labels=10,
    )  # fmt: skip
    return cls(cfg).eval()


@torch.no_grad()
def _run(model, x, **kw):
    return model(**x, **kw)


def test_token_count_per_block_is_n0_minus_r_l():
    model, x = _vit(layers=4), vit_inputs(batch=3)
    record = apply_tome(model, r=8)
    out = _run(model, x, output_hidden_states=True)
    counts = tome_state(model).token_counts
    assert counts == [65 - 8 * layer for layer in range(4)] == record["token_schedule"]
    # hidden_states[l] is the output of block l-1: N_0 - r*l tokens after l blocks
    assert [h.shape[1] for h in out.hidden_states] == [65 - 8 * layer for layer in range(5)]
    assert record["tokens_out"] == 33 and record["protected_tokens"] == 1
    assert out.logits.shape == (3, 10) and torch.isfinite(out.logits).all()


def test_r_is_capped_at_half_the_mergeable_tokens():
    model = _vit(layers=3)
    apply_tome(model, r=32)  # 64 mergeable tokens: cap 32, then 16, then 8
    _run(model, vit_inputs(batch=1))
    assert tome_state(model).token_counts == [65, 33, 17] == tome_token_schedule(65, 32, 3)


def test_r0_bit_identical_and_remove_restores(tiny_vit):
    x = vit_inputs(batch=2)
    ref = _run(tiny_vit, x).logits
    apply_tome(tiny_vit, r=0)
    assert torch.equal(_run(tiny_vit, x).logits, ref)
    apply_tome(tiny_vit, r=8)  # re-applying replaces the patch
    merged = _run(tiny_vit, x).logits
    assert not torch.equal(merged, ref)
    remove_tome(tiny_vit)
    assert torch.equal(_run(tiny_vit, x).logits, ref)
    assert all("forward" not in m.__dict__ for m in tiny_vit.modules())
    assert tome_state(tiny_vit) is None


def test_bad_inputs(tiny_vit, tiny_bert):
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(ConfigError, match="r must be an int"):
            apply_tome(tiny_vit, r=bad)
    with pytest.raises(ConfigError, match="too large.*at most 32"):
        apply_tome(tiny_vit, r=33)
    with pytest.raises(ConfigError, match="ToMe supports transformers ViT / DeiT models and timm vision transformers"):
        apply_tome(tiny_bert, r=2)


def test_merge_conserves_mass_and_protects_cls():
    torch.manual_seed(1)
    x, metric = torch.randn(2, 9, 5), torch.randn(2, 9, 3)
    size = torch.randint(1, 4, (2, 9, 1)).float()
    y, s = merge_tokens(x, size, metric, r=3, protected=1)
    assert y.shape == (2, 6, 5) and s.shape == (2, 6, 1)
    assert torch.equal(y[:, 0], x[:, 0]) and torch.equal(s[:, 0], size[:, 0])
    torch.testing.assert_close((y * s).sum(1), (x * size).sum(1))
    assert torch.equal(s.sum(1), size.sum(1))


def test_merge_picks_the_most_similar_pair():
    # tokens 1..4 (protected 0): A = {1, 3}, B = {2, 4}; token 3 is identical in key to token 4
    metric = torch.tensor([[[9.0, 9], [1, 0], [0, 1], [1, 1], [1, 1]]])
    x = torch.arange(5.0).reshape(1, 5, 1)
    y, s = merge_tokens(x, None, metric, r=1)
    assert y.flatten().tolist() == [0.0, 1.0, 2.0, 3.5]  # cls, unmerged A1, B2, B4 <- mean(3, 4)
    assert s.flatten().tolist() == [1.0, 1.0, 1.0, 2.0]


def test_proportional_attention_equals_duplicated_tokens(tiny_vit):
    """A token of size 2 must attend like two identical tokens (the point of the log(size) bias)."""
    att = tiny_vit.vit.layers[0].attention
    apply_tome(tiny_vit, r=0)
    state = tome_state(tiny_vit)
    h = torch.randn(1, 3, 64)
    dup = torch.cat([h, h[:, 2:3]], dim=1)  # token 2 twice
    with torch.no_grad():
        ref, _ = att(dup)
        got, _ = att(h, size_bias(torch.tensor([[[1.0], [1.0], [2.0]]]), h.dtype))  # the model's own attention
    torch.testing.assert_close(got, ref[:, :3], rtol=1e-5, atol=1e-6)
    assert state.r == 0


@pytest.mark.parametrize("cls", [ViTLayer, DeiTLayer])
def test_the_upstream_forward_is_the_one_the_block_forward_was_written_against(cls):
    """ToMe replaces only the block forward (no block exposes a point between attention and MLP). If transformers
    changes that forward, this fails: re-check `_hf_layer_forward` against it, then update the pinned SHA-256."""
    assert upstream_forward_sha256(cls) == block_family(cls.__new__(cls)).written_against


def test_deit_protects_cls_and_distillation_tokens():
    model = _vit(layers=2, cls=DeiTForImageClassification, cfg_cls=DeiTConfig)
    record = apply_tome(model, r=8)
    assert record["protected_tokens"] == 2 and record["token_schedule"] == [66, 58]
    out = _run(model, vit_inputs(batch=2), output_hidden_states=True)
    assert out.hidden_states[-1].shape[1] == 50 and torch.isfinite(out.logits).all()


def test_composes_with_masks_without_touching_weights(tiny_vit):
    masks = two_four_masks(tiny_vit)
    masks.apply_(tiny_vit)
    before = copy.deepcopy(tiny_vit.state_dict())
    apply_tome(tiny_vit, r=4)
    _run(tiny_vit, vit_inputs(batch=2))
    masks.check_model(tiny_vit)
    after = tiny_vit.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_deep_copy_of_a_patched_model_runs_on_its_own_state(tiny_vit):
    """A teacher copied after apply_tome (as the README's distillation example does) merges with its own keys."""
    x = vit_inputs(batch=2)
    apply_tome(tiny_vit, r=4)
    copied = copy.deepcopy(tiny_vit)
    torch.testing.assert_close(_run(copied, x).logits, _run(tiny_vit, x).logits, rtol=0, atol=0)
    assert tome_state(copied) is not tome_state(tiny_vit) and tome_state(copied).token_counts == [65, 61]
    remove_tome(copied)
    assert tome_state(tiny_vit) is not None and not any(hasattr(m, "_mpprune_tome") for m in copied.modules())
