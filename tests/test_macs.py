import pytest
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from hf_mpprune import Masks, apply_tome, mac_report, remove_tome
from hf_mpprune.core.config import KeepPattern
from hf_mpprune.deploy.macs import sparse_macs, vit_closed_form
from tests.kn_helpers import block_linear_names, kn_mask, two_four_masks
from tests.tiny_models import MLP, bert_inputs, tiny_resnet, vit_inputs


@pytest.fixture(scope="module")
def vit_b():
    """ViT-B/16 on the meta device: MACs depend on shapes only (hooks read the real shapes of each call), so this
    is exact and takes ~1 s; `test_tiny_vit_real_forward_matches_closed_form` checks the same path on real data."""
    with torch.device("meta"):
        model = ViTForImageClassification(ViTConfig(num_labels=1000)).eval()
    return model, {"pixel_values": torch.empty(1, 3, 224, 224, device="meta")}


def test_tiny_vit_real_forward_matches_closed_form(tiny_vit):
    x = vit_inputs(batch=1)
    kw = {"depth": 2, "dim": 64, "mlp_dim": 128, "n0": 65, "embed_macs": 64 * 64 * 3 * 4 * 4, "head_macs": 64 * 10}
    assert mac_report(tiny_vit, x).dense_macs == vit_closed_form(**kw)
    apply_tome(tiny_vit, r=8)
    rep = mac_report(tiny_vit, x, masks=two_four_masks(tiny_vit))
    assert rep.dense_macs == vit_closed_form(r=8, merge_before_mlp=True, **kw)
    assert rep.sparse_macs == vit_closed_form(r=8, density=0.5, merge_before_mlp=True, **kw)


def test_vit_b16_dense_total_and_breakdown(vit_b):
    model, x = vit_b
    rep = mac_report(model, x)
    assert abs(rep.dense_macs / 17.56e9 - 1) < 0.005
    kinds = rep.by_kind()
    assert kinds["conv"] == 196 * 768 * 3 * 16 * 16  # patch embedding, 0.12 G
    assert kinds["attn_matmul"] == 12 * 2 * 197**2 * 768  # 0.72 G
    assert kinds["linear"] == 12 * 197 * 12 * 768**2 + 768 * 1000  # 16.73 G block Linears + head
    assert rep.dense_macs == vit_closed_form()  # hooks == the closed form without ToMe
    assert rep.eligible_macs == 0 and rep.sparse_macs == rep.dense_macs  # meta weights: nothing is legal


def test_closed_form_reproduces_the_paper_convention():
    dense = vit_closed_form()
    assert 1 - vit_closed_form(r=8) / dense == pytest.approx(0.2281, abs=5e-5)
    assert 1 - vit_closed_form(r=8, density=0.5) / dense == pytest.approx(0.5981, abs=5e-5)
    assert vit_closed_form(r=8, density=0.5) / 1e9 == pytest.approx(7.06, abs=5e-3)
    exact = vit_closed_form(r=8, density=0.5, merge_before_mlp=True)
    assert 1 - exact / dense == pytest.approx(0.611, abs=5e-4)


def test_vit_b16_tome_r8_plus_two_four_from_real_hooks(vit_b):
    model, x = vit_b
    dense = vit_closed_form()  # == the hooked dense total (previous test)
    keep = {}
    for name in block_linear_names(model):
        w = model.get_submodule(name).weight
        m = torch.zeros(w.shape[0], w.shape[1] // 4, 4, dtype=torch.bool)
        m[..., 1::2] = True  # an exact 2:4 mask (legality is read from the masks: weights stay untouched)
        keep[name] = m.reshape(w.shape)
    apply_tome(model, r=8)
    try:
        rep = mac_report(model, x, masks=Masks(keep, KeepPattern(2, 4)))
    finally:
        remove_tome(model)
    tome_only = 1 - rep.dense_macs / dense
    both = 1 - rep.sparse_macs / dense
    assert tome_only == pytest.approx(0.2539, abs=5e-5)  # exact merged graph: MLP sees N_l - r tokens
    assert both == pytest.approx(0.6110, abs=5e-5)
    assert rep.sparse_macs == vit_closed_form(r=8, density=0.5, merge_before_mlp=True)
    assert len([r for r in rep.rows if r.eligible]) == 72  # 12 x (q, k, v, o, fc1, fc2); head and patch conv dense
    attn = [r.tokens for r in rep.rows if r.kind == "attn_matmul"]
    assert attn == [197 - 8 * layer for layer in range(12)]


def test_linear_and_masks_eligibility():
    model = MLP((64, 128, 128, 10))
    x = torch.randn(5, 64)
    masks = Masks({"layers.0": kn_mask(model.layers[0].weight), "layers.1": torch.ones(128, 128, dtype=torch.bool)})
    masks.apply_(model)
    rep = mac_report(model, x, masks=masks)
    rows = {r.name: r for r in rep.rows}
    assert rows["layers.0"].dense_macs == 5 * 64 * 128 and rows["layers.0"].eligible
    assert not rows["layers.1"].eligible and "groups not 2:4" in rows["layers.1"].reason
    assert not rows["layers.2"].eligible and rows["layers.2"].reason == "no mask"
    assert rep.sparse_macs == rep.dense_macs - 5 * 64 * 128 // 2
    # without masks, legality is read from the weights' zeros: the same answer here
    assert mac_report(model, x).sparse_macs == rep.sparse_macs
    # 4:8 view of the same 2:4 weights is legal too, with the same density
    assert mac_report(model, x, pattern="4:8").sparse_macs == rep.sparse_macs


def test_sparse_macs_identity():
    assert sparse_macs(1000, 400, KeepPattern(2, 4)) == 800
    assert sparse_macs(1600, 1600, KeepPattern(12, 16)) == 1200


def test_conv_macs_formula():
    model = tiny_resnet()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    name = next(n for n, m in model.named_modules() if m is conv)
    rep = mac_report(model, vit_inputs(batch=1))
    out = {}
    conv.register_forward_hook(lambda m, a, o: out.setdefault("o", o))
    with torch.no_grad():
        model(**vit_inputs(batch=1))
    _, c_out, h, w = out["o"].shape
    kh, kw = conv.kernel_size
    expected = c_out * h * w * (conv.in_channels // conv.groups) * kh * kw
    assert next(r for r in rep.rows if r.name == name).dense_macs == expected


def test_bert_attention_matmuls(tiny_bert):
    rep = mac_report(tiny_bert, bert_inputs(batch=2, seq=8))
    att = [r for r in rep.rows if r.kind == "attn_matmul"]
    assert len(att) == 2 and all(r.dense_macs == 2 * 2 * 8 * 8 * 64 and r.tokens == 8 for r in att)


def test_gpt2_conv1d_and_fused_attention():
    from tests.tiny_models import tiny_gpt2

    model = tiny_gpt2()
    rep = mac_report(model, {"input_ids": torch.randint(0, 99, (1, 8))})
    rows = {r.name: r for r in rep.rows}
    assert rows["transformer.h.0.attn.c_attn"].dense_macs == 8 * 64 * 192  # Conv1D (in, out) = (64, 192)
    assert rows["transformer.h.0.attn.matmuls"].dense_macs == 2 * 8 * 8 * 64
