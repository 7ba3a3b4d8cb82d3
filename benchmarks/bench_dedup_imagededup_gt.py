"""auditor's hash signals vs imagededup's own methods on imagededup's own test images and naming-convention
ground truth (``../shared/data/neardup/imagededup``: UKBench photos with hflip / resize / rotation / gray copies,
ten distinct base photos as negatives, and a corrupt file).

    python benchmarks/bench_dedup_imagededup_gt.py      # writes benchmarks/results/dedup_imagededup_gt.{json,md}

imagededup's ``evaluation_files/ground_truth.json`` names copies (ukbench08976_rotation.jpg, ...) that its test
data does not ship, so the set is assembled from the files that exist: ``base_images/`` + the copies of
ukbench00120 in ``mixed_images/`` + ``ukbench00120_gray.jpg`` + ``mixed_images/ukbench09268_corrupt.jpg``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import cpu_model  # noqa: E402

from auditor.dedup.config import DedupConfig  # noqa: E402
from auditor.evaluation.benchmark_set import imagededup_folder_ground_truth  # noqa: E402
from auditor.evaluation.run import EvalSet, evaluate_auditor, evaluate_imagededup  # noqa: E402

SRC = REPO.parent / "shared" / "data" / "neardup" / "imagededup"


def assemble(dst: Path) -> None:
    for p in sorted((SRC / "base_images").glob("*.jpg")):
        shutil.copy(p, dst / p.name)
    for name in ("ukbench00120_hflip.jpg", "ukbench00120_resize.jpg", "ukbench00120_rotation.jpg",
                 "ukbench09268_corrupt.jpg"):
        shutil.copy(SRC / "mixed_images" / name, dst / name)
    shutil.copy(SRC / "ukbench00120_gray.jpg", dst / "ukbench00120_gray.jpg")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        assemble(root)
        gt = imagededup_folder_ground_truth(root)  # corrupt file left out of the truth, still in the folder
        files = sorted(gt)
        groups, seen = [], set()
        for f in files:
            if f not in seen:
                g = [f] + gt[f]
                seen.update(g)
                groups.append(g)
        original_of = {c: g[0] for g in groups for c in g[1:]}
        transform_of = {c: Path(c).stem.partition("_")[2] for c in original_of}
        es = EvalSet(files, root, groups, transform_of, original_of)
        aud = evaluate_auditor(es, max_distance=32)
        idd = evaluate_imagededup(es, methods=("PHash", "DHash"), max_distance=32)
    t = DedupConfig().phash_max_distance

    def at(report, thr):
        row = next(r for r in report["sweep"] if r["threshold"] == thr)
        return row

    out = {"date": date.today().isoformat(), "machine": f"{cpu_model()}", "images": es.n,
           "true_pairs": int(len(es.true_keys)), "default_phash_max_distance": t,
           "auditor": aud, "imagededup": idd}
    res_dir = REPO / "benchmarks" / "results"
    (res_dir / "dedup_imagededup_gt.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    lines = [f"# imagededup's own test images ({es.n} images, {len(es.true_keys)} true pairs), {out['date']}, "
             f"{out['machine']}", "",
             "| method | threshold | precision | recall | " + " | ".join(sorted(es.by_transform)) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(es.by_transform)]
    for name, rep in (("auditor pHash", aud["phash"]), ("auditor dHash", aud["dhash"]),
                      ("imagededup PHash", idd["PHash"]), ("imagededup DHash", idd["DHash"])):
        r = at(rep, t)
        per = " | ".join(f"{r['per_transform_recall'].get(k, float('nan')):.2f}" for k in sorted(es.by_transform))
        lines.append(f"| {name} | {t} | {r['precision']:.3f} | {r['recall']:.3f} | {per} |")
    lines += ["", "Recall counts the 10 pairs within the ukbench00120 group (original, gray, hflip, resize, rotation); the "
              "corrupt file is not an image and is left out of the set (the index records such files as errors)."]
    (res_dir / "dedup_imagededup_gt.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
