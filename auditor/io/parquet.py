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

from .base import DEFAULT_MAX_EXPANSION, DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TEXT_BYTES, EXPANSION_FLOOR, \
    READ_ERROR, READERS, DatasetReader, Sample, ShardRef, clean_str, shard_id, to_url, url_to_fs

#: image columns tried, in order, when ``image_column`` is not set
IMAGE_COLUMNS = ("jpg", "png", "webp", "jpeg", "image", "img", "image_bytes", "bytes")
CAPTION_COLUMNS = ("txt", "caption", "TEXT", "text")
URL_COLUMNS = ("url", "URL")
BATCH_ROWS = 32
_META_COLUMNS = ("width", "height", "original_width", "original_height", "sha256")
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
    if not isinstance(value, (bytes, bytearray, memoryview)):  # bytes(10**9) would allocate 1 GB of zeros
        raise TypeError(f"image value is a {type(value).__name__}, not bytes")
    return bytes(value)


def value_lengths(arr: pa.Array) -> Optional[list]:
    """Per-row byte lengths of a binary/string column (or a ``{bytes, path}`` struct's ``bytes``), read from the
    array's offsets (``pyarrow.compute.binary_length``), without materialising a value; None for other types."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_struct(arr.type):
        names = [arr.type.field(i).name for i in range(arr.type.num_fields)]
        if "bytes" not in names:
            return None
        arr = arr.field("bytes")
    t = arr.type
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t)):
        return None
    import pyarrow.compute as pc  # here: 0.1 s of every command's start-up otherwise (the CLI lists readers)

    return pc.binary_length(arr).to_pylist()


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
        return [ShardRef(id=shard_id(posixpath.basename(p)[: -len(".parquet")] if p.endswith(".parquet")
                                  else posixpath.basename(p)), path=to_url(fs, p, self.root)) for p in files]

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

    def _oversized(self, batch: pa.RecordBatch, cols: dict) -> dict[int, str]:
        """Rows whose image or caption value is over its limit, from the column offsets (nothing copied)."""
        max_image = int(self.options.get("max_member_bytes") or DEFAULT_MAX_MEMBER_BYTES)
        max_text = int(self.options.get("max_text_bytes") or DEFAULT_MAX_TEXT_BYTES)
        out: dict[int, str] = {}
        checks = [(cols["image"], max_image, "max_member_bytes")] if cols["image"] else []
        checks += [(c, max_text, "max_text_bytes") for c in cols["captions"]]
        for name, limit, what in checks:
            for i, n in enumerate(value_lengths(batch.column(name)) or ()):
                if n is not None and n > limit and i not in out:
                    out[i] = f"too_many_bytes: column {name!r} holds {n} bytes, over {what}={limit}; not read"
        return out

    def _rows_to_samples(self, shard_id: str, batch: pa.RecordBatch, cols: dict, start: int) -> Iterator[Sample]:
        over = self._oversized(batch, cols)
        try:
            keys = batch.column(cols["key"]).to_pylist() if cols["key"] else [None] * batch.num_rows
        except Exception:  # noqa: BLE001 - an unconvertible key column: keys from the row numbers
            keys = [None] * batch.num_rows
        if over:  # the oversized values are replaced by nulls before anything is copied into Python
            import pyarrow.compute as pc

            mask = pa.array([i in over for i in range(batch.num_rows)])
            for name in ([cols["image"]] if cols["image"] else []) + cols["captions"]:
                j = batch.schema.get_field_index(name)
                batch = batch.set_column(j, name, pc.if_else(mask, pa.nulls(batch.num_rows, batch.column(j).type),
                                                             batch.column(j)))
        try:  # the whole batch at once; a value that cannot be converted sends this batch row by row
            data = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        except Exception:  # noqa: BLE001
            data = None
        for i in range(batch.num_rows):
            key = clean_str(keys[i]) if keys[i] is not None else None
            if not key:
                key = f"{shard_id}_{start + i:09d}"
            if i in over:
                yield Sample(key=key, shard=shard_id, data=None, status=READ_ERROR, error=over[i],
                             meta={"row": start + i})
                continue
            try:  # one row's bad value (a struct whose bytes are not bytes, ...) is confined to that row
                if data is not None:
                    yield self._row_sample(shard_id, data, i, cols, start + i)
                else:
                    one = {n: batch.column(n).slice(i, 1).to_pylist() for n in batch.schema.names}
                    yield self._row_sample(shard_id, one, 0, cols, start + i)
            except Exception as exc:  # noqa: BLE001
                yield Sample(key=key, shard=shard_id, data=None, status=READ_ERROR,
                             error=f"unreadable row {start + i}: {type(exc).__name__}: {exc}", meta={"row": start + i})

    def _row_sample(self, shard_id: str, data: dict, j: int, cols: dict, row: int) -> Sample:
        """Row ``j`` of the column lists ``data`` (row ``row`` of the shard) -> Sample."""
        ext = self._ext(cols["image"])
        raw_key = data[cols["key"]][j] if cols["key"] else None
        key = clean_str(raw_key)
        meta: dict[str, Any] = {"row": row}
        if not key:
            key = f"{shard_id}_{row:09d}"
            meta["key_generated"] = True
        caption = None
        for c in cols["captions"]:
            caption = clean_str(data[c][j])
            if caption is not None:
                break
        url = clean_str(data[cols["url"]][j]) if cols["url"] else None
        status = clean_str(data[cols["status"]][j]) if cols["status"] else None
        error = clean_str(data[cols["error"]][j]) if cols["error"] else None
        img = _bytes_of(data[cols["image"]][j]) if cols["image"] else None
        for f in ("width", "height", "original_width", "original_height", "sha256"):
            if f in data and data[f][j] is not None:
                meta[f] = data[f][j]
        # the row's other scalar columns, as a webdataset sample's JSON holds them (index.carry_columns)
        meta["json"] = {c: data[c][j] for c in cols["scalars"]}
        if status is None:
            status = "success" if img is not None else READ_ERROR
        if status == "success" and img is None:
            status = READ_ERROR
            error = error or ("no image column in this parquet file" if not cols["image"]
                              else f"status is success but column {cols['image']!r} is null")
        return Sample(key=key, shard=shard_id, data=img if status == "success" else None, caption=caption,
                      url=url, status=status, error=error, stored_ext=ext if img is not None else None,
                      meta=meta)

    def _wanted(self, schema: pa.Schema, cols: dict) -> list[str]:
        names = [cols["image"], cols["key"], *cols["captions"], cols["url"], cols["status"], cols["error"],
                 *_META_COLUMNS, *cols["scalars"]]
        return [n for n in schema.names if n in names]

    def _bomb(self, rg, wanted: list[str]) -> Optional[str]:
        """Why row group ``rg`` (its footer metadata) must not be read: a column chunk declaring more
        uncompressed bytes than ``max_expansion`` times its stored bytes (and over 256 MiB). An 803-byte file
        declaring an 800 MB value cost 2.6 GB to read; the footer says so before any page is read."""
        ratio = int(self.options.get("max_expansion") or DEFAULT_MAX_EXPANSION)
        for j in range(rg.num_columns):
            cc = rg.column(j)
            if cc.path_in_schema.split(".")[0] not in wanted:
                continue
            if cc.total_uncompressed_size > max(EXPANSION_FLOOR, ratio * cc.total_compressed_size):
                return (f"too_many_bytes: column {cc.path_in_schema!r} declares {cc.total_uncompressed_size} "
                        f"bytes from {cc.total_compressed_size} stored (over max_expansion={ratio}); row group "
                        "not read")
        return None

    def _refused_rows(self, pf, rg: int, n: int, cols: dict, start: int, shard_id: str, why: str) -> Iterator[Sample]:
        """One read error per row of a refused row group, with its key (the key column alone, when it is
        itself safe to read; else the row-number keys)."""
        keys: list = [None] * n
        if cols["key"] and self._bomb(pf.metadata.row_group(rg), [cols["key"]]) is None:
            try:
                keys = pf.read_row_group(rg, columns=[cols["key"]]).column(0).to_pylist()
            except Exception:  # noqa: BLE001
                pass
        for i in range(n):
            key = clean_str(keys[i]) if i < len(keys) and keys[i] is not None else None
            yield Sample(key=key or f"{shard_id}_{start + i:09d}", shard=shard_id, data=None, status=READ_ERROR,
                         error=why, meta={"row": start + i})

    def read_shard(self, shard: ShardRef) -> Iterator[Sample]:
        """Row group by row group (each checked from the footer first), in batches of BATCH_ROWS; each value's
        size checked from the column offsets before it is copied; one bad row is confined to its sample. A
        file that breaks midway yields one ``<shard>/__parquet__`` error naming the first row lost."""
        fs, path = url_to_fs(shard.path)
        start = 0
        seen: set[str] = set()
        try:
            with fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                cols = self._columns(pf.schema_arrow)
                wanted = self._wanted(pf.schema_arrow, cols)
                for rg in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(rg).num_rows
                    why = self._bomb(pf.metadata.row_group(rg), wanted)
                    if why:
                        samples = self._refused_rows(pf, rg, n, cols, start, shard.id, why)
                    else:
                        samples = self._batched(shard.id, pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg],
                                                                          columns=wanted), cols, start)
                    for sample in samples:  # exactly one sample per row
                        if sample.key in seen:
                            sample.meta["duplicate_key"] = True
                        seen.add(sample.key)
                        start += 1
                        yield sample
        except (OSError, pa.ArrowException, KeyError) as exc:
            yield Sample(key=f"{shard.id}/__parquet__", shard=shard.id, data=None, status=READ_ERROR,
                         error=f"unreadable parquet {shard.path} after {start} rows (first row lost: {start}): "
                               f"{type(exc).__name__}: {exc}")

    def _batched(self, shard_id: str, batches, cols: dict, start: int) -> Iterator[Sample]:
        for batch in batches:
            yield from self._rows_to_samples(shard_id, batch, cols, start)
            start += batch.num_rows

    def get(self, shard: str, key: str) -> Sample:
        ref = next((r for r in self.shards() if r.id == shard), None)
        if ref is None:
            raise KeyError(f"no shard {shard!r} in {self.root}")
        fs, path = url_to_fs(ref.path)
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            schema = pf.schema_arrow
            if "key" in schema.names:
                return self._get_by_key(pf, shard, key)
        return super().get(shard, key)

    def _get_by_key(self, pf, shard: str, key: str) -> Sample:
        """The first row with ``key``: row groups pruned by the key column's min/max statistics, the key
        column read alone, and the row group's other columns only when its footer passes :meth:`_bomb`."""
        cols = self._columns(pf.schema_arrow)
        wanted = self._wanted(pf.schema_arrow, cols)
        md = pf.metadata
        for rg in range(md.num_row_groups):
            meta = md.row_group(rg)
            kc = next((meta.column(j) for j in range(meta.num_columns) if meta.column(j).path_in_schema == "key"),
                      None)
            st = kc.statistics if kc is not None else None
            if st is not None and st.has_min_max and isinstance(st.min, str) and not (st.min <= key <= st.max):
                continue
            keys = pf.read_row_group(rg, columns=["key"]).column(0).to_pylist()
            if key not in keys:
                continue
            why = self._bomb(meta, wanted)
            if why:
                return Sample(key=key, shard=shard, data=None, status=READ_ERROR, error=why)
            table = pf.read_row_group(rg, columns=wanted)
            i = keys.index(key)
            batch = table.slice(i, 1).combine_chunks().to_batches()[0]
            sample = next(self._rows_to_samples(shard, batch, cols, 0))
            sample.meta.pop("row", None)
            return sample
        raise KeyError(f"no sample {key!r} in shard {shard!r} of {self.root}")
