"""Ship a trained descriptor: copy the ONNX into the package, calibrate its cosine threshold on held-out
photos, write ``copy_descriptor.json`` beside it (seed, config, data sha256, training time, calibration).

    python training/copy_descriptor/finalize.py [--train-dir .train]

Calibration: ``quick_eval`` on every imagenet-256 photo not found among the training images
(``overlap_imagenet256.json``, from ``overlap_check.py``): recall at pair precision >= 0.99 and its threshold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import quick_eval  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
WEIGHTS = os.path.join(REPO, "auditor", "index", "embedders", "weights")


KEYS1 = ("config", "steps_done", "total_steps", "train_seconds", "wall_seconds", "stopped_by", "augment_p",
         "schedule_refits", "measured_steps_per_s")


def stage1(info: dict):
    """The run a stage started from (``train.py --init DIR/last.pt``), from the train_info.json beside it."""
    if not info.get("init"):
        return None
    f = os.path.join(os.path.dirname(os.path.join(REPO, info["init"])), "train_info.json")
    if not os.path.isfile(f):
        return {"init": info["init"], "train_info": "missing"}
    prev = json.load(open(f))
    return {k: prev[k] for k in KEYS1 if k in prev}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-dir", default=os.path.join(REPO, ".train"))
    ap.add_argument("--photos", default=os.path.join(REPO, "..", "shared", "data", "photos", "imagenet-256"))
    a = ap.parse_args()
    info = json.load(open(os.path.join(a.train_dir, "train_info.json")))
    src = os.path.join(a.train_dir, "copy_descriptor.onnx")
    dst = os.path.join(WEIGHTS, "copy_descriptor.onnx")
    os.makedirs(WEIGHTS, exist_ok=True)
    shutil.copyfile(src, dst)
    ov = json.load(open(os.path.join(HERE, "overlap_imagenet256.json")))
    excluded = sorted(r["photo"] for r in ov["overlaps"])
    paths = quick_eval.held_out_photos(a.photos, exclude=set(excluded))
    ev = quick_eval.evaluate(quick_eval.onnx_embed(dst), quick_eval.build_set(paths, seed=0))
    out = {
        "model": "auditor copy descriptor (SSCD-style, trained by the project)",
        "onnx_sha256": hashlib.sha256(open(dst, "rb").read()).hexdigest(),
        "onnx_bytes": os.path.getsize(dst),
        "input": {"size": 64, "resize": "bilinear squash", "mean": list(quick_eval.MEAN.tolist()),
                  "std": list(quick_eval.STD.tolist()), "layout": "float32 [n, 3, 64, 64]"},
        "output": {"dim": info["config"]["model"]["dim"], "l2_normalised": True},
        "training": {k: info[k] for k in ("seed", "config", "data_sha256", "n_images", "params", "macs", "torch",
                                          "python", "machine", "planned_steps", "total_steps", "steps_done",
                                          "train_seconds", "wall_seconds", "stopped_by", "onnx_max_abs_diff",
                                          "init", "augment_p", "schedule_refits") if k in info},
        "training_stage1": stage1(info),
        "calibration": {"precision_target": 0.99, "cosine_threshold": ev["threshold"], "recall": ev["recall"],
                        "per_transform_recall": ev["per_transform"], "photos": ev["n_photos"],
                        "set": "imagenet-256 minus training overlap", "excluded_photos": excluded,
                        "transforms": list(quick_eval.TRANSFORMS), "top1_accuracy": ev["top1_accuracy"],
                        "pos_cos_median": ev["pos_cos_median"], "neg_cos_p999": ev["neg_cos_p999"]},
    }
    with open(os.path.join(WEIGHTS, "copy_descriptor.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps(out["calibration"], indent=1))


if __name__ == "__main__":
    main()
