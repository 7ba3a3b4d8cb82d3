"""CPU thread budget of the index: native thread pools capped inside the index's own processes.

The index parallelises over processes (the local engine's pool, Ray tasks). Each of those processes also loads
numpy's BLAS (OpenBLAS starts one thread per core) and possibly OpenMP runtimes, and the main process runs
onnxruntime (its threads spin-wait between batches by default). Left alone, ``workers`` processes x ``cores`` BLAS threads
oversubscribe the machine: on 2 cores, 3,000 photos hashed in 11.0 s instead of 6.8 s with
``OMP_NUM_THREADS=1`` (BENCHMARKS.md section 1). A tool that forks its own workers must not rely on the caller's
environment for this, so every worker caps its pools with threadpoolctl (which calls each library's own
``*_set_num_threads``; environment variables are read only when a library loads, too late in a forkserver child).

Example::

    from auditor.index.threads import cap_native_threads, worker_thread_share
    cap_native_threads(worker_thread_share(workers=2))   # in a worker: BLAS/OpenMP at 1 thread on 2 cores
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_workers(n: int) -> int:
    """``index.workers``: -1 = one worker process per available core, else ``n`` (0 = in-process)."""
    return available_cores() if n < 0 else n


def worker_thread_share(workers: int, cores: int | None = None) -> int:
    """Native threads each of ``workers`` processes may use so that together they fill, not exceed, the cores.

    >>> worker_thread_share(2, cores=2), worker_thread_share(4, cores=16), worker_thread_share(0, cores=8)
    (1, 4, 8)
    """
    cores = available_cores() if cores is None else max(1, cores)
    return max(1, cores // max(1, workers))


def cap_native_threads(limit: int) -> None:
    """Cap every BLAS and OpenMP thread pool loaded in this process to ``limit`` threads, for the rest of the
    process's life (threadpoolctl; no environment variable involved). Libraries loaded later start at their own
    default, so a worker calls this after importing the pipeline (numpy is imported by then)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=max(1, int(limit)))


def embedder_threads(workers: int, cores: int | None = None) -> int:
    """onnxruntime intra-op threads for the local engine's embedder (main process) beside ``workers`` pool
    processes: every core. The local engine embeds a shard when its last chunk is in (``shard.write_shard``),
    while the pool only finishes the <= ``2 * workers`` chunks in flight, so the two rarely overlap, and a thread
    count cut to the cores the pool leaves (1 of 2 here) would double the embedding time. What would overlap is
    onnxruntime's idle threads spin-waiting after each batch: that is turned off (``onnxrt.session_options``).
    Ray actors get the one CPU they reserve instead."""
    return available_cores() if cores is None else max(1, cores)
