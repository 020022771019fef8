"""Padded, variable-length calibration batches (how users calibrate: `tokenizer(texts, padding=True)`): padding
never enters a statistic, and the joined one-batch path gives what the per-batch path gives."""

import copy

import pytest
import torch

import hf_mpprune.core.blockwise as bw
import hf_mpprune.core.joined as joined_mod
from hf_mpprune import MPPruner, PruningConfig
from hf_mpprune.core.calibration import input_sq_norms
from hf_mpprune.core.layers import discover_layers


pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = [[5, 12, 3], [9, 4, 7, 11], [6, 2]]  # three batches, every batch padded to its own longest


def _sequences(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randint(1, 99, (n,), generator=g) for n in batch] for batch in LENGTHS]


def _padded(extra=0, pad_id=0):
    """Right-padded batches like a tokenizer's; `extra` more pad columns, pad positions hold `pad_id`."""
    out = []
    for seqs in _sequences():
        width = max(len(s) for s in seqs) + extra
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = s, 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _one_by_one():
    """Every sequence alone, no padding at all: the ground truth of the real-token statistics."""
    return [
        {"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)}
        for b in _sequences()
        for s in b
    ]


def test_input_norms_count_real_tokens_only(tiny_bert):
    layers = discover_layers(tiny_bert)
    truth = input_sq_norms(tiny_bert, layers, _one_by_one())
    for batches in (_padded(), _padded(extra=5, pad_id=42)):
        got = input_sq_norms(tiny_bert, layers, batches)
        for name, t in truth.items():
            torch.testing.assert_close(got[name], t, rtol=1e-5, atol=1e-6)


def _hessians(model, batches, monkeypatch, join=True, plain=False, granularity="layer"):
    seen = {}
    with monkeypatch.context() as mp:
        if not join:
            mp.setattr(joined_mod, "join_batches", lambda b: None)
        if plain:
            mp.setattr(bw, "find_blocks", lambda model, layers: None)
        layers = list(discover_layers(model))
        tm = bw.block_sequential(
            model, layers, batches, lambda la, h: seen.__setitem__(la.name, h), granularity=granularity
        )
    return seen, tm


def test_sequential_hessians_count_real_tokens_only_on_every_path(tiny_bert, monkeypatch):
    """The dense model's Hessians (nothing rewritten) on padded batches equal those of every sequence alone, on
    the joined, per-batch, plain (no block cache) and block-granularity paths, and with more padding."""
    truth, tm0 = _hessians(tiny_bert, _one_by_one(), monkeypatch, join=False)
    joined, tm1 = _hessians(tiny_bert, _padded(), monkeypatch)
    per_batch, tm2 = _hessians(tiny_bert, _padded(), monkeypatch, join=False)
    more_pad, tm3 = _hessians(tiny_bert, _padded(extra=4, pad_id=7), monkeypatch)
    plain, tm4 = _hessians(tiny_bert, _padded(), monkeypatch, plain=True)
    by_block, tm5 = _hessians(tiny_bert, _padded(extra=2, pad_id=3), monkeypatch, join=False, granularity="block")
    assert tm1.extra.get("joined_batches") == len(LENGTHS) == tm3.extra.get("joined_batches")
    assert "joined_batches" not in tm2.extra and tm0.path == tm1.path == tm2.path == tm5.path == "blocks"
    assert tm4.path.startswith("plain")
    assert set(truth) == set(joined) == {la.name for la in discover_layers(tiny_bert)}
    for name, h in truth.items():
        for other in (joined, per_batch, more_pad, plain, by_block):
            torch.testing.assert_close(other[name], h, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "cfg",
    [
        {"method": "wanda", "sparsity": 0.6, "reconstruct": True, "reconstruct_solver": "exact"},
        {"method": "sparsegpt", "sparsity": 0.5},
        {"method": "cast", "pattern": "2:4", "reconstruct": True, "reconstruct_solver": "exact"},
    ],
)
def test_methods_on_padded_batches_same_on_joined_and_per_batch_paths(cfg, tiny_bert, monkeypatch):
    """Joined (one padded batch) vs per-batch vs more padding with other pad ids: same masks, same re-fitted weights
    up to float rounding; the joined path is really taken."""
    runs = []
    for batches, join in ((_padded(), True), (_padded(), False), (_padded(extra=6, pad_id=55), True)):
        model = copy.deepcopy(tiny_bert)
        with monkeypatch.context() as mp:
            if not join:
                mp.setattr(joined_mod, "join_batches", lambda b: None)
            pruner = MPPruner(model, PruningConfig.from_dict(cfg))
            masks = pruner.prune(calibration=batches)
        step = pruner.ledger.steps[-1]
        split = step["time_split"].get("reconstruction") or step["time_split"]
        split = split if "path" in split else step["reconstruct"]["time_split"]  # wanda + re-fit
        assert split.get("joined_batches") == (len(LENGTHS) if join else None)
        runs.append((masks.sha256(), model.state_dict()))
    (sha0, w0), *others = runs
    for sha, w in others:
        assert sha == sha0
        for k in w0:
            torch.testing.assert_close(w[k], w0[k], rtol=1e-4, atol=1e-5)
