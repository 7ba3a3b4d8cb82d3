"""``auditor guard``: nearest training images for generated images, and the HTTP service.

The run folder is real: the 24 Kodak photos indexed with ``run_index`` using an ONNX embedder (a colour-layout
descriptor: 8x8 average pool of the normalised image, centred -- a genuine, weight-free image descriptor run
through the real onnxruntime embedder path) and deduplicated with ``run_dedup`` (which writes the faiss search
index the guard uses). Queries are a JPEG re-encode and a JPEG-compressed crop of indexed photos, and unrelated
ImageNet photos.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import threading
import zlib
from pathlib import Path

import pytest
from PIL import Image

from auditor.cli import main
from auditor.guard import Guard, GuardSetupError, make_server
from auditor.guard.config import GuardConfig

# thresholds for the colour-layout descriptor (a crop of 90% keeps cosine >= ~0.9; unrelated photos < ~0.75)
CFG = GuardConfig(copy_cosine=0.97, near_cosine=0.85)
SETS = ["--set", "report.guard.copy_cosine=0.97", "--set", "report.guard.near_cosine=0.85"]


def make_layout_onnx(path: Path, size: int = 64, grid: int = 8) -> None:
    import onnx
    from onnx import TensorProto, helper

    k = size // grid
    nodes = [
        helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[k, k], strides=[k, k]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["f", "m"], ["emb"]),
    ]
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, size, size])
    out = helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["n", 3 * grid * grid])
    model = helper.make_model(helper.make_graph(nodes, "colour_layout", [inp], [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    b = io.BytesIO()
    img.convert("RGB").save(b, format="JPEG", quality=quality)
    return b.getvalue()


def center_crop(img: Image.Image, frac: float) -> Image.Image:
    w, h = img.size
    dx, dy = int(w * (1 - frac) / 2), int(h * (1 - frac) / 2)
    return img.crop((dx, dy, w - dx, h - dy))


@pytest.fixture(scope="module")
def run(tmp_path_factory, kodak) -> Path:
    from auditor.config import load_config
    from auditor.dedup.runner import run_dedup
    from auditor.index.runner import run_index

    assert len(kodak) == 24
    tmp = tmp_path_factory.mktemp("guard")
    model = tmp / "colour_layout.onnx"
    make_layout_onnx(model)
    caps = tmp / "captions.csv"  # kodak has no captions; dedup wants some (a caption-less dataset is its own case)
    caps.write_text("key,caption\n" + "".join(f"{p.name},kodak photo {i}\n" for i, p in enumerate(kodak)))
    cfg = load_config(overrides=["index.workers=0", "index.progress=false", "dedup.progress=false",
                                 f"index.reader.captions_file={caps}",
                                 "index.embedder.name=onnx", f"index.embedder.checkpoint={model}",
                                 "index.embedder.image_size=64", "index.embedder.device=cpu"])
    run_dir = tmp / "run"
    run_index(str(kodak[0].parent), run_dir, cfg)
    run_dedup(run_dir, cfg)
    assert (run_dir / "dedup" / "embeddings.faiss").exists()
    return run_dir


@pytest.fixture(scope="module")
def queries(kodak, imagenet):
    k5 = Image.open(kodak[4])
    k07 = Image.open(kodak[6])
    return {
        "jpeg": jpeg_bytes(k5, 60),                                   # kodak05 re-encoded
        "crop": jpeg_bytes(center_crop(k07, 0.9), 75),                # kodak07 cropped to 90% and re-encoded
        "other": imagenet[0].read_bytes(),                             # an unrelated real photo (JPEG)
        "other2": Image.open(imagenet[1]),
    }


def _check_verdicts(guard: Guard, q, kodak):
    res = guard.check([q["jpeg"], q["crop"], q["other"], q["other2"]])
    jpeg, crop, other, other2 = res
    assert jpeg.verdict == "copy" and jpeg.reason == "phash" and jpeg.phash_distance <= 2
    assert jpeg.matches[0].key == kodak[4].name and jpeg.matches[0].verdict == "copy"
    assert crop.verdict in ("copy", "near"), crop
    assert crop.matches[0].key == kodak[6].name
    # the crop moved its pHash out of reach (no stored pHash within near_phash_distance): the embedding caught it
    assert crop.phash_distance is None
    assert crop.cosine >= CFG.near_cosine and crop.reason == "embedding"
    for o in (other, other2):
        assert o.verdict == "ok", o
        assert o.cosine < CFG.near_cosine and o.phash_distance is None
        assert len(o.matches) >= 1  # the nearest images are still reported
    assert all(len(r.matches) <= CFG.top_k for r in res)
    json.dumps([r.to_dict() for r in res])  # JSON-serialisable
    return res


def test_guard_uses_dedup_search_index(run, queries, kodak):
    g = Guard(run, CFG, device="cpu")
    assert g.source == "dedup" and g.n_indexed == 24
    _check_verdicts(g, queries, kodak)


def test_guard_without_dedup_searches_the_index(run, queries, kodak, tmp_path):
    r2 = tmp_path / "run"
    shutil.copytree(run / "index", r2 / "index")
    g = Guard(r2, CFG, device="cpu")
    assert g.source == "index"
    a = _check_verdicts(g, queries, kodak)
    b = _check_verdicts(Guard(run, CFG, device="cpu"), queries, kodak)
    assert [(r.verdict, r.matches[0].key) for r in a] == [(r.verdict, r.matches[0].key) for r in b]


def test_bad_images_are_errors_not_crashes(run, tmp_path):
    g = Guard(run, CFG, device="cpu")
    bomb = io.BytesIO()
    Image.new("L", (1, 1)).save(bomb, format="PNG")
    data = bytearray(bomb.getvalue())
    data[16:24] = (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big")  # IHDR claims 10^10 pixels
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")           # with a valid chunk CRC
    res = g.check([b"not an image", bytes(data), tmp_path / "missing.png"])
    assert [r.verdict for r in res] == ["error", "error", "error"]
    assert "too_many_pixels" in res[1].error
    # a flat image skips the pHash path (it would 'match' any flat training image)
    flat = g.check([Image.new("RGB", (64, 64), (128, 128, 128))])[0]
    assert flat.phash_distance is None and flat.verdict == "ok"


def test_guard_refuses_a_different_embedder(run, tmp_path):
    r2 = tmp_path / "run"
    shutil.copytree(run / "index", r2 / "index")
    p = r2 / "index" / "index.json"
    info = json.loads(p.read_text())
    info["embedder"]["checkpoint_sha256"] = "0" * 64
    p.write_text(json.dumps(info))
    with pytest.raises(GuardSetupError, match="checkpoint_sha256"):
        Guard(r2, CFG, device="cpu").warm_up()
    with pytest.raises(GuardSetupError, match="no index"):
        Guard(tmp_path / "nothing", CFG)


def test_cli(run, queries, tmp_path, capsys):
    paths = {}
    for name in ("jpeg", "crop", "other"):
        paths[name] = tmp_path / f"{name}.jpg"
        paths[name].write_bytes(queries[name])
    assert main(["guard", str(run), str(paths["other"]), "--json", "--device", "cpu", *SETS]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["verdict"] == "ok" and line["source"].endswith("other.jpg")
    assert main(["guard", str(run), str(paths["jpeg"]), str(paths["other"]), "--device", "cpu", *SETS]) == 1
    out = capsys.readouterr().out
    assert "copy" in out and "kodak05.png" in out
    assert main(["guard", str(run), str(paths["crop"]), "--fail-on", "near", "--device", "cpu", *SETS]) == 1
    assert main(["guard", str(tmp_path / "norun"), str(paths["jpeg"])]) == 2


def _request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_service(run, queries):
    assert GuardConfig().host == "127.0.0.1"
    guard = Guard(run, CFG.model_copy(update={"max_request_bytes": 300_000, "port": 0}), device="cpu").warm_up()
    server = make_server(guard)  # defaults from the config: 127.0.0.1, port 0 -> a free port
    assert server.server_address[0] == "127.0.0.1"
    port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        st, body = _request(port, "GET", "/healthz")
        assert st == 200 and body["indexed"] == 24 and body["embedder"] == "onnx"
        assert len(queries["jpeg"]) < 300_000
        st, body = _request(port, "POST", "/check", queries["jpeg"], {"Content-Length": str(len(queries["jpeg"]))})
        assert st == 200 and body["verdict"] == "copy" and body["matches"][0]["key"] == "kodak05.png"
        st, body = _request(port, "POST", "/check", queries["other"], {"Content-Length": str(len(queries["other"]))})
        assert st == 200 and body["verdict"] == "ok"
        # oversized: refused from the header alone (no body is sent at all)
        st, body = _request(port, "POST", "/check", None, {"Content-Length": str(10 * 1024 * 1024 * 1024)})
        assert st == 413 and "limit" in body["error"]
        big = b"\xff\xd8\xff" + b"\x00" * 300_001
        st, _ = _request(port, "POST", "/check", big, {"Content-Length": str(len(big))})
        assert st == 413
        st, _ = _request(port, "POST", "/check", None, {})
        assert st == 411
        st, body = _request(port, "POST", "/check", b"garbage", {"Content-Length": "7"})
        assert st == 400 and body["verdict"] == "error"
        st, _ = _request(port, "GET", "/etc/passwd")
        assert st == 404
    finally:
        server.shutdown()
        server.server_close()


def test_stale_dedup_is_not_used(run, queries, kodak, tmp_path):
    """dedup ran on an older index (fewer images): the guard searches the index itself, so new images match."""
    import pandas as pd

    r2 = tmp_path / "run"
    shutil.copytree(run, r2)
    ids = pd.read_parquet(r2 / "dedup" / "search_ids.parquet")
    ids.iloc[:-1].to_parquet(r2 / "dedup" / "search_ids.parquet")
    g = Guard(r2, CFG, device="cpu")
    assert g.source == "index" and len(g.keys) == 24
    _check_verdicts(g, queries, kodak)


def test_phash_neighbours_equal_a_brute_force_scan(run, kodak):
    """The pHash index answers exactly what an XOR+popcount scan filtered at near_phash_distance does (ties
    ordered by row), on the real photos' stored pHashes, for re-encoded queries and the stored hashes themselves
    (all ties at 0)."""
    import numpy as np

    from auditor.index.hashing import phash_dhash

    g = Guard(run, CFG)
    queries = [Image.open(io.BytesIO(jpeg_bytes(Image.open(p), q))) for p in kodak[:6] for q in (95, 40)]
    ph, _ = phash_dhash(queries)
    q = np.concatenate([ph.astype(np.uint64), g.phash[:4], g.phash[:1]])
    for k in (1, 3, len(g.phash), len(g.phash) + 5):
        got = g.phash_neighbours(q, k)
        for h, (rows, dist) in zip(q, got):
            dd = np.bitwise_count(np.bitwise_xor(g.phash, np.uint64(h))).astype(np.int64)
            near = np.flatnonzero(dd <= CFG.near_phash_distance)
            want = near[np.lexsort((near, dd[near]))][:k]
            assert rows.tolist() == want.tolist() and dist.tolist() == dd[want].tolist()
    assert any(len(r) for r, _ in got)
