"""Fault suite, Python API: bad configs, non-finite weights and calibration data, calibration batches that do not
fit the model, zero-size layers, grouped convs, save faults (disk full, read-only target). Each case asserts the
exception type, that the message names the bad value / layer / key, and that nothing was modified or written."""

import errno
import hashlib
import os
import subprocess

import pytest
import torch
from torch import nn

from hf_mpprune import (
    ConfigError,
    DataError,
    InvalidPatternError,
    MPPruner,
    NoPrunableLayersError,
    PatternError,
    PruningConfig,
    SparseGPTConfig,
    SpectralConfig,
    WandaConfig,
)
from hf_mpprune.core import ledger as ledger_mod
from hf_mpprune.core.constants import LEDGER_NAME
from tests.fault_helpers import fingerprint, make_checkpoint
from tests.tiny_models import bert_inputs, tiny_convnext, tiny_vit, vit_inputs


pytestmark = pytest.mark.usefixtures("one_thread")


def _state(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---- configs --------------------------------------------------------------------------------------------------------
BAD_CONFIGS = {
    "spectral_unknown_key": (lambda: PruningConfig(spectral={"foo": 1}), ConfigError, ["'foo'", "bema_alpha", "view"]),
    "pattern_letters": (lambda: PruningConfig(pattern=("a", "b")), PatternError, ["('a', 'b')", "k:n"]),
    "pattern_dash": (lambda: PruningConfig(pattern="2-4"), InvalidPatternError, ["'2-4'"]),
    "pattern_full": (lambda: PruningConfig(pattern="4:4"), InvalidPatternError, ["4:4", "keep < group"]),
    "pattern_fraction": (lambda: PruningConfig(pattern=(2.5, 4)), InvalidPatternError, ["(2.5, 4)"]),
    "pattern_half_dict": (lambda: PruningConfig(pattern={"keep": 2}), InvalidPatternError, ["{'keep': 2}"]),
    "sparsity_one": (lambda: PruningConfig(sparsity=1.0), ConfigError, ["sparsity=1.0", "[0, 1)"]),
    "sparsity_string": (lambda: PruningConfig(sparsity="0.5"), ConfigError, ["'0.5'"]),
    "sparsity_nan": (lambda: PruningConfig(sparsity=float("nan")), ConfigError, ["nan"]),
    "seed_negative": (lambda: PruningConfig(seed=-1), ConfigError, ["-1"]),
    "method_capitals": (lambda: PruningConfig(method="Magnitude"), ConfigError, ["'Magnitude'"]),
    "method_unknown": (lambda: PruningConfig.from_dict({"method": "nope"}), ConfigError, ["'nope'", "magnitude"]),
    "targets_int": (lambda: PruningConfig(targets=[1]), ConfigError, ["[1]"]),
    "spectral_list": (lambda: PruningConfig(spectral=[1]), ConfigError, ["SpectralConfig", "bema_beta"]),
    "spectral_alpha_str": (lambda: SpectralConfig(bema_alpha="x"), ConfigError, ["bema_alpha='x'", "float"]),
    "wanda_samples_str": (lambda: WandaConfig(calibration_samples="x"), ConfigError, ["calibration_samples='x'"]),
    "sparsegpt_blocksize": (lambda: SparseGPTConfig(blocksize=0), ConfigError, ["blocksize=0"]),
    "from_dict_unknown": (
        lambda: PruningConfig.from_dict({"method": "wanda", "foo": 1}),
        ConfigError,
        ["'foo'", "calibration_samples"],
    ),  # fmt: skip
    "from_dict_nested": (
        lambda: PruningConfig.from_dict({"spectral": {"bema": 1}}),
        ConfigError,
        ["'bema'", "compat"],
    ),
    "from_dict_not_mapping": (lambda: PruningConfig.from_dict([1, 2]), ConfigError, ["list"]),
    "from_yaml_invalid": (lambda: PruningConfig.from_yaml("method: [unclosed"), ConfigError, ["invalid YAML"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_a_clear_error(case):
    build, err, fragments = BAD_CONFIGS[case]
    with pytest.raises(err) as info:
        build()
    assert isinstance(info.value, ValueError)  # every config error is also a builtin ValueError
    for frag in fragments:
        assert frag in str(info.value), (frag, str(info.value))


def test_pattern_error_is_also_a_config_error():
    with pytest.raises(ConfigError):
        PruningConfig(pattern=("a", "b"))


# ---- finiteness: one check for all methods --------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_non_finite_weights_refused_naming_the_layer(tiny_vit, method, bad):
    layer = "vit.layers.1.mlp.fc1"
    with torch.no_grad():
        tiny_vit.get_submodule(layer).weight[3, 5] = bad
    before = _state(tiny_vit)
    pruner = MPPruner(tiny_vit, PruningConfig.from_dict({"method": method, "sparsity": 0.5}))
    with pytest.raises(DataError, match=layer.replace(".", r"\.")) as info:
        pruner.prune(calibration=vit_inputs(4))
    assert ("NaN" if bad != bad else "Inf") in str(info.value)
    assert _state(tiny_vit) == before and pruner.masks is None


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "mp-wanda"])
def test_nan_calibration_inputs_refused_naming_the_key(tiny_vit, method):
    x = vit_inputs(4)
    x["pixel_values"][1, 0, 2, 2] = float("nan")
    before = _state(tiny_vit)
    pruner = MPPruner(tiny_vit, PruningConfig.from_dict({"method": method, "sparsity": 0.5}))
    with pytest.raises(DataError, match="'pixel_values'") as info:
        pruner.prune(calibration=[x])
    assert "1 NaN" in str(info.value)
    assert _state(tiny_vit) == before and pruner.masks is None


# NaN parameters outside the registry (a LayerNorm) and NaN activations midway: tests/test_faults_methods.py, for
# every registered method.


# ---- calibration batches that do not fit the model --------------------------------------------------------------
def test_wrong_calibration_keys_name_the_expected_input(tiny_vit):
    pruner = MPPruner(tiny_vit, PruningConfig.from_dict({"method": "wanda", "sparsity": 0.5}))
    with pytest.raises(ConfigError) as info:
        pruner.prune(calibration=[bert_inputs()])
    msg = str(info.value)
    assert "'pixel_values'" in msg and "input_ids" in msg and "ViTForImageClassification" in msg


def test_text_model_given_images_names_input_ids(tiny_bert):
    pruner = MPPruner(tiny_bert, PruningConfig.from_dict({"method": "sparsegpt", "sparsity": 0.5}))
    before = _state(tiny_bert)
    with pytest.raises(ConfigError, match="'input_ids'") as info:
        pruner.prune(calibration=[vit_inputs()])
    assert "pixel_values" in str(info.value)
    assert _state(tiny_bert) == before


def test_wanda_without_calibration_names_the_argument(tiny_vit):
    with pytest.raises(ConfigError, match=r"prune\(calibration="):
        MPPruner(tiny_vit, PruningConfig.from_dict({"method": "wanda"})).prune()


# ---- layers ---------------------------------------------------------------------------------------------------------
class _WithEmpty(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 8)
        self.empty = nn.Linear(0, 4)
        self.b = nn.Linear(8, 4)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_zero_size_linear_is_excluded_and_sparsity_is_exact():
    model = _WithEmpty()
    pruner = MPPruner(model, PruningConfig("magnitude", 0.5))
    assert pruner.layers.names == ["a", "b"] and "nothing to prune" in pruner.layers.excluded["empty"]
    masks = pruner.prune()
    assert masks.num_pruned == (64 + 32) // 2 and masks.sparsity() == 0.5


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_model_with_only_a_zero_size_linear_has_no_prunable_layers():
    with pytest.raises(NoPrunableLayersError):
        MPPruner(nn.Sequential(nn.Linear(0, 4)), PruningConfig("magnitude", 0.5))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_activation_aware_methods_skip_depthwise_convs(method, caplog):
    model = tiny_convnext()
    dw = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw
    before = {n: model.get_submodule(n).weight.detach().clone() for n in dw}
    pruner = MPPruner(model, PruningConfig.from_dict({"method": method, "sparsity": 0.5}))
    with caplog.at_level("WARNING", logger="hf_mpprune"):
        masks = pruner.prune(calibration=[vit_inputs(4)])
    step = pruner.ledger.steps[-1]
    assert sorted(step["skipped"]) == sorted(dw) and "depthwise" in caplog.text
    for n in dw:  # skipped: dense mask, weights untouched
        assert bool(masks[n].all()) and torch.equal(model.get_submodule(n).weight, before[n])
    others = [n for n in masks.names if n not in dw]
    pruned = sum(int((~masks[n]).sum()) for n in others)
    total = sum(masks[n].numel() for n in others)
    assert pruned == total // 2  # the target is met exactly over the layers that were pruned


# ---- save faults: disk full, read-only target --------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path):
    pruner = make_checkpoint(tmp_path / "ckpt", analyze=False)
    pruner.prune(sparsity=0.7)  # a new state to save over the old one
    return pruner, tmp_path / "ckpt"


def _leftovers(parent):
    return sorted(n for n in os.listdir(parent) if n != "ckpt")


@pytest.mark.parametrize("where", ["weights", "sidecar"])
def test_disk_full_during_save_keeps_previous_checkpoint(checkpoint, monkeypatch, where):
    pruner, path = checkpoint
    before = fingerprint(path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "weights":
        monkeypatch.setattr(type(pruner.model), "save_pretrained", full)
    else:
        monkeypatch.setattr(ledger_mod.Ledger, "to_json", full)
    with pytest.raises(OSError) as info:
        pruner.save_pretrained(path)
    assert info.value.errno == errno.ENOSPC
    assert fingerprint(path) == before and _leftovers(path.parent) == []


def test_read_only_target_keeps_previous_checkpoint(checkpoint, monkeypatch):
    pruner, path = checkpoint
    before = fingerprint(path)
    real_rename = os.rename

    def read_only(src, dst, *a, **k):
        if os.fspath(dst) == str(path) or os.fspath(src) == str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr("hf_mpprune.hub.atomic._exchange", lambda a, b: False)  # force the two-rename path
    monkeypatch.setattr(os, "rename", read_only)
    with pytest.raises(OSError) as info:
        pruner.save_pretrained(path)
    assert info.value.errno == errno.EROFS and str(path) in str(info.value)
    monkeypatch.undo()
    assert fingerprint(path) == before and _leftovers(path.parent) == []


def _mount_tmpfs(where, size="300k") -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir()
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return rc.returncode == 0


def test_real_disk_full_on_a_small_tmpfs(tmp_path):
    """A real ENOSPC (tmpfs smaller than the checkpoint): nothing is left behind, the error names the cause."""
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC tests above cover the logic")
    try:
        pruner = MPPruner(tiny_vit(), PruningConfig())
        pruner.prune()
        with pytest.raises(OSError) as info:
            pruner.save_pretrained(mnt / "ckpt")
        assert info.value.errno == errno.ENOSPC or "No space" in str(info.value)
        assert os.listdir(mnt) == []  # no temp dir, no half checkpoint
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_save_over_a_file_is_refused(tiny_vit, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    pruner = MPPruner(tiny_vit, PruningConfig())
    pruner.prune()
    with pytest.raises(ConfigError, match="not a directory"):
        pruner.save_pretrained(target)
    assert target.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["file"]


def test_ledger_written_by_save_round_trips(checkpoint):
    pruner, path = checkpoint
    pruner.save_pretrained(path)
    assert (path / LEDGER_NAME).is_file()
    assert MPPruner.from_pretrained(path).masks.sparsity() == pytest.approx(0.7, abs=1e-3)


def test_real_read_only_mount_keeps_previous_checkpoint(tmp_path):
    """A real EROFS: a checkpoint saved on a tmpfs that is then remounted read-only; a new save fails cleanly."""
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, size="8m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-EROFS test above covers the logic")
    try:
        pruner = make_checkpoint(mnt / "ckpt", analyze=False)
        before = fingerprint(mnt)
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True).returncode == 0
        pruner.prune(sparsity=0.7)
        with pytest.raises(OSError) as info:
            pruner.save_pretrained(mnt / "ckpt")
        assert info.value.errno == errno.EROFS
        assert fingerprint(mnt) == before
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
