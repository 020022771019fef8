"""`block_epochs`: after a block's layers are pruned, Adam fits the block's kept weights to the dense model's output
of the block. Known truths: the mask and the exact sparsity (and a k:n pattern) do not move; the block output gets
closer to the dense model's on the calibration data than without the step; the loss falls in every block; the
user's `requires_grad` flags come back; refusals happen before anything is written."""

import copy

import pytest
import torch

import hf_mpprune.core.blockwise as bw
import hf_mpprune.core.joined as joined_mod
from hf_mpprune import ConfigError, MPPruner, PruningConfig
from hf_mpprune.core.joined import hidden_of
from hf_mpprune.core.layers import discover_layers
from tests import tiny_models as tm


pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (8, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[6, 4:] = 0, 0  # padded rows, as a tokenizer gives them
    return [{"input_ids": ids[i : i + 4], "attention_mask": mask[i : i + 4]} for i in (0, 4)]


LR = 3e-4  # the tiny random models' weights have std 0.02: the default 1e-3 (chosen on MiniLM) overshoots there


def _run(model, **cfg):
    pruner = MPPruner(model, PruningConfig.from_dict({"calibration_samples": 8, "calibration_batch_size": 4, **cfg}))
    masks = pruner.prune(calibration=_batches())
    return masks, pruner.ledger.steps[-1]


def _error(model, dense, key="last_hidden_state"):
    """Mean squared distance to the dense model's output at the real tokens of the calibration batches."""
    total = 0.0
    with torch.no_grad():
        for b in _batches():
            a, d = getattr(model(**b), key), getattr(dense(**b), key)
            total += float(((a - d) ** 2)[b["attention_mask"].bool()].mean())
    return total


@pytest.mark.parametrize(
    "cfg",
    [
        {"method": "wanda", "sparsity": 0.6, "reconstruct": True},
        {"method": "mp-wanda", "sparsity": 0.6, "refine": "alps"},
        {"method": "sparsegpt", "sparsity": 0.6},
    ],
)
def test_masks_stay_and_the_output_moves_toward_the_dense_model(tiny_bert, cfg):
    dense = copy.deepcopy(tiny_bert).eval()
    plain, tuned = copy.deepcopy(tiny_bert), copy.deepcopy(tiny_bert)
    m_plain, _ = _run(plain, **cfg)
    m_tuned, step = _run(tuned, **cfg, block_epochs=8, block_lr=LR)
    assert m_tuned.sparsity() == pytest.approx(m_plain.sparsity()) and m_tuned.sparsity() > 0.55
    if cfg["method"] == "wanda":  # a mask that does not depend on the fit: the same mask, bit for bit
        assert m_tuned.sha256() == m_plain.sha256()
    for la in discover_layers(tuned):  # every pruned entry is exactly 0 in the tuned weights
        assert bool((la.weight[~m_tuned[la.name].to(torch.bool)] == 0).all())
    assert _error(tuned, dense) < 0.9 * _error(plain, dense)
    where = step.get("reconstruct") or step.get("refine", {}).get("pass") or step
    rec = where.get("time_split", where)["block_tune"]
    assert rec["epochs"] == 8 and rec["lr"] == LR and len(rec["loss"]) == tiny_bert.config.num_hidden_layers
    assert rec["blocks_kept"] == len(rec["loss"]) and all(last < first for first, last in rec["loss"])
    assert step["time_split"]["block_tune_s"] == rec["seconds"] > 0  # the step's seconds in the top-level split


def test_a_block_whose_loss_does_not_fall_keeps_its_weights(tiny_bert, monkeypatch):
    """A rate far too large for the weights: every block's loss rises, so every block is put back and the result is
    the pipeline without the step, bit for bit (the step runs the batches unjoined: so does the plain run here)."""
    plain, tuned = copy.deepcopy(tiny_bert), copy.deepcopy(tiny_bert)
    with monkeypatch.context() as m:
        m.setattr(joined_mod, "join_batches", lambda batches: None)
        _, step = _run(plain, method="wanda", sparsity=0.6, reconstruct=True)
    assert "joined_batches" not in step["reconstruct"]["time_split"] and "block_tune_s" not in step["time_split"]
    _, step = _run(tuned, method="wanda", sparsity=0.6, reconstruct=True, block_epochs=3, block_lr=1.0)
    rec = step["reconstruct"]["time_split"]["block_tune"]
    assert rec["blocks_kept"] == 0 and all(first == last for first, last in rec["loss"])
    for (name, a), b in zip(plain.state_dict().items(), tuned.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_k_n_pattern_stays_legal():
    model = tm.tiny_llama()
    masks, step = _run(model, method="wanda", pattern="2:4", reconstruct=True, block_epochs=4, block_lr=LR)
    assert step["reconstruct"]["time_split"]["block_tune"]["blocks_kept"] >= 1  # the weights did move
    checked = [la for la in discover_layers(model) if la.name in masks.names]
    assert len(checked) >= 14
    for la in checked:
        w = la.matrix_view().detach()
        groups = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1)
        assert int(groups.max()) <= 2, la.name


def test_a_tiny_llama_decoder_gets_closer_to_its_dense_logits():
    """Rotary embeddings and the causal mask are replayed into the block during the Adam steps."""
    base = tm.tiny_llama()
    dense, plain, tuned = (copy.deepcopy(base).eval() for _ in range(3))
    _run(plain, method="wanda", sparsity=0.6, reconstruct=True)
    _run(tuned, method="wanda", sparsity=0.6, reconstruct=True, block_epochs=8, block_lr=LR)
    assert _error(tuned, dense, "logits") < _error(plain, dense, "logits")


def test_requires_grad_flags_come_back(tiny_bert):
    model = copy.deepcopy(tiny_bert)
    model.requires_grad_(False)
    model.encoder.layer[0].attention.self.query.weight.requires_grad_(True)
    _run(model, method="wanda", sparsity=0.5, reconstruct=True, block_epochs=1)
    flags = {n for n, p in model.named_parameters() if p.requires_grad}
    assert flags == {"encoder.layer.0.attention.self.query.weight"}
    assert all(p.grad is None for p in model.parameters())


def test_refusals_before_anything_is_written(tiny_bert, monkeypatch):
    for cfg, match in (
        ({"method": "wanda", "sparsity": 0.5, "block_epochs": 3}, "sequential re-fit pass"),
        ({"method": "wanda", "sparsity": 0.5, "reconstruct": True, "block_lr": 0.01}, "no effect with block_epochs=0"),
        ({"method": "wanda", "sparsity": 0.5, "reconstruct": True, "block_epochs": -1}, "int >= 0"),
        ({"method": "wanda", "sparsity": 0.5, "reconstruct": True, "block_epochs": True}, "block_epochs=True"),
        ({"method": "wanda", "sparsity": 0.5, "reconstruct": True, "block_epochs": 2, "block_lr": 0}, "> 0"),
        ({"method": "cast", "pattern": "2:4", "block_epochs": 2}, "sequential re-fit pass"),
    ):
        with pytest.raises(ConfigError, match=match):
            PruningConfig.from_dict(cfg)
    assert PruningConfig(method="sparsegpt", sparsity=0.5, block_epochs=2).block_tune().epochs == 2
    assert PruningConfig(method="wanda", sparsity=0.5, refine="alps", block_epochs=2).block_tune().lr == 1e-3

    half = copy.deepcopy(tiny_bert).to(torch.bfloat16)
    before = copy.deepcopy(half.state_dict())
    with pytest.raises(ConfigError, match="float32"):
        _run(half, method="wanda", sparsity=0.5, reconstruct=True, block_epochs=2)
    assert all(torch.equal(v, before[k]) for k, v in half.state_dict().items())

    model = copy.deepcopy(tiny_bert)
    before = copy.deepcopy(model.state_dict())
    monkeypatch.setattr(bw, "find_blocks", lambda model, layers: None)  # a model without a repeated block list
    with pytest.raises(ConfigError, match="block-cached calibration path"):
        _run(model, method="wanda", sparsity=0.5, reconstruct=True, block_epochs=2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _last_block_loss(model, dense, block_of, batches) -> float:
    """The step's loss of the last block, computed independently: the mean over the calibration batches of the
    squared distance between the pruned model's and the DENSE model's outputs of that block (real tokens only)."""
    got = {}
    hooks = [block_of(m).register_forward_hook(lambda mod, a, out, k=k: got.__setitem__(k, hidden_of(out)))
             for k, m in (("pruned", model), ("dense", dense))]  # fmt: skip
    total = 0.0
    try:
        with torch.no_grad():
            for b in batches:
                model(**b), dense(**b)
                d = (got["pruned"] - got["dense"]).pow(2)
                mask = b.get("attention_mask")
                total += float(d[mask.bool()].mean() if mask is not None else d.mean())
    finally:
        for h in hooks:
            h.remove()
    return total / len(batches)


def _legal_2_4(model, masks):
    for la in discover_layers(model, targets=["Linear", "Conv2d", "role:embed"]):
        if la.name in masks.names and not bool(masks[la.name].all()):
            w = la.matrix_view().detach()
            assert int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) <= 2, la.name


def test_cast_aims_at_the_dense_blocks_and_stays_2_4(tiny_bert):
    """CAST writes its 2:4 projections into every layer before its re-fit pass: the step must still aim at the
    DENSE model's block outputs (the source weights swapped in for that forward, then put back). Known truths: the
    ledger's last-block loss is the distance to the dense model's last block, computed here independently; the
    CAST mask is the same with and without the step; the pattern stays legal; the output moves toward dense."""
    dense = copy.deepcopy(tiny_bert).eval()
    plain, tuned = copy.deepcopy(tiny_bert), copy.deepcopy(tiny_bert)
    cfg = {"method": "cast", "pattern": "2:4", "reconstruct": True}
    m_plain, _ = _run(plain, **cfg)
    m_tuned, step = _run(tuned, **cfg, block_epochs=8, block_lr=LR)
    assert m_tuned.sha256() == m_plain.sha256()
    _legal_2_4(tuned, m_tuned)
    rec = step["time_split"]["reconstruction"]["block_tune"]
    assert step["time_split"]["block_tune_s"] == rec["seconds"] > 0
    assert rec["blocks_kept"] == tiny_bert.config.num_hidden_layers and all(
        after < before for before, after in rec["loss"]
    )
    assert rec["loss"][-1][1] == pytest.approx(
        _last_block_loss(tuned, dense, lambda m: m.encoder.layer[-1], _batches()), rel=1e-3, abs=1e-7
    )
    assert _error(tuned, dense) < 0.9 * _error(plain, dense)


def test_cast_swaps_the_layers_before_the_blocks_too():
    """The patch embedding targeted too (4 input channels, so CAST projects it: 3-channel stems are skipped): it sits
    before the blocks and is already projected when the pass starts, so the dense model's first block inputs come
    from its source weights swapped in. Same independent truth."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    tiny_vit = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, num_channels=4, hidden_size=32,
                                                   num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                                   num_labels=3))  # fmt: skip
    dense = copy.deepcopy(tiny_vit).eval()
    g = torch.Generator().manual_seed(1)
    batches = [{"pixel_values": torch.randn(4, 4, 16, 16, generator=g)} for _ in range(2)]
    cfg = PruningConfig.from_dict({"method": "cast", "pattern": "2:4", "reconstruct": True, "block_epochs": 8,
                                   "block_lr": LR, "calibration_samples": 8, "calibration_batch_size": 4,
                                   "targets": ["Linear", "Conv2d", "role:embed"]})  # fmt: skip
    pruner = MPPruner(tiny_vit, cfg)
    masks = pruner.prune(calibration=batches)
    assert "vit.embeddings.patch_embeddings.projection" in masks.names
    assert not bool(masks["vit.embeddings.patch_embeddings.projection"].all())  # projected before the blocks
    _legal_2_4(tiny_vit, masks)
    rec = pruner.ledger.steps[-1]["time_split"]["reconstruction"]["block_tune"]
    assert rec["blocks_kept"] >= 1
    assert rec["loss"][-1][1] == pytest.approx(
        _last_block_loss(tiny_vit, dense, lambda m: m.vit.layers[-1], batches), rel=1e-3, abs=1e-7
    )
