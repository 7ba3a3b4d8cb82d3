"""Near-duplicate search: every pair above a cosine threshold, or within a Hamming distance, without an N x N
matrix in Python.

Embeddings (L2-normalised rows, float16 or float32):

* ``flat``: exact. faiss ``IndexFlatIP`` range search, blocked so that each base block is searched only by the
  rows before it (the N^2/2 upper triangle), which bounds memory by the result size plus one block.
* ``ivf``: an inverted-file *join*. Spherical k-means centroids are trained on a sample; every vector is stored in
  its nearest list (its "home") and probes its ``nprobe`` nearest lists. The join runs list by list: the rows
  that probe a list are range-searched against the list's members with one BLAS call, so the work is
  ``N * nprobe * N / nlist`` dot products done as matrix products (faiss's per-query IVF scan cannot use BLAS).
  A pair is a candidate when either row probes the other's home list, which is what makes recall of
  near-duplicates (whose neighbours share or neighbour each other's cell) close to 1; ``benchmarks/
  bench_dedup_scale.py`` measures it against brute force (2 shared cores, 1M clustered 512-d float16 rows,
  tau 0.9: 135 s, pair recall 0.9955 on a sampled exact ground truth, 121x faster than a faiss flat range
  search extrapolated from a timed sample; 100k: 9.6 s, recall 1.0 over all pairs). Raise ``nprobe`` for
  more recall at proportional join cost.
* ``hnsw``: ``IndexHNSWFlat`` range search (approximate; optional, mainly for later lookups).
* ``auto``: ``flat`` below :data:`AUTO_FLAT_MAX` rows, ``ivf`` above.

Every candidate is re-verified exactly before it is returned: the similarity is the float32 dot product of the two
rows (rows converted from their stored dtype to float32, summed in float32 by numpy), and only pairs with
``sim >= threshold`` are kept. Results are sorted by ``(i, j)`` and deterministic for a fixed seed.

Hashes (64-bit perceptual hashes as ``uint64``): ``hamming_pairs`` uses a faiss binary index
(``IndexBinaryFlat`` range search, blocked over the upper triangle, or ``IndexBinaryMultiHash`` with enough
tables and bit flips that the pigeonhole principle makes it exact, for large N). Distances are recomputed with
``numpy.bitwise_count`` on the candidates. ``hamming_pairs_dihedral`` also matches flips and 90-degree rotations:
the 7 transformed hashes of every row (the index's ``phash_dihedral`` / ``dhash_dihedral``) are queried against
the stored hashes, which costs 7 full (not upper-triangle) searches on top of the plain one.

Thread count: faiss's OpenMP threads (``faiss.omp_set_num_threads``), taken from ``threads=`` when given,
else left as they are (``OMP_NUM_THREADS`` or the core count).
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

log = logging.getLogger(__name__)

AUTO_FLAT_MAX = 50_000          # rows; at or above this ``auto`` uses the IVF join
_MARGIN = 1e-3                  # candidate threshold slack below ``threshold`` (BLAS rounding, float16 input)
_FLAT_BLOCK = 16_384            # rows per base block in the exact search
_VERIFY_CHUNK = 262_144         # candidate pairs verified at a time

__all__ = [
    "AUTO_FLAT_MAX", "embedding_pairs", "embedding_cross_pairs", "hamming_pairs", "hamming_cross_pairs",
    "hamming_pairs_dihedral", "hamming_cross_pairs_dihedral",
    "build_search_index", "save_search_index", "load_search_index", "query_index", "resolve_method",
    "default_nlist", "default_nprobe", "faiss_threads",
]


def _faiss():
    import faiss

    return faiss


@contextmanager
def faiss_threads(threads: Optional[int]) -> Iterator[None]:
    """Run the block with ``faiss.omp_set_num_threads(threads)`` (``None`` / ``<= 0``: leave as is)."""
    faiss = _faiss()
    if not threads or threads <= 0:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _tqdm(it, progress: bool, **kw):
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, **kw)


# --------------------------------------------------------------------------------------------------------------
# input checks and helpers
# --------------------------------------------------------------------------------------------------------------

def _as_matrix(emb, name: str = "emb") -> np.ndarray:
    x = np.asarray(emb)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array [rows, dim], got shape {x.shape}")
    if x.dtype not in (np.float16, np.float32):
        if np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        else:
            raise TypeError(f"{name} must be float16 or float32, got {x.dtype}")
    return x


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_normalised(x: np.ndarray, name: str) -> None:
    if len(x) == 0:
        return
    idx = np.linspace(0, len(x) - 1, num=min(len(x), 256)).astype(np.int64)
    norms = np.linalg.norm(_f32(x[idx]), axis=1)
    if np.any(np.abs(norms - 1.0) > 1e-2):
        log.warning("%s rows are not L2-normalised (norms %.3f..%.3f): similarities are dot products, "
                    "not cosines", name, float(norms.min()), float(norms.max()))


def _empty_pairs(dist_dtype=np.float32):
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, dist_dtype)


def _verify(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: float):
    """Exact float32 dot of rows a[i], b[j]; keep sim >= threshold."""
    keep_i, keep_j, keep_s = [], [], []
    for s in range(0, len(i), _VERIFY_CHUNK):
        ii, jj = i[s:s + _VERIFY_CHUNK], j[s:s + _VERIFY_CHUNK]
        sim = np.einsum("ij,ij->i", a[ii].astype(np.float32), b[jj].astype(np.float32), dtype=np.float32)
        m = sim >= np.float32(threshold)
        keep_i.append(ii[m])
        keep_j.append(jj[m])
        keep_s.append(sim[m])
    if not keep_i:
        return _empty_pairs()
    return np.concatenate(keep_i), np.concatenate(keep_j), np.concatenate(keep_s).astype(np.float32)


def _sort_unique(i: np.ndarray, j: np.ndarray, nb: int):
    """Unique (i, j) pairs sorted by (i, j)."""
    if len(i) == 0:
        return i.astype(np.int64), j.astype(np.int64)
    key = np.unique(i.astype(np.int64) * np.int64(max(nb, 1)) + j.astype(np.int64))
    return key // max(nb, 1), key % max(nb, 1)


DEFAULT_NPROBE = 8


def default_nlist(n: int) -> int:
    """Lists for the IVF join: 2 sqrt(N) (a list holds ~sqrt(N)/2 rows), at least 1, at most N / 8.

    Cost in dot products: training ~ 32 * 10 * nlist^2, assigning N * nlist, the join N * nprobe * N / nlist;
    with nlist = 2 sqrt(N) and nprobe = 8 that is ~7 N^1.5 against N^2 for brute force."""
    return int(max(1, min(n // 8, round(2 * math.sqrt(max(n, 1))))))


def default_nprobe(nlist: int) -> int:
    return int(max(1, min(nlist, DEFAULT_NPROBE)))


def resolve_method(n: int, method: str) -> str:
    if method not in ("auto", "flat", "ivf", "hnsw"):
        raise ValueError(f"unknown search method {method!r}; use auto, flat, ivf or hnsw")
    if method == "auto":
        return "flat" if n < AUTO_FLAT_MAX else "ivf"
    return method


# --------------------------------------------------------------------------------------------------------------
# exact (flat) candidate generation
# --------------------------------------------------------------------------------------------------------------

def _flat_self_candidates(x: np.ndarray, thr: float, progress: bool, block: int = _FLAT_BLOCK):
    """Candidates i<j with faiss IP > thr; base block [lo, hi) is searched by rows [0, hi) only."""
    faiss = _faiss()
    n, d = x.shape
    out_i, out_j = [], []
    starts = list(range(0, n, block))
    for lo in _tqdm(starts, progress, desc="flat search", unit="block"):
        hi = min(n, lo + block)
        index = faiss.IndexFlatIP(d)
        index.add(_f32(x[lo:hi]))
        # queries in slices so the float32 copy of the queries stays one block at a time
        for qlo in range(0, hi, block):
            qhi = min(hi, qlo + block)
            lims, _, labels = index.range_search(_f32(x[qlo:qhi]), float(thr))
            if len(labels) == 0:
                continue
            qi = np.repeat(np.arange(qlo, qhi, dtype=np.int64), np.diff(lims).astype(np.int64))
            bj = labels.astype(np.int64) + lo
            m = qi < bj
            out_i.append(qi[m])
            out_j.append(bj[m])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def _flat_cross_candidates(q: np.ndarray, b: np.ndarray, thr: float, progress: bool, block: int = _FLAT_BLOCK):
    faiss = _faiss()
    d = b.shape[1]
    out_i, out_j = [], []
    for lo in _tqdm(range(0, len(b), block), progress, desc="flat search", unit="block"):
        hi = min(len(b), lo + block)
        index = faiss.IndexFlatIP(d)
        index.add(_f32(b[lo:hi]))
        for qlo in range(0, len(q), block):
            qhi = min(len(q), qlo + block)
            lims, _, labels = index.range_search(_f32(q[qlo:qhi]), float(thr))
            if len(labels) == 0:
                continue
            out_i.append(np.repeat(np.arange(qlo, qhi, dtype=np.int64), np.diff(lims).astype(np.int64)))
            out_j.append(labels.astype(np.int64) + lo)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


# --------------------------------------------------------------------------------------------------------------
# IVF join
# --------------------------------------------------------------------------------------------------------------

KMEANS_SAMPLE_PER_LIST = 32   # training rows per list (faiss warns below 39; fine for partitioning)
KMEANS_NITER = 10


def _range_pairs(lims, labels, qlo: int, qhi: int, base_offset: int, self_join: bool):
    """faiss range_search results of query rows qlo..qhi -> (query row, base row) arrays; in a self-join only
    pairs with query < base are kept (each unordered pair once, no self pairs)."""
    qi = np.repeat(np.arange(qlo, qhi, dtype=np.int64), np.diff(lims).astype(np.int64))
    bj = labels.astype(np.int64) + base_offset
    if self_join:
        keep = qi < bj
        qi, bj = qi[keep], bj[keep]
    return qi, bj


def _train_centroids(x: np.ndarray, nlist: int, seed: int, sample_per_list: int = KMEANS_SAMPLE_PER_LIST,
                     niter: int = KMEANS_NITER) -> np.ndarray:
    faiss = _faiss()
    n, d = x.shape
    ns = min(n, nlist * sample_per_list)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=ns, replace=False)) if ns < n else np.arange(n)
    xs = _f32(x[sample])
    km = faiss.Kmeans(d, nlist, niter=niter, seed=int(seed) & 0x7FFFFFFF, spherical=True,
                      max_points_per_centroid=sample_per_list + 1, min_points_per_centroid=1, verbose=False)
    km.train(xs)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _assign(x: np.ndarray, centroids: np.ndarray, k: int, progress: bool, chunk: int = 65_536) -> np.ndarray:
    """The k nearest centroids of every row (column 0 = home list)."""
    faiss = _faiss()
    quant = faiss.IndexFlatIP(centroids.shape[1])
    quant.add(centroids)
    k = min(k, len(centroids))
    out = np.empty((len(x), k), dtype=np.int64)
    for lo in _tqdm(range(0, len(x), chunk), progress, desc="assign lists", unit="chunk"):
        _, I = quant.search(_f32(x[lo:lo + chunk]), k)
        out[lo:lo + chunk] = I
    return out


def _group(lists: np.ndarray, rows: np.ndarray, nlist: int):
    """rows grouped by list id: (sorted rows, offsets[nlist+1])."""
    order = np.argsort(lists, kind="stable")
    counts = np.bincount(lists, minlength=nlist)
    offs = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(counts, out=offs[1:])
    return rows[order], offs


def _ivf_join(q: np.ndarray, b: np.ndarray, thr: float, self_join: bool, nlist: Optional[int],
              nprobe: Optional[int], seed: int, progress: bool, centroids: Optional[np.ndarray] = None):
    faiss = _faiss()
    nb, d = b.shape
    nlist = int(nlist or default_nlist(nb))
    nlist = max(1, min(nlist, nb))
    nprobe = int(nprobe or default_nprobe(nlist))
    nprobe = max(1, min(nprobe, nlist))
    t0 = time.perf_counter()
    if centroids is None:
        centroids = _train_centroids(b, nlist, seed)
    nlist = len(centroids)
    t1 = time.perf_counter()
    if self_join:
        probes_q = _assign(b, centroids, nprobe, progress)
        home_b = probes_q[:, 0].copy()
    else:
        home_b = _assign(b, centroids, 1, progress)[:, 0]
        probes_q = _assign(q, centroids, nprobe, progress)
    base_rows, base_offs = _group(home_b, np.arange(nb, dtype=np.int64), nlist)
    nq = len(q)
    flat_lists = probes_q.reshape(-1)
    flat_rows = np.repeat(np.arange(nq, dtype=np.int64), probes_q.shape[1])
    q_rows, q_offs = _group(flat_lists, flat_rows, nlist)
    del flat_lists, flat_rows
    t2 = time.perf_counter()

    out_i, out_j = [], []
    for p in _tqdm(range(nlist), progress, desc="ivf join", unit="list"):
        bm = base_rows[base_offs[p]:base_offs[p + 1]]
        qm = q_rows[q_offs[p]:q_offs[p + 1]]
        if len(bm) == 0 or len(qm) == 0:
            continue
        index = faiss.IndexFlatIP(d)
        index.add(_f32(b[bm]))
        lims, _, labels = index.range_search(_f32(q[qm]), float(thr))
        if len(labels) == 0:
            continue
        qi = np.repeat(qm, np.diff(lims).astype(np.int64))
        bj = bm[labels.astype(np.int64)]
        if self_join:
            lo, hi = np.minimum(qi, bj), np.maximum(qi, bj)
            m = lo != hi
            qi, bj = lo[m], hi[m]
        out_i.append(qi)
        out_j.append(bj)
    log.debug("ivf join: nlist=%d nprobe=%d train %.1fs assign %.1fs join %.1fs", nlist, nprobe, t1 - t0,
              t2 - t1, time.perf_counter() - t2)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def _hnsw_candidates(q: np.ndarray, b: np.ndarray, thr: float, self_join: bool, progress: bool,
                     m: int = 32, ef_search: int = 128, chunk: int = 16_384):
    index = build_search_index(b, "hnsw", hnsw_m=m)
    index.hnsw.efSearch = ef_search
    out_i, out_j = [], []
    for lo in _tqdm(range(0, len(q), chunk), progress, desc="hnsw search", unit="chunk"):
        hi = min(len(q), lo + chunk)
        lims, _, labels = index.range_search(_f32(q[lo:hi]), float(thr))
        qi, bj = _range_pairs(lims, labels, lo, hi, 0, self_join)
        out_i.append(qi)
        out_j.append(bj)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


# --------------------------------------------------------------------------------------------------------------
# public: embeddings
# --------------------------------------------------------------------------------------------------------------

def embedding_pairs(emb, threshold: float, method: str = "auto", seed: int = 0, progress: bool = False, *,
                    nlist: Optional[int] = None, nprobe: Optional[int] = None, threads: Optional[int] = None):
    """Every pair ``i < j`` of rows with ``emb[i] . emb[j] >= threshold`` (cosine for L2-normalised rows).

    Returns ``(i, j, sim)``: int64, int64, float32, sorted by ``(i, j)``; ``sim`` is the exact float32 dot.
    ``method``: ``flat`` (exact), ``ivf`` (IVF join, ``nlist`` / ``nprobe`` tune it), ``hnsw``, or ``auto``.
    """
    x = _as_matrix(emb)
    n = len(x)
    if n < 2:
        return _empty_pairs()
    _check_normalised(x, "emb")
    method = resolve_method(n, method)
    thr = float(threshold) - _MARGIN
    with faiss_threads(threads):
        if method == "flat":
            ci, cj = _flat_self_candidates(x, thr, progress)
        elif method == "ivf":
            ci, cj = _ivf_join(x, x, thr, True, nlist, nprobe, seed, progress)
        else:
            ci, cj = _hnsw_candidates(x, x, thr, True, progress)
    ci, cj = _sort_unique(ci, cj, n)
    return _verify(x, x, ci, cj, threshold)


def embedding_cross_pairs(query, base, threshold: float, method: str = "auto", seed: int = 0,
                          progress: bool = False, *, nlist: Optional[int] = None, nprobe: Optional[int] = None,
                          threads: Optional[int] = None):
    """Every (query row, base row) pair with dot product ``>= threshold``.

    Returns ``(qi, bj, sim)`` sorted by ``(qi, bj)``. ``auto`` chooses by the size of ``base``.
    """
    q = _as_matrix(query, "query")
    b = _as_matrix(base, "base")
    if len(q) == 0 or len(b) == 0:
        return _empty_pairs()
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != base dim {b.shape[1]}")
    _check_normalised(q, "query")
    _check_normalised(b, "base")
    method = resolve_method(len(b), method)
    thr = float(threshold) - _MARGIN
    with faiss_threads(threads):
        if method == "flat":
            ci, cj = _flat_cross_candidates(q, b, thr, progress)
        elif method == "ivf":
            ci, cj = _ivf_join(q, b, thr, False, nlist, nprobe, seed, progress)
        else:
            ci, cj = _hnsw_candidates(q, b, thr, False, progress)
    ci, cj = _sort_unique(ci, cj, len(b))
    return _verify(q, b, ci, cj, threshold)


# --------------------------------------------------------------------------------------------------------------
# public: Hamming
# --------------------------------------------------------------------------------------------------------------

# ``auto`` uses IndexBinaryFlat: measured on this project's 2-core benchmark machine, 100k random 64-bit hashes with
# 5 % planted copies at max_distance 10 took 5.8 s flat (upper triangle) and 40 s with IndexBinaryMultiHash
# (4 tables x 16 bits, 2 flips: exact but probe-bound). ``method="multihash"`` stays available for small radii.
_MULTIHASH_MIN = 1 << 62


def _hash_bytes(h) -> np.ndarray:
    a = np.asarray(h)
    if a.ndim != 1:
        raise ValueError(f"hashes must be a 1-d array of uint64, got shape {a.shape}")
    if a.dtype != np.uint64:
        if a.dtype.kind == "i" and len(a) and a.min() < 0:
            a = a.astype(np.int64).view(np.uint64)
        else:
            a = a.astype(np.uint64)
    return np.ascontiguousarray(a.astype("<u8")).view(np.uint8).reshape(-1, 8)


def _popcount_xor(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int32)
    x = x.view(np.uint8).reshape(-1, 8)
    return np.unpackbits(x, axis=1).sum(axis=1).astype(np.int32)


def _multihash_params(max_distance: int) -> tuple[int, int, int]:
    """(nhash, bits per table, nflip) with nhash * (nflip + 1) > max_distance: exact by pigeonhole."""
    for nhash, b in ((4, 16), (3, 21), (2, 32), (8, 8)):
        for nflip in range(0, 4):
            if nhash * (nflip + 1) > max_distance:
                return nhash, b, nflip
    return 0, 0, 0  # not worth it: use the flat index


def _hamming_candidates(qb: np.ndarray, bb: np.ndarray, max_distance: int, self_join: bool, progress: bool,
                        method: str, block: int = 65_536):
    faiss = _faiss()
    radius = int(max_distance) + 1  # faiss binary range search keeps dist < radius
    out_i, out_j = [], []
    use_mh = method == "multihash" or (method == "auto" and len(bb) >= _MULTIHASH_MIN)
    nhash, bits, nflip = _multihash_params(max_distance)
    if use_mh and nhash:
        index = faiss.IndexBinaryMultiHash(64, nhash, bits)
        index.nflip = nflip
        index.add(bb)
        for lo in _tqdm(range(0, len(qb), block), progress, desc="hamming search", unit="block"):
            hi = min(len(qb), lo + block)
            lims, _, labels = index.range_search(qb[lo:hi], radius)
            qi = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(lims).astype(np.int64))
            bj = labels.astype(np.int64)
            if self_join:
                m = qi < bj
                qi, bj = qi[m], bj[m]
            out_i.append(qi)
            out_j.append(bj)
    else:
        for lo in _tqdm(range(0, len(bb), block), progress, desc="hamming search", unit="block"):
            hi = min(len(bb), lo + block)
            index = faiss.IndexBinaryFlat(64)
            index.add(bb[lo:hi])
            qend = hi if self_join else len(qb)
            for qlo in range(0, qend, block):
                qhi = min(qend, qlo + block)
                lims, _, labels = index.range_search(qb[qlo:qhi], radius)
                qi, bj = _range_pairs(lims, labels, qlo, qhi, lo, self_join)
                out_i.append(qi)
                out_j.append(bj)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def _hamming_finish(qh: np.ndarray, bh: np.ndarray, ci, cj, nb: int, max_distance: int):
    ci, cj = _sort_unique(ci, cj, nb)
    if len(ci) == 0:
        return _empty_pairs(np.int32)
    dist = _popcount_xor(qh[ci], bh[cj])
    m = dist <= max_distance
    return ci[m], cj[m], dist[m]


def _as_u64(h) -> np.ndarray:
    return _hash_bytes(h).view("<u8").reshape(-1).astype(np.uint64)


def hamming_pairs(hashes, max_distance: int, method: str = "auto", progress: bool = False,
                  threads: Optional[int] = None):
    """Every pair ``i < j`` of 64-bit hashes within Hamming distance ``max_distance``.

    Returns ``(i, j, dist)``: int64, int64, int32, sorted by ``(i, j)``. ``method``: ``flat``
    (``IndexBinaryFlat``), ``multihash`` (``IndexBinaryMultiHash``, exact by pigeonhole), ``auto`` (by size).
    """
    if method not in ("auto", "flat", "multihash"):
        raise ValueError(f"unknown hamming method {method!r}; use auto, flat or multihash")
    if max_distance < 0:
        return _empty_pairs(np.int32)
    hb = _hash_bytes(hashes)
    if len(hb) < 2:
        return _empty_pairs(np.int32)
    h = _as_u64(hashes)
    with faiss_threads(threads):
        ci, cj = _hamming_candidates(hb, hb, max_distance, True, progress, method)
    return _hamming_finish(h, h, ci, cj, len(h), max_distance)


def hamming_cross_pairs(query, base, max_distance: int, method: str = "auto", progress: bool = False,
                        threads: Optional[int] = None):
    """Every (query, base) pair of hashes within ``max_distance``; ``(qi, bj, dist)`` sorted by ``(qi, bj)``."""
    if method not in ("auto", "flat", "multihash"):
        raise ValueError(f"unknown hamming method {method!r}; use auto, flat or multihash")
    if max_distance < 0:
        return _empty_pairs(np.int32)
    qb, bb = _hash_bytes(query), _hash_bytes(base)
    if len(qb) == 0 or len(bb) == 0:
        return _empty_pairs(np.int32)
    with faiss_threads(threads):
        ci, cj = _hamming_candidates(qb, bb, max_distance, False, progress, method)
    return _hamming_finish(_as_u64(query), _as_u64(base), ci, cj, len(bb), max_distance)


def _as_variants(v, n: int) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim != 2 or len(a) != n:
        raise ValueError(f"transformed hashes must be [rows, transforms] with {n} rows, got shape {a.shape}")
    return np.ascontiguousarray(a.astype(np.uint64))


def _dihedral_finish(qh, qv, bh, bv, ci, cj, nb: int, max_distance: int, transformed_max_distance: int):
    """Exact distances of the candidate pairs: (linked, distance) with the stored distance kept when within
    ``max_distance``, else the best transformed one when within ``transformed_max_distance``."""
    from ..index.dihedral import hamming_dihedral

    ci, cj = _sort_unique(ci, cj, nb)
    if len(ci) == 0:
        return _empty_pairs(np.int32)
    d = _popcount_xor(qh[ci], bh[cj]).astype(np.int64)
    dt = hamming_dihedral(qh[ci], qv[ci], bh[cj], bv[cj])
    dist = np.minimum(np.where(d <= max_distance, d, 65), np.where(dt <= transformed_max_distance, dt, 65))
    m = dist <= 64
    return ci[m], cj[m], dist[m].astype(np.int32)


def hamming_pairs_dihedral(hashes, transformed, max_distance: int, transformed_max_distance: int,
                           method: str = "auto", progress: bool = False, threads: Optional[int] = None):
    """Every pair ``i < j`` whose hashes are within ``max_distance`` as stored, or within
    ``transformed_max_distance`` once one of the two is flipped or rotated: ``transformed[i, k]`` is the hash of
    row ``i`` under transform ``k`` (``uint64 [n, 7]``; :data:`auditor.index.dihedral.DIHEDRAL`), compared with
    ``hashes[j]`` and ``transformed[j, k]`` with ``hashes[i]``. Returns ``(i, j, dist)`` sorted by ``(i, j)``, the
    distance being the smallest that links.

    Example:
        >>> h = np.array([0b1111, 0b0000, 0xFF00], dtype=np.uint64)
        >>> v = np.array([[0xF0000] * 7, [0] * 7, [0xFF00] * 7], dtype=np.uint64)  # row 0 mirrored is 0xF0000
        >>> [x.tolist() for x in hamming_pairs_dihedral(h, v, 4, 0)]
        [[0], [1], [4]]
    """
    if max_distance < 0 and transformed_max_distance < 0:
        return _empty_pairs(np.int32)
    hb = _hash_bytes(hashes)
    n = len(hb)
    if n < 2:
        return _empty_pairs(np.int32)
    h, v = _as_u64(hashes), _as_variants(transformed, n)
    ci, cj = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    with faiss_threads(threads):
        if max_distance >= 0:
            i, j = _hamming_candidates(hb, hb, max_distance, True, progress, method)
            ci.append(i), cj.append(j)
        if transformed_max_distance >= 0:
            for k in _tqdm(range(v.shape[1]), progress, desc="flip/rotation search", unit="transform"):
                q, b = _hamming_candidates(_hash_bytes(v[:, k]), hb, transformed_max_distance, False, False, method)
                keep = q != b
                q, b = q[keep], b[keep]
                ci.append(np.minimum(q, b)), cj.append(np.maximum(q, b))
    return _dihedral_finish(h, v, h, v, np.concatenate(ci), np.concatenate(cj), n, max_distance,
                            transformed_max_distance)


def hamming_cross_pairs_dihedral(query, query_transformed, base, base_transformed, max_distance: int,
                                 transformed_max_distance: int, method: str = "auto", progress: bool = False,
                                 threads: Optional[int] = None):
    """:func:`hamming_pairs_dihedral` between two sets: every (query, base) pair linked as stored or through a
    flip/rotation of either side; ``(qi, bj, dist)`` sorted by ``(qi, bj)``. The union of the self pairs of two
    sets and their cross pairs equals the self pairs of the union (the incremental dedup relies on it)."""
    if max_distance < 0 and transformed_max_distance < 0:
        return _empty_pairs(np.int32)
    qb, bb = _hash_bytes(query), _hash_bytes(base)
    if len(qb) == 0 or len(bb) == 0:
        return _empty_pairs(np.int32)
    qh, bh = _as_u64(query), _as_u64(base)
    qv, bv = _as_variants(query_transformed, len(qh)), _as_variants(base_transformed, len(bh))
    ci, cj = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    with faiss_threads(threads):
        if max_distance >= 0:
            i, j = _hamming_candidates(qb, bb, max_distance, False, progress, method)
            ci.append(i), cj.append(j)
        if transformed_max_distance >= 0:
            for k in _tqdm(range(qv.shape[1]), progress, desc="flip/rotation search", unit="transform"):
                i, j = _hamming_candidates(_hash_bytes(qv[:, k]), bb, transformed_max_distance, False, False, method)
                ci.append(i), cj.append(j)
                j2, i2 = _hamming_candidates(_hash_bytes(bv[:, k]), qb, transformed_max_distance, False, False,
                                             method)
                ci.append(i2), cj.append(j2)
    return _dihedral_finish(qh, qv, bh, bv, np.concatenate(ci), np.concatenate(cj), len(bh), max_distance,
                            transformed_max_distance)


# --------------------------------------------------------------------------------------------------------------
# public: a persistent index for later lookups
# --------------------------------------------------------------------------------------------------------------

def build_search_index(emb, method: str = "auto", *, seed: int = 0, nlist: Optional[int] = None,
                       nprobe: Optional[int] = None, hnsw_m: int = 32, threads: Optional[int] = None,
                       chunk: int = 65_536):
    """An inner-product faiss index over ``emb`` (ids = row numbers): ``IndexFlatIP``, ``IndexIVFFlat``
    (spherical k-means lists trained on a sample, ``nprobe`` set) or ``IndexHNSWFlat``."""
    faiss = _faiss()
    x = _as_matrix(emb)
    n, d = x.shape
    method = resolve_method(n, method)
    with faiss_threads(threads):
        if method == "flat":
            index = faiss.IndexFlatIP(d)
        elif method == "ivf":
            nl = max(1, min(int(nlist or default_nlist(n)), max(n, 1)))
            quant = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quant, d, nl, faiss.METRIC_INNER_PRODUCT)
            if n == 0:
                raise ValueError("an ivf index needs at least one row to train on")
            cent = _train_centroids(x, nl, seed)
            quant.add(cent)
            index.is_trained = True
            index.nprobe = int(max(1, min(nl, nprobe or default_nprobe(nl))))
        elif method == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        for lo in range(0, n, chunk):
            index.add(_f32(x[lo:lo + chunk]))
    return index


def save_search_index(index, path: str | os.PathLike) -> None:
    """Write a faiss index atomically (temporary file beside ``path``, then rename)."""
    from ..utils import atomic_path

    faiss = _faiss()
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_search_index(path: str | os.PathLike):
    faiss = _faiss()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no search index at {p}")
    return faiss.read_index(str(p))


def query_index(index, vectors, k: int, *, nprobe: Optional[int] = None, threads: Optional[int] = None):
    """The ``k`` most similar indexed rows for each query vector: ``(sims float32 [n, k], ids int64 [n, k])``;
    missing neighbours (fewer than ``k`` rows) have id -1 and sim -inf."""
    faiss = _faiss()
    q = _f32(_as_matrix(vectors, "vectors"))
    if q.shape[1] != index.d:
        raise ValueError(f"query dim {q.shape[1]} != index dim {index.d}")
    k = int(k)
    if k < 1:
        raise ValueError("k must be >= 1")
    if nprobe is not None:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = int(nprobe)
    with faiss_threads(threads):
        D, I = index.search(q, k)
    D = D.astype(np.float32)
    D[I < 0] = -np.inf
    return D, I.astype(np.int64)
