"""2-process DDP on CPU (gloo) through torchrun with MPDistillationTrainer (issue 14): masks identical on both ranks
and in the saved checkpoint, sparsity exact, replicas identical. Slow: two interpreters start (see ddp_train.py)."""

import json
import os
import subprocess
import sys

import pytest

from hf_mpprune import Masks
from hf_mpprune.core.constants import MASKS_NAME
from hf_mpprune.training.checkpoints import check_complete


@pytest.mark.slow
def test_two_process_gloo_ddp_keeps_masks(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": root}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           os.path.join(root, "tests", "ddp_train.py"), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["global_step"] == 4 for r in ranks)
    assert ranks[0]["mask_sha256"] == ranks[1]["mask_sha256"]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # DDP kept the replicas identical
    assert all(r["sparsity"] == r["mask_sparsity"] == 0.5 for r in ranks)
    ckpt = tmp_path / "run" / "checkpoint-4"
    assert check_complete(str(ckpt)) is None
    assert Masks.load(ckpt / MASKS_NAME).sha256() == ranks[0]["mask_sha256"]
