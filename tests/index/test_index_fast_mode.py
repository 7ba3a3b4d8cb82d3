"""``index.hash_mode: fast`` (issue 18 item 2): reduced-scale JPEG decoding on real photos. The mode is recorded in
index.json, an index never resumes or compares across modes, hashes stay within a few bits of exact mode's, the
DCT scale never goes below twice the pHash thumbnail, and everything but a plain JPEG decodes exactly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from auditor.cli import main
from auditor.index.decode import DecodeError, decode_for_index
from auditor.index.decode_fast import ReducedImage, decode_reduced, fast_min_side
from auditor.index.runner import IndexConfigMismatch, run_index
from support.helpers import index_config


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8).reshape(-1, 8), axis=1).sum(1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, imagenet, kodak):
    """120 real JPEGs (imagenet-256) and 3 PNGs (Kodak)."""
    d = tmp_path_factory.mktemp("fastmode") / "photos"
    d.mkdir()
    for f in imagenet[:120] + kodak[:3]:
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture(scope="module")
def both(photos, tmp_path_factory):
    runs = {}
    for mode in ("exact", "fast"):
        out = tmp_path_factory.mktemp(f"run_{mode}") / "run"
        store = run_index(photos, out, index_config(workers=0, hash_mode=mode, embedder={"name": "none"}).index)
        runs[mode] = (out, store.table().sort_values("key").reset_index(drop=True))
    return runs


def test_fast_mode_is_recorded_and_hashes_stay_close(both):
    (exact_run, ex), (fast_run, fa) = both["exact"], both["fast"]
    assert json.loads((fast_run / "index" / "index.json").read_text())["config"]["hash_mode"] == "fast"
    assert json.loads((exact_run / "index" / "index.json").read_text())["config"]["hash_mode"] == "exact"
    assert list(ex.key) == list(fa.key) and len(ex) == 123
    # the stored image's size, not the reduced decode's
    assert (ex.width.to_numpy() == fa.width.to_numpy()).all() and (ex.height.to_numpy() == fa.height.to_numpy()).all()
    jpeg = (ex.format == "JPEG").to_numpy()
    for col in ("phash", "dhash"):
        d = _popcount(ex[col].to_numpy(np.uint64) ^ fa[col].to_numpy(np.uint64))
        assert (d[~jpeg] == 0).all()          # PNGs decode exactly in both modes
        assert d[jpeg].mean() <= 2.0 and np.percentile(d[jpeg], 99) <= 8, (col, d[jpeg].mean(), d.max())
        assert d[jpeg].any()                  # it really decoded at a reduced scale
    assert (ex.sha256 == fa.sha256).all()
    assert (ex.pixel_blake3[~jpeg] == fa.pixel_blake3[~jpeg]).all()


def test_mixing_modes_is_refused(both, photos, capsys):
    fast_run = both["fast"][0]
    with pytest.raises(IndexConfigMismatch, match="hash_mode"):
        run_index(photos, fast_run, index_config(workers=0, embedder={"name": "none"}).index)
    rc = main(["index", str(photos), "--out", str(fast_run), "--set", "index.embedder.name=none",
               "--set", "index.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("auditor: error:") and "hash_mode" in err[0], err
    # the same mode resumes (nothing left to do)
    assert main(["index", str(photos), "--out", str(fast_run), "--set", "index.embedder.name=none",
                 "--set", "index.hash_mode=fast", "--set", "index.progress=false"]) == 0


def test_against_refuses_the_other_mode(both, capsys):
    (exact_run, _), (fast_run, _) = both["exact"], both["fast"]
    assert main(["dedup", str(fast_run), "--set", "dedup.progress=false"]) == 0
    capsys.readouterr()
    rc = main(["dedup", str(fast_run), "--against", str(exact_run), "--set", "dedup.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "hash_mode" in err[0], err


def test_reduced_scale_keeps_twice_the_thumbnail(imagenet, kodak):
    assert fast_min_side() == 64
    reduced = 0
    for f in imagenet[:60]:
        data = f.read_bytes()
        ex, fa = decode_for_index(data), decode_reduced(data, 64)
        assert (fa.width, fa.height) == (ex.width, ex.height)
        h, w = fa.rgb.shape[:2]
        assert min(h, w) >= 64 or (h, w) == ex.rgb.shape[:2]
        assert np.asarray(fa.gray).shape == (h, w)
        if isinstance(fa, ReducedImage) and (h, w) != ex.rgb.shape[:2]:
            reduced += 1
            # the smallest M/8 scale: one step less would drop a side below 64
            m = round(8 * w / ex.width)
            assert m < 8 and min(ex.width * (m - 1) / 8, ex.height * (m - 1) / 8) < 64
    assert reduced >= 50
    png = kodak[0].read_bytes()
    a, b = decode_for_index(png), decode_reduced(png, 64)
    assert not isinstance(b, ReducedImage) and np.array_equal(a.rgb, b.rgb)
    with pytest.raises(DecodeError) as e1:
        decode_for_index(imagenet[0].read_bytes()[:2000])
    with pytest.raises(DecodeError) as e2:
        decode_reduced(imagenet[0].read_bytes()[:2000], 64)
    assert str(e1.value) == str(e2.value)
