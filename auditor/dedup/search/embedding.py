"""Every pair of embedding rows above a cosine threshold, through the strategy the method names
(:func:`~auditor.dedup.search.registry.pick_strategy`); and the saved search index for later lookups.

Every candidate a strategy returns is re-verified exactly before it is returned: the similarity is the float32 dot
product of the two rows (rows converted from their stored dtype to float32, summed in float32 by numpy), and only
pairs with ``sim >= threshold`` are kept. Results are sorted by ``(i, j)`` and deterministic for a fixed seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from .common import MARGIN, SearchOptions, as_matrix, check_normalised, empty_pairs, f32, faiss, faiss_threads, \
    sort_unique, verify
from .registry import pick_strategy

__all__ = ["embedding_pairs", "embedding_cross_pairs", "build_search_index", "save_search_index",
           "load_search_index", "query_index"]


def embedding_pairs(emb, threshold: float, method: str = "auto", seed: int = 0, progress: bool = False, *,
                    nlist: Optional[int] = None, nprobe: Optional[int] = None, threads: Optional[int] = None,
                    **options):
    """Every pair ``i < j`` of rows with ``emb[i] . emb[j] >= threshold`` (cosine for L2-normalised rows).

    Returns ``(i, j, sim)``: int64, int64, float32, sorted by ``(i, j)``; ``sim`` is the exact float32 dot.
    ``method``: ``flat`` (exact), ``ivf`` (IVF join, ``nlist`` / ``nprobe`` tune it), ``hnsw``, ``partitioned``
    (on-disk partitions in a temporary folder; ``partition_*`` options) or ``auto``; ``options`` are further
    :class:`~auditor.dedup.search.common.SearchOptions` fields.

    Example:
        >>> x = np.array([[1, 0], [0.6, 0.8], [0.8, 0.6], [1, 0]], dtype=np.float32)
        >>> i, j, s = embedding_pairs(x, 0.95)
        >>> list(zip(i.tolist(), j.tolist())), [round(float(v), 2) for v in s]
        ([(0, 3), (1, 2)], [1.0, 0.96])
    """
    x = as_matrix(emb)
    n = len(x)
    if n < 2:
        return empty_pairs()
    check_normalised(x, "emb")
    strategy = pick_strategy(n, method)
    opts = SearchOptions(seed=seed, nlist=nlist, nprobe=nprobe, **options)
    with faiss_threads(threads):
        ci, cj = strategy.self_candidates(x, float(threshold) - MARGIN, opts, progress)
    ci, cj = sort_unique(ci, cj, n)
    return verify(x, x, ci, cj, threshold)


def embedding_cross_pairs(query, base, threshold: float, method: str = "auto", seed: int = 0,
                          progress: bool = False, *, nlist: Optional[int] = None, nprobe: Optional[int] = None,
                          threads: Optional[int] = None, **options):
    """Every (query row, base row) pair with dot product ``>= threshold``.

    Returns ``(qi, bj, sim)`` sorted by ``(qi, bj)``. ``auto`` chooses by the size of ``base``.
    """
    q = as_matrix(query, "query")
    b = as_matrix(base, "base")
    if len(q) == 0 or len(b) == 0:
        return empty_pairs()
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != base dim {b.shape[1]}")
    check_normalised(q, "query")
    check_normalised(b, "base")
    strategy = pick_strategy(len(b), method)
    opts = SearchOptions(seed=seed, nlist=nlist, nprobe=nprobe, **options)
    with faiss_threads(threads):
        ci, cj = strategy.cross_candidates(q, b, float(threshold) - MARGIN, opts, progress)
    ci, cj = sort_unique(ci, cj, len(b))
    return verify(q, b, ci, cj, threshold)


# --------------------------------------------------------------------------------------------------------------
# a persistent index for later lookups
# --------------------------------------------------------------------------------------------------------------

def build_search_index(emb, method: str = "auto", *, seed: int = 0, nlist: Optional[int] = None,
                       nprobe: Optional[int] = None, hnsw_m: int = 32, threads: Optional[int] = None, **options):
    """An inner-product faiss index over ``emb`` (ids = row numbers), the one the method's strategy builds:
    ``IndexFlatIP``, ``IndexIVFFlat`` (spherical k-means lists trained on a sample, ``nprobe`` set; also for
    ``partitioned``) or ``IndexHNSWFlat``.

    Example:
        >>> build_search_index(np.eye(4, dtype=np.float32), "flat").ntotal
        4
    """
    x = as_matrix(emb)
    strategy = pick_strategy(len(x), method)
    opts = SearchOptions(seed=seed, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, **options)
    with faiss_threads(threads):
        return strategy.build_index(x, opts)


def save_search_index(index, path: str | os.PathLike) -> None:
    """Write a faiss index atomically (temporary file beside ``path``, then rename)."""
    from ...utils import atomic_path

    with atomic_path(path) as tmp:
        faiss().write_index(index, str(tmp))


def load_search_index(path: str | os.PathLike):
    """Read a faiss index written by :func:`save_search_index` (``FileNotFoundError`` when there is none)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no search index at {p}")
    return faiss().read_index(str(p))


def query_index(index, vectors, k: int, *, nprobe: Optional[int] = None, threads: Optional[int] = None):
    """The ``k`` most similar indexed rows for each query vector: ``(sims float32 [n, k], ids int64 [n, k])``;
    missing neighbours (fewer than ``k`` rows) have id -1 and sim -inf."""
    f = faiss()
    q = f32(as_matrix(vectors, "vectors"))
    if q.shape[1] != index.d:
        raise ValueError(f"query dim {q.shape[1]} != index dim {index.d}")
    k = int(k)
    if k < 1:
        raise ValueError("k must be >= 1")
    if nprobe is not None:
        ivf = f.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = int(nprobe)
    with faiss_threads(threads):
        dist, ids = index.search(q, k)
    dist = dist.astype(np.float32)
    dist[ids < 0] = -np.inf
    return dist, ids.astype(np.int64)
