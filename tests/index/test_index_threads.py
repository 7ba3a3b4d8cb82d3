"""The index's worker processes cap their native thread pools themselves (issue 18 item 1): BLAS/OpenMP at
the worker's share of the cores whatever the caller's environment, onnxruntime's threads from the worker count."""

from __future__ import annotations

import os

import pytest
from threadpoolctl import threadpool_info

from auditor.index.engines.local import make_pool
from auditor.index.threads import embedder_threads, worker_thread_share


def _blas_threads() -> list[tuple[str, int]]:
    import numpy  # noqa: F401  (loads the BLAS if the worker had not)

    return [(d["internal_api"], d["num_threads"]) for d in threadpool_info()]


def test_pool_workers_run_with_capped_blas_threads(monkeypatch):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    pool = make_pool(2)
    try:
        infos = [pool.submit(_blas_threads).result(timeout=120) for _ in range(4)]
    finally:
        pool.shutdown(wait=True)
    share = worker_thread_share(2)
    for info in infos:
        assert info, "numpy's BLAS is not visible to threadpoolctl in the worker"
        assert all(n <= share for _, n in info), (info, share)
    # the limit comes from inside the worker, not from the parent's environment
    assert "OMP_NUM_THREADS" not in os.environ and "OPENBLAS_NUM_THREADS" not in os.environ


def test_thread_shares():
    assert worker_thread_share(2, cores=2) == 1
    assert worker_thread_share(3, cores=16) == 5
    assert worker_thread_share(0, cores=8) == 8
    assert embedder_threads(2, cores=2) == 2   # the shard is embedded while the pool is idle
    assert embedder_threads(0, cores=4) == 4


def test_onnxruntime_session_thread_options():
    from auditor.index.embedders.onnxrt import session_options
    from auditor.index.threads import available_cores

    so = session_options(1)
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(0).intra_op_num_threads == available_cores()


def test_worker_initializer_caps_a_fresh_interpreter(monkeypatch):
    """Also without the forkserver's preload (spawn: Windows, Python 3.10): the initializer sets the cap."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from auditor.index.engines.local import init_worker

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=init_worker,
                             initargs=(os.getpid(), 1)) as pool:
        info = pool.submit(_blas_threads).result(timeout=120)
    assert info and all(n == 1 for _, n in info), info
