"""Duplicate clusters from pairwise edges, with a guard against single-linkage chaining.

Every signal (identical bytes, identical pixels, pHash/dHash Hamming distance, embedding cosine) contributes
edges between rows; the union of all edges is split into connected components
(:func:`scipy.sparse.csgraph.connected_components`). Connected components alone chain: A~B and B~C put A and C
in one cluster even when A and C are far apart (a slow drift through re-crops or a near-threshold walk in
embedding space). The guard picks a deterministic representative per component (largest pixel area, then most
stored bytes -- at equal area the least-compressed copy --, then lowest ``(key, shard)``) and admits:

* every member directly linked to it (within a threshold of it by at least one enabled signal), then
* every member reached through strong links -- edges to at least ``chain_min_links`` already admitted members
  -- whose own end-to-end check against the representative passes a looser bound: the embedding cosine
  ``>= chain_confirm_cosine`` when the index has embeddings, else the pHash (or dHash) within
  ``chain_max_distance``; repeated until nothing more is admitted.

Drift stays bounded twice: no member is ever further from its representative than the end-to-end bound, and a
chain of different images (each step near, the ends far) has too few links into the admitted set to grow, while
the copies of one photo link to many of each other (a 1-2 px crop of a 32-px photo has 23+ other crops within
the pHash threshold). The rejected members are re-clustered among themselves (the connected components of the
edges between them), round after round.

Hash distances take flips and 90-degree rotations into account when the index has the dihedral hashes
(``phash_dihedral`` / ``dhash_dihedral``): a pair is within ``phash_max_distance`` as stored, or within
``dihedral_max_distance`` after the best of the 7 transforms. A pHash link also needs the dHash not to
contradict it (``dhash_confirm_max_distance``): the pHash bits of low-contrast images (a near-flat grey face, a
smooth red retina) are decided by a few weak coefficients and collide, while their dHashes stay far apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

from ..index.dihedral import hamming_dihedral

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
    nbytes: Optional[np.ndarray] = None           # int64 stored bytes (representative tie-break), or None
    phash_dihedral: Optional[np.ndarray] = None   # uint64 [n, 7] hashes of the flips/rotations, or None
    dhash_dihedral: Optional[np.ndarray] = None
    dihedral_max_distance: int = -1               # -1: flips/rotations not matched
    # the dHash values a pHash link is checked against (even when dHash is not a signal); None = no check
    confirm_dhash: Optional[np.ndarray] = None
    confirm_dhash_dihedral: Optional[np.ndarray] = None
    dhash_confirm_max_distance: int = -1
    chain_min_links: int = 0                      # 0: the star rule (only direct links to the representative)
    chain_max_distance: int = 26
    chain_confirm_cosine: float = 0.8

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


def _hash_distance(h: np.ndarray, v: Optional[np.ndarray], a: np.ndarray, b: np.ndarray, dihedral: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(distance as stored, distance under the best flip/rotation or 64 when not matched) of rows a[k], b[k]."""
    d = np.bitwise_count(np.bitwise_xor(h[a], h[b])).astype(np.int64)
    if not dihedral or v is None:
        return d, np.full(len(a), 64, dtype=np.int64)
    return d, hamming_dihedral(h[a], v[a], h[b], v[b])


def _linked_distance(d: np.ndarray, dt: np.ndarray, t: int, tt: int) -> np.ndarray:
    """The smallest distance that links (stored within ``t`` or transformed within ``tt``), 65 when none."""
    return np.minimum(np.where(d <= t, d, 65), np.where(dt <= tt, dt, 65))


def direct_links(sig: Signals, a: np.ndarray, b: np.ndarray, chunk: int = 65536
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compare rows ``a[k]`` and ``b[k]`` directly. Returns (linked by some enabled signal, the strongest
    linking reason code, the similarity under that signal: 1.0 for exact, 1 - d/64 for hashes (d the smallest
    linking distance, as stored or after a flip/rotation), cosine for embeddings, rounded to 6 decimals so that
    every run writes the same value)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    m = len(a)
    reason = np.full(m, NO_REASON, dtype=np.int64)
    sim = np.zeros(m, dtype=np.float64)

    def take(code: int, ok: np.ndarray, s) -> None:
        new = ok & (reason == NO_REASON)
        reason[new] = code
        sim[new] = s[new] if isinstance(s, np.ndarray) else s

    dih = sig.dihedral_max_distance >= 0
    if sig.sha256 is not None:
        c = sig.sha256[a]
        take(0, (c >= 0) & (c == sig.sha256[b]), 1.0)
    if sig.pixel_blake3 is not None:
        c = sig.pixel_blake3[a]
        take(1, (c >= 0) & (c == sig.pixel_blake3[b]), 1.0)
    if sig.phash is not None:
        d, dt = _hash_distance(sig.phash, sig.phash_dihedral, a, b, dih)
        dl = _linked_distance(d, dt, sig.phash_max_distance, sig.dihedral_max_distance)
        ok = dl <= 64
        if sig.confirm_dhash is not None and sig.dhash_confirm_max_distance >= 0:
            e, et = _hash_distance(sig.confirm_dhash, sig.confirm_dhash_dihedral, a, b, dih)
            ok &= np.minimum(e, et) <= sig.dhash_confirm_max_distance
        take(2, ok, 1.0 - dl / 64.0)
    if sig.dhash is not None:
        d, dt = _hash_distance(sig.dhash, sig.dhash_dihedral, a, b, dih)
        dl = _linked_distance(d, dt, sig.dhash_max_distance, sig.dihedral_max_distance)
        take(3, dl <= 64, 1.0 - dl / 64.0)
    if sig.emb is not None and m:
        cos = _cosine(sig.emb, a, b, chunk)
        take(4, cos >= sig.cosine_threshold, cos)
    return reason < NO_REASON, reason, sim


def _cosine(emb: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
    cos = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), chunk):
        ea = np.asarray(emb[a[s:s + chunk]], dtype=np.float64)
        eb = np.asarray(emb[b[s:s + chunk]], dtype=np.float64)
        cos[s:s + chunk] = np.einsum("ij,ij->i", ea, eb)
    return np.round(cos, 6)


def end_to_end_check(sig: Signals, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The looser direct check of a member ``a[k]`` reached through strong links against its representative
    ``b[k]``: the embedding cosine ``>= chain_confirm_cosine`` when embeddings are present, else the pHash (or,
    with pHash off, the dHash) within ``chain_max_distance`` after the best flip/rotation. (No dHash
    confirmation here: every strong link on the way already had one.) Returns (passed, reason code, similarity)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    m = len(a)
    if sig.emb is not None:
        cos = _cosine(sig.emb, a, b)
        return cos >= sig.chain_confirm_cosine, np.full(m, REASON_CODE["embedding"]), cos
    dih = sig.dihedral_max_distance >= 0
    t = sig.chain_max_distance
    if sig.phash is not None:
        d, dt = _hash_distance(sig.phash, sig.phash_dihedral, a, b, dih)
        dl = _linked_distance(d, dt, t, t if dih else -1)
        return dl <= t, np.full(m, REASON_CODE["phash"]), 1.0 - np.minimum(dl, 64) / 64.0
    if sig.dhash is not None:
        d, dt = _hash_distance(sig.dhash, sig.dhash_dihedral, a, b, dih)
        dl = _linked_distance(d, dt, t, t if dih else -1)
        return dl <= t, np.full(m, REASON_CODE["dhash"]), 1.0 - np.minimum(dl, 64) / 64.0
    return np.zeros(m, dtype=bool), np.full(m, NO_REASON), np.zeros(m)


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
    pixel area, then most stored bytes, then lowest key, then lowest shard), one vectorised direct comparison of
    every member with its representative, then -- when ``sig.chain_min_links > 0`` -- the members linked to at
    least that many admitted ones and passing :func:`end_to_end_check`, level by level; the
    rejected members form the next round's graph (the edges among them). With ``guard=False`` every component
    is one cluster; members not directly within a threshold of the representative then get reason code
    NO_REASON and similarity 0.

    Example:
        >>> # "e" is 6 bits from the representative "a" but within 3 of b, c and d: a copy linked through copies
        >>> h = np.array([0, 0b1, 0b10, 0b100, 0b111111], dtype=np.uint64)
        >>> sig = Signals(key=np.array(list("abcde"), dtype=object), shard=np.array(["s"] * 5, dtype=object),
        ...               area=np.full(5, 100), sha256=None, pixel_blake3=None, phash=h, dhash=None, emb=None,
        ...               phash_max_distance=5, chain_min_links=3, chain_max_distance=8)
        >>> i, j = np.array([0, 0, 0, 1, 2, 3]), np.array([1, 2, 3, 4, 4, 4])
        >>> cluster(sig, i, j).rep_row.tolist()
        [0, 0, 0, 0, 0]
        >>> sig.chain_min_links = 0  # the star rule
        >>> cluster(sig, i, j).rep_row.tolist()
        [0, 0, 0, 0, 4]
    """
    n = len(sig)
    label = np.full(n, -1, dtype=np.int64)
    rep_row = np.arange(n, dtype=np.int64)
    reason = np.full(n, NO_REASON, dtype=np.int64)
    similarity = np.ones(n, dtype=np.float64)
    if n == 0:
        return Clustering(label, rep_row, reason, similarity, 0, 0)
    edge_i, edge_j = np.asarray(edge_i, np.int64), np.asarray(edge_j, np.int64)
    g = coo_matrix((np.ones(len(edge_i), dtype=np.int8), (edge_i, edge_j)), shape=(n, n)).tocsr()
    links = None  # the symmetric 0/1 adjacency the strong-link rule counts in
    if guard and sig.chain_min_links > 0 and len(edge_i):
        links = coo_matrix((np.ones(2 * len(edge_i), dtype=np.int32), (np.r_[edge_i, edge_j], np.r_[edge_j, edge_i])),
                           shape=(n, n)).tocsr()
        links.data[:] = 1  # duplicate edges (two signals) count once
    rank = key_rank(sig.key, sig.shard)
    neg_area = -np.asarray(sig.area, dtype=np.int64)
    neg_bytes = -np.asarray(sig.nbytes, dtype=np.int64) if sig.nbytes is not None else np.zeros(n, np.int64)
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
        order = np.lexsort((rank[rows], neg_bytes[rows], neg_area[rows], c))
        c_sorted = c[order]
        first = np.r_[True, c_sorted[1:] != c_sorted[:-1]]
        rep_of_comp = np.full(sizes.size, -1, dtype=np.int64)
        rep_of_comp[c_sorted[first]] = rows[order][first]
        reps = rep_of_comp[c]
        linked, why, sim = direct_links(sig, rows, reps)
        is_rep = rows == reps
        linked |= is_rep
        if links is not None:
            _admit_through_strong_links(sig, links, rows, reps, linked, why, sim)
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


def _admit_through_strong_links(sig: Signals, links: csr_matrix, rows: np.ndarray, reps: np.ndarray,
                                linked: np.ndarray, why: np.ndarray, sim: np.ndarray) -> None:
    """Grow each component's admitted set (``linked``, in place) level by level: a not yet admitted member linked
    to at least ``chain_min_links`` admitted members is admitted when :func:`end_to_end_check` against its
    representative passes. Links never cross components, so one matrix-vector product per level serves them all;
    a member that fails the check is never retried (the check depends on the pair alone)."""
    s = links[rows][:, rows]
    tried = linked.copy()
    while True:
        support = s @ linked.astype(np.int32)
        cand = np.flatnonzero((support >= sig.chain_min_links) & ~tried)
        if cand.size == 0:
            return
        tried[cand] = True
        ok, r, v = end_to_end_check(sig, rows[cand], reps[cand])
        linked[cand[ok]] = True
        why[cand[ok]] = r[ok]
        sim[cand[ok]] = v[ok]
