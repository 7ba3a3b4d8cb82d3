"""Tiny-ImageNet-200 read straight from its tars (never copied), and the data hash recorded with the weights."""

from __future__ import annotations

import csv
import io
import os
import tarfile

import numpy as np
from PIL import Image

from auditor.utils import file_sha256

TARS = [f"train-0{i}.tar" for i in range(6)]




def data_hash(data_dir: str) -> dict:
    files = ["manifest.csv"] + TARS
    return {f: file_sha256(os.path.join(data_dir, f)) for f in files}


def load_images(data_dir: str, size: int = 64) -> tuple[np.ndarray, list[str]]:
    """All manifest images as ``uint8 [n, size, size, 3]`` in manifest order, with their file names."""
    with open(os.path.join(data_dir, "manifest.csv"), newline="") as f:
        names = [r["file"] for r in csv.DictReader(f)]
    pos = {n: i for i, n in enumerate(names)}
    arr = np.zeros((len(names), size, size, 3), dtype=np.uint8)
    seen = np.zeros(len(names), dtype=bool)
    for t in TARS:
        with tarfile.open(os.path.join(data_dir, t)) as tf:
            for m in tf:
                if not m.isfile():
                    continue
                i = pos.get(os.path.basename(m.name))
                if i is None:
                    continue
                im = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                arr[i] = np.asarray(im)
                seen[i] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} manifest images not found in the tars")
    return arr, names
