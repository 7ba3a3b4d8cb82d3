"""Scale benchmark of the embedding near-duplicate search (auditor.dedup.search.embedding_pairs).

Data: clustered synthetic 512-d unit vectors (float16, as the index stores them) with planted near-duplicates.

* ``N // 100`` "topic" clusters; each cluster has its own spread so that the cosine between two members of a
  cluster ranges from about 0.3 (loose) to 0.8 (tight), as for CLIP image embeddings of one concept.
* 3 % of the rows are replaced by perturbed copies of other rows (several copies of one source form a group),
  at a cosine to their source drawn uniformly in [0.85, 0.995]: many pairs sit close to the threshold tau=0.9
  on both sides, which is where an approximate search loses recall.

For each size the measured quantities are:

* the IVF join (``method="ivf"``): wall time, peak RSS of the process (each size runs in its own subprocess so
  ``ru_maxrss`` is that size's peak), number of pairs;
* exact recall: a random sample of query rows is range-searched exactly against all N rows with faiss
  ``IndexFlatIP`` (brute force); every pair (q, j) with cos >= tau counts, and recall is the share of them the
  IVF join returned;
* brute-force time: the same faiss flat range search, timed on that sample and extrapolated linearly to all N
  query rows (brute force is N identical row scans, so the extrapolation is exact up to noise); it is also
  measured outright at the sizes where that is affordable (``--full-flat-max``), with auditor's own exact
  method (``method="flat"``, which scans only the upper triangle and so costs half of a plain flat search).

``benchmarks/bench_search_paths.py`` times the IVF join against faiss's own IVF paths (``IndexIVFFlat.range_search``,
``faiss.contrib.big_batch_search``) on these vectors, with one shared recall check, and on real copy descriptors.

Writes benchmarks/results/dedup_scale.{json,md}. Run:
``OMP_NUM_THREADS=2 python benchmarks/bench_dedup_scale.py --sizes 10000 100000 1000000``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def make_embeddings(n: int, d: int = 512, seed: int = 0, dup_frac: float = 0.03,
                    cos_range=(0.85, 0.995), chunk: int = 100_000, return_planted: bool = False,
                    spread_range=(0.5, 1.5)):
    """Clustered unit vectors with planted near-duplicates, float16 [n, d]; deterministic for a seed.
    With ``return_planted`` also the rows that were replaced by near-copies (sorted). ``spread_range``: the
    per-cluster noise scale s (intra-cluster cosine ~ 1 / (1 + s^2)); the default gives 0.3-0.8."""
    rng = np.random.default_rng(seed)
    k = max(1, n // 100)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # noise scale s per cluster: intra-cluster cosine ~ 1 / (1 + s^2), from ~0.8 (s=0.5) to ~0.3 (s=1.5)
    spread = rng.uniform(*spread_range, size=k).astype(np.float32)
    label = rng.integers(0, k, size=n)
    out = np.empty((n, d), dtype=np.float16)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        g = rng.standard_normal((hi - lo, d), dtype=np.float32) / np.float32(np.sqrt(d))
        x = centres[label[lo:hi]] + spread[label[lo:hi], None] * g
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[lo:hi] = x
    ndup = int(round(n * dup_frac))
    if ndup and n > 1:
        perm = rng.permutation(n)
        dst, pool = perm[:ndup], perm[ndup:]
        src = pool[rng.integers(0, len(pool), size=ndup)]
        cos = rng.uniform(*cos_range, size=ndup).astype(np.float32)
        t = np.sqrt(1.0 / cos ** 2 - 1.0)
        for lo in range(0, ndup, chunk):
            hi = min(ndup, lo + chunk)
            base = out[src[lo:hi]].astype(np.float32)
            g = rng.standard_normal((hi - lo, d), dtype=np.float32)
            g -= (g * base).sum(1, keepdims=True) * base  # orthogonal to the source: cos(src, dup) == cos exactly
            g /= np.linalg.norm(g, axis=1, keepdims=True)
            x = base + t[lo:hi, None] * g
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[dst[lo:hi]] = x
    else:
        dst = np.zeros(0, np.int64)
    return (out, np.sort(dst)) if return_planted else out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_info() -> dict:
    import faiss

    from common import cpu_model

    model = cpu_model()

    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss_version": faiss.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_point(n: int, d: int, tau: float, seed: int, sample: int, full_flat_max: int,
              nlist: int | None, nprobe: int | None) -> dict:
    import faiss

    from auditor.dedup import search as S

    rec: dict = {"n": n, "d": d, "tau": tau, "seed": seed}
    t0 = time.perf_counter()
    x, planted = make_embeddings(n, d, seed, return_planted=True)
    rec["gen_s"] = round(time.perf_counter() - t0, 2)
    rec["data_mb_float16"] = round(x.nbytes / 2 ** 20, 1)
    rss_data = _peak_rss_mb()

    # --- the IVF join
    nl = int(nlist or S.default_nlist(n))
    npb = int(nprobe or S.default_nprobe(nl))
    t0 = time.perf_counter()
    i, j, s = S.embedding_pairs(x, tau, method="ivf", seed=seed, nlist=nl, nprobe=npb)
    rec["ivf"] = {"time_s": round(time.perf_counter() - t0, 2), "pairs": int(len(i)), "nlist": nl, "nprobe": npb}
    rec["peak_rss_mb_after_ivf"] = round(_peak_rss_mb(), 1)
    rec["peak_rss_mb_data_only"] = round(rss_data, 1)
    rec["auto_method"] = S.resolve_method(n, "auto")

    # --- brute force on a sample of query rows: ground truth + timing.
    # Sample = `sample` rows drawn uniformly (unbiased recall) + `sample // 2` planted copies (more true pairs
    # per query: a tighter estimate where the pairs are).
    rng = np.random.default_rng(seed + 1)
    m_rand = min(n, sample)
    rand_rows = np.sort(rng.choice(n, size=m_rand, replace=False))
    planted_rows = np.sort(rng.choice(planted, size=min(len(planted), sample // 2), replace=False))
    qrows = np.concatenate([rand_rows, planted_rows])
    m = len(qrows)
    t_sample = 0.0
    res_q, res_b = [], []
    q = x[qrows].astype(np.float32)
    for lo in range(0, n, 65_536):  # blocked over the base so memory stays small; same work as one index
        block = x[lo:lo + 65_536].astype(np.float32)
        t0 = time.perf_counter()
        index = faiss.IndexFlatIP(d)
        index.add(block)
        lims, _, labels = index.range_search(q, float(tau) - 1e-3)
        t_sample += time.perf_counter() - t0
        res_q.append(np.repeat(np.arange(m), np.diff(lims).astype(np.int64)))
        res_b.append(labels.astype(np.int64) + lo)
    del index, block
    qpos, bj = np.concatenate(res_q), np.concatenate(res_b)
    qi = qrows[qpos]
    keep = qi != bj
    qi, bj, qpos = qi[keep], bj[keep], qpos[keep]
    # exact float32 dot, as embedding_pairs defines similarity
    sim = np.einsum("ij,ij->i", x[qi].astype(np.float32), x[bj].astype(np.float32))
    keep = sim >= np.float32(tau)
    qi, bj, qpos = qi[keep], bj[keep], qpos[keep]
    found = set(zip(i.tolist(), j.tolist()))

    def _recall(sel):
        truth = {(int(min(a, b)), int(max(a, b))) for a, b in zip(qi[sel], bj[sel])}
        hit = sum(p in found for p in truth)
        return len(truth), hit, (round(hit / len(truth), 5) if truth else None)

    t_r, h_r, r_r = _recall(qpos < m_rand)
    t_p, h_p, r_p = _recall(qpos >= m_rand)
    t_a, h_a, r_a = _recall(np.ones(len(qpos), bool))
    rec["recall"] = {
        "sample_queries": m,
        "random_queries": m_rand, "true_pairs_random": t_r, "found_random": h_r, "pair_recall_random": r_r,
        "planted_queries": int(len(planted_rows)), "true_pairs_planted": t_p, "found_planted": h_p,
        "pair_recall_planted": r_p,
        "true_pairs_in_sample": t_a, "found": h_a, "pair_recall": r_a,
    }
    brute_extrap = t_sample * n / m
    rec["brute_force"] = {
        "method": "faiss IndexFlatIP.range_search of every row against all N rows (base in 64k blocks)",
        "sample_queries": m,
        "sample_time_s": round(t_sample, 2),
        "extrapolated_full_s": round(brute_extrap, 1),
        "extrapolated": m < n,
        "speedup_ivf_vs_brute": round(brute_extrap / rec["ivf"]["time_s"], 1),
        # an upper-triangle exact search (auditor's method="flat") does half the work of the plain search
        "speedup_ivf_vs_half_brute": round(0.5 * brute_extrap / rec["ivf"]["time_s"], 1),
    }
    if n <= full_flat_max:
        t0 = time.perf_counter()
        fi, fj, _ = S.embedding_pairs(x, tau, method="flat")
        tf = time.perf_counter() - t0
        exact = set(zip(fi.tolist(), fj.tolist()))
        got = set(zip(i.tolist(), j.tolist()))
        rec["flat_exact"] = {
            "time_s": round(tf, 2),
            "pairs": len(exact),
            "ivf_full_pair_recall": round(len(exact & got) / len(exact), 5) if exact else None,
            "ivf_false_pairs": len(got - exact),
            "speedup_ivf_vs_flat": round(tf / rec["ivf"]["time_s"], 1),
        }
    rec["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return rec


def write_results(records: list[dict], out_json: Path, out_md: Path, argv: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from auditor.utils import write_json, write_text

    info = {
        "benchmark": "bench_dedup_scale",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_dedup_scale.py " + " ".join(argv),
        "machine": machine_info(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",)},
        "points": records,
    }
    write_json(out_json, info)
    m = info["machine"]
    lines = [
        "# Embedding near-duplicate search at scale",
        "",
        f"Date {info['date']}; machine: {m['cpu_model']}, {m['cpu_count']} cores, faiss {m['faiss_version']} "
        f"with {m['faiss_threads']} threads (shared with other jobs: times are noisy upward).",
        "",
        "Clustered synthetic 512-d float16 unit vectors, 3 % planted near-duplicates at cosine 0.85-0.995 to "
        "their source; threshold tau = 0.9. IVF = auditor's IVF join (`embedding_pairs(method=\"ivf\")`, "
        "candidates re-verified exactly). Recall = share of the pairs with cos >= tau that involve the sampled "
        "query rows (exact faiss flat range search of those rows against all N): `--sample` rows drawn uniformly "
        "plus half as many planted copies (where the pairs are). Brute force = faiss "
        "`IndexFlatIP.range_search` of all N rows against all N, timed on the sample and extrapolated "
        "linearly (marked *extrap.*); an upper-triangle exact search would take half of it, so the "
        "conservative speed-up is shown too. Peak RSS = `ru_maxrss` of the process for that size.",
        "",
        "| N | nlist / nprobe | IVF time (s) | pairs | pair recall (sample) | brute force (s) | speed-up "
        "(vs half brute) | exact flat (s, measured) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        bf = r["brute_force"]
        fl = r.get("flat_exact")
        rc = r["recall"]
        lines.append(
            f"| {r['n']:,} | {r['ivf']['nlist']} / {r['ivf']['nprobe']} | {r['ivf']['time_s']} | "
            f"{r['ivf']['pairs']:,} | {rc['pair_recall']} ({rc['found']}/{rc['true_pairs_in_sample']}; random "
            f"rows {rc['found_random']}/{rc['true_pairs_random']}, planted rows {rc['found_planted']}/"
            f"{rc['true_pairs_planted']}) | {bf['extrapolated_full_s']}"
            f"{' extrap.' if bf['extrapolated'] else ''} | {bf['speedup_ivf_vs_brute']}x "
            f"({bf['speedup_ivf_vs_half_brute']}x) | "
            + (f"{fl['time_s']} (IVF recall of all pairs {fl['ivf_full_pair_recall']})" if fl else "-")
            + f" | {r['peak_rss_mb']} |"
        )
    lines.append("")
    write_text(out_md, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=4000, help="query rows for exact recall and brute-force timing")
    ap.add_argument("--full-flat-max", type=int, default=100_000,
                    help="also run the exact flat search outright up to this N")
    ap.add_argument("--nlist", type=int, default=None)
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--out", default=str(RESULTS / "dedup_scale"), help="output path without extension")
    ap.add_argument("--merge", action="store_true",
                    help="keep the points of an existing result file whose N is not rerun")
    ap.add_argument("--point", type=int, default=None, help=argparse.SUPPRESS)  # internal: one size, JSON to stdout
    args = ap.parse_args(argv)

    if args.point is not None:
        sys.path.insert(0, str(REPO))
        rec = run_point(args.point, args.dim, args.tau, args.seed, args.sample, args.full_flat_max,
                        args.nlist, args.nprobe)
        print("RESULT " + json.dumps(rec), flush=True)
        return 0

    records = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--point", str(n), "--dim", str(args.dim), "--tau", str(args.tau),
               "--seed", str(args.seed), "--sample", str(args.sample), "--full-flat-max", str(args.full_flat_max)]
        if args.nlist:
            cmd += ["--nlist", str(args.nlist)]
        if args.nprobe:
            cmd += ["--nprobe", str(args.nprobe)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            return proc.returncode
        rec = next(json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT "))
        rec["subprocess_wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(rec), flush=True)
        records.append(rec)
    out = Path(args.out)
    if args.merge and out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text(encoding="utf-8")).get("points", [])
        done = {r["n"] for r in records}
        records = sorted([r for r in old if r["n"] not in done] + records, key=lambda r: r["n"])
    write_results(records, out.with_suffix(".json"), out.with_suffix(".md"), argv)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
