"""The IVF join's probe rules compared without running the join: recall and work, from the list assignments alone.

A pair ``(a, b)`` is found by the join exactly when ``home(b)`` is among ``a``'s probed lists or ``home(a)`` among
``b``'s (inside a list the search is exact), and the join's work is ``sum over the (row, list) probes of
|list|`` dot products. So, on the same data, lists and ground truth as ``bench_search_paths.py`` (the truth read
from its /tmp cache, or computed and cached), this script trains the lists once per ``--nlists``, finds every
row's ``--kmax`` nearest lists once, and then scores each rule in seconds:

* ``fixed p``: the ``p`` nearest lists (today's rule, ``dedup.nprobe``);
* ``margin m / cap c``: the margin rule of ``auditor.dedup.search.ivf.probe_mask`` (list j while
  ``x.c_h - x.c_j <= m * sqrt(2 (1 - tau)) * |c_h - c_j|``), at most ``c`` lists;
* ``gap g / cap c``: the plain similarity gap ``x.c_h - x.c_j <= g`` (no centroid distance), for comparison;
* ``margin+floorF``: the margin rule, and always the ``F`` nearest lists (``dedup.probe_min``).

``--real DATA``: the real copy descriptors of ``bench_search_paths.py --real`` (every exact pair as the truth; the
default nlist 2000 becomes ``default_nlist(N)``).

``work_vs_fixed8`` is the work relative to ``fixed 8`` at the first ``--nlists`` (the join's time is that work plus
the training and assignment; confirm a chosen rule with ``bench_search_paths.py --probe-margins``).

    OMP_NUM_THREADS=2 python benchmarks/bench_ivf_probes.py --n 1000000 --tau 0.9 --cluster-cos 0.3 0.8 \\
        --planted-cos 0.85 0.995 --sample 4000 --planted-sample 8000
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
RESULTS = REPO / "benchmarks" / "results"


def nearest_lists(x, centroids, k, chunk=65_536):
    import faiss

    quant = faiss.IndexFlatIP(centroids.shape[1])
    quant.add(np.ascontiguousarray(centroids, dtype=np.float32))
    k = min(k, len(centroids))
    S = np.empty((len(x), k), np.float32)
    Ix = np.empty((len(x), k), np.int32)
    for lo in range(0, len(x), chunk):
        s, i = quant.search(np.ascontiguousarray(x[lo:lo + chunk], dtype=np.float32), k)
        S[lo:lo + chunk], Ix[lo:lo + chunk] = s, i
    return S, Ix


def score(keep, Ix, home, list_rows, a, b):
    """recall of the truth pairs (a, b) and work (dot products) of the probe mask ``keep`` [n, k]
    (``list_rows[r, t]`` = the size of row r's t-th nearest list)."""
    found = ((Ix[a] == home[b][:, None]) & keep[a]).any(1) | ((Ix[b] == home[a][:, None]) & keep[b]).any(1)
    work = int(list_rows[keep].sum(dtype=np.int64))
    return float(found.mean()), int((~found).sum()), work, float(keep.sum(1).mean())


def main(argv=None) -> int:
    from bench_dedup_scale import machine_info
    from bench_search_paths import synthetic

    from auditor.dedup.search import ivf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--cluster-cos", type=float, nargs=2, default=None)
    ap.add_argument("--planted-cos", type=float, nargs=2, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=4000)
    ap.add_argument("--planted-sample", type=int, default=8000)
    ap.add_argument("--nlists", type=int, nargs="+", default=[2000])
    ap.add_argument("--kmax", type=int, default=48)
    ap.add_argument("--nprobes", type=int, nargs="+", default=[8, 12, 16, 24, 32])
    ap.add_argument("--margins", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5])
    ap.add_argument("--gaps", type=float, nargs="*", default=[0.02, 0.04, 0.06, 0.08, 0.1])
    ap.add_argument("--caps", type=int, nargs="+", default=[16, 24, 32, 48])
    ap.add_argument("--floors", type=int, nargs="*", default=[4, 6, 8], help="margin rule + the nearest F lists always")
    ap.add_argument("--floor-margins", type=float, nargs="*", default=[0.1, 0.15, 0.2])
    ap.add_argument("--out", default=None)
    ap.add_argument("--real", default=None, help="shared data folder: bench_search_paths --real's embeddings "
                    "(cached on /tmp), every exact pair (flat search) as the truth, --tau 0.6")
    a = ap.parse_args(argv)

    if a.real:
        from bench_search_paths import cached, real_embeddings

        from auditor.dedup.search import embedding_pairs

        x = cached("real", {"data": str(Path(a.real).resolve()), "embedder": "copy"},
                   lambda: real_embeddings(Path(a.real)))
        a.n, a.dim = x.shape
        pa, pb, _ = embedding_pairs(x, a.tau, method="flat")
        desc = {"data": "real copy descriptors (bench_search_paths --real)", "truth": {"pairs": int(len(pa))}}
        a.nlists = [ivf.default_nlist(a.n) if v == 2000 else v for v in a.nlists]
    else:
        x, rows, truth, _, desc = synthetic(a)
        pa, pb = truth // a.n, truth % a.n
    info = {"benchmark": "bench_ivf_probes", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/bench_ivf_probes.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine_info(), "n": a.n, "dim": a.dim, "tau": a.tau, **desc, "rules": []}
    print(json.dumps({k: v for k, v in info.items() if k != "rules"}), flush=True)
    base_work = None
    slack1 = ivf.pair_slack(a.tau - 1e-3, 1.0)  # the join's candidate threshold is tau - MARGIN
    for nlist in a.nlists:
        t = time.perf_counter()
        cent = ivf.train_centroids(x, nlist, a.seed)
        t1 = time.perf_counter()
        S, Ix = nearest_lists(x, cent, a.kmax)
        t2 = time.perf_counter()
        home = Ix[:, 0].astype(np.int64)
        sizes = np.bincount(home, minlength=nlist).astype(np.int64)
        cd = ivf.centroid_distances(cent)
        gap = S[:, :1] - S
        CD = cd[np.broadcast_to(Ix[:, :1], Ix.shape), Ix]
        col = np.arange(Ix.shape[1])[None, :]
        print(json.dumps({"nlist": nlist, "train_s": round(t1 - t, 1), "assign_s": round(t2 - t1, 1)}), flush=True)
        list_rows = sizes.astype(np.int32)[Ix]
        caps = [c for c in a.caps if c <= Ix.shape[1]]
        rules = [("fixed", p, None, lambda p=p: np.broadcast_to(col < p, Ix.shape)) for p in a.nprobes]
        rules += [("margin", c, m, lambda m=m, c=c: (gap <= np.float32(m * slack1) * CD) & (col < c))
                  for m in a.margins for c in caps]
        rules += [("gap", c, g, lambda g=g, c=c: (gap <= np.float32(g)) & (col < c)) for g in a.gaps for c in caps]
        rules += [(f"margin+floor{f}", c, m, lambda m=m, c=c, f=f: ((gap <= np.float32(m * slack1) * CD) | (col < f))
                   & (col < c)) for f in a.floors for m in a.floor_margins for c in caps]
        for kind, cap, m, make in rules:  # one mask at a time (1M x 48 bools each)
            keep = make().copy()
            keep[:, 0] = True
            rec_, missed, work, per_row = score(keep, Ix, home, list_rows, pa, pb)
            if base_work is None and kind == "fixed" and cap == 8:
                base_work = work
            rec = {"nlist": nlist, "rule": kind, "cap": cap, "margin": m, "recall": round(rec_, 5),
                   "missed": missed, "lists_per_row": round(per_row, 2), "work_per_row": round(work / a.n, 1),
                   "work_vs_fixed8": round(work / base_work, 3) if base_work else None}
            print(json.dumps(rec), flush=True)
            info["rules"].append(rec)
        del S, Ix, gap, CD, list_rows
    Path(a.out or RESULTS / ("ivf_probes_real" if a.real else f"ivf_probes_{a.dim}d")).with_suffix(".json").write_text(json.dumps(info, indent=1),
                                                                                    encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
