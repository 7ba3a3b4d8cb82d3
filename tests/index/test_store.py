"""IndexStore's image access: load_images reads each shard once and matches load_image."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.config import AuditorConfig
from auditor.index.runner import run_index


@pytest.mark.network_loopback
def test_load_images_matches_load_image_on_webdataset(imagenet, tmp_path, monkeypatch):
    from auditor.io.download import serve_and_download

    ds = serve_and_download([(p, p.stem) for p in imagenet[:30]], tmp_path / "ds", number_sample_per_shard=10)
    store = run_index(ds, tmp_path / "run", AuditorConfig.model_validate({"index": {"workers": 0, "progress": False}}).index)
    df = store.table()
    pairs = [(r.shard, r.key) for r in df.iloc[[0, 3, 9, 12, 25]].itertuples()] + [("00000", "nope")]
    reads = []
    orig = type(store.reader).read_shard
    monkeypatch.setattr(type(store.reader), "read_shard", lambda self, ref: (reads.append(ref.id), orig(self, ref))[1])
    got = store.load_images(pairs)
    assert sorted(reads) == sorted({s for s, _ in pairs})  # one pass per shard
    assert set(got) == set(pairs[:-1])
    for (shard, key), im in got.items():
        np.testing.assert_array_equal(np.asarray(im), np.asarray(store.load_image(shard, key)))
        assert im.mode == "RGB"


def test_an_index_in_another_format_is_refused_not_misread(imagenet, tmp_path):
    """Format 3 adds the flipped/rotated hashes, format 2 stored a BLAKE3 pixel hash where format 1 stored SHA-256:
    reading or resuming an index in another format fails with a message that says what to do, instead of mixing
    them."""
    import json
    import shutil

    from auditor.index.runner import IndexConfigMismatch
    from auditor.index.store import INDEX_FORMAT_VERSION, IndexFormatError, IndexStore

    data = tmp_path / "photos"
    data.mkdir()
    for p in imagenet[:5]:
        shutil.copy(p, data / p.name)
    cfg = AuditorConfig.model_validate({"index": {"workers": 0, "progress": False}})
    store = run_index(data, tmp_path / "run", cfg)
    assert store.info["format_version"] == INDEX_FORMAT_VERSION == 3
    assert set(store.table()["pixel_blake3"].str.len()) == {64}
    info_path = store.dir / "index.json"
    info = json.loads(info_path.read_text())
    for old in (2, 1):  # 2: no flipped/rotated hashes
        info["format_version"] = old
        info_path.write_text(json.dumps(info))
        with pytest.raises(IndexFormatError, match=f"format {old}.*index the dataset again"):
            IndexStore(tmp_path / "run")
    with pytest.raises(IndexConfigMismatch, match="format 1"):
        run_index(data, tmp_path / "run", cfg)
