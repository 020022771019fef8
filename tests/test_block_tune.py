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


def test_a_block_whose_loss_does_not_fall_keeps_its_weights(tiny_bert, monkeypatch):
    """A rate far too large for the weights: every block's loss rises, so every block is put back and the result is
    the pipeline without the step, bit for bit (the step runs the batches unjoined: so does the plain run here)."""
    plain, tuned = copy.deepcopy(tiny_bert), copy.deepcopy(tiny_bert)
    with monkeypatch.context() as m:
        m.setattr(joined_mod, "join_batches", lambda batches: None)
        _, step = _run(plain, method="wanda", sparsity=0.6, reconstruct=True)
    assert "joined_batches" not in step["reconstruct"]["time_split"]
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
        (
            {"method": "cast", "pattern": "2:4", "reconstruct": True, "block_epochs": 2},
            "not supported on method 'cast'",
        ),
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
