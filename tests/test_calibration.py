"""Calibration plumbing: sampling with a seed, index hashes, hooks always removed, clear errors."""

import pytest
import torch

from hf_mpprune import ConfigError, discover_layers
from hf_mpprune.core.calibration import as_batches, capture, input_sq_norms, run_batches


class RowDataset:
    def __init__(self, n):
        self.x = torch.randn(n, 3, 32, 32)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "label": i % 10}


def test_indexed_sampling_is_seeded_and_hashed():
    ds = RowDataset(40)
    a = as_batches(ds, num_samples=20, batch_size=8, seed=1)
    b = as_batches(ds, num_samples=20, batch_size=8, seed=1)
    c = as_batches(ds, num_samples=20, batch_size=8, seed=2)
    assert [x["pixel_values"].shape[0] for x in a] == [8, 8, 4]
    assert "label" not in a.batches[0]
    assert a.indices_sha256 == b.indices_sha256 != c.indices_sha256
    assert torch.equal(a.batches[0]["pixel_values"], b.batches[0]["pixel_values"])


def test_stream_and_single_dict():
    batches = [{"pixel_values": torch.randn(4, 3, 32, 32)} for _ in range(5)]
    s = as_batches(iter(batches), num_samples=10)
    assert s.source == "stream"
    assert s.num_samples == 12  # whole batches are kept
    assert len(as_batches({"pixel_values": torch.randn(4, 3, 32, 32)}).batches) == 1


def test_input_norms_match_direct_computation(tiny_vit):
    layers = discover_layers(tiny_vit, targets=["re:layers.0.mlp.fc1$", "re:patch_embeddings"])
    x = torch.randn(3, 3, 32, 32)
    norms = input_sq_norms(tiny_vit, layers, as_batches({"pixel_values": x}))
    conv = tiny_vit.vit.embeddings.patch_embeddings.projection
    cols = torch.nn.functional.unfold(x, 4, stride=4).transpose(1, 2).reshape(-1, 48)
    torch.testing.assert_close(norms["vit.embeddings.patch_embeddings.projection"], cols.double().square().sum(0))
    assert conv._forward_pre_hooks == {}  # hooks removed
    assert norms["vit.layers.0.mlp.fc1"].shape == (64,)


def test_errors_and_hook_cleanup(tiny_vit):
    layers = discover_layers(tiny_vit)
    with pytest.raises(ConfigError, match="required"):
        as_batches(None)
    with pytest.raises(ConfigError, match="empty"):
        as_batches(RowDataset(0))
    with pytest.raises(ConfigError, match="empty"):
        as_batches(iter([]))
    with pytest.raises(ConfigError, match="dicts of model inputs"):
        as_batches([torch.randn(2, 3)])
    with pytest.raises(ConfigError, match="does not fit"):
        run_batches(tiny_vit, as_batches({"pixel_values": torch.randn(2, 5, 7, 7)}))
    with pytest.raises(ConfigError, match="does not fit"), capture(tiny_vit, layers, lambda la, r: None):
        run_batches(tiny_vit, [{"input_ids": torch.zeros(2, 3, dtype=torch.long)}])
    assert all(la.module._forward_pre_hooks == {} for la in layers)
