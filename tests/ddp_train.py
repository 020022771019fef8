"""Worker of the 2-process DDP test (tests/test_ddp.py); also a runnable example:

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 tests/ddp_train.py /tmp/ddp-run

Every rank prunes the same digits ViT (deterministic magnitude masks, attached to the model), trains it with
`MPDistillationTrainer` without `masks=` on CPU (gloo) and writes what it ended with to `rank<r>.json`.
"""

import copy
import json
import os
import sys

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_mpprune import MPDistillationArguments, MPDistillationTrainer, MPPruner, PruningConfig  # noqa: E402
from hf_mpprune.builtins.digits import DigitsDataset, build_digits_vit, load_digits_splits  # noqa: E402
from hf_mpprune.training.checkpoints import state_sha256  # noqa: E402
from hf_mpprune.training.masking import realised_sparsity  # noqa: E402


def main(work: str) -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    tr = load_digits_splits(0)["train"]
    data = DigitsDataset(tr.x[:128], tr.y[:128])
    teacher = build_digits_vit(0, hidden=32, layers=2, heads=2, mlp=64)
    student = copy.deepcopy(teacher)
    MPPruner(student, PruningConfig("magnitude", 0.5)).prune()
    args = MPDistillationArguments(
        output_dir=os.path.join(work, "run"), use_cpu=True, ddp_backend="gloo", report_to="none", learning_rate=1e-2,
        warmup_steps=0, max_steps=4, per_device_train_batch_size=16, save_strategy="steps", save_steps=2, seed=0,
        weight_decay=0.1, logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    trainer = MPDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=data)
    trainer.train()
    rank = trainer.args.process_index
    with open(os.path.join(work, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "world_size": trainer.args.world_size,
                "global_step": trainer.state.global_step,
                "mask_sha256": trainer.masks.sha256(),
                "sparsity": realised_sparsity(student, trainer.masks),
                "mask_sparsity": trainer.masks.sparsity(),
                "weights_sha256": state_sha256(student),
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1])
