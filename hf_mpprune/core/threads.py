"""Thread use that does not spin against other work (docs/algorithms.md §18.9).

torch runs every op of at least 32,768 elements on all its intra-op threads, and each such op ends at a barrier
where every thread must have finished its share. When another process holds one of the cores, the thread that
shares that core reaches the barrier only when the scheduler gives it a turn — milliseconds, against the tens of
microseconds of work of a mid-sized op — while the other threads wait (spinning first). Work made of thousands of
such ops then slows by several times on a busy machine (a 2-thread `eigvalsh` of 6 matrices of 384×384 took 8–33 s
against 0.25 s single-threaded on the shared 2-core box), while the same work cut into independent single-threaded
pieces only loses the share of the core it lost. So the package runs such work as pieces:

- `parallel_map(fn, items)`: `fn` on every item, torch at one thread, items handed out one at a time to
  `worker_count()` Python threads (torch releases the GIL inside its kernels), so a thread slowed by other work simply
  takes fewer items — no per-op barrier;
- `row_chunks(rows, row_numel)`: row slices for row-independent work (the CG re-fit), about two per worker so the
  hand-out can balance, none so small that its ops cost less than their dispatch;
- `worker_count()`: torch's intra-op thread count, capped by the CPUs this process may use (affinity mask, cgroup v2
  CPU quota).

Large, few ops (GEMMs of the calibration forwards and Hessians, the factorisation of a layer's Hessian) keep
torch's own threads: under load such an op costs at most what one thread would.
"""

import contextlib
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch


__all__ = [
    "MIN_CHUNK_NUMEL",
    "one_thread_workers",
    "parallel_map",
    "row_chunks",
    "single_threaded_pool",
    "split",
    "usable_cpus",
    "worker_count",
]

MIN_CHUNK_NUMEL = 2**16  # a row chunk's ops touch at least this many elements (else dispatch outweighs the work)


def usable_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may run on: the affinity mask, capped by a cgroup v2 CPU quota (`cpu_max`; containers)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(cpu_max) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def worker_count() -> int:
    """Python worker threads for `parallel_map`: torch's intra-op thread count, at most `usable_cpus()`."""
    return max(1, min(torch.get_num_threads(), usable_cpus()))


@contextlib.contextmanager
def one_thread_workers():
    """Yield the number of worker threads to use (`worker_count()`) with torch set to 1 thread inside the block."""
    n, count = torch.get_num_threads(), worker_count()
    if n <= 1:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield count
    finally:
        torch.set_num_threads(n)


def parallel_map(fn: Callable, items: Iterable, workers: int | None = None) -> list:
    """[fn(x) for x in items], each call single-threaded, calls spread over `workers` (default: `worker_count()`)."""
    items = list(items)
    with one_thread_workers() as n:
        n = min(workers or n, len(items))
        if n <= 1:
            return [fn(x) for x in items]
        with single_threaded_pool(n) as pool:
            return list(pool.map(fn, items))


def single_threaded_pool(n: int) -> ThreadPoolExecutor:
    """A pool of `n` Python threads, each with torch (its OpenMP and MKL settings) at one thread. The setting is
    per thread: a fresh thread would otherwise run MKL's GEMMs and LAPACK calls on the process default team."""
    return ThreadPoolExecutor(max_workers=n, initializer=torch.set_num_threads, initargs=(1,))


def split(n_items: int, parts: int) -> list[slice]:
    """`parts` contiguous, nearly equal slices of range(n_items) (empty ones dropped)."""
    parts = max(1, min(parts, n_items))
    bounds = [round(i * n_items / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def row_chunks(rows: int, row_numel: int) -> list[slice]:
    """Row slices for `parallel_map` over row-independent work on a (rows, row_numel) matrix: as many as fit with
    ≥ `MIN_CHUNK_NUMEL` elements each, at most two per worker (a worker slowed by other work then takes fewer)."""
    by_size = (rows * row_numel) // MIN_CHUNK_NUMEL
    return split(rows, max(1, min(2 * worker_count(), by_size)))
