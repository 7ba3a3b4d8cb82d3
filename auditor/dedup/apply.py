"""``auditor apply-manifest``: write the kept samples of a deduplicated run as a new img2dataset-style
webdataset (``NNNNN.tar`` + sidecar parquet + stats), keys kept, dataset order kept.

The image bytes are read again from the dataset the index was built from and checked against the indexed
``sha256``; a sample whose bytes changed since indexing (or that is gone) is not written and is recorded in
``RUN_DIR/dedup/apply_errors.parquet`` (key, shard, stage, error). Counts go to ``RUN_DIR/dedup/apply.json``.
Refuses to write into (or around) the input dataset, into ``RUN_DIR`` itself or into ``RUN_DIR/index``, and
into a folder that already holds files.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..index.store import IndexStore
from ..rundir import DEDUP_DIR, INDEX_DIR, MANIFEST
from ..utils import ErrorRecord, errors_frame, write_json, write_parquet

log = logging.getLogger(__name__)

_INTERNAL_META = ("source", "duplicate_key", "json_error")
_EXT_OF_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff",
                  "AVIF": "avif", "JPEG2000": "jp2", "QOI": "qoi", "PPM": "ppm", "ICO": "ico"}


def _local_path(root: str) -> Path | None:
    if "://" in root and not root.startswith("file://"):
        return None
    return Path(root[len("file://"):] if root.startswith("file://") else root).resolve()


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_out_dir(store: IndexStore, out_dir: Path) -> None:
    out = out_dir.resolve()
    root = _local_path(str(store.info.get("dataset", {}).get("root", "")))
    if root is not None and _overlaps(out, root):
        raise ValueError(f"refusing to write into or around the input dataset {root}: pass another --out")
    run = store.run_dir.resolve()
    index = (store.run_dir / INDEX_DIR).resolve()
    if out == run or out == index or index in out.parents:
        raise ValueError(f"refusing to write into the run folder {run} or its index: pass another --out")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: pass a new or empty folder")


def apply_manifest(run_dir: str | os.PathLike, out_dir: str | os.PathLike, shard_size: int = 10_000,
                   progress: bool = True) -> dict:
    from ..io.writers import WebDatasetWriter

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    store = IndexStore(run_dir)
    manifest_path = run_dir / DEDUP_DIR / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} is missing: run `auditor dedup {run_dir}` first")
    check_out_dir(store, out_dir)
    manifest = pd.read_parquet(manifest_path, columns=["key", "shard", "keep"])
    index = store.table(columns=["key", "shard", "sha256", "format"])
    kept = manifest[manifest["keep"]].merge(index, on=["key", "shard"], how="left", validate="one_to_one")
    wanted: dict[str, dict[str, tuple[str, str]]] = {}
    for key, shard, sha, fmt in kept[["key", "shard", "sha256", "format"]].itertuples(index=False):
        wanted.setdefault(shard, {})[key] = (sha, fmt)
    errors: list[ErrorRecord] = []
    reader = store.reader
    refs = {r.id: r for r in reader.shards()}
    written = 0
    renamed = 0
    writer = WebDatasetWriter(out_dir, shard_size=shard_size)
    bar = tqdm(total=len(kept), unit="img", desc="apply-manifest", disable=not progress)
    try:
        for shard in sorted(wanted):
            todo = wanted[shard]
            ref = refs.get(shard)
            if ref is None:
                errors.extend(ErrorRecord(k, shard, "apply", "shard no longer in the dataset") for k in sorted(todo))
                continue
            seen: set[str] = set()
            for s in reader.read_shard(ref):
                want = todo.get(s.key)
                if want is None or s.key in seen or s.data is None:
                    continue
                seen.add(s.key)
                bar.update(1)
                sha, fmt = want
                if hashlib.sha256(s.data).hexdigest() != sha:
                    errors.append(ErrorRecord(s.key, shard, "apply", "image bytes changed since indexing"))
                    continue
                ext = s.stored_ext or _EXT_OF_FORMAT.get(str(fmt), "jpg")
                meta = {k: v for k, v in (s.meta or {}).items() if k not in _INTERNAL_META}
                out_key = writer.write(s.key, s.data, caption=s.caption, url=s.url, ext=ext, meta=meta)
                renamed += out_key != s.key
                written += 1
            errors.extend(ErrorRecord(k, shard, "apply", "kept sample not found in the dataset")
                          for k in sorted(set(todo) - seen))
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    write_parquet(run_dir / DEDUP_DIR / "apply_errors.parquet", errors_frame(errors))
    summary = {"out": str(out_dir), "kept": int(len(kept)), "written": written, "errors": len(errors),
               "keys_rewritten": renamed, "shards": shards}
    write_json(run_dir / DEDUP_DIR / "apply.json", summary)
    log.info("apply-manifest: %d of %d kept samples written to %s (%d shards, %d errors)", written, len(kept),
             out_dir, len(shards), len(errors))
    return summary
