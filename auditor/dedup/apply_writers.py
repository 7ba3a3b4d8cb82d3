"""Output layouts of ``apply-manifest``, one writer per img2dataset output format, on any fsspec filesystem.

Each output shard ``NNNNN`` is written to temporary names and committed in order -- data, sidecar parquet, and
``NNNNN_stats.json`` last, so a shard is complete iff its stats file exists (``apply-manifest`` resumes on that):

* ``webdataset``: ``NNNNN.tar`` holding every member of each kept sample byte for byte (image, ``.txt``,
  ``.json``, any other), in input order; sidecar ``NNNNN.parquet`` (one row per sample: the JSON's fields);
* ``parquet``: img2dataset's parquet layout, ``NNNNN.parquet`` with ``key``, the image bytes in a column named by
  its extension (``jpg``), and the JSON's fields as columns (caption, url, status, width, ..., additional columns);
* ``files``: ``NNNNN/<key>.<ext>`` for every member, sidecar ``NNNNN.parquet``.

Example:
    >>> w = WRITERS.get("webdataset")(fs, "out", "00000")   # doctest: +SKIP
    >>> w.add("000000001", {"jpg": b"...", "txt": b"a cat"}, {"key": "000000001", "caption": "a cat"})  # doctest: +SKIP
    >>> w.commit()                                           # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..io.writers import TAR_MODE, TAR_MTIME
from ..registry import Registry

WRITERS: Registry[type["ShardWriter"]] = Registry("apply-manifest output format")
TMP_PREFIX = ".auditor-apply-"


def sidecar_table(rows: list[dict]) -> pa.Table:
    """One row per sample from its JSON fields (types inferred per column; mixed types as strings)."""
    names: dict[str, None] = {}
    for r in rows:
        for k in r:
            names.setdefault(k, None)
    cols = {}
    for n in names:
        vals = [r.get(n) for r in rows]
        vals = [v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)
                for v in vals]
        try:
            cols[n] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            cols[n] = pa.array([None if v is None else str(v) for v in vals], pa.string())
    return pa.table(cols) if cols else pa.table({"key": pa.array([], pa.string())})


def stats(rows: list[dict]) -> dict:
    n = len(rows)
    return {"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0, "duration": 0.0,
            "start_time": 0.0, "end_time": 0.0, "status_dict": {"success": n} if n else {}}


class ShardWriter:
    """Writes one output shard ``name`` under ``root`` of filesystem ``fs``."""

    def __init__(self, fs, root: str, name: str):
        self.fs, self.root, self.name = fs, root.rstrip("/"), name
        self.rows: list[dict] = []
        self._tmps: list[str] = []

    def path(self, leaf: str) -> str:
        return posixpath.join(self.root, leaf)

    def tmp(self, leaf: str) -> str:
        p = self.path(f"{TMP_PREFIX}{leaf}.tmp")
        self._tmps.append(p)
        return p

    def add(self, key: str, files: dict[str, bytes], record: dict[str, Any]) -> None:
        raise NotImplementedError

    def _put(self, leaf: str, data: bytes) -> None:
        tmp = self.tmp(leaf)
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
        self.fs.mv(tmp, self.path(leaf))

    def _parquet(self, leaf: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self._put(leaf, buf.getvalue())

    def finish_data(self) -> None:
        """Commit the shard's data files (before the sidecar and the stats)."""

    def commit(self) -> None:
        self.finish_data()
        self._parquet(f"{self.name}.parquet", sidecar_table(self.rows))
        self._put(f"{self.name}_stats.json", json.dumps(stats(self.rows), indent=4).encode("utf-8"))

    def abort(self) -> None:
        """Remove this shard's temporary files (a shard without its stats file is rewritten by the rerun)."""
        for p in self._tmps:
            try:
                if self.fs.exists(p):
                    self.fs.rm(p)
            except OSError:
                pass


@WRITERS.register("webdataset")
class TarWriter(ShardWriter):
    def __init__(self, fs, root: str, name: str):
        super().__init__(fs, root, name)
        self._tmp = self.tmp(f"{name}.tar")
        self._fh = fs.open(self._tmp, "wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w|", format=tarfile.PAX_FORMAT)

    def add(self, key, files, record):
        for ext, data in files.items():  # the input's member order
            ti = tarfile.TarInfo(f"{key}.{ext}")
            ti.size, ti.mtime, ti.mode = len(data), TAR_MTIME, TAR_MODE
            ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, "", ""
            self._tar.addfile(ti, io.BytesIO(data))
        self.rows.append(record)

    def finish_data(self):
        self._tar.close()
        self._fh.close()
        self.fs.mv(self._tmp, self.path(f"{self.name}.tar"))

    def abort(self):
        try:
            self._tar.close()
            self._fh.close()
        except Exception:  # noqa: BLE001 - the disk that failed the write may fail the close too
            pass
        super().abort()


@WRITERS.register("parquet")
class ParquetWriter(ShardWriter):
    """img2dataset's parquet output: the image bytes in a column named by the encode format; the JSON fields as
    columns. Rows are buffered per shard (an img2dataset parquet shard is written in one go as well)."""

    def __init__(self, fs, root, name):
        super().__init__(fs, root, name)
        self.images: dict[str, list] = {}

    def add(self, key, files, record):
        from ..io.base import IMAGE_EXTS

        n = len(self.rows)
        for ext, data in files.items():
            if ext in IMAGE_EXTS:
                self.images.setdefault(ext, [None] * n)
        for ext, col in self.images.items():
            col.append(files.get(ext))
        self.rows.append(record)

    def commit(self):
        table = sidecar_table(self.rows)
        for ext, col in self.images.items():
            table = table.append_column(ext, pa.array(col, pa.binary()))
        self._parquet(f"{self.name}.parquet", table)
        self._put(f"{self.name}_stats.json", json.dumps(stats(self.rows), indent=4).encode("utf-8"))


@WRITERS.register("files")
class FilesWriter(ShardWriter):
    def __init__(self, fs, root, name):
        super().__init__(fs, root, name)
        folder = self.path(name)
        if fs.exists(folder):  # a shard a failed run left half-written: its stats file is absent
            fs.rm(folder, recursive=True)
        fs.makedirs(folder, exist_ok=True)

    def add(self, key, files, record):
        for ext, data in files.items():  # written in place: the shard counts only once its stats file exists
            with self.fs.open(self.path(f"{self.name}/{key}.{ext}"), "wb") as fh:
                fh.write(data)
        self.rows.append(record)
