"""A large snapshot goes to a temporary file instead of a second copy in memory (`core/snapshot.py`,
`SPILL_BYTES`): a failed prune still puts back every weight bit for bit, every dtype survives the round trip, the
file is gone after success and after failure, and an unwritable directory falls back to memory copies."""

import copy
import glob
import os

import pytest
import torch

import hf_mpprune.core.snapshot as snap_mod
from hf_mpprune import MPPruner, PruningConfig
from hf_mpprune.core.layers import discover_layers
from hf_mpprune.core.masks import Masks
from tests import tiny_models as tm


pytestmark = pytest.mark.usefixtures("one_thread")


def _files(d):
    return glob.glob(os.path.join(d, "hf_mpprune-snapshot-*"))


@pytest.fixture
def spill_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(snap_mod, "SPILL_BYTES", 0)  # spill whatever is in scope
    monkeypatch.setenv("HF_MPPRUNE_SNAPSHOT_DIR", str(tmp_path))
    return str(tmp_path)


def test_round_trip_of_every_dtype_and_tied_or_strided_tensors(spill_dir):
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.randn(7, 5))
    model.b = torch.nn.Parameter(torch.randn(3, 4).to(torch.bfloat16))
    model.register_buffer("c", torch.arange(6, dtype=torch.int64))
    model.register_buffer("d", torch.tensor([True, False, True]))
    model.register_buffer("e", torch.randn(4, 6).t())  # not contiguous: kept as a memory copy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snap = snap_mod.Snapshot.take(model, [], "model")
    assert len(_files(spill_dir)) == 1 and len(snap.spilled) == 4 and len(snap.tensors) == 1
    with torch.no_grad():
        for v in model.state_dict().values():
            v.zero_() if v.dtype != torch.bool else v.fill_(False)
    snap.restore()
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert _files(spill_dir) == []


def test_failed_prune_restores_from_the_file_and_success_leaves_no_file(spill_dir, monkeypatch):
    model = tm.tiny_llama()
    before = copy.deepcopy(model.state_dict())
    batches = [tm.lm_inputs(batch=2, seq=8) for _ in range(2)]
    cfg = PruningConfig(method="wanda", sparsity=0.6, reconstruct=True)
    real_apply = Masks.apply_

    def apply_then_fail(self, m):
        real_apply(self, m)
        assert len(_files(spill_dir)) == 1  # the copy is on disk while the method runs
        raise RuntimeError("injected")

    monkeypatch.setattr(Masks, "apply_", apply_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        MPPruner(model, cfg).prune(calibration=batches)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert _files(spill_dir) == []
    monkeypatch.setattr(Masks, "apply_", real_apply)
    masks = MPPruner(model, cfg).prune(calibration=batches)
    assert masks.sparsity() == pytest.approx(0.6, abs=1e-3) and _files(spill_dir) == []


def test_unwritable_directory_falls_back_to_memory(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(snap_mod, "SPILL_BYTES", 0)
    monkeypatch.setenv("HF_MPPRUNE_SNAPSHOT_DIR", str(tmp_path / "missing"))
    model = tm.tiny_llama()
    layers = discover_layers(model)
    before = {la.name: la.weight.detach().clone() for la in layers}
    with caplog.at_level("WARNING", logger="hf_mpprune.core.snapshot"):
        snap = snap_mod.Snapshot.take(model, layers, "layers")
    assert "keeping it in memory" in caplog.text and snap.path is None and snap.spilled == []
    assert len(snap.tensors) == len(layers)
    with torch.no_grad():
        for la in layers:
            la.weight.zero_()
    snap.restore()
    assert all(torch.equal(la.weight, before[la.name]) for la in layers)
