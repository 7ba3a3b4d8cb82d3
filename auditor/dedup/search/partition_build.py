"""On-disk sharded IVF partitioning for embedding near-duplicate search at 100M+ rows, runnable per partition
in-process or as Ray tasks.

The in-memory IVF join of :mod:`auditor.dedup.search.ivf` needs every vector in one process. Past a few tens of
millions of rows (LAION-2B's 512-d float16 embeddings are 2 TB) the search is split into independent partitions:

1. **centroids**: spherical k-means (faiss) on a random sample of ``sample_per_part * nparts`` rows;
2. **assignment** (one streaming pass, blocks of a memory map such as ``IndexStore.embeddings(mmap=True)``): every
   row is *stored* once, in its home partition (nearest centroid), and is additionally written as a *probe row* of
   every other partition ``c`` that passes the threshold-aware margin rule below (at most ``max_probes - 1``);
   each partition is ``.npy`` chunks under ``DIR/parts/<pid>/``: stored rows (global ids int64, probe lists int32
   padded with -1, vectors float16) and probe rows (ids int64, home partition int32, and either a float16 copy of
   the vector, ``probe_store="copy"``, or its place in the home partition's files, ``probe_store="ref"``: chunk and
   row int32, read from there at search time); the buffered rows are bounded by ``max_buffer_rows``;
3. **search**: each partition on its own: exact faiss ``IndexFlatIP`` range search of its stored rows *and* its
   probe rows against its stored rows (cost ``stored * (stored + probe rows) * dim``), candidates at
   ``threshold - 1e-3``, re-verified with the exact float32 dot product;
4. **de-duplication without a global pass**: a pair ``(a, b)`` can be found in ``home(b)`` (if it is one of
   ``a``'s probes) and in ``home(a)`` (if it is one of ``b``'s); it is emitted only by the smaller of the two, which
   each side can decide from the two rows' probe lists, so the union of all partitions' outputs has no duplicates
   and any partition can run anywhere, in any order.

**The margin rule.** For unit vectors with ``cos(a, b) >= t`` we have ``|a - b| <= r = sqrt(2 (1 - t))``. Let ``g``
be ``a``'s home and ``h`` be ``b``'s; since ``b . c_h >= b . c_g``,

    a . c_g - a . c_h = b . (c_g - c_h) + (a - b) . (c_g - c_h) <= r * |c_g - c_h|.

So probing, for every row, each partition ``c`` with ``a . c_home - a . c <= margin * r * |c_home - c|`` finds
*every* pair at or above ``t`` when ``margin = 1`` (and ``max_probes`` does not cut), i.e. the partitioned search is
then exact. The bound assumes ``a - b`` points straight along ``c_g - c_h``; a real displacement in 512 dimensions
has only a small component along it, so a fraction of the bound catches nearly every pair at a fraction of the
cost: ``margin`` is that fraction (measured trade-off in benchmarks/results/partitioned.md). The rule adapts to the
data: a row deep inside its cell probes nothing else, a row on a boundary probes the cells across it, and a higher
threshold probes less. A pair is found iff ``home(b)`` is among ``a``'s probes or ``home(a)`` among ``b``'s.

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

from ...utils import write_json, write_npy
from ..config import DedupConfig
from . import ivf
from .common import f32
from .ivf import pair_radius  # noqa: F401  (re-exported: auditor.dedup.partitioned)

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "FORMAT", "CDIST_MATRIX_MAX", "DEFAULT_MARGIN", "DEFAULT_MAX_PROBES", "DEFAULT_ROWS",
           "DEFAULT_PROBE_STORE", "default_nparts", "pair_radius", "train_centroids", "ProbeAssigner",
           "PartitionedIndex", "load_partition", "group_by", "build_partitions"]

MANIFEST = "partitions.json"
FORMAT = 2
CDIST_MATRIX_MAX = 4096  # centroids up to which ProbeAssigner keeps all centroid distances (64 MB)
_DEFAULTS = DedupConfig.model_fields
DEFAULT_MARGIN: float = _DEFAULTS["partition_margin"].default
DEFAULT_MAX_PROBES: int = _DEFAULTS["partition_max_probes"].default
DEFAULT_ROWS: int = _DEFAULTS["partition_rows"].default
DEFAULT_PROBE_STORE: str = _DEFAULTS["partition_probe_store"].default


def default_nparts(n: int, target_rows: int = DEFAULT_ROWS) -> int:
    """Partitions so that one stores about ``target_rows`` rows (each row is stored once)."""
    return max(1, math.ceil(n / target_rows))


def train_centroids(emb, nparts: int, seed: int = 0, sample_per_part: int = 64, niter: int = 20) -> np.ndarray:
    """Spherical k-means centroids (float32 [nparts, dim]) on a seeded random sample of the rows (the same
    training as the in-memory IVF join's lists)."""
    nparts = max(1, min(int(nparts), len(emb)))
    return ivf.train_centroids(emb, nparts, seed, sample_per_list=sample_per_part, niter=niter)


class ProbeAssigner:
    """The margin rule of the module docstring: row -> its partitions to probe (column 0 = home, then by
    decreasing similarity, padded with -1)."""

    def __init__(self, centroids: np.ndarray, threshold: float, margin: float = DEFAULT_MARGIN,
                 max_probes: int = DEFAULT_MAX_PROBES):
        import faiss

        self.centroids = f32(centroids)
        P, d = self.centroids.shape
        self.max_probes = max(1, min(int(max_probes), P))
        self.slack = ivf.pair_slack(threshold, margin)
        self.quant = faiss.IndexFlatIP(d)
        self.quant.add(self.centroids)
        self.sq = (self.centroids * self.centroids).sum(1)
        # |c_i - c_j| for all pairs while that matrix is small; past it, only for the pairs a block needs
        self.cdist = ivf.centroid_distances(self.centroids) if P <= CDIST_MATRIX_MAX else None

    def _cdist_pairs(self, h: np.ndarray, j: np.ndarray, chunk: int = 65_536) -> np.ndarray:
        """``|c_h - c_j|`` of each distinct (h, j) pair once (from squared norms and dot products, clipped at 0)."""
        P = len(self.centroids)
        u, inv = np.unique(h.astype(np.int64) * P + j, return_inverse=True)
        a, b = u // P, u % P
        dots = np.concatenate([np.einsum("ij,ij->i", self.centroids[a[lo:lo + chunk]], self.centroids[b[lo:lo + chunk]])
                               for lo in range(0, len(u), chunk)]) if len(u) else np.zeros(0, np.float32)
        dist = np.sqrt(np.maximum(self.sq[a] + self.sq[b] - 2.0 * dots, 0.0)).astype(np.float32)
        return dist[inv.reshape(-1)].reshape(h.shape)

    def __call__(self, x) -> np.ndarray:
        S, I = self.quant.search(f32(x), self.max_probes)
        I = I.astype(np.int32)
        H = np.broadcast_to(I[:, :1], I.shape)
        cd = self.cdist[H, I] if self.cdist is not None else self._cdist_pairs(H, I)
        keep = ivf.margin_keep(S, cd, self.slack)
        out = np.where(keep, I, np.int32(-1))
        order = np.argsort(~keep, axis=1, kind="stable")  # kept probes first, in decreasing similarity
        return np.take_along_axis(out, order, axis=1)


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
        """Stored (home) rows per partition."""
        return [int(p["rows"]) for p in self.manifest["partitions"]]

    def probe_rows(self) -> list[int]:
        """Probe rows (rows of other partitions that query this one) per partition."""
        return [int(p["probe_rows"]) for p in self.manifest["partitions"]]

    def load_part(self, pid: int):
        """``(ids, probes, vectors), (probe ids, probe homes, probe vectors)`` of one partition."""
        return load_partition(self.dir, self.manifest, pid)


def _load_chunks(pdir: Path, chunks: int, names: Sequence[str]):
    return [[np.load(pdir / f"{c:05d}.{name}.npy", allow_pickle=False) for c in range(chunks)] for name in names]


def load_partition(directory: Path, manifest: dict, pid: int):
    """Stored rows ``(ids int64 [m], probes int32 [m, w] padded with -1, vectors float16 [m, dim])`` and probe
    rows ``(ids int64 [q], home partitions int32 [q], vectors float16 [q, dim])`` of partition ``pid``."""
    if int(manifest.get("format", 1)) != FORMAT:
        raise ValueError(f"partition format {manifest.get('format', 1)} is not {FORMAT}: rebuild the partitions")
    entry = manifest["partitions"][pid]
    pdir = Path(directory) / "parts" / f"{pid:05d}"
    d = int(manifest["dim"])
    ids, prb, vec = _load_chunks(pdir, int(entry["chunks"]), ("ids", "probes", "emb"))
    if ids:
        w = max(p.shape[1] for p in prb)
        prb = [np.pad(p, ((0, 0), (0, w - p.shape[1])), constant_values=-1) for p in prb]
        stored = (np.concatenate(ids), np.concatenate(prb), np.concatenate(vec))
    else:
        stored = (np.zeros(0, np.int64), np.zeros((0, 1), np.int32), np.zeros((0, d), np.float16))
    if manifest.get("probe_store", "copy") == "ref":
        qid, qhome, qchunk, qrow = _load_chunks(pdir, int(entry["probe_chunks"]), ("qids", "qhome", "qchunk", "qrow"))
        qvec = [_gather_ref(Path(directory), np.concatenate(qhome), np.concatenate(qchunk), np.concatenate(qrow),
                            d)] if qid else []
    else:
        qid, qhome, qvec = _load_chunks(pdir, int(entry["probe_chunks"]), ("qids", "qhome", "qemb"))
    if qid:
        probe = (np.concatenate(qid), np.concatenate(qhome), np.concatenate(qvec))
    else:
        probe = (np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, d), np.float16))
    return stored, probe


def _gather_ref(directory: Path, home: np.ndarray, chunk: np.ndarray, row: np.ndarray, d: int) -> np.ndarray:
    """The vectors of probe rows stored by reference: row ``row`` of chunk ``chunk`` of partition ``home``."""
    out = np.empty((len(home), d), np.float16)
    key = home.astype(np.int64) << 32 | chunk.astype(np.int64)
    for k, pos in group_by(key):
        f = directory / "parts" / f"{k >> 32:05d}" / f"{k & 0xFFFFFFFF:05d}.emb.npy"
        r = row[pos]
        order = np.argsort(r, kind="stable")  # ascending offsets: forward reads through the memory map
        out[pos[order]] = np.load(f, mmap_mode="r", allow_pickle=False)[r[order]]
    return out


def _blocks(emb, block_rows: int) -> Iterable[tuple[int, np.ndarray]]:
    for lo in range(0, len(emb), block_rows):
        yield lo, np.asarray(emb[lo:lo + block_rows])


def group_by(keys: np.ndarray):
    """(key, positions) for each distinct key, ascending."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    bounds = np.flatnonzero(np.diff(k)) + 1
    for grp in np.split(order, bounds):
        if len(grp):
            yield int(keys[grp[0]]), grp


def build_partitions(emb, out_dir: str | Path, threshold: float, nparts: Optional[int] = None,
                     margin: float = DEFAULT_MARGIN, max_probes: int = DEFAULT_MAX_PROBES, seed: int = 0,
                     centroids: Optional[np.ndarray] = None, block_rows: int = 262_144,
                     max_buffer_rows: int = 2_000_000, probe_store: str = DEFAULT_PROBE_STORE,
                     progress: bool = False) -> PartitionedIndex:
    """Partition ``emb`` (float16/float32 [N, dim], L2-normalised; a memory map is fine) into ``out_dir`` for a
    search at cosine ``threshold`` (or higher: the margin rule is built for it; a lower search threshold finds
    fewer of its pairs). ``nparts`` defaults to ``N / partition_rows``; ``margin`` and ``max_probes`` are the margin
    rule's (``margin=1`` with ``max_probes >= nparts`` makes the search exact). ``probe_store="copy"`` writes each
    probe row's vector into the probed partition (self-contained partitions, sequential reads, ``1 + probe rows per
    row`` vectors on disk); ``"ref"`` writes only where the row is stored (one vector per row on disk; a task then
    also reads single rows of the neighbouring partitions' files)."""
    from tqdm.auto import tqdm

    if probe_store not in ("copy", "ref"):
        raise ValueError(f"probe_store must be 'copy' or 'ref', not {probe_store!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, d = emb.shape
    t0 = time.perf_counter()
    if centroids is None:
        centroids = train_centroids(emb, nparts or default_nparts(n), seed)
    centroids = f32(centroids)
    P = len(centroids)
    train_s = time.perf_counter() - t0
    write_npy(out / "centroids.npy", centroids)
    assign = ProbeAssigner(centroids, threshold, margin, max_probes)

    chunks, pchunks = [0] * P, [0] * P
    rows, prows = [0] * P, [0] * P
    buf: dict[int, list] = {}
    pbuf: dict[int, list] = {}
    pending = [0] * P  # stored rows of each partition buffered for its next chunk
    buffered = 0
    qnames = ("qids", "qhome", "qemb") if probe_store == "copy" else ("qids", "qhome", "qchunk", "qrow")

    def flush() -> None:
        nonlocal buffered
        for pid in sorted(buf):
            pdir = out / "parts" / f"{pid:05d}"
            c, parts = chunks[pid], buf[pid]
            w = max(1, max(int((p[1] >= 0).sum(1).max()) for p in parts))
            write_npy(pdir / f"{c:05d}.ids.npy", np.concatenate([p[0] for p in parts]))
            write_npy(pdir / f"{c:05d}.probes.npy", np.ascontiguousarray(np.concatenate([p[1] for p in parts])[:, :w]))
            write_npy(pdir / f"{c:05d}.emb.npy", np.concatenate([p[2] for p in parts]))
            chunks[pid] += 1
        for pid in sorted(pbuf):
            pdir = out / "parts" / f"{pid:05d}"
            c, parts = pchunks[pid], pbuf[pid]
            for f, name in enumerate(qnames):
                write_npy(pdir / f"{c:05d}.{name}.npy", np.concatenate([p[f] for p in parts]))
            pchunks[pid] += 1
        buf.clear()
        pbuf.clear()
        pending[:] = [0] * P
        buffered = 0

    t1 = time.perf_counter()
    for lo, x in tqdm(_blocks(emb, block_rows), total=math.ceil(n / block_rows), disable=not progress,
                      desc="partition", unit="block"):
        x16 = x.astype(np.float16, copy=False)
        probes = assign(x)
        gid = np.arange(lo, lo + len(x), dtype=np.int64)
        home = probes[:, 0]
        where = np.empty((len(x), 2), np.int32)  # (chunk, row) of each row in its home partition's files
        for pid, r in group_by(home):
            buf.setdefault(pid, []).append((gid[r], probes[r], x16[r]))
            where[r, 0] = chunks[pid]
            where[r, 1] = pending[pid] + np.arange(len(r))
            pending[pid] += len(r)
            rows[pid] += len(r)
        pr, pc = np.nonzero(probes[:, 1:] >= 0)
        for pid, sel in group_by(probes[pr, pc + 1]):
            r = pr[sel]  # ascending rows (np.nonzero is row-major, the grouping sort is stable)
            pbuf.setdefault(pid, []).append((gid[r], home[r], x16[r]) if probe_store == "copy"
                                            else (gid[r], home[r], where[r, 0].copy(), where[r, 1].copy()))
            prows[pid] += len(r)
        buffered += len(x) + len(pr)
        if buffered >= max_buffer_rows:
            flush()
    flush()
    manifest = {
        "format": FORMAT, "n": int(n), "dim": int(d), "nparts": int(P), "seed": int(seed),
        "threshold": float(threshold), "margin": float(margin), "max_probes": int(assign.max_probes),
        "probe_store": probe_store, "probe_rows": int(sum(prows)),
        "partitions": [{"id": p, "rows": int(rows[p]), "probe_rows": int(prows[p]), "chunks": int(chunks[p]),
                        "probe_chunks": int(pchunks[p])} for p in range(P)],
        "train_s": round(train_s, 3), "assign_write_s": round(time.perf_counter() - t1, 3),
    }
    write_json(out / MANIFEST, manifest)
    return PartitionedIndex(out, manifest)
