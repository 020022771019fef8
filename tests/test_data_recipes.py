"""Recipes on user data, end to end and offline: an imagefolder of digits with a tiny saved ViT (wanda + KD, and the
cyclic Hybrid), MiniLM with a jsonl text dataset (mp-wanda, embedding agreement), the functional `oneshot`."""

import json
import os

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from hf_mpprune import MPPruner, PruningConfig, oneshot
from hf_mpprune.cli.main import main
from hf_mpprune.data import DatasetSpec
from hf_mpprune.metrics import compute_topk
from tests.data_helpers import N_VAL, digits_imagefolder, sentences_jsonl, tiny_vit_dir


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"images": digits_imagefolder(str(root / "digits")), "vit": tiny_vit_dir(str(root / "vit"))}


def _write(path, data) -> str:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    return str(path)


def _card_results(path):
    meta = ModelCard.load(os.path.join(path, "README.md")).data.to_dict()
    return [(r["dataset"], m) for e in meta["model-index"] for r in e["results"] for m in r["metrics"]]


def test_cli_run_imagefolder_wanda_kd_top1(local, tmp_path, capsys):
    """analyze → wanda 50% (calibration from train) → 1 epoch KD (MPDistillationTrainer) → top-1 on validation → save;
    the card's model-index and the ledger carry the data provenance; plain transformers reloads identical logits."""
    from transformers import AutoImageProcessor, ViTForImageClassification

    recipe = _write(tmp_path / "r.yaml", {
        "name": "tiny-vit-wanda", "model": {"id": "REPLACED"}, "pruning": {"method": "wanda", "sparsity": 0.5},
        "calibration": {"dataset": "REPLACED", "split": "train", "size": 64},
        "distill": {"num_train_epochs": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 64},
        "evaluation": {"dataset": "REPLACED", "split": "validation"}, "audit": {"legality": True},
        "output": {"plots": False},
    })  # fmt: skip
    out = str(tmp_path / "out")
    rc = main(["run", recipe, "--output", out, "--set", f"model.id={local['vit']}",
               "--set", f"calibration.dataset={local['images']}", "--set", f"evaluation.dataset={local['images']}"])  # fmt: skip
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sparsity"] == 0.5
    led = json.load(open(os.path.join(out, "mpprune_ledger.json")))
    splits = led["data"]["splits"]
    assert {"calibration", "evaluation", "train"} <= set(splits)
    assert splits["calibration"]["count"] == 64 and splits["calibration"]["split"] == "train"
    assert splits["evaluation"]["count"] == N_VAL and splits["evaluation"]["dataset_id"] == local["images"]
    assert all(len(s["sha256"]) == 64 and s["fingerprint"] for s in splits.values())
    distill = [s for s in led["steps"] if s.get("kind") == "distill"]
    assert distill and distill[0]["trainer"] == "MPDistillationTrainer" and distill[0]["num_train_epochs"] == 1
    top1 = {m["stage"]: m for m in led["metrics"] if m["name"] == "top1"}
    assert set(top1) == {"base", "pruned", "distilled"} and top1["distilled"]["split"] == "validation"
    assert top1["distilled"]["dataset_revision"] == splits["evaluation"]["fingerprint"]
    assert result["accuracy"] == top1["distilled"]["value"]
    card = _card_results(out)
    assert any(d["name"] == local["images"] and d["split"] == "validation" and m["type"] == "top1" for d, m in card)
    # plain transformers: exact zeros, and the ledger's top-1 recomputed from the reloaded model and processor
    model = ViTForImageClassification.from_pretrained(out).eval()
    proc = AutoImageProcessor.from_pretrained(out)
    back = MPPruner.from_pretrained(out)  # masks verified against the weights' zeros
    zeros = sum(int((la.weight == 0).sum()) for la in back.layers)
    assert zeros >= back.masks.num_pruned and back.masks.sparsity() == 0.5
    import datasets

    val = datasets.load_dataset(local["images"], split="validation")
    x = proc(images=[im.convert("RGB") for im in val["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=x).logits
        assert torch.equal(logits, back.model(pixel_values=x).logits)
    assert compute_topk(logits.numpy(), val["label"], [1])["top1"] == top1["distilled"]["value"]


@pytest.mark.parametrize(
    "targets", [["re:encoder\\.layer\\.[01]\\."], pytest.param(None, marks=pytest.mark.slow)], ids=["2-blocks", "all"]
)
def test_minilm_jsonl_mp_wanda_embedding_agreement(tmp_path, minilm_path, targets):
    """MiniLM (real weights) + a jsonl text dataset → mp-wanda 50% → embedding agreement (disjoint slices of one
    file) in the ledger and the card. The default run prunes the first two blocks (CPU time); `all` every layer."""
    jsonl = sentences_jsonl(str(tmp_path / "s.jsonl"), n=48)
    pruning = {"method": "mp-wanda", "sparsity": 0.5, **({"targets": targets} if targets else {})}
    recipe = _write(tmp_path / "r.yaml", {
        "model": {"id": str(minilm_path)}, "pruning": pruning,
        "calibration": {"dataset": jsonl, "split": "train[:32]", "size": 32, "batch_size": 16},
        "evaluation": {"dataset": jsonl, "split": "train[32:]", "batch_size": 16}, "output": {"plots": False},
    })  # fmt: skip
    out = str(tmp_path / "out")
    assert main(["run", recipe, "--output", out]) == 0
    back = MPPruner.from_pretrained(out)
    assert back.masks.sparsity() == pytest.approx(0.5, abs=1e-6) and len(back.masks) == (12 if targets else 37)
    ea = {m["stage"]: m for m in back.ledger.metrics if m["name"] == "embedding_agreement"}
    assert ea["base"]["value"] == pytest.approx(1.0) and 0.5 < ea["pruned"]["value"] < 1.0
    assert ea["pruned"]["task"] == "feature-extraction" and ea["pruned"]["split"] == "train[32:]"
    splits = back.ledger.data["splits"]
    assert splits["calibration"]["indices"] == list(range(32)) and splits["evaluation"]["indices"] == list(
        range(32, 48)
    )
    card = _card_results(out)
    assert any(m["type"] == "embedding_agreement" and d["name"] == jsonl for d, m in card)


def test_hybrid_cyclic_on_imagefolder_through_the_runner(local, tmp_path):
    """Hybrid (magnitude, then SER after the switch) trains between steps on the training rows; the switch is
    decided on a selection split carved from training data, never from evaluation."""
    pruner = oneshot(
        local["vit"],
        {"pruning": {"method": "hybrid", "sparsity": 0.4, "schedule": [0.2, 0.4], "switch_sparsity": 0.2,
                     "phase_a_min_batches": 2, "phase_a_batch_size": 32},
         "finetune": {"epochs": 0.5, "lr": 1e-2}, "train": {"selection": 0.2, "batch_size": 32},
         "output": {"plots": False}},
        dataset=local["images"], output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    led = pruner.ledger
    stages = [s.get("stage") for s in led.steps]
    assert stages == ["magnitude", "ser"] and pruner.masks.sparsity() == pytest.approx(0.4, abs=2e-3)
    assert all(s["finetune"]["steps"] > 0 and "accuracy" in s["post_ft_selection"] for s in led.steps)
    splits = led.data["splits"]
    assert splits["selection"]["count"] == 60 and splits["train"]["count"] == 240
    assert splits["selection"]["dataset"] == splits["train"]["dataset"]
    assert not set(splits["selection"]["indices"]) & set(splits["train"]["indices"])
    assert splits["evaluation"]["split"] == "validation" and os.path.isfile(tmp_path / "out" / "config.json")


def test_oneshot_with_a_model_object_and_a_dataset_object(local, tmp_path, tiny_vit):
    import datasets

    ds = datasets.load_dataset(local["images"])
    pruner = oneshot(tiny_vit, PruningConfig(method="wanda", sparsity=0.5), dataset=DatasetSpec(ds, size=32),
                     output_dir=str(tmp_path / "o"), processor=local["vit"])  # fmt: skip
    assert pruner.model is tiny_vit and pruner.masks.sparsity() == 0.5
    assert pruner.ledger.data["splits"]["calibration"]["dataset_id"].startswith("in-memory:")
    assert {m["name"] for m in pruner.ledger.metrics} == {"top1", "top5"}
