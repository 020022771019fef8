"""Configs: validation, JSON/YAML round trip of every registered method's config, strict keys."""

import os

import pytest

from hf_mpprune import ConfigError, KeepPattern, PruningConfig, get_method, list_methods
from hf_mpprune.core.errors import MPPruneWarning


@pytest.mark.parametrize("name", list_methods())
def test_every_registered_config_round_trips(name, tmp_path):
    pattern = "2:4" if get_method(name).structured else None  # k:n methods require a pattern
    cfg = PruningConfig(
        method=name, sparsity=0.3, pattern=pattern, targets=["Linear"], ignore=["re:head"], seed=3
    ).resolve()
    assert type(cfg) is get_method(name).config_cls
    back = PruningConfig.from_dict(cfg.to_dict())
    assert back == cfg and type(back) is type(cfg)
    cfg.to_json_file(tmp_path / "c.json")
    assert PruningConfig.from_json_file(tmp_path / "c.json") == cfg
    assert PruningConfig.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.to_dict()["hf_mpprune_version"]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_sparsity_validated(bad):
    with pytest.raises(ConfigError, match="sparsity"):
        PruningConfig(sparsity=bad)


def test_unknown_method_lists_registered_names():
    with pytest.raises(ConfigError, match="registered methods: .*magnitude"):
        PruningConfig(method="nope").resolve()
    with pytest.raises(ConfigError, match="lowercase"):
        PruningConfig(method="Magnitude")


def test_strict_and_forward_compatible_keys():
    d = PruningConfig().to_dict() | {"future_knob": 1}
    with pytest.raises(ConfigError, match="unknown key.*future_knob"):
        PruningConfig.from_dict(d)
    with pytest.warns(MPPruneWarning, match="dropped"):
        assert PruningConfig.from_dict(d, strict=False) == PruningConfig().resolve()
    with pytest.raises(ConfigError, match="unknown key.*bema_gamma"):
        PruningConfig.from_dict({"method": "magnitude", "spectral": {"bema_gamma": 1}})
    with pytest.raises(ConfigError, match="invalid YAML"):
        PruningConfig.from_yaml("method: [unclosed")


def test_keep_pattern_is_keep_count():
    p = KeepPattern.parse("2:4")
    assert (p.keep, p.group, p.density, str(p)) == (2, 4, 0.5, "2:4")
    assert KeepPattern.parse((6, 12)) == KeepPattern.parse({"keep": 6, "group": 12}) == KeepPattern(6, 12)
    assert PruningConfig(pattern="8:16").pattern == KeepPattern(8, 16)
    for bad in ("4:4", "0:4", "5:4", "2-4", "x"):
        with pytest.raises(ConfigError):
            KeepPattern.parse(bad)


def test_patterns_type_checked():
    with pytest.raises(ConfigError, match="targets"):
        PruningConfig(targets=[1])
    assert PruningConfig(targets="Linear").targets == ["Linear"]


def test_config_save_and_from_pretrained_round_trip(tmp_path):
    """Configs serialise like PEFT's: save_pretrained(dir) / from_pretrained(dir) give the registered class back."""
    from hf_mpprune import MPWandaConfig

    cfg = MPWandaConfig(sparsity=0.6, reconstruct=True, calibration_samples=32, seed=3)
    path = cfg.save_pretrained(tmp_path / "run")
    assert os.path.basename(path) == "mpprune_config.json"
    back = PruningConfig.from_pretrained(tmp_path / "run")
    assert type(back) is MPWandaConfig and back == cfg
    assert PruningConfig.from_pretrained(path) == cfg  # the file itself works too
    with pytest.raises(ConfigError, match="no pruning config"):
        PruningConfig.from_pretrained(tmp_path / "missing")
