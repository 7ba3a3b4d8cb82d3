"""The index stage on real photos: hashes match imagehash, outputs identical across worker counts,
bad samples recorded, a kill -9 mid-run resumes to byte-identical outputs."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from auditor.index.runner import IndexConfigMismatch, run_index
from auditor.index.store import IndexStore
from support.helpers import index_config, tree_digest




@pytest.fixture()
def photo_folder(tmp_path, imagenet, kodak) -> Path:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    for p in imagenet[:40]:
        shutil.copy(p, d / p.name)
    for p in kodak[:4]:
        shutil.copy(p, d / "sub" / p.name)
        (d / "sub" / (p.stem + ".txt")).write_text(f"a kodak photo {p.stem}", encoding="utf-8")
    return d


def test_index_folder_hashes_match_imagehash(photo_folder, tmp_path):
    store = run_index(photo_folder, tmp_path / "run", index_config(workers=0, reader={"folder_shard_size": 16}))
    df = store.table()
    assert len(df) == 44 and store.info["counts"]["indexed"] == 44 and store.info["complete"]
    assert list(df["shard"].unique()) == ["00000", "00001", "00002"]
    assert df["key"].is_unique
    for r in df.sample(12, random_state=0).itertuples():
        with Image.open(photo_folder / r.key) as im:
            assert int(str(imagehash.phash(im)), 16) == r.phash
            assert int(str(imagehash.dhash(im)), 16) == r.dhash
            assert (im.width, im.height) == (r.width, r.height)
        data = (photo_folder / r.key).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r.sha256 and r.nbytes == len(data)
    sub = df[df["key"].str.startswith("sub/")]
    assert sorted(sub["caption"]) == sorted(f"a kodak photo {p.stem}" for p in (photo_folder / "sub").glob("*.png"))
    assert set(df["format"]) == {"JPEG", "PNG"}
    emb = store.embeddings()  # the default embedder: the shipped copy descriptor, 128-d, unit norm
    assert store.embedder["name"] == "copy" and emb.shape == (44, 128)
    assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=1e-2)


def test_outputs_identical_across_worker_counts(photo_folder, tmp_path):
    a = run_index(photo_folder, tmp_path / "a", index_config(workers=0, chunk_size=7, reader={"folder_shard_size": 16}))
    b = run_index(photo_folder, tmp_path / "b", index_config(workers=2, chunk_size=5, reader={"folder_shard_size": 16}))
    assert tree_digest(a.dir) == tree_digest(b.dir)


def test_bad_samples_recorded_never_fatal(photo_folder, tmp_path):
    good = sorted(photo_folder.glob("*.jpg"))[0].read_bytes()
    (photo_folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (photo_folder / "empty.jpg").write_bytes(b"")
    (photo_folder / "not_an_image.jpg").write_bytes(b"<html>404 not found</html>")
    bomb = Image.new("L", (12000, 12000))  # 144 Mpx of zeros compresses to a tiny PNG
    bomb.save(photo_folder / "bomb.png", optimize=True)
    store = run_index(photo_folder, tmp_path / "run",
                      index_config(workers=2, reader={"folder_shard_size": 10}, decode={"max_pixels": 50_000_000}))
    err = store.errors().set_index("key")
    assert {"truncated.jpg", "empty.jpg", "not_an_image.jpg", "bomb.png"} <= set(err.index)
    assert (err["stage"] == "decode").all()
    assert all(err.loc[k, "error"] for k in err.index)
    assert store.info["counts"]["indexed"] == 44  # every good photo, in the same shards as the bad ones


def test_refuses_output_inside_dataset(photo_folder):
    with pytest.raises(ValueError, match="inside the input dataset"):
        run_index(photo_folder, photo_folder / "run", index_config(workers=0))


def test_resume_requires_same_config(photo_folder, tmp_path):
    run_index(photo_folder, tmp_path / "run", index_config(workers=0))
    with pytest.raises(IndexConfigMismatch):
        run_index(photo_folder, tmp_path / "run", index_config(workers=0, decode={"max_pixels": 1000}))
    # runtime-only keys may change on resume
    run_index(photo_folder, tmp_path / "run", index_config(workers=2, chunk_size=3))


def test_kill_9_midway_then_resume_is_byte_identical(shared_data, tmp_path):
    src = shared_data / "photos" / "cifar10-test"
    files = sorted(src.rglob("*.jpg"))[:6000]
    data = tmp_path / "cifar"
    for f in files:
        dst = data / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, dst) if os.stat(f).st_dev == os.stat(tmp_path).st_dev else shutil.copy(f, dst)
    args = ["--workers", "0", "--set", "index.reader.folder_shard_size=300", "--set", "index.progress=false"]

    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "auditor", "index", str(data), "--out", str(ref), *args], check=True)

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "auditor", "index", str(data), "--out", str(run), *args])
    shard_dir = run / "index" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shard_dir.glob("*.done"))) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(shard_dir.glob("*.done")))
    assert 2 <= done_at_kill < 20, "the run must be killed midway"
    assert not IndexStore(run).info["complete"]

    subprocess.run([sys.executable, "-m", "auditor", "index", str(data), "--out", str(run), *args], check=True)
    assert tree_digest(run / "index") == tree_digest(ref / "index")
    store = IndexStore(run)
    assert store.info["complete"] and store.info["counts"]["indexed"] == 6000
    assert len(store.table()) == 6000 and store.table()["key"].is_unique


@pytest.mark.network_loopback
def test_real_img2dataset_shards_indexed_with_every_key(imagenet, kodak, tmp_path):
    """Shards written by the real img2dataset CLI (served from 127.0.0.1); every downloaded key is indexed,
    failed rows are listed in not_indexed.parquet, and PNG bytes stored as .jpg are sniffed as PNG."""
    from auditor.io.download import serve_and_download
    from auditor.io import open_dataset

    items = [(p, f"photo of {p.stem.split('_', 1)[1].replace('_', ' ')}") for p in imagenet[:50]]
    items += [(p, f"kodak {p.stem}") for p in kodak[:3]]
    ds = serve_and_download(items, tmp_path / "ds", output_format="webdataset", number_sample_per_shard=20,
                            missing=2)
    store = run_index(ds, tmp_path / "run", index_config(workers=2))
    reader = open_dataset(ds)
    want = {s.key for ref in reader.shards() for s in reader.read_shard(ref) if s.status == "success"}
    df = store.table()
    assert len(want) == 53 and set(df["key"]) == want
    assert len(store.not_indexed()) == 2 and set(store.not_indexed()["status"]) != {"success"}
    assert (df["format"] == "PNG").sum() == 3 and set(df.loc[df["format"] == "PNG", "stored_ext"]) == {"jpg"}
    assert df["caption"].str.startswith(("photo of", "kodak")).all()


def test_index_with_tiny_open_clip_embedder(photo_folder, tmp_path):
    """Embeddings: float16, unit-norm, row-aligned with the table, identical across worker counts; caption-free
    plumbing only (random weights say nothing about CLIP's accuracy)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    import json

    tiny = {"embed_dim": 24,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    cfg_json = tmp_path / "tiny-clip.json"
    cfg_json.write_text(json.dumps(tiny))
    torch.manual_seed(0)
    from auditor.index.config import EmbedderConfig
    from auditor.index.embedders import build_embedder

    with pytest.warns(UserWarning):
        e = build_embedder(EmbedderConfig(name="open_clip", model=str(cfg_json)))
    ckpt = tmp_path / "tiny.pt"
    torch.save(e.model.state_dict(), ckpt)
    emb = {"name": "open_clip", "model": str(cfg_json), "checkpoint": str(ckpt), "batch_size": 8}
    a = run_index(photo_folder, tmp_path / "a", index_config(workers=0, embedder=emb, reader={"folder_shard_size": 16}))
    b = run_index(photo_folder, tmp_path / "b", index_config(workers=2, chunk_size=5, embedder=emb,
                                                     reader={"folder_shard_size": 16}))
    assert tree_digest(a.dir) == tree_digest(b.dir)
    v = a.embeddings()
    assert v.dtype == np.float16 and v.shape == (44, 24) and len(a.table()) == 44
    np.testing.assert_allclose(np.linalg.norm(v.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert a.info["embedder"]["dim"] == 24 and a.info["embedder"]["checkpoint_sha256"]
    # row alignment: re-embedding one indexed photo directly reproduces its stored row
    r = a.table().iloc[17]
    with Image.open(photo_folder / r.key) as im:
        direct = e.embed(e.preprocess(im.convert("RGB"))[None])[0]
    np.testing.assert_allclose(v[17].astype(np.float32), direct, atol=2e-3)
