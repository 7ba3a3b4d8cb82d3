"""Per-partition costs of the on-disk partitioned near-duplicate search (auditor.dedup.partitioned).

Data: the clustered synthetic 512-d float16 embeddings of benchmarks/bench_dedup_scale.py (``make_embeddings``:
N // 100 topic clusters, 3 % planted near-duplicates at cosine 0.85..0.995), threshold tau = 0.9.

For each size:

* build: k-means centroids on a sample, top-``k`` assignment, partition files written (seconds, bytes on disk);
* search: exact per-partition search, single-threaded (``threads=1``), on every partition when
  ``N <= --full-max``, else on a seeded random sample of ``--sample-parts`` partitions; the per-partition cost is
  fitted as ``seconds = c * rows^2`` (the flat search is quadratic in the partition size) and the whole search is
  extrapolated as ``sum_p c * rows_p^2`` over all partitions (measured where run in full);
* recall: ``--recall-queries`` random rows range-searched exactly against all N rows (faiss IndexFlatIP); since
  the search inside a partition is exact, a true pair is found iff its two rows share an assigned partition, so
  recall is measured from the assignments (and checked against the search output where it ran in full).

Writes benchmarks/results/partitioned.{json,md}. Run:
``OMP_NUM_THREADS=1 python benchmarks/bench_partitioned.py --sizes 100000 1000000``.
"""

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


def run_size(n: int, args, tmp: Path) -> dict:
    import faiss

    from auditor.dedup.partitioned import build_partitions, default_nparts, partitioned_pairs

    D = _dedup_bench()
    rec: dict = {"n": n, "d": args.d, "tau": args.tau, "k": args.k, "target_rows": args.target_rows}
    t = time.perf_counter()
    x = D.make_embeddings(n, args.d, args.seed)
    rec["gen_s"] = round(time.perf_counter() - t, 1)
    nparts = default_nparts(n, args.k, args.target_rows)
    out = tmp / f"parts_{n}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    idx = build_partitions(x, out, nparts=nparts, k=args.k, seed=args.seed)
    rec["build_s"] = round(time.perf_counter() - t, 2)
    rec["train_s"], rec["assign_write_s"] = idx.manifest["train_s"], idx.manifest["assign_write_s"]
    rows = np.array(idx.part_rows())
    rec["nparts"] = int(len(rows))
    rec["part_rows"] = {"min": int(rows.min()), "median": int(np.median(rows)), "p90": int(np.quantile(rows, 0.9)),
                        "max": int(rows.max()), "mean": round(float(rows.mean()), 1)}
    rec["disk_bytes"] = _dir_bytes(out)
    rec["disk_bytes_per_vector"] = round(rec["disk_bytes"] / n, 1)
    print(f"[{n}] built {len(rows)} partitions in {rec['build_s']} s, {rec['disk_bytes'] / 2 ** 20:.0f} MiB",
          flush=True)

    full = n <= args.full_max
    rng = np.random.default_rng(args.seed)
    pids = list(range(len(rows))) if full else sorted(rng.choice(len(rows), size=min(args.sample_parts, len(rows)),
                                                                  replace=False).tolist())
    t = time.perf_counter()
    i, j, s, stats = partitioned_pairs(idx, args.tau, threads=1, partitions=pids)
    rec["search_wall_s"] = round(time.perf_counter() - t, 2)
    rec["searched_parts"] = len(pids)
    rec["per_partition"] = stats
    r2 = np.array([st["rows"] ** 2 for st in stats], dtype=np.float64)
    sec = np.array([st["seconds"] for st in stats])
    c = float((sec * r2).sum() / (r2 * r2).sum())  # least squares through the origin
    rec["cost_fit"] = {"c_seconds_per_row2": c, "seconds_per_partition_of_20k_rows": round(c * 20_000 ** 2, 3)}
    rec["search_1core_s_extrapolated"] = round(c * float((rows.astype(np.float64) ** 2).sum()), 1)
    if full:
        rec["search_1core_s_measured"] = round(float(sec.sum()), 1)
        rec["pairs"] = int(len(i))

    # recall from the assignments (exact within partitions)
    queries = np.sort(rng.choice(n, size=min(args.recall_queries, n), replace=False))
    t = time.perf_counter()
    truth = exact_pairs_of(x, queries, args.tau)
    rec["bruteforce_sample_s"] = round(time.perf_counter() - t, 1)
    cent = np.load(out / "centroids.npy")
    quant = faiss.IndexFlatIP(cent.shape[1])
    quant.add(cent)
    involved = np.unique(truth.reshape(-1))
    _, A = quant.search(np.ascontiguousarray(x[involved], dtype=np.float32), args.k)
    pos = {int(r): a for r, a in zip(involved, A)}
    shared = np.array([bool(set(pos[int(a)]) & set(pos[int(b)])) for a, b in truth], dtype=bool)
    rec["recall_pairs"] = int(len(truth))
    rec["recall"] = round(float(shared.mean()) if len(truth) else 1.0, 5)
    if full:
        found = set(zip(i.tolist(), j.tolist()))
        got = np.array([(min(a, b), max(a, b)) in found for a, b in truth], dtype=bool)
        rec["recall_from_search"] = round(float(got.mean()) if len(truth) else 1.0, 5)
    print(f"[{n}] {json.dumps({k: v for k, v in rec.items() if k != 'per_partition'})}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--target-rows", type=int, default=20_000)
    ap.add_argument("--full-max", type=int, default=200_000)
    ap.add_argument("--sample-parts", type=int, default=12)
    ap.add_argument("--recall-queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", type=Path, default=None)
    args = ap.parse_args()

    D = _dedup_bench()
    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="bench_partitioned_"))
    res = {"date": _dt.date.today().isoformat(), "machine": D.machine_info(), "threads_per_partition": 1,
           "sizes": []}
    for n in args.sizes:
        res["sizes"].append(run_size(n, args, tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "partitioned.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    m = res["machine"]
    lines = [f"# Partitioned near-duplicate search: per-partition costs ({res['date']})", "",
             f"Machine: {m['cpu_model']} ({m['cpu_count']} cores visible, shared with other jobs); faiss "
             f"{m['faiss_version']}; one thread per partition. Data: bench_dedup_scale's clustered 512-d float16 "
             f"embeddings with 3 % planted near-duplicates; tau = {args.tau}; each row in its top-{args.k} "
             f"partitions of ~{args.target_rows:,} rows.", "",
             "| N | partitions | rows/partition median (max) | build s | disk B/vector | searched | s per 20k-row "
             "partition | search, 1 core, s | recall |",
             "|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in res["sizes"]:
        pr = r["part_rows"]
        search = (f"{r['search_1core_s_measured']} measured" if "search_1core_s_measured" in r
                  else f"{r['search_1core_s_extrapolated']} extrapolated")
        lines.append(f"| {r['n']:,} | {r['nparts']} | {pr['median']:,} ({pr['max']:,}) | {r['build_s']} | "
                     f"{r['disk_bytes_per_vector']} | {r['searched_parts']} | "
                     f"{r['cost_fit']['seconds_per_partition_of_20k_rows']} | {search} | {r['recall']} |")
    lines += ["", "Recall: share of the exact pairs (cos >= tau) of "
              f"{args.recall_queries} random query rows, found by brute force over all N rows, whose rows share a "
              "partition (the search inside a partition is exact, so these are exactly the pairs returned; where "
              "the search ran in full, `recall_from_search` in the JSON confirms it).", ""]
    (RESULTS / "partitioned.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    if args.tmp is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
