"""MPDistillationTrainer: frozen masks through AdamW/SGD, frozen teacher, checkpoint/resume, KD loss identities,
presets, metrics and bad input. A tiny ViT (8×8 digits, patch 2, width 32) keeps the whole file fast."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from hf_mpprune import (
    ConfigError,
    LedgerMismatchError,
    MaskFreezeCallback,
    Masks,
    MPDistillationArguments,
    MPDistillationTrainer,
    MPPruner,
    PatternError,
    PruningConfig,
    kd_loss,
)
from hf_mpprune.builtins.digits import DigitsDataset, build_digits_vit, load_digits_splits
from hf_mpprune.core.constants import MASKS_NAME
from hf_mpprune.metrics import compute_topk, embedding_agreement, make_compute_metrics
from hf_mpprune.training.losses import feature_loss, mean_pool
from hf_mpprune.training.masking import realised_sparsity


torch.set_flush_denormal(True)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    splits = load_digits_splits(0)
    tr = splits["train"]
    return DigitsDataset(tr.x[:128], tr.y[:128])  # 4 steps per epoch at batch 32


@pytest.fixture
def setup():
    """(dense teacher, pruned student at 50% global magnitude, masks)."""
    teacher = build_digits_vit(0, hidden=32, layers=2, heads=2, mlp=64)
    student = copy.deepcopy(teacher)
    masks = MPPruner(student, PruningConfig("magnitude", 0.5)).prune()
    return teacher, student, masks


def make_args(tmp_path, **kw):
    base = {"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": "none", "learning_rate": 1e-2}
    base.update(warmup_steps=0, num_train_epochs=2, per_device_train_batch_size=32, save_strategy="no", seed=0)
    base.update(logging_steps=2, disable_tqdm=True)
    return MPDistillationArguments(**{**base, **kw})


class CheckMasks(TrainerCallback):
    """After every optimizer step (on_step_end runs after all on_optimizer_step callbacks): pruned entries are
    exactly +0.0 and the realised sparsity equals the mask sparsity."""

    def __init__(self, masks):
        self.masks, self.steps = masks, 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        for name, m in self.masks.items():
            w = model.get_submodule(name).weight
            pruned = w[~m]
            assert torch.all(pruned == 0) and not torch.signbit(pruned).any(), f"{name} step {state.global_step}"
        assert realised_sparsity(model, self.masks) == self.masks.sparsity()
        self.steps += 1


# ---- frozen masks, frozen teacher -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("optim", "optim_args", "accum"),
    [("adamw_torch", None, 1), ("sgd", "momentum=0.9", 2)],
    ids=["adamw", "sgd-momentum-grad-accum"],
)
def test_masks_stay_frozen_and_teacher_untouched(setup, digits, tmp_path, optim, optim_args, accum):
    teacher, student, masks = setup
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {n: student.get_submodule(n).weight.detach().clone() for n in masks}
    sparsity = masks.sparsity()
    check = CheckMasks(masks)
    args = make_args(
        tmp_path, optim=optim, optim_args=optim_args, weight_decay=0.1, gradient_accumulation_steps=accum,
        per_device_train_batch_size=32 // accum,
    )  # fmt: skip
    trainer = MPDistillationTrainer(student, teacher, masks, args=args, train_dataset=digits, callbacks=[check])
    trainer.train()

    assert check.steps == 8  # 2 epochs × 4 optimizer steps (of 32 images), every one checked
    assert masks.sparsity() == sparsity == realised_sparsity(student, masks) == 0.5
    moved = [(student.get_submodule(n).weight != student_before[n])[m].float().mean() for n, m in masks.items()]
    assert min(moved) > 0.9, "kept entries must train"
    # §1.4 step 1: gradients were masked, so the optimizer state never accumulated on pruned entries
    key = "exp_avg" if optim == "adamw_torch" else "momentum_buffer"
    for n, m in masks.items():
        state = trainer.optimizer.state[student.get_submodule(n).weight][key]
        assert torch.all(state[~m] == 0) and state[m].abs().sum() > 0
    # the teacher: no grads, eval mode, bit-identical, and its requires_grad flags left alone (a dense model the
    # caller deep-copies into the next student must still train)
    assert all(p.grad is None and p.requires_grad for p in teacher.parameters())
    assert not trainer.teacher.training
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    logged = [h["sparsity"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 4 and all(s == 0.5 for s in logged)


def test_user_frozen_masked_layer_and_teacher_reused_as_next_student(setup, digits, tmp_path):
    teacher, student, masks = setup
    frozen = next(iter(masks.names))
    student.get_submodule(frozen).weight.requires_grad_(False)  # the user freezes one pruned layer
    before = student.get_submodule(frozen).weight.detach().clone()
    MPDistillationTrainer(
        student, teacher, masks, args=make_args(tmp_path, num_train_epochs=1), train_dataset=digits
    ).train()
    assert torch.equal(student.get_submodule(frozen).weight, before)
    assert realised_sparsity(student, masks) == masks.sparsity() == 0.5
    # the same dense teacher, copied into a second student after a first distillation, trains normally
    second = copy.deepcopy(teacher)
    masks2 = MPPruner(second, PruningConfig("magnitude", 0.3)).prune()
    MPDistillationTrainer(
        second, teacher, masks2, args=make_args(tmp_path, num_train_epochs=1), train_dataset=digits
    ).train()
    assert realised_sparsity(second, masks2) == masks2.sparsity()


def test_without_masks_decay_would_move_pruned_entries(setup, digits, tmp_path):
    """Control for the test above: the same run without masks does change the pruned entries."""
    teacher, student, masks = setup
    args = make_args(tmp_path, max_steps=2, weight_decay=0.1)
    MPDistillationTrainer(student, teacher, False, args=args, train_dataset=digits).train()  # opt-in: no masks
    assert realised_sparsity(student, masks) < 0.01


@pytest.mark.gpu
def test_cuda_placement_by_accelerate(setup, digits, tmp_path):
    teacher, student, masks = setup
    trainer = MPDistillationTrainer(
        student, teacher, masks, args=make_args(tmp_path, use_cpu=False, max_steps=3), train_dataset=digits
    )
    assert next(trainer.teacher.parameters()).is_cuda and not trainer.teacher.training
    trainer.train()
    assert next(student.parameters()).is_cuda
    assert realised_sparsity(student, masks) == masks.sparsity() == 0.5


# ---- checkpoints and resume -------------------------------------------------------------------------------------
class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 6:  # mid-way through epoch 2 (steps 5-8); last checkpoint is step 3 (epoch 1)
            raise KeyboardInterrupt("simulated crash")


def test_interrupt_and_resume_restores_masks(setup, digits, tmp_path):
    teacher, student, masks = setup
    dense = copy.deepcopy(teacher)
    args = make_args(tmp_path, save_strategy="steps", save_steps=3)
    trainer = MPDistillationTrainer(student, teacher, masks, args=args, train_dataset=digits, callbacks=[Interrupt()])
    with pytest.raises(KeyboardInterrupt, match="simulated"):
        trainer.train()
    ckpt = tmp_path / "out" / "checkpoint-3"
    assert Masks.load(ckpt / MASKS_NAME) == masks
    assert not (tmp_path / "out" / "checkpoint-6").exists()

    # a fresh process would start from the dense model: weights and masks both come from the checkpoint
    resumed = MPDistillationTrainer(dense, copy.deepcopy(teacher), None, args=args, train_dataset=digits)
    out = resumed.train(resume_from_checkpoint=True)
    assert resumed.masks == masks and resumed.masks.sha256() == masks.sha256()
    assert out.global_step == 8 and resumed.state.global_step == 8
    assert realised_sparsity(dense, masks) == masks.sparsity() == 0.5
    assert Masks.load(tmp_path / "out" / "checkpoint-8" / MASKS_NAME) == masks

    other = Masks({n: ~m for n, m in masks.items()})
    again = MPDistillationTrainer(copy.deepcopy(teacher), teacher, other, args=args, train_dataset=digits)
    with pytest.raises(LedgerMismatchError, match="differ from the masks of the trainer"):
        again.train(resume_from_checkpoint=str(ckpt))


def test_save_model_writes_mask_sidecar(setup, tmp_path):
    teacher, student, masks = setup
    trainer = MPDistillationTrainer(student, teacher, masks, args=make_args(tmp_path))
    trainer.save_model(str(tmp_path / "final"))
    assert Masks.load(tmp_path / "final" / MASKS_NAME).sha256() == masks.sha256()
    assert "knowledge-distillation" in MPDistillationTrainer._tag_names
    assert trainer.model_accepts_loss_kwargs is False  # our loss, so the model never sees num_items_in_batch
    # a teacher given as a path (here through teacher_model_name_or_path) is loaded, frozen and in eval mode
    args = make_args(tmp_path, teacher_model_name_or_path=str(tmp_path / "final"))
    loaded = MPDistillationTrainer(copy.deepcopy(teacher), None, None, args=args).teacher
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in loaded.state_dict().items())


# ---- the loss ---------------------------------------------------------------------------------------------------
def _logits(seed=0, shape=(6, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 3, torch.randn(shape, generator=g) * 3, torch.arange(6) % 5


def test_kd_loss_identities():
    s, t, y = _logits()
    ce_ls = F.cross_entropy(s, y, label_smoothing=0.1)
    # identical logits: the KL part vanishes
    assert kd_loss(s, s, y, 0.5, 2.0, 0.1).item() == pytest.approx(0.5 * ce_ls.item(), rel=1e-6)
    # alpha = 0 is label-smoothed CE, and needs no teacher
    assert kd_loss(s, None, y, 0.0, 2.0, 0.1).item() == pytest.approx(ce_ls.item(), rel=1e-6)
    # alpha = 1 is T² · KL(p_t ‖ p_s) with batch-mean reduction, written out
    for temp in (1.0, 2.0, 4.0):
        p_t, p_s = torch.softmax(t / temp, -1), torch.softmax(s / temp, -1)
        kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
        assert kd_loss(s, t, None, 1.0, temp).item() == pytest.approx(temp**2 * kl.item(), rel=1e-5)
    # mixing is linear in alpha
    mix = 0.3 * kd_loss(s, t, y, 1.0, 2.0, 0.1) + 0.7 * kd_loss(s, t, y, 0.0, 2.0, 0.1)
    assert kd_loss(s, t, y, 0.3, 2.0, 0.1).item() == pytest.approx(mix.item(), rel=1e-6)


def test_kd_loss_num_items_and_ignored_labels():
    s, t, y = _logits()
    base = kd_loss(s, t, y, 0.5, 2.0, 0.1)
    # normalising by the items of a 3× larger accumulated batch divides the mean by 3
    assert kd_loss(s, t, y, 0.5, 2.0, 0.1, num_items_in_batch=18).item() == pytest.approx(base.item() / 3, rel=1e-6)
    # -100 rows are ignored by both terms: same as dropping them
    y2 = y.clone()
    y2[:2] = -100
    assert kd_loss(s, t, y2, 0.5, 2.0, 0.1).item() == pytest.approx(kd_loss(s[2:], t[2:], y[2:]).item(), rel=1e-6)
    # gradients flow to the student only
    s.requires_grad_(True)
    kd_loss(s, t, y).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_precomputed_teacher_logits_column(setup, tmp_path):
    teacher, student, masks = setup
    batch = {"pixel_values": torch.randn(4, 1, 8, 8), "labels": torch.tensor([0, 1, 2, 3])}
    with_teacher = MPDistillationTrainer(student, teacher, masks, args=make_args(tmp_path))
    loss_a = with_teacher.compute_loss(student, batch)
    with torch.no_grad():
        column = teacher(pixel_values=batch["pixel_values"]).logits
    no_teacher = MPDistillationTrainer(student, None, masks, args=make_args(tmp_path))
    loss_b = no_teacher.compute_loss(student, {**batch, "teacher_logits": column})
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6) and loss_a.item() > 0
    with pytest.raises(ConfigError, match="needs a teacher"):
        no_teacher.compute_loss(student, batch)


def test_feature_mode_on_encoder(tiny_bert, tmp_path):
    from tests.tiny_models import bert_inputs

    teacher = copy.deepcopy(tiny_bert)
    masks = MPPruner(tiny_bert, PruningConfig("magnitude", 0.5)).prune()
    args = make_args(tmp_path, distill_mode="features")
    trainer = MPDistillationTrainer(tiny_bert, teacher, masks, args=args)
    inputs = bert_inputs(batch=4)
    loss, out = trainer.compute_loss(tiny_bert, inputs, return_outputs=True)
    emb_s, emb_t = out["student_embedding"], out["teacher_embedding"]
    assert emb_s.shape == (4, 64) and loss.item() == pytest.approx(
        1 - F.cosine_similarity(emb_s, emb_t).mean().item(), rel=1e-3
    )
    assert 0 < loss.item() < 2
    assert feature_loss(emb_t, emb_t).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss(emb_s, emb_t, "mse").item() == pytest.approx(F.mse_loss(emb_s, emb_t).item())
    h = torch.arange(12.0).reshape(1, 3, 4)
    assert mean_pool(h, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0, 4.0, 5.0]]
    # evaluation reports the agreement of student and teacher embeddings (no labels needed)
    trainer.compute_metrics = make_compute_metrics("embedding")
    eval_set = [{k: v[i] for k, v in inputs.items()} for i in range(4)]
    metrics = trainer.evaluate(eval_set)
    assert metrics["eval_mean_cosine"] == pytest.approx(1 - loss.item(), rel=1e-3)
    assert metrics["eval_loss"] == pytest.approx(loss.item(), rel=1e-3)
    assert trainer.state.log_history[-1]["sparsity"] == 0.5


# ---- arguments and presets -------------------------------------------------------------------------------------
def test_defaults_and_presets(tmp_path):
    a = MPDistillationArguments(output_dir=str(tmp_path))
    assert (a.kd_alpha, a.kd_temperature, a.label_smoothing, a.learning_rate, a.weight_decay) == (
        0.5, 2.0, 0.1, 1e-5, 0.01,
    )  # fmt: skip
    assert (a.num_train_epochs, a.optim, a.report_to, a.remove_unused_columns) == (3, "adamw_torch", [], False)
    p = MPDistillationArguments.from_preset("vit_kd_canonical", output_dir=str(tmp_path), num_train_epochs=5)
    assert (p.warmup_steps, p.per_device_train_batch_size, p.max_grad_norm, p.num_train_epochs) == (1000, 32, 0, 5)
    c = MPDistillationArguments.from_preset("magnitude_cycle_ft", output_dir=str(tmp_path))
    assert (c.kd_alpha, c.optim, c.optim_args, c.learning_rate, c.num_train_epochs) == (
        0,
        "sgd",
        "momentum=0.9",
        3e-5,
        1,
    )
    y = tmp_path / "ft.yaml"
    y.write_text("preset: vit_kd_canonical\nkd_alpha: 0.7\noutput_dir: " + str(tmp_path) + "\n")
    from_yaml = MPDistillationArguments.from_yaml(y)
    assert (from_yaml.kd_alpha, from_yaml.learning_rate, from_yaml.warmup_steps) == (0.7, 1e-5, 1000)
    y.write_text("kd_alfa: 0.7\n")
    with pytest.raises(ConfigError, match="kd_alfa"):
        MPDistillationArguments.from_yaml(y)
    with pytest.raises(ConfigError, match="unknown preset"):
        MPDistillationArguments.from_preset("nope")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"kd_alpha": 1.5}, r"kd_alpha must be in \[0, 1\], got 1.5"),
        ({"kd_alpha": -0.1}, r"kd_alpha must be in \[0, 1\]"),
        ({"kd_temperature": 0.0}, "kd_temperature must be a finite number > 0, got 0.0"),
        ({"kd_temperature": -2.0}, "kd_temperature"),
        ({"kd_temperature": math.nan}, "kd_temperature"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"distill_mode": "hidden"}, "distill_mode"),
        ({"label_smoothing_factor": 0.1}, "smooth a second time"),
    ],
)
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        MPDistillationArguments(output_dir=str(tmp_path), **kw)


def test_bad_trainer_inputs(setup, tmp_path):
    teacher, student, masks = setup
    args = make_args(tmp_path)
    ghost = Masks({**dict(masks.items()), "vit.layers.9.mlp.fc1": torch.ones(64, 32, dtype=torch.bool)})
    with pytest.raises(PatternError, match=r"vit\.layers\.9\.mlp\.fc1.*does not exist"):
        MPDistillationTrainer(student, teacher, ghost, args=args)
    with pytest.raises(ConfigError, match="teacher is the student"):
        MPDistillationTrainer(student, student, masks, args=args)
    with pytest.raises(ConfigError, match="MPDistillationArguments"):
        MPDistillationTrainer(student, teacher, masks, args=None)
    wrong = build_digits_vit(1, hidden=32, layers=1, heads=2, mlp=64)
    wrong.classifier = torch.nn.Linear(32, 7)  # a teacher with another label space
    trainer = MPDistillationTrainer(student, wrong, masks, args=args)
    batch = {"pixel_values": torch.randn(2, 1, 8, 8), "labels": torch.tensor([0, 1])}
    with pytest.raises(ConfigError, match=r"teacher logits have shape \(2, 7\) but the student's are \(2, 10\)"):
        trainer.compute_loss(student, batch)
    assert isinstance(trainer.callback_handler.callbacks[-1], MaskFreezeCallback)


# ---- metrics ----------------------------------------------------------------------------------------------------
def test_topk_and_compute_metrics():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.8, 0.1, 0.1, 0.0], [0.2, 0.2, 0.5, 0.1], [0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 2, 0, 3])  # ranks 0, 2 (loses the 0.1 tie to col 1), 1, 3 (all tied, last col)
    assert compute_topk(logits, labels, k=(1, 2, 3, 4)) == {"top1": 0.25, "top2": 0.5, "top3": 0.75, "top4": 1.0}
    assert compute_topk(logits, torch.tensor([1, -100, -100, -100]), k=(1,)) == {"top1": 1.0}
    metrics = make_compute_metrics("classification", k=(1, 2))(type("P", (), {"predictions": logits.numpy(),
                                                                              "label_ids": labels.numpy()})())  # fmt: skip
    assert metrics == {"top1": 0.25, "top2": 0.5}
    assert embedding_agreement([[1.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 1.0]]) == pytest.approx(
        {"mean_cosine": (1 + 2**-0.5) / 2, "min_cosine": 2**-0.5}
    )


def test_evaluate_modules_load_offline(tmp_path, monkeypatch):
    evaluate = pytest.importorskip("evaluate")  # optional extra `hf-mpprune[evaluate]`
    from hf_mpprune.metrics import EMBEDDING_AGREEMENT, TOPK_ACCURACY

    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")  # write only under tmp_path
    topk = evaluate.load(TOPK_ACCURACY, cache_dir=str(tmp_path / "metrics"))
    got = topk.compute(predictions=[[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], references=[1, 2], k=[1, 2])
    assert got == {"top1": 0.5, "top2": 0.5}
    agree = evaluate.load(EMBEDDING_AGREEMENT, cache_dir=str(tmp_path / "metrics"))
    assert agree.compute(predictions=[[1, 0], [1, 1]], references=[[2, 0], [0, 3]]) == pytest.approx(
        {"mean_cosine": (1 + 2**-0.5) / 2, "min_cosine": 2**-0.5}
    )


def test_digits_splits_are_stratified_60_20_20():
    splits = load_digits_splits(0)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [1078, 359, 360]
    for name in ("val", "test"):  # every class is present in proportion (digits has 174-183 images per class)
        counts = torch.bincount(splits[name].y, minlength=10)
        assert counts.min() >= 34 and counts.max() <= 37
    item = splits["train"][0]
    assert (
        item["pixel_values"].shape == (1, 8, 8) and -1 <= item["pixel_values"].min() <= item["pixel_values"].max() <= 1
    )
    assert load_digits_splits(1)["test"].y.tolist() != splits["test"].y.tolist()
