"""Hamming pairs of 64-bit hashes (``uint64``) through faiss binary indexes, also through flips and rotations, and
the hash pair rules the dedup stage and ``--against`` share (:func:`hash_pairs`, :func:`hash_cross_pairs`,
:func:`dhash_confirmed`).

``flat``: ``IndexBinaryFlat`` range search, blocked over the upper triangle; ``multihash``:
``IndexBinaryMultiHash`` with enough tables and bit flips that the pigeonhole principle makes it exact. Distances
are recomputed with ``numpy.bitwise_count`` on the candidates. The ``*_dihedral`` functions also match flips and
90-degree rotations: the 7 transformed hashes of every row (the index's ``phash_dihedral`` / ``dhash_dihedral``) are
queried against the stored hashes, which costs 7 full (not upper-triangle) searches on top of the plain one.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ...index.dihedral import hamming_dihedral
from .common import blocked_range_search, empty_pairs, faiss, faiss_threads, progress_bar, range_search_rows, \
    sort_unique

HAMMING_METHODS = ("auto", "flat", "multihash")
HAMMING_BLOCK = 65_536
# ``auto`` uses IndexBinaryFlat: measured on this project's 2-core benchmark machine, 100k random 64-bit hashes with
# 5 % planted copies at max_distance 10 took 5.8 s flat (upper triangle) and 40 s with IndexBinaryMultiHash
# (4 tables x 16 bits, 2 flips: exact but probe-bound). ``method="multihash"`` stays available for small radii.
MULTIHASH_MIN = 1 << 62

__all__ = ["HAMMING_METHODS", "hash_bytes", "as_u64", "popcount_xor", "hamming_pairs", "hamming_cross_pairs",
           "hamming_pairs_dihedral", "hamming_cross_pairs_dihedral", "hash_pairs", "hash_cross_pairs",
           "dhash_confirmed"]


def hash_bytes(h) -> np.ndarray:
    """64-bit hashes (uint64, or int64 as stored by parquet) as faiss binary codes: uint8 ``[n, 8]``."""
    a = np.asarray(h)
    if a.ndim != 1:
        raise ValueError(f"hashes must be a 1-d array of uint64, got shape {a.shape}")
    if a.dtype != np.uint64:
        if a.dtype.kind == "i" and len(a) and a.min() < 0:
            a = a.astype(np.int64).view(np.uint64)
        else:
            a = a.astype(np.uint64)
    return np.ascontiguousarray(a.astype("<u8")).view(np.uint8).reshape(-1, 8)


def as_u64(h) -> np.ndarray:
    return hash_bytes(h).view("<u8").reshape(-1).astype(np.uint64)


def popcount_xor(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of ``a[k]`` and ``b[k]`` (int32)."""
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


def _check_method(method: str) -> None:
    if method not in HAMMING_METHODS:
        raise ValueError(f"unknown hamming method {method!r}; use auto, flat or multihash")


def _candidates(qb: np.ndarray, bb: np.ndarray, max_distance: int, self_join: bool, progress: bool, method: str):
    radius = int(max_distance) + 1  # faiss binary range search keeps dist < radius
    use_mh = method == "multihash" or (method == "auto" and len(bb) >= MULTIHASH_MIN)
    nhash, bits, nflip = _multihash_params(max_distance)
    if use_mh and nhash:
        index = faiss().IndexBinaryMultiHash(64, nhash, bits)
        index.nflip = nflip
        index.add(bb)
        return range_search_rows(index, qb, radius, block=HAMMING_BLOCK, upper_triangle=self_join,
                                 convert=np.asarray, progress=progress, desc="hamming search")
    return blocked_range_search(lambda: faiss().IndexBinaryFlat(64), bb, qb, radius, block=HAMMING_BLOCK,
                                self_join=self_join, convert=np.asarray, progress=progress, desc="hamming search")


def _finish(qh: np.ndarray, bh: np.ndarray, ci, cj, nb: int, max_distance: int):
    ci, cj = sort_unique(ci, cj, nb)
    if len(ci) == 0:
        return empty_pairs(np.int32)
    dist = popcount_xor(qh[ci], bh[cj])
    m = dist <= max_distance
    return ci[m], cj[m], dist[m]


def hamming_pairs(hashes, max_distance: int, method: str = "auto", progress: bool = False,
                  threads: Optional[int] = None):
    """Every pair ``i < j`` of 64-bit hashes within Hamming distance ``max_distance``.

    Returns ``(i, j, dist)``: int64, int64, int32, sorted by ``(i, j)``. ``method``: ``flat``
    (``IndexBinaryFlat``), ``multihash`` (``IndexBinaryMultiHash``, exact by pigeonhole), ``auto`` (by size).

    Example:
        >>> [x.tolist() for x in hamming_pairs(np.array([0b0111, 0b0000, 0b0001], dtype=np.uint64), 1)]
        [[1], [2], [1]]
    """
    _check_method(method)
    if max_distance < 0:
        return empty_pairs(np.int32)
    hb = hash_bytes(hashes)
    if len(hb) < 2:
        return empty_pairs(np.int32)
    h = as_u64(hashes)
    with faiss_threads(threads):
        ci, cj = _candidates(hb, hb, max_distance, True, progress, method)
    return _finish(h, h, ci, cj, len(h), max_distance)


def hamming_cross_pairs(query, base, max_distance: int, method: str = "auto", progress: bool = False,
                        threads: Optional[int] = None):
    """Every (query, base) pair of hashes within ``max_distance``; ``(qi, bj, dist)`` sorted by ``(qi, bj)``."""
    _check_method(method)
    if max_distance < 0:
        return empty_pairs(np.int32)
    qb, bb = hash_bytes(query), hash_bytes(base)
    if len(qb) == 0 or len(bb) == 0:
        return empty_pairs(np.int32)
    with faiss_threads(threads):
        ci, cj = _candidates(qb, bb, max_distance, False, progress, method)
    return _finish(as_u64(query), as_u64(base), ci, cj, len(bb), max_distance)


def _as_variants(v, n: int) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim != 2 or len(a) != n:
        raise ValueError(f"transformed hashes must be [rows, transforms] with {n} rows, got shape {a.shape}")
    return np.ascontiguousarray(a.astype(np.uint64))


def _dihedral_finish(qh, qv, bh, bv, ci, cj, nb: int, max_distance: int, transformed_max_distance: int):
    """Exact distances of the candidate pairs: (linked, distance) with the stored distance kept when within
    ``max_distance``, else the best transformed one when within ``transformed_max_distance``."""
    ci, cj = sort_unique(ci, cj, nb)
    if len(ci) == 0:
        return empty_pairs(np.int32)
    d = popcount_xor(qh[ci], bh[cj]).astype(np.int64)
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
        return empty_pairs(np.int32)
    hb = hash_bytes(hashes)
    n = len(hb)
    if n < 2:
        return empty_pairs(np.int32)
    h, v = as_u64(hashes), _as_variants(transformed, n)
    ci, cj = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    with faiss_threads(threads):
        if max_distance >= 0:
            i, j = _candidates(hb, hb, max_distance, True, progress, method)
            ci.append(i), cj.append(j)
        if transformed_max_distance >= 0:
            for k in progress_bar(range(v.shape[1]), progress, desc="flip/rotation search", unit="transform"):
                q, b = _candidates(hash_bytes(v[:, k]), hb, transformed_max_distance, False, False, method)
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
        return empty_pairs(np.int32)
    qb, bb = hash_bytes(query), hash_bytes(base)
    if len(qb) == 0 or len(bb) == 0:
        return empty_pairs(np.int32)
    qh, bh = as_u64(query), as_u64(base)
    qv, bv = _as_variants(query_transformed, len(qh)), _as_variants(base_transformed, len(bh))
    ci, cj = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    with faiss_threads(threads):
        if max_distance >= 0:
            i, j = _candidates(qb, bb, max_distance, False, progress, method)
            ci.append(i), cj.append(j)
        if transformed_max_distance >= 0:
            for k in progress_bar(range(qv.shape[1]), progress, desc="flip/rotation search", unit="transform"):
                i, j = _candidates(hash_bytes(qv[:, k]), bb, transformed_max_distance, False, False, method)
                ci.append(i), cj.append(j)
                j2, i2 = _candidates(hash_bytes(bv[:, k]), qb, transformed_max_distance, False, False, method)
                ci.append(i2), cj.append(j2)
    return _dihedral_finish(qh, qv, bh, bv, np.concatenate(ci), np.concatenate(cj), len(bh), max_distance,
                            transformed_max_distance)


# ------------------------------------------------------------------------------------------------------------
# the pair rules of the dedup stage, shared by the main search and --against
# ------------------------------------------------------------------------------------------------------------

def hash_pairs(hashes, transformed: Optional[np.ndarray], max_distance: int, transformed_max_distance: int,
               progress: bool = False, threads: Optional[int] = None):
    """The dedup stage's hash pairs of one set: :func:`hamming_pairs_dihedral` when the transformed hashes are
    given, else :func:`hamming_pairs`. Returns ``(i, j, dist)`` with ``i < j``, sorted."""
    if transformed is None:
        return hamming_pairs(hashes, max_distance, progress=progress, threads=threads)
    return hamming_pairs_dihedral(hashes, transformed, max_distance, transformed_max_distance, progress=progress,
                                  threads=threads)


def hash_cross_pairs(query, query_transformed: Optional[np.ndarray], base, base_transformed: Optional[np.ndarray],
                     max_distance: int, transformed_max_distance: int, progress: bool = False,
                     threads: Optional[int] = None):
    """The dedup stage's hash pairs between two sets: :func:`hamming_cross_pairs_dihedral` when both sides have
    transformed hashes, else :func:`hamming_cross_pairs`. Returns ``(qi, bj, dist)``, sorted.

    Example (row 0 of the base is the query mirrored, 0 bits apart once flipped):
        >>> q, qv = np.array([0b1111], np.uint64), np.array([[0xF0000] * 7], np.uint64)
        >>> b, bv = np.array([0xF0000], np.uint64), np.array([[0b1111] * 7], np.uint64)
        >>> [x.tolist() for x in hash_cross_pairs(q, qv, b, bv, 4, 0)], len(hash_cross_pairs(q, None, b, None, 4, 0)[0])
        ([[0], [0], [0]], 0)
    """
    if query_transformed is None or base_transformed is None:
        return hamming_cross_pairs(query, base, max_distance, progress=progress, threads=threads)
    return hamming_cross_pairs_dihedral(query, query_transformed, base, base_transformed, max_distance,
                                        transformed_max_distance, progress=progress, threads=threads)


def dhash_confirmed(query_dhash: np.ndarray, query_transformed: Optional[np.ndarray], base_dhash: np.ndarray,
                    base_transformed: Optional[np.ndarray], qi: np.ndarray, bj: np.ndarray,
                    max_distance: int) -> np.ndarray:
    """Which pHash pairs ``(qi, bj)`` the dHash does not contradict: ``query_dhash[qi]`` and ``base_dhash[bj]``
    within ``max_distance`` as stored or after the best flip/rotation (when both sides' transformed dHashes are
    given); see ``dhash_confirm_max_distance`` in :class:`~auditor.dedup.config.DedupConfig`. Pass the same arrays
    twice for pairs inside one set."""
    d = np.bitwise_count(np.bitwise_xor(query_dhash[qi], base_dhash[bj])).astype(np.int64)
    if query_transformed is not None and base_transformed is not None:
        d = np.minimum(d, hamming_dihedral(query_dhash[qi], query_transformed[qi], base_dhash[bj],
                                           base_transformed[bj]))
    return d <= max_distance
