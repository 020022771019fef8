"""MPPruner: construction, analyze, prune with the magnitude method, loading, errors."""

import pytest
import torch

from hf_mpprune import ConfigError, MPPruner, PruningConfig, SpectralConfig
from hf_mpprune.methods.magnitude import MagnitudeConfig
from tests.tiny_models import vit_inputs


def test_analyze_all_layers_without_config(tiny_vit, tmp_path):
    pruner = MPPruner(tiny_vit)
    report = pruner.analyze(progress=False)
    assert [r.name for r in report] == pruner.layers.names
    d = report.to_dict()
    assert d["layers"][0]["spectrum_dtype"] == "float64" and "sigma_plus" in d["layers"][0]
    report.to_json(tmp_path / "s.json")
    assert "| vit.layers.0.mlp.fc1 | mlp | 128x64 |" in report.to_markdown()
    paths = report.plot(tmp_path / "plots")
    assert len(paths) == 1 + len(report) and all(p.endswith(".png") for p in paths)
    with pytest.raises(ConfigError, match="no PruningConfig"):
        pruner.prune()


def test_fused_qkv_view(tiny_vit):
    pruner = MPPruner(tiny_vit, PruningConfig(spectral=SpectralConfig(view="fused_qkv")))
    report = pruner.analyze(progress=False)
    fused = report["vit.layers.0.attention.qkv"]
    assert fused.fit.shape == (192, 64) and len(fused.members) == 3
    assert set(report.by_layer()) == set(pruner.layers.names)


@pytest.mark.parametrize("s", [0.0, 0.05, 0.37, 0.5, 0.7])
def test_global_magnitude_exact_cumulative(tiny_vit, s):
    pruner = MPPruner(tiny_vit, PruningConfig("magnitude", 0.05))
    pruner.prune()
    first = pruner.masks
    masks = pruner.prune(sparsity=max(s, 0.05))
    total = pruner.layers.total_params
    assert masks.num_pruned == int(max(s, 0.05) * total)
    assert masks.is_subset_of(first)
    zeros = sum(int((la.weight == 0).sum()) for la in pruner.layers)
    assert zeros == masks.num_pruned
    assert pruner.ledger.steps[-1]["mask_sha256"] == masks.sha256()


def test_layer_scope_and_determinism(tiny_vit):
    import copy

    m2 = copy.deepcopy(tiny_vit)
    a = MPPruner(tiny_vit, MagnitudeConfig(sparsity=0.5, scope="layer")).prune()
    b = MPPruner(m2, MagnitudeConfig(sparsity=0.5, scope="layer")).prune()
    assert a == b and a.sha256() == b.sha256()
    for name, sp in a.layer_sparsity().items():
        n = tiny_vit.get_submodule(name).weight.numel()
        assert sp == int(0.5 * n) / n


def test_target_below_current_rejected_and_model_untouched(tiny_vit):
    pruner = MPPruner(tiny_vit, PruningConfig("magnitude", 0.5))
    pruner.prune()
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    with pytest.raises(ConfigError, match="below the current"):
        pruner.prune(sparsity=0.3)
    assert all(torch.equal(before[k], v) for k, v in tiny_vit.state_dict().items())


def test_from_pretrained_local_dir_and_errors(tiny_vit, tmp_path):
    tiny_vit.save_pretrained(tmp_path / "m")
    pruner = MPPruner.from_pretrained(tmp_path / "m")
    assert type(pruner.model).__name__ == "ViTForImageClassification"
    x = vit_inputs()
    torch.testing.assert_close(pruner.model(**x).logits, tiny_vit(**x).logits)
    with pytest.raises(FileNotFoundError, match="no model directory"):
        MPPruner.from_pretrained(tmp_path / "missing")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        MPPruner.from_pretrained("someone/not-in-cache-model")
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        MPPruner("not a model")


def test_batched_analyze_equals_single_fits_and_device_option(tiny_vit):
    from hf_mpprune import analyze, discover_layers, fit_mp

    layers = discover_layers(tiny_vit)
    # a tiny chunk budget forces one matrix per batch; the default batches same-shape matrices together
    small = analyze(layers, SpectralConfig(device="cpu"), chunk_bytes=1, progress=False)
    big = analyze(layers, progress=False)
    for a, b in zip(small, big):
        single = fit_mp(layers[a.name].matrix_view().detach())
        assert a.fit.sigma_plus == pytest.approx(b.fit.sigma_plus, rel=1e-10)
        assert a.fit.sigma_plus == pytest.approx(single.sigma_plus, rel=1e-10)
        assert a.fit.n_spikes == b.fit.n_spikes == single.n_spikes


@pytest.mark.gpu
def test_analyze_on_cuda_matches_cpu(tiny_vit):
    from hf_mpprune import analyze, discover_layers

    layers = discover_layers(tiny_vit)
    cpu = analyze(layers, progress=False)
    gpu = analyze(layers, SpectralConfig(device="cuda"), progress=False)
    for a, b in zip(cpu, gpu):
        assert a.fit.sigma_plus == pytest.approx(b.fit.sigma_plus, rel=1e-9)
