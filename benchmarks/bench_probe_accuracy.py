"""Probe verdict accuracy on constructed cases from real photos: the old rule and the fused verdict, same run.

Cases (:mod:`auditor.evaluation.probe_cases`, imagenet-256 photos 0-99): ``overlay`` (badge / watermark / caption
strip on one tile + JPEG q30-60: should be verbatim), ``paste`` (another photo over 20-40 %: template), ``layout``
(the photo's low frequencies + another photo's details: template), ``unrelated`` (none). Null: ``--null`` pairs of
unrelated photos 100-199, the fused thresholds calibrated on them at ``--fpr`` (:func:`auditor.probe.fusion.
calibrate`); a second, held-out set of unrelated pairs (photos 0-99) measures the false-positive rate.

Old rule (the probe before issue 15): Carlini et al.'s tiled L2 (max over 4 x 4 tiles) <= 0.15 -> verbatim; else
>= 50 % of tiles within 0.15 or copy-descriptor cosine >= 0.5 -> template; else none. New rule: the fused verdict.
Both with the shipped ``copy`` descriptor.

    python benchmarks/bench_probe_accuracy.py --out benchmarks/results            # 40 cases per kind
    python benchmarks/bench_probe_accuracy.py --cases 10 --out /tmp/pa            # quick
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import cpu_model  # noqa: E402

from auditor.evaluation.probe_cases import EXPECTED, load_photos, make_case, null_pairs, pair_signals  # noqa: E402
from auditor.probe.config import ProbeConfig  # noqa: E402
from auditor.probe.fusion import calibrate, fired, null_of  # noqa: E402

SHARED = Path(os.environ.get("AUDITOR_SHARED_DATA", REPO.parent / "shared" / "data"))


def old_rule(s) -> str:
    if s.tiled_l2 <= 0.15:
        return "verbatim"
    if s.tile_fraction >= 0.5 or (np.isfinite(s.copy_similarity) and s.copy_similarity >= 0.5):
        return "template"
    return "none"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=40, help="cases per kind (<= 50)")
    ap.add_argument("--null", type=int, default=100, help="unrelated pairs the thresholds are calibrated on")
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)

    from auditor.index.config import EmbedderConfig
    from auditor.index.embedders import build_embedder

    t0 = time.perf_counter()
    photos = load_photos(SHARED / "photos" / "imagenet-256", 200)
    emb = build_embedder(EmbedderConfig(name="copy", device="cpu"))
    cache: dict[int, np.ndarray] = {}

    def embed(ims):
        x = np.asarray(emb.embed_images(list(ims)), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def signals(pairs):
        return pair_signals(pairs, embed, cache)

    null = [null_of([s]) for s in signals(null_pairs(photos, args.null))]
    thr, note = calibrate(null, ProbeConfig(reference_fpr=args.fpr), "copy", has_copy=True)
    kinds = {k: [make_case(k, photos[:100], i) for i in range(args.cases)] for k in EXPECTED}
    kinds["unrelated (held-out)"] = [(photos[i], photos[50 + (i * 7) % 50]) for i in range(min(50, args.cases + 10))]
    rows = []
    for kind, pairs in kinds.items():
        sigs = signals(pairs)
        want = EXPECTED.get(kind, "none")
        old = [old_rule(s) for s in sigs]
        new = [fired(s, thr)[0] for s in sigs]
        rows.append({"kind": kind, "expected": want, "n": len(sigs),
                     "old": {v: old.count(v) / len(old) for v in ("verbatim", "template", "none")},
                     "new": {v: new.count(v) / len(new) for v in ("verbatim", "template", "none")}})
    wall = time.perf_counter() - t0
    res = {"date": _dt.date.today().isoformat(), "host": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                                           "python": platform.python_version()},
           "wall_s": round(wall, 1), "thresholds": thr.to_dict(), "note": note, "fpr": args.fpr,
           "null_pairs": len(null), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe_accuracy.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    lines = ["| case kind | expected | n | old rule: verbatim / template / none | fused: verbatim / template / none |",
             "|---|---|---|---|---|"]
    for r in rows:
        o, n = r["old"], r["new"]
        lines.append(f"| {r['kind']} | {r['expected']} | {r['n']} | {o['verbatim']:.2f} / {o['template']:.2f} / "
                     f"{o['none']:.2f} | {n['verbatim']:.2f} / {n['template']:.2f} / {n['none']:.2f} |")
    md = "\n".join(lines)
    (args.out / "probe_accuracy.md").write_text(md + "\n", encoding="utf-8")
    print(md)
    print(f"thresholds: {thr.to_dict()}  ({len(null)} null pairs, fpr {args.fpr}; {wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
