"""Embedding pair search at 1M: auditor's IVF join vs faiss's own IVF paths, on the same vectors, one recall check.

Data: ``bench_dedup_scale.make_embeddings`` (clustered unit vectors, float16 as the index stores them, 3 % planted
near-copies), with the cluster spread and the planted cosines set around the threshold ``--tau``: by default 128-d
(the shipped ``copy`` descriptor's size) at tau 0.60 (its calibrated copy threshold), intra-cluster cosine ~0.15-0.5,
planted copies at cosine 0.50-0.80 to their source, so that many true pairs sit near the threshold.

Ground truth (computed once, shared by every path): ``--sample`` uniformly drawn rows plus ``--planted-sample``
planted copies (where the pairs are), each range-searched exactly against all N rows with faiss ``IndexFlatIP``
(the base in 64k-row blocks), re-verified with the float32 dot; a path's recall is the share of those true pairs it
returns. The paths (each timed whole, training included, candidates re-verified exactly as ``embedding_pairs`` does;
with ``--peer-queries`` the faiss peers search only that many rows, and their search time is extrapolated to N):

* ``join``: ``embedding_pairs(method="ivf")``, the IVF join (one BLAS range search per list), per ``--nprobes``;
* ``ivfflat_range``: ``IndexIVFFlat`` built by the ``ivf`` strategy's ``build_index`` (the same k-means lists),
  ``range_search`` of every row (faiss's per-query list scan, OpenMP over queries);
* ``big_batch_knn``: ``faiss.contrib.big_batch_search`` (list-by-list BLAS k-NN) with ``k = --knn-k``, pairs
  thresholded; k-NN only, so rows with more than k - 1 true neighbours lose pairs.

``--real DATA`` replaces the synthetic vectors by the shipped ``copy`` descriptor's embeddings of real photos
(``DATA/photos/imagenet-256`` + ``cifar10-test``, with JPEG q25 / 80 % crop / mirror / half-size copies of every
ImageNet photo and a JPEG q30 copy of 2,000 CIFAR photos); the ground truth is then the exact flat search of all
pairs, and only the join runs.

    OMP_NUM_THREADS=2 python benchmarks/bench_search_paths.py --n 1000000 --dim 128 --tau 0.6
    OMP_NUM_THREADS=2 python benchmarks/bench_search_paths.py --real /work/shared/data --nprobes 8 12 16 32
"""

from __future__ import annotations

import argparse
import contextlib
import io
import datetime as _dt
import json
import resource
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"


def spread_for(cos_lo: float, cos_hi: float) -> tuple[float, float]:
    """The noise-scale range whose intra-cluster cosine ~ 1 / (1 + s^2) spans ``cos_lo..cos_hi``."""
    return float(np.sqrt(1 / cos_hi - 1)), float(np.sqrt(1 / cos_lo - 1))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def ground_truth(x: np.ndarray, rows: np.ndarray, tau: float, block: int = 65_536):
    """Sorted unique int64 keys ``a * n + b`` (a < b) of every pair with cos >= tau involving a row of ``rows``."""
    import faiss

    n, d = x.shape
    q = x[rows].astype(np.float32)
    keys = []
    for lo in range(0, n, block):
        index = faiss.IndexFlatIP(d)
        index.add(x[lo:lo + block].astype(np.float32))
        lims, _, labels = index.range_search(q, float(tau) - 1e-3)
        qi = rows[np.repeat(np.arange(len(rows)), np.diff(lims).astype(np.int64))]
        bj = labels.astype(np.int64) + lo
        m = qi != bj
        qi, bj = qi[m], bj[m]
        sim = np.einsum("ij,ij->i", x[qi].astype(np.float32), x[bj].astype(np.float32))
        m = sim >= np.float32(tau)
        keys.append(np.minimum(qi[m], bj[m]) * n + np.maximum(qi[m], bj[m]))
    return np.unique(np.concatenate(keys))


def cache_file(kind: str, **key) -> Path:
    """``/tmp/auditor_bench_<kind>_<hash of key>.npz``: the exact ground truth (or the real embeddings) reused
    between runs of the same data, so that a configuration costs only its own search."""
    import hashlib

    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path("/tmp") / f"auditor_bench_{kind}_{h}.npz"


def cached(kind: str, key: dict, compute):
    """``compute()`` (one array), loaded from :func:`cache_file` when there, else computed and saved."""
    path = cache_file(kind, **key)
    if path.exists():
        with np.load(path) as z:
            return z["a"]
    a = compute()
    np.savez(path, a=a)
    return a


def synthetic(a):
    """The clustered vectors, the ground-truth rows and their exact pairs of ``main``'s arguments ``a``
    (the truth cached on /tmp), with the data description for the results."""
    from bench_dedup_scale import make_embeddings

    ccos = a.cluster_cos or (max(0.05, a.tau - 0.45), a.tau - 0.1)
    pcos = a.planted_cos or (a.tau - 0.1, min(0.995, a.tau + 0.2))
    t0 = time.perf_counter()
    x, planted = make_embeddings(a.n, a.dim, a.seed, cos_range=pcos, return_planted=True,
                                 spread_range=spread_for(*ccos))
    rng = np.random.default_rng(a.seed + 1)
    rows = np.unique(np.concatenate([rng.choice(a.n, size=min(a.n, a.sample), replace=False),
                                     rng.choice(planted, size=min(len(planted), a.planted_sample), replace=False)]))
    t1 = time.perf_counter()
    key = dict(n=a.n, dim=a.dim, seed=a.seed, tau=a.tau, ccos=list(ccos), pcos=list(pcos), sample=a.sample,
               planted_sample=a.planted_sample)
    truth = cached("truth", key, lambda: ground_truth(x, rows, a.tau))
    desc = {"cluster_cos": list(ccos), "planted_cos": list(pcos), "gen_s": round(t1 - t0, 1),
            "truth": {"query_rows": int(len(rows)), "pairs": int(len(truth)),
                      "time_s": round(time.perf_counter() - t1, 1), "cache": str(cache_file("truth", **key))}}
    return x, rows, truth, rng, desc


def recall(truth: np.ndarray, i: np.ndarray, j: np.ndarray, n: int) -> dict:
    found = np.isin(truth, np.minimum(i, j).astype(np.int64) * n + np.maximum(i, j))
    return {"true_pairs": int(len(truth)), "found": int(found.sum()),
            "recall": round(float(found.mean()), 5) if len(truth) else None}


def verified(x, ci, cj, tau):
    from auditor.dedup.search.common import sort_unique, verify

    lo, hi = np.minimum(ci, cj), np.maximum(ci, cj)
    m = lo != hi
    ci, cj = sort_unique(lo[m], hi[m], len(x))
    i, j, _ = verify(x, x, ci, cj, tau)
    return i, j


def path_join(x, tau, nlist, nprobe, seed, probe_margin=None, probe_min=None):
    from auditor.dedup import search as S

    extra = {} if probe_min is None else {"probe_min": probe_min}
    i, j, _ = S.embedding_pairs(x, tau, method="ivf", seed=seed, nlist=nlist, nprobe=nprobe,
                                probe_margin=probe_margin, **extra)
    return i, j, 0.0


def join_settings(a) -> list[tuple[Optional[int], Optional[float], Optional[int]]]:
    """(nprobe, probe_margin, probe_min) of every join to time: ``--nprobes`` with the fixed rule, then
    ``--probe-margins`` with the margin rule at each cap of ``--max-probes`` (its ``nprobe``) and ``--probe-mins``."""
    return [(p, None, None) for p in a.nprobes] + [(c, m, f) for m in a.probe_margins for c in a.max_probes
                                                    for f in a.probe_mins]


def ivf_index(x, nlist, nprobe, seed):
    from auditor.dedup.search.common import SearchOptions
    from auditor.dedup.search.ivf import IVFSearch

    return IVFSearch().build_index(x, SearchOptions(seed=seed, nlist=nlist, nprobe=nprobe))


def path_ivfflat_range(x, tau, nlist, nprobe, seed, qrows):
    from auditor.dedup.search.common import MARGIN, range_search_rows

    t = time.perf_counter()
    index = ivf_index(x, nlist, nprobe, seed)
    build = time.perf_counter() - t
    qa, cj = range_search_rows(index, x[qrows], float(tau) - MARGIN, block=65_536)
    del index
    return (*verified(x, qrows[qa], cj, tau), build)


def path_big_batch_knn(x, tau, nlist, nprobe, seed, k, qrows):
    from faiss.contrib.big_batch_search import big_batch_search

    from auditor.dedup.search.common import MARGIN

    t = time.perf_counter()
    index = ivf_index(x, nlist, nprobe, seed)
    build = time.perf_counter() - t
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a progress line per list even at verbose=0
        dist, ids = big_batch_search(index, np.ascontiguousarray(x[qrows], dtype=np.float32), k,
                                     method="knn_function")
    del index
    m = (dist >= np.float32(tau - MARGIN)) & (ids >= 0)
    ci = np.repeat(qrows, m.sum(1))
    return (*verified(x, ci, ids[m].astype(np.int64), tau), build)


def real_embeddings(data: Path) -> np.ndarray:
    """The copy descriptor's float16 embeddings of real photos and their copies (module docstring)."""
    from PIL import Image, ImageOps

    from auditor.index.config import EmbedderConfig
    from auditor.index.embedders import build_embedder

    def jpeg(im, q):
        b = io.BytesIO()
        im.save(b, format="JPEG", quality=q)
        return Image.open(io.BytesIO(b.getvalue())).convert("RGB")

    emb = build_embedder(EmbedderConfig(name="copy", device="cpu"))
    inet = sorted((data / "photos" / "imagenet-256").glob("*.jpg"))
    cifar = sorted((data / "photos" / "cifar10-test").glob("*/*.jpg"))
    out = []
    for paths, copies in ((inet, "all"), (cifar, "jpeg")):
        for lo in range(0, len(paths), 500):
            ims = [Image.open(p).convert("RGB") for p in paths[lo:lo + 500]]
            extra = []
            for i, im in enumerate(ims):
                w, h = im.size
                if copies == "all":
                    extra += [jpeg(im, 25), im.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
                              ImageOps.mirror(im), im.resize((w // 2, h // 2))]
                elif lo + i < 2000:
                    extra.append(jpeg(im, 30))
            out.append(emb.embed_images(ims + extra).astype(np.float16))
    return np.concatenate(out)


def main_real(a) -> int:
    from auditor.dedup import search as S

    from bench_dedup_scale import machine_info

    t0 = time.perf_counter()
    x = cached("real", {"data": str(Path(a.real).resolve()), "embedder": "copy"},
               lambda: real_embeddings(Path(a.real)))
    n = len(x)
    t1 = time.perf_counter()
    fi, fj, _ = S.embedding_pairs(x, a.tau, method="flat")
    truth = np.unique(fi * n + fj)
    info = {"benchmark": "bench_search_paths --real", "machine": machine_info(), "n": n, "dim": int(x.shape[1]),
            "tau": a.tau, "embed_s": round(t1 - t0, 1), "flat_s": round(time.perf_counter() - t1, 1),
            "truth_pairs": int(len(truth)), "nlist": S.default_nlist(n),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "paths": []}
    print(json.dumps({k: v for k, v in info.items() if k != "paths"}), flush=True)
    for npb, margin, floor in join_settings(a):
        t = time.perf_counter()
        i, j = path_join(x, a.tau, None, npb, a.seed, margin, floor)[:2]
        rec = {"path": "join", "nprobe": npb, "probe_margin": margin, "probe_min": floor,
               "time_s": round(time.perf_counter() - t, 2), "pairs": int(len(i)), **recall(truth, i, j, n)}
        print(json.dumps(rec), flush=True)
        info["paths"].append(rec)
    Path(a.out or RESULTS / "search_paths_real").with_suffix(".json").write_text(json.dumps(info, indent=1),
                                                                                 encoding="utf-8")
    return 0


def main(argv=None) -> int:
    from bench_dedup_scale import machine_info

    from auditor.dedup.search.ivf import default_nlist

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--tau", type=float, default=0.6)
    ap.add_argument("--cluster-cos", type=float, nargs=2, default=None,
                    help="intra-cluster cosine range (default tau-0.45 .. tau-0.1)")
    ap.add_argument("--planted-cos", type=float, nargs=2, default=None,
                    help="planted copies' cosine to their source (default tau-0.1 .. tau+0.2, at most 0.995)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=4000)
    ap.add_argument("--planted-sample", type=int, default=12000)
    ap.add_argument("--nlist", type=int, default=None)
    ap.add_argument("--nprobes", type=int, nargs="*", default=[8, 12, 16])
    ap.add_argument("--probe-margins", type=float, nargs="*", default=[],
                    help="joins with the margin rule (auditor.dedup.search.ivf), capped at --max-probes lists")
    ap.add_argument("--max-probes", type=int, nargs="+", default=[None],
                    help="caps of the margin rule (default: auditor's)")
    ap.add_argument("--probe-mins", type=int, nargs="+", default=[None],
                    help="lists the margin rule always probes (default: auditor's)")
    ap.add_argument("--paths", nargs="+", default=["join", "ivfflat_range", "big_batch_knn"])
    ap.add_argument("--peer-nprobe", type=int, default=8, help="nprobe of the faiss peers")
    ap.add_argument("--knn-k", type=int, default=16)
    ap.add_argument("--peer-queries", type=int, default=None,
                    help="query rows of the faiss peers (the truth rows + uniform others; default all N): their "
                         "time is extrapolated linearly to N, their recall counts only pairs their queries find")
    ap.add_argument("--out", default=None)
    ap.add_argument("--real", default=None, help="shared data folder: real photos' copy descriptors instead")
    a = ap.parse_args(argv)
    if a.real:
        return main_real(a)
    tau = a.tau
    out = Path(a.out or RESULTS / f"search_paths_{a.dim}d")
    nlist = int(a.nlist or default_nlist(a.n))
    x, rows, truth, rng, desc = synthetic(a)
    info = {"benchmark": "bench_search_paths", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/bench_search_paths.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine_info(), "n": a.n, "dim": a.dim, "tau": tau, "nlist": nlist, **desc, "paths": []}
    print(json.dumps({k: v for k, v in info.items() if k != "paths"}), flush=True)

    if a.peer_queries and a.peer_queries < a.n:
        others = np.setdiff1d(rng.choice(a.n, size=a.peer_queries, replace=False), rows)[:a.peer_queries - len(rows)]
        peer_rows = np.unique(np.concatenate([rows, others]))
    else:
        peer_rows = np.arange(a.n, dtype=np.int64)
    info["peer_query_rows"] = int(len(peer_rows))

    def record(name, nprobe, fn, queries=a.n, margin=None, floor=None):
        t = time.perf_counter()
        i, j, build = fn()
        el = time.perf_counter() - t
        # the index build (k-means + adding all rows) is done once; only the search scales with the queries
        rec = {"path": name, "nprobe": nprobe, "probe_margin": margin, "probe_min": floor,
               "time_s": round(build + (el - build) * a.n / queries, 2), "pairs": int(len(i)),
               **recall(truth, i, j, a.n), "peak_rss_mb": round(peak_rss_mb(), 1)}
        if queries < a.n:
            rec.update(measured_s=round(el, 2), build_s=round(build, 2), query_rows=int(queries), extrapolated=True)
        print(json.dumps(rec), flush=True)
        info["paths"].append(rec)
        out.with_suffix(".json").write_text(json.dumps(info, indent=1), encoding="utf-8")

    if "ivfflat_range" in a.paths:
        record("ivfflat_range", a.peer_nprobe,
               lambda: path_ivfflat_range(x, tau, nlist, a.peer_nprobe, a.seed, peer_rows), len(peer_rows))
    if "big_batch_knn" in a.paths:
        record(f"big_batch_knn k={a.knn_k}", a.peer_nprobe,
               lambda: path_big_batch_knn(x, tau, nlist, a.peer_nprobe, a.seed, a.knn_k, peer_rows), len(peer_rows))
    if "join" in a.paths:
        for npb, margin, floor in join_settings(a):
            record("join", npb, lambda: path_join(x, tau, nlist, npb, a.seed, margin, floor), margin=margin,
                   floor=floor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
