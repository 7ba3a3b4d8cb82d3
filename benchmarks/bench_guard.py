"""Guard pHash lookup: queries/s at N indexed pHashes, the old NumPy XOR+popcount scan vs the faiss binary index.

The base is N synthetic uniformly random 64-bit codes (the scale is what is measured; random codes are the
worst case for neither method: both are exhaustive). Queries: stored codes with a few bits flipped. One query at a
time and batches of 64; k = 5 (the guard's default top_k). Both answers are checked equal before timing.

    python benchmarks/bench_guard.py [--n 1000000] [--seconds 3]
"""

from __future__ import annotations

import argparse
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


def rate(fn, q: np.ndarray, batch: int, seconds: float) -> float:
    done, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        b = q[i % len(q): i % len(q) + batch]
        if len(b) < batch:
            b = q[:batch]
        fn(b)
        done += len(b)
        i += batch
    return done / (time.perf_counter() - t0)


def main() -> None:
    from auditor.guard.lookup import Guard

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--k", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    base = rng.integers(0, np.iinfo(np.uint64).max, size=a.n, dtype=np.uint64, endpoint=True)
    flips = np.zeros(640, dtype=np.uint64)
    for b in range(3):
        flips |= np.uint64(1) << rng.integers(0, 64, size=640).astype(np.uint64)
    q = base[rng.integers(0, a.n, size=640)] ^ flips
    g = Guard.__new__(Guard)  # only the pHash lookup: no run folder needed
    g.phash, g._phash_index, g._build_lock = base, None, threading.Lock()
    t = time.perf_counter()
    _ = g.phash_index
    build = time.perf_counter() - t
    for (r1, d1), (r2, d2) in zip(old_scan(base, q[:64], a.k), g._phash_neighbours(q[:64], a.k)):
        # same distances; rows differ only among ties at the k-th distance, which argpartition picked arbitrarily
        # (the faiss path takes the lowest rows, as a full lexsort does)
        assert d1.tolist() == d2.tolist() and set(r1[d1 < d1[-1]]) == set(r2[d2 < d2[-1]])
    import faiss

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus visible, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
          f"numpy {np.__version__}; N={a.n:,} random 64-bit pHashes, k={a.k}; faiss index build {build:.2f} s")
    print("| batch | old NumPy scan q/s | faiss IndexBinaryFlat q/s | ratio |")
    print("|---|---|---|---|")
    for batch in (1, 64):
        old = rate(lambda b: old_scan(base, b, a.k), q, batch, a.seconds)
        new = rate(lambda b: g._phash_neighbours(b, a.k), q, batch, a.seconds)
        print(f"| {batch} | {old:,.1f} | {new:,.1f} | {new / old:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
