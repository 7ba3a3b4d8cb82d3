"""The dedup's keep and link rules on real photos: the least-compressed copy is kept, and two unrelated
low-contrast photos whose pHashes collide are not merged (reports/example cluster 138)."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from PIL import Image

from auditor.dedup.runner import run_dedup
from support.dedup import config, index, rgb, write_dataset


def _manifest(run) -> pd.DataFrame:
    return pd.read_parquet(run / "dedup" / "manifest.parquet").set_index("key")


def test_the_least_compressed_copy_is_kept(tmp_path, imagenet):
    """Originals plus JPEG q60 re-saves of the same size: the re-save sorts first by key (``dup_`` < ``n0``) and
    used to be kept; at equal area the copy with more bytes per pixel is the representative."""
    samples = []
    for p in imagenet[:8]:
        im = rgb(p)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=60)
        samples.append({"key": p.stem, "data": p.read_bytes(), "caption": p.stem})
        samples.append({"key": f"dup_{p.stem}", "data": buf.getvalue(), "caption": p.stem})
    write_dataset(tmp_path / "data", samples, shard_size=100)
    index(tmp_path / "data", tmp_path / "run", embeddings=False)
    run_dedup(tmp_path / "run", config())
    m = _manifest(tmp_path / "run")
    for p in imagenet[:8]:
        assert m.loc[p.stem, "cluster_size"] == 2
        assert m.loc[p.stem, "keep"] and m.loc[p.stem, "is_representative"], p.stem
        assert not m.loc[f"dup_{p.stem}", "keep"]
    keep = (tmp_path / "run" / "dedup" / "keep_keys.txt").read_text().split()
    assert sorted(keep) == sorted(f"{m.loc[p.stem, 'shard']}/{p.stem}" for p in imagenet[:8])


def _example_pair():
    """The two sources of reports/example's cluster 138, built as the demo builds them (seed 0, 8 groups, 150
    singletons): a 64-px LFW face that is almost a flat grey gradient, and a 256-px crop of the retina photo."""
    pytest.importorskip("skimage")
    from auditor.lab.dataset import skimage_sources

    src = {s.name: s for s in skimage_sources(158, 8, 0, 256)}
    out = []
    for name in ("lfw/195", "retina/crop010"):
        buf = io.BytesIO()
        src[name].image.save(buf, format="JPEG", quality=95)  # the demo's first copy of a source
        out.append({"key": name.replace("/", "_"), "data": buf.getvalue(), "caption": src[name].caption})
    return out


def test_low_contrast_photos_with_colliding_phashes_are_not_merged(tmp_path):
    from auditor.index.hashing import hamming, phash_dhash

    pair = _example_pair()
    ph, dh = phash_dhash([Image.open(io.BytesIO(s["data"])) for s in pair])
    assert hamming(ph[0], ph[1]) == 8 and hamming(dh[0], dh[1]) > 20  # the collision the example shipped
    write_dataset(tmp_path / "data", pair, shard_size=10)
    index(tmp_path / "data", tmp_path / "run", embeddings=False)
    run_dedup(tmp_path / "run", config("dedup.dhash_confirm_max_distance=-1"))
    assert _manifest(tmp_path / "run").cluster_id.nunique() == 1  # pHash alone merges them
    summary = run_dedup(tmp_path / "run", config())
    m = _manifest(tmp_path / "run")
    assert m.cluster_id.nunique() == 2 and (m.cluster_size == 1).all()
    assert summary["duplicate_clusters"] == 0
