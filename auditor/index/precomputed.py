"""Precomputed embeddings in: ``auditor index DATASET --out RUN --embeddings DIR_OR_GLOB``.

Instead of running a model, the index step attaches embeddings a user already holds:

- **clip-retrieval / LAION**: a folder with ``img_emb/img_emb_N.npy`` and ``metadata/metadata_N.parquet``
  (rows in the same order; the metadata carries ``key`` and/or ``url``, or clip-retrieval's ``image_path``);
- **NeMo-style parquet**: ``*.parquet`` with an ``id`` (or ``key``) column, optionally ``url``, and one
  ``list<float>`` column (``embedding``, ``image_embedding``, ...);
- **plain .npy + ids parquet**: ``X.npy`` beside ``X.parquet`` (or ``ids.parquet``) with ``key``/``id``/``url``.

Rows are joined to the indexed samples by key, or by url when the keys do not match (whichever matches more).
The dimension must agree across files; vectors are checked for finite values and L2-normalised (a vector with
norm 0 is an error). A sample with no embedding goes to ``errors.parquet`` (stage ``embed``) and leaves the shard
table, so every ``.emb.npy`` stays row-aligned; nothing is zero-filled. Dedup then runs with no model at all.

Example:
    >>> from auditor.index.precomputed import load_embeddings
    >>> ids = load_embeddings("laion/embeddings")      # doctest: +SKIP
    >>> ids.matrix.shape                                # doctest: +SKIP
    (1000000, 768)
"""

from __future__ import annotations

import glob as _glob
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..errors import UserError
from ..utils import errors_frame, write_json, write_npy, write_parquet
from ..rundir import INDEX_DIR, INDEX_JSON, SHARDS_DIR
from .store import IndexStore

log = logging.getLogger(__name__)

_ID_COLUMNS = ("key", "id", "image_id", "sample_id")
_NORM_TOL = 1e-2  # a stored float16 unit vector has |norm - 1| < 1e-3; more than this is "not normalised"


@dataclass
class Embeddings:
    """Precomputed vectors: ``matrix`` float32 [N, dim] (L2-normalised), with ``keys`` and ``urls`` (None: absent)."""

    matrix: np.ndarray
    keys: np.ndarray | None
    urls: np.ndarray | None
    layout: str
    files: list[str]
    renormalised: int = 0


def _ids(table: pa.Table, where: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    names = table.column_names
    key_col = next((c for c in _ID_COLUMNS if c in names), None)
    if key_col is None and "image_path" in names:  # clip-retrieval's folder inference: the file stem is the key
        paths = table.column("image_path").to_pandas().astype(str)
        keys = paths.map(lambda p: os.path.splitext(os.path.basename(p))[0]).to_numpy(dtype=object)
    else:
        keys = table.column(key_col).to_pandas().astype(str).to_numpy(dtype=object) if key_col else None
    urls = table.column("url").to_pandas().astype(str).to_numpy(dtype=object) if "url" in names else None
    if keys is None and urls is None:
        raise UserError(f"precomputed embeddings {where}: no key/id/url column to join on (columns: {names[:12]})")
    return keys, urls


def _list_column(table: pa.Table, where: str) -> str:
    cols = [f.name for f in table.schema
            if (pa.types.is_list(f.type) or pa.types.is_large_list(f.type) or pa.types.is_fixed_size_list(f.type))
            and pa.types.is_floating(f.type.value_type)]
    if not cols:
        raise UserError(f"precomputed embeddings {where}: no list<float> embedding column")
    for pref in ("embedding", "embeddings", "image_embedding", "image_embeddings", "emb"):
        if pref in cols:
            return pref
    return cols[0]


def _matrix_from_list(col: pa.ChunkedArray, where: str) -> np.ndarray:
    arr = col.combine_chunks()
    if arr.null_count:
        raise UserError(f"precomputed embeddings {where}: {arr.null_count} null embeddings")
    if pa.types.is_fixed_size_list(arr.type):
        dim = arr.type.list_size
    else:
        lens = pc_list_lengths(arr)
        dim = int(lens[0]) if len(lens) else 0
        if len(lens) and (lens != dim).any():
            raise UserError(f"precomputed embeddings {where}: embeddings of different lengths "
                            f"({sorted(set(lens.tolist()))[:5]})")
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(len(arr), dim)


def pc_list_lengths(arr) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.list_value_length(arr).to_numpy(zero_copy_only=False)


def _expand(spec: str) -> list[str]:
    p = Path(spec).expanduser()
    if p.is_dir():
        if (p / "img_emb").is_dir():
            return [str(p)]
        files = sorted(str(f) for f in p.iterdir() if f.suffix in (".npy", ".parquet"))
    else:
        files = sorted(_glob.glob(os.path.expanduser(spec)))
    if not files:
        raise UserError(f"--embeddings {spec}: no .npy or .parquet files (or img_emb/ folder) found")
    return files


def _shard_number(name: str) -> str:
    return name.rsplit("_", 1)[-1].split(".")[0]


def _load_clip_retrieval(root: Path) -> list[tuple[np.ndarray, pa.Table, str]]:
    out = []
    for npy in sorted((root / "img_emb").glob("img_emb_*.npy"), key=lambda f: (len(f.name), f.name)):
        meta = root / "metadata" / f"metadata_{_shard_number(npy.name)}.parquet"
        if not meta.exists():
            raise UserError(f"precomputed embeddings: {npy} has no {meta}")
        out.append((np.load(npy, mmap_mode="r", allow_pickle=False), pq.read_table(meta), str(npy)))
    if not out:
        raise UserError(f"precomputed embeddings: {root / 'img_emb'} holds no img_emb_N.npy")
    return out


def _load_npy_with_ids(npy: Path) -> tuple[np.ndarray, pa.Table, str]:
    for cand in (npy.with_suffix(".parquet"), npy.parent / f"{npy.stem}.ids.parquet", npy.parent / "ids.parquet"):
        if cand.exists():
            return np.load(npy, mmap_mode="r", allow_pickle=False), pq.read_table(cand), str(npy)
    raise UserError(f"precomputed embeddings: {npy} has no ids parquet ({npy.stem}.parquet or ids.parquet)")


def load_embeddings(spec: str) -> Embeddings:
    """Read every precomputed embedding file ``spec`` names (a folder or a glob) into one :class:`Embeddings`.

    Example:
        >>> emb = load_embeddings("/data/nemo_embeddings/*.parquet")   # doctest: +SKIP
        >>> emb.layout, emb.matrix.shape[1]                            # doctest: +SKIP
        ('nemo-parquet', 512)
    """
    parts: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = []
    layouts, files = set(), []
    for f in _expand(spec):
        p = Path(f)
        if p.is_dir():
            for mat, meta, where in _load_clip_retrieval(p):
                parts.append((mat, *_ids(meta, where)))  # memory-mapped: converted once, below
                files.append(where)
                if len(meta) != len(mat):
                    raise UserError(f"precomputed embeddings {where}: {len(mat)} vectors, {len(meta)} metadata rows")
            layouts.add("clip-retrieval")
        elif p.suffix == ".npy":
            if p.name.startswith("img_emb_") and p.parent.name == "img_emb":
                continue  # taken with its folder
            mat, ids, where = _load_npy_with_ids(p)
            if len(ids) != len(mat):
                raise UserError(f"precomputed embeddings {where}: {len(mat)} vectors, {len(ids)} id rows")
            parts.append((mat, *_ids(ids, where)))
            files.append(where)
            layouts.add("npy+ids")
        elif p.suffix == ".parquet":
            if p.with_suffix(".npy").exists() or p.name == "ids.parquet" or p.name.endswith(".ids.parquet"):
                continue  # the ids of an .npy
            t = pq.read_table(p)
            col = _list_column(t, f)
            parts.append((_matrix_from_list(t.column(col), f), *_ids(t.drop([col]), f)))
            files.append(f)
            layouts.add("nemo-parquet")
    if not parts:
        raise UserError(f"--embeddings {spec}: no embedding files found")
    dims = {m.shape[1] if m.ndim == 2 else -1 for m, _, _ in parts}
    if len(dims) != 1 or -1 in dims:
        raise UserError(f"--embeddings {spec}: embedding dimensions differ across files: {sorted(dims)}")

    def cat(i):
        cols = [p[i] for p in parts]
        return None if any(c is None for c in cols) else np.concatenate(cols)

    # one float32 matrix filled part by part from the memory-mapped files (no float32 copy of each part first:
    # at 1M x 512 that halves the peak memory, 4 GB -> 2 GB)
    matrix = np.empty((sum(len(p[0]) for p in parts), dims.pop()), dtype=np.float32)
    start = 0
    for p in parts:
        matrix[start:start + len(p[0])] = p[0]
        start += len(p[0])
    if not np.isfinite(matrix).all():
        raise UserError(f"--embeddings {spec}: non-finite values in the embeddings")
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))  # 2x faster than np.linalg.norm at 1M x 512
    off = np.abs(norms - 1.0) > _NORM_TOL
    renorm = int(off.sum())
    if renorm:
        log.warning("precomputed embeddings: %d of %d vectors were not L2-normalised; normalising them", renorm,
                    len(matrix))
        matrix = matrix / np.where(norms > 0, norms, 1.0)[:, None]
    return Embeddings(matrix=matrix, keys=cat(1), urls=cat(2), layout="+".join(sorted(layouts)), files=files,
                      renormalised=renorm)


def _positions(ids: np.ndarray | None, wanted: pd.Series) -> np.ndarray:
    if ids is None:
        return np.full(len(wanted), -1, dtype=np.int64)
    idx = pd.Index(ids)
    if not idx.is_unique:
        idx = idx[~idx.duplicated(keep="first")]  # first occurrence wins (a re-downloaded row)
        ids_first = pd.Series(np.arange(len(ids)), index=pd.Index(ids))
        ids_first = ids_first[~ids_first.index.duplicated(keep="first")]
        return ids_first.reindex(wanted.to_numpy()).fillna(-1).to_numpy(dtype=np.int64)
    return idx.get_indexer(wanted.to_numpy())


def _stems(keys: np.ndarray) -> np.ndarray:
    """``os.path.splitext(k)[0]`` of every key, vectorised (pyarrow regex: the extension after the last dot of the
    last path component)."""
    import pyarrow.compute as pc

    arr = pc.replace_substring_regex(pa.array(keys, pa.string()), pattern=r"^((?:[^/]*/)*\.*[^/.][^/]*?)\.[^./]*$",
                                     replacement=r"\1")
    return arr.to_numpy(zero_copy_only=False)


def attach_embeddings(run_dir: str | os.PathLike, spec: str) -> IndexStore:
    """Attach the precomputed embeddings ``spec`` names to the index in ``run_dir`` (indexed with no embedder).

    Shards that already have an ``.emb.npy`` are left as they are (a rerun resumes). Returns the updated store.

    Example:
        >>> from auditor.index.precomputed import attach_embeddings
        >>> store = attach_embeddings("runs/laion", "laion/embeddings")   # doctest: +SKIP
        >>> store.embeddings().shape                                      # doctest: +SKIP
        (1000000, 768)
    """
    store = IndexStore(run_dir)
    emb = load_embeddings(spec)
    dim = int(emb.matrix.shape[1])
    info = store.info
    prior = info.get("embedder") or {}
    if int(prior.get("dim") or 0) and prior.get("name") != "precomputed":
        raise UserError(f"{run_dir} was indexed with the {prior.get('name')} embedder; --embeddings needs "
                        f"--embedder none (or a new --out)")
    if int(prior.get("dim") or 0) not in (0, dim):
        raise UserError(f"{run_dir} holds precomputed embeddings of dim {prior.get('dim')}, --embeddings has {dim}")
    shard_dir = Path(run_dir) / INDEX_DIR / SHARDS_DIR
    sids = store.shard_ids()
    # join by key, or by url when the keys differ: whichever matches more of the indexed rows
    tables = {s: store.shard_table(s, columns=["key", "url"]) for s in sids}
    allrows = pd.concat([tables[s] for s in sids], ignore_index=True) if sids else \
        pd.DataFrame(columns=["key", "url"])
    # the other joins are tried only while one leaves rows unmatched (measured at 1M rows: the key-stem join
    # alone, a Python splitext per row, cost 20 s; see BENCHMARKS.md section 8)
    cands = {"key": _positions(emb.keys, allrows["key"].astype(str))}
    # every embedding row already found its sample by key: no other join can match more
    if (cands["key"] < 0).any() and int((cands["key"] >= 0).sum()) < len(emb.matrix):
        cands["url"] = _positions(emb.urls, allrows["url"].fillna("").astype(str))
    best = max(int((c >= 0).sum()) for c in cands.values())
    if all((c < 0).any() for c in cands.values()) and best < len(emb.matrix):
        # folder keys keep the file extension; clip-retrieval's image_path stems and many id lists do not
        cands["key stem"] = _positions(emb.keys, pd.Series(_stems(allrows["key"].astype(str).to_numpy(object))))
    join = max(cands, key=lambda j: int((cands[j] >= 0).sum()))  # ties: key first
    pos_all = cands[join]
    missing_total, offset = 0, 0
    for s in tqdm(sids, desc="attach embeddings", unit="shard", disable=len(sids) < 2):
        df = tables[s]
        pos = pos_all[offset: offset + len(df)]
        offset += len(df)
        if (shard_dir / f"{s}.emb.npy").exists():
            continue
        have = pos >= 0
        miss = df[~have]
        if len(miss):
            missing_total += len(miss)
            err_path = shard_dir / f"{s}.errors.parquet"
            old = pd.read_parquet(err_path) if err_path.exists() else errors_frame([])
            new = pd.DataFrame({"key": miss["key"].astype(str), "shard": s, "stage": "embed",
                                "error": f"no precomputed embedding (joined by {join})"})
            write_parquet(err_path, pd.concat([old, new], ignore_index=True).astype(str))
            write_parquet(shard_dir / f"{s}.parquet",
                          pq.read_table(shard_dir / f"{s}.parquet").filter(pa.array(have)))
        write_npy(shard_dir / f"{s}.emb.npy", emb.matrix[pos[have]].astype(np.float16))
        marker = shard_dir / f"{s}.done"
        counts = json.loads(marker.read_text(encoding="utf-8"))
        counts["indexed"] = int(have.sum())
        counts["errors"] = int(counts.get("errors", 0)) + int(len(miss))
        write_json(marker, counts)
    _refresh_info(store, sids, {"name": "precomputed", "dim": dim, "layout": emb.layout, "join": join,
                                "files": len(emb.files), "renormalised": emb.renormalised})
    if missing_total:
        log.warning("precomputed embeddings: %d indexed samples had no embedding (in errors.parquet)", missing_total)
    return IndexStore(run_dir)


def _refresh_info(store: IndexStore, sids: list[str], embedder: dict) -> None:
    shard_dir = store.shard_dir
    per_shard, errs = [], []
    for s in sids:
        per_shard.append({"id": s, **json.loads((shard_dir / f"{s}.done").read_text(encoding="utf-8"))})
        p = shard_dir / f"{s}.errors.parquet"
        if p.exists():
            errs.append(pd.read_parquet(p))
    err_df = pd.concat(errs, ignore_index=True).astype(str) if errs else errors_frame([])
    if len(err_df):
        write_parquet(store.dir / "errors.parquet", err_df)
    info = store.info
    info["embedder"] = embedder
    info["shards"] = per_shard
    info.setdefault("counts", {}).update(
        {k: int(sum(int(x.get(k, 0)) for x in per_shard)) for k in ("indexed", "errors")})
    write_json(store.dir / INDEX_JSON, info)
