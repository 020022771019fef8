"""Thread use that does not spin against other work (hf_mpprune/core/threads.py, docs/algorithms.md §18.9): worker
counts follow the CPUs the process may use, row chunks cover every row, and the CG re-fit runs its row chunks on
several Python threads with torch at one thread each, with the result of the unchunked solve."""

import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch

from hf_mpprune.core import refit, threads


@pytest.fixture
def two_threads(monkeypatch):
    """torch at 2 intra-op threads and 2 usable CPUs, whatever the machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    yield
    torch.set_num_threads(prev)


def test_usable_cpus_follow_affinity_and_cgroup_quota(monkeypatch, tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert threads.usable_cpus(str(quota)) == 4
    quota.write_text("250000 100000\n")  # 2.5 CPUs of quota
    assert threads.usable_cpus(str(quota)) == 2
    assert threads.usable_cpus(str(tmp_path / "absent")) == 4
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {3})
    assert threads.usable_cpus(str(quota)) == 1
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert threads.worker_count() == 1  # torch's 2 threads, but one usable CPU
        with threads.one_thread_workers() as n:
            assert (n, torch.get_num_threads()) == (1, 1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(prev)


def test_row_chunks_cover_every_row_once(two_threads):
    for rows, cols, parts in ((384, 384, 2), (1536, 384, 4), (10, 10, 1), (0, 5, 0), (3, 2**20, 3)):
        chunks = threads.row_chunks(rows, cols)
        assert len(chunks) == parts
        assert [i for sl in chunks for i in range(sl.start, sl.stop)] == list(range(rows))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cg_refit_runs_single_threaded_row_chunks_with_the_unchunked_result(two_threads, monkeypatch, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 256, generator=g, dtype=torch.float64)
    h = 2 * x.T @ x / 600
    h.diagonal().add_(0.01 * float(h.diagonal().mean()))
    w = torch.randn(1024, 256, generator=g, dtype=torch.float64).to(dtype)
    keep = torch.rand(w.shape, generator=g) > 0.6
    seen, inner = [], refit._cg_rows

    def spy(*args):
        seen.append((threading.get_ident(), torch.get_num_threads(), args[0].shape[0]))
        return inner(*args)

    monkeypatch.setattr(refit, "_cg_rows", spy)
    stats = {}
    got = refit.cg_refit(w, h, keep, 10, stats)
    assert [s[2] for s in seen] == [256] * 4 and {s[1] for s in seen} == {1}  # 4 chunks, torch at 1 thread
    assert threading.get_ident() not in {s[0] for s in seen}  # on the worker pool's Python threads
    assert torch.get_num_threads() == 2  # restored
    monkeypatch.setattr(refit, "row_chunks", lambda rows, cols: [slice(0, rows)])
    ref_stats = {}
    ref = refit.cg_refit(w, h, keep, 10, ref_stats)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * float(ref.abs().max()))
    assert stats["cg_max_rel_residual"] == pytest.approx(ref_stats["cg_max_rel_residual"], rel=1e-3)
    assert bool((got[~keep] == 0).all())


COUNT = """
import ctypes, torch
from hf_mpprune.core.threads import parallel_map
regions = ctypes.CDLL(None).omp_regions_multi
regions.restype = ctypes.c_long
torch.set_num_threads(2)
a, h = torch.randn(768, 384), torch.randn(384, 384)
spd = h @ h.T + 384 * torch.eye(384)
c0 = regions()
a @ h
c1 = regions()
parallel_map(lambda i: [(a @ h, torch.linalg.cholesky(spd)) for _ in range(3)], range(4))
print(c1 - c0, regions() - c1, torch.get_num_threads())
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the OpenMP region counter is compiled with gcc")
def test_parallel_map_workers_start_no_openmp_team(tmp_path):
    """Counted with benchmarks/omp_regions.c preloaded: a GEMM on the main thread at 2 threads starts a team; the
    same GEMMs and Cholesky factorisations inside `parallel_map`'s fresh worker threads start none."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import timing

    env = dict(os.environ, LD_PRELOAD=timing.build_region_counter(str(tmp_path)))
    out = subprocess.run([sys.executable, "-c", COUNT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    main, workers, restored = (int(v) for v in out.stdout.split())
    assert main >= 1 and workers == 0 and restored == 2
