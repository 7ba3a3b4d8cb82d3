"""What every search strategy shares: input checks, the faiss thread scope, progress bars, the exact re-verification
of candidates, and the one blocked range-search helper (:func:`blocked_range_search`) that every strategy's
candidate generation goes through."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from ..config import DedupConfig

log = logging.getLogger(__name__)

DEFAULT_PROBE_MARGIN: Optional[float] = DedupConfig.model_fields["probe_margin"].default  # the IVF join's rule
DEFAULT_PROBE_MIN: int = DedupConfig.model_fields["probe_min"].default

MARGIN = 1e-3                   # candidate threshold slack below ``threshold`` (BLAS rounding, float16 input)
VERIFY_CHUNK = 262_144          # candidate pairs verified at a time

__all__ = ["MARGIN", "DEFAULT_PROBE_MARGIN", "DEFAULT_PROBE_MIN", "SearchOptions", "faiss", "faiss_threads",
           "progress_bar", "as_matrix", "f32", "check_normalised", "empty_pairs", "no_candidates", "verify",
           "sort_unique", "range_search_rows", "blocked_range_search"]


@dataclass(frozen=True)
class SearchOptions:
    """The knobs a strategy may read (each reads only its own): the seed of every sampled or trained step, the IVF
    join's ``nlist`` / ``nprobe`` (None = :func:`~auditor.dedup.search.ivf.default_nlist` / ``default_nprobe``) and
    ``probe_margin`` / ``probe_min`` (:data:`DEFAULT_PROBE_MARGIN`, the margin rule with ``nprobe`` its cap and the
    ``probe_min`` nearest lists always; None = the fixed ``nprobe`` nearest lists), HNSW's ``hnsw_m`` /
    ``hnsw_ef_search`` and the partitioned search's ``partition_*`` (None = the
    :class:`~auditor.dedup.config.DedupConfig` defaults)."""

    seed: int = 0
    nlist: Optional[int] = None
    nprobe: Optional[int] = None
    probe_margin: Optional[float] = DEFAULT_PROBE_MARGIN
    probe_min: int = DEFAULT_PROBE_MIN
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    partition_rows: Optional[int] = None
    partition_margin: Optional[float] = None
    partition_max_probes: Optional[int] = None
    partition_probe_store: Optional[str] = None


def faiss():
    """The faiss module (imported on first use: ``import faiss`` alone takes a second)."""
    import faiss as _f

    return _f


@contextmanager
def faiss_threads(threads: Optional[int]) -> Iterator[None]:
    """Run the block with ``faiss.omp_set_num_threads(threads)`` (``None`` / ``<= 0``: leave as is)."""
    f = faiss()
    if not threads or threads <= 0:
        yield
        return
    before = f.omp_get_max_threads()
    f.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        f.omp_set_num_threads(before)


def progress_bar(it, progress: bool, **kw):
    """``it`` wrapped in a tqdm bar when ``progress``."""
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, **kw)


def as_matrix(emb, name: str = "emb") -> np.ndarray:
    """``emb`` as a 2-d float16/float32 array (other floats become float32; anything else is refused)."""
    x = np.asarray(emb)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array [rows, dim], got shape {x.shape}")
    if x.dtype not in (np.float16, np.float32):
        if np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        else:
            raise TypeError(f"{name} must be float16 or float32, got {x.dtype}")
    return x


def f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def check_normalised(x: np.ndarray, name: str) -> None:
    """Warn when a sample of the rows is not L2-normalised (the similarities are then dot products)."""
    if len(x) == 0:
        return
    idx = np.linspace(0, len(x) - 1, num=min(len(x), 256)).astype(np.int64)
    norms = np.linalg.norm(f32(x[idx]), axis=1)
    if np.any(np.abs(norms - 1.0) > 1e-2):
        log.warning("%s rows are not L2-normalised (norms %.3f..%.3f): similarities are dot products, "
                    "not cosines", name, float(norms.min()), float(norms.max()))


def empty_pairs(dist_dtype=np.float32):
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, dist_dtype)


def no_candidates():
    return np.zeros(0, np.int64), np.zeros(0, np.int64)


def verify(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: float):
    """Exact float32 dot of rows ``a[i]``, ``b[j]``; keep ``sim >= threshold``. Returns ``(i, j, sim)``."""
    keep_i, keep_j, keep_s = [], [], []
    for s in range(0, len(i), VERIFY_CHUNK):
        ii, jj = i[s:s + VERIFY_CHUNK], j[s:s + VERIFY_CHUNK]
        sim = np.einsum("ij,ij->i", a[ii].astype(np.float32), b[jj].astype(np.float32), dtype=np.float32)
        m = sim >= np.float32(threshold)
        keep_i.append(ii[m])
        keep_j.append(jj[m])
        keep_s.append(sim[m])
    if not keep_i:
        return empty_pairs()
    return np.concatenate(keep_i), np.concatenate(keep_j), np.concatenate(keep_s).astype(np.float32)


def sort_unique(i: np.ndarray, j: np.ndarray, nb: int):
    """Unique (i, j) pairs sorted by (i, j)."""
    if len(i) == 0:
        return i.astype(np.int64), j.astype(np.int64)
    key = np.unique(i.astype(np.int64) * np.int64(max(nb, 1)) + j.astype(np.int64))
    return key // max(nb, 1), key % max(nb, 1)


def _concat(out_i: list, out_j: list):
    if not out_i:
        return no_candidates()
    return np.concatenate(out_i), np.concatenate(out_j)


def range_search_rows(index, queries, radius, *, block: int, qlo: int = 0, qhi: Optional[int] = None,
                      base_offset: int = 0, upper_triangle: bool = False,
                      convert: Callable[[np.ndarray], np.ndarray] = f32, progress: bool = False,
                      desc: str = "range search"):
    """faiss ``index.range_search`` of query rows ``qlo..qhi`` in slices of ``block`` rows (so that the converted
    copy of the queries is one slice at a time). Returns ``(query row, base_offset + index label)``, int64; with
    ``upper_triangle`` only pairs with query row < base row (a self-join: each unordered pair once, no self pairs).

    Example:
        >>> import faiss
        >>> x = np.eye(3, dtype=np.float32)[[0, 0, 1]]
        >>> index = faiss.IndexFlatIP(3); index.add(x)
        >>> [a.tolist() for a in range_search_rows(index, x, 0.5, block=2, upper_triangle=True)]
        [[0], [1]]
    """
    qhi = len(queries) if qhi is None else qhi
    out_i, out_j = [], []
    for lo in progress_bar(range(qlo, qhi, block), progress, desc=desc, unit="block"):
        hi = min(qhi, lo + block)
        lims, _, labels = index.range_search(convert(queries[lo:hi]), radius)
        if len(labels) == 0:
            continue
        qi = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(lims).astype(np.int64))
        bj = labels.astype(np.int64) + base_offset
        if upper_triangle:
            keep = qi < bj
            qi, bj = qi[keep], bj[keep]
        out_i.append(qi)
        out_j.append(bj)
    return _concat(out_i, out_j)


def blocked_range_search(new_index: Callable[[], object], base, queries, radius, *, block: int,
                         self_join: bool = False, convert: Callable[[np.ndarray], np.ndarray] = f32,
                         progress: bool = False, desc: str = "range search"):
    """Every (query row, base row) pair that faiss range search returns, with the base split into indexes of
    ``block`` rows (``new_index()`` makes an empty one) so that memory is the result plus one block.

    In a self-join (``queries is base``) base block ``[lo, hi)`` is searched only by rows ``[0, hi)`` and only
    pairs ``query < base`` are kept: the N^2/2 upper triangle, each pair once. Returns int64 ``(qi, bj)``.

    Example:
        >>> import faiss
        >>> x = np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 0]]
        >>> [a.tolist() for a in blocked_range_search(lambda: faiss.IndexFlatIP(2), x, x, 0.5, block=2,
        ...                                           self_join=True)]
        [[0, 1, 0, 2], [2, 3, 4, 4]]
    """
    out_i, out_j = [], []
    nb = len(base)
    for lo in progress_bar(range(0, nb, block), progress, desc=desc, unit="block"):
        hi = min(nb, lo + block)
        index = new_index()
        index.add(convert(base[lo:hi]))
        qi, bj = range_search_rows(index, queries, radius, block=block, qhi=hi if self_join else len(queries),
                                   base_offset=lo, upper_triangle=self_join, convert=convert)
        out_i.append(qi)
        out_j.append(bj)
    return _concat(out_i, out_j)
