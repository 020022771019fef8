"""Masks: exact +0.0 zeros, accounting, k:n legality counts, hashing, bit-packed files, freezing."""

import pytest
import torch

from hf_mpprune import KeepPattern, LedgerMismatchError, Masks, PatternError, discover_layers
from hf_mpprune.core.masks import keep_top, kn_violations


def random_masks(model, density=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Masks({la.name: torch.rand(la.weight.shape, generator=g) < density for la in discover_layers(model)})


def test_apply_writes_positive_zeros_only(tiny_vit):
    layer = tiny_vit.vit.layers[0].mlp.fc1
    with torch.no_grad():
        layer.weight.neg_()  # make plenty of negative values, whose x*0 would be -0.0
    masks = random_masks(tiny_vit)
    masks.apply_(tiny_vit)
    for name in masks:
        w = tiny_vit.get_submodule(name).weight
        zeros = w[~masks[name]]
        assert torch.all(zeros == 0) and not torch.signbit(zeros).any()
    assert masks.sparsity() == pytest.approx(0.5, abs=0.02)


def test_accounting_and_subset():
    a = Masks({"x": torch.tensor([[True, False], [True, True]])})
    b = Masks({"x": torch.tensor([[True, False], [False, True]])})
    assert (a.numel, a.num_pruned, a.sparsity()) == (4, 1, 0.25)
    assert b.is_subset_of(a) and not a.is_subset_of(b)
    assert a.layer_sparsity() == {"x": 0.25}


def test_keep_top_exact_with_ties():
    scores = [torch.tensor([1.0, 1.0, 1.0, 2.0]), torch.tensor([1.0, 0.5])]
    keep = keep_top(scores, 3)
    # 0.5 goes first, then the two earliest 1.0s (index tie-break)
    assert keep[0].tolist() == [False, False, True, True] and keep[1].tolist() == [True, False]
    assert sum(int((~k).sum()) for k in keep_top(scores, 6)) == 6
    assert all(k.all() for k in keep_top(scores, 0))


def test_kn_violations_counts_groups_and_tail():
    m = torch.tensor([[1.0, 0, 2, 0, 3, 3, 3, 0, 9], [0, 0, 0, 1, 1, 0, 1, 0, 9]])
    assert kn_violations(m, KeepPattern(2, 4)) == (4, 1, 1)  # row 0 group 1 has 3 nonzeros; 1 tail column


def test_sha_and_file_round_trip(tiny_vit, tmp_path):
    masks = random_masks(tiny_vit)
    path = tmp_path / "m.safetensors"
    digest = masks.save(path)
    back = Masks.load(path, expected_sha256=digest)
    assert back == masks and back.sha256() == digest
    assert random_masks(tiny_vit, seed=1).sha256() != digest
    with pytest.raises(LedgerMismatchError, match="corrupted"):
        Masks.load(path, expected_sha256="0" * 64)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # flip bits of the last packed byte
    path.write_bytes(bytes(raw))
    with pytest.raises(LedgerMismatchError):
        Masks.load(path)


def test_freeze_masks_grads_and_remasks_after_step(tiny_vit):
    masks = random_masks(tiny_vit)
    masks.apply_(tiny_vit)
    opt = torch.optim.AdamW(tiny_vit.parameters(), lr=1e-2, weight_decay=0.1)
    handles = masks.freeze_(tiny_vit, opt)
    before = {n: tiny_vit.get_submodule(n).weight.detach().clone() for n in masks}
    for _ in range(3):
        out = tiny_vit(pixel_values=torch.randn(4, 3, 32, 32)).logits
        out.square().mean().backward()
        for n in masks:
            assert torch.all(tiny_vit.get_submodule(n).weight.grad[~masks[n]] == 0)
        opt.step()
        opt.zero_grad()
    for n in masks:
        w = tiny_vit.get_submodule(n).weight
        assert torch.all(w[~masks[n]] == 0)
        assert not torch.equal(w[masks[n]], before[n][masks[n]])  # kept entries move
    for h in handles:
        h.remove()


def test_bad_masks(tiny_vit):
    with pytest.raises(PatternError, match="does not exist"):
        Masks({"nope": torch.ones(2, 2, dtype=torch.bool)}).apply_(tiny_vit)
    with pytest.raises(PatternError, match="shape"):
        Masks({"classifier": torch.ones(2, 2, dtype=torch.bool)}).check_model(tiny_vit)
