"""Copy-detection accuracy on a code-built benchmark of real held-out photos: auditor (default, hash-only, the copy
descriptor alone, its hash signals) and imagededup (PHash, DHash) in the same run, at pair precision >= 0.99.

The set (:func:`auditor.evaluation.benchmark_set.build_benchmark_set`): ``--originals`` photos of imagenet-256 +
Kodak + imagededup's UKBench base images each get one copy per transform (JPEG, resize, crops 5-30 % and 25 %,
hflip, rotation 2-10 deg and 90 deg, text/watermark, badge, colour jitter, pad, img2dataset border and
center_crop, crop+resize+JPEG), every other of those photos is an untouched distractor; ``--small-originals``
32-px CIFAR-10 test photos each get 1-2 px crops (kept, resized back, JPEG) and a JPEG re-save, with
``--small-distractors`` further CIFAR photos. No image comes from tiny-imagenet-200, the copy descriptor's
training photos. Then :func:`auditor.evaluation.accuracy.run_accuracy` runs every method and writes
``OUT/dedup_accuracy.json`` and ``.md``.

    python benchmarks/bench_dedup_accuracy.py --out benchmarks/results          # ~10k images, a few minutes
    python benchmarks/bench_dedup_accuracy.py --quick --out /tmp/acc             # a few hundred images
    python benchmarks/bench_dedup_accuracy.py --set dedup.cosine_threshold=0.85  # the default run, overridden
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import cpu_model  # noqa: E402

from auditor.evaluation.accuracy import DESCRIPTOR, run_accuracy  # noqa: E402
from auditor.evaluation.benchmark_set import (  # noqa: E402
    FORMAT_VERSION, build_benchmark_set, default_sources, small_sources,
)
from auditor.evaluation.transforms import TARGET_GROUPS  # noqa: E402
from auditor.utils import package_versions, write_json, write_text  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
FULL = {"originals": 300, "distractors": -1, "small_originals": 200, "small_distractors": 3000}
QUICK = {"originals": 6, "distractors": 30, "small_originals": 4, "small_distractors": 60}


def _f(x, nd=3):
    return "–" if x is None else f"{x:.{nd}f}"


def _thr(x):
    return "–" if x is None else (f"{int(x)}" if float(x).is_integer() else f"{x:.2f}")


def _order(names) -> list:
    """auditor as a user runs it, the descriptor, auditor's hash signals, imagededup (JSON keys come back sorted)."""
    first = ("auditor default", "auditor hash-only", "auditor --embedder", "descriptor", "auditor pHash",
             "auditor dHash", "imagededup PHash", "imagededup DHash")
    return sorted(names, key=lambda n: (next((k for k, p in enumerate(first) if n.startswith(p)), 99), n))


def render_md(res: dict) -> str:
    tr = res["transforms"]
    b = res["build"]
    groups = list(TARGET_GROUPS)
    L = ["# Copy-detection accuracy (real held-out photos, code-built copies)", "",
         f"{res['date']}; {res['hardware']}; auditor `{res['git']}`, imagededup {res['versions'].get('imagededup')}. "
         f"{res['n_images']:,} images: {b['n_originals']} photo originals × {len(b['photo_transforms'])} copies + "
         f"{b['n_distractors']} untouched photo distractors (imagenet-256, Kodak, imagededup's UKBench base images), "
         f"{b['n_small_originals']} 32-px CIFAR-10-test originals × {len(b['small_transforms'])} copies + "
         f"{b['n_small_distractors']} CIFAR distractors; {res['n_copies']:,} copies, "
         f"{res['n_true_pairs']:,} true pairs; "
         f"seed {b['seed']}; wall time {res['wall_s']} s.", "",
         "**Held-out**: no image comes from `photos/tiny-imagenet-200`, the copy descriptor's training photos, "
         "nor is an imagenet-256 photo of one of its 200 classes (Tiny-ImageNet is a subset of ImageNet train). "
         "*Copy recall*: the share of (original, copy) pairs found; *pair precision*: the share of predicted pairs "
         "inside one group, over every pair of the folder (distractors included). auditor default / hash-only are "
         "`run_index` + `run_dedup` as a user runs them (every pair in a cluster is predicted; one operating "
         "point); the other rows are swept over their threshold and shown at the best one with pair precision "
         "≥ 0.99 (\"not reached\" when none is).", ""]
    for n in res["notes"]:
        L.append(f"- {n}")
    L += ["", "## Recall at pair precision ≥ 0.99", "",
          "| method | threshold | pair precision | copy recall | pair recall | " + " | ".join(groups) + " | time (s) |",
          "|---|---:|---:|---:|---:|" + "---:|" * len(groups) + "---:|"]
    for name in _order(res["methods"]):
        m = res["methods"][name]
        reach = "" if m["reaches_precision"] or m["kind"] != "sweep" else " (0.99 not reached)"
        L.append(f"| {name}{reach} | {_thr(m['threshold'])} | {_f(m['precision'])} | **{_f(m['copy_recall'])}** | "
                 f"{_f(m['pair_recall'])} | " + " | ".join(_f(m["groups"].get(g), 2) for g in groups)
                 + f" | {res['time_s'].get(name, '–')} |")
    L += ["", "Time (s): " + ", ".join(f"{k} {v}" for k, v in res["time_s"].items())
          + f"; building the set {b['time_s']}."]
    L += ["", "## Copy recall per transform", "", "| method | " + " | ".join(tr) + " |", "|---|" + "---:|" * len(tr)]
    for name in _order(res["methods"]):
        m = res["methods"][name]
        L.append(f"| {name} | " + " | ".join(_f(m["per_transform"].get(t), 2) for t in tr) + " |")
    L += ["", "## Targets (auditor default)", "", "| target | measured | met |", "|---|---:|---|"]
    for k, v in res["targets"].items():
        L.append(f"| {k} | {_f(v['value'])} | {'yes' if v['met'] else '**no**'} |")
    for name in _order(res["reports"]):
        rep = res["reports"][name]
        if "sweep" not in rep:
            continue
        rows = rep["sweep"]
        if len(rows) > 40:  # cosine sweeps: every other step above 0.5
            rows = [r for k, r in enumerate(rows) if r["threshold"] >= 0.5 and k % 2 == 0]
        L += ["", f"## Sweep: {name}", "", "| threshold | pairs | false pairs | pair precision | copy recall | "
              + " | ".join(tr) + " |", "|---:|---:|---:|---:|---:|" + "---:|" * len(tr)]
        for r in rows:
            L.append(f"| {_thr(r['threshold'])} | {r['n_pred']} | {r['fp']} | {_f(r['precision'])} | "
                     f"{_f(r['copy_recall'])} | " + " | ".join(_f(r["per_transform"].get(t), 2) for t in tr) + " |")
    L.append("")
    return "\n".join(L)


def _git() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "auditor"], cwd=REPO, capture_output=True,
                               text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"
    return f"{sha}{'+uncommitted auditor/ changes' if dirty else ''}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared-data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--quick", action="store_true", help=f"a small set {QUICK} (for tests)")
    ap.add_argument("--originals", type=int)
    ap.add_argument("--distractors", type=int, help="photo distractors (-1: every photo that is no original)")
    ap.add_argument("--small-originals", type=int)
    ap.add_argument("--small-distractors", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for the set and the run folders (default: a temporary one)")
    ap.add_argument("--reuse-set", action="store_true", help="keep --work's set when built with the same arguments")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the auditor runs (repeatable), as `auditor --set`")
    ap.add_argument("--descriptor", default=DESCRIPTOR, help="embedder name of the copy descriptor")
    ap.add_argument("--no-imagededup", action="store_true")
    ap.add_argument("--imagededup-search", choices=("faiss", "imagededup"), default="faiss",
                    help="pairs of imagededup's hashes from faiss (same distances, seconds) or its find_duplicates")
    ap.add_argument("--out", default=str(RESULTS), help="results folder (writes NAME.json and NAME.md)")
    ap.add_argument("--name", default="dedup_accuracy")
    ap.add_argument("--note", action="append", default=[], help="a line added to the results' notes")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the existing .json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        res = json.loads((out / f"{args.name}.json").read_text(encoding="utf-8"))
        write_text(out / f"{args.name}.md", render_md(res))
        return 0
    sizes = dict(QUICK if args.quick else FULL)
    for k in sizes:
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="auditor_dedup_accuracy_"))
    t0 = time.perf_counter()
    photos = default_sources(args.shared_data)
    small = small_sources(args.shared_data)
    if len(photos) < 2 or (sizes["small_originals"] and len(small) < 2):
        print(f"auditor: error: the real photos are missing under {args.shared_data}/photos", file=sys.stderr)
        return 2
    n_dis = len(photos) - sizes["originals"] if sizes["distractors"] < 0 else sizes["distractors"]
    want = {"seed": args.seed, "n_originals": sizes["originals"], "n_distractors": n_dis,
            "n_small_originals": sizes["small_originals"], "n_small_distractors": sizes["small_distractors"]}
    gt_path = work / "set" / "ground_truth.json"
    old = json.loads(gt_path.read_text(encoding="utf-8")) if args.reuse_set and gt_path.exists() else {}
    if old and all(old.get(k) == v for k, v in want.items()) and old.get("format_version") == FORMAT_VERSION:
        gt = old  # the same set (it is deterministic for these arguments)
        print(f"reusing the set in {work / 'set'}")
    else:
        gt = build_benchmark_set(work / "set", photos, n_originals=sizes["originals"], n_distractors=n_dis,
                                 seed=args.seed, progress=True, small_sources=small,
                                 n_small_originals=sizes["small_originals"],
                                 n_small_distractors=sizes["small_distractors"])
    t_build = time.perf_counter() - t0
    if (work / "runs").exists():
        shutil.rmtree(work / "runs")  # an earlier run's index would be resumed
    res = run_accuracy(work / "set", work / "runs", overrides=args.overrides, descriptor=args.descriptor,
                       imagededup=not args.no_imagededup, imagededup_search=args.imagededup_search)
    from auditor.evaluation.transforms import SMALL_TRANSFORMS, TRANSFORMS

    res.update({
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": f"{cpu_model() or platform.processor()}, {len(os.sched_getaffinity(0))} cores usable",
        "git": _git(), "versions": package_versions(("auditor", "imagededup", "faiss-cpu", "onnxruntime", "numpy")),
        "wall_s": round(time.perf_counter() - t0, 1), "quick": args.quick, "shared_data": args.shared_data,
        "build": {"n_originals": sizes["originals"], "n_distractors": n_dis,
                  "n_small_originals": sizes["small_originals"], "n_small_distractors": sizes["small_distractors"],
                  "photo_transforms": list(TRANSFORMS), "small_transforms": list(SMALL_TRANSFORMS),
                  "seed": args.seed, "time_s": round(t_build, 1), "set_dir": str(work / "set"),
                  "errors": gt["errors"]},
    })
    res["notes"] = list(args.note) + res["notes"]
    write_json(out / f"{args.name}.json", res)
    write_text(out / f"{args.name}.md", render_md(res))
    print(f"wrote {out / args.name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
