"""timm checkpoints (issue 25): a random-init timm ViT and ResNet saved in timm's Hub layout (`save_for_hf`) load
with `TimmWrapperForImageClassification` through `MPPruner.from_pretrained`; layer discovery, the MP analysis (the
fused qkv), every method, CAST, save / reload, export, optimum's dummy inputs and ToMe work on them.

These run where timm imports (`make test-timm`: timm needs a torchvision built for the installed torch)."""

import json
import os

import pytest
import torch


timm = pytest.importorskip("timm", reason="timm needs a torchvision that imports beside this torch: make test-timm")

from timm.models._hub import save_for_hf  # noqa: E402
from timm.models.vision_transformer import Block  # noqa: E402
from transformers import AutoModelForImageClassification, TimmWrapperForImageClassification  # noqa: E402

from hf_mpprune import (  # noqa: E402
    MPPruner,
    PruningConfig,
    SpectralConfig,
    apply_tome,
    export,
    get_method,
    list_methods,
    mac_report,
    remove_tome,
)
from hf_mpprune.core.config import config_class  # noqa: E402
from hf_mpprune.core.tasks import dummy_inputs  # noqa: E402
from hf_mpprune.deploy.tome import block_family, tome_state, upstream_forward_sha256  # noqa: E402

from .test_cycles import StubTrainStep  # noqa: E402


pytestmark = pytest.mark.timm
ARGS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}),
    "resnet": ("resnet18", {"layers": [1, 1, 1, 1], "channels": [16, 16, 32, 32], "stem_width": 16}),
}


def _save(path: str, which: str) -> str:
    arch, kwargs = ARGS[which]
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=10,
                              pretrained_cfg_overlay={"input_size": (3, 32, 32)}, **kwargs)  # fmt: skip
    save_for_hf(model, path, model_args=kwargs, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("timm")
    return {w: _save(str(base / w), w) for w in ARGS}


def _targets(which: str) -> dict:
    return (
        {} if which == "vit" else {"targets": ["Conv2d"], "ignore": ["timm_model.conv1"]}
    )  # the stem has 3·7·7 inputs


def test_hub_layout_loads_as_timm_wrapper_with_roles_and_optimum_inputs(dirs):
    assert "model_type" not in json.load(open(os.path.join(dirs["vit"], "config.json")))
    pruner = MPPruner.from_pretrained(dirs["vit"])
    assert isinstance(pruner.model, TimmWrapperForImageClassification)
    roles = {la.name: la.role for la in pruner.layers}
    assert roles["timm_model.blocks.0.attn.qkv"] == roles["timm_model.blocks.0.attn.proj"] == "attn"
    assert roles["timm_model.blocks.1.mlp.fc1"] == "mlp" and roles["timm_model.head"] == "head"
    assert roles["timm_model.patch_embed.proj"] == "embed"
    x = dummy_inputs(pruner.model, 2)  # optimum's generator, sized by the timm data config
    assert tuple(x["pixel_values"].shape) == (2, 3, 32, 32)
    plain = AutoModelForImageClassification.from_pretrained(dirs["vit"]).eval()
    with torch.no_grad():
        assert torch.equal(pruner.model(**x).logits, plain(**x).logits)
    assert mac_report(pruner.model, dummy_inputs(pruner.model, 1)).dense_macs > 0


def test_fused_qkv_is_one_matrix_in_the_analysis(dirs):
    pruner = MPPruner.from_pretrained(dirs["vit"])
    report = pruner.analyze(SpectralConfig(view="fused_qkv"), progress=False)
    row = report["timm_model.blocks.0.attn.qkv"]  # timm's qkv is already the fused (3d, d) matrix
    assert tuple(row.fit.shape) == (192, 64) and row.members == ["timm_model.blocks.0.attn.qkv"]
    assert row.role == "attn" and row.fit.sigma_plus > 0


def _config(method: str, which: str) -> PruningConfig:
    cls = config_class(method)
    spec = get_method(method)
    kw = {"pattern": "2:4"} if spec.structured else {"sparsity": 0.5}
    if "calibration_samples" in {f.name for f in cls.__dataclass_fields__.values()}:
        kw["calibration_samples"] = 8
    return cls(method=method, **kw, **_targets(which))


@pytest.mark.parametrize("which", sorted(ARGS))
@pytest.mark.parametrize("method", list_methods())
def test_every_method_prunes_the_timm_checkpoint(dirs, method, which):
    pruner = MPPruner.from_pretrained(dirs[which], _config(method, which))
    calib = dummy_inputs(pruner.model, 8, seed=1)
    spec = get_method(method)
    masks = pruner.prune(
        calibration=calib if spec.needs_calibration else None,
        train_step=StubTrainStep() if spec.needs_training else None,  # the cyclic methods' training: a stub
    )
    masks.check_model(pruner.model)
    if spec.structured:
        assert str(masks.pattern) == "2:4" and masks.sparsity() == pytest.approx(0.5)
    else:
        assert abs(masks.sparsity() - 0.5) < 1e-3
    for name, keep in masks.items():
        assert int((pruner.model.get_submodule(name).weight[~keep] != 0).sum()) == 0


@pytest.mark.parametrize("which", sorted(ARGS))
def test_save_reload_and_export_keep_every_zero(dirs, which, tmp_path):
    cfg = PruningConfig("cast", pattern="2:4", calibration_samples=8, **_targets(which))
    pruner = MPPruner.from_pretrained(dirs[which], cfg)
    masks = pruner.prune(calibration=dummy_inputs(pruner.model, 8, seed=2))
    out = pruner.save_pretrained(tmp_path / "out")
    x = dummy_inputs(pruner.model, 2, seed=5)
    back = MPPruner.from_pretrained(out)  # masks verified against the zeros and the ledger
    plain = AutoModelForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        want = pruner.model(**x).logits
        assert torch.equal(back.model(**x).logits, want) and torch.equal(plain(**x).logits, want)
    assert back.masks.sha256() == masks.sha256()
    report = export(out, tmp_path / f"{which}.onnx")
    assert report.zeros_checked == masks.num_pruned and report.max_abs_diff <= 1e-5


def test_tome_on_timm_blocks(dirs):
    model = MPPruner.from_pretrained(dirs["vit"]).model
    x = dummy_inputs(model, 2, seed=3)
    with torch.no_grad():
        ref = model(**x).logits
        record = apply_tome(model, r=0)
        assert record["family"] == "timm ViT" and record["protected_tokens"] == 1 and record["tokens_in"] == 17
        assert torch.equal(model(**x).logits, ref)  # r = 0: the upstream block, bit for bit
        apply_tome(model, r=4)
        merged = model(**x).logits
        assert tome_state(model).token_counts == [17, 13] and not torch.equal(merged, ref)
        remove_tome(model)
        assert torch.equal(model(**x).logits, ref)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_the_upstream_block_forward_is_the_one_tome_was_written_against():
    """ToMe replaces timm's Block.forward (no hook between attention and MLP); a timm release that changes it fails
    here: re-check `_timm_block_forward`, then update the pinned SHA-256."""
    assert upstream_forward_sha256(Block) == block_family(Block.__new__(Block)).written_against
