"""The index step, engine-free: what one chunk of samples becomes (:func:`process_chunk`, run in the workers or
Ray tasks; it lives in the pandas-free :mod:`auditor.index.worker` and is re-exported here), how a shard is cut into chunks (:func:`iter_chunks`), gathered (:class:`ShardAccumulator`), embedded
(:func:`embed_batch`, :func:`apply_embeddings`) and written atomically, marker last (:func:`write_shard`).

Engines (``auditor/index/engines/``) import only this module; ``runner.py`` wires an engine and this step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa

from ..io.base import DatasetReader, Sample, ShardRef
from ..utils import (ErrorRecord, errors_table, is_utf8, string_table, utf8_safe, write_json, write_npy,
                     write_parquet)
from .config import IndexConfig
from .store import NOT_INDEXED_COLUMNS, SAMPLE_SCHEMA
from .threads import resolve_workers  # noqa: F401  (engines take it from the step)
# the worker side (pandas- and pyarrow-free, see worker.py); engines take it from the step, here
from .worker import MAX_CARRIED, ChunkResult, carried_fields, process_chunk  # noqa: F401

def _extra_column(values: list) -> pa.Array:
    """One carried column of a shard: arrow's inferred type (int64, double, bool, string); mixed types as strings;
    integers beyond int64 as strings."""
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeError):
        arr = pa.array([None if v is None else utf8_safe(str(v)) for v in values], pa.string())
    if pa.types.is_string(arr.type):
        arr = pa.array([None if v is None else utf8_safe(v) for v in arr.to_pylist()], pa.string())
    return arr


def shard_table(records: list[dict]) -> pa.Table:
    """The shard's sample table: :data:`SAMPLE_SCHEMA`, then the carried columns (sorted by name)."""
    if not records:
        return SAMPLE_SCHEMA.empty_table()
    extra = sorted({k for r in records for k in r} - set(SAMPLE_SCHEMA.names))
    table = pa.Table.from_pylist(records, schema=SAMPLE_SCHEMA)
    for name in extra:
        table = table.append_column(name, _extra_column([r.get(name) for r in records]))
    return table


def iter_chunks(reader: DatasetReader, shards: list[ShardRef], size: int,
            errors_by_shard: dict[str, list[ErrorRecord]], deferred: bool = False) -> Iterator[list[Sample]]:
    """Fixed-size chunks per shard (never spanning shards); an empty list marks an empty shard.
    Duplicate keys within a shard are recorded as errors here (the first occurrence is indexed). ``deferred``:
    local image files are left for the chunk's worker to read (``DatasetReader.read_shard_deferred``)."""
    for ref in shards:
        buf: list[Sample] = []
        seen: set[str] = set()
        emitted = False
        last: Optional[str] = None
        try:
            for s in (reader.read_shard_deferred(ref) if deferred else reader.read_shard(ref)):
                if not is_utf8(s.key):  # a non-UTF-8 file/member name: no key the index can store and look up
                    errors_by_shard.setdefault(ref.id, []).append(
                        ErrorRecord(s.key, ref.id, "read", "key (file or tar member name) is not valid UTF-8; "
                                                           "not indexed: rename it to index it"))
                    continue
                if s.key in seen:
                    errors_by_shard.setdefault(ref.id, []).append(
                        ErrorRecord(s.key, ref.id, "read", "duplicate key in shard (first occurrence indexed)"
                                    + (f": {s.error}" if s.error else "")))
                    continue
                seen.add(s.key)
                last = s.key
                buf.append(s)
                if len(buf) >= size:
                    emitted = True
                    yield buf
                    buf = []
        except Exception as exc:  # noqa: BLE001 - reader failure: record and close the shard with what we have
            # the readers confine per-sample failures to their sample, so this is a reader bug or a broken
            # container the reader did not catch: never silent, it says where the shard stopped
            where = f"after key {last!r}" if last is not None else "before its first sample"
            errors_by_shard.setdefault(ref.id, []).append(
                ErrorRecord(f"{ref.id}/__shard__", ref.id, "read", f"the shard stopped {where}; the rest of it "
                                                                  f"was not read: {type(exc).__name__}: {exc}"))
        if buf or not emitted:
            yield buf or [Sample(key="", shard=ref.id, data=None, status="__empty__")]


class ShardAccumulator:
    def __init__(self, shard: str):
        self.shard = shard
        self.records: list[dict] = []
        self.errors: list[ErrorRecord] = []
        self.not_indexed: list[dict] = []
        self.pixels: list[np.ndarray] = []
        self.raw: list[bytes] = []
        # set by an engine that embedded the shard elsewhere (Ray actors): the float16 matrix (None: no embedder)
        self.embedded = False
        self.emb: Optional[np.ndarray] = None

    def add(self, res: ChunkResult) -> None:
        self.records.extend(res.records)
        self.errors.extend(res.errors)
        self.not_indexed.extend(res.not_indexed)
        if res.pixels is not None:
            self.pixels.append(res.pixels)
        if res.raw is not None:
            self.raw.extend(res.raw)


def embed_batch(embed_fn, inputs, keys: list[str], shard: str):
    """Embed one batch with ``embed_fn``; when the batch fails, retry one by one to isolate the bad samples.
    Returns (float32 [n, dim] or None when the whole batch failed row by row, ok mask [n], error records)."""
    n = len(keys)
    errors: list[ErrorRecord] = []
    try:
        return np.asarray(embed_fn(inputs), dtype=np.float32), np.ones(n, dtype=bool), errors
    except Exception:  # noqa: BLE001 - retry one by one to isolate the bad sample
        pass
    rows: list[Optional[np.ndarray]] = []
    ok = np.ones(n, dtype=bool)
    for i in range(n):
        try:
            rows.append(np.asarray(embed_fn(inputs[i:i + 1]), dtype=np.float32)[0])
        except Exception as exc:  # noqa: BLE001
            ok[i] = False
            rows.append(None)
            errors.append(ErrorRecord(keys[i], shard, "embed", f"{type(exc).__name__}: {exc}"))
    good = [r for r in rows if r is not None]
    dim = good[0].shape[0] if good else 0
    out = np.zeros((n, dim), dtype=np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = r
    return out, ok, errors


def _batch_slices(n: int, batch_size: int) -> list[slice]:
    """The shard's embedding batches: fixed, from row 0 (the same for every engine and worker count)."""
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def apply_embeddings(acc: ShardAccumulator, dim: int, parts: list[tuple]) -> np.ndarray:
    """Join per-batch ``embed_batch`` results (in batch order): record the embed errors, drop the failed rows,
    return float16 [rows, dim]."""
    out = np.zeros((len(acc.records), dim), dtype=np.float32)
    ok = np.ones(len(acc.records), dtype=bool)
    start = 0
    for emb, k, errs in parts:
        n = len(k)
        if emb is not None and emb.shape[1] == dim:
            out[start:start + n] = emb
        ok[start:start + n] = k
        acc.errors.extend(errs)
        start += n
    if start != len(acc.records):
        raise RuntimeError(f"shard {acc.shard}: {start} embedded rows for {len(acc.records)} records")
    if not ok.all():
        acc.records = [r for r, k in zip(acc.records, ok) if k]
        out = out[ok]
    return out.astype(np.float16)


def _embed_shard(acc: ShardAccumulator, embedder, batch_size: int, gpu=None) -> Optional[np.ndarray]:
    """Embed the shard's preprocessed images in fixed batches from row 0; drop (and record) samples whose
    embedding fails. Returns float16 [rows, dim]. ``gpu``: a :class:`auditor.index.gpu.GpuPath` that decodes
    and preprocesses the stored bytes on the embedder's device instead."""
    if embedder is None:
        return None
    if not acc.records:
        return np.zeros((0, embedder.dim), dtype=np.float16)
    keys = [r["key"] for r in acc.records]
    if gpu is not None:
        inputs, embed_fn = acc.raw, gpu.embed
    else:
        inputs, embed_fn = (np.concatenate(acc.pixels) if acc.pixels else None), embedder.embed
    parts = [embed_batch(embed_fn, inputs[sl], keys[sl], acc.shard)
             for sl in _batch_slices(len(acc.records), batch_size)]
    return apply_embeddings(acc, embedder.dim, parts)


@functools.cache
def empty_table(kind: str) -> pa.Table:
    return string_table([], ErrorRecord.ERROR_COLUMNS if kind == "errors" else NOT_INDEXED_COLUMNS)


def _errors_table(errors: list[ErrorRecord]) -> pa.Table:
    """The shard's errors as written (pyarrow, not pandas: see ``utils.string_table``)."""
    return errors_table(errors) if errors else empty_table("errors")


def _not_indexed_table(rows: list[dict]) -> pa.Table:
    return string_table(rows, NOT_INDEXED_COLUMNS) if rows else empty_table("not_indexed")


def write_shard(acc: ShardAccumulator, shard_dir: Path, embedder, batch_size: int,
                  extra_errors: list[ErrorRecord], gpu=None) -> dict:
    emb = acc.emb if acc.embedded else _embed_shard(acc, embedder, batch_size, gpu)
    errors = extra_errors + acc.errors
    table = shard_table(acc.records)
    write_parquet(shard_dir / f"{acc.shard}.parquet", table)
    if emb is not None:
        write_npy(shard_dir / f"{acc.shard}.emb.npy", emb)
    write_parquet(shard_dir / f"{acc.shard}.errors.parquet", _errors_table(errors))
    write_parquet(shard_dir / f"{acc.shard}.not_indexed.parquet", _not_indexed_table(acc.not_indexed))
    counts = {"indexed": len(acc.records), "errors": len(errors), "not_indexed": len(acc.not_indexed)}
    write_json(shard_dir / f"{acc.shard}.done", counts)  # the completion marker, always last
    return counts


@dataclass
class IndexJob:
    """What an engine indexes: the pending shards of one run, in order, into ``shard_dir``."""

    reader: DatasetReader
    shards: list[ShardRef]
    icfg: IndexConfig
    shard_dir: Path
    embedder_dim: int = 0

    @property
    def decode_cfg(self) -> dict:
        """The decode limits plus ``carry_columns``, as :func:`process_chunk` takes them."""
        return {**self.icfg.decode.model_dump(), "carry_columns": self.icfg.carry_columns}

    @property
    def worker_embedder_cfg(self) -> Optional[dict]:
        """The embedder config the decode workers preprocess for (None: no embedder, or ``gpu_decode``)."""
        if self.icfg.embedder.name == "none" or self.icfg.gpu_decode:
            return None
        return self.icfg.embedder.model_dump(mode="json")

    @property
    def hash_mode(self) -> str:
        return self.icfg.hash_mode

    @property
    def keep_bytes(self) -> bool:
        return self.icfg.gpu_decode and self.icfg.embedder.name != "none"
