"""WebDatasetWriter: img2dataset-compatible, reproducible, atomic shards, readable by our reader and by the
``webdataset`` library."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from auditor.io import WebDatasetWriter, open_dataset
from auditor.io.writers import key_problem, safe_key


@pytest.fixture(scope="module")
def photos(imagenet, kodak):
    return [p.read_bytes() for p in imagenet[:7]] + [kodak[0].read_bytes()]


def _write(out, photos, shard_size=3):
    with WebDatasetWriter(out, shard_size=shard_size) as w:
        for i, data in enumerate(photos):
            w.write(f"{i:09d}", data, caption=f"caption {i} ✓", url=f"http://h/{i}.jpg",
                    ext="png" if data.startswith(b"\x89PNG") else "jpg", meta={"width": 256})
        w.write("000000100", None, caption="gone", url="http://h/gone", status="failed_to_download",
                error_message="HTTP Error 404")
    return w


def test_layout_sidecar_and_stats(tmp_path, photos):
    w = _write(tmp_path, photos)
    assert w.shards_written == ["00000", "00001", "00002"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"0000{i}{s}" for i in range(3) for s in (".parquet", ".tar", "_stats.json")]
    with tarfile.open(tmp_path / "00000.tar") as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == [f"00000000{i}.{e}" for i in range(3) for e in ("jpg", "json", "txt")]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o444)}
        meta = json.loads(tf.extractfile("000000001.json").read())
    assert meta["key"] == "000000001" and meta["url"] == "http://h/1.jpg" and meta["status"] == "success"
    assert meta["width"] == 256 and meta["sha256"] == hashlib.sha256(photos[1]).hexdigest()
    side = pq.read_table(tmp_path / "00002.parquet").to_pylist()
    assert [(r["key"], r["status"]) for r in side] == [("000000006", "success"), ("000000007", "success"),
                                                         ("000000100", "failed_to_download")]
    assert side[2]["error_message"] == "HTTP Error 404" and side[2]["sha256"] is None
    stats = json.loads((tmp_path / "00002_stats.json").read_text())
    assert (stats["count"], stats["successes"], stats["failed_to_download"]) == (3, 2, 1)
    with tarfile.open(tmp_path / "00002.tar") as tf:  # the failed row has no tar members
        assert [m.name.split(".")[0] for m in tf.getmembers()] == ["000000006"] * 3 + ["000000007"] * 3


def test_output_is_byte_reproducible(tmp_path, photos):
    _write(tmp_path / "a", photos)
    _write(tmp_path / "b", photos)
    for p in sorted((tmp_path / "a").iterdir()):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name


def test_readable_by_our_reader_and_by_webdataset(tmp_path, photos):
    _write(tmp_path, photos)
    reader = open_dataset(tmp_path)
    assert reader.layout == "webdataset"
    got = [s for ref in reader.shards() for s in reader.read_shard(ref)]
    ok = [s for s in got if s.status == "success"]
    assert [s.data for s in ok] == photos
    assert [s.caption for s in ok] == [f"caption {i} ✓" for i in range(len(photos))]
    assert ok[-1].stored_ext == "png"
    assert [(s.key, s.status, s.error) for s in got if s.status != "success"] == [
        ("000000100", "failed_to_download", "HTTP Error 404")]
    urls = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        seen.append(sample["__key__"])
        i = int(sample["__key__"])
        img = sample.get("jpg", sample.get("png"))
        assert img == photos[i]
        assert sample["txt"].decode() == f"caption {i} ✓"
        assert json.loads(sample["json"])["key"] == sample["__key__"]
    assert seen == [f"{i:09d}" for i in range(len(photos))]


def test_abort_leaves_only_finished_shards(tmp_path, photos):
    with pytest.raises(RuntimeError):
        with WebDatasetWriter(tmp_path, shard_size=3) as w:
            for i, data in enumerate(photos[:4]):
                w.write(f"k{i}", data)
            raise RuntimeError("crash mid-shard")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json"]


def test_keys_validated_and_sanitised(tmp_path, photos):
    assert key_problem("000000001") is None and key_problem("dir/abc") is None
    for bad in ("a.jpg", "", "/abs", "x/../y", "__key__", "a\x00b"):
        assert key_problem(bad) is not None
        fixed = safe_key(bad)
        assert key_problem(fixed) is None and fixed != bad
    assert safe_key("a.jpg") != safe_key("a_jpg")
    with WebDatasetWriter(tmp_path / "s") as w:
        k = w.write("photos/cat.jpg", photos[0], caption="cat")
        with pytest.raises(ValueError, match="duplicate key"):
            w.write(k, photos[1])
        with pytest.raises(ValueError, match="needs image bytes"):
            w.write("x", None)
    s = next(open_dataset(tmp_path / "s").read_shard(open_dataset(tmp_path / "s").shards()[0]))
    assert s.key == k and s.data == photos[0]
    assert pq.read_table(tmp_path / "s" / "00000.parquet").column("original_key").to_pylist() == ["photos/cat.jpg"]
    with WebDatasetWriter(tmp_path / "strict", sanitize_keys=False) as w:
        with pytest.raises(ValueError, match="invalid webdataset key"):
            w.write("a.jpg", photos[0])
