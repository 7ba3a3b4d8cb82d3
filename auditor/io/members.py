"""Every stored member of a sample, as the dataset holds it: what ``apply-manifest`` copies losslessly.

:func:`iter_members` streams one shard as :class:`Members` (key -> {extension: bytes}): a webdataset tar's
members as they are (image, ``.txt``, ``.json`` and any other member, e.g. ``.npy`` or ``.cls``), an img2dataset
files folder's files of each key, and for the parquet and folder layouts the image plus a ``.txt`` caption and a
``.json`` holding every scalar column of the row (img2dataset's own JSON shape), so any layout converts to any other.

Example:
    >>> from auditor.io import open_dataset
    >>> reader = open_dataset("laion-wds")                     # doctest: +SKIP
    >>> m = next(iter_members(reader, reader.shards()[0]))     # doctest: +SKIP
    >>> sorted(m.files)                                        # doctest: +SKIP
    ['jpg', 'json', 'txt']
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Iterator, Optional

from .base import IMAGE_EXTS, DatasetReader, ShardRef, cat_file, split_key, url_to_fs


@dataclass
class Members:
    key: str
    shard: str
    files: dict[str, bytes]

    def image_ext(self, preferred: Optional[str] = None) -> Optional[str]:
        """The image member's extension: ``preferred`` (the index's ``stored_ext``) when present, else the first."""
        if preferred and preferred in self.files:
            return preferred
        return next((e for e in self.files if e in IMAGE_EXTS), None)

    def json(self) -> dict:
        """The sample's JSON member as a dict ({} when absent or unreadable)."""
        try:
            obj = json.loads(self.files["json"].decode("utf-8")) if "json" in self.files else {}
        except (ValueError, UnicodeDecodeError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def caption(self) -> Optional[str]:
        if "txt" in self.files:
            return self.files["txt"].decode("utf-8", errors="replace")
        c = self.json().get("caption")
        return None if c is None else str(c)


def iter_members(reader: DatasetReader, ref: ShardRef) -> Iterator[Members]:
    """Every sample of shard ``ref`` with all its stored members, in the reader's order (first occurrence of a
    key only; samples without image bytes are skipped: they were never indexed)."""
    seen: set[str] = set()
    for m in _members(reader, ref):
        if m.key in seen or m.image_ext() is None:
            continue
        seen.add(m.key)
        yield m


def _members(reader: DatasetReader, ref: ShardRef) -> Iterator[Members]:
    if reader.layout == "webdataset":
        errors: list = []
        for key, files in reader.member_groups(ref, errors):
            yield Members(key, ref.id, dict(files))
        return
    if reader.layout == "files":
        fs, root = url_to_fs(ref.path)
        groups: dict[str, dict[str, str]] = {}
        for p in sorted(fs.ls(root, detail=False)):
            key, ext = split_key(posixpath.basename(p.rstrip("/")))
            if ext and not key.startswith("."):
                groups.setdefault(key, {})[ext] = p
        for key in sorted(groups):
            try:
                yield Members(key, ref.id, {e: cat_file(fs, p) for e, p in groups[key].items()})
            except OSError:
                continue  # unreadable: the caller records the kept sample as not found
        return
    for s in reader.read_shard(ref):
        if s.data is None:
            continue
        ext = s.stored_ext or "jpg"
        record = {"key": s.key, "caption": s.caption, "url": s.url, "status": "success",
                  **((s.meta or {}).get("json") or {})}
        files = {ext: s.data, "json": json.dumps(record, indent=4, default=str).encode("utf-8")}
        if s.caption is not None:
            files["txt"] = s.caption.encode("utf-8")
        yield Members(s.key, s.shard, files)
