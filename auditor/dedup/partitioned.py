"""On-disk sharded IVF partitioning for embedding near-duplicate search at 100M+ rows, runnable per partition
in-process or as Ray tasks.

The in-memory IVF join of :mod:`auditor.dedup.search` needs every vector in one process. Past a few tens of
millions of rows (LAION-2B's 512-d float16 embeddings are 2 TB) the search is split into independent partitions:

1. **centroids**: spherical k-means (faiss) on a random sample of ``sample_per_part * nparts`` rows;
2. **assignment**: every row goes to its ``k`` (default 2) nearest centroids -- near-duplicates of a row that sits
   near a cell boundary land together in at least one partition; rows are streamed in blocks (memory-mapped
   ``IndexStore.embeddings()``), each partition is written as ``.npy`` chunks (global row ids int64, the ``k``
   assigned partitions int32, vectors float16) under ``DIR/parts/<pid>/``; the buffered rows are bounded by
   ``max_buffer_rows``;
3. **search**: each partition on its own: exact faiss ``IndexFlatIP`` range search of the partition against itself
   (cost ``rows^2 * dim``), candidates at ``threshold - 1e-3``, re-verified with the exact float32 dot product;
4. **de-duplication without a global pass**: a pair found in several partitions is emitted only by the smallest
   partition id that both rows were assigned to, so the union of all partitions' outputs has no duplicates and any
   partition can run anywhere, in any order.

The result equals exact brute force on every pair whose rows share a partition; a pair whose rows share none is
missed (measured: recall of planted near-duplicates 1.0 in the tests; see benchmarks/results/partitioned.md).
Outputs are deterministic for a fixed seed: local and Ray runs give identical arrays.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from ..utils import write_json, write_npy

log = logging.getLogger(__name__)

MANIFEST = "partitions.json"
_MARGIN = 1e-3
_QUERY_BLOCK = 16_384


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def default_nparts(n: int, k: int = 2, target_rows: int = 20_000) -> int:
    """Partitions so that one holds about ``target_rows`` rows (each row is stored ``k`` times)."""
    return max(1, math.ceil(k * n / target_rows))


def train_centroids(emb, nparts: int, seed: int = 0, sample_per_part: int = 64, niter: int = 20) -> np.ndarray:
    """Spherical k-means centroids (float32 [nparts, dim]) on a seeded random sample of the rows (the same
    training as the in-memory IVF join's lists)."""
    from .search import _train_centroids

    nparts = max(1, min(int(nparts), len(emb)))
    return _train_centroids(emb, nparts, seed, sample_per_list=sample_per_part, niter=niter)


@dataclass
class PartitionedIndex:
    """A partitioned embedding set on disk (``DIR/partitions.json``, ``centroids.npy``, ``parts/<pid>/``)."""

    dir: Path
    manifest: dict

    @classmethod
    def open(cls, directory: str | Path) -> "PartitionedIndex":
        d = Path(directory)
        return cls(d, json.loads((d / MANIFEST).read_text(encoding="utf-8")))

    @property
    def nparts(self) -> int:
        return int(self.manifest["nparts"])

    def part_rows(self) -> list[int]:
        return [int(p["rows"]) for p in self.manifest["partitions"]]

    def load_part(self, pid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(global ids int64 [m], assigned partitions int32 [m, k], vectors float16 [m, dim]) of one partition."""
        return load_partition(self.dir, self.manifest, pid)


def load_partition(directory: Path, manifest: dict, pid: int):
    entry = manifest["partitions"][pid]
    pdir = Path(directory) / "parts" / f"{pid:05d}"
    ids, asg, vec = [], [], []
    for c in range(int(entry["chunks"])):
        ids.append(np.load(pdir / f"{c:05d}.ids.npy", allow_pickle=False))
        asg.append(np.load(pdir / f"{c:05d}.assign.npy", allow_pickle=False))
        vec.append(np.load(pdir / f"{c:05d}.emb.npy", allow_pickle=False))
    d, k = int(manifest["dim"]), int(manifest["k"])
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, k), np.int32), np.zeros((0, d), np.float16)
    return np.concatenate(ids), np.concatenate(asg), np.concatenate(vec)


def _blocks(emb, block_rows: int) -> Iterable[tuple[int, np.ndarray]]:
    for lo in range(0, len(emb), block_rows):
        yield lo, np.asarray(emb[lo:lo + block_rows])


def build_partitions(emb, out_dir: str | Path, nparts: Optional[int] = None, k: int = 2, seed: int = 0,
                     centroids: Optional[np.ndarray] = None, block_rows: int = 262_144,
                     max_buffer_rows: int = 2_000_000, progress: bool = False) -> PartitionedIndex:
    """Partition ``emb`` (float16/float32 [N, dim], L2-normalised; a memory map is fine) into ``out_dir``."""
    import faiss
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, d = emb.shape
    t0 = time.perf_counter()
    if centroids is None:
        centroids = train_centroids(emb, nparts or default_nparts(n, k), seed)
    centroids = _f32(centroids)
    P = len(centroids)
    k = max(1, min(int(k), P))
    train_s = time.perf_counter() - t0
    write_npy(out / "centroids.npy", centroids)
    quant = faiss.IndexFlatIP(d)
    quant.add(centroids)

    chunks = [0] * P
    rows = [0] * P
    buf: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    buffered = 0

    def flush() -> None:
        nonlocal buffered
        for pid in sorted(buf):
            parts = buf[pid]
            pdir = out / "parts" / f"{pid:05d}"
            c = chunks[pid]
            write_npy(pdir / f"{c:05d}.ids.npy", np.concatenate([p[0] for p in parts]))
            write_npy(pdir / f"{c:05d}.assign.npy", np.concatenate([p[1] for p in parts]))
            write_npy(pdir / f"{c:05d}.emb.npy", np.concatenate([p[2] for p in parts]))
            chunks[pid] += 1
        buf.clear()
        buffered = 0

    t1 = time.perf_counter()
    for lo, x in tqdm(_blocks(emb, block_rows), total=math.ceil(n / block_rows), disable=not progress,
                      desc="partition", unit="block"):
        x16 = x.astype(np.float16, copy=False)
        _, I = quant.search(_f32(x), k)
        I = I.astype(np.int32)
        gid = np.arange(lo, lo + len(x), dtype=np.int64)
        flat = I.reshape(-1)
        rowi = np.repeat(np.arange(len(x)), k)
        order = np.argsort(flat, kind="stable")
        flat, rowi = flat[order], rowi[order]
        bounds = np.flatnonzero(np.diff(flat)) + 1
        for grp in np.split(np.arange(len(flat)), bounds):
            if len(grp) == 0:
                continue
            pid = int(flat[grp[0]])
            r = rowi[grp]
            buf.setdefault(pid, []).append((gid[r], I[r], x16[r]))
            rows[pid] += len(r)
        buffered += len(x) * k
        if buffered >= max_buffer_rows:
            flush()
    flush()
    manifest = {
        "format": 1, "n": int(n), "dim": int(d), "k": int(k), "nparts": int(P), "seed": int(seed),
        "partitions": [{"id": p, "rows": int(rows[p]), "chunks": int(chunks[p])} for p in range(P)],
        "train_s": round(train_s, 3), "assign_write_s": round(time.perf_counter() - t1, 3),
    }
    write_json(out / MANIFEST, manifest)
    return PartitionedIndex(out, manifest)


def search_partition(directory: str | Path, manifest: dict, pid: int, threshold: float,
                     threads: Optional[int] = None) -> dict:
    """Exact pairs inside one partition that this partition owns (the smallest partition both rows share).

    Returns ``{"i", "j", "sim"}`` (global ids, ``i < j``, exact float32 dot >= threshold, sorted) plus
    per-partition costs: ``rows``, ``candidates``, ``seconds``, ``load_s``."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(int(threads))
    t0 = time.perf_counter()
    ids, asg, vec = load_partition(Path(directory), manifest, pid)
    load_s = time.perf_counter() - t0
    m = len(ids)
    out_i, out_j = [], []
    ncand = 0
    if m > 1:
        x = _f32(vec)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        for qlo in range(0, m, _QUERY_BLOCK):
            qhi = min(m, qlo + _QUERY_BLOCK)
            lims, _, labels = index.range_search(x[qlo:qhi], float(threshold) - _MARGIN)
            if len(labels) == 0:
                continue
            a = np.repeat(np.arange(qlo, qhi, dtype=np.int64), np.diff(lims).astype(np.int64))
            b = labels.astype(np.int64)
            keep = ids[a] < ids[b]
            a, b = a[keep], b[keep]
            ncand += len(a)
            # exact verification: float32 dot of the stored rows
            sim = np.einsum("ij,ij->i", x[a], x[b], dtype=np.float32)
            ok = sim >= np.float32(threshold)
            a, b = a[ok], b[ok]
            # ownership: the smallest partition id that both rows were assigned to
            common = np.where(asg[a][:, :, None] == asg[b][:, None, :], asg[a][:, :, None], np.iinfo(np.int32).max)
            owner = common.reshape(len(a), -1).min(axis=1)
            mine = owner == pid
            out_i.append(np.stack([ids[a[mine]], ids[b[mine]]], axis=1))
            out_j.append(sim[ok][mine])
    if out_i:
        pairs = np.concatenate(out_i)
        sims = np.concatenate(out_j).astype(np.float32)
    else:
        pairs, sims = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    order = np.lexsort((pairs[:, 1], pairs[:, 0])) if len(pairs) else np.zeros(0, np.int64)
    return {"pid": pid, "i": pairs[order, 0].astype(np.int64), "j": pairs[order, 1].astype(np.int64),
            "sim": sims[order], "rows": m, "candidates": int(ncand), "load_s": round(load_s, 4),
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
    stats = [{k: r[k] for k in ("pid", "rows", "candidates", "seconds", "load_s")} | {"pairs": int(len(r["i"]))}
             for r in results]
    return i[order], j[order], s[order].astype(np.float32), stats
