"""The shipped copy descriptor (``--embedder copy``): it runs on onnxruntime alone, stays small and
deterministic, and on real held-out photos scores copies above its calibrated cosine threshold and unrelated
photos below it. Held-out: imagenet-256 photos minus those found among the training images
(``copy_descriptor.json`` -> ``calibration.excluded_photos``)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from auditor.index.config import EmbedderConfig
from auditor.index.embedders import EMBEDDERS, build_embedder, build_preprocess
from auditor.index.embedders.copy import IMAGE_SIZE, shipped_file, shipped_info


@pytest.fixture(scope="module")
def emb():
    return build_embedder(EmbedderConfig(name="copy"))


@pytest.fixture(scope="module")
def held_out(imagenet):
    excluded = set(shipped_info()["calibration"]["excluded_photos"])
    photos = [p for p in imagenet if p.name not in excluded]
    # every 25th photo: 40 photos of 40 different classes
    return [Image.open(p).convert("RGB") for p in photos[::25]]


def test_registered_and_shipped():
    assert "copy" in EMBEDDERS
    path = shipped_file()
    assert os.path.isfile(path)
    assert os.path.getsize(path) <= 20 * 1024 * 1024
    info = shipped_info()
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == info["onnx_sha256"]
    assert len(info["training"]["data_sha256"]) == 7  # manifest.csv + 6 tars
    assert 0.0 < info["calibration"]["cosine_threshold"] < 1.0


def test_runs_on_onnxruntime_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from PIL import Image\n"
            "from auditor.index.config import EmbedderConfig\n"
            "from auditor.index.embedders import build_embedder\n"
            "e = build_embedder(EmbedderConfig(name='copy', device='cpu'))\n"
            "v = e.embed_images([Image.new('RGB', (80, 60), (200, 30, 30))])\n"
            "assert v.shape == (1, e.dim) and abs(float(np.linalg.norm(v)) - 1) < 1e-4\n"
            "print(e.dim)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) == shipped_info()["output"]["dim"]


def test_preprocess_is_fixed_and_picklable():
    pre = build_preprocess(EmbedderConfig(name="copy", image_size=288, mean=(0, 0, 0), std=(1, 1, 1)))
    assert pickle.loads(pickle.dumps(pre)) == pre
    d = pre.describe()
    assert d["size"] == IMAGE_SIZE and d["resize_mode"] == "resize"
    np.testing.assert_allclose(d["mean"], shipped_info()["input"]["mean"], rtol=1e-6)
    np.testing.assert_allclose(d["std"], shipped_info()["input"]["std"], rtol=1e-6)


def test_deterministic_and_batch_independent(emb, held_out):
    ims = held_out[:10]
    a = emb.embed_images(ims)
    b = emb.embed_images(ims)
    assert np.array_equal(a, b)
    single = np.concatenate([emb.embed_images([im]) for im in ims])
    np.testing.assert_allclose(single, a, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert emb.describe()["shipped"] is True


def _copies(im: Image.Image) -> dict[str, Image.Image]:
    w, h = im.size
    return {
        "hflip": im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "crop10": im.crop((w // 20, h // 20, w - w // 20, h - h // 20)),
        "border": ImageOps.expand(im, border=max(4, w // 10), fill=(255, 255, 255)),
    }


def test_copies_above_threshold_unrelated_below(emb, held_out):
    thr = shipped_info()["calibration"]["cosine_threshold"]
    orig = emb.embed_images(held_out)
    sims = orig @ orig.T
    unrelated = sims[np.triu_indices(len(held_out), 1)]
    assert (unrelated < thr).mean() >= 0.995, np.sort(unrelated)[-5:]
    for name in ("hflip", "crop10", "border"):
        cop = emb.embed_images([_copies(im)[name] for im in held_out])
        pos = (cop * orig).sum(axis=1)
        assert (pos >= thr).mean() >= 0.8, (name, np.round(np.sort(pos)[:8], 3))
        # each copy is nearer its own original than any unrelated photo, for almost every photo
        assert ((cop @ orig.T).argmax(axis=1) == np.arange(len(held_out))).mean() >= 0.9, name
