"""Issue 19, decode and reader half: hostile files built in code, run through the real ``auditor index`` in a
subprocess bounded by RLIMIT_AS, RLIMIT_CPU and a timeout. Each run checks that it finished, that every key is
indexed or recorded (errors.parquet / not_indexed.parquet) with its key and stage, and that its peak RSS stays
within 2x of a run on one legitimate image of the same size (4000x4000 RGB PNG).

Hostile inputs: a 4000x4000 RGBA PNG of 70 KB (float64 compositing: 1.2 GB; 6000x6000: 2.8 GB), a progressive JPEG of 3,000
empty scans, a JSON nested 100,000 deep, a 9 MiB caption, a gzip'd tar whose 300 MB caption expands 1000x, a
tar member header claiming 2**60 bytes, a parquet row group declaring 300 MB in a few KB, a parquet caption
over the cap and one row whose value cannot be converted."""

from __future__ import annotations

import gzip
import io
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from auditor.index import decode as dec

_SHARED = os.environ.get("AUDITOR_SHARED_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data"
PHOTOS = Path(_SHARED) / "photos"
AS_LIMIT = 4 << 30   # the venv's address space alone is ~1.5 GB; the float64 composite needed 2.8 GB of RSS
CPU_LIMIT = 60
BIG = 4000           # under max_pixels (89 MP): legitimate by size, hostile only by its alpha compositing

# the CLI in-process, then its own peak RSS (workers=0: every decode happens in this one process). VmHWM, not
# getrusage's ru_maxrss: Linux carries ru_maxrss across fork + exec, so it would report the pytest process's size
_WRAP = ("import runpy, sys\n"
         "sys.argv = ['auditor'] + sys.argv[1:]\n"
         "code = 0\n"
         "try:\n    runpy.run_module('auditor', run_name='__main__')\n"
         "except SystemExit as e:\n    code = e.code or 0\n"
         "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
         "print('PEAK_RSS_KB', hwm, file=sys.stderr)\n"
         "sys.exit(code)\n")


def _photos(n: int) -> list[bytes]:
    kodak = PHOTOS / "kodak"
    if not kodak.is_dir():
        pytest.skip(f"real photos absent: {kodak}")
    out = []
    for p in sorted(kodak.glob("*.png"))[:n]:
        im = Image.open(p).convert("RGB")
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT, CPU_LIMIT))


def _index(ds: Path, out: Path, *sets: str) -> tuple[int, Path]:
    """(peak RSS in MB, index folder) of ``auditor index ds --out out`` (hashes only, in-process)."""
    args = [sys.executable, "-c", _WRAP, "index", str(ds), "--out", str(out), "--embedder", "none",
            "--workers", "0", "--set", "index.progress=false"]
    for s in sets:
        args += ["--set", s]
    res = subprocess.run(args, env=dict(os.environ, HF_HUB_OFFLINE="1"), preexec_fn=_limits,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    rss = int(res.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024
    return rss, out / "index"


def _accounted(idx: Path) -> tuple[dict, dict, dict]:
    """(indexed, errors, not_indexed) as {(shard, key): row}."""
    indexed = {}
    for f in sorted((idx / "shards").glob("*.parquet")):
        if f.name.count(".") == 1:
            for r in pq.read_table(f).to_pylist():
                indexed[(r["shard"], r["key"])] = r
    errors = {(r["shard"], r["key"]): r for r in pq.read_table(idx / "errors.parquet").to_pylist()}
    nidx = {(r["shard"], r["key"]): r for r in pq.read_table(idx / "not_indexed.parquet").to_pylist()}
    return indexed, errors, nidx


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> float:
    """Peak RSS of a run on one legitimate 4000x4000 RGB PNG (the 'normal image' of the same size)."""
    ds = tmp_path_factory.mktemp("base") / "ds"
    ds.mkdir()
    Image.new("RGB", (BIG, BIG), (10, 200, 30)).save(ds / "normal.png")
    rss, idx = _index(ds, ds.parent / "run")
    assert set(_accounted(idx)[0]) == {("00000", "normal.png")}
    return rss


# ---- hostile files -------------------------------------------------------------------------------------

def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(start, end, marker) of each segment of a JPEG, a scan's entropy-coded data included."""
    out, i = [], 2
    while i < len(data):
        m = data[i + 1]
        if m == 0xD9:
            break
        j = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if m == 0xDA:
            while True:
                j = data.index(b"\xff", j)
                if data[j + 1] == 0 or 0xD0 <= data[j + 1] <= 0xD7:
                    j += 2
                    continue
                break
        out.append((i, j, m))
        i = j
    return out


def scan_bomb(n_scans: int = 3000, size: int = 1500) -> bytes:
    """A valid progressive JPEG followed by ``n_scans`` copies of its smallest AC refinement scan (Ss=1, Se=63,
    Ah=1, Al=0: 12 bytes, each a full pass over the coefficients; libjpeg only warns of the bogus progression).
    Uncapped it costs ~2.5 s of CPU at 1500x1500 and scales with the pixels and the scans."""
    arr = np.full((size, size, 3), 128, np.uint8)
    arr[::7] = 120
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", progressive=True, quality=90)
    base = buf.getvalue()
    scans = [s for s in _jpeg_segments(base) if s[2] == 0xDA]

    def params(s):
        return base[s[0] + 2 + int.from_bytes(base[s[0] + 2:s[0] + 4], "big") - 3:s[0] + 2 +
                    int.from_bytes(base[s[0] + 2:s[0] + 4], "big")]
    ref = min((s for s in scans if params(s) == b"\x01\x3f\x10"), key=lambda s: s[1] - s[0])
    return base[:scans[-1][1]] + base[ref[0]:ref[1]] * n_scans + b"\xff\xd9"


def rgba_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (BIG, BIG), (10, 200, 30, 128)).save(buf, "PNG")
    return buf.getvalue()  # ~70 KB


def _tar_member(name: str, data: bytes, size: int | None = None) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size = len(data) if size is None else size
    pad = (-len(data)) % 512
    return ti.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * pad


class _Zeros(io.RawIOBase):
    def __init__(self, n: int):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        k = min(len(b), self.left)
        b[:k] = b"\0" * k
        self.left -= k
        return k


def _sidecar(path: Path, keys: list[str]) -> None:
    pq.write_table(pa.table({"key": keys, "url": [f"http://x/{k}" for k in keys], "caption": [None] * len(keys),
                             "status": ["success"] * len(keys), "error_message": [None] * len(keys)}), path)


# ---- the decode: exact integer forms, scan cap, CPU budget (in-process, fast) --------------------------------

def test_integer_alpha_and_16_bit_forms_equal_the_float64_ones_for_every_input():
    a = np.arange(256)[:, None].repeat(256, 1)
    c = np.arange(256)[None, :].repeat(256, 0)
    ref = np.rint((a / 255 * c + 255 - a).clip(0, 255)).astype(np.uint8)  # img2dataset's matting, float64
    im = Image.fromarray(np.dstack([c, c, c, a]).astype(np.uint8), "RGBA")
    assert np.array_equal(dec.rgb_array(im)[:, :, 0], ref)
    x = np.arange(0, 65536, dtype=np.uint16).reshape(256, 256)
    ref16 = np.clip(np.rint(x.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    assert np.array_equal(dec.rgb_array(Image.fromarray(x))[:, :, 0], ref16)


def test_rgba_kodak_png_pixels_unchanged():
    photo = Image.open(sorted((PHOTOS / "kodak").glob("*.png"))[0]).convert("RGB") if (PHOTOS / "kodak").is_dir() \
        else pytest.skip("real photos absent")
    arr = np.asarray(photo)
    alpha = np.random.default_rng(0).integers(0, 256, arr.shape[:2], dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.dstack([arr, alpha]), "RGBA").save(buf, "PNG")
    a = alpha[:, :, None].astype(np.float64)
    ref = np.rint((a / 255 * arr + 255 - a).clip(0, 255)).astype(np.uint8)
    got = dec.decode_for_index(buf.getvalue())
    assert np.array_equal(got.rgb, ref)
    assert np.array_equal(np.asarray(dec.decode_rgb(buf.getvalue())), ref)


def test_scan_cap_from_markers_and_cpu_budget():
    bomb = scan_bomb(3000)
    assert dec.jpeg_scan_count(bomb) == 3010
    with pytest.raises(dec.DecodeError) as e:
        dec.decode_for_index(bomb)
    assert e.value.reason == "too_many_scans"
    with pytest.raises(dec.DecodeError) as e:  # the cap off: the CPU budget stops it between decoder blocks
        dec.decode_for_index(bomb, max_jpeg_scans=None, cpu_budget_s=0.2)
    assert e.value.reason == "over_cpu_budget"
    with pytest.raises(dec.DecodeError) as e:
        dec.decode_rgb(bomb)
    assert e.value.reason == "too_many_scans"
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (5, 6, 7)).save(buf, "JPEG", progressive=True)
    assert dec.jpeg_scan_count(buf.getvalue()) <= 20 and dec.decode_for_index(buf.getvalue()).width == 40


# ---- through the index, bounded --------------------------------------------------------------------------

def test_folder_rgba_bomb_and_scan_bomb(tmp_path, baseline):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "good.jpg").write_bytes(_photos(1)[0])
    (ds / "alpha.png").write_bytes(rgba_bomb())
    (ds / "scans.jpg").write_bytes(scan_bomb(3000))
    rss, idx = _index(ds, tmp_path / "run")
    indexed, errors, _ = _accounted(idx)
    assert set(indexed) == {("00000", "good.jpg"), ("00000", "alpha.png")}  # the RGBA image is legitimate
    assert indexed[("00000", "alpha.png")]["width"] == BIG
    assert set(errors) == {("00000", "scans.jpg")}
    assert errors[("00000", "scans.jpg")]["stage"] == "decode"
    assert errors[("00000", "scans.jpg")]["error"].startswith("too_many_scans")
    print(f"peak RSS {rss:.0f} MB, baseline {baseline:.0f} MB")
    assert rss <= 2 * baseline, (rss, baseline)


def test_webdataset_nested_json_big_caption_gzip_bomb_and_lying_header(tmp_path, baseline):
    ph = _photos(4)
    ds = tmp_path / "wds"
    ds.mkdir()
    deep = b"[" * 100_000 + b"]" * 100_000  # json.loads: RecursionError
    (ds / "00000.tar").write_bytes(
        _tar_member("a.jpg", ph[0]) + _tar_member("a.txt", b"cap a")
        + _tar_member("b.jpg", ph[1]) + _tar_member("b.json", deep)
        + _tar_member("c.jpg", ph[2]) + _tar_member("c.txt", b"x" * (9 << 20))  # over max_text_bytes (8 MiB)
        + _tar_member("d.jpg", ph[3]) + b"\0" * 1024)
    # a gzip'd tar (named .tar, as img2dataset names them) whose 300 MB caption expands ~1000x: past
    # max(256 MiB, 100 x stored bytes) the rest is a broken container; the sidecar names what was lost
    with gzip.GzipFile(ds / "00001.tar", "wb", compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("e.jpg", ph[0]), ("f.jpg", ph[1])):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("f.txt")
        ti.size = 300 << 20
        tf.addfile(ti, _Zeros(ti.size))
        ti = tarfile.TarInfo("g.jpg")
        ti.size = len(ph[2])
        tf.addfile(ti, io.BytesIO(ph[2]))
    _sidecar(ds / "00001.parquet", ["e", "f", "g"])
    # a member header claiming 2**60 bytes (tarfile's stream-mode skip spun forever)
    (ds / "00002.tar").write_bytes(_tar_member("h.jpg", ph[0]) + _tar_member("i.jpg", ph[1][:1000], size=1 << 60)
                                   + _tar_member("j.jpg", ph[2]) + b"\0" * 1024)
    _sidecar(ds / "00002.parquet", ["h", "i", "j"])
    rss, idx = _index(ds, tmp_path / "run")
    indexed, errors, _ = _accounted(idx)
    assert set(indexed) == {("00000", "a"), ("00000", "b"), ("00000", "d"), ("00001", "e"), ("00001", "f"),
                            ("00002", "h"), ("00002", "j")}  # j: read after a resync to the next valid header
    assert indexed[("00000", "a")]["caption"] == "cap a"
    assert set(errors) == {("00000", "c"), ("00001", "00001/__tar__"), ("00001", "g"), ("00002", "i")}
    assert errors[("00000", "c")]["error"].startswith("too_many_bytes") and "max_text_bytes" in \
        errors[("00000", "c")]["error"]
    assert "max_expansion" in errors[("00001", "00001/__tar__")]["error"]
    assert errors[("00001", "00001/__tar__")]["error"].endswith("first key lost: g")
    assert str(1 << 60) in errors[("00002", "i")]["error"] and "resumed" in errors[("00002", "i")]["error"]
    assert all(r["stage"] == "read" for r in errors.values())
    print(f"peak RSS {rss:.0f} MB, baseline {baseline:.0f} MB")
    assert rss <= 2 * baseline, (rss, baseline)


def test_parquet_declared_bomb_big_caption_and_bad_value(tmp_path, baseline):
    ph = _photos(4)
    ds = tmp_path / "pq"
    ds.mkdir()
    width = pa.array([256, 256, 10 ** 12, 256], pa.timestamp("s"))  # row k2: year 33658, not convertible
    pq.write_table(pa.table({"key": ["k0", "k1", "k2", "k3"], "jpg": ph,
                             "caption": ["zero", "y" * (9 << 20), "two", "three"], "width": width}),
                   ds / "00000.parquet")
    # row group 0 declares 300 MB in a few KB (zstd of zeros); row group 1 is a good photo
    schema = pa.schema([("key", pa.string()), ("jpg", pa.binary())])
    with pq.ParquetWriter(ds / "00001.parquet", schema, compression="zstd") as w:
        w.write_table(pa.table({"key": ["z0", "z1"], "jpg": [b"\0" * (300 << 20), ph[0]]}, schema=schema))
        w.write_table(pa.table({"key": ["z2"], "jpg": [ph[1]]}, schema=schema))
    cc = pq.ParquetFile(ds / "00001.parquet").metadata.row_group(0).column(1)
    assert cc.total_uncompressed_size > 1000 * cc.total_compressed_size  # 300 MB declared in ~250 KB
    rss, idx = _index(ds, tmp_path / "run")
    indexed, errors, _ = _accounted(idx)
    assert set(indexed) == {("00000", "k0"), ("00000", "k3"), ("00001", "z2")}
    assert set(errors) == {("00000", "k1"), ("00000", "k2"), ("00001", "z0"), ("00001", "z1")}
    assert "max_text_bytes" in errors[("00000", "k1")]["error"]
    assert "OverflowError" in errors[("00000", "k2")]["error"]
    assert all("max_expansion" in errors[("00001", k)]["error"] for k in ("z0", "z1"))
    from auditor.io.detect import open_dataset

    reader = open_dataset(ds)  # the report's and the guard's one-image lookups pass the same footer check
    assert reader.get("00001", "z2").data == ph[1]
    assert reader.get("00001", "z0").data is None and "max_expansion" in reader.get("00001", "z0").error
    assert reader.get("00000", "k3").data == ph[3]
    print(f"peak RSS {rss:.0f} MB, baseline {baseline:.0f} MB")
    assert rss <= 2 * baseline, (rss, baseline)


def test_folder_and_files_captions_are_stat_ed_and_capped(tmp_path):
    """A FIFO caption (``cat`` would block forever) and a 9 MiB caption are read errors with their keys; the
    photo beside them is read. In-process: nothing here can block once the stat comes first."""
    from auditor.io.detect import open_dataset

    ph = _photos(3)
    folder = tmp_path / "folder"
    folder.mkdir()
    for k, data in zip("abc", ph):
        (folder / f"{k}.jpg").write_bytes(data)
    os.mkfifo(folder / "b.txt")
    (folder / "c.txt").write_bytes(b"z" * (9 << 20))
    (folder / "a.txt").write_text("caption a")
    r = open_dataset(folder, layout="folder")
    out = {s.key: s for ref in r.shards() for s in r.read_shard(ref)}
    assert out["a.jpg"].data == ph[0] and out["a.jpg"].caption == "caption a"
    assert out["b.jpg"].data is None and "not_a_regular_file" in out["b.jpg"].error
    assert out["c.jpg"].data is None and "too_many_bytes" in out["c.jpg"].error
    files = tmp_path / "files" / "00000"
    files.mkdir(parents=True)
    for k, data in zip("abc", ph):
        (files / f"{k}.jpg").write_bytes(data)
    os.mkfifo(files / "b.json")
    (files / "c.txt").write_bytes(b"z" * (9 << 20))
    r = open_dataset(files.parent, layout="files")
    out = {s.key: s for ref in r.shards() for s in r.read_shard(ref)}
    assert out["a"].data == ph[0]
    assert out["b"].data is None and "not_a_regular_file" in out["b"].error
    assert out["c"].data is None and "too_many_bytes" in out["c"].error
