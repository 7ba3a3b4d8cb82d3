"""Quick held-out copy check: cosine of copies vs non-copies on imagenet-256 photos (never trained on).

Copies use the issue's transforms (crop 10 % / 25 %, hflip, rotate 10 degrees, rotate 90, border, overlay,
JPEG q30, 32-px thumbnail). Pairs are (original, copy): positive when the copy is of that original; every
other (original, copy) and (original, original) pair is a negative. Reports recall at pair precision >= 0.99
(overall and per transform, at the one overall threshold) and that cosine threshold.

Run on a shipped ONNX::

    python training/copy_descriptor/quick_eval.py auditor/index/embedders/weights/copy_descriptor.onnx
"""

from __future__ import annotations

import io
import json
import os
import random
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

MEAN = np.asarray([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.asarray([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(img: Image.Image, size: int = 64) -> np.ndarray:
    """Exactly the index's ``ResizeNormalize(size, "resize")``: bilinear squash, /255, ImageNet mean/std."""
    img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    arr = (np.asarray(img, dtype=np.float32) / np.float32(255.0) - MEAN) / STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _crop(im, frac, rng):
    w, h = im.size
    cw, ch = int(round(w * (1 - frac))), int(round(h * (1 - frac)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return im.crop((x, y, x + cw, y + ch))


def _overlay(im, rng):
    im = im.copy()
    w, h = im.size
    d = ImageDraw.Draw(im, "RGBA")
    fs = max(8, h // 8)
    d.text((w // 20, h - fs - h // 20), "© stock-photo.example", font=ImageFont.load_default(size=fs),
           fill=(255, 255, 255, 220))
    s = max(8, w // 6)
    d.ellipse((w - s - 4, 4, w - 4, 4 + s), fill=(220, 30, 30, 255))
    d.text((w - s, 4 + s // 4), "NEW", font=ImageFont.load_default(size=max(6, s // 3)), fill=(255, 255, 255, 255))
    return im


def _jpeg(im, q):
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=q)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


TRANSFORMS = {
    "crop10": lambda im, rng: _crop(im, 0.10, rng),
    "crop25": lambda im, rng: _crop(im, 0.25, rng),
    "hflip": lambda im, rng: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "rot10": lambda im, rng: im.rotate(rng.choice([-10, 10]), Image.Resampling.BILINEAR),
    "rot90": lambda im, rng: im.transpose(Image.Transpose.ROTATE_90),
    "border": lambda im, rng: ImageOps.expand(im, border=max(4, im.size[0] // 10), fill=(255, 255, 255)),
    "overlay": _overlay,
    "jpeg30": lambda im, rng: _jpeg(im, 30),
    "small32": lambda im, rng: im.resize((32, 32), Image.Resampling.BILINEAR),
}


def held_out_photos(photo_dir: str, n: int | None = None, exclude: set[str] | None = None) -> list[str]:
    names = sorted(f for f in os.listdir(photo_dir) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    names = [f for f in names if not exclude or f not in exclude]
    return [os.path.join(photo_dir, f) for f in (names[:n] if n else names)]


def build_set(paths: list[str], seed: int = 0, size: int = 64):
    """Preprocessed originals ``[n, 3, size, size]``, copies ``[n * T, ...]``, copy owner and transform ids."""
    rng = random.Random(seed)
    orig, copies, owner, kind = [], [], [], []
    for i, p in enumerate(paths):
        im = Image.open(p).convert("RGB")
        orig.append(preprocess(im, size))
        for t, (name, fn) in enumerate(TRANSFORMS.items()):
            copies.append(preprocess(fn(im, rng), size))
            owner.append(i)
            kind.append(t)
    return np.stack(orig), np.stack(copies), np.asarray(owner), np.asarray(kind)


def recall_at_precision(scores: np.ndarray, labels: np.ndarray, precision: float = 0.99) -> tuple[float, float]:
    """Max recall over thresholds whose pair precision >= ``precision``; returns (recall, threshold)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.float64)
    tp = np.cumsum(y)
    prec = tp / np.arange(1, len(y) + 1)
    # only cut between distinct scores
    last = np.r_[s[1:] != s[:-1], True]
    ok = np.nonzero((prec >= precision) & last)[0]
    if len(ok) == 0 or y.sum() == 0:
        return 0.0, float("inf")
    k = ok[tp[ok].argmax()]
    return float(tp[k] / y.sum()), float(s[k])


def evaluate(embed, data, precision: float = 0.99) -> dict:
    """``embed``: float32 ``[n, 3, H, W]`` -> L2-normalised ``[n, d]``."""
    orig, copies, owner, kind = data
    eo, ec = embed(orig), embed(copies)
    n = len(eo)
    sc = ec @ eo.T                                      # [n*T, n]
    pos = np.zeros_like(sc, dtype=bool)
    pos[np.arange(len(ec)), owner] = True
    so = eo @ eo.T
    iu = np.triu_indices(n, 1)
    scores = np.r_[sc.ravel(), so[iu]]
    labels = np.r_[pos.ravel(), np.zeros(len(iu[0]), dtype=bool)]
    rec, thr = recall_at_precision(scores, labels, precision)
    pos_scores = sc[np.arange(len(ec)), owner]
    per = {name: float((pos_scores[kind == t] >= thr).mean()) for t, name in enumerate(TRANSFORMS)}
    neg_max = np.where(pos, -1, sc).max(axis=1)
    return {"recall": rec, "threshold": thr, "per_transform": per, "n_photos": n,
            "pos_cos_median": float(np.median(pos_scores)), "neg_cos_p999": float(np.quantile(sc[~pos], 0.999)),
            "top1_accuracy": float((pos_scores > neg_max).mean())}


def onnx_embed(path: str, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def embed(x):
        out = [sess.run(None, {name: np.ascontiguousarray(x[i:i + 64], dtype=np.float32)})[0]
               for i in range(0, len(x), 64)]
        e = np.concatenate(out).astype(np.float32)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return embed


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("onnx")
    ap.add_argument("--photos", default="../shared/data/photos/imagenet-256")
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--exclude", default=None, help="a text file of photo names to leave out (training overlap)")
    a = ap.parse_args()
    excl = set(open(a.exclude).read().split()) if a.exclude else None
    res = evaluate(onnx_embed(a.onnx), build_set(held_out_photos(a.photos, a.n, excl)))
    json.dump(res, sys.stdout, indent=1)
    print()
