"""Probe detectors on real photos: a photo vs its JPEG / resized / cropped copies (detected) and vs other
photos (not); the consistency detector on noisy copies of one photo vs different photos; calibration."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from auditor.probe.detectors import (DETECTORS, ConsistencyDetector, CopyDescriptorDetector, TiledL2Detector,
                                     calibrate_threshold, largest_clique, pairwise_tiled_l2, tile_distances,
                                     tiled_l2, to_float)


def _jpeg(im: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _crop(im: Image.Image, frac: float) -> Image.Image:
    w, h = im.size
    dx, dy = int(w * frac), int(h * frac)
    return im.crop((dx, dy, w - dx, h - dy))


@pytest.fixture(scope="module")
def photos(kodak):
    return [Image.open(p).convert("RGB") for p in kodak[:8]]


def test_registry_names():
    assert {"tiled_l2", "copy_descriptor", "consistency"} <= set(DETECTORS.names())


def test_tiled_l2_definition_matches_direct_formula(photos):
    a, b = to_float(photos[0]), to_float(_jpeg(photos[0], 40))
    tiles = tile_distances(a, b, grid=4)
    # tile (1, 2) of a 4x4 grid of a 512x768 image: rows 128..256, cols 384..576
    direct = np.sqrt(((a[128:256, 384:576] - b[128:256, 384:576]).astype(np.float64) ** 2).mean())
    assert tiles[1 * 4 + 2] == pytest.approx(direct, rel=1e-9)
    assert tiled_l2(a, b) == pytest.approx(tiles.max())
    assert tiled_l2(a, a) == 0.0


def test_copies_are_verbatim_other_photos_are_not(photos):
    det = TiledL2Detector(delta=0.15)
    for i, ref in enumerate(photos):
        w, h = ref.size
        for copy in (_jpeg(ref, 50), ref.resize((w // 2, h // 2), Image.BICUBIC), _jpeg(ref.resize((w // 3, h // 3)), 75)):
            d = det.compare(copy, [photos[(i + 1) % len(photos)], ref], ref_ids=[f"p{(i + 1) % len(photos)}", f"p{i}"])
            assert d.verdict == "verbatim", (i, d.score)
            assert d.evidence["ref_index"] == 1 and d.score <= 0.15
        others = [p for j, p in enumerate(photos) if j != i]
        d = det.compare(ref, others, ref_ids=[f"p{j}" for j in range(len(photos)) if j != i])
        assert d.verdict == "none", (i, d.score)
        assert d.score > 0.2


def test_template_when_part_of_the_image_matches(photos):
    ref, other = photos[1], photos[2].resize(photos[1].size)
    w, h = ref.size
    mixed = ref.copy()
    mixed.paste(other.crop((0, 0, w, h // 4)), (0, 0))  # top quarter replaced: 12 of 16 tiles still match
    d = TiledL2Detector(delta=0.15, template_fraction=0.5).compare(mixed, [ref], ref_ids=["r"])
    assert d.verdict == "template"
    assert d.evidence["tile_fraction"] == pytest.approx(12 / 16)
    assert d.score > 0.15


def test_reference_center_crop_to_generation_aspect(photos):
    # a square "generation" of a 3:2 training photo, as Stable Diffusion's center-cropped training saw it
    ref = photos[3]
    w, h = ref.size
    s = min(w, h)
    gen = ref.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((256, 256), Image.BICUBIC)
    assert TiledL2Detector(reference_crop="center").compare(gen, [ref], ["r"]).verdict == "verbatim"
    squashed = TiledL2Detector(reference_crop="none").compare(gen, [ref], ["r"])
    assert squashed.verdict != "verbatim" and squashed.score > 0.15


def _descriptor_onnx(path):
    """A crude global copy descriptor as an ONNX graph: 8x8 average pooling of a 64x64 input, channel mean,
    flatten, minus its mean (64 dims). Robust to JPEG, resizing and small crops; different photos differ."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("ReduceMean", ["p", "ax1"], ["g"], keepdims=1),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("ReduceMean", ["f", "ax1"], ["m"], keepdims=1),
        helper.make_node("Sub", ["f", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "descriptor", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        initializer=[helper.make_tensor("ax1", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_copy_descriptor_from_index_detects_crops(tmp_path, kodak):
    """The index's own embedder (here an ONNX descriptor) rebuilt from index.json: crop/JPEG copies of an
    indexed photo reach the copy threshold against its stored embedding; other photos do not."""
    runner = pytest.importorskip("auditor.index.runner")
    from auditor.config import load_config
    from auditor.index.store import IndexStore

    data = tmp_path / "data"
    data.mkdir()
    for p in kodak[:6]:
        (data / p.name).write_bytes(p.read_bytes())
    onnx_path = _descriptor_onnx(tmp_path / "desc.onnx")
    cfg = load_config(overrides=["index.workers=0", "index.progress=false", "index.embedder.name=onnx",
                                 f"index.embedder.checkpoint={onnx_path}", "index.embedder.image_size=64",
                                 "index.embedder.device=cpu"])
    runner.run_index(str(data), tmp_path / "run", cfg)
    store = IndexStore(tmp_path / "run")
    det = CopyDescriptorDetector.from_index(store, threshold=0.85, device="cpu")
    assert det is not None and det.describe["name"] == "onnx"
    table = store.table(columns=["key", "shard"])
    emb = np.asarray(store.embeddings(), dtype=np.float32)
    ims = {k: Image.open(data / k).convert("RGB") for k in table["key"]}
    keys = list(table["key"])
    for i, k in enumerate(keys):
        src = ims[k]
        copies = [_crop(src, 0.03), _crop(src, 0.05), _jpeg(src, 30)]
        dets = det.compare_embedded(det.embed_fn(copies), emb)
        for d in dets:
            assert d.verdict == "template" and d.evidence["ref_index"] == i, (k, d.score)
        others = np.delete(emb, i, axis=0)
        dets = det.compare_embedded(det.embed_fn([src]), others)
        assert dets[0].verdict == "none", (k, dets[0].score)


def test_no_copy_descriptor_without_embedder(tmp_path, kodak):
    runner = pytest.importorskip("auditor.index.runner")
    from auditor.config import load_config
    from auditor.index.store import IndexStore

    data = tmp_path / "d"
    data.mkdir()
    (data / kodak[0].name).write_bytes(kodak[0].read_bytes())
    runner.run_index(str(data), tmp_path / "run", load_config(overrides=["index.workers=0", "index.progress=false",
                                                                    "index.embedder.name=none"]))
    assert CopyDescriptorDetector.from_index(IndexStore(tmp_path / "run")) is None


def _noisy(im: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    a = np.asarray(im, dtype=np.float32) / 255.0 + rng.normal(0, sigma, (im.size[1], im.size[0], 3))
    return Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))


def test_consistency_clique_on_noisy_copies_vs_different_photos(photos, imagenet):
    rng = np.random.default_rng(0)
    base = photos[4].resize((256, 256), Image.BICUBIC)
    copies = [_noisy(base, rng, 0.05) for _ in range(12)]
    different = [Image.open(p).convert("RGB").resize((256, 256)) for p in random.Random(0).sample(imagenet, 12)]
    det = ConsistencyDetector(threshold=0.15, k=10)
    # memorized prompt: 12 noisy copies among 12 unrelated images -> clique of exactly the 12 copies
    gens = different[:6] + copies + different[6:]
    d = det.detect(gens)
    assert d.verdict == "template" and d.score == 12
    assert d.evidence["clique"] == list(range(6, 18))
    # a non-memorized prompt: all different -> no clique
    d = det.detect(different)
    assert d.verdict == "none" and d.score == 1
    # pairwise distances are the tiled L2 of each pair
    dist = pairwise_tiled_l2(gens[:3])
    assert dist[0, 1] == pytest.approx(tiled_l2(to_float(gens[0]), to_float(gens[1])), rel=1e-6)


def test_largest_clique_exact_and_calibration():
    d = np.full((6, 6), 1.0)
    for i, j in [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (3, 5), (4, 5), (2, 4), (2, 5)]:
        d[i, j] = d[j, i] = 0.1
    np.fill_diagonal(d, 0)
    assert largest_clique(d, 0.15) == [2, 3, 4, 5]
    null = np.arange(100, dtype=float)
    thr = calibrate_threshold(null, 0.05)
    assert np.mean(null > thr) <= 0.05 and np.mean(null >= thr) > 0.0
    thr = calibrate_threshold(null, 0.05, higher_is_positive=False)
    assert np.mean(null < thr) <= 0.05
