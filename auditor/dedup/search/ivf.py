"""``ivf``: an inverted-file *join*. Spherical k-means centroids are trained on a sample; every vector is stored in
its nearest list (its "home") and probes its ``nprobe`` nearest lists. The join runs list by list: the rows that
probe a list are range-searched against the list's members with one BLAS call, so the work is
``N * nprobe * N / nlist`` dot products done as matrix products (faiss's per-query IVF scan cannot use BLAS).

A pair is a candidate when either row probes the other's home list, which is what makes recall of near-duplicates
(whose neighbours share or neighbour each other's cell) close to 1; ``benchmarks/bench_dedup_scale.py`` measures it
against brute force (2 shared cores, 1M clustered 512-d float16 rows, tau 0.9, nprobe 8: 135 s, pair recall 0.9955
on a sampled exact ground truth, 121x faster than a faiss flat range search extrapolated from a timed sample).

``benchmarks/bench_search_paths.py`` times it against faiss's own IVF paths on the same vectors and lists (1M
clustered 128-d rows, tau 0.9, nprobe 8, loaded 2-core host): the join 300 s, ``IndexIVFFlat.range_search`` ~1,660 s
and ``faiss.contrib.big_batch_search`` (k = 16) ~1,970 s (both extrapolated from 100k query rows), with the same
candidates; so the join stays. Its recall there was 0.9915 at nprobe 8, 0.9967 at 12 (1.43x the time) and 0.9993 at
16 (1.75x), hence ``DEFAULT_NPROBE = 12`` for the fixed rule; on the shipped copy descriptor's embeddings of 17k
real photos and copies at its threshold 0.6: 0.9964 at 8, 0.9991 at 16, 1.0 at 32. Raise ``nprobe`` for more recall
at proportional join cost.

**The margin rule** (``probe_margin``, ``dedup.probe_margin``): instead of a fixed ``nprobe``, a row ``x`` with
home list ``h`` probes, among its ``nprobe`` nearest lists (then a cap), each list ``j`` with ``x . c_h - x . c_j <=
probe_margin * r * |c_h - c_j|``, ``r = sqrt(2 (1 - tau))``: the threshold-aware rule of the partitioned search
(:mod:`auditor.dedup.search.partition_build`). ``(x . c_h - x . c_j) / |c_h - c_j|`` is ``x``'s distance to the
hyperplane halfway between the two centroids; a pair ``(x, y)`` at ``cos >= tau`` with ``y`` in list ``j`` is at
most ``r`` apart and lies on both sides of that hyperplane, so one of the two rows is within ``r / 2`` of it and
probes the other's list: margin 0.5 with no cap finds every pair of a self-join. In a cross join only the queries
probe, so they use twice the margin (0.5 is exact there too). A row deep inside its list probes only it; a row near
a boundary probes the lists across it; the lists are still searched list by list with one BLAS product each.
Every row also probes its ``probe_min`` nearest lists: the margin alone suits isotropic synthetic copies but lost
pairs on real copy descriptors at tau 0.6 that the fixed 8 lists find.

Measured (BENCHMARKS.md section 3b; the same 1M rows and lists as above, loaded 2-core host, ratios within one run):
the default margin 0.15 / ``probe_min`` 4 / cap 24 found 0.9998 of the pairs in 1.13x the time of the fixed 8 lists
(0.9915), where the fixed rule needed 16 lists (1.75x) for 0.9993; on the 17k real copy descriptors at 0.6 it found
0.9994 (fixed 8: 0.9964, 16: 0.9991). ``probe_margin=None`` restores the fixed rule.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Optional

import numpy as np

from .common import SearchOptions, f32, faiss, no_candidates, progress_bar, range_search_rows
from .flat import add_rows
from .registry import SEARCH_METHODS

log = logging.getLogger(__name__)

DEFAULT_NPROBE = 12            # recall >= 0.995 at 1M (module docstring; BENCHMARKS.md section 3)
DEFAULT_MAX_PROBES = 24        # the margin rule's cap when nprobe is not set (BENCHMARKS.md section 3b)
KMEANS_SAMPLE_PER_LIST = 32   # training rows per list (faiss warns below 39; fine for partitioning)
KMEANS_NITER = 10
JOIN_QUERY_BLOCK = 1 << 20    # query rows per range search inside one list
ASSIGN_CHUNK = 65_536         # rows per centroid search
CDIST_FULL_MAX = 4096         # lists up to which the margin rule keeps all centroid distances (64 MB)

__all__ = ["DEFAULT_NPROBE", "DEFAULT_MAX_PROBES", "default_nlist", "default_nprobe", "train_centroids",
           "assign_lists", "pair_radius", "pair_slack", "centroid_distances", "probe_mask", "margin_keep", "probe_lists",
           "ivf_join",
           "IVFSearch"]


def default_nlist(n: int) -> int:
    """Lists for the IVF join: 2 sqrt(N) (a list holds ~sqrt(N)/2 rows), at least 1, at most N / 8.

    Cost in dot products: training ~ 32 * 10 * nlist^2, assigning N * nlist, the join N * nprobe * N / nlist;
    with nlist = 2 sqrt(N) and nprobe = 12 that is ~9 N^1.5 against N^2 for brute force.

    Example:
        >>> default_nlist(10_000), default_nlist(1_000_000), default_nlist(4)
        (200, 2000, 1)
    """
    return int(max(1, min(n // 8, round(2 * math.sqrt(max(n, 1))))))


def default_nprobe(nlist: int) -> int:
    return int(max(1, min(nlist, DEFAULT_NPROBE)))


def train_centroids(x: np.ndarray, nlist: int, seed: int, sample_per_list: int = KMEANS_SAMPLE_PER_LIST,
                    niter: int = KMEANS_NITER) -> np.ndarray:
    """Spherical k-means centroids (float32 ``[nlist, dim]``, faiss ``Kmeans``) trained on a seeded random sample
    of ``nlist * sample_per_list`` rows (all rows when fewer)."""
    f = faiss()
    n, d = x.shape
    ns = min(n, nlist * sample_per_list)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=ns, replace=False)) if ns < n else np.arange(n)
    xs = f32(x[sample])
    km = f.Kmeans(d, nlist, niter=niter, seed=int(seed) & 0x7FFFFFFF, spherical=True,
                  max_points_per_centroid=sample_per_list + 1, min_points_per_centroid=1, verbose=False)
    km.train(xs)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _centroid_search(x: np.ndarray, centroids: np.ndarray, k: int, progress: bool, chunk: int):
    """(row offset, similarities, ids) of the ``k`` nearest centroids, chunk by chunk (decreasing similarity)."""
    quant = faiss().IndexFlatIP(centroids.shape[1])
    quant.add(f32(centroids))
    k = min(k, len(centroids))
    for lo in progress_bar(range(0, len(x), chunk), progress, desc="assign lists", unit="chunk"):
        sims, ids = quant.search(f32(x[lo:lo + chunk]), k)
        yield lo, sims, ids


def assign_lists(x: np.ndarray, centroids: np.ndarray, k: int, progress: bool, chunk: int = ASSIGN_CHUNK) -> np.ndarray:
    """The ``k`` nearest centroids of every row, int64 ``[n, k]`` (column 0 = home list)."""
    out = np.empty((len(x), min(k, len(centroids))), dtype=np.int64)
    for lo, _, ids in _centroid_search(x, centroids, k, progress, chunk):
        out[lo:lo + len(ids)] = ids
    return out


def pair_radius(threshold: float) -> float:
    """``|a - b|`` of unit vectors with ``cos(a, b) = threshold``: ``sqrt(2 (1 - threshold))``, the largest distance
    of a pair at or above the threshold (the margin rule's ``r``, here and in the partitioned search)."""
    return math.sqrt(max(0.0, 2.0 * (1.0 - float(threshold))))


def pair_slack(threshold: float, margin: float) -> float:
    """``margin * r`` with ``r`` = :func:`pair_radius` (the margin rule, module docstring)."""
    return float(margin) * pair_radius(threshold)


def centroid_distances(centroids: np.ndarray) -> Optional[np.ndarray]:
    """All ``|c_i - c_j|`` (float32 ``[nlist, nlist]``) up to :data:`CDIST_FULL_MAX` lists, else None (then
    :func:`probe_mask` computes the pairs it needs)."""
    if len(centroids) > CDIST_FULL_MAX:
        return None
    c = f32(centroids)
    sq = (c * c).sum(1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (c @ c.T), 0.0)).astype(np.float32)


def probe_mask(sims: np.ndarray, ids: np.ndarray, centroids: np.ndarray, slack: float,
               cdist: Optional[np.ndarray] = None, floor: int = 1) -> np.ndarray:
    """The margin rule: which of each row's nearest lists (``ids``/``sims`` by decreasing similarity, column 0 =
    home ``h``) it probes: list ``j`` when ``x . c_h - x . c_j <= slack * |c_h - c_j|``, and the ``floor`` nearest
    (the home at least) always.

    Example:
        >>> c = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
        >>> probe_mask(np.array([[0.8, 0.6, -0.8]]), np.array([[0, 1, 2]]), c, 0.2).tolist()
        [[True, True, False]]
    """
    home = np.broadcast_to(ids[:, :1], ids.shape)
    if cdist is not None:
        cd = cdist[home, ids]
    else:  # per needed pair: the full matrix would not fit (nlist > CDIST_FULL_MAX)
        c = f32(centroids)
        cd = np.empty(ids.shape, np.float32)
        for col in range(ids.shape[1]):
            diff = c[home[:, col]] - c[ids[:, col]]
            cd[:, col] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return margin_keep(sims, cd, slack, floor)


def margin_keep(sims: np.ndarray, cd: np.ndarray, slack: float, floor: int = 1) -> np.ndarray:
    """The margin rule on distances already looked up: probe list ``j`` (column ``k``) when ``sims[:, 0] -
    sims[:, k] <= slack * cd[:, k]`` (``cd`` = ``|c_home - c_j|``), and the ``floor`` nearest always. Shared by
    :func:`probe_mask` and the partitioned search's ``ProbeAssigner``."""
    keep = (sims[:, :1] - sims) <= np.float32(slack) * cd
    keep[:, :max(1, int(floor))] = True
    return keep


def probe_lists(x: np.ndarray, centroids: np.ndarray, nprobe: int, threshold: float, margin: Optional[float],
                progress: bool, chunk: int = ASSIGN_CHUNK, floor: int = 1):
    """The (row, list) probes of every row, int64 ``(rows, lists)`` with each row's home list first, and every
    row's home list (int64 ``[n]``): its ``nprobe`` nearest lists when ``margin`` is None, else those of them
    that the margin rule (:func:`probe_mask`, with its ``floor``) keeps at ``threshold``."""
    cdist = None if margin is None else centroid_distances(centroids)
    slack = 0.0 if margin is None else pair_slack(threshold, margin)
    rows, lists, home = [], [], np.empty(len(x), np.int64)
    for lo, sims, ids in _centroid_search(x, centroids, nprobe, progress, chunk):
        home[lo:lo + len(ids)] = ids[:, 0]
        if margin is None:
            keep = np.ones(ids.shape, dtype=bool)
        else:
            keep = probe_mask(sims, ids, centroids, slack, cdist, floor)
        r, k = np.nonzero(keep)
        rows.append(r.astype(np.int64) + lo)
        lists.append(ids[r, k].astype(np.int64))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), home
    return np.concatenate(rows), np.concatenate(lists), home


def _group(lists: np.ndarray, rows: np.ndarray, nlist: int):
    """rows grouped by list id: (sorted rows, offsets[nlist+1])."""
    order = np.argsort(lists, kind="stable")
    counts = np.bincount(lists, minlength=nlist)
    offs = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(counts, out=offs[1:])
    return rows[order], offs


def _lists(nb: int, opts: SearchOptions) -> tuple[int, int]:
    """(nlist, nprobe): with the margin rule, nprobe is its cap (default :data:`DEFAULT_MAX_PROBES`)."""
    nlist = max(1, min(int(opts.nlist or default_nlist(nb)), nb))
    cap = DEFAULT_MAX_PROBES if opts.probe_margin is not None else default_nprobe(nlist)
    nprobe = max(1, min(int(opts.nprobe or cap), nlist))
    return nlist, nprobe


def ivf_join(q: np.ndarray, b: np.ndarray, thr: float, self_join: bool, opts: SearchOptions, progress: bool,
             centroids: Optional[np.ndarray] = None):
    """Candidate pairs of the IVF join (module docstring): int64 ``(qi, bj)``, ``qi < bj`` in a self-join."""
    nb, d = b.shape
    nlist, nprobe = _lists(nb, opts)
    t0 = time.perf_counter()
    if centroids is None:
        centroids = train_centroids(b, nlist, opts.seed)
    nlist = len(centroids)
    t1 = time.perf_counter()
    margin = opts.probe_margin
    if margin is not None and not self_join:
        margin = 2.0 * margin  # only the queries probe: they take both sides' share of the bound
    flat_rows, flat_lists, home_q = probe_lists(q, centroids, nprobe, thr, margin, progress, floor=opts.probe_min)
    home_b = home_q if self_join else assign_lists(b, centroids, 1, progress)[:, 0]
    base_rows, base_offs = _group(home_b, np.arange(nb, dtype=np.int64), nlist)
    q_rows, q_offs = _group(flat_lists, flat_rows, nlist)
    nprobes = len(flat_lists)
    del flat_lists, flat_rows, home_q
    t2 = time.perf_counter()

    out_i, out_j = [], []
    for p in progress_bar(range(nlist), progress, desc="ivf join", unit="list"):
        bm = base_rows[base_offs[p]:base_offs[p + 1]]
        qm = q_rows[q_offs[p]:q_offs[p + 1]]
        if len(bm) == 0 or len(qm) == 0:
            continue
        index = faiss().IndexFlatIP(d)
        index.add(f32(b[bm]))
        qa, bl = range_search_rows(index, q[qm], float(thr), block=JOIN_QUERY_BLOCK)
        if len(qa) == 0:
            continue
        qi, bj = qm[qa], bm[bl]
        if self_join:
            lo, hi = np.minimum(qi, bj), np.maximum(qi, bj)
            m = lo != hi
            qi, bj = lo[m], hi[m]
        out_i.append(qi)
        out_j.append(bj)
    log.debug("ivf join: nlist=%d nprobe=%d margin=%s (%.2f lists per row) train %.1fs assign %.1fs join %.1fs",
              nlist, nprobe, opts.probe_margin, nprobes / max(len(q), 1), t1 - t0, t2 - t1, time.perf_counter() - t2)
    if not out_i:
        return no_candidates()
    return np.concatenate(out_i), np.concatenate(out_j)


@SEARCH_METHODS.register("ivf")
class IVFSearch:
    """The IVF join for pair search; ``IndexIVFFlat`` (lists trained the same way, ``nprobe`` set) for lookups."""

    exact = False

    def self_candidates(self, x: np.ndarray, thr: float, opts: SearchOptions, progress: bool):
        return ivf_join(x, x, thr, True, opts, progress)

    def cross_candidates(self, q: np.ndarray, b: np.ndarray, thr: float, opts: SearchOptions, progress: bool):
        return ivf_join(q, b, thr, False, opts, progress)

    def build_index(self, x: np.ndarray, opts: SearchOptions):
        f = faiss()
        n, d = x.shape
        if n == 0:
            raise ValueError("an ivf index needs at least one row to train on")
        nl = max(1, min(int(opts.nlist or default_nlist(n)), n))
        quant = f.IndexFlatIP(d)
        index = f.IndexIVFFlat(quant, d, nl, f.METRIC_INNER_PRODUCT)
        quant.add(train_centroids(x, nl, opts.seed))
        index.is_trained = True
        index.nprobe = int(max(1, min(nl, opts.nprobe or default_nprobe(nl))))
        return add_rows(index, x)
