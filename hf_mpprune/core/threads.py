"""Run many small LAPACK calls (batched Cholesky, eigvalsh) as single-threaded calls spread over the cores.

torch's batched CPU linear algebra loops over the batch and calls LAPACK once per matrix; each call then spins up
the intra-op threads on a matrix far too small to share. On a busy machine the threads wait for each other (a
2-thread `eigvalsh` of 6 matrices of 384×384 took 8–33 s against 0.25 s single-threaded on the shared 2-core box).
`parallel_map` sets torch to one thread, maps `fn` over the items with one Python thread per core (torch releases
the GIL inside its kernels) and restores the thread count."""

import contextlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch


@contextlib.contextmanager
def one_thread_workers():
    """Yield the number of worker threads to use (the current torch thread count) with torch set to 1 thread."""
    n = torch.get_num_threads()
    if n <= 1:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield n
    finally:
        torch.set_num_threads(n)


def parallel_map(fn: Callable, items: Iterable, workers: int | None = None) -> list:
    """[fn(x) for x in items], each call single-threaded, calls spread over `workers` (default: torch's threads)."""
    items = list(items)
    with one_thread_workers() as n:
        n = min(workers or n, len(items))
        if n <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=n) as pool:
            return list(pool.map(fn, items))


def split(n_items: int, parts: int) -> list[slice]:
    """`parts` contiguous, nearly equal slices of range(n_items) (empty ones dropped)."""
    parts = max(1, min(parts, n_items))
    bounds = [round(i * n_items / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
