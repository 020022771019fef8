"""Fault suite, kill -9 during save: at random moments inside the save window the target folder holds the
previous checkpoint byte for byte, or the complete new one (loads with every check and no warning); temp folders
of the killed writers are cleaned by the next save. The writer is a fork of the test process (no interpreter start),
so each moment costs one save (~0.3 s); 10 moments run by default, 40 more with --run-slow (see also
benchmarks/bench_atomic_save.py for the subprocess version on a bigger model)."""

import os
import random
import signal
import time
import warnings

import pytest
import torch
from huggingface_hub import utils as hf_utils
from transformers import ViTConfig, ViTForImageClassification
from transformers.utils import logging as tf_logging

from hf_mpprune import MPPruner, PruningConfig
from tests.fault_helpers import fingerprint


pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]


def _pruner(sparsity: float) -> MPPruner:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=512, num_labels=10)  # fmt: skip
    pruner = MPPruner(ViTForImageClassification(cfg), PruningConfig("magnitude", sparsity))
    pruner.prune()
    return pruner


def _state(target, good_a, names_b) -> str:
    if fingerprint(target) == good_a:
        return "previous"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a weights-hash or split warning would mean a mixed checkpoint
        loaded = MPPruner.from_pretrained(target)  # mask SHA, masks vs zeros, weights SHA vs ledger
    assert sorted(os.listdir(target)) == names_b
    assert loaded.masks.sparsity() == pytest.approx(0.6, abs=1e-4)
    return "new"


@pytest.fixture(autouse=True)
def _no_progress_bars():
    """tqdm guards its bars with a multiprocessing lock: a writer killed while holding it would deadlock the parent.
    Bars off in the forked writers (the CLI and users are unaffected: they never fork a saving process)."""
    was_hf = hf_utils.are_progress_bars_disabled()
    was_tf = not tf_logging.is_progress_bar_enabled()
    hf_utils.disable_progress_bars()
    tf_logging.disable_progress_bar()
    yield
    if not was_hf:
        hf_utils.enable_progress_bars()
    if not was_tf:
        tf_logging.enable_progress_bar()


def _kill_during_save(tmp_path, moments: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    target = tmp_path / "ckpt"
    a, b = _pruner(0.3), _pruner(0.6)
    t0 = time.perf_counter()
    b.save_pretrained(tmp_path / "reference")
    window = time.perf_counter() - t0
    names_b = sorted(os.listdir(tmp_path / "reference"))
    a.save_pretrained(target)
    good_a = fingerprint(target)
    states = []
    for _ in range(moments):
        delay = rng.uniform(0.0, 1.5 * window)  # a little past the measured window: some kills land after the swap
        pid = os.fork()
        if pid == 0:  # the writer: save B over A, then vanish without running any test-process cleanup
            try:
                b.save_pretrained(target)
            finally:
                os._exit(0)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        states.append(_state(target, good_a, names_b))
        if states[-1] == "new":
            a.save_pretrained(target)
            good_a = fingerprint(target)
    a.save_pretrained(target)  # cleans what the killed writers left next to the target
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "reference"]
    return states


def test_kill9_during_save_ten_moments(tmp_path):
    states = _kill_during_save(tmp_path, moments=10, seed=0)
    assert set(states) <= {"previous", "new"} and len(states) == 10


@pytest.mark.slow
def test_kill9_during_save_forty_moments(tmp_path):
    states = _kill_during_save(tmp_path, moments=40, seed=1)
    assert set(states) <= {"previous", "new"} and len(states) == 40
