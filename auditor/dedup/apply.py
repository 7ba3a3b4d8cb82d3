"""``auditor apply-manifest``: write the kept samples of a deduplicated run as a new dataset, losslessly.

Every stored member of each kept sample (image, ``.txt``, ``.json`` with all its fields, any other member) is
copied as the dataset holds it, keys and dataset order kept, to ``--out`` -- a local folder or any fsspec URL
(``s3://``, ``gs://``, ``memory://``, ``file://``) -- as ``webdataset``, ``parquet`` (img2dataset's parquet
layout) or ``files`` (:mod:`auditor.dedup.apply_writers`). ``drop_against`` also drops the samples that
``dedup --against`` found in another run (an eval set): every ``against_*.parquet``, or the names given.

The image bytes are read again from the dataset the index was built from and checked against the indexed
``sha256``; a sample whose bytes changed since indexing (or that is gone) is not written and is recorded in
``RUN_DIR/dedup/apply_errors.parquet`` (key, shard, stage, error). Counts go to ``RUN_DIR/dedup/apply.json``.

Recovery: kept samples are assigned to output shards by position (``shard_size`` each), and a shard is complete
iff its ``NNNNN_stats.json`` exists (written last, after its data and sidecar). A failure (a full disk) removes
the shard's temporary files; rerunning the same command into the same ``--out`` resumes: it deletes what a
killed run left, skips the complete shards and writes the rest, giving the same files as an uninterrupted run.
Its progress is kept in ``RUN_DIR/dedup/apply_state/`` (the output and the inputs it was started with). Refuses
to write into (or around) the input dataset, into ``RUN_DIR`` itself or into ``RUN_DIR/index``, and into an
``--out`` that holds other files.

Example:
    >>> apply_manifest("runs/laion", "s3://bucket/laion-dedup", output_format="parquet")  # doctest: +SKIP
    {'out': 's3://bucket/laion-dedup', 'kept': 913822, 'written': 913822, 'errors': 0, ...}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import UserError
from ..index.store import IndexStore
from ..rundir import DEDUP_DIR, INDEX_DIR, MANIFEST
from ..utils import ErrorRecord, errors_frame, file_sha256, write_json, write_parquet

log = logging.getLogger(__name__)

STATE_DIR = "apply_state"
OUTPUT_FORMATS = ("webdataset", "parquet", "files")


class OutDirError(UserError, ValueError):
    """``--out`` overlaps the inputs, or holds files of something else."""


def _local_path(root: str) -> Path | None:
    if "://" in root and not root.startswith("file://"):
        return None
    return Path(root[len("file://"):] if root.startswith("file://") else root).resolve()


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_out_dir(store: IndexStore, out_dir) -> None:
    """Refuse an ``--out`` inside or around the input dataset, the run folder or its index."""
    out = _local_path(str(out_dir))
    if out is None:
        return
    root = _local_path(str(store.info.get("dataset", {}).get("root", "")))
    if root is not None and _overlaps(out, root):
        raise OutDirError(f"refusing to write into or around the input dataset {root}: pass another --out")
    run = store.run_dir.resolve()
    index = (store.run_dir / INDEX_DIR).resolve()
    if out == run or out == index or index in out.parents:
        raise OutDirError(f"refusing to write into the run folder {run} or its index: pass another --out")


def _out_key(key: str, fmt: str) -> str:
    """The key a sample is written under: unchanged when valid for the format (img2dataset keys always are)."""
    from ..io.writers import safe_key

    if fmt == "parquet":
        return key
    k = safe_key(key)
    if fmt == "files" and "/" in k:  # one folder per shard: no sub-folders
        k = safe_key(key.replace("/", "_") + "-")
    return k


def kept_samples(run_dir: Path, store: IndexStore, drop_against: Optional[Sequence[str]]) -> tuple[pd.DataFrame, int]:
    """The kept rows (key, shard, sha256, stored_ext) in manifest (= index) order, less ``--against`` overlaps."""
    dedup = run_dir / DEDUP_DIR
    manifest = pd.read_parquet(dedup / MANIFEST, columns=["key", "shard", "keep"])
    index = store.table(columns=["key", "shard", "sha256", "stored_ext"]).drop(columns="row")
    kept = manifest[manifest["keep"]].merge(index, on=["key", "shard"], how="left", validate="one_to_one")
    dropped = 0
    if drop_against is not None:
        files = sorted(dedup.glob("against_*.parquet"))
        if drop_against:
            names = {f"against_{n}.parquet" for n in drop_against}
            missing = names - {f.name for f in files}
            if missing:
                raise UserError(f"--drop-against: no {', '.join(sorted(missing))} in {dedup}: run "
                                f"`auditor dedup {run_dir} --against OTHER_RUN` first")
            files = [f for f in files if f.name in names]
        elif not files:
            raise UserError(f"--drop-against: {dedup} holds no against_*.parquet: run `auditor dedup {run_dir} "
                            f"--against OTHER_RUN` first")
        hits = pd.concat([pd.read_parquet(f, columns=["key", "shard"]) for f in files], ignore_index=True)
        hit = pd.MultiIndex.from_frame(hits.drop_duplicates())
        m = pd.MultiIndex.from_frame(kept[["key", "shard"]]).isin(hit)
        dropped = int(m.sum())
        kept = kept[~m]
    return kept.reset_index(drop=True), dropped


def _fingerprint(run_dir: Path, out: str, fmt: str, shard_size: int, drop_against) -> dict:
    dedup = run_dir / DEDUP_DIR
    against = sorted(dedup.glob("against_*.parquet")) if drop_against is not None else []
    return {"out": out, "format": fmt, "shard_size": shard_size,
            "drop_against": None if drop_against is None else sorted(drop_against),
            "manifest": file_sha256(dedup / MANIFEST),
            "against": {f.name: file_sha256(f) for f in against}}


def resumes(run_dir: str | os.PathLike, out: str | os.PathLike) -> bool:
    """Whether ``run_dir``'s last apply-manifest wrote into ``out`` (so a non-empty ``out`` is its resume)."""
    state = Path(run_dir) / DEDUP_DIR / STATE_DIR / "state.json"
    try:
        return json.loads(state.read_text(encoding="utf-8")).get("out") == str(out)
    except (OSError, ValueError):
        return False


def _prepare_out(fs, root: str, state_dir: Path, fingerprint: dict) -> set[str]:
    """Create ``root``; on a resume, delete the temporary files a failed run left. Returns the complete shards."""
    from .apply_writers import TMP_PREFIX

    state_file = state_dir / "state.json"
    prior = json.loads(state_file.read_text(encoding="utf-8")) if state_file.exists() else None
    fs.makedirs(root, exist_ok=True)
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)]
    leftovers = [n for n in names if n.startswith(TMP_PREFIX)]
    others = [n for n in names if not n.startswith(TMP_PREFIX)]
    if others and prior != fingerprint:
        raise OutDirError(f"{fingerprint['out']} is not empty: pass a new or empty folder (or rerun the exact "
                          f"command that started writing it, to resume)")
    for n in leftovers:
        fs.rm(posixpath.join(root, n), recursive=True)
    if leftovers:
        log.info("apply-manifest: removed %d temporary files of an interrupted run", len(leftovers))
    if prior != fingerprint:
        state_dir.mkdir(parents=True, exist_ok=True)
        for p in state_dir.glob("*.errors.parquet"):
            p.unlink()
        write_json(state_file, fingerprint)
    return {n[: -len("_stats.json")] for n in others if n.endswith("_stats.json")}


def apply_manifest(run_dir: str | os.PathLike, out_dir: str | os.PathLike, shard_size: int = 10_000,
                   progress: bool = True, output_format: str = "webdataset",
                   drop_against: Optional[Sequence[str]] = None) -> dict:
    """Write the samples ``RUN_DIR/dedup/manifest.parquet`` keeps to ``out_dir`` (a folder or fsspec URL).

    Args:
        run_dir: the run folder holding ``index/`` and ``dedup/``.
        out_dir: a new or empty folder, or an fsspec URL; the same one again resumes an interrupted run.
        shard_size: samples per output shard.
        output_format: ``webdataset``, ``parquet`` (img2dataset's parquet layout) or ``files``.
        drop_against: None keeps ``--against`` overlaps; ``[]`` drops every ``against_*.parquet``'s samples;
            a list of names drops those runs' (``against_<name>.parquet``).

    Returns:
        The summary also written to ``RUN_DIR/dedup/apply.json``.

    Example:
        >>> apply_manifest("runs/photos", "memory://dedup", output_format="files")["written"]  # doctest: +SKIP
        912
    """
    from fsspec.core import url_to_fs

    from ..io.members import iter_members
    from .apply_writers import WRITERS

    if output_format not in OUTPUT_FORMATS:
        raise UserError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")
    if shard_size < 1:
        raise UserError("--shard-size must be >= 1")
    run_dir = Path(run_dir)
    store = IndexStore(run_dir)
    if not (run_dir / DEDUP_DIR / MANIFEST).exists():
        raise FileNotFoundError(f"{run_dir / DEDUP_DIR / MANIFEST} is missing: run `auditor dedup "
                                f"{run_dir}` first")
    out = str(out_dir)
    check_out_dir(store, out)
    kept, n_against = kept_samples(run_dir, store, drop_against)
    fs, root = url_to_fs(out)
    state_dir = run_dir / DEDUP_DIR / STATE_DIR
    done = _prepare_out(fs, root, state_dir, _fingerprint(run_dir, out, output_format, shard_size, drop_against))

    n = len(kept)
    pos = np.arange(n, dtype=np.int64)
    out_shard = pos // shard_size
    n_out = int(out_shard[-1]) + 1 if n else 0
    names = [f"{i:05d}" for i in range(n_out)]
    size = np.bincount(out_shard, minlength=n_out)
    resolved = np.zeros(n_out, dtype=np.int64)
    shard_errors: dict[int, list[ErrorRecord]] = {}
    written = np.zeros(n_out, dtype=np.int64)
    wanted: dict[str, dict[str, tuple[int, str, str]]] = {}
    for p, (key, shard, sha, ext) in enumerate(kept[["key", "shard", "sha256", "stored_ext"]].itertuples(index=False)):
        if names[out_shard[p]] not in done:
            wanted.setdefault(shard, {})[key] = (p, sha, ext)
    reader = store.reader
    refs = {r.id: r for r in reader.shards()}
    writers: dict[int, object] = {}
    renamed = 0

    def resolve(j: int, err: Optional[ErrorRecord] = None) -> None:
        if err is not None:
            shard_errors.setdefault(j, []).append(err)
        resolved[j] += 1
        if resolved[j] == size[j]:  # every sample of output shard j is written or recorded: commit it
            w = writers.pop(j, None) or WRITERS.get(output_format)(fs, root, names[j])
            write_parquet(state_dir / f"{names[j]}.errors.parquet", errors_frame(shard_errors.pop(j, [])))
            w.commit()

    todo_total = sum(len(v) for v in wanted.values())
    bar = tqdm(total=todo_total, unit="img", desc="apply-manifest", disable=not progress)
    try:
        for shard in sorted(wanted, key=lambda s: min(p for p, _, _ in wanted[s].values())):
            todo = wanted[shard]
            ref = refs.get(shard)
            seen: set[str] = set()
            if ref is not None:
                for m in iter_members(reader, ref):
                    want = todo.get(m.key)
                    if want is None or m.key in seen:
                        continue
                    seen.add(m.key)
                    bar.update(1)
                    p, sha, ext = want
                    j = int(out_shard[p])
                    img = m.image_ext(ext)
                    if hashlib.sha256(m.files[img]).hexdigest() != sha:
                        resolve(j, ErrorRecord(m.key, shard, "apply", "image bytes changed since indexing"))
                        continue
                    key = _out_key(m.key, output_format)
                    files, record = _with_key(m, key)
                    renamed += key != m.key
                    if j not in writers:
                        writers[j] = WRITERS.get(output_format)(fs, root, names[j])
                    writers[j].add(key, files, record)
                    written[j] += 1
                    resolve(j)
            why = "shard no longer in the dataset" if ref is None else "kept sample not found in the dataset"
            for k in sorted(set(todo) - seen):
                bar.update(1)
                resolve(int(out_shard[todo[k][0]]), ErrorRecord(k, shard, "apply", why))
    except BaseException as exc:
        for w in writers.values():
            w.abort()
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"apply-manifest stopped writing {out}: {exc.strerror or exc}; the complete "
                                     f"shards are kept: rerun the same command to resume") from exc
        raise
    finally:
        bar.close()
    errs = [pd.read_parquet(state_dir / f"{nm}.errors.parquet") for nm in names
            if (state_dir / f"{nm}.errors.parquet").exists()]
    err_df = pd.concat(errs, ignore_index=True) if errs else errors_frame([])
    write_parquet(run_dir / DEDUP_DIR / "apply_errors.parquet", err_df.astype(str) if len(err_df) else err_df)
    n_written = 0
    for nm in names:
        if fs.exists(posixpath.join(root, f"{nm}_stats.json")):
            n_written += int(json.loads(fs.cat_file(posixpath.join(root, f"{nm}_stats.json")))["count"])
    summary = {"out": out, "format": output_format, "kept": int(n), "written": n_written, "errors": len(err_df),
               "dropped_against": n_against, "keys_rewritten": renamed, "shards": names,
               "resumed_shards": len(done)}
    write_json(run_dir / DEDUP_DIR / "apply.json", summary)
    log.info("apply-manifest: %d of %d kept samples in %s (%d shards, %d errors)", n_written, n, out,
             len(names), len(err_df))
    return summary


def _with_key(m, key: str) -> tuple[dict[str, bytes], dict]:
    """The members and sidecar record of a sample written under ``key``: the members as stored; when the key
    changed, the JSON member carries the new ``key`` and the ``original_key``."""
    record = m.json()
    record.setdefault("caption", m.caption())
    record.setdefault("status", "success")
    files = dict(m.files)
    record["key"] = key
    if key != m.key:
        record["original_key"] = m.key
        files["json"] = json.dumps(record, indent=4, default=str).encode("utf-8")
    return files, record
