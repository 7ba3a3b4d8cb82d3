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
    store = run_index(ds, tmp_path / "run", AuditorConfig.model_validate({"index": {"workers": 0, "progress": False}}))
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
