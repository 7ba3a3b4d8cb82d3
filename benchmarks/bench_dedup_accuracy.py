"""Accuracy of the perceptual-hash near-duplicate signals on a code-built benchmark of real photos, side by side
with imagededup.

Builds the set with :func:`auditor.evaluation.benchmark_set.build_benchmark_set` from ../shared/data/photos
(imagenet-256 + kodak): ``--originals`` photos each get one copy per transform (JPEG q30-95, resize, crop 5-30 %,
horizontal flip, rotation, text/watermark, colour jitter, img2dataset border / center_crop, crop+resize+JPEG),
``--distractors`` further photos are negatives. Then :func:`auditor.evaluation.run.evaluate` scores auditor's
pHash / dHash / "any signal" (and an embedding signal if ``--embeddings file.npy`` rows are aligned with the set's
images) and imagededup's PHash / DHash / AHash / WHash, and writes benchmarks/results/dedup_accuracy.{json,md}.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_dedup_accuracy.py``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auditor.evaluation.benchmark_set import build_benchmark_set, default_sources  # noqa: E402
from auditor.evaluation.run import evaluate, recommend_threshold  # noqa: E402
from auditor.utils import write_json, write_text  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def _f(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def _t(x):
    return "-" if x is None else (f"{int(x)}" if float(x).is_integer() else f"{x:.3f}")


def render_md(res: dict) -> str:
    a = res["auditor"]
    tr = res["transforms"]
    L = ["# Near-duplicate accuracy of the hash signals (real photos, code-built copies)", "",
         f"Date {res['date']}; {res['n_images']:,} images ({res['build']['n_originals']} originals x "
         f"{len(tr)} transforms + originals, {res['build']['n_distractors']} untouched distractors) from "
         "imagenet-256 + kodak, seed "
         f"{res['build']['seed']}; {res['n_true_pairs']:,} true pairs (every pair inside a group: the original "
         "and all its copies). Precision is over all pairs of the set; per-transform recall counts the "
         "(original, copy) pairs of that transform. Thresholds are Hamming distances (pair is a duplicate when "
         "distance <= t). The rule \"any\" calls a pair duplicate when pHash <= tp or dHash <= td.", "",
         "Precision here is measured against ~1k distinct photos; false positives grow with the square of the "
         "collection, so a threshold that reaches 0.99 here is an upper bound for a large crawl.", ""]
    for p in res["precisions"]:
        P = str(p)
        L += [f"## Recall at precision {p}", "",
              "| method | threshold | precision | recall (all pairs) | " + " | ".join(tr) + " |",
              "|---|---|---|---|" + "---|" * len(tr)]
        rows = [("auditor pHash", a["phash"]), ("auditor dHash", a["dhash"])]
        if "embedding" in a:
            rows.append(("auditor embedding (given)", a["embedding"]))
        for name, rep in rows:
            b = rep["recall_at_precision"][P]
            L.append(f"| {name} | {_t(b['threshold'])} | {_f(b['precision'])} | {_f(b['recall'])} | "
                     + " | ".join(_f(b["per_transform_recall"].get(t), 2) for t in tr) + " |")
        b = a["any_signal"]["recall_at_precision"][P]
        if "thresholds" in b:
            th = ", ".join(f"{k}<={v}" if v is not None else f"{k} off" for k, v in b["thresholds"].items())
            L.append(f"| auditor any ({th}) | - | {_f(b['precision'])} | {_f(b['recall'])} | "
                     + " | ".join(_f(b["per_transform_recall"].get(t), 2) for t in tr) + " |")
        for name, rep in (res.get("imagededup") or {}).items():
            b = rep["recall_at_precision"][P]
            L.append(f"| imagededup {name} | {_t(b['threshold'])} | {_f(b['precision'])} | {_f(b['recall'])} | "
                     + " | ".join(_f(b["per_transform_recall"].get(t), 2) for t in tr) + " |")
        L.append("")
    for sig in ("phash", "dhash"):
        L += [f"## auditor {sig}: sweep", "", "| t | precision | recall | " + " | ".join(tr) + " |",
              "|---|---|---|" + "---|" * len(tr)]
        for r in a[sig]["sweep"]:
            if r["threshold"] > 20:
                continue
            L.append(f"| {int(r['threshold'])} | {_f(r['precision'])} | {_f(r['recall'])} | "
                     + " | ".join(_f(r["per_transform_recall"].get(t), 2) for t in tr) + " |")
        L.append("")
    L += ["## Time (same machine, same folder, one process each)", "",
          "| method | hash / encode (s) | search (s) | total (s) |", "|---|---|---|---|",
          f"| auditor pHash+dHash (decode once, both hashes, faiss binary search for both) | "
          f"{a['time_s']['decode_hash']} | {a['time_s']['search']} | {a['time_s']['total']} |"]
    for name, rep in (res.get("imagededup") or {}).items():
        t = rep["time_s"]
        L.append(f"| imagededup {name} (one hash) | {t['encode']} | {t['search']} | {t['total']} |")
    L += ["", "## Recommendation", ""]
    rec = res["recommendation"]
    L.append(f"- `dedup.phash_max_distance: {rec['phash_max_distance']}` (highest-recall pHash threshold at "
             f"precision 0.99 on this set); dHash alone at precision 0.99: `{rec['dhash_at_0.99']}`; "
             f"\"any\" at 0.99: {rec['any_at_0.99']}.")
    L.append("- pHash and dHash are not flip invariant and lose most crops / img2dataset center_crops: an "
             "embedding signal (SSCD or CLIP) is what catches those; hashes are the cheap first pass.")
    L.append("")
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared-data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--originals", type=int, default=300)
    ap.add_argument("--distractors", type=int, default=700)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for the built set (default: a temporary folder)")
    ap.add_argument("--embeddings", default=None, help=".npy float [n_images, dim] aligned with the set's images")
    ap.add_argument("--no-imagededup", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "dedup_accuracy"))
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from an existing .json")
    args = ap.parse_args(argv)
    if args.render_only:
        import json

        out = Path(args.out)
        write_text(out.with_suffix(".md"), render_md(json.loads(out.with_suffix(".json").read_text())))
        return 0

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="auditor_dedup_accuracy_"))
    t0 = time.perf_counter()
    sources = default_sources(args.shared_data)
    build_benchmark_set(work, sources, n_originals=args.originals, n_distractors=args.distractors, seed=args.seed,
                        progress=True)
    t_build = time.perf_counter() - t0
    emb = np.load(args.embeddings, allow_pickle=False) if args.embeddings else None
    res = evaluate(work, embeddings=emb, imagededup=not args.no_imagededup, progress=True)
    res["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    res["build"] = {"n_originals": args.originals, "n_distractors": args.distractors, "seed": args.seed,
                    "time_s": round(t_build, 1), "set_dir": str(work)}
    res["env"] = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count()}
    any99 = res["auditor"]["any_signal"]["recall_at_precision"]["0.99"]
    res["recommendation"] = {
        "phash_max_distance": recommend_threshold(res["auditor"]["phash"], 0.99),
        "dhash_at_0.99": recommend_threshold(res["auditor"]["dhash"], 0.99),
        "any_at_0.99": any99.get("thresholds"),
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), res)
    write_text(out.with_suffix(".md"), render_md(res))
    print(render_md(res))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
