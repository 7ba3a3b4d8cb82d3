"""img2dataset's ``output_format=parquet``: ``NNNNN.parquet`` shards with the image bytes in a column named
after the encode format (``jpg``, ``png``, ``webp``), the caption in ``txt`` (and the input's ``caption``),
and ``key``/``url``/``status``/``error_message`` columns. Every row is there, failed ones with null bytes.

Shards are read in record batches (a few dozen rows at a time), never whole. Also reads parquet files whose
image column is a Hugging Face style struct ``{bytes, path}``.
"""

from __future__ import annotations

import posixpath
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from .base import READ_ERROR, READERS, DatasetReader, Sample, ShardRef, clean_str, to_url, url_to_fs

#: image columns tried, in order, when ``image_column`` is not set
IMAGE_COLUMNS = ("jpg", "png", "webp", "jpeg", "image", "img", "image_bytes", "bytes")
CAPTION_COLUMNS = ("txt", "caption", "TEXT", "text")
URL_COLUMNS = ("url", "URL")
BATCH_ROWS = 32
_EXT_COLUMNS = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "avif", "jxl"}


def _is_image_type(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields))


def find_image_column(schema: pa.Schema, preferred: Optional[str] = None) -> Optional[str]:
    """The column holding image bytes: ``preferred`` when given (must exist), else the first of
    :data:`IMAGE_COLUMNS` with a binary (or ``{bytes, path}`` struct) type."""
    if preferred:
        if preferred not in schema.names:
            raise KeyError(f"image_column {preferred!r} is not a column (columns: {', '.join(schema.names)})")
        return preferred
    for c in IMAGE_COLUMNS:
        if c in schema.names and _is_image_type(schema.field(c).type):
            return c
    return None


def _bytes_of(value: Any) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, dict):  # {"bytes": ..., "path": ...}
        value = value.get("bytes")
        if value is None:
            return None
    if isinstance(value, str):
        return value.encode("latin-1", errors="replace")
    return bytes(value)


def _is_scalar(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t))


@READERS.register("parquet")
class ParquetReader(DatasetReader):
    """Reader for img2dataset parquet output (``root`` = the output folder, or one ``.parquet`` file)."""

    layout = "parquet"
    random_access = True

    def shards(self) -> list[ShardRef]:
        fs, root = url_to_fs(self.root)
        files = [root] if fs.isfile(root) else sorted(p for p in fs.ls(root, detail=False) if p.endswith(".parquet"))
        return [ShardRef(id=posixpath.basename(p)[: -len(".parquet")] if p.endswith(".parquet")
                         else posixpath.basename(p), path=to_url(fs, p, self.root)) for p in files]

    def _columns(self, schema: pa.Schema) -> dict[str, Optional[str]]:
        names = schema.names
        image = find_image_column(schema, self.options.get("image_column"))
        return {
            "image": image,
            "key": "key" if "key" in names else None,
            "captions": [c for c in CAPTION_COLUMNS if c in names],
            "url": next((c for c in URL_COLUMNS if c in names), None),
            "status": "status" if "status" in names else None,
            "error": "error_message" if "error_message" in names else None,
            "scalars": [f.name for f in schema if f.name != image and _is_scalar(f.type)],
        }

    def _ext(self, image_col: Optional[str]) -> Optional[str]:
        return image_col.lower() if image_col and image_col.lower() in _EXT_COLUMNS else None

    def _rows_to_samples(self, shard_id: str, batch: pa.RecordBatch, cols: dict, start: int) -> Iterator[Sample]:
        data = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        ext = self._ext(cols["image"])
        for i in range(batch.num_rows):
            raw_key = data[cols["key"]][i] if cols["key"] else None
            key = clean_str(raw_key)
            meta: dict[str, Any] = {"row": start + i}
            if not key:
                key = f"{shard_id}_{start + i:09d}"
                meta["key_generated"] = True
            caption = None
            for c in cols["captions"]:
                caption = clean_str(data[c][i])
                if caption is not None:
                    break
            url = clean_str(data[cols["url"]][i]) if cols["url"] else None
            status = clean_str(data[cols["status"]][i]) if cols["status"] else None
            error = clean_str(data[cols["error"]][i]) if cols["error"] else None
            img = _bytes_of(data[cols["image"]][i]) if cols["image"] else None
            for f in ("width", "height", "original_width", "original_height", "sha256"):
                if f in data and data[f][i] is not None:
                    meta[f] = data[f][i]
            # the row's other scalar columns, as a webdataset sample's JSON holds them (index.carry_columns)
            meta["json"] = {c: data[c][i] for c in cols["scalars"]}
            if status is None:
                status = "success" if img is not None else READ_ERROR
            if status == "success" and img is None:
                status = READ_ERROR
                error = error or ("no image column in this parquet file" if not cols["image"]
                                  else f"status is success but column {cols['image']!r} is null")
            yield Sample(key=key, shard=shard_id, data=img if status == "success" else None, caption=caption,
                         url=url, status=status, error=error, stored_ext=ext if img is not None else None,
                         meta=meta)

    def read_shard(self, shard: ShardRef) -> Iterator[Sample]:
        fs, path = url_to_fs(shard.path)
        start = 0
        seen: set[str] = set()
        try:
            with fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                cols = self._columns(pf.schema_arrow)
                for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                    for sample in self._rows_to_samples(shard.id, batch, cols, start):
                        if sample.key in seen:
                            sample.meta["duplicate_key"] = True
                        seen.add(sample.key)
                        yield sample
                    start += batch.num_rows
        except (OSError, pa.ArrowException, KeyError) as exc:
            yield Sample(key=f"{shard.id}/__parquet__", shard=shard.id, data=None, status=READ_ERROR,
                         error=f"unreadable parquet {shard.path} after {start} rows: {type(exc).__name__}: {exc}")

    def get(self, shard: str, key: str) -> Sample:
        ref = next((r for r in self.shards() if r.id == shard), None)
        if ref is None:
            raise KeyError(f"no shard {shard!r} in {self.root}")
        fs, path = url_to_fs(ref.path)
        with fs.open(path, "rb") as fh:
            schema = pq.ParquetFile(fh).schema_arrow
        if "key" not in schema.names:
            return super().get(shard, key)
        # row-group statistics prune the row groups that cannot hold the key
        table = pq.read_table(path, filesystem=fs, filters=[("key", "==", key)])
        if table.num_rows == 0:
            raise KeyError(f"no sample {key!r} in shard {shard!r} of {self.root}")
        cols = self._columns(table.schema)
        batch = table.slice(0, 1).to_batches()[0]
        sample = next(self._rows_to_samples(shard, batch, cols, 0))
        sample.meta.pop("row", None)
        return sample
