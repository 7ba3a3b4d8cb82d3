"""Per-partition costs and pair recall of the on-disk partitioned near-duplicate search
(auditor.dedup.partitioned).

Data: the clustered synthetic 512-d float16 embeddings of benchmarks/bench_dedup_scale.py (``make_embeddings``:
N // 100 topic clusters, 3 % planted near-duplicates at cosine 0.85..0.995), threshold tau = 0.9.

For each size:

* build: k-means centroids on a sample, each row stored in its home partition (~``--target-rows`` stored rows per
  partition) and written as a probe row of the partitions its margin rule selects (``--margin``,
  ``--max-probes``); seconds, bytes on disk;
* search: exact per-partition search, single-threaded (``threads=1``), on every partition when
  ``N <= --full-max``, else on a seeded random sample of ``--sample-parts`` partitions; the per-partition cost is
  fitted as ``seconds = c * stored * (stored + probe rows)`` (flat search of all queries against the stored rows)
  and the whole search is extrapolated as the sum of that over all partitions (measured where run in full);
* recall: ``--recall-queries`` uniformly sampled rows range-searched exactly against all N rows (faiss
  IndexFlatIP, ``--truth-threads``); since the search inside a partition is exact, a true pair ``(a, b)`` is found
  iff ``home(b)`` is among ``a``'s probes or ``home(a)`` among ``b``'s, so recall is measured from the assignments
  (and checked against the search output where it ran in full). The same truth gives, from assignments only, the
  recall / probe-row trade-off for a sweep of margins, at the built partition count and at ``--sweep-rows``
  (smaller partitions: more of them), and the recall of the previous design (each row stored in its top-2
  partitions of the same ~``--target-rows`` rows) for reference.

Writes benchmarks/results/partitioned.{json,md}. Run:
``OMP_NUM_THREADS=1 python benchmarks/bench_partitioned.py --sizes 100000 1000000``."""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"


def _dedup_bench():
    spec = importlib.util.spec_from_file_location("bench_dedup_scale", REPO / "benchmarks" / "bench_dedup_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def exact_pairs_of(x: np.ndarray, queries: np.ndarray, tau: float, block: int = 200_000):
    """All (q, j != q) with x[q] . x[j] >= tau, exact (faiss flat range search, float32)."""
    import faiss

    q = np.ascontiguousarray(x[queries], dtype=np.float32)
    out = []
    for lo in range(0, len(x), block):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(np.ascontiguousarray(x[lo:lo + block], dtype=np.float32))
        lims, _, labels = index.range_search(q, float(tau) - 1e-3)
        qi = np.repeat(queries, np.diff(lims).astype(np.int64))
        bj = labels.astype(np.int64) + lo
        sim = np.einsum("ij,ij->i", x[qi].astype(np.float32), x[bj].astype(np.float32), dtype=np.float32)
        m = (sim >= np.float32(tau)) & (qi != bj)
        out.append(np.stack([qi[m], bj[m]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def _found(probes_a: np.ndarray, probes_b: np.ndarray) -> np.ndarray:
    """Pairs the partitioned search finds: home(b) among a's probes or home(a) among b's (column 0 = home)."""
    return (probes_a == probes_b[:, :1]).any(1) | (probes_b == probes_a[:, :1]).any(1)


def _probe_all(x: np.ndarray, assign, block: int = 131_072) -> np.ndarray:
    return np.concatenate([assign(x[lo:lo + block]) for lo in range(0, len(x), block)])


def margin_sweep(x, truth, centroids, tau, margins, max_probes) -> list[dict]:
    """Recall and probe rows per row for each margin, from the assignments (no search)."""
    from auditor.dedup.partitioned import ProbeAssigner

    out = []
    for m in margins:
        A = _probe_all(x, ProbeAssigner(centroids, tau, m, max_probes))
        home = A[:, 0]
        S = np.bincount(home, minlength=len(centroids)).astype(np.float64)
        Q = np.bincount(A[:, 1:][A[:, 1:] >= 0], minlength=len(centroids)).astype(np.float64)
        found = _found(A[truth[:, 0]], A[truth[:, 1]]) if len(truth) else np.ones(0, bool)
        out.append({"margin": m, "recall": round(float(found.mean()) if len(truth) else 1.0, 5),
                    "missed": int((~found).sum()), "probe_rows_per_row": round(float(Q.sum() / len(x)), 3),
                    "max_probes_used": int((A >= 0).sum(1).max()),
                    "work_row_pairs": float((S * (S + Q)).sum())})
    return out


def old_top2_recall(x, truth, n_parts_old: int, seed: int) -> float:
    """Recall of the previous design (each row stored in its top-2 partitions; pair found iff they share one)."""
    import faiss

    from auditor.dedup.partitioned import train_centroids

    c = train_centroids(x, n_parts_old, seed)
    quant = faiss.IndexFlatIP(c.shape[1])
    quant.add(c)
    rows = np.unique(truth.reshape(-1))
    _, A = quant.search(np.ascontiguousarray(x[rows], dtype=np.float32), 2)
    pos = np.searchsorted(rows, truth)
    a, b = A[pos[:, 0]], A[pos[:, 1]]
    return round(float((a[:, :, None] == b[:, None, :]).any((1, 2)).mean()) if len(truth) else 1.0, 5)


def run_size(n: int, args, tmp: Path) -> dict:
    import faiss

    from auditor.dedup.partitioned import ProbeAssigner, build_partitions, default_nparts, partitioned_pairs, \
        train_centroids

    D = _dedup_bench()
    rec: dict = {"n": n, "d": args.d, "tau": args.tau, "margin": args.margin, "max_probes": args.max_probes,
                 "target_rows": args.target_rows}
    t = time.perf_counter()
    x = D.make_embeddings(n, args.d, args.seed)
    rec["gen_s"] = round(time.perf_counter() - t, 1)
    nparts = default_nparts(n, args.target_rows)
    out = tmp / f"parts_{n}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    idx = build_partitions(x, out, args.tau, nparts=nparts, margin=args.margin, max_probes=args.max_probes,
                           seed=args.seed)
    rec["build_s"] = round(time.perf_counter() - t, 2)
    rec["train_s"], rec["assign_write_s"] = idx.manifest["train_s"], idx.manifest["assign_write_s"]
    rows = np.array(idx.part_rows(), dtype=np.float64)
    prow = np.array(idx.probe_rows(), dtype=np.float64)
    rec["nparts"] = int(len(rows))
    rec["part_rows"] = {"min": int(rows.min()), "median": int(np.median(rows)), "p90": int(np.quantile(rows, 0.9)),
                        "max": int(rows.max()), "mean": round(float(rows.mean()), 1)}
    rec["probe_rows"] = {"total": int(prow.sum()), "per_row": round(float(prow.sum() / n), 3),
                         "median": int(np.median(prow)), "max": int(prow.max())}
    idx_centroids = np.load(out / "centroids.npy")
    rec["disk_bytes"] = _dir_bytes(out)
    rec["disk_bytes_per_vector"] = round(rec["disk_bytes"] / n, 1)
    print(f"[{n}] built {len(rows)} partitions in {rec['build_s']} s, {rec['probe_rows']['per_row']} probe rows "
          f"per row, {rec['disk_bytes'] / 2 ** 20:.0f} MiB", flush=True)

    full = n <= args.full_max
    rng = np.random.default_rng(args.seed)
    pids = list(range(len(rows))) if full else sorted(rng.choice(len(rows), size=min(args.sample_parts, len(rows)),
                                                                  replace=False).tolist())
    t = time.perf_counter()
    i, j, s, stats = partitioned_pairs(idx, args.tau, threads=1, partitions=pids)
    rec["search_wall_s"] = round(time.perf_counter() - t, 2)
    rec["searched_parts"] = len(pids)
    rec["per_partition"] = stats
    w = np.array([st["rows"] * (st["rows"] + st["probe_rows"]) for st in stats], dtype=np.float64)
    sec = np.array([st["seconds"] for st in stats])
    c = float((sec * w).sum() / (w * w).sum())  # least squares through the origin
    rec["cost_fit"] = {"c_seconds_per_row_pair": c,
                       "seconds_per_20k_stored_rows_per_probe_row_ratio_1": round(c * 20_000 * 40_000, 3),
                       "seconds_per_partition_mean": round(float(sec.mean()), 3)}
    rec["search_1core_s_extrapolated"] = round(c * float((rows * (rows + prow)).sum()), 1)
    print(f"[{n}] searched {len(pids)} partitions in {rec['search_wall_s']} s", flush=True)
    if full:
        rec["search_1core_s_measured"] = round(float(sec.sum()), 1)
        rec["pairs"] = int(len(i))
    shutil.rmtree(out, ignore_errors=True)

    if args.ref:
        # the same partitions with probe rows stored by reference (one vector per row on disk)
        ref_dir = tmp / f"parts_{n}_ref"
        shutil.rmtree(ref_dir, ignore_errors=True)
        t = time.perf_counter()
        ridx = build_partitions(x, ref_dir, args.tau, centroids=idx_centroids, margin=args.margin,
                                max_probes=args.max_probes, seed=args.seed, probe_store="ref")
        rb = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        ri, rj, rs, rstats = partitioned_pairs(ridx, args.tau, threads=1, partitions=pids)
        rsec = np.array([st["seconds"] for st in rstats])
        rec["ref"] = {"build_s": rb, "disk_bytes": _dir_bytes(ref_dir),
                      "disk_bytes_per_vector": round(_dir_bytes(ref_dir) / n, 1),
                      "search_wall_s": round(time.perf_counter() - t, 2),
                      "seconds_per_partition_mean": round(float(rsec.mean()), 3),
                      "load_s_mean": round(float(np.mean([st["load_s"] for st in rstats])), 3),
                      "copy_load_s_mean": round(float(np.mean([st["load_s"] for st in stats])), 3),
                      "search_1core_s_extrapolated": round(c * float((rows * (rows + prow)).sum())
                                                           * float(rsec.sum() / sec.sum()), 1),
                      "same_pairs_as_copy": bool(np.array_equal(ri, i) and np.array_equal(rj, j)
                                                 and np.array_equal(rs, s))}
        if full:
            rec["ref"]["search_1core_s_measured"] = round(float(rsec.sum()), 1)
        print(f"[{n}] ref: {rec['ref']}", flush=True)
        shutil.rmtree(ref_dir, ignore_errors=True)

    # recall from the assignments (exact within partitions), on a uniform sample of query rows
    faiss.omp_set_num_threads(args.truth_threads)
    # an independent stream: default_rng(seed).choice draws the k-means training sample, and two choices of
    # nearby sizes from the same seed overlap (the 400-partition sample of 25,600 rows lay inside 30,000 queries)
    qrng = np.random.default_rng([args.seed, 0x5EED])
    queries = np.sort(qrng.choice(n, size=min(args.recall_queries, n), replace=False))
    t = time.perf_counter()
    truth = exact_pairs_of(x, queries, args.tau)
    truth = np.unique(np.sort(truth, axis=1), axis=0)  # unordered pairs with at least one sampled row
    rec["bruteforce_sample_s"] = round(time.perf_counter() - t, 1)
    rec["recall_queries"] = int(len(queries))
    cent = idx_centroids
    assign = ProbeAssigner(cent, args.tau, args.margin, args.max_probes)
    involved = np.unique(truth.reshape(-1))
    A = assign(x[involved])
    pos = np.searchsorted(involved, truth)
    found = _found(A[pos[:, 0]], A[pos[:, 1]]) if len(truth) else np.ones(0, bool)
    rec["recall_pairs"] = int(len(truth))
    rec["recall_missed"] = int((~found).sum())
    rec["recall"] = round(float(found.mean()) if len(truth) else 1.0, 5)
    if full:
        got = set(zip(i.tolist(), j.tolist()))
        rec["recall_from_search"] = round(float(np.mean([(int(a), int(b)) in got for a, b in truth]))
                                          if len(truth) else 1.0, 5)
    t = time.perf_counter()
    rec["recall_old_top2"] = old_top2_recall(x, truth, default_nparts(2 * n, args.old_rows), args.seed)
    rec["old_top2_nparts"] = default_nparts(2 * n, args.old_rows)
    rec["sweep"] = {str(len(cent)): margin_sweep(x, truth, cent, args.tau, args.sweep_margins, args.max_probes)}
    for r in args.sweep_rows:
        P = default_nparts(n, r)
        if P != len(cent) and P <= n // 20:
            rec["sweep"][str(P)] = margin_sweep(x, truth, train_centroids(x, P, args.seed), args.tau,
                                                args.sweep_margins, args.max_probes)
    faiss.omp_set_num_threads(1)
    rec["sweep_s"] = round(time.perf_counter() - t, 1)
    print(f"[{n}] {json.dumps({k: v for k, v in rec.items() if k not in ('per_partition', 'sweep')})}", flush=True)
    return rec


def render(res: dict) -> str:
    """benchmarks/results/partitioned.md from the JSON results."""
    r0 = res["sizes"][0]
    m = res["machine"]
    lines = [f"# Partitioned near-duplicate search: per-partition costs and recall ({res['date']})", "",
             f"Machine: {m['cpu_model']} ({m['cpu_count']} cores visible, shared with other jobs); faiss "
             f"{m['faiss_version']}; one thread per partition. Data: bench_dedup_scale's clustered 512-d float16 "
             f"embeddings with 3 % planted near-duplicates; tau = {r0['tau']}. Each row stored once in its home "
             f"partition (~{r0['target_rows']:,} stored rows each) and probing the partitions within margin "
             f"{r0['margin']} x sqrt(2 (1 - tau)) x |c_home - c| (at most {r0['max_probes']}).", "",
             "| N | partitions | stored rows/partition median (max) | probe rows per row | build s | disk B/vector | "
             "searched | s per partition (mean) | search, 1 core, s | pairs found | recall (missed / pairs) | "
             "old top-2 recall |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in res["sizes"]:
        pr = r["part_rows"]
        search = (f"{r['search_1core_s_measured']} measured" if "search_1core_s_measured" in r
                  else f"{r['search_1core_s_extrapolated']} extrapolated")
        lines.append(f"| {r['n']:,} | {r['nparts']} | {pr['median']:,} ({pr['max']:,}) | "
                     f"{r['probe_rows']['per_row']} | {r['build_s']} | {r['disk_bytes_per_vector']} | "
                     f"{r['searched_parts']} | {r['cost_fit']['seconds_per_partition_mean']} | {search} | "
                     f"{format(r['pairs'], ',') if 'pairs' in r else '-'} | "
                     f"{r['recall']} ({r['recall_missed']} / {r['recall_pairs']}) | {r['recall_old_top2']} |")
    lines += ["", "Per-partition costs (min / median / max over the searched partitions; the fit is seconds = c x stored x "
              "(stored + probe rows)):", "",
              "| N | stored rows | probe rows | candidates | load s | seconds | c, s per row pair |",
              "|---:|---|---|---|---|---|---:|"]
    for r in res["sizes"]:
        pp = r["per_partition"]

        def mmm(key, fmt="{:,}"):
            v = np.array([st[key] for st in pp])
            return " / ".join(fmt.format(x) for x in (v.min(), np.median(v), v.max()))

        lines.append(f"| {r['n']:,} | {mmm('rows', '{:,.0f}')} | {mmm('probe_rows', '{:,.0f}')} | "
                     f"{mmm('candidates', '{:,.0f}')} | {mmm('load_s', '{:.3f}')} | {mmm('seconds', '{:.2f}')} | "
                     f"{r['cost_fit']['c_seconds_per_row_pair']:.3g} |")
    if any("ref" in r for r in res["sizes"]):
        lines += ["", "The same partitions with probe rows stored by reference (`probe_store=\"ref\"`: one vector per "
                  "row on disk, probe vectors gathered from the neighbouring partitions' files at search time):", "",
                  "| N | build s | disk B/vector | s per partition (mean) | load s per partition, ref (copy) | "
                  "search, 1 core, s | same pairs as copy |", "|---:|---:|---:|---:|---|---|---|"]
        for r in res["sizes"]:
            if "ref" in r:
                f = r["ref"]
                if "search_1core_s_measured" in f:
                    rs = f"{f['search_1core_s_measured']} measured"
                elif r["searched_parts"] == r["nparts"]:  # all partitions searched (older JSON): the wall time
                    rs = f"{f['search_wall_s']} measured (wall)"
                else:
                    rs = f"{f['search_1core_s_extrapolated']} extrapolated"
                lines.append(f"| {r['n']:,} | {f['build_s']} | {f['disk_bytes_per_vector']} | "
                             f"{f['seconds_per_partition_mean']} | {f['load_s_mean']} ({f['copy_load_s_mean']}) | "
                             f"{rs} | {f['same_pairs_as_copy']} |")
    lines += ["", f"Recall: share of the exact pairs (cos >= tau) with at least one row in a uniform sample of "
              f"{r0['recall_queries']:,} query rows (all rows when N is smaller), found by brute force over all N rows, "
              "that the partitioning finds (the search inside a partition is exact, so these are exactly the pairs "
              "returned; where the search ran in full, `recall_from_search` in the JSON confirms it). Old top-2: the "
              "previous design (each row stored in its top-2 partitions of ~20k rows) on the same pairs.", "",
              "Margin sweep (from the assignments, same pairs; work = sum over partitions of stored x (stored + "
              "probe rows), per row):", "",
              "| N | partitions | margin | recall | missed | probe rows per row | work per row |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["sizes"]:
        for P, sw in r["sweep"].items():
            for e in sw:
                lines.append(f"| {r['n']:,} | {P} | {e['margin']} | {e['recall']} | {e['missed']} | "
                             f"{e['probe_rows_per_row']} | {e['work_row_pairs'] / r['n']:,.0f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    from auditor.dedup.partitioned import DEFAULT_MARGIN, DEFAULT_MAX_PROBES, DEFAULT_ROWS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    ap.add_argument("--max-probes", type=int, default=DEFAULT_MAX_PROBES)
    ap.add_argument("--target-rows", type=int, default=DEFAULT_ROWS, help="stored rows per partition")
    ap.add_argument("--full-max", type=int, default=200_000)
    ap.add_argument("--sample-parts", type=int, default=24)
    ap.add_argument("--recall-queries", type=int, default=30_000)
    ap.add_argument("--truth-threads", type=int, default=2)
    ap.add_argument("--sweep-margins", type=float, nargs="*", default=[0.0, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08])
    ap.add_argument("--sweep-rows", type=int, nargs="*", default=[20_000, 10_000, 2_500])
    ap.add_argument("--old-rows", type=int, default=20_000, help="rows per partition of the top-2 reference")
    ap.add_argument("--no-ref", dest="ref", action="store_false",
                    help="skip the probe_store='ref' build and search of the same partitions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from benchmarks/results/partitioned.json")
    args = ap.parse_args()
    if args.render:
        md = render(json.loads((RESULTS / "partitioned.json").read_text(encoding="utf-8")))
        (RESULTS / "partitioned.md").write_text(md, encoding="utf-8")
        print(md)
        return 0

    D = _dedup_bench()
    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="bench_partitioned_"))
    res = {"date": _dt.date.today().isoformat(), "machine": D.machine_info(), "threads_per_partition": 1,
           "sizes": []}
    for n in args.sizes:
        res["sizes"].append(run_size(n, args, tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "partitioned.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md = render(res)
    (RESULTS / "partitioned.md").write_text(md, encoding="utf-8")
    print(md)
    if args.tmp is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
