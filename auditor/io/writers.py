"""Writers that produce img2dataset-compatible datasets (used by ``auditor apply-manifest``).

:class:`WebDatasetWriter` writes ``NNNNN.tar`` shards (``<key>.<ext>``, ``<key>.json``, ``<key>.txt`` per sample,
members of a sample in sorted extension order as webdataset's ``TarWriter`` writes them), a sidecar
``NNNNN.parquet`` (``url``, ``caption``, ``key``, ``status``, ``error_message``, ``sha256``,
``original_key``) listing every row, failed ones included, and ``NNNNN_stats.json`` -- the files img2dataset
writes, so its readers, ``webdataset`` and this package's ``webdataset`` reader all read the result.

Output is byte-for-byte reproducible: fixed member mtime/uid/gid/owner/mode, PAX headers, deterministic JSON,
and no wall-clock times in the stats file. Each shard is streamed to temporary files and renamed into place
when it is complete (tar, then parquet, then the stats file last), so a crash never leaves a half shard under
a final name. Keys must not contain a dot in their last path component (webdataset splits names at the first
dot); with ``sanitize_keys=True`` (default) such keys are rewritten to a safe unique form and the original is
kept in ``original_key``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from ..utils import atomic_path, write_json

TAR_MTIME = 0
TAR_MODE = 0o444
SIDECAR_SCHEMA = pa.schema([
    ("url", pa.string()),
    ("caption", pa.string()),
    ("key", pa.string()),
    ("status", pa.string()),
    ("error_message", pa.string()),
    ("sha256", pa.string()),
    ("original_key", pa.string()),
])
_BAD_KEY_CHARS = re.compile(r"[^0-9A-Za-z_\-/]")


def key_problem(key: str) -> Optional[str]:
    """Why ``key`` cannot be a webdataset key (None when it can)."""
    if not key:
        return "empty key"
    if "\x00" in key:
        return "NUL character in key"
    if key.startswith("/") or key.endswith("/") or "//" in key:
        return "key must be a relative path without empty components"
    if any(part in (".", "..") for part in key.split("/")):
        return "'.' or '..' path component"
    if "." in key.rsplit("/", 1)[-1]:
        return "dot in the key's last component (webdataset splits member names at the first dot)"
    if any(part.startswith("__") for part in key.split("/")):
        return "key components must not start with '__' (reserved by webdataset)"
    return None


def safe_key(key: str) -> str:
    """A valid webdataset key derived from ``key``: unchanged when already valid, otherwise the key with
    unsafe characters replaced by ``_`` plus 8 hex digits of its hash (so distinct keys stay distinct)."""
    if key_problem(key) is None:
        return key
    digest = hashlib.blake2b(key.encode("utf-8", errors="surrogatepass"), digest_size=4).hexdigest()
    parts = [p for p in _BAD_KEY_CHARS.sub("_", key).split("/") if p and p not in (".", "..")]
    base = "/".join(p.lstrip("_") or "k" for p in parts) or "k"
    return f"{base}-{digest}"


class WebDatasetWriter:
    """Write samples to img2dataset-style webdataset shards.

    >>> with WebDatasetWriter("out", shard_size=10000) as w:        # doctest: +SKIP
    ...     w.write("000000001", jpeg_bytes, caption="a cat", url="http://...")
    """

    def __init__(self, out_dir: str | os.PathLike, shard_size: int = 10_000, start_shard: int = 0,
                 shard_digits: int = 5, sanitize_keys: bool = True):
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.shard_digits = shard_digits
        self.sanitize_keys = sanitize_keys
        self._shard = start_shard
        self._tar: Optional[tarfile.TarFile] = None
        self._tmp_tar: Optional[Path] = None
        self._rows: list[dict] = []
        self._keys: set[str] = set()
        self.shards_written: list[str] = []
        self.count = 0

    # --- shard lifecycle ----------------------------------------------------------------------------
    @property
    def _name(self) -> str:
        return f"{self._shard:0{self.shard_digits}d}"

    def _open(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self._name}.tar.", suffix=".tmp", dir=self.out_dir)
        os.close(fd)
        self._tmp_tar = Path(tmp)
        self._tar = tarfile.open(self._tmp_tar, mode="w", format=tarfile.PAX_FORMAT)
        self._rows, self._keys = [], set()

    def _add_member(self, name: str, data: bytes) -> None:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.mtime = TAR_MTIME
        ti.mode = TAR_MODE
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.type = tarfile.REGTYPE
        assert self._tar is not None
        self._tar.addfile(ti, io.BytesIO(data))

    def _finish(self) -> None:
        if self._tar is None:
            return
        name = self._name
        self._tar.close()
        self._tar = None
        try:
            with open(self._tmp_tar, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(self._tmp_tar, 0o644)
            os.replace(self._tmp_tar, self.out_dir / f"{name}.tar")
        except BaseException:
            self._tmp_tar.unlink(missing_ok=True)
            raise
        table = pa.Table.from_pylist(self._rows, schema=SIDECAR_SCHEMA)
        with atomic_path(self.out_dir / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp, compression="zstd")
        statuses: dict[str, int] = {}
        for r in self._rows:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        successes = statuses.get("success", 0)
        write_json(self.out_dir / f"{name}_stats.json", {
            "count": len(self._rows),
            "successes": successes,
            "failed_to_download": len(self._rows) - successes,
            "failed_to_resize": 0,
            "duration": 0.0,
            "start_time": 0.0,
            "end_time": 0.0,
            "status_dict": statuses,
        })
        self.shards_written.append(name)
        self._shard += 1

    # --- public API ---------------------------------------------------------------------------------
    def write(self, key: str, data: Optional[bytes], caption: Optional[str] = None, url: Optional[str] = None,
              ext: str = "jpg", status: str = "success", error_message: Optional[str] = None,
              meta: Optional[dict[str, Any]] = None) -> str:
        """Add one sample and return the key it was written under. ``data=None`` (or a status other than
        ``success``) writes a row to the sidecar parquet only, like img2dataset's failed rows."""
        key = str(key)
        if status == "success" and data is None:
            raise ValueError(f"sample {key!r}: status 'success' needs image bytes (give a failure status instead)")
        problem = key_problem(key)
        original = None
        if problem is not None:
            if not self.sanitize_keys:
                raise ValueError(f"invalid webdataset key {key!r}: {problem}")
            original, key = key, safe_key(key)
        ext = ext.lower().lstrip(".")
        if not ext or "." in ext or "/" in ext or ext in ("txt", "json"):
            raise ValueError(f"invalid image extension {ext!r}")
        if self._tar is None:
            self._open()
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r} in shard {self._name}")
        self._keys.add(key)
        ok = status == "success"
        sha = hashlib.sha256(data).hexdigest() if ok else None
        row = {"url": url, "caption": caption, "key": key, "status": status,
               "error_message": error_message, "sha256": sha, "original_key": original}
        if ok:
            record = {**(meta or {}), **{k: v for k, v in row.items() if k != "original_key"}}
            if original is not None:
                record["original_key"] = original
            assert data is not None
            members = {ext: data, "json": json.dumps(record, indent=4, default=str).encode("utf-8"),
                       "txt": (caption or "").encode("utf-8", errors="replace")}
            for e in sorted(members):
                self._add_member(f"{key}.{e}", members[e])
        self._rows.append(row)
        self.count += 1
        if len(self._rows) >= self.shard_size:
            self._finish()
        return key

    def close(self) -> list[str]:
        """Finish the last shard; returns the shard ids written."""
        self._finish()
        return self.shards_written

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file); shards already finished stay."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self._tmp_tar is not None:
            self._tmp_tar.unlink(missing_ok=True)

    def __enter__(self) -> "WebDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
