"""The index stage: dataset -> per-shard hash/embedding tables in ``RUN_DIR/index`` (see ``store.py``).

Pipeline (``index.engine=local``, one machine; ``auditor/index/engines/local.py``)::

    main process: reader streams samples shard by shard, cut into fixed chunks of ``chunk_size``
        -> process pool (``workers``): [read a local folder's files] + decode (bomb-safe) + SHA-256 + BLAKE3
           pixel hash + pHash/dHash (batched DCT) + the embedder's CPU preprocessing
        -> main process: batched embedding (CUDA when present), shard files written atomically, marker last.

``index.engine=ray`` (``auditor/index/engines/ray_engine.py``) runs the same per-chunk and per-batch functions of this
module as Ray Data tasks and actors on a cluster; the driver writes the shard files with the same
:func:`write_shard`, so both engines give byte-identical index folders. With ``index.gpu_decode`` the workers
only hash and the embedder's device decodes + resizes the stored bytes (``auditor/index/gpu.py``).

Chunks are fixed by position in the shard and embedding batches start at each shard's first row, so the
outputs are identical for any number of workers. A shard whose ``.done`` marker exists is skipped: a rerun
after ``kill -9`` redoes only unfinished shards and ends with the same bytes as an uninterrupted run.
Bad samples never stop the run: each one lands in ``errors.parquet`` as (key, shard, stage, error).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigMismatch, UserError
from ..rundir import INDEX_DIR, INDEX_ERRORS, INDEX_JSON, NOT_INDEXED, SHARDS_DIR, check_resume, without_runtime
from ..io import open_dataset
from ..io.base import ShardRef
from ..utils import ErrorRecord, package_versions, remove_temporary_files, write_json, write_parquet
from .config import IndexConfig
from .engines import build_engine
from .shard import IndexJob, empty_table
from .store import INDEX_FORMAT_VERSION, NOT_INDEXED_COLUMNS, IndexStore

log = logging.getLogger(__name__)

class IndexConfigMismatch(ConfigMismatch, RuntimeError):
    pass


class IndexDatasetMismatch(UserError, ValueError):
    """The run folder holds the index of another dataset (exit 2, one line)."""


# ------------------------------------------------------------------------------------------------------
# main side
# ------------------------------------------------------------------------------------------------------
def fingerprint(cfg: IndexConfig) -> dict:
    """The index config a resumed run must keep: every key but those marked ``RUNTIME`` on the fields
    (workers, chunk size, progress, engine, Ray address, the embedder's device and batch size)."""
    return without_runtime(IndexConfig, cfg.model_dump(mode="json"))


def _check_out_dir(dataset: str, run_dir: Path) -> None:
    if "://" in dataset and not dataset.startswith("file://"):
        return
    root = Path(dataset[len("file://"):] if dataset.startswith("file://") else dataset).resolve()
    out = run_dir.resolve()
    if out == root or root in out.parents:
        raise ValueError(f"refusing to write the run folder {out} inside the input dataset {root}: pass another --out")


def _same_root(a: str, b: str) -> bool:
    """Whether two dataset roots name the same place (local paths through symlinks; URLs as written)."""
    def norm(r: str) -> str:
        r = r[len("file://"):] if r.startswith("file://") else r
        return r.rstrip("/") if "://" in r else os.path.realpath(r)
    return norm(a) == norm(b)


def shard_list_fingerprint(shards: list[ShardRef]) -> str:
    """SHA-256 of the dataset's shard list (ids in order), recorded in ``index.json`` as ``dataset.shards_sha256``."""
    import hashlib

    return hashlib.sha256("\n".join(s.id for s in shards).encode("utf-8", "surrogateescape")).hexdigest()


def _check_same_dataset(old: dict, dataset: str, reader, all_shards: list[ShardRef], done: set[str],
                        run_dir: Path) -> None:
    """Refuse to resume an index of another dataset: the recorded root and layout must match, and every shard
    already indexed must still be in the dataset (a grown dataset resumes; a replaced one does not)."""
    ds = old.get("dataset") or {}
    where = f"{run_dir} holds the index of {ds.get('root')!r} ({ds.get('layout')})"
    if ds.get("root") is not None and not _same_root(str(ds["root"]), str(reader.root)):
        raise IndexDatasetMismatch(f"{where}, not of {dataset!r}: index it into another --out")
    if ds.get("layout") is not None and ds["layout"] != reader.layout:
        raise IndexDatasetMismatch(f"{where}, and {dataset!r} now reads as {reader.layout}: index it into "
                                   "another --out")
    if ds.get("shards_sha256") == shard_list_fingerprint(all_shards):
        return
    gone = sorted(done - {s.id for s in all_shards})
    if gone:
        raise IndexDatasetMismatch(
            f"{where}; {len(gone)} of its indexed shards ({', '.join(repr(g) for g in gone[:3])}"
            f"{', ...' if len(gone) > 3 else ''}) are no longer in it: the dataset changed, index it into another "
            "--out")


def run_index(dataset: str | os.PathLike, run_dir: str | os.PathLike, cfg: IndexConfig | None = None) -> IndexStore:
    """Index ``dataset`` into ``run_dir/index``; resumable. ``cfg``: the typed ``index`` config section (None: the
    defaults). An object with an ``.index`` section (the whole AuditorConfig) is still accepted for compatibility."""
    if cfg is None:
        cfg = IndexConfig()
    icfg: IndexConfig = cfg if isinstance(cfg, IndexConfig) else cfg.index
    dataset = str(dataset)
    run_dir = Path(run_dir)
    _check_out_dir(dataset, run_dir)
    index_dir = run_dir / INDEX_DIR
    shard_dir = index_dir / SHARDS_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    remove_temporary_files(index_dir)  # what a killed run left (shards/ included)

    reader_opts = {k: v for k, v in icfg.reader.model_dump().items() if k != "layout" and v is not None}
    reader = open_dataset(dataset, layout=icfg.reader.layout, **reader_opts)
    fp = fingerprint(icfg)
    info_path = index_dir / INDEX_JSON
    old = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else None
    if old is not None:
        if old.get("format_version") != INDEX_FORMAT_VERSION:
            raise IndexConfigMismatch(
                f"{run_dir} holds an index in format {old.get('format_version')}, this auditor writes format "
                f"{INDEX_FORMAT_VERSION}; it cannot resume it (pass a new --out to start over)")
        old_cfg = dict(old.get("config") or {})
        old_cfg.setdefault("hash_mode", "exact")  # indexes written before the mode existed hashed exactly
        if old_cfg.get("hash_mode") != fp["hash_mode"]:
            raise IndexConfigMismatch(
                f"{run_dir} holds an index.hash_mode={old_cfg['hash_mode']} index; this run asks for "
                f"{fp['hash_mode']}, and an index never mixes hash modes (pass a new --out)")
        check_resume(old_cfg, fp, f"{run_dir} was indexed with a different index config; resume needs the same "
                     "config (pass a new --out to start over)", "index", error=IndexConfigMismatch)
    all_shards = reader.shards()
    done = {p.name[: -len(".done")] for p in shard_dir.glob("*.done")}
    if old is not None:
        _check_same_dataset(old, dataset, reader, all_shards, done, run_dir)
    pending = [s for s in all_shards if s.id not in done]

    engine = build_engine(icfg)
    try:
        emb_desc = engine.start()  # loads the embedder (or learns where it runs) and describes it
        base_info = {
            "format_version": INDEX_FORMAT_VERSION,
            "dataset": {"root": str(reader.root), "layout": reader.layout, "options": reader_opts,
                        "shards": len(all_shards), "shards_sha256": shard_list_fingerprint(all_shards)},
            "config": fp,
            "embedder": emb_desc,
            "versions": package_versions(),
            "complete": False,
        }
        write_json(info_path, base_info)
        log.info("indexing %s (%s): %d shards, %d to do, engine %s, embedder %s", dataset, reader.layout,
                 len(all_shards), len(pending), icfg.engine, emb_desc.get("name"))
        engine.run(IndexJob(reader=reader, shards=pending, icfg=icfg, shard_dir=shard_dir,
                            embedder_dim=int(emb_desc.get("dim") or 0)))
    finally:
        engine.close()
    return _finalize(run_dir, all_shards, base_info)


def _concat_strings(tables: list, kind: str, columns) -> pa.Table:
    """The shards' error (or not-downloaded) tables as one table of string columns; a shard written by an
    older auditor through pandas carries pandas metadata, which the cast drops."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return empty_table(kind)
    schema = empty_table(kind).schema
    return pa.concat_tables([t.select(list(columns)).cast(schema) for t in tables])


def _finalize(run_dir: Path, all_shards: list[ShardRef], base_info: dict) -> IndexStore:
    index_dir = run_dir / INDEX_DIR
    shard_dir = index_dir / SHARDS_DIR
    ids = [s.id for s in all_shards]
    per_shard = []
    errs, skipped = [], []
    for sid in sorted(ids):
        marker = shard_dir / f"{sid}.done"
        if not marker.exists():
            continue
        counts = json.loads(marker.read_text(encoding="utf-8"))
        per_shard.append({"id": sid, **counts})
        if counts.get("errors", 1):  # the marker's counts: no need to read an empty table back
            errs.append(pq.read_table(shard_dir / f"{sid}.errors.parquet"))
        if counts.get("not_indexed", 1):
            skipped.append(pq.read_table(shard_dir / f"{sid}.not_indexed.parquet"))
    write_parquet(index_dir / INDEX_ERRORS, _concat_strings(errs, "errors", ErrorRecord.ERROR_COLUMNS))
    write_parquet(index_dir / NOT_INDEXED, _concat_strings(skipped, "not_indexed", NOT_INDEXED_COLUMNS))
    totals = {k: int(sum(s[k] for s in per_shard)) for k in ("indexed", "errors", "not_indexed")}
    info = dict(base_info)
    info.update({"shards": per_shard, "counts": {"shards": len(per_shard), **totals},
                 "complete": len(per_shard) == len(ids)})
    write_json(index_dir / INDEX_JSON, info)
    store = IndexStore(run_dir)
    log.info("index %s: %d indexed, %d errors, %d not downloaded", index_dir, totals["indexed"], totals["errors"],
             totals["not_indexed"])
    return store
