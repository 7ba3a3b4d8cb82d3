"""Exact Hamming radius search over 64-bit codes by multi-index hashing (Norouzi, Punjani & Fleet, "Fast exact search
in Hamming space with multi-index hashing", TPAMI 2014): the guard's pHash lookup at millions of rows.

The 64 bits are cut into ``m`` disjoint substrings, each the key of one table (a counting sort of the rows by that
substring: offsets ``[2^w + 1]`` and row ids). Two codes within distance ``r`` differ in at most ``r // m`` bits of
at least one substring (pigeonhole), so probing every key within ``r // m`` bit flips of the query's substrings in
every table finds all of them; candidates are re-checked with the exact distance, so the answer equals a full scan.
:func:`plan` picks ``m`` from the row count and radius by the expected probes + candidates (uniform codes), and
answers ``None`` (scan everything: faiss ``IndexBinaryFlat``) when a scan is cheaper.

Why hand-written: faiss's ``IndexBinaryMultiHash`` (hash-map buckets, a ``std::unordered_set`` shortlist per query)
took 6.6 ms per query at 1M random codes, radius 10, 3 tables x 21 bits (26 ms with 4 x 16), no faster than its flat
scan (5.1 ms) and 13 s to build, on this project's 2-core machine (``benchmarks/bench_guard.py``, BENCHMARKS.md
section 7); these dense tables answer the same queries exactly in well under a millisecond and build in ~1 s.

Example:
    >>> codes = np.array([0b0000, 0b0111, 0b0001, 3 << 62], dtype=np.uint64)
    >>> index = MultiIndexHash(codes, radius=1)
    >>> [(r.tolist(), d.tolist()) for r, d in index.search(np.array([0], dtype=np.uint64), k=5)]
    [([0, 2], [0, 1])]
"""

from __future__ import annotations

import contextlib
from itertools import combinations
from math import comb
from typing import Optional, Sequence

import numpy as np

from .common import faiss
from .hamming import popcount_xor

MAX_TABLE_BITS = 22          # a table's offsets array has 2^w + 1 entries (22 bits: 16 MB as int32)
TABLE_ENTRIES_PER_ROW = 16   # all tables together hold at most this many offsets per stored row (or 2^16)
SCAN_FRACTION = 0.25         # past this many expected candidates per row stored, a full scan is cheaper
# a probed key costs about as much as 4 checked candidates (a random read of the offsets, then a run of the
# table): measured at 1M random codes, radius 10, 4 x 16 bits (548 keys, ~8.4k candidates per query) answered
# batched queries in 2.9 ms vs 4.1 ms for 3 x 21/22 bits (4,918 keys, ~1.9k candidates), same run
PROBE_COST = 4.0
QUERY_CHUNK = 256            # queries searched together (their candidate arrays live at once)
# from this many expected candidates per query, queries are answered one at a time: a batch then only adds the
# query-of-each-candidate arrays (measured at 1M codes, radius 10: 292 q/s one by one vs 222 q/s in batches of 64,
# same run, loaded 2-core host)
PER_QUERY_MIN = 2048

__all__ = ["plan", "MultiIndexHash"]


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x) if hasattr(np, "bitwise_count") else popcount_xor(x, np.uint64(0))


def _widths(m: int) -> list[int]:
    return [64 // m + (1 if i < 64 % m else 0) for i in range(m)]


def _ball(w: int, t: int) -> int:
    return sum(comb(w, i) for i in range(t + 1))


def plan(n: int, radius: int) -> Optional[list[int]]:
    """Substring widths (bits, summing to 64) of the cheapest exact multi-index hash over ``n`` uniformly
    distributed codes at ``radius``, or ``None`` when a full scan is expected to be cheaper.

    Cost per query = keys probed * PROBE_COST + candidates checked
    (``sum_h ball(w_h, radius // m) * (PROBE_COST + n / 2^w_h)``).

    Example:
        >>> plan(1_000_000, 10), plan(1_000, 10), plan(1_000_000, 30)
        ([16, 16, 16, 16], [6, 6, 6, 6, 6, 6, 6, 6, 6, 5, 5], None)
    """
    if n <= 0 or radius < 0:
        return None
    best, best_cost = None, float("inf")
    budget = max(1 << 16, TABLE_ENTRIES_PER_ROW * n)
    for m in range(3, 17):
        widths = _widths(m)
        if max(widths) > MAX_TABLE_BITS or sum(1 << w for w in widths) > budget:
            continue
        t = radius // m
        cost = sum(_ball(w, t) * (PROBE_COST + n / float(1 << w)) for w in widths)
        if cost < best_cost:
            best, best_cost = widths, cost
    if best is None or best_cost > SCAN_FRACTION * n:
        return None
    return best


def _flip_masks(w: int, t: int) -> np.ndarray:
    """Every w-bit mask with at most t bits set (uint64), fewest bits first."""
    masks = [0]
    for c in range(1, t + 1):
        masks.extend(sum(1 << b for b in bits) for bits in combinations(range(w), c))
    return np.asarray(masks, dtype=np.uint64)


class MultiIndexHash:
    """The stored codes (uint64 ``[n]``) and, unless :func:`plan` says a scan is cheaper, one table per substring
    (``widths``: the substrings' bit counts, low bits first; None = :func:`plan`'s). Read-only after construction:
    safe to search from several threads.

    ``search(q, k)`` returns, per query, the ``k`` nearest stored rows within ``radius`` (fewer when fewer are
    that close), nearest first, ties by row: exactly what a brute-force XOR + popcount scan filtered at
    ``radius`` and sorted by (distance, row) returns."""

    def __init__(self, codes: np.ndarray, radius: int, widths: Optional[Sequence[int]] = None):
        self.codes = np.ascontiguousarray(np.asarray(codes).astype(np.uint64, copy=False))
        self.radius = int(radius)
        n = len(self.codes)
        if widths is not None and (sum(widths) > 64 or not all(0 < w <= MAX_TABLE_BITS for w in widths)):
            raise ValueError(f"substring widths must be 1..{MAX_TABLE_BITS} bits and sum to at most 64: {widths}")
        # any disjoint substrings keep the pigeonhole bound (bits left out only loosen it)
        self.widths = list(widths) if widths is not None else plan(n, self.radius)
        self._flat = None
        self.probes_per_query, self.candidates_per_query = 0, 0.0
        if self.widths is None:
            if n:
                self._flat = faiss().IndexBinaryFlat(64)
                self._flat.add(self.codes.astype("<u8").view(np.uint8).reshape(-1, 8))
            return
        # All tables in one set of arrays, so that a search is a fixed handful of numpy calls whatever the number
        # of tables: table h's 2^w_h + 1 offsets start at ``base_h`` in ``_offs`` and point into ``_rows`` /
        # ``_codes`` (the row ids and their codes in table order, h * n onwards). The probe template holds, for
        # each key probed per query, its table's shift, mask and ``base_h`` and the bits it flips.
        idx_t = np.int32 if len(self.widths) * n < (1 << 31) else np.int64
        t = self.radius // len(self.widths)
        offs, rows, shifts, masks, bases, flips = [], [], [], [], [], []
        shift = base = 0
        for h, w in enumerate(self.widths):
            key = ((self.codes >> np.uint64(shift)) & np.uint64((1 << w) - 1)).astype(np.int64)
            order = np.argsort(key, kind="stable")
            o = np.zeros((1 << w) + 1, dtype=np.int64)
            np.cumsum(np.bincount(key, minlength=1 << w), out=o[1:])
            offs.append((o + h * n).astype(idx_t))
            rows.append(order.astype(idx_t))
            f = _flip_masks(w, t)
            flips.append(f)
            shifts.append(np.full(len(f), shift, np.uint64))
            masks.append(np.full(len(f), (1 << w) - 1, np.uint64))
            bases.append(np.full(len(f), base, np.int64))
            shift, base = shift + w, base + (1 << w) + 1
        self._offs, self._rows = np.concatenate(offs), np.concatenate(rows)
        self._codes = self.codes[self._rows]   # 8 bytes a row per table: a bucket's codes are read contiguously
        self._shift, self._mask = np.concatenate(shifts), np.concatenate(masks)
        self._base, self._flips = np.concatenate(bases), np.concatenate(flips)
        self.probes_per_query = len(self._flips)
        self.candidates_per_query = sum(_ball(w, t) * n / float(1 << w) for w in self.widths)  # uniform codes

    @property
    def exhaustive(self) -> bool:
        """True when queries scan every stored code (the radius is too large for the tables to pay)."""
        return self.widths is None

    def search(self, q: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: ``(rows, distances)`` int64, the ``k`` nearest stored codes within ``radius``."""
        q = np.ascontiguousarray(np.asarray(q).astype(np.uint64, copy=False)).reshape(-1)
        out: list[tuple[np.ndarray, np.ndarray]] = []
        if len(self.codes) == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.int64)) for _ in range(len(q))]
        if self._flat is None and self.candidates_per_query >= PER_QUERY_MIN:
            for i in range(len(q)):  # see PER_QUERY_MIN
                out.extend(_nearest(1, *self._probe(q[i:i + 1]), k))
            return out
        for lo in range(0, len(q), QUERY_CHUNK):
            qc = q[lo:lo + QUERY_CHUNK]
            found = self._scan(qc) if self._flat is not None else self._probe(qc)
            out.extend(_nearest(len(qc), *found, k))
        return out

    def _probe(self, q: np.ndarray):
        """(query position, stored row, distance) of every stored code within ``radius`` of a query, int64;
        a row may appear once per table that found it."""
        keys = (((q[:, None] >> self._shift) & self._mask) ^ self._flips).astype(np.int64) + self._base
        keys = keys.reshape(-1)
        start = self._offs[keys].astype(np.int64)
        length = self._offs[keys + 1] - start
        total = int(length.sum())
        # the positions start[j] .. start[j] + length[j] - 1 of every probed key j, concatenated
        pos = np.repeat(start - (np.cumsum(length) - length), length) + np.arange(total, dtype=np.int64)
        if len(q) == 1:
            d = _popcount(self._codes[pos] ^ q[0])
            hit = np.flatnonzero(d <= self.radius)
            qid = np.zeros(len(hit), np.int64)
        else:
            qpos = np.repeat(np.arange(len(q), dtype=np.int64), self.probes_per_query)
            qpos = np.repeat(qpos, length)
            d = _popcount(self._codes[pos] ^ q[qpos])
            hit = np.flatnonzero(d <= self.radius)
            qid = qpos[hit]
        return qid, self._rows[pos[hit]].astype(np.int64), d[hit].astype(np.int64)

    def _scan(self, q: np.ndarray):
        from threadpoolctl import threadpool_limits

        # a few queries: one OpenMP thread. faiss splits one query's scan over threads, and on a loaded 2-core
        # host that cost 360 ms vs 11 ms per query at 1M codes (benchmarks/bench_guard.py)
        few = len(q) < 8
        with threadpool_limits(1, user_api="openmp") if few else contextlib.nullcontext():
            lims, dist, labels = self._flat.range_search(q.astype("<u8").view(np.uint8).reshape(-1, 8),
                                                         self.radius + 1)
        qid = np.repeat(np.arange(len(q), dtype=np.int64), np.diff(lims).astype(np.int64))
        return qid, labels.astype(np.int64), dist.astype(np.int64)


def _nearest(nq: int, qid: np.ndarray, rows: np.ndarray, d: np.ndarray, k: int):
    """Per query position: its ``k`` (row, distance) nearest first, ties by row, each row once."""
    if len(qid) == 0:
        return [(qid, qid)] * nq
    order = np.lexsort((rows, d, qid))
    qid, rows, d = qid[order], rows[order], d[order]
    if len(qid) > 1:  # a row found through several tables: keep it once (same distance, so adjacent)
        first = np.ones(len(qid), dtype=bool)
        first[1:] = (qid[1:] != qid[:-1]) | (rows[1:] != rows[:-1])
        qid, rows, d = qid[first], rows[first], d[first]
    bounds = np.searchsorted(qid, np.arange(nq + 1))
    return [(rows[a:min(b, a + k)], d[a:min(b, a + k)]) for a, b in zip(bounds[:-1], bounds[1:])]
