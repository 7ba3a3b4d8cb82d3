"""Are any held-out imagenet-256 photos among the Tiny-ImageNet training images?

Tiny-ImageNet-200 is a 64-px subset of ImageNet train; imagenet-256 names carry the wnid
(``n01443537_goldfish.jpg``). Each imagenet-256 photo of a Tiny-ImageNet wnid is compared with every training
image of that wnid on 16x16 grayscale thumbnails (zero-mean, unit-norm correlation; both a full-frame squash
and a centre square crop of the photo, and their mirror images). A correlation >= ``--threshold`` is reported
as an overlap (0.9 is conservative: by eye, pairs from 0.94 up are the same photo, two of the four between
0.92 and 0.94 are not; excluding them only costs held-out photos). Writes ``overlap_imagenet256.json`` (all scores, the overlaps) beside this file.

    python training/copy_descriptor/overlap_check.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data import load_images  # noqa: E402

T = 16


def thumb(img: Image.Image) -> np.ndarray:
    a = np.asarray(img.convert("L").resize((T, T), Image.Resampling.BOX), dtype=np.float32).ravel()
    a = a - a.mean()
    return a / max(float(np.linalg.norm(a)), 1e-6)


def variants(img: Image.Image) -> list[np.ndarray]:
    w, h = img.size
    s = min(w, h)
    sq = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    out = []
    for v in (img, sq):
        out += [thumb(v), thumb(v.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", default="../shared/data/photos/tiny-imagenet-200")
    ap.add_argument("--photos", default="../shared/data/photos/imagenet-256")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "overlap_imagenet256.json"))
    a = ap.parse_args()
    images, names = load_images(a.tiny)
    wnids = np.asarray([n.split("_")[0] for n in names])
    tiny_thumbs = {}
    photos = sorted(f for f in os.listdir(a.photos) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    rows = []
    for f in photos:
        wnid = f.split("_")[0]
        idx = np.nonzero(wnids == wnid)[0]
        if len(idx) == 0:
            continue
        if wnid not in tiny_thumbs:
            tiny_thumbs[wnid] = np.stack([thumb(Image.fromarray(images[i])) for i in idx])
        v = np.stack(variants(Image.open(os.path.join(a.photos, f)).convert("RGB")))
        c = (v @ tiny_thumbs[wnid].T).max(axis=0)
        j = int(c.argmax())
        rows.append({"photo": f, "wnid": wnid, "best_train_image": names[idx[j]], "corr": round(float(c[j]), 4)})
    rows.sort(key=lambda r: -r["corr"])
    overlaps = [r for r in rows if r["corr"] >= a.threshold]
    res = {"method": __doc__.strip().splitlines()[0], "thumbnail": T, "threshold": a.threshold,
           "photos_total": len(photos), "photos_with_tiny_wnid": len(rows), "overlaps": overlaps,
           "all": rows, "corr_quantiles": {q: float(np.quantile([r["corr"] for r in rows], q))
                                                  for q in (0.5, 0.9, 0.99, 1.0)} if rows else {}}
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k not in ("all", "overlaps")}, indent=1))


if __name__ == "__main__":
    main()
