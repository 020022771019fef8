"""kill -9 while a Trainer checkpoint is being written (issue 14): the run resumes from the latest *complete*
checkpoint, masks identical, sparsity exact, and ends at `max_steps`.

The training runs in a forked child (no second interpreter start-up) that sends itself SIGKILL at one moment of
writing `checkpoint-6`; `save_total_limit=2` makes transformers' rotation part of the race.
"""

import copy
import json
import os
import signal

import pytest
import torch
from transformers import Trainer, TrainerState

from hf_mpprune import Masks, MPDistillationArguments, MPDistillationTrainer, MPPruner, PruningConfig
from hf_mpprune.builtins.digits import DigitsDataset, build_digits_vit, load_digits_splits
from hf_mpprune.core.constants import LEDGER_NAME, MASKS_NAME
from hf_mpprune.training import trainer as trainer_module
from hf_mpprune.training.checkpoints import COMPLETE_NAME, check_complete
from hf_mpprune.training.masking import realised_sparsity


pytestmark = pytest.mark.usefixtures("one_thread")


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(moment: str) -> None:
    """In the child: SIGKILL at `moment` of writing checkpoint-6."""
    in6 = lambda path: os.path.basename(os.path.dirname(os.fspath(path))) == "checkpoint-6"  # noqa: E731
    if moment == "weights_written":  # model.safetensors written, masks / optimizer / state not yet
        save = Masks.save
        Masks.save = lambda self, path: _die() if in6(path) else save(self, path)
    elif moment == "optimizer_written":
        orig = Trainer._save_optimizer_and_scheduler

        def after_optimizer(self, output_dir):
            orig(self, output_dir)
            if os.path.basename(output_dir) == "checkpoint-6":
                _die()

        Trainer._save_optimizer_and_scheduler = after_optimizer
    elif moment == "state_written":  # everything but the marker
        orig_state = TrainerState.save_to_json

        def after_state(self, path):
            orig_state(self, path)
            if in6(path):
                _die()

        TrainerState.save_to_json = after_state
    elif moment == "marker_half_written":  # the marker's temp file exists, the rename never happens
        replace = os.replace
        os.replace = lambda a, b: _die() if str(b).endswith(COMPLETE_NAME) and in6(b) else replace(a, b)
    elif moment == "before_rotation":  # checkpoint-6 complete; the old ones not rotated yet
        rotate = trainer_module.rotate_checkpoints

        def before_rotate(run_dir, *a, **k):
            if os.path.isfile(os.path.join(run_dir, "checkpoint-6", COMPLETE_NAME)):
                _die()
            rotate(run_dir, *a, **k)

        trainer_module.rotate_checkpoints = before_rotate


def _args(out):
    return MPDistillationArguments(
        output_dir=str(out), use_cpu=True, report_to="none", learning_rate=1e-2, warmup_steps=0, max_steps=8,
        per_device_train_batch_size=32, save_strategy="steps", save_steps=2, save_total_limit=2, seed=0,
        logging_steps=2, disable_tqdm=True, weight_decay=0.1,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("moment", "resumed"),
    [
        ("optimizer_written", 4),
        ("marker_half_written", 4),
        pytest.param("weights_written", 4, marks=pytest.mark.slow),
        pytest.param("state_written", 4, marks=pytest.mark.slow),
        ("before_rotation", 6),
    ],
)
def test_kill_9_during_checkpoint_write_resumes_from_latest_complete(tmp_path, moment, resumed):
    tr = load_digits_splits(0)["train"]
    data = DigitsDataset(tr.x[:128], tr.y[:128])
    teacher = build_digits_vit(0, hidden=32, layers=2, heads=2, mlp=64)
    student = copy.deepcopy(teacher)
    masks = MPPruner(student, PruningConfig("magnitude", 0.5)).prune()
    out = tmp_path / "run"

    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            _arm(moment)
            MPDistillationTrainer(model=student, teacher=teacher, args=_args(out), train_dataset=data).train()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child status {status}"
    assert (out / "checkpoint-6").is_dir()
    assert (check_complete(str(out / "checkpoint-6")) is None) == (resumed == 6)

    fresh = copy.deepcopy(teacher)  # a new process would start from the dense model
    trainer = MPDistillationTrainer(model=fresh, teacher=teacher, args=_args(out), train_dataset=data)
    result = trainer.train(resume_from_checkpoint=True)
    assert trainer._resumed_from == str(out / f"checkpoint-{resumed}")
    assert result.global_step == trainer.state.global_step == 8
    assert trainer.masks.sha256() == masks.sha256()
    assert realised_sparsity(fresh, masks) == masks.sparsity() == 0.5
    pruned = torch.cat([fresh.get_submodule(n).weight[~m].flatten() for n, m in masks.items()])
    assert torch.all(pruned == 0) and not torch.signbit(pruned).any()
    final = out / "checkpoint-8"
    assert check_complete(str(final)) is None
    assert Masks.load(final / MASKS_NAME).sha256() == masks.sha256()
    assert json.loads((final / "trainer_state.json").read_text())["global_step"] == 8
    steps = json.loads((final / LEDGER_NAME).read_text())["steps"]
    assert [s["method"] for s in steps] == ["magnitude", "distill"] and steps[-1]["resumed_from"].endswith(
        f"checkpoint-{resumed}"
    )
    if resumed == 4:  # the interrupted folder is kept aside, invisible to rotation and resume
        assert (out / "incomplete-checkpoint-6").is_dir()
