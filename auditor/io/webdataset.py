"""img2dataset's ``output_format=webdataset``: ``NNNNN.tar`` shards holding ``<key>.jpg`` (or png/webp),
``<key>.txt`` and ``<key>.json``, each with a sidecar ``NNNNN.parquet`` listing every row (failed ones too)
and ``NNNNN_stats.json``.

Tars are streamed member by member (``tarfile`` stream mode over ``fsspec.open``), so at most one sample's
bytes are in memory. Consecutive members sharing a key form one sample (webdataset's convention: the key is
the member name up to the first dot of its base name).
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
import zlib
from typing import Any, Iterator, Optional

from .base import (
    shard_id,
    DEFAULT_MAX_EXPANSION,
    DEFAULT_MAX_MEMBER_BYTES,
    DEFAULT_MAX_TEXT_BYTES,
    EXPANSION_FLOOR,
    IMAGE_EXTS,
    READ_ERROR,
    READERS,
    DatasetReader,
    Sample,
    ShardRef,
    clean_str,
    decode_text,
    read_sidecar,
    split_key,
    to_url,
    url_to_fs,
)

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar",)
TEXT_EXTS = ("txt", "json")
# magic bytes of the compressions tarfile's "r|*" opens (gzip, bzip2, xz)
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def next_header(fh, pos: int, end: int) -> Optional[int]:
    """The offset of the first 512-aligned block at or after ``pos`` (and before ``end``) that parses as a
    ustar/GNU header with a valid checksum, or None: GNU tar's resync after a bad header. The ``ustar`` magic
    is searched in 1 MiB reads (one C-level ``find`` each), and only blocks with it at offset 257 are parsed."""
    pos = -(-pos // 512) * 512
    while pos + 512 <= end:
        fh.seek(pos)
        chunk = fh.read(1 << 20)
        if len(chunk) < 512:
            return None
        j = chunk.find(b"ustar", 257)
        while j >= 0:
            start = j - 257
            if start % 512 == 0 and start + 512 <= len(chunk):
                try:
                    tarfile.TarInfo.frombuf(chunk[start:start + 512], "utf-8", "surrogateescape")
                    return pos + start
                except tarfile.HeaderError:
                    pass
            j = chunk.find(b"ustar", j + 1)
        pos += len(chunk) - len(chunk) % 512
    return None


class Oversized(str):
    """A member that was not read (over its size limit): the text is the error its sample is recorded with."""

_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)


def shard_stem(path: str) -> str:
    base = posixpath.basename(path.rstrip("/"))
    for suf in TAR_SUFFIXES + (".parquet",):
        if base.endswith(suf):
            return base[: -len(suf)]
    return base


def sidecar_rows_by_key(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("key") is not None:
            out.setdefault(r["key"], r)
    return out


def failed_sample(row: dict, shard: str) -> Sample:
    """A sidecar row img2dataset did not download -> a Sample without bytes."""
    return Sample(key=row.get("key") or "", shard=shard, data=None, caption=row.get("caption"),
                  url=row.get("url"), status=row.get("status") or READ_ERROR, error=row.get("error_message"),
                  meta={"source": "sidecar"})


def parse_json_meta(data: bytes | None) -> tuple[dict, Optional[str]]:
    """img2dataset's per-sample JSON -> (dict, error or None)."""
    if data is None:
        return {}, None
    try:
        obj = json.loads(decode_text(data) or "{}")
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's stack
        return {}, f"unreadable .json: {type(exc).__name__}: {exc}"
    return (obj if isinstance(obj, dict) else {}), None


_META_FIELDS = ("width", "height", "original_width", "original_height", "sha256")


def build_sample(key: str, shard: str, members: dict[str, bytes], side: Optional[dict],
                 duplicate: bool, source: Optional[str] = None) -> Sample:
    """One grouped sample (extension -> bytes) -> Sample. The caption comes from ``.txt`` (falling back to the
    JSON's ``caption`` and then the sidecar), the URL from the JSON (falling back to the sidecar)."""
    meta: dict[str, Any] = {}
    if duplicate:
        meta["duplicate_key"] = True
    if source:
        meta["source"] = source
    over = next((v for v in members.values() if isinstance(v, Oversized)), None)
    if over is not None:  # a caption/JSON too large to read: the sample is recorded, its image not indexed
        return Sample(key=key, shard=shard, data=None, status=READ_ERROR, error=str(over),
                      url=side.get("url") if side else None, meta=meta)
    j, jerr = parse_json_meta(members.get("json"))
    if jerr:
        meta["json_error"] = jerr
    for f in _META_FIELDS:
        if j.get(f) is not None:
            meta[f] = j[f]
    if j:
        meta["json"] = j  # every field: img2dataset's --save_additional_columns, LAION's metadata (index.carry_columns)
    caption = decode_text(members["txt"]) if "txt" in members else None
    if caption is None:
        caption = clean_str(j.get("caption")) if j.get("caption") is not None else None
    if caption is None and side:
        caption = side.get("caption")
    url = clean_str(j.get("url")) if j.get("url") is not None else None
    if url is None and side:
        url = side.get("url")
    ext = next((e for e in members if e in IMAGE_EXTS), None)
    if ext is None:
        exts = ", ".join(sorted(e or "(none)" for e in members))
        return Sample(key=key, shard=shard, data=None, caption=caption, url=url, status=READ_ERROR,
                      error=f"no image member for this key (members: {exts})", meta=meta)
    return Sample(key=key, shard=shard, data=members[ext], caption=caption, url=url, status="success",
                  stored_ext=ext, meta=meta)


def extra_image_errors(key: str, shard: str, exts) -> list[Sample]:
    """A key with more than one image member (``k.jpg`` and ``k.png``): the first (in member order) is the
    sample; each other one becomes an error sample, so no image is dropped silently."""
    images = [e for e in exts if e in IMAGE_EXTS]
    return [Sample(key=key, shard=shard, data=None, status=READ_ERROR,
                   error=f"a second image ({key}.{e}) for this key; only {key}.{images[0]} is indexed")
            for e in images[1:]]


@READERS.register("webdataset")
class WebDatasetReader(DatasetReader):
    """Reader for img2dataset webdataset output (``root`` = the output folder, or one ``.tar`` file)."""

    layout = "webdataset"

    def shards(self) -> list[ShardRef]:
        fs, root = url_to_fs(self.root)
        if fs.isfile(root):
            tars = [root]
            listing = set(fs.ls(posixpath.dirname(root), detail=False))
        else:
            listing = set(fs.ls(root, detail=False))
            tars = sorted(p for p in listing if p.endswith(TAR_SUFFIXES))
        refs = []
        for t in tars:
            stem = shard_stem(t)
            side = posixpath.join(posixpath.dirname(t), stem + ".parquet")
            refs.append(ShardRef(id=shard_id(stem), path=to_url(fs, t, self.root),
                                 extra=(to_url(fs, side, self.root) if side in listing else "",)))
        return refs

    # --- reading ------------------------------------------------------------------------------------
    def _sidecar(self, shard: ShardRef) -> tuple[list[dict], Optional[Sample]]:
        path = shard.extra[0] if shard.extra else ""
        try:
            return read_sidecar(path), None
        except Exception as exc:  # noqa: BLE001 - a corrupt sidecar must not lose the tar's images
            return [], Sample(key=f"{shard.id}/__sidecar__", shard=shard.id, data=None, status=READ_ERROR,
                              error=f"unreadable sidecar parquet {path}: {type(exc).__name__}: {exc}")

    def member_groups(self, shard: ShardRef, errors: list) -> Iterator[tuple[str, dict[str, bytes]]]:
        """Stream (key, {ext: bytes}) groups of consecutive members. On a broken tar, stops and appends an
        error description to ``errors``."""
        max_bytes = int(self.options.get("max_member_bytes") or DEFAULT_MAX_MEMBER_BYTES)
        max_text = int(self.options.get("max_text_bytes") or DEFAULT_MAX_TEXT_BYTES)
        key: Optional[str] = None
        group: dict[str, bytes] = {}
        current = ""
        lost: Optional[str] = None  # the key of the member being read when the tar broke
        try:
            fs, path = url_to_fs(shard.path)
            stored = int(fs.size(path) or 0)
            with fs.open(path, "rb") as fh:
                compressed = fh.read(6).startswith(_COMPRESSED)
                fh.seek(0)
                # where a member may end: the file's real size; a compressed tar's decompressed bytes are capped
                # (tarfile's stream mode skips a member by reading up to its declared end: a header claiming
                # 2**60 bytes spun forever, a gzip bomb decompressed to 9 GB)
                end_limit = max(EXPANSION_FLOOR, stored * int(self.options.get("max_expansion")
                                                               or DEFAULT_MAX_EXPANSION)) if compressed else stored
                what = "the decompressed-bytes cap (max_expansion)" if compressed else "the end of the file"
                start_at = 0  # where the current tarfile stream starts (moves on after a resync)
                while True:
                    fh.seek(start_at)
                    tf = tarfile.open(fileobj=fh, mode="r|*")
                    resync = None
                    for m in tf:
                        if start_at + m.offset_data + max(m.size, 0) > end_limit:
                            # an uncompressed tar is resynced, as GNU tar does, at the next block that parses
                            # as a checksummed ustar header; none after it (a truncated tar): a broken container
                            resync = None if compressed else next_header(fh, start_at + m.offset + 512, stored)
                            if resync is None:
                                current, lost = m.name, split_key(m.name)[0]
                                raise tarfile.ReadError(f"member header of {m.name} claims {m.size} bytes, "
                                                        f"past {what} ({end_limit} bytes); the rest of the tar "
                                                        "was not read")
                            errors.append(("member", split_key(m.name)[0], f"tar member header of {m.name} "
                                           f"claims {m.size} bytes, past {what} ({end_limit} bytes); not read; "
                                           f"reading resumed at the next valid header (byte {resync})"))
                            break
                        if not m.isfile():
                            if not m.isdir():  # links, devices, FIFOs: recorded, never followed
                                errors.append(("member", split_key(m.name)[0], f"tar member {m.name} is not a "
                                               f"regular file (tar type {m.type!r}); not read"))
                            continue
                        current = m.name
                        k, ext = split_key(m.name)
                        if posixpath.basename(k).startswith(".") or k.startswith("__"):
                            continue  # hidden files / webdataset meta members
                        if k != key or ext in group:
                            if group:
                                yield key, group
                            key, group = k, {}
                        if ext in TEXT_EXTS and m.size > max_text:
                            group[ext] = Oversized(f"too_many_bytes: tar member {m.name} is {m.size} bytes, over "
                                                   f"max_text_bytes={max_text}; not read")
                            continue
                        if m.size > max_bytes:
                            errors.append(("member", k, f"tar member {m.name} is {m.size} bytes, over the "
                                                        f"{max_bytes}-byte limit; not read"))
                            continue
                        f = tf.extractfile(m)
                        lost = k
                        group[ext] = f.read() if f is not None else b""
                        lost = None
                    if resync is None:
                        break
                    start_at = resync
                # tarfile stops silently at an invalid header after the first member: anything but zero
                # padding after the end-of-archive block means the rest of the tar was unreadable
                rest, tail = tf.fileobj, start_at + tf.offset
                while True:
                    chunk = rest.read(1 << 16)
                    tail += len(chunk)
                    if not chunk or tail > end_limit:
                        break
                    if chunk.count(0) != len(chunk):
                        raise tarfile.ReadError("invalid tar header after member "
                                                f"{current or '(start)'}; the rest of the tar was not read")
                tf.close()
        except _TAR_ERRORS as exc:
            where = f" (while reading member {current})" if current else ""
            errors.append(("tar", lost, f"broken tar {shard.path}{where}: {type(exc).__name__}: {exc}"))
        if group:
            yield key, group

    def read_shard(self, shard: ShardRef) -> Iterator[Sample]:
        rows, side_err = self._sidecar(shard)
        if side_err is not None:
            yield side_err
        by_key = sidecar_rows_by_key(rows)
        seen: set[str] = set()
        recorded: set[str] = set()  # keys already yielded as a member error: their sidecar row is not repeated
        errors: list = []
        for key, members in self.member_groups(shard, errors):
            reported = set()
            while errors and errors[0][0] == "member":
                _, k, msg = errors.pop(0)
                reported.add(k)
                recorded.add(k)
                yield Sample(key=k, shard=shard.id, data=None, status=READ_ERROR, error=msg)
            if not any(e in IMAGE_EXTS for e in members):
                if key in reported:
                    continue  # its image was over the size limit: reported just above
                if errors and errors[-1][0] == "tar":
                    continue  # its image was being read when the tar broke: reported below
            try:
                yield build_sample(key, shard.id, members, by_key.get(key), key in seen)
            except Exception as exc:  # noqa: BLE001 - one sample's bad metadata is confined to that sample
                yield Sample(key=key, shard=shard.id, data=None, status=READ_ERROR,
                             error=f"unreadable sample: {type(exc).__name__}: {exc}")
            yield from extra_image_errors(key, shard.id, members)
            seen.add(key)
        tar_broken = False
        for kind, k, msg in errors:
            if kind == "tar":
                tar_broken = True
                # the first key lost: the one being read at the break (unless it was still indexed), else the
                # first sidecar row the tar did not give
                first = k if k is not None and k not in seen else next(
                    (r.get("key") for r in rows if r.get("status") == "success" and r.get("key") not in seen), None)
                msg += (f"; first key lost: {first}" if first
                        else "; no sidecar row lost (keys after the break, if any, are unknown without one)")
                yield Sample(key=f"{shard.id}/__tar__", shard=shard.id, data=None, status=READ_ERROR, error=msg)
                if first is not None and first == k and k not in by_key:  # no sidecar row will record it
                    yield Sample(key=k, shard=shard.id, data=None, status=READ_ERROR,
                                 error="the tar broke while reading this sample")
            else:
                recorded.add(k)
                yield Sample(key=k, shard=shard.id, data=None, status=READ_ERROR, error=msg)
        # rows the tar does not hold: img2dataset's failures, and "success" rows missing from the tar
        for r in rows:
            if r.get("status") != "success":
                yield failed_sample(r, shard.id)
            elif r.get("key") not in seen and r.get("key") not in recorded:
                why = "the tar broke before it" if tar_broken else "absent from the tar"
                yield Sample(key=r.get("key") or "", shard=shard.id, data=None, caption=r.get("caption"),
                             url=r.get("url"), status=READ_ERROR,
                             error=f"listed as success in the sidecar parquet but {why}",
                             meta={"source": "sidecar"})

    def get(self, shard: str, key: str) -> Sample:
        ref = next((r for r in self.shards() if r.id == shard), None)
        if ref is None:
            raise KeyError(f"no shard {shard!r} in {self.root}")
        rows, _ = self._sidecar(ref)
        side = sidecar_rows_by_key(rows).get(key)
        if side is not None and side.get("status") != "success":
            return failed_sample(side, shard)
        errors: list = []
        for k, members in self.member_groups(ref, errors):
            if k == key:
                return build_sample(k, shard, members, side, False)
        raise KeyError(f"no sample {key!r} in shard {shard!r} of {self.root}")
