"""PEFT on a pruned model (issue 14): LoRA/DoRA → masked merge keeps every zero (lossy step in the ledger, retention
measured) → save → MPPruner.from_pretrained verifies the masks; SHiRA restricted to kept entries loses nothing."""

import copy

import pytest
import torch

from hf_mpprune import MPDistillationArguments, MPDistillationTrainer, MPPruner, PruningConfig
from hf_mpprune.builtins.digits import DigitsDataset, build_digits_vit, load_digits_splits
from hf_mpprune.core.attached import attached_masks
from hf_mpprune.training.masking import realised_sparsity
from hf_mpprune.training.peft import masked_merge, sparse_adapter_config


peft = pytest.importorskip("peft")  # optional extra `hf-mpprune[peft]`
pytestmark = pytest.mark.usefixtures("one_thread")
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


@pytest.fixture
def setup():
    tr = load_digits_splits(0)["train"]
    data = DigitsDataset(tr.x[:128], tr.y[:128])
    teacher = build_digits_vit(0, hidden=32, layers=2, heads=2, mlp=64)
    student = copy.deepcopy(teacher)
    pruner = MPPruner(student, PruningConfig("magnitude", 0.5, targets=["role:attn", "role:mlp"]))
    pruner.prune()
    return teacher, pruner, data


def _train(peft_model, teacher, data, tmp_path):
    args = MPDistillationArguments(
        output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", learning_rate=1e-2, warmup_steps=0,
        max_steps=4, per_device_train_batch_size=32, save_strategy="no", seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = MPDistillationTrainer(model=peft_model, teacher=teacher, args=args, train_dataset=data)
    assert trainer.masks is not None  # found through the PEFT wrapper
    trainer.train()


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_lora_masked_merge_save_and_reload(setup, tmp_path, use_dora):
    teacher, pruner, data = setup
    masks = pruner.masks
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LINEARS, init_lora_weights="gaussian", use_dora=use_dora)
    model = peft.get_peft_model(pruner.model, cfg)
    _train(model, teacher, data, tmp_path)
    batch = {"pixel_values": torch.stack([data[i]["pixel_values"] for i in range(16)])}
    merged = masked_merge(model, eval_inputs=batch)

    assert merged is pruner.model and attached_masks(merged) is masks
    for name, m in masks.items():
        pruned = merged.get_submodule(name).weight[~m]
        assert torch.all(pruned == 0) and not torch.signbit(pruned).any(), name
    assert realised_sparsity(merged, masks) == masks.sparsity() == 0.5
    step = pruner.ledger.steps[-1]
    assert [s["method"] for s in pruner.ledger.steps] == ["magnitude", "distill", "adapter-merge"]
    assert step["lossy"] and step["re_zeroed"] > 1000  # a plain merge_and_unload would have un-pruned these
    assert 0.3 < step["update_retention"] < 1 and step["output_retention"] < 1
    assert step["adapters"]["default"]["r"] == 4 and step["adapters"]["default"]["use_dora"] is use_dora

    pruner.save_pretrained(tmp_path / "merged")
    loaded = MPPruner.from_pretrained(tmp_path / "merged")  # verifies masks against the zeros
    assert loaded.masks == masks and [s["method"] for s in loaded.ledger.steps][-1] == "adapter-merge"
    x = batch["pixel_values"]
    torch.testing.assert_close(loaded.model(pixel_values=x).logits, merged(pixel_values=x).logits)


def test_shira_on_kept_entries_loses_nothing(setup, tmp_path):
    teacher, pruner, data = setup
    masks = pruner.masks
    before = {n: pruner.model.get_submodule(n).weight.detach().clone() for n in masks}
    model = peft.get_peft_model(pruner.model, sparse_adapter_config(pruner.model, r=2, seed=0))
    _train(model, teacher, data, tmp_path)
    merged = masked_merge(model)
    step = pruner.ledger.steps[-1]
    assert step["re_zeroed"] == 0 and not step["lossy"] and step["update_retention"] == pytest.approx(1.0, abs=1e-6)
    for name, m in masks.items():
        w = merged.get_submodule(name).weight
        changed = w != before[name]
        assert int(changed.sum()) == 2 * sum(w.shape)  # r·(in + out) trained entries, all of them kept entries
        assert not bool((changed & ~m).any()) and torch.all(w[~m] == 0)
    assert realised_sparsity(merged, masks) == 0.5
