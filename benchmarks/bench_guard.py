"""Guard pHash lookup: queries/s at N indexed pHashes, before and after, in one run.

* ``numpy scan``: the guard's lookup before faiss (XOR + popcount over every code, k nearest; kept here only, as
  the measured peer the issue's target is against);
* ``faiss flat``: ``IndexBinaryFlat`` k-NN (``use_heap=False``, one OpenMP thread below 8 queries), the lookup
  between the two;
* ``faiss multihash``: ``IndexBinaryMultiHash`` range search at the guard's radius (the library's sub-linear
  index; tables and flips chosen exact by pigeonhole);
* ``guard (mih)``: today's ``Guard.phash_neighbours``, the exact multi-index hash of ``auditor.dedup.search.mih``
  at ``near_phash_distance``.

The base is N synthetic uniformly random 64-bit codes; queries are stored codes with 3 bits flipped (each has its
source within the radius); k = 5 (the guard's top_k), radius 10 (its near_phash_distance). The guard's verdict
needs only the pHashes within the radius, so the radius answer decides the same verdicts as the k nearest. Before
timing, the radius answers are checked equal to a brute-force scan filtered at the radius, and the faiss flat
k-NN distances to the numpy scan's. The methods are timed in interleaved rounds (one round = 8 single queries or
one batch of 64 per method), so a change in the machine's load hits them alike.

    python benchmarks/bench_guard.py [--n 1000000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import threading
import time

import numpy as np


def old_scan(phash: np.ndarray, q: np.ndarray, k: int, chunk: int = 1 << 22):
    """The guard's lookup before faiss (kept here only, as the measured peer)."""
    n = len(phash)
    out = []
    for h in q:
        best_d = np.zeros(0, dtype=np.int64)
        best_i = np.zeros(0, dtype=np.int64)
        for lo in range(0, n, chunk):
            dd = np.bitwise_count(np.bitwise_xor(phash[lo:lo + chunk], np.uint64(h))).astype(np.int64)
            kk = min(k, len(dd))
            part = np.argpartition(dd, kk - 1)[:kk]
            best_d = np.concatenate([best_d, dd[part]])
            best_i = np.concatenate([best_i, part + lo])
        order = np.lexsort((best_i, best_d))[:k]
        out.append((best_i[order], best_d[order]))
    return out


def faiss_flat(base8: np.ndarray):
    import faiss
    from threadpoolctl import threadpool_limits

    idx = faiss.IndexBinaryFlat(64)
    idx.use_heap = False
    idx.add(base8)

    def search(q: np.ndarray, k: int):
        q8 = np.ascontiguousarray(q).view(np.uint8).reshape(-1, 8)
        with threadpool_limits(1, user_api="openmp") if len(q8) < 8 else contextlib.nullcontext():
            return idx.search(q8, k)
    return search


def faiss_multihash(base8: np.ndarray, radius: int):
    import faiss

    idx = faiss.IndexBinaryMultiHash(64, 4, 16)
    idx.nflip = radius // 4   # 4 x 16 bits, radius // 4 flips: exact by pigeonhole
    idx.add(base8)

    def search(q: np.ndarray):
        lims, dist, labels = idx.range_search(np.ascontiguousarray(q).view(np.uint8).reshape(-1, 8), radius + 1)
        return [(labels[a:b], dist[a:b]) for a, b in zip(lims[:-1], lims[1:])]
    return search


def brute_radius(base: np.ndarray, h, radius: int, k: int):
    dd = np.bitwise_count(np.bitwise_xor(base, np.uint64(h))).astype(np.int64)
    near = np.flatnonzero(dd <= radius)
    want = near[np.lexsort((near, dd[near]))]
    return want[:k], dd[want[:k]], (want, dd[want])


def interleaved_rates(fns: dict, q: np.ndarray, batch: int, seconds: float) -> dict:
    """Queries/s of every function, timed round by round in turn (8 single queries or one batch per round)."""
    spent = dict.fromkeys(fns, 0.0)
    done = dict.fromkeys(fns, 0)
    per_round = 8 if batch == 1 else 1
    i, t_end = 0, time.perf_counter() + seconds * len(fns)
    while time.perf_counter() < t_end:
        for name, fn in fns.items():
            for _ in range(per_round):
                lo = (i * batch) % (len(q) - batch + 1)
                b = q[lo:lo + batch]
                t = time.perf_counter()
                fn(b)
                spent[name] += time.perf_counter() - t
                done[name] += len(b)
                i += 1
    return {name: done[name] / spent[name] for name in fns}


def main() -> None:
    import faiss

    import auditor.dedup.search.mih  # noqa: F401 - imported before the build is timed
    from auditor.guard.config import GuardConfig
    from auditor.guard.lookup import Guard

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per method and batch size")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--radius", type=int, default=10)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    base = rng.integers(0, np.iinfo(np.uint64).max, size=a.n, dtype=np.uint64, endpoint=True)
    base8 = base.view(np.uint8).reshape(-1, 8)
    flips = np.zeros(640, dtype=np.uint64)
    for b in range(3):
        flips |= np.uint64(1) << rng.integers(0, 64, size=640).astype(np.uint64)
    q = base[rng.integers(0, a.n, size=640)] ^ flips

    builds = {}
    t = time.perf_counter()
    flat = faiss_flat(base8)
    builds["faiss flat"] = time.perf_counter() - t
    t = time.perf_counter()
    fmh = faiss_multihash(base8, a.radius)
    builds["faiss multihash"] = time.perf_counter() - t
    g = Guard.__new__(Guard)  # only the pHash lookup: no run folder needed
    g.cfg = GuardConfig(near_phash_distance=a.radius, copy_phash_distance=min(4, a.radius), top_k=a.k)
    g.phash, g._phash_index, g._build_lock = base, None, threading.Lock()
    t = time.perf_counter()
    _ = g.phash_index
    builds["guard (mih)"] = time.perf_counter() - t

    check = q[:64]
    dist_flat, _ = flat(check, a.k)
    for h, (r1, d1), df, (r2, d2), mh in zip(check, old_scan(base, check, a.k), dist_flat,
                                             g.phash_neighbours(check, a.k), fmh(check)):
        assert d1.tolist() == df.astype(np.int64).tolist()  # the k-NN peers agree on distances
        want_r, want_d, (all_r, all_d) = brute_radius(base, h, a.radius, a.k)
        assert r2.tolist() == want_r.tolist() and d2.tolist() == want_d.tolist()  # guard (mih) is exact
        assert sorted(mh[0].tolist()) == sorted(all_r.tolist())  # faiss multihash is exact too
        assert len(r2) >= 1  # every query's source is within the radius
    plan = g.phash_index.widths
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus visible (load average {os.getloadavg()[0]:.1f}), faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads), numpy {np.__version__}; N={a.n:,} random 64-bit pHashes, "
          f"k={a.k}, radius {a.radius}; mih tables {plan} bits; builds: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in builds.items()))
    fns = {
        "numpy scan": lambda b: old_scan(base, b, a.k),
        "faiss flat": lambda b: flat(b, a.k),
        "faiss multihash": fmh,
        "guard (mih)": lambda b: g.phash_neighbours(b, a.k),
    }
    print("| batch | " + " | ".join(f"{k} q/s" for k in fns) + " | guard (mih) / numpy scan |")
    print("|---|" + "---|" * (len(fns) + 1))
    for batch in (1, 64):
        r = interleaved_rates(fns, q, batch, a.seconds)
        print(f"| {batch} | " + " | ".join(f"{v:,.1f}" for v in r.values())
              + f" | **{r['guard (mih)'] / r['numpy scan']:.0f}x** |", flush=True)


if __name__ == "__main__":
    main()
