"""optimum does what it is good at: the dummy inputs of export, MAC counting, the speed audit and the random audit
set of the certificates come from its input generators (`optimum.utils.input_generators`), for every family the
package supports; the task of a model and its `AutoModelFor*` class come from its `TasksManager`."""

import json
import random

import pytest
import torch
from optimum.utils.input_generators import DummyTextInputGenerator, DummyVisionInputGenerator
from optimum.utils.normalized_config import NormalizedTextConfig, NormalizedVisionConfig
from transformers import AutoModelForImageClassification

from hf_mpprune import export, mac_report
from hf_mpprune.cli.certify import make_samples
from hf_mpprune.core.files import check_model_dir
from hf_mpprune.core.loading import load_model
from hf_mpprune.core.tasks import dummy_inputs, folder_task, infer_task, task_model_class
from hf_mpprune.deploy.export import example_inputs
from hf_mpprune.deploy.speed import make_inputs

from . import tiny_models


FAMILIES = {  # builder, expected task, expected input shapes at batch 2 (sequence 16)
    "vit": (tiny_models.tiny_vit, "image-classification", {"pixel_values": (2, 3, 32, 32)}),
    "deit": (tiny_models.tiny_deit, "image-classification", {"pixel_values": (2, 3, 32, 32)}),
    "swin": (tiny_models.tiny_swin, "image-classification", {"pixel_values": (2, 3, 32, 32)}),
    "convnext": (tiny_models.tiny_convnext, "image-classification", {"pixel_values": (2, 3, 224, 224)}),
    "resnet": (tiny_models.tiny_resnet, "image-classification", {"pixel_values": (2, 3, 64, 64)}),
    "bert": (tiny_models.tiny_bert, "feature-extraction",
             {"input_ids": (2, 16), "attention_mask": (2, 16), "token_type_ids": (2, 16)}),
}  # fmt: skip


def _optimum_reference(model, task: str, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    """What optimum's own generators give for this config and seed (the known truth)."""
    torch.manual_seed(seed)
    random.seed(seed)
    if model.main_input_name == "pixel_values":
        gen = DummyVisionInputGenerator(task, NormalizedVisionConfig(model.config), batch_size=batch)
        return {"pixel_values": gen.generate("pixel_values")}
    gen = DummyTextInputGenerator(task, NormalizedTextConfig(model.config), batch_size=batch, sequence_length=seq)
    return {n: gen.generate(n) for n in ("input_ids", "attention_mask", "token_type_ids")}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_macs_audit_and_certificates_take_optimum_inputs(family, tmp_path):
    build, task, shapes = FAMILIES[family]
    model = build()
    assert infer_task(model) == task
    ref = _optimum_reference(model, task, 2, 16, seed=3)
    got = dummy_inputs(model, 2, 16, seed=3)
    assert {k: tuple(v.shape) for k, v in got.items()} == shapes
    for name, tensor in ref.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
    if "attention_mask" in got:  # optimum pads on the right: the export checks see masking
        assert (got["attention_mask"][:, -1] == 0).all() and (got["attention_mask"][:, 0] == 1).all()
    # the export's example inputs, the speed audit's and the audit verb's inputs, the certificates' random set
    want = dummy_inputs(model, 2, 16, seed=0)
    for built in (
        example_inputs(model),
        make_inputs(model, 2, "cpu", seq_len=16),
        make_samples(model, 2, "random")[0],
    ):
        assert built.keys() == want.keys()
        for name, tensor in want.items():
            torch.testing.assert_close(built[name], tensor, rtol=0, atol=0)
    rep = mac_report(model, make_inputs(model, 1, "cpu", seq_len=16))
    assert rep.dense_macs > 0 and rep.rows
    if family == "resnet":  # its config has no image size: the hand-written inputs could not build it
        out = export(model, tmp_path / f"{family}.pt2", format="pt2")
        assert out.input_names == list(shapes)[:1] and out.max_abs_diff <= 1e-5


def test_a_folder_without_an_architecture_class_loads_with_the_class_of_its_task(tmp_path):
    """A config that names no class gets the AutoModelFor* class of its task from TasksManager: a timm checkpoint
    (timm's Hub layout: `architecture`, `pretrained_cfg`, no `model_type`) is an image classifier; anything else is
    loaded with `AutoModel`, as before."""
    timm_dir = tmp_path / "timm"
    timm_dir.mkdir()
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": 10, "pretrained_cfg": {"input_size": [3, 32, 32]}}
    (timm_dir / "config.json").write_text(json.dumps(config))
    assert check_model_dir(str(timm_dir))["architecture"] == "vit_tiny_patch16_224"  # no model_type needed
    assert folder_task(str(timm_dir)) == "image-classification"
    assert task_model_class("image-classification") is AutoModelForImageClassification
    model = tiny_models.tiny_vit()
    model.save_pretrained(tmp_path / "vit")
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "vit" / "config.json").write_text(json.dumps(config))
    assert folder_task(str(tmp_path / "vit")) == "feature-extraction"
    assert type(load_model(str(tmp_path / "vit"))).__name__ == "ViTModel"
