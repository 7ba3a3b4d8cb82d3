"""Duplicate clusters from pairwise edges, with a guard against single-linkage chaining.

Every signal (identical bytes, identical pixels, pHash/dHash Hamming distance, embedding cosine) contributes
edges between rows; the union of all edges is split into connected components
(:func:`scipy.sparse.csgraph.connected_components`). Connected components alone chain: A~B and B~C put A and C
in one cluster even when A and C are far apart (a slow drift through re-crops or a near-threshold walk in
embedding space). The guard picks a deterministic representative per component (largest pixel area, then
lowest ``(key, shard)``), keeps the members that are themselves within a threshold of it by at least one
enabled signal, and re-clusters the rest among themselves (the connected components of the edges between the
rejected members), repeating until every cluster is a star around its representative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

# reasons, strongest first; the code is the index in this tuple
REASONS = ("exact_bytes", "exact_pixels", "phash", "dhash", "embedding")
REASON_CODE = {r: i for i, r in enumerate(REASONS)}
NO_REASON = len(REASONS)


@dataclass
class Signals:
    """The per-row values the guard compares directly against a representative.

    ``sha256`` / ``pixel_blake3`` are integer codes (equal code == equal hash; -1 = missing)."""

    key: np.ndarray                 # object array of str
    shard: np.ndarray               # object array of str
    area: np.ndarray                # int64 width*height
    sha256: Optional[np.ndarray]    # int64 codes or None (signal off)
    pixel_blake3: Optional[np.ndarray]
    phash: Optional[np.ndarray]     # uint64 or None
    dhash: Optional[np.ndarray]
    emb: Optional[np.ndarray]       # [n, d] (float16/float32, L2-normalised) or None
    phash_max_distance: int = 10
    dhash_max_distance: int = 10
    cosine_threshold: float = 0.9

    def __len__(self) -> int:
        return len(self.key)


def group_codes(values: pd.Series | np.ndarray) -> np.ndarray:
    """Integer code per row, equal for equal non-empty values; -1 for empty/missing values."""
    s = pd.Series(values, dtype=object)
    missing = s.isna() | (s == "")
    codes, _ = pd.factorize(s.where(~missing, None), use_na_sentinel=True)
    codes = codes.astype(np.int64)
    codes[missing.to_numpy()] = -1
    return codes


def star_edges(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining every row to the first row with the same code (codes < 0 are never joined)."""
    codes = np.asarray(codes, dtype=np.int64)
    rows = np.flatnonzero(codes >= 0)
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    c = codes[rows]
    order = np.argsort(c, kind="stable")
    c_sorted, r_sorted = c[order], rows[order]
    starts = np.r_[True, c_sorted[1:] != c_sorted[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(c_sorted)), 0))
    hub = r_sorted[first]
    keep = hub != r_sorted
    return hub[keep].astype(np.int64), r_sorted[keep].astype(np.int64)


def direct_links(sig: Signals, a: np.ndarray, b: np.ndarray, chunk: int = 65536
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compare rows ``a[k]`` and ``b[k]`` directly. Returns (linked by some enabled signal, the strongest
    linking reason code, the similarity under that signal: 1.0 for exact, 1 - d/64 for hashes, cosine for
    embeddings, rounded to 6 decimals so that every run writes the same value)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    m = len(a)
    reason = np.full(m, NO_REASON, dtype=np.int64)
    sim = np.zeros(m, dtype=np.float64)

    def take(code: int, ok: np.ndarray, s) -> None:
        new = ok & (reason == NO_REASON)
        reason[new] = code
        sim[new] = s[new] if isinstance(s, np.ndarray) else s

    if sig.sha256 is not None:
        c = sig.sha256[a]
        take(0, (c >= 0) & (c == sig.sha256[b]), 1.0)
    if sig.pixel_blake3 is not None:
        c = sig.pixel_blake3[a]
        take(1, (c >= 0) & (c == sig.pixel_blake3[b]), 1.0)
    if sig.phash is not None:
        d = np.bitwise_count(np.bitwise_xor(sig.phash[a], sig.phash[b])).astype(np.int64)
        take(2, d <= sig.phash_max_distance, 1.0 - d / 64.0)
    if sig.dhash is not None:
        d = np.bitwise_count(np.bitwise_xor(sig.dhash[a], sig.dhash[b])).astype(np.int64)
        take(3, d <= sig.dhash_max_distance, 1.0 - d / 64.0)
    if sig.emb is not None and m:
        cos = np.empty(m, dtype=np.float64)
        for s in range(0, m, chunk):
            ea = np.asarray(sig.emb[a[s:s + chunk]], dtype=np.float64)
            eb = np.asarray(sig.emb[b[s:s + chunk]], dtype=np.float64)
            cos[s:s + chunk] = np.einsum("ij,ij->i", ea, eb)
        cos = np.round(cos, 6)
        take(4, cos >= sig.cosine_threshold, cos)
    return reason < NO_REASON, reason, sim


def key_rank(key: np.ndarray, shard: np.ndarray) -> np.ndarray:
    """Rank of every row when sorted by (key, shard): the representative tie-break."""
    frame = pd.DataFrame({"key": key, "shard": shard})
    order = frame.sort_values(["key", "shard"], kind="mergesort").index.to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


@dataclass
class Clustering:
    """Per-row results: cluster label (dense, arbitrary order), representative row of the cluster,
    reason code (NO_REASON for representatives and singletons), similarity to the representative."""

    label: np.ndarray
    rep_row: np.ndarray
    reason: np.ndarray
    similarity: np.ndarray
    n_splits: int        # rows split off by the chaining guard (summed over rounds)
    rounds: int


def cluster(sig: Signals, edge_i: np.ndarray, edge_j: np.ndarray, guard: bool = True) -> Clustering:
    """Cluster ``len(sig)`` rows joined by the undirected edges ``(edge_i, edge_j)``.

    Each round works on all still-unassigned rows at once: representatives of every component (largest
    pixel area, then lowest key, then lowest shard), one vectorised direct comparison of every member with
    its representative, the linked members assigned; the rejected members form the next round's graph (the
    edges among them). With ``guard=False`` every component is one cluster; members not directly within a
    threshold of the representative then get reason code NO_REASON and similarity 0."""
    n = len(sig)
    label = np.full(n, -1, dtype=np.int64)
    rep_row = np.arange(n, dtype=np.int64)
    reason = np.full(n, NO_REASON, dtype=np.int64)
    similarity = np.ones(n, dtype=np.float64)
    if n == 0:
        return Clustering(label, rep_row, reason, similarity, 0, 0)
    g = coo_matrix((np.ones(len(edge_i), dtype=np.int8),
                    (np.asarray(edge_i, np.int64), np.asarray(edge_j, np.int64))), shape=(n, n)).tocsr()
    rank = key_rank(sig.key, sig.shard)
    neg_area = -np.asarray(sig.area, dtype=np.int64)
    active = np.arange(n, dtype=np.int64)
    sub: csr_matrix = g
    next_label = 0
    n_splits = 0
    rounds = 0
    while active.size:
        rounds += 1
        _, comp = connected_components(sub, directed=False)
        sizes = np.bincount(comp)
        multi = sizes[comp] > 1
        singles = active[~multi]
        label[singles] = next_label + np.arange(singles.size)
        next_label += singles.size
        rows = active[multi]
        if rows.size == 0:
            break
        c = comp[multi]
        order = np.lexsort((rank[rows], neg_area[rows], c))
        c_sorted = c[order]
        first = np.r_[True, c_sorted[1:] != c_sorted[:-1]]
        rep_of_comp = np.full(sizes.size, -1, dtype=np.int64)
        rep_of_comp[c_sorted[first]] = rows[order][first]
        reps = rep_of_comp[c]
        linked, why, sim = direct_links(sig, rows, reps)
        is_rep = rows == reps
        linked |= is_rep
        acc = linked if guard else np.ones(rows.size, dtype=bool)
        # dense new labels per component, in component order
        comp_ids, comp_dense = np.unique(c, return_inverse=True)
        label[rows[acc]] = next_label + comp_dense[acc]
        next_label += comp_ids.size
        rep_row[rows[acc]] = reps[acc]
        reason[rows[acc]] = np.where(is_rep[acc], NO_REASON, why[acc])
        similarity[rows[acc]] = np.where(is_rep[acc], 1.0, sim[acc])
        rejected = rows[~acc]
        n_splits += rejected.size
        if rejected.size == 0:
            break
        active = rejected  # sorted ascending, since rows keeps active's order
        sub = g[active][:, active]
    # relabel densely (some label values were reserved for components but unused)
    _, label = np.unique(label, return_inverse=True)
    return Clustering(label.astype(np.int64), rep_row, reason, similarity, n_splits, rounds)
