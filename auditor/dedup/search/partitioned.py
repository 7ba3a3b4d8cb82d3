"""``partitioned``: the on-disk k-means partitions of :mod:`auditor.dedup.search.partition_build` searched one
partition at a time, in-process or as Ray tasks (:func:`partitioned_pairs`); as a ``dedup.search`` method the
partitions are built in a temporary folder and searched in-process (at 100M+ rows build them on shared storage
with :func:`~auditor.dedup.search.partition_build.build_partitions` and run :func:`partitioned_pairs` with
``engine="ray"`` instead)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .common import MARGIN, SearchOptions, f32, faiss, range_search_rows, verify
from .partition_build import (DEFAULT_MARGIN, DEFAULT_MAX_PROBES, DEFAULT_PROBE_STORE, DEFAULT_ROWS,
                              PartitionedIndex, build_partitions, default_nparts, load_partition)
from .registry import SEARCH_METHODS

log = logging.getLogger(__name__)

QUERY_BLOCK = 16_384

__all__ = ["search_partition", "partitioned_pairs", "PartitionedSearch"]


def search_partition(directory: str | Path, manifest: dict, pid: int, threshold: float,
                     threads: Optional[int] = None) -> dict:
    """Exact pairs found in one partition that this partition owns.

    The stored rows are the database; the stored rows and the probe rows are the queries. A stored-stored pair
    (both rows at home here) belongs to this partition; a probe-stored pair ``(q, s)`` is also found in ``home(q)``
    when this partition's stored row ``s`` probes ``home(q)``, and then belongs to the smaller partition id.

    Returns ``{"i", "j", "sim"}`` (global ids, ``i < j``, exact float32 dot >= threshold, sorted) plus
    per-partition costs: ``rows`` (stored), ``probe_rows``, ``candidates``, ``seconds``, ``load_s``."""
    if threads:
        faiss().omp_set_num_threads(int(threads))
    t0 = time.perf_counter()
    (ids, prb, vec), (qids, qhome, qvec) = load_partition(Path(directory), manifest, pid)
    load_s = time.perf_counter() - t0
    m, nq = len(ids), len(qids)
    out_i, out_j, out_s = [], [], []
    ncand = 0
    if m > 0 and m + nq > 1:
        x = f32(vec)
        index = faiss().IndexFlatIP(x.shape[1])
        index.add(x)
        # queries: the stored rows (self-join, each pair once by global id) then the probe rows
        for is_probe, q, qid in ((False, x, ids), (True, qvec, qids)):
            a, b = range_search_rows(index, q, float(threshold) - MARGIN, block=QUERY_BLOCK)
            if not is_probe:
                keep = ids[a] < ids[b]
                a, b = a[keep], b[keep]
            ncand += len(a)
            a, b, sim = verify(q, x, a, b, threshold)  # exact: float32 dot of the two rows
            if is_probe:
                # also found in home(q) if s probes it: the smaller partition id emits
                h = qhome[a]
                mine = ~(((prb[b] == h[:, None]).any(axis=1)) & (h < pid))
                a, b, sim = a[mine], b[mine], sim[mine]
            ia, ib = qid[a], ids[b]
            out_i.append(np.minimum(ia, ib))
            out_j.append(np.maximum(ia, ib))
            out_s.append(sim)
    if out_i:
        pi, pj = np.concatenate(out_i), np.concatenate(out_j)
        sims = np.concatenate(out_s).astype(np.float32)
    else:
        pi = pj = np.zeros(0, np.int64)
        sims = np.zeros(0, np.float32)
    order = np.lexsort((pj, pi))
    return {"pid": pid, "i": pi[order].astype(np.int64), "j": pj[order].astype(np.int64), "sim": sims[order],
            "rows": m, "probe_rows": nq, "candidates": int(ncand), "load_s": round(load_s, 4),
            "seconds": round(time.perf_counter() - t0, 4)}
def partitioned_pairs(index: PartitionedIndex | str | Path, threshold: float, engine: str = "local",
                      ray_address: Optional[str] = None, threads: Optional[int] = None,
                      partitions: Optional[Sequence[int]] = None, progress: bool = False):
    """Every owned pair of every partition (or of ``partitions``): ``(i, j, sim, stats)`` with ``i < j``,
    sorted by ``(i, j)``, no duplicates; ``stats`` lists the per-partition costs.

    ``engine="local"`` runs the partitions one after another in this process (faiss uses ``threads``);
    ``engine="ray"`` runs one Ray task per partition (``num_cpus=threads or 1``) on the cluster at ``ray_address``
    (an initialised Ray session is used as it is); the partition files must be on storage every node can read."""
    from tqdm.auto import tqdm

    if not isinstance(index, PartitionedIndex):
        index = PartitionedIndex.open(index)
    built = float(index.manifest.get("threshold", threshold))
    if threshold < built - 1e-9:
        log.warning("searching at cosine %.4f partitions built for %.4f: the margin rule was sized for the higher "
                    "threshold, so pairs between the two may be missed (rebuild with threshold=%.4f)",
                    threshold, built, threshold)
    pids = list(range(index.nparts)) if partitions is None else [int(p) for p in partitions]
    results = []
    if engine == "local":
        for pid in tqdm(pids, disable=not progress, desc="partitions", unit="part"):
            results.append(search_partition(index.dir, index.manifest, pid, threshold, threads))
    elif engine == "ray":
        import ray

        owns = False
        if not ray.is_initialized():
            ray.init(address=ray_address, include_dashboard=False, logging_level=logging.WARNING)
            owns = True
        try:
            task = ray.remote(search_partition).options(num_cpus=threads or 1)
            refs = [task.remote(str(index.dir), index.manifest, pid, threshold, threads) for pid in pids]
            bar = tqdm(total=len(refs), disable=not progress, desc="partitions", unit="part")
            for ref in refs:
                results.append(ray.get(ref))
                bar.update(1)
            bar.close()
        finally:
            if owns:
                ray.shutdown()
    else:
        raise ValueError(f"unknown engine {engine!r} (local | ray)")
    results.sort(key=lambda r: r["pid"])
    if results:
        i = np.concatenate([r["i"] for r in results])
        j = np.concatenate([r["j"] for r in results])
        s = np.concatenate([r["sim"] for r in results])
    else:
        i = j = np.zeros(0, np.int64)
        s = np.zeros(0, np.float32)
    order = np.lexsort((j, i))
    stats = [{k: r[k] for k in ("pid", "rows", "probe_rows", "candidates", "seconds", "load_s")}
             | {"pairs": int(len(r["i"]))}
             for r in results]
    return i[order], j[order], s[order].astype(np.float32), stats


@SEARCH_METHODS.register("partitioned")
class PartitionedSearch:
    """``dedup.search=partitioned``: partitions of ``opts.partition_rows`` rows in a temporary folder, the margin
    rule's ``opts.partition_margin`` / ``opts.partition_max_probes`` (approximate unless margin 1 without a cap),
    searched in-process. Cross pairs are the pairs of ``base + query`` that join the two sets (the base's own pairs
    are searched again: the partitions are built for one set); the lookup index is the IVF one."""

    exact = False

    def self_candidates(self, x: np.ndarray, thr: float, opts: SearchOptions, progress: bool):
        rows = opts.partition_rows or DEFAULT_ROWS
        with tempfile.TemporaryDirectory(prefix="auditor-partitions-") as tmp:
            index = build_partitions(
                x, tmp, float(thr), nparts=default_nparts(len(x), rows),
                margin=DEFAULT_MARGIN if opts.partition_margin is None else opts.partition_margin,
                max_probes=opts.partition_max_probes or DEFAULT_MAX_PROBES, seed=opts.seed,
                probe_store=opts.partition_probe_store or DEFAULT_PROBE_STORE, progress=progress)
            # built and searched at thr (the threshold less the margin): candidates for the caller's verification
            i, j, _, _ = partitioned_pairs(index, float(thr), progress=progress)
        return i, j

    def cross_candidates(self, q: np.ndarray, b: np.ndarray, thr: float, opts: SearchOptions, progress: bool):
        nb = len(b)
        i, j = self.self_candidates(np.concatenate([b, q.astype(b.dtype, copy=False)]), thr, opts, progress)
        cross = (i < nb) & (j >= nb)
        return j[cross] - nb, i[cross]

    def build_index(self, x: np.ndarray, opts: SearchOptions):
        from .ivf import IVFSearch

        return IVFSearch().build_index(x, opts)
