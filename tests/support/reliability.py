"""Builders of the reliability tests (``tests/reliability/``): reliability on hostile and broken inputs: the code-made corrupted-image corpus (tests/support/corpus.py) and
layout-level breakage (broken tar, missing .txt/.json members, duplicate keys, non-UTF-8 and 1 MB captions,
null image bytes, NUL characters, dangling symlinks, non-UTF-8 file names), mixed with good real photos in the
same shards of all four layouts (webdataset tar, img2dataset parquet, img2dataset files, plain folder).

Every layout goes through index -> dedup -> report (and the guard on a few corpus images) with 0 crashes, and:

* every bad sample is in ``index/errors.parquet`` with its key, shard, stage and a reason;
* every good sample (real photos and the odd-but-valid corpus images) of the same shards is indexed;
* index rows + errors + not-downloaded rows account for every sample written (nothing is silently dropped).

Every ``tests/reliability/test_reliability*`` file uses these builders.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .corpus import CORPUS_MAX_PIXELS, make_corrupt_corpus

from auditor.config import AuditorConfig

BIG_CAPTION = ("a very long caption " * 52_429)[:1_048_576]  # 1 MiB
NON_UTF8 = b"caf\xe9 au lait \xff\xfe photo"  # latin-1 bytes, invalid UTF-8

# img2dataset's sidecar columns (the subset the readers use + sizes)
SIDECAR_SCHEMA = pa.schema([("key", pa.string()), ("url", pa.string()), ("caption", pa.string()),
                            ("status", pa.string()), ("error_message", pa.string()),
                            ("width", pa.int32()), ("height", pa.int32())])


def corpus_items(tmp: Path) -> list[dict]:
    """The corrupted-image corpus as sample dicts: key (file name with '.' -> '_'), ext, data, ok, reason."""
    cdir = tmp / "_corpus"
    exp = make_corrupt_corpus(cdir)
    out = []
    for name in sorted(exp):
        e = exp[name]
        stem, ext = name.rsplit(".", 1)
        out.append({"key": f"c_{stem}_{ext}", "name": name, "ext": ext, "data": (cdir / name).read_bytes(),
                    "ok": e["ok"], "reason": e.get("reason"), "caption": f"corpus file {name}"})
    return out


def photo_items(photos: list[Path], prefix: str) -> list[dict]:
    return [{"key": f"{prefix}{i:04d}", "name": p.name, "ext": p.suffix[1:].lower(), "data": p.read_bytes(),
             "ok": True, "reason": None, "caption": f"a real photo {p.stem}"} for i, p in enumerate(photos)]


class Expect:
    """What a built dataset must index: ``good[(shard, key)]``, ``bad[(shard, key)] = (stage, substring)``,
    ``not_indexed`` (img2dataset failures), and captions to check on indexed rows."""

    def __init__(self):
        self.good: set[tuple[str, str]] = set()
        self.bad: list[tuple[str, str, str, str]] = []  # shard, key, stage, error substring
        self.not_indexed: set[tuple[str, str]] = set()
        self.captions: dict[tuple[str, str], str] = {}

    def add(self, shard: str, item: dict) -> None:
        if item["ok"]:
            self.good.add((shard, item["key"]))
        else:
            self.bad.append((shard, item["key"], "decode", item["reason"]))


def tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o444, 1_700_000_000
    tf.addfile(ti, io.BytesIO(data))


def _tarinfo_raw_name(name: bytes, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
    ti.size, ti.mode, ti.mtime = size, 0o444, 1_700_000_000
    return ti


def _meta_json(item: dict) -> bytes:
    return json.dumps({"key": item["key"], "url": f"http://example.com/{item['name']}", "status": "success",
                       "caption": item["caption"]}).encode()


def _side_row(item: dict, status: str = "success", error: str | None = None) -> dict:
    return {"key": item["key"], "url": f"http://example.com/{item['name']}", "caption": item["caption"],
            "status": status, "error_message": error, "width": None, "height": None}


def _write_sidecar(path: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=SIDECAR_SCHEMA), path)


def _special_items(photos: list[Path]) -> dict[str, dict]:
    """Good real photos carrying odd captions / members (keys say what they test)."""
    base = photo_items(photos, "x")
    names = ["no_txt", "no_json", "non_utf8_caption", "big_caption", "dup"]
    return {n: dict(base[i], key=f"s_{n}") for i, n in enumerate(names)}


def build_webdataset(root: Path, photos: list[Path], tmp: Path) -> Expect:
    """00000.tar: photos + the corpus + missing .txt / .json + duplicate key + non-UTF-8 / 1 MB captions + a
    failed download; 00001.tar: photos, then the tar is cut mid-member (a broken tar)."""
    root.mkdir(parents=True, exist_ok=True)
    ex = Expect()
    corpus = corpus_items(tmp)
    good = photo_items(photos[:4], "p0_")
    sp = _special_items(photos[4:9])
    rows = []
    with tarfile.open(root / "00000.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for it in good[:2] + corpus + good[2:]:
            for ext, data in sorted({it["ext"]: it["data"], "txt": it["caption"].encode(),
                                     "json": _meta_json(it)}.items()):
                tar_add(tf, f"{it['key']}.{ext}", data)
            rows.append(_side_row(it))
            ex.add("00000", it)
        it = sp["no_txt"]  # caption falls back to the JSON
        tar_add(tf, f"{it['key']}.jpg", it["data"])
        tar_add(tf, f"{it['key']}.json", _meta_json(it))
        rows.append(_side_row(it))
        ex.add("00000", it)
        ex.captions[("00000", it["key"])] = it["caption"]
        it = sp["no_json"]
        tar_add(tf, f"{it['key']}.jpg", it["data"])
        tar_add(tf, f"{it['key']}.txt", it["caption"].encode())
        rows.append(_side_row(it))
        ex.add("00000", it)
        ex.captions[("00000", it["key"])] = it["caption"]
        it = sp["non_utf8_caption"]
        tar_add(tf, f"{it['key']}.jpg", it["data"])
        tar_add(tf, f"{it['key']}.txt", NON_UTF8)
        rows.append(_side_row(it))
        ex.add("00000", it)
        ex.captions[("00000", it["key"])] = NON_UTF8.decode("utf-8", errors="replace")
        it = sp["big_caption"]
        tar_add(tf, f"{it['key']}.jpg", it["data"])
        tar_add(tf, f"{it['key']}.txt", BIG_CAPTION.encode())
        rows.append(_side_row(it))
        ex.add("00000", it)
        ex.captions[("00000", it["key"])] = BIG_CAPTION
        it = sp["dup"]  # the same key twice: the first is indexed, the second recorded
        tar_add(tf, f"{it['key']}.jpg", it["data"])
        tar_add(tf, f"{it['key']}.txt", b"first")
        tar_add(tf, f"{it['key']}.jpg", good[0]["data"])
        tar_add(tf, f"{it['key']}.txt", b"second")
        rows.append(_side_row(it))
        ex.add("00000", it)
        ex.captions[("00000", it["key"])] = "first"
        ex.bad.append(("00000", it["key"], "read", "duplicate key"))
        # a member name that is not UTF-8 (tarfile decodes it with surrogateescape)
        tf.addfile(_tarinfo_raw_name(b"s_latin1_\xe9.jpg", len(good[1]["data"])), io.BytesIO(good[1]["data"]))
        ex.bad.append(("00000", "s_latin1_\\xe9", "read", "not valid UTF-8"))
        # hostile JSON: a lone surrogate escape in the URL and a non-dict document
        it = dict(good[2], key="s_surrogate_json")
        tar_add(tf, f"{it['key']}.jpg", it["data"])
        tar_add(tf, f"{it['key']}.json", b'{"url": "http://e.com/\\udc80\\ud800", "caption": "json caption"}')
        ex.add("00000", it)
        ex.captions[("00000", it["key"])] = "json caption"
        it = dict(good[3], key="s_json_list")
        tar_add(tf, f"{it['key']}.jpg", it["data"])
        tar_add(tf, f"{it['key']}.json", b"[1, 2, 3]")
        ex.add("00000", it)
        # two images under one key: the first is the sample, the second an error (never silently dropped)
        it = dict(good[1], key="s_two_images")
        tar_add(tf, f"{it['key']}.jpg", it["data"])
        tar_add(tf, f"{it['key']}.png", corpus[0]["data"])
        ex.add("00000", it)
        ex.bad.append(("00000", it["key"], "read", "a second image (s_two_images.png)"))
        # a tar member with no image at all
        tar_add(tf, "s_orphan.txt", b"a caption without its image")
        ex.bad.append(("00000", "s_orphan", "read", "no image member"))
    failed = {"key": "s_failed", "name": "gone.jpg", "caption": "gone"}
    rows.append(_side_row(failed, status="failed_to_download", error="HTTP Error 404: Not Found"))
    ex.not_indexed.add(("00000", "s_failed"))
    _write_sidecar(root / "00000.parquet", rows)

    # 00001.tar: cut in the middle of the 4th photo's bytes
    shard1 = photo_items(photos[9:14], "p1_")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        offsets = []
        for it in shard1:
            offsets.append(buf.tell())
            tar_add(tf, f"{it['key']}.jpg", it["data"])
            tar_add(tf, f"{it['key']}.txt", it["caption"].encode())
    raw = buf.getvalue()
    cut = offsets[3] + 512 + len(shard1[3]["data"]) // 2
    (root / "00001.tar").write_bytes(raw[:cut])
    _write_sidecar(root / "00001.parquet", [_side_row(it) for it in shard1])
    for it in shard1[:3]:
        ex.add("00001", it)
    for it in shard1[3:]:
        ex.bad.append(("00001", it["key"], "read", "tar broke before it"))
    ex.bad.append(("00001", "00001/__tar__", "read", "broken tar"))
    return ex


def build_parquet(root: Path, photos: list[Path], tmp: Path) -> Expect:
    """00000.parquet (img2dataset schema): photos + the corpus in the ``jpg`` column + a success row with null
    bytes + NUL characters in key and caption + a duplicate key + a failed download; 00001.parquet stores
    captions as binary (non-UTF-8, 1 MB) and has a null key."""
    root.mkdir(parents=True, exist_ok=True)
    ex = Expect()
    corpus = corpus_items(tmp)
    good = photo_items(photos[:4], "p0_")
    rows = []
    for it in good[:2] + corpus + good[2:]:
        rows.append({"key": it["key"], "jpg": it["data"], "txt": it["caption"], "url": "http://e.com/" + it["name"],
                     "status": "success", "error_message": None})
        ex.add("00000", it)
    rows.append({"key": "s_null_bytes", "jpg": None, "txt": "no bytes", "url": "http://e.com/n",
                 "status": "success", "error_message": None})
    ex.bad.append(("00000", "s_null_bytes", "read", "is null"))
    rows.append({"key": "s_nul\x00key", "jpg": good[0]["data"], "txt": "nul\x00in\x00caption", "url": "http://e.com/z",
                 "status": "success", "error_message": None})
    ex.good.add(("00000", "s_nulkey"))
    ex.captions[("00000", "s_nulkey")] = "nulincaption"
    rows.append({"key": good[1]["key"], "jpg": good[2]["data"], "txt": "second copy of a key", "url": "http://e.com/d",
                 "status": "success", "error_message": None})
    ex.bad.append(("00000", good[1]["key"], "read", "duplicate key"))
    rows.append({"key": "s_failed", "jpg": None, "txt": "gone", "url": "http://e.com/404",
                 "status": "failed_to_download", "error_message": "HTTP Error 404"})
    ex.not_indexed.add(("00000", "s_failed"))
    schema = pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("txt", pa.string()), ("url", pa.string()),
                        ("status", pa.string()), ("error_message", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "00000.parquet", row_group_size=7)

    sp = photo_items(photos[4:8], "p1_")
    rows1 = [{"key": sp[0]["key"], "jpg": sp[0]["data"], "txt": NON_UTF8},
             {"key": sp[1]["key"], "jpg": sp[1]["data"], "txt": BIG_CAPTION.encode()},
             {"key": None, "jpg": sp[2]["data"], "txt": b"no key"},
             {"key": sp[3]["key"], "jpg": b"", "txt": b"empty bytes"}]
    schema1 = pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("txt", pa.binary())])
    pq.write_table(pa.Table.from_pylist(rows1, schema=schema1), root / "00001.parquet")
    ex.good |= {("00001", sp[0]["key"]), ("00001", sp[1]["key"]), ("00001", "00001_000000002")}
    ex.captions[("00001", sp[0]["key"])] = NON_UTF8.decode("utf-8", errors="replace")
    ex.captions[("00001", sp[1]["key"])] = BIG_CAPTION
    ex.bad.append(("00001", sp[3]["key"], "decode", "empty"))
    # a third "shard" that is not parquet at all
    (root / "00002.parquet").write_bytes(b"PAR1 this is not a parquet file")
    ex.bad.append(("00002", "00002/__parquet__", "read", "unreadable parquet"))
    return ex


def build_files(root: Path, photos: list[Path], tmp: Path) -> Expect:
    """img2dataset files layout: 00000/ holds photos + the corpus (key.ext + key.txt + key.json) + members
    without .txt / .json + non-UTF-8 / 1 MB captions + a sidecar row whose file is missing + a failed download."""
    root.mkdir(parents=True, exist_ok=True)
    ex = Expect()
    corpus = corpus_items(tmp)
    good = photo_items(photos[:4], "p0_")
    sp = _special_items(photos[4:9])
    d = root / "00000"
    d.mkdir()
    rows = []
    for it in good + corpus:
        (d / f"{it['key']}.{it['ext']}").write_bytes(it["data"])
        (d / f"{it['key']}.txt").write_text(it["caption"], encoding="utf-8")
        (d / f"{it['key']}.json").write_bytes(_meta_json(it))
        rows.append(_side_row(it))
        ex.add("00000", it)
    it = sp["no_txt"]
    (d / f"{it['key']}.jpg").write_bytes(it["data"])
    (d / f"{it['key']}.json").write_bytes(_meta_json(it))
    ex.add("00000", it)
    ex.captions[("00000", it["key"])] = it["caption"]
    it = sp["no_json"]
    (d / f"{it['key']}.jpg").write_bytes(it["data"])
    (d / f"{it['key']}.txt").write_bytes(it["caption"].encode())
    ex.add("00000", it)
    ex.captions[("00000", it["key"])] = it["caption"]
    it = sp["non_utf8_caption"]
    (d / f"{it['key']}.jpg").write_bytes(it["data"])
    (d / f"{it['key']}.txt").write_bytes(NON_UTF8)
    ex.add("00000", it)
    ex.captions[("00000", it["key"])] = NON_UTF8.decode("utf-8", errors="replace")
    it = sp["big_caption"]
    (d / f"{it['key']}.jpg").write_bytes(it["data"])
    (d / f"{it['key']}.txt").write_bytes(BIG_CAPTION.encode())
    ex.add("00000", it)
    ex.captions[("00000", it["key"])] = BIG_CAPTION
    it = dict(good[1], key="s_two_images")  # k.png and k.webp: k.png is the sample whatever the listing order
    (d / f"{it['key']}.webp").write_bytes(corpus[0]["data"])
    (d / f"{it['key']}.png").write_bytes(it["data"])
    ex.add("00000", it)
    ex.bad.append(("00000", it["key"], "read", "a second image (s_two_images.webp) for this key; only s_two_images.png"))
    missing = {"key": "s_missing_file", "name": "m.jpg", "caption": "listed, never written"}
    rows.append(_side_row(missing))
    ex.bad.append(("00000", "s_missing_file", "read", "image file is missing"))
    failed = {"key": "s_failed", "name": "gone.jpg", "caption": "gone"}
    rows.append(_side_row(failed, status="failed_to_download", error="HTTP Error 404: Not Found"))
    ex.not_indexed.add(("00000", "s_failed"))
    _write_sidecar(root / "00000.parquet", rows)
    return ex


def build_folder(root: Path, photos: list[Path], tmp: Path) -> Expect:
    """A plain folder: photos + the corpus under their own names (sidecar .txt captions, non-UTF-8 and 1 MB
    among them), a dangling symlink, a directory named like an image and a non-UTF-8 file name."""
    root.mkdir(parents=True, exist_ok=True)
    ex = Expect()
    corpus = corpus_items(tmp)
    good = photo_items(photos[:4], "p_")
    (root / "sub").mkdir()
    for it in good:
        rel = f"sub/{it['name']}"
        (root / rel).write_bytes(it["data"])
        ex.good.add(("00000", rel))
    (root / "sub" / (good[0]["name"].rsplit(".", 1)[0] + ".txt")).write_bytes(NON_UTF8)
    ex.captions[("00000", f"sub/{good[0]['name']}")] = NON_UTF8.decode("utf-8", errors="replace")
    (root / "sub" / (good[1]["name"] + ".txt")).write_bytes(BIG_CAPTION.encode())
    ex.captions[("00000", f"sub/{good[1]['name']}")] = BIG_CAPTION
    for it in corpus:
        (root / it["name"]).write_bytes(it["data"])
        if it["ok"]:
            ex.good.add(("00000", it["name"]))
        else:
            ex.bad.append(("00000", it["name"], "decode", it["reason"]))
    os.symlink(root / "does_not_exist.jpg", root / "dangling.jpg")
    ex.bad.append(("00000", "dangling.jpg", "read", "cannot read"))
    (root / "a_directory.jpg").mkdir()  # not a file: not a sample
    bad_name = os.fsencode(root) + b"/latin1_\xe9t\xe9.jpg"
    with open(bad_name, "wb") as fh:
        fh.write(good[2]["data"])
    ex.bad.append(("00000", "latin1_\\xe9t\\xe9.jpg", "read", "not valid UTF-8"))
    return ex


BUILDERS = {"webdataset": build_webdataset, "parquet": build_parquet, "files": build_files,
            "folder": build_folder}


def corpus_config(**index) -> AuditorConfig:
    index.setdefault("progress", False)
    index.setdefault("decode", {"max_pixels": CORPUS_MAX_PIXELS})
    return AuditorConfig.model_validate({"index": index, "dedup": {"progress": False, "placeholder_min_cluster": 2},
                                         "report": {"progress": False}})


def real_photos(imagenet, kodak) -> list[Path]:
    return imagenet[:12] + kodak[:2]


CORPUS_SETS = ["--set", "index.progress=false", "--set", f"index.decode.max_pixels={CORPUS_MAX_PIXELS}",
               "--set", "dedup.progress=false", "--set", "report.progress=false"]
