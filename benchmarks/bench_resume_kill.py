"""kill -9 mid-epoch, then resume: masks identical, training completes, final sparsity exact (issue 3 acceptance).

The parent prunes a digits ViT to 50% (global magnitude), saves student, teacher and masks, and starts the training
child under `accelerate launch --cpu --num_processes 1` in its own process group. Once the child has passed
`--kill-at` optimizer steps (mid-epoch 1; checkpoints every `--save-steps`), the parent sends SIGKILL to the whole
group, then resumes in-process from the last checkpoint with `masks=None` (the checkpoint's masks are adopted and
verified) and checks the result.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_resume_kill.py
"""

import argparse
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import torch


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hf_mpprune import Masks, MPDistillationArguments, MPDistillationTrainer, MPPruner, PruningConfig  # noqa: E402
from hf_mpprune.builtins.digits import build_digits_vit, load_digits_splits  # noqa: E402
from hf_mpprune.core.constants import MASKS_NAME  # noqa: E402
from hf_mpprune.training.trainer import realised_sparsity  # noqa: E402


EPOCHS = 2


def make_args(work: str, save_steps: int) -> MPDistillationArguments:
    return MPDistillationArguments(
        output_dir=os.path.join(work, "run"), learning_rate=1e-3, num_train_epochs=EPOCHS, warmup_steps=0.1,
        weight_decay=0.05, save_strategy="steps", save_steps=save_steps, logging_steps=5, use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip


def child(work: str, save_steps: int) -> int:
    """Train from the saved pruned student; write the global step to a file after every step."""
    from transformers import TrainerCallback, ViTForImageClassification

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            with open(os.path.join(work, "step"), "w") as f:
                f.write(str(state.global_step))

    student = ViTForImageClassification.from_pretrained(os.path.join(work, "student"))
    teacher = ViTForImageClassification.from_pretrained(os.path.join(work, "teacher"))
    masks = Masks.load(os.path.join(work, MASKS_NAME))
    splits = load_digits_splits(0)
    args = make_args(work, save_steps)
    trainer = MPDistillationTrainer(
        student, teacher, masks, args=args, train_dataset=splits["train"], callbacks=[Progress()]
    )
    trainer.train()
    return 0


def read_step(work: str) -> int:
    try:
        with open(os.path.join(work, "step")) as f:
            return int(f.read() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def parent(work: str, save_steps: int, kill_at: int) -> int:
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    teacher = build_digits_vit(0)
    student = copy.deepcopy(teacher)
    masks = MPPruner(student, PruningConfig("magnitude", 0.5)).prune()
    student.save_pretrained(os.path.join(work, "student"))
    teacher.save_pretrained(os.path.join(work, "teacher"))
    digest = masks.save(os.path.join(work, MASKS_NAME))

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    cmd = [*launch, os.path.abspath(__file__), "--child", "--work", work, "--save-steps", str(save_steps)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, start_new_session=True, cwd=work)
    while read_step(work) < kill_at:
        if proc.poll() is not None:
            raise RuntimeError(f"child exited with {proc.returncode} before step {kill_at}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the training process: kill -9
    proc.wait()
    killed_at = read_step(work)
    t_kill = time.perf_counter() - t0

    splits = load_digits_splits(0)
    fresh = build_digits_vit(0)  # a dense model: weights and masks must both come from the checkpoint
    trainer = MPDistillationTrainer(
        fresh, teacher, None, args=make_args(work, save_steps), train_dataset=splits["train"]
    )
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = get_last_checkpoint(os.path.join(work, "run"))
    out = trainer.train(resume_from_checkpoint=True)
    steps_per_epoch = -(-len(splits["train"]) // 32)
    result = {
        "killed_after_step": killed_at,
        "resumed_from": os.path.basename(ckpt),
        "kill_returncode": proc.returncode,
        "masks_identical": trainer.masks == masks and trainer.masks.sha256() == digest,
        "final_global_step": out.global_step,
        "expected_steps": EPOCHS * steps_per_epoch,
        "final_sparsity": realised_sparsity(fresh, masks),
        "mask_sparsity": masks.sparsity(),
        "final_checkpoint_masks_identical": Masks.load(
            os.path.join(work, "run", f"checkpoint-{out.global_step}", MASKS_NAME)
        ).sha256()
        == digest,
        "seconds_to_kill": round(t_kill, 1),
    }
    result["ok"] = bool(
        result["masks_identical"]
        and result["final_global_step"] == result["expected_steps"]
        and result["final_sparsity"] == result["mask_sparsity"]
        and result["final_checkpoint_masks_identical"]
        and killed_at % steps_per_epoch != 0
    )
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", default=os.path.join(ROOT, "benchmarks", "out", "kill9"))
    ap.add_argument("--save-steps", type=int, default=10)
    ap.add_argument("--kill-at", type=int, default=23)
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    return child(a.work, a.save_steps) if a.child else parent(a.work, a.save_steps, a.kill_at)


if __name__ == "__main__":
    sys.exit(main())
