"""Readers for the four dataset layouts, on small datasets built here in img2dataset's exact on-disk layout
(tar members as webdataset's TarWriter writes them, sidecar parquet with img2dataset's columns, stats json),
from real photos."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.io import READERS, WebDatasetWriter, detect_layout, open_dataset
from auditor.io.base import split_key

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# img2dataset's sidecar schema for input_format=parquet with a caption column (downloader.py)
SIDECAR_SCHEMA = pa.schema([
    ("caption", pa.string()), ("url", pa.string()), ("key", pa.string()), ("status", pa.string()),
    ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("original_width", pa.int32()), ("original_height", pa.int32()), ("exif", pa.string()), ("sha256", pa.string()),
])


def _row(key, url, caption, status="success", error=None, data=None):
    return {"caption": caption, "url": url, "key": key, "status": status, "error_message": error,
            "width": 256 if status == "success" else None, "height": 256 if status == "success" else None,
            "original_width": None, "original_height": None, "exif": None,
            "sha256": hashlib.sha256(data).hexdigest() if data else None}


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o444, 1700000000
    tf.addfile(ti, io.BytesIO(data))


def make_wds_shard(root: Path, shard: str, samples: list[dict], failed: list[dict] = (), *,
                   members=("jpg", "json", "txt"), sidecar: bool = True) -> Path:
    """One img2dataset webdataset shard. ``samples``: dicts with key, data, caption, url (and optional
    ``txt_bytes`` to store a raw caption). Rows are written like img2dataset: .jpg/.json/.txt members in sorted
    order; the sidecar lists successes and failures."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    with tarfile.open(root / f"{shard}.tar", "w") as tf:
        for s in samples:
            row = _row(s["key"], s["url"], s["caption"], data=s["data"])
            meta = {k: v for k, v in row.items()}
            parts = {"jpg": s["data"], "json": json.dumps(meta, indent=4).encode(),
                     "txt": s.get("txt_bytes", (s["caption"] or "").encode("utf-8"))}
            for ext in sorted(parts):
                if ext in members:
                    _add(tf, f"{s['key']}.{ext}", parts[ext])
            rows.append(row)
    for f in failed:
        rows.append(_row(f["key"], f["url"], f["caption"], status=f["status"], error=f["error"]))
    if sidecar:
        pq.write_table(pa.Table.from_pylist(rows, schema=SIDECAR_SCHEMA), root / f"{shard}.parquet")
        (root / f"{shard}_stats.json").write_text(json.dumps({"count": len(rows), "successes": len(samples)}))
    return root / f"{shard}.tar"


@pytest.fixture(scope="module")
def photos(imagenet, kodak) -> list[tuple[str, bytes]]:
    """(name, bytes): 10 real JPEGs and 2 real PNGs."""
    out = [(p.name, p.read_bytes()) for p in imagenet[:10]]
    out += [(p.name, p.read_bytes()) for p in kodak[:2]]
    return out


def _samples(photos, shard_no: int, start: int = 0, n: int = 4) -> list[dict]:
    out = []
    for i, (name, data) in enumerate(photos[start:start + n]):
        key = f"{shard_no:05d}{i:04d}"
        out.append({"key": key, "data": data, "caption": f"a photo of {name} — #{i}",
                    "url": f"http://example.com/{name}"})
    return out


@pytest.fixture()
def wds_root(tmp_path, photos) -> tuple[Path, dict]:
    root = tmp_path / "wds"
    s0 = _samples(photos, 0, 0, 4)
    s1 = _samples(photos, 1, 4, 4)
    # kodak PNGs stored under .jpg, as img2dataset does with re-encoding disabled
    s1 += [{"key": "000010004", "data": photos[10][1], "caption": "png stored as jpg", "url": "http://e.com/k.png"}]
    f1 = [{"key": "000010005", "url": "http://e.com/404.jpg", "caption": "gone", "status": "failed_to_download",
           "error": "HTTP Error 404: Not Found"}]
    make_wds_shard(root, "00000", s0)
    make_wds_shard(root, "00001", s1, f1)
    expected = {("00000", s["key"]): s for s in s0} | {("00001", s["key"]): s for s in s1}
    return root, {"success": expected, "failed": {("00001", f["key"]): f for f in f1}}


def _read_all(reader):
    return [s for ref in reader.shards() for s in reader.read_shard(ref)]


# --- webdataset --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("as_url", [False, True])
def test_webdataset_reads_every_sample_and_failed_rows(wds_root, as_url):
    root, exp = wds_root
    uri = root.as_uri() if as_url else str(root)
    assert detect_layout(uri) == "webdataset"
    reader = open_dataset(uri)
    assert reader.layout == "webdataset"
    refs = reader.shards()
    assert [r.id for r in refs] == ["00000", "00001"]
    if as_url:
        assert refs[0].path.startswith("file://")
    samples = _read_all(reader)
    ok = {(s.shard, s.key): s for s in samples if s.status == "success"}
    assert set(ok) == set(exp["success"])
    for k, want in exp["success"].items():
        got = ok[k]
        assert got.data == want["data"]
        assert got.caption == want["caption"]
        assert got.url == want["url"]
        assert got.stored_ext == "jpg"
        assert got.meta["sha256"] == hashlib.sha256(want["data"]).hexdigest()
    failed = [s for s in samples if s.status != "success"]
    assert [(s.shard, s.key, s.status, s.error, s.data) for s in failed] == [
        ("00001", "000010005", "failed_to_download", "HTTP Error 404: Not Found", None)]
    assert failed[0].url == "http://e.com/404.jpg" and failed[0].caption == "gone"


def test_webdataset_png_bytes_under_jpg_are_passed_through(wds_root, photos):
    root, _ = wds_root
    s = open_dataset(root).get("00001", "000010004")
    assert s.stored_ext == "jpg"
    assert s.data.startswith(PNG_MAGIC) and s.data == photos[10][1]


def test_webdataset_get(wds_root):
    root, exp = wds_root
    reader = open_dataset(root)
    for (shard, key), want in exp["success"].items():
        got = reader.get(shard, key)
        assert got.data == want["data"] and got.caption == want["caption"]
    failed = reader.get("00001", "000010005")
    assert failed.data is None and failed.status == "failed_to_download"
    with pytest.raises(KeyError):
        reader.get("00000", "999999999")
    with pytest.raises(KeyError):
        reader.get("00009", "000000000")


def test_webdataset_single_tar_root_and_memory_filesystem(wds_root):
    root, exp = wds_root
    one = open_dataset(root / "00000.tar")
    assert one.layout == "webdataset" and [r.id for r in one.shards()] == ["00000"]
    assert len([s for s in _read_all(one) if s.status == "success"]) == 4
    # generic fsspec: the same files on the in-memory filesystem
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in root.iterdir():
        fs.pipe_file(f"/auditor-test-wds/{p.name}", p.read_bytes())
    try:
        mem = open_dataset("memory://auditor-test-wds")
        assert mem.layout == "webdataset"
        got = {(s.shard, s.key): s for s in _read_all(mem) if s.status == "success"}
        assert set(got) == set(exp["success"])
        assert all(got[k].data == v["data"] for k, v in exp["success"].items())
        assert mem.get("00001", "000010001").caption == exp["success"][("00001", "000010001")]["caption"]
    finally:
        fs.rm("/auditor-test-wds", recursive=True)


def test_webdataset_truncated_tar_yields_what_was_read_then_an_error(tmp_path, photos):
    root = tmp_path / "wds"
    samples = _samples(photos, 0, 0, 6)
    tar = make_wds_shard(root, "00000", samples)
    raw = tar.read_bytes()
    # cut inside the 4th sample's image bytes
    with tarfile.open(tar) as tf:
        m = tf.getmember(f"{samples[3]['key']}.jpg")
    tar.write_bytes(raw[: m.offset_data + m.size // 2])
    out = _read_all(open_dataset(root))
    good = [s for s in out if s.status == "success"]
    assert [s.key for s in good] == [s["key"] for s in samples[:3]]
    assert all(g.data == s["data"] for g, s in zip(good, samples))
    tar_err = [s for s in out if s.key == "00000/__tar__"]
    assert len(tar_err) == 1 and tar_err[0].status == "error" and tar_err[0].data is None
    assert "broken tar" in tar_err[0].error and samples[3]["key"] in tar_err[0].error
    # the sidecar's success rows the tar did not deliver are reported, not silently dropped
    missing = sorted(s.key for s in out if s.status == "error" and s.key != "00000/__tar__")
    assert missing == [s["key"] for s in samples[3:]]


def test_webdataset_corrupt_header_mid_tar_is_reported(tmp_path, photos):
    root = tmp_path / "wds"
    samples = _samples(photos, 0, 0, 3)
    tar = make_wds_shard(root, "00000", samples, sidecar=False)
    raw = bytearray(tar.read_bytes())
    with tarfile.open(tar) as tf:
        m = tf.getmember(f"{samples[1]['key']}.jpg")
    raw[m.offset: m.offset + 512] = b"\xff" * 512  # garbage header: tarfile alone would stop silently
    tar.write_bytes(bytes(raw))
    out = _read_all(open_dataset(root, layout="webdataset"))
    assert [s.key for s in out if s.status == "success"] == [samples[0]["key"]]
    errs = [s for s in out if s.key == "00000/__tar__"]
    assert len(errs) == 1 and "invalid tar header" in errs[0].error


def test_webdataset_not_a_tar_at_all(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    (root / "00000.tar").write_bytes(b"this is not a tar file" * 100)
    out = _read_all(open_dataset(root))
    assert len(out) == 1 and out[0].key == "00000/__tar__" and out[0].status == "error"


def test_webdataset_missing_txt_or_json_still_yields_the_image(tmp_path, photos):
    root = tmp_path / "wds"
    s = _samples(photos, 0, 0, 2)
    make_wds_shard(root / "a", "00000", s, members=("jpg",))
    out = _read_all(open_dataset(root / "a"))
    # captions/urls fall back to the sidecar parquet
    assert [(x.key, x.data == y["data"], x.caption, x.url) for x, y in zip(out, s)] == [
        (y["key"], True, y["caption"], y["url"]) for y in s]
    make_wds_shard(root / "b", "00000", s, members=("jpg", "json"), sidecar=False)
    out = _read_all(open_dataset(root / "b"))
    assert [(x.caption, x.url) for x in out] == [(y["caption"], y["url"]) for y in s]  # from the .json
    make_wds_shard(root / "c", "00000", s, members=("jpg",), sidecar=False)
    out = _read_all(open_dataset(root / "c"))
    assert [(x.status, x.caption, x.url, x.data == y["data"]) for x, y in zip(out, s)] == [
        ("success", None, None, True)] * 2


def test_webdataset_member_without_image_is_an_error(tmp_path, photos):
    root = tmp_path / "wds"
    root.mkdir()
    with tarfile.open(root / "00000.tar", "w") as tf:
        _add(tf, "a.txt", b"caption only")
        _add(tf, "b.jpg", photos[0][1])
    out = _read_all(open_dataset(root))
    assert [(s.key, s.status) for s in out] == [("a", "error"), ("b", "success")]
    assert "no image member" in out[0].error and out[0].caption == "caption only"


def test_webdataset_duplicate_keys_yield_both(tmp_path, photos):
    root = tmp_path / "wds"
    root.mkdir()
    with tarfile.open(root / "00000.tar", "w") as tf:
        _add(tf, "k1.jpg", photos[0][1])
        _add(tf, "k1.txt", b"first")
        _add(tf, "k1.jpg", photos[1][1])  # same key straight again
        _add(tf, "k1.txt", b"second")
        _add(tf, "k2.jpg", photos[2][1])
        _add(tf, "k1.jpg", photos[3][1])  # and later again
    out = _read_all(open_dataset(root))
    assert [(s.key, s.data, s.meta.get("duplicate_key", False)) for s in out] == [
        ("k1", photos[0][1], False), ("k1", photos[1][1], True), ("k2", photos[2][1], False),
        ("k1", photos[3][1], True)]
    assert [s.caption for s in out[:2]] == ["first", "second"]


def test_webdataset_non_utf8_and_huge_captions(tmp_path, photos):
    root = tmp_path / "wds"
    big = ("ünïcödé caption " * 70_000)[:1_000_000]
    s = _samples(photos, 0, 0, 2)
    s[0]["txt_bytes"] = b"caf\xe9 \xff\xfe bad bytes\x00 end"
    s[1]["caption"] = big
    make_wds_shard(root, "00000", s, sidecar=False)
    out = _read_all(open_dataset(root))
    assert out[0].caption == "caf\ufffd \ufffd\ufffd bad bytes end"
    assert out[1].caption == big and len(out[1].caption) == 1_000_000


def test_split_key_follows_webdataset_convention():
    assert split_key("000010004.jpg") == ("000010004", "jpg")
    assert split_key("dir/a.b/x.seg.JPG") == ("dir/a.b/x", "seg.jpg")
    assert split_key("noext") == ("noext", "")


# --- parquet -------------------------------------------------------------------------------------------------

def _parquet_shard(path: Path, rows: list[dict], image_col: str = "jpg", row_group_size: int = 3) -> None:
    """img2dataset parquet output: its sidecar columns + txt + the image column (ParquetSampleWriter)."""
    schema = SIDECAR_SCHEMA.append(pa.field("txt", pa.string())).append(pa.field(image_col, pa.binary()))
    full = []
    for r in rows:
        ok = r.get("status", "success") == "success"
        x = _row(r["key"], r["url"], r["caption"], status=r.get("status", "success"), error=r.get("error"),
                 data=r.get("data"))
        x["txt"] = r["caption"] if ok else None
        x[image_col] = r.get("data") if ok else None
        full.append(x)
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path, row_group_size=row_group_size)


def test_parquet_layout(tmp_path, photos):
    root = tmp_path / "pq"
    root.mkdir()
    rows0 = [{"key": f"00000{i:04d}", "url": f"http://e.com/{n}", "caption": f"cap {n}", "data": d}
             for i, (n, d) in enumerate(photos[:7])]
    rows0.insert(2, {"key": "000000099", "url": "http://e.com/x", "caption": "x", "status": "failed_to_download",
                     "error": "timeout"})
    rows1 = [{"key": "000010000", "url": "http://e.com/k\x00.png", "caption": "null\x00 byte", "data": photos[10][1]}]
    _parquet_shard(root / "00000.parquet", rows0)
    _parquet_shard(root / "00001.parquet", rows1)
    (root / "00000_stats.json").write_text("{}")
    assert detect_layout(root) == "parquet"
    reader = open_dataset(root.as_uri())
    assert [r.id for r in reader.shards()] == ["00000", "00001"]
    out = _read_all(reader)
    assert [s.key for s in out] == [r["key"] for r in rows0 + rows1]
    for s, r in zip(out, rows0 + rows1):
        if r.get("status", "success") == "success":
            assert s.status == "success" and s.data == r["data"] and s.stored_ext == "jpg"
            assert s.caption == r["caption"].replace("\x00", "") and s.url == r["url"].replace("\x00", "")
        else:
            assert (s.status, s.error, s.data, s.caption) == ("failed_to_download", "timeout", None, "x")
    assert out[-1].data.startswith(PNG_MAGIC)
    # get filters on the key column
    assert reader.get("00000", "000000005").data == photos[5][1]
    assert reader.get("00000", "000000099").status == "failed_to_download"
    with pytest.raises(KeyError):
        reader.get("00000", "nope")


def test_parquet_image_column_option_and_null_keys(tmp_path, photos):
    root = tmp_path / "pq"
    root.mkdir()
    t = pa.table({"image_data": pa.array([photos[0][1], photos[1][1]], pa.binary()),
                  "TEXT": ["one", "two"], "key": pa.array(["a", None], pa.string())})
    pq.write_table(t, root / "part.parquet")
    reader = open_dataset(root, layout="parquet", image_column="image_data")
    out = _read_all(reader)
    assert [(s.key, s.caption, s.data, s.status) for s in out] == [
        ("a", "one", photos[0][1], "success"), ("part_000000001", "two", photos[1][1], "success")]
    assert out[1].meta["key_generated"] and out[0].stored_ext is None
    bad = _read_all(open_dataset(root, layout="parquet", image_column="nope"))
    assert len(bad) == 1 and bad[0].status == "error" and "image_column 'nope'" in bad[0].error
    # without the option nothing looks like an image column: rows are errors, not crashes
    out = _read_all(open_dataset(root, layout="parquet"))
    assert {s.status for s in out} == {"error"}


def test_parquet_corrupt_file_is_an_error_sample(tmp_path, photos):
    root = tmp_path / "pq"
    root.mkdir()
    (root / "00000.parquet").write_bytes(b"PAR1 garbage")
    out = _read_all(open_dataset(root, layout="parquet"))
    assert len(out) == 1 and out[0].status == "error" and out[0].key == "00000/__parquet__"


# --- files ---------------------------------------------------------------------------------------------------

def _files_layout(root: Path, photos) -> dict:
    shard = root / "00000"
    shard.mkdir(parents=True)
    rows, exp = [], {}
    for i, (name, data) in enumerate(photos[:5]):
        key = f"00000{i:04d}"
        (shard / f"{key}.jpg").write_bytes(data)
        if i != 3:
            (shard / f"{key}.txt").write_text(f"caption {name}", encoding="utf-8")
            (shard / f"{key}.json").write_text(json.dumps({"url": f"http://e.com/{name}", "key": key}))
        rows.append(_row(key, f"http://e.com/{name}", f"caption {name}", data=data))
        exp[key] = (data, f"caption {name}", f"http://e.com/{name}")
    rows.append(_row("000000005", "http://e.com/gone", "gone", status="failed_to_download", error="404"))
    pq.write_table(pa.Table.from_pylist(rows, schema=SIDECAR_SCHEMA), root / "00000.parquet")
    (root / "00000_stats.json").write_text("{}")
    return exp


def test_files_layout(tmp_path, photos):
    root = tmp_path / "files"
    exp = _files_layout(root, photos)
    assert detect_layout(root) == "files"
    reader = open_dataset(root.as_uri())
    out = _read_all(reader)
    assert [s.key for s in out] == sorted(exp) + ["000000005"]
    for s in out[:-1]:
        assert (s.data, s.caption, s.url) == exp[s.key] and s.stored_ext == "jpg"
    assert (out[-1].status, out[-1].error, out[-1].data) == ("failed_to_download", "404", None)
    g = reader.get("00000", "000000003")  # no .txt/.json: caption and url from the sidecar
    assert (g.data, g.caption, g.url) == exp["000000003"]
    assert reader.get("00000", "000000005").status == "failed_to_download"
    with pytest.raises(KeyError):
        reader.get("00000", "000000042")
    # a success row whose image file vanished is reported
    (root / "00000" / "000000001.jpg").unlink()
    out = {s.key: s for s in _read_all(open_dataset(root))}
    assert out["000000001"].status == "error" and out["000000001"].data is None


# --- folder --------------------------------------------------------------------------------------------------

def test_folder_layout_sidecar_captions_and_shards(tmp_path, photos):
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    names = ["b.jpg", "a.jpg", "sub/c.jpg", "sub/deeper/d.png", "sub/e.JPG"]
    for (n, (_, data)) in zip(names, photos[:4] + [photos[10]]):
        (root / n).write_bytes(data)
    (root / ".hidden" / "x.jpg").write_bytes(photos[5][1])
    (root / "a.txt").write_text("caption for a", encoding="utf-8")
    (root / "sub" / "c.jpg.txt").write_bytes(b"c caption \xff")
    (root / "notes.md").write_text("not an image")
    assert detect_layout(root) == "folder"
    reader = open_dataset(root, folder_shard_size=2)
    refs = reader.shards()
    assert [r.id for r in refs] == ["00000", "00001", "00002"]
    out = _read_all(reader)
    assert [s.key for s in out] == sorted(names)
    by = {s.key: s for s in out}
    assert by["a.jpg"].caption == "caption for a"
    assert by["sub/c.jpg"].caption == "c caption \ufffd"
    assert by["b.jpg"].caption is None
    assert by["sub/deeper/d.png"].stored_ext == "png" and by["sub/e.JPG"].stored_ext == "jpg"
    assert by["b.jpg"].data == (root / "b.jpg").read_bytes()
    assert reader.get(by["sub/c.jpg"].shard, "sub/c.jpg").caption == "c caption \ufffd"
    for bad in ("missing.jpg", "../imgs/a.jpg", "notes.md"):
        with pytest.raises(KeyError):
            reader.get("00000", bad)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_folder_captions_file(tmp_path, photos, fmt):
    root = tmp_path / "imgs"
    (root / "s").mkdir(parents=True)
    for n, (_, d) in zip(["x.jpg", "s/y.jpg", "s/z.jpg"], photos):
        (root / n).write_bytes(d)
    (root / "x.txt").write_text("sidecar wins")
    keys, caps = ["x.jpg", "s/y.jpg", "z.jpg"], ["from file x", "from file, y", "by basename"]
    capfile = tmp_path / f"caps.{fmt}"
    if fmt == "csv":
        import csv

        with open(capfile, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "TEXT"])
            w.writerows(zip(keys, caps))
    else:
        pq.write_table(pa.table({"file": keys, "caption": caps}), capfile)
    reader = open_dataset(root, captions_file=str(capfile))
    got = {s.key: s.caption for s in _read_all(reader)}
    assert got == {"x.jpg": "sidecar wins", "s/y.jpg": "from file, y", "s/z.jpg": "by basename"}
    assert reader.get("00000", "s/y.jpg").caption == "from file, y"


def test_detection_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        detect_layout(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        detect_layout(tmp_path / "empty")
    with pytest.raises(KeyError):
        open_dataset(tmp_path, layout="nosuch")
    assert set(READERS.names()) >= {"webdataset", "parquet", "files", "folder"}


# --- property: writer -> reader round trip ------------------------------------------------------------------

_key = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40)
_caption = st.one_of(st.none(), st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
                                        max_size=200))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.tuples(_key, _caption, st.binary(min_size=1, max_size=64)), min_size=1, max_size=12,
                      unique_by=lambda t: t[0]),
       shard_size=st.integers(1, 5))
def test_writer_reader_roundtrip_property(tmp_path_factory, items, shard_size):
    out = tmp_path_factory.mktemp("rt")
    written = {}
    with WebDatasetWriter(out, shard_size=shard_size) as w:
        for i, (key, caption, data) in enumerate(items):
            k = w.write(key, data, caption=caption, url=f"http://h/{i}")
            written[k] = (key, caption, data, f"http://h/{i}")
    assert len(written) == len(items)  # sanitised keys stay distinct
    reader = open_dataset(out)
    got = _read_all(reader)
    assert [s.key for s in got] == list(written)
    for s in got:
        key, caption, data, url = written[s.key]
        assert s.status == "success" and s.data == data and s.url == url
        assert s.caption == (caption or "")
        assert not s.meta.get("duplicate_key")
    assert len(reader.shards()) == -(-len(items) // shard_size)
