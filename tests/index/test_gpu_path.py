"""The GPU index path (auditor.index.gpu), exercised on CPU: JPEG header routing, decode fallback to PIL on the
corrupt corpus with the same errors, embeddings close to the standard PIL path, the prefetching stream, and a whole
index run with ``index.gpu_decode`` whose hashes, tables and errors equal the normal index exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
pytest.importorskip("torchvision")

from auditor.config import AuditorConfig  # noqa: E402
from auditor.index.config import EmbedderConfig  # noqa: E402
from auditor.index.decode import DecodeError, decode_rgb  # noqa: E402
from auditor.index.embedders import build_embedder  # noqa: E402
from auditor.index.gpu import GpuPath, ResizeSpec, jpeg_header  # noqa: E402
from auditor.index.runner import run_index  # noqa: E402

from support.corpus import CORPUS_MAX_PIXELS, make_corrupt_corpus  # noqa: E402

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 48, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def clip_cfg(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("gpuclip")
    js = d / "auditor-gpu-tiny.json"
    js.write_text(json.dumps(TINY), encoding="utf-8")
    open_clip.add_model_config(js)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("auditor-gpu-tiny", pretrained=None).state_dict(), d / "tiny.pt")
    return {"name": "open_clip", "model": str(js), "checkpoint": str(d / "tiny.pt"), "device": "cpu",
            "precision": "fp32", "batch_size": 8}


@pytest.fixture(scope="module")
def embedder(clip_cfg):
    return build_embedder(EmbedderConfig.model_validate(clip_cfg))


def test_jpeg_header_matches_pil(imagenet, kodak, tmp_path):
    for p in imagenet[:20]:
        with Image.open(p) as im:
            assert jpeg_header(p.read_bytes()) == (im.width, im.height, len(im.getbands()))
    assert jpeg_header(kodak[0].read_bytes()) is None  # PNG
    make_corrupt_corpus(tmp_path)
    assert jpeg_header((tmp_path / "cmyk.jpg").read_bytes())[2] == 4
    assert jpeg_header((tmp_path / "gray.jpg").read_bytes())[2] == 1
    assert jpeg_header((tmp_path / "header_only.jpg").read_bytes()) is None
    assert jpeg_header(b"") is None


def test_decode_fallback_on_corrupt_corpus(tmp_path):
    exp = make_corrupt_corpus(tmp_path)
    names = sorted(exp)
    spec = ResizeSpec(32, "center_crop", "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    g = GpuPath(spec, device="cpu", max_pixels=CORPUS_MAX_PIXELS)
    images, errors = g.decode([(tmp_path / n).read_bytes() for n in names])
    for n, im, err in zip(names, images, errors):
        if exp[n]["ok"]:
            assert err is None and im is not None, n
            ref = np.asarray(decode_rgb((tmp_path / n).read_bytes(), max_pixels=CORPUS_MAX_PIXELS))
            got = im.numpy().transpose(1, 2, 0)
            assert got.shape == ref.shape and got.dtype == np.uint8, n
            # libjpeg-turbo (torchvision) vs libjpeg-turbo (Pillow): the same IDCT, the same pixels
            assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1, n
        else:
            assert im is None and isinstance(err, DecodeError), n
            assert err.reason == exp[n]["reason"], n  # the PIL path's verdict, bombs refused before decoding
    # only well-formed RGB/gray JPEGs take the batched decoder; CMYK, PNG stored as .jpg, truncated -> PIL
    assert g.stats["decode_jpeg"] == 3  # good.jpg, gray.jpg, exif_rotated.jpg
    assert g.stats["failed"] == sum(not e["ok"] for e in exp.values())
    with pytest.raises(DecodeError):
        g.prepare([(tmp_path / "good.jpg").read_bytes(), (tmp_path / "truncated.jpg").read_bytes()])


def test_embeddings_match_standard_path(embedder, imagenet, kodak):
    datas = [p.read_bytes() for p in imagenet[:24] + kodak[:2]]
    g = GpuPath.for_embedder(embedder)
    assert g.spec.size == 48 and g.spec.mode == "center_crop" and g.spec.interpolation == "bicubic"
    x = g.prepare(datas).numpy()
    ref = np.stack([embedder.preprocess(decode_rgb(b)) for b in datas]).astype(np.float32)
    assert x.shape == ref.shape == (26, 3, 48, 48)
    # antialiased bicubic in torch vs PIL's bicubic: ~0.1 grey level on average after normalisation
    assert np.abs(x - ref).mean() < 0.01
    a, b = g.embed(datas), embedder.embed(ref)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(1).min() > 0.999
    assert g.stats["pil"] == 2 * 2 and g.stats["decode_jpeg"] == 24 * 2  # prepare + embed: PNGs through PIL


def test_stream_prefetch_matches_batches(embedder, imagenet):
    g = GpuPath.for_embedder(embedder, prefetch=2)
    batches = [[p.read_bytes() for p in imagenet[i:i + 5]] for i in range(0, 20, 5)]
    batches[1][2] = b"<html>not an image</html>"
    out = list(g.stream(iter(batches)))
    assert len(out) == 4
    for (emb, errs), datas in zip(out, batches):
        good = [d for d, e in zip(datas, errs) if e is None]
        np.testing.assert_allclose(emb, g.embed(good), atol=1e-6)
    assert [e is not None for e in out[1][1]] == [False, False, True, False, False]
    assert out[1][0].shape == (4, 16)


def test_index_run_with_gpu_decode_has_identical_hashes(clip_cfg, imagenet, kodak, tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for p in imagenet[:30] + kodak[:2]:
        shutil.copy(p, d / p.name)
    (d / "z_truncated.jpg").write_bytes(imagenet[0].read_bytes()[:3000])

    def cfg(**kw):
        return AuditorConfig.model_validate({"index": {"progress": False, "workers": 0, "embedder": clip_cfg,
                                                       "reader": {"folder_shard_size": 12}, **kw}})

    std = run_index(d, tmp_path / "std", cfg())
    gpu = run_index(d, tmp_path / "gpu", cfg(gpu_decode=True, workers=2))
    pd.testing.assert_frame_equal(gpu.table(), std.table())  # sha256, pixel hash, pHash, dHash, sizes, ...
    pd.testing.assert_frame_equal(gpu.errors(), std.errors())
    assert list(gpu.errors()["key"]) == ["z_truncated.jpg"]
    a, b = gpu.embeddings().astype(np.float32), std.embeddings().astype(np.float32)
    assert a.shape == b.shape == (32, 16)
    assert (a * b).sum(1).min() > 0.998  # float16 storage
    assert gpu.info["embedder"]["gpu_decode"]["decoder"] == "libjpeg-turbo"
    assert gpu.info["config"]["gpu_decode"] is True and std.info["config"]["gpu_decode"] is False
