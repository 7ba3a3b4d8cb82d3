"""Precomputed embeddings in (issue 17 part 2): every layout, on real photos, then dedup with no model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from auditor.cli import main

PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "photos" / "kodak"
pytestmark = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"real photos not found at {PHOTOS}")


def thumb_vec(path: Path) -> np.ndarray:
    """A content embedding of the photo: its 8x8 grey thumbnail, centred and L2-normalised (64-d)."""
    v = np.asarray(Image.open(path).convert("L").resize((8, 8), Image.BILINEAR), dtype=np.float32).ravel()
    v = v - v.mean()
    return v / np.linalg.norm(v)


@pytest.fixture()
def photos(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    for i in range(1, 9):
        shutil.copy(PHOTOS / f"kodak{i:02d}.png", ds / f"kodak{i:02d}.png")
    return ds


def vectors(ds: Path) -> dict[str, np.ndarray]:
    vec = {p.name: thumb_vec(p) for p in sorted(ds.iterdir())}
    vec["kodak08.png"] = vec["kodak07.png"].copy()  # the embeddings say 07 and 08 are the same picture
    return vec


def write_layout(layout: str, vec: dict[str, np.ndarray], out: Path, drop: str = "kodak06.png") -> str:
    keys = [k for k in vec if k != drop]  # one photo has no embedding: it must land in errors.parquet
    mat = np.stack([vec[k] for k in keys]).astype(np.float32)
    out.mkdir()
    if layout == "clip-retrieval":
        (out / "img_emb").mkdir()
        (out / "metadata").mkdir()
        half = len(keys) // 2
        for n, sl in enumerate([slice(0, half), slice(half, None)]):
            np.save(out / "img_emb" / f"img_emb_{n}.npy", mat[sl].astype(np.float16))
            pq.write_table(pa.table({"image_path": [f"/data/{k}" for k in keys[sl]], "caption": ["x"] * len(keys[sl])}),
                           out / "metadata" / f"metadata_{n}.parquet")
        return str(out)
    if layout == "nemo":
        pq.write_table(pa.table({"id": keys, "embedding": [list(map(float, r)) for r in mat * 3.0]}),  # not unit
                       out / "part_0.parquet")
        return str(out / "*.parquet")
    np.save(out / "emb.npy", mat)
    pq.write_table(pa.table({"key": keys}), out / "emb.parquet")
    return str(out)


@pytest.mark.parametrize("layout", ["clip-retrieval", "nemo", "npy"])
def test_precomputed_layouts_index_and_dedup_without_model(photos, tmp_path, layout, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vec = vectors(photos)
    spec = write_layout(layout, vec, tmp_path / "emb")
    run = tmp_path / "run"
    assert main(["index", str(photos), "--out", str(run), "--embeddings", spec, "--workers", "0"]) == 0
    from auditor.index.store import IndexStore

    store = IndexStore(run)
    t = store.table()
    e = store.embeddings()
    assert store.embedder["name"] == "precomputed" and store.embedder["dim"] == 64
    assert "kodak06.png" not in set(t["key"]) and len(t) == 7 and e.shape == (7, 64)
    errs = store.errors()
    assert list(errs.loc[errs["key"] == "kodak06.png", "stage"]) == ["embed"]
    for key, row in zip(t["key"], e.astype(np.float32)):  # each row is its photo's vector, normalised
        np.testing.assert_allclose(row, vec[key], atol=2e-3)
    assert np.allclose(np.linalg.norm(e.astype(np.float32), axis=1), 1.0, atol=2e-3)
    # dedup with no model: 07/08 are one cluster by embedding only (different pixels, different hashes)
    assert main(["dedup", str(run), "--set", "dedup.cosine_threshold=0.95"]) == 0
    man = pd.read_parquet(run / "dedup" / "manifest.parquet")
    c = man.set_index("key")["cluster_id"]
    assert c["kodak07.png"] == c["kodak08.png"]
    assert len(set(c)) == 6
    assert man.set_index("key").loc["kodak08.png", "reason"] in ("embedding", "")
    assert set(man.loc[man["key"].isin(["kodak07.png", "kodak08.png"]), "reason"]) >= {"embedding"}
    # a rerun resumes: same result, no second error row
    assert main(["index", str(photos), "--out", str(run), "--embeddings", spec, "--workers", "0"]) == 0
    assert len(IndexStore(run).errors()) == 1


def test_precomputed_dimension_mismatch_is_one_line(photos, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"key": ["kodak01.png", "kodak02.png"], "embedding": [[1.0, 0.0], [0.0, 1.0, 0.0]]}),
                   bad / "e.parquet")
    rc = main(["index", str(photos), "--out", str(tmp_path / "run"), "--embeddings", str(bad), "--workers", "0"])
    assert rc == 2
    assert "different lengths" in capsys.readouterr().err
