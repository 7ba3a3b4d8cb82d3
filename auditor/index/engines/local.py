"""``local`` engine: one machine. The main process streams fixed chunks to a process pool (decode + hashes +
the embedder's CPU preprocessing; a plain local folder's files are read by the workers, the main process only
lists them), embeds each finished shard in fixed batches (CUDA when present) and writes it. With
``index.workers=0`` everything runs in-process."""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from ..workerctx import worker_context
from .base import ENGINES, IndexEngine

if TYPE_CHECKING:  # types only: the pipeline modules are imported where the engine runs
    from ...io.base import Sample
    from ...utils import ErrorRecord

log = logging.getLogger(__name__)


@ENGINES.register("local")
class LocalEngine(IndexEngine):
    name = "local"

    def __init__(self, icfg):
        super().__init__(icfg)
        self.embedder = None
        self.gpu = None

    def start(self) -> dict:
        if self.icfg.embedder.name == "none":
            return {"name": "none", "dim": 0}
        from ..embedders import build_embedder
        from ..shard import resolve_workers
        from ..threads import embedder_threads

        ecfg = self.icfg.embedder
        if ecfg.threads == 0:  # auto: every core (threads.embedder_threads)
            ecfg = ecfg.model_copy(update={"threads": embedder_threads(resolve_workers(self.icfg.workers))})
        self.embedder = build_embedder(ecfg)
        desc = self.embedder.describe()
        if self.icfg.gpu_decode:
            from ..gpu import GpuPath

            self.gpu = GpuPath.for_embedder(self.embedder, self.icfg.decode)
            desc = {**desc, "gpu_decode": self.gpu.describe()}
        return desc

    def run(self, job) -> None:
        from tqdm.auto import tqdm

        from ..shard import ShardAccumulator, iter_chunks, process_chunk, resolve_workers, write_shard

        icfg = self.icfg
        workers = resolve_workers(icfg.workers)
        log.info("local engine: %d workers", workers)
        decode_cfg, emb_cfg, keep, mode = job.decode_cfg, job.worker_embedder_cfg, job.keep_bytes, job.hash_mode
        read_errors: dict[str, list[ErrorRecord]] = {}
        # pool workers read local image files themselves: the main process only lists them
        chunk_iter = iter_chunks(job.reader, job.shards, icfg.chunk_size, read_errors, deferred=workers > 0)
        bar = tqdm(total=len(job.shards), unit="shard", desc="index", disable=not icfg.progress)
        nbar = tqdm(unit="img", desc="samples", disable=not icfg.progress, position=1, leave=False)
        acc: Optional[ShardAccumulator] = None

        def finish(a: ShardAccumulator) -> None:
            write_shard(a, job.shard_dir, self.embedder, icfg.embedder.batch_size, read_errors.pop(a.shard, []),
                          gpu=self.gpu)
            bar.update(1)

        def consume(res) -> None:
            nonlocal acc
            if acc is not None and acc.shard != res.shard:
                finish(acc)
                acc = None
            if acc is None:
                acc = ShardAccumulator(res.shard)
            acc.add(res)
            nbar.update(len(res.records) + len(res.errors) + len(res.not_indexed))

        try:
            if workers <= 0:
                for chunk in chunk_iter:
                    consume(process_chunk(chunk, decode_cfg, emb_cfg, keep, mode))
            else:
                _import_in_background("pandas")
                run_pool(chunk_iter, workers, decode_cfg, emb_cfg, consume, keep, mode)
            if acc is not None:
                finish(acc)
        finally:
            bar.close()
            nbar.close()


def _import_in_background(name: str) -> None:
    """Import ``name`` on a daemon thread of this (otherwise waiting) main process while the pool works.
    pyarrow imports pandas on its first conversion of Python values (``pa.array`` checks for pandas types), so
    without this the first shard write waited 0.44 s for it after the last chunk; imported while the workers run,
    it cost ``auditor index`` of 3,000 photos ~0.2 s instead (2 cores, BENCHMARKS.md §1). A later import of the
    same module waits for this one (the import lock), so the result is the same either way."""
    import importlib
    import threading

    def run() -> None:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the import that needs it reports the problem
            pass

    threading.Thread(target=run, name=f"auditor-import-{name}", daemon=True).start()


def init_worker(parent_pid: int, native_threads: int) -> None:
    """Pool-worker initializer: cap the worker's BLAS/OpenMP pools to its share of the cores (``threads.py``:
    ``workers`` processes x a pool of ``cores`` threads each oversubscribe the machine) and exit with the parent."""
    from ..threads import cap_native_threads

    cap_native_threads(native_threads)
    _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """Exit when the main process is gone (started by :func:`init_worker`). A forkserver worker is the forkserver's
    child and holds both ends of the pool's call queue, so a ``kill -9`` of the main process would otherwise
    leave it -- and through it the forkserver and resource tracker -- waiting forever."""
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(parent_pid, 0)
            except (ProcessLookupError, PermissionError):  # gone (or its pid reused by another user's process)
                os._exit(0)

    threading.Thread(target=watch, name="auditor-parent-watch", daemon=True).start()


def make_pool(workers: int) -> ProcessPoolExecutor:
    """The index's process pool: :func:`worker_context` processes, each with its BLAS/OpenMP pools capped to
    its share of the cores (:func:`init_worker`) and exiting with this process."""
    from ..threads import worker_thread_share

    return ProcessPoolExecutor(max_workers=workers, mp_context=worker_context(), initializer=init_worker,
                               initargs=(os.getpid(), worker_thread_share(workers)))


def run_pool(chunks: Iterable[list[Sample]], workers: int, decode_cfg: dict, emb_cfg: Optional[dict],
             consume: Callable, keep_bytes: bool = False, hash_mode: str = "exact") -> None:
    """Bounded, in-order pipeline over a process pool (at most ``2 * workers`` chunks in flight)."""
    from ..shard import process_chunk

    window: deque[Future] = deque()
    pool = make_pool(workers)
    try:
        for _ in range(workers):  # start every worker now: their start-up overlaps reading the first chunks
            pool.submit(os.getpid)
        for chunk in chunks:
            window.append(pool.submit(process_chunk, chunk, decode_cfg, emb_cfg, keep_bytes, hash_mode))
            if len(window) >= 2 * workers:
                consume(window.popleft().result())
        while window:
            consume(window.popleft().result())
    except BaseException:
        pool.shutdown(wait=True)
        raise
    # every result is in: the idle workers exit on their own while the caller writes the last shard
    pool.shutdown(wait=False)
