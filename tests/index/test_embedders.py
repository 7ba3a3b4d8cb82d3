"""Embedders: none / open_clip (tiny config, no download) / sscd (TorchScript) / onnx (onnxruntime).

Checks shapes, L2 norms, determinism, checkpoint round trips, parity of the weight-free preprocessing with
the libraries' own transforms, picklability into spawned workers, and the one clear error for missing weights.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from auditor.index.config import EmbedderConfig  # noqa: E402
from auditor.index.embedders import (  # noqa: E402
    EMBEDDERS, EmbedderWeightsError, ResizeNormalize, build_embedder, build_preprocess,
)
from auditor.utils import file_sha256  # noqa: E402

TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def photos(kodak, imagenet):
    ims = [Image.open(p).convert("RGB") for p in kodak[:3] + imagenet[:3]]
    ims.append(Image.open(kodak[0]).convert("RGB").resize((37, 91)))  # odd portrait size
    return ims


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    p = tmp_path_factory.mktemp("oc") / "auditor-tiny-clip.json"
    p.write_text(json.dumps(TINY), encoding="utf-8")
    return str(p)


def _assert_unit_rows(v, n, dim):
    assert v.shape == (n, dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_registry_names():
    assert set(EMBEDDERS.names()) == {"none", "copy", "open_clip", "sscd", "onnx"}


def test_none_embedder():
    cfg = EmbedderConfig(name="none")
    e = build_embedder(cfg)
    assert e.dim == 0 and e.describe() == {"name": "none", "dim": 0}
    assert build_preprocess(cfg) is None
    assert e.embed(np.zeros((3, 3, 8, 8), np.float16)).shape == (3, 0)


# ---------------------------------------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_embedder(tiny_json):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="randomly initialised"):
        return build_embedder(EmbedderConfig(name="open_clip", model=tiny_json))


def test_open_clip_preprocess_is_open_clips_own(tiny_json, photos, clip_embedder):
    pp = build_preprocess(EmbedderConfig(name="open_clip", model=tiny_json))
    _, _, preprocess_val = open_clip.create_model_and_transforms("auditor-tiny-clip", pretrained=None)
    for im in photos:
        x = pp(im)
        assert x.shape == (3, 32, 32) and x.dtype == np.float16
        np.testing.assert_array_equal(x, preprocess_val(im).numpy().astype(np.float16))
    # a real tag's preprocessing resolves from metadata alone (no weights anywhere on this machine)
    big = build_preprocess(EmbedderConfig(name="open_clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert big(photos[0]).shape == (3, 224, 224)
    assert big.describe()["mean"] == [0.48145466, 0.4578275, 0.40821073]


def test_open_clip_embeddings(clip_embedder, photos, tiny_json, tmp_path):
    e = clip_embedder
    batch = np.stack([e.preprocess(im) for im in photos])
    v = e.embed(batch)
    _assert_unit_rows(v, len(photos), 24)
    np.testing.assert_array_equal(v, e.embed(batch))  # deterministic
    twice = e.embed(np.stack([batch[0], batch[0]]))
    assert float(twice[0] @ twice[1]) == pytest.approx(1.0, abs=1e-6)
    assert (v @ v.T)[~np.eye(len(v), dtype=bool)].max() < 0.9999  # different photos, different vectors
    # reference: open_clip's model on the same tensor
    with torch.inference_mode():
        ref = e.model.encode_image(torch.from_numpy(batch.astype(np.float32)))
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    np.testing.assert_allclose(v, ref, atol=1e-5)
    # chunking by batch_size does not change results
    e.cfg = e.cfg.model_copy(update={"batch_size": 2})
    np.testing.assert_allclose(e.embed(batch), v, atol=1e-5)
    e.cfg = e.cfg.model_copy(update={"batch_size": 64})
    t = e.embed_texts(["a photo of a lighthouse", "", "a photo of a lighthouse"])
    _assert_unit_rows(t, 3, 24)
    np.testing.assert_allclose(t[0], t[2], atol=1e-6)
    # checkpoint round trip: saved weights load back (weights_only) and reproduce the embeddings
    ckpt = tmp_path / "tiny.pt"
    torch.save(e.model.state_dict(), ckpt)
    e2 = build_embedder(EmbedderConfig(name="open_clip", model=tiny_json, checkpoint=str(ckpt)))
    np.testing.assert_allclose(e2.embed(batch), v, atol=1e-6)
    d = e2.describe()
    assert d["checkpoint_sha256"] == file_sha256(ckpt) and d["weights"] == "pretrained" and d["dim"] == 24
    assert d["preprocess"]["kind"] == "open_clip" and d["model"] == tiny_json
    json.dumps(d)  # goes into index.json


def test_open_clip_missing_weights_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached, ever
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(EmbedderWeightsError, match=r"not available locally.*index\.embedder\.checkpoint=PATH"):
        build_embedder(EmbedderConfig(name="open_clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    with pytest.raises(EmbedderWeightsError, match="no pretrained tag 'laion9b'.*laion2b_s34b_b79k"):
        build_embedder(EmbedderConfig(name="open_clip", model="ViT-B-32", pretrained="laion9b"))
    with pytest.raises(EmbedderWeightsError, match="needs weights: set index.embedder.pretrained=TAG"):
        build_embedder(EmbedderConfig(name="open_clip", model="ViT-B-32"))
    with pytest.raises(EmbedderWeightsError, match="checkpoint file not found"):
        build_embedder(EmbedderConfig(name="open_clip", model="ViT-B-32", checkpoint=str(tmp_path / "nope.bin")))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_preprocess(EmbedderConfig(name="open_clip", model="ViT-Q-99"))


# ---------------------------------------------------------------------------------------------------------
# SSCD (TorchScript)
# ---------------------------------------------------------------------------------------------------------
class _TinyDescriptor(torch.nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, dim)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def sscd_file(tmp_path_factory):
    torch.manual_seed(1)
    m = _TinyDescriptor().eval()
    p = tmp_path_factory.mktemp("sscd") / "tiny_sscd.torchscript.pt"
    torch.jit.script(m).save(str(p))
    return str(p), m


def test_resize_normalize_matches_torchvision(photos):
    from torchvision import transforms as T

    norm = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    for size in (64, 33):
        ref_sq = T.Compose([T.Resize([size, size]), T.ToTensor(), norm])
        ref_cc = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), norm])
        for im in photos:
            a = ResizeNormalize(size, "resize")(im)
            b = ResizeNormalize(size, "center_crop")(im)
            assert a.shape == b.shape == (3, size, size) and a.dtype == np.float16
            np.testing.assert_array_equal(a, ref_sq(im).numpy().astype(np.float16))
            np.testing.assert_array_equal(b, ref_cc(im).numpy().astype(np.float16))


def test_sscd_embedder(sscd_file, photos, tmp_path):
    path, module = sscd_file
    cfg = EmbedderConfig(name="sscd", checkpoint=path, image_size=64, batch_size=3)
    e = build_embedder(cfg)
    assert e.dim == 16
    batch = np.stack([e.preprocess(im) for im in photos])
    assert batch.shape == (len(photos), 3, 64, 64)
    v = e.embed(batch)
    _assert_unit_rows(v, len(photos), 16)
    np.testing.assert_array_equal(v, e.embed(batch))
    with torch.no_grad():
        ref = torch.nn.functional.normalize(module(torch.from_numpy(batch.astype(np.float32))), dim=-1).numpy()
    np.testing.assert_allclose(v, ref, atol=1e-5)
    twice = e.embed(np.stack([batch[2], batch[2]]))
    assert float(twice[0] @ twice[1]) == pytest.approx(1.0, abs=1e-6)
    d = e.describe()
    assert d["checkpoint_sha256"] == file_sha256(path) and d["preprocess"]["size"] == 64
    json.dumps(d)
    # a state dict (pickle) is refused with a clear message, never unpickled as a model
    sd = tmp_path / "state_dict.pt"
    torch.save(module.state_dict(), sd)
    with pytest.raises(RuntimeError, match="not a TorchScript file"):
        build_embedder(cfg.model_copy(update={"checkpoint": str(sd)}))
    with pytest.raises(EmbedderWeightsError, match="sscd_disc_mixup.torchscript.pt.*index.embedder.checkpoint=PATH"):
        build_embedder(EmbedderConfig(name="sscd"))
    with pytest.raises(EmbedderWeightsError, match="checkpoint file not found"):
        build_embedder(EmbedderConfig(name="sscd", checkpoint=str(tmp_path / "missing.pt")))


# ---------------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------------
def _tiny_onnx(path, size=None, batch=None, seed=2):
    """Conv(3->8, k3, s2) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(8->12), built with onnx.helper;
    returns the weights for a torch reference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, 8).astype(np.float32)
    fw = rng.normal(0, 0.3, (12, 8)).astype(np.float32)
    fb = rng.normal(0, 0.1, 12).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["emb"], transB=1),
    ]
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch or "n", 3, size or "h", size or "w"])
    out = helper.make_tensor_value_info("emb", TensorProto.FLOAT, [batch or "n", 12])
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fw, "fw"), (fb, "fb"))]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [inp], [out], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w, b, fw, fb


def _torch_ref(batch, w, b, fw, fb):
    x = torch.from_numpy(batch.astype(np.float32))
    y = torch.relu(torch.nn.functional.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), stride=2)).mean(dim=(2, 3))
    y = y @ torch.from_numpy(fw).T + torch.from_numpy(fb)
    return torch.nn.functional.normalize(y, dim=-1).numpy()


def test_onnx_embedder(tmp_path, photos):
    dyn = tmp_path / "dynamic.onnx"
    weights = _tiny_onnx(dyn)
    cfg = EmbedderConfig(name="onnx", checkpoint=str(dyn), image_size=48, resize_mode="center_crop",
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), device="cpu")
    e = build_embedder(cfg)
    assert e.dim == 12
    batch = np.stack([e.preprocess(im) for im in photos])
    assert batch.shape == (len(photos), 3, 48, 48)
    v = e.embed(batch)
    _assert_unit_rows(v, len(photos), 12)
    np.testing.assert_array_equal(v, e.embed(batch))
    np.testing.assert_allclose(v, _torch_ref(batch, *weights), atol=1e-5)
    assert e.describe()["checkpoint_sha256"] == file_sha256(dyn)
    # a model exported with a fixed batch of 1 and a static 48x48 input still embeds a batch
    fixed = tmp_path / "fixed.onnx"
    _tiny_onnx(fixed, size=48, batch=1)
    ef = build_embedder(cfg.model_copy(update={"checkpoint": str(fixed)}))
    np.testing.assert_allclose(ef.embed(batch), v, atol=1e-6)
    # static input size mismatch: one clear error naming the setting to change
    with pytest.raises(RuntimeError, match=r"expects 48x48.*index\.embedder\.image_size=48"):
        build_embedder(cfg.model_copy(update={"checkpoint": str(fixed), "image_size": 64}))
    with pytest.raises(EmbedderWeightsError, match="onnx embedder: no checkpoint given"):
        build_embedder(EmbedderConfig(name="onnx"))


# ---------------------------------------------------------------------------------------------------------
# preprocessing in worker processes
# ---------------------------------------------------------------------------------------------------------
def test_preprocess_pickles_into_spawned_workers(tiny_json, sscd_file, photos):
    cfgs = [
        EmbedderConfig(name="open_clip", model=tiny_json),
        # a real tag: the transform is built from metadata, no weights exist on this machine
        EmbedderConfig(name="open_clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k"),
        EmbedderConfig(name="sscd", checkpoint=sscd_file[0], image_size=40),
        EmbedderConfig(name="onnx", checkpoint="/does/not/exist.onnx", image_size=40, resize_mode="center_crop"),
    ]
    pps = [build_preprocess(c) for c in cfgs]
    for pp in pps:
        assert len(pickle.dumps(pp)) < 4096  # configuration only, never weights
    im = photos[-1]
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        remote = [pool.submit(pp, im).result(timeout=300) for pp in pps]
    for pp, r in zip(pps, remote):
        np.testing.assert_array_equal(r, pp(im))
