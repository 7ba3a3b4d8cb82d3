"""``local`` engine: one machine. The main process streams fixed chunks to a process pool (decode + hashes +
the embedder's CPU preprocessing; a plain local folder's files are read by the workers, the main process only
lists them), embeds each finished shard in fixed batches (CUDA when present) and writes it. With
``index.workers=0`` everything runs in-process."""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, Iterable, Optional

from tqdm.auto import tqdm

from ..io.base import Sample
from ..utils import ErrorRecord
from .base import ENGINES, IndexEngine

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
        from ..index.embedders import build_embedder

        self.embedder = build_embedder(self.icfg.embedder)
        desc = self.embedder.describe()
        if self.icfg.gpu_decode:
            from ..index.gpu import GpuPath

            self.gpu = GpuPath.for_embedder(self.embedder, self.icfg.decode)
            desc = {**desc, "gpu_decode": self.gpu.describe()}
        return desc

    def run(self, job) -> None:
        from ..index.runner import _ShardAccumulator, _chunks, _finish_shard, _resolve_workers, process_chunk

        icfg = self.icfg
        workers = _resolve_workers(icfg.workers)
        log.info("local engine: %d workers", workers)
        decode_cfg, emb_cfg, keep = job.decode_cfg, job.worker_embedder_cfg, job.keep_bytes
        read_errors: dict[str, list[ErrorRecord]] = {}
        # pool workers read local image files themselves: the main process only lists them
        chunk_iter = _chunks(job.reader, job.shards, icfg.chunk_size, read_errors, deferred=workers > 0)
        bar = tqdm(total=len(job.shards), unit="shard", desc="index", disable=not icfg.progress)
        nbar = tqdm(unit="img", desc="samples", disable=not icfg.progress, position=1, leave=False)
        acc: Optional[_ShardAccumulator] = None

        def finish(a: _ShardAccumulator) -> None:
            _finish_shard(a, job.shard_dir, self.embedder, icfg.embedder.batch_size, read_errors.pop(a.shard, []),
                          gpu=self.gpu)
            bar.update(1)

        def consume(res) -> None:
            nonlocal acc
            if acc is not None and acc.shard != res.shard:
                finish(acc)
                acc = None
            if acc is None:
                acc = _ShardAccumulator(res.shard)
            acc.add(res)
            nbar.update(len(res.records) + len(res.errors) + len(res.not_indexed))

        try:
            if workers <= 0:
                for chunk in chunk_iter:
                    consume(process_chunk(chunk, decode_cfg, emb_cfg, keep))
            else:
                run_pool(chunk_iter, workers, decode_cfg, emb_cfg, consume, keep)
            if acc is not None:
                finish(acc)
        finally:
            bar.close()
            nbar.close()


def _exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """Pool-worker initializer: exit when the main process is gone. A forkserver worker is the forkserver's
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


def run_pool(chunks: Iterable[list[Sample]], workers: int, decode_cfg: dict, emb_cfg: Optional[dict],
             consume: Callable, keep_bytes: bool = False) -> None:
    """Bounded, in-order pipeline over a process pool (at most ``2 * workers`` chunks in flight)."""
    import multiprocessing as mp

    from ..index.runner import process_chunk

    # forkserver: workers never inherit the main process's threads (torch/OpenMP, tqdm's monitor)
    ctx = mp.get_context("forkserver" if os.name == "posix" else "spawn")
    if os.name == "posix":  # workers fork from a server that already imported the pipeline: fast start-up
        ctx.set_forkserver_preload(["auditor.index._preload"])
    window: deque[Future] = deque()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_exit_with_parent,
                               initargs=(os.getpid(),))
    try:
        for _ in range(workers):  # start every worker now: their start-up overlaps reading the first chunks
            pool.submit(os.getpid)
        for chunk in chunks:
            window.append(pool.submit(process_chunk, chunk, decode_cfg, emb_cfg, keep_bytes))
            if len(window) >= 2 * workers:
                consume(window.popleft().result())
        while window:
            consume(window.popleft().result())
    except BaseException:
        pool.shutdown(wait=True)
        raise
    # every result is in: the idle workers exit on their own while the caller writes the last shard
    pool.shutdown(wait=False)
