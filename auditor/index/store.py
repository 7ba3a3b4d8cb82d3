"""The index on disk, and the small reader API every later stage uses.

Layout of ``RUN_DIR/index/``::

    index.json                 config, package versions, dataset, embedder, per-shard and total counts
    errors.parquet             every bad sample: key, shard, stage, error
    not_indexed.parquet        rows img2dataset did not download (status != success): listed, not indexed
    shards/<id>.parquet        one row per indexed sample (columns: SAMPLE_COLUMNS)
    shards/<id>.emb.npy        float16 [rows, dim], L2-normalised, row-aligned with the parquet (if an embedder ran)
    shards/<id>.errors.parquet, shards/<id>.not_indexed.parquet
    shards/<id>.done           completion marker (JSON counts), written last and atomically

A shard is complete iff its marker exists; every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..rundir import INDEX_DIR, INDEX_ERRORS, INDEX_JSON, NOT_INDEXED, SHARDS_DIR  # noqa: F401 - the layout
from .columns import SAMPLE_COLUMN_NAMES

if TYPE_CHECKING:  # pandas is imported where a table is read: the index command itself never needs it
    import pandas as pd

# 3: ``phash_dihedral`` / ``dhash_dihedral`` (the hashes of the flipped and rotated thumbnail); 2: the pixel hash is
# BLAKE3 (``pixel_blake3``); format 1 had ``pixel_sha256``
INDEX_FORMAT_VERSION = 3

# column -> arrow type of the per-shard sample table
_SAMPLE_TYPES = {  # the meaning of each column: auditor/index/columns.py
    "key": pa.string(), "shard": pa.string(), "caption": pa.string(), "url": pa.string(), "sha256": pa.string(),
    "pixel_blake3": pa.string(), "phash": pa.uint64(), "dhash": pa.uint64(),
    "phash_dihedral": pa.list_(pa.uint64(), 7), "dhash_dihedral": pa.list_(pa.uint64(), 7),
    "width": pa.int32(), "height": pa.int32(), "format": pa.string(), "stored_ext": pa.string(),
    "nbytes": pa.int64(), "caption_hash": pa.string(),
}
SAMPLE_SCHEMA = pa.schema([(name, _SAMPLE_TYPES[name]) for name in SAMPLE_COLUMN_NAMES])
SAMPLE_COLUMNS = [f.name for f in SAMPLE_SCHEMA]
HASH_VARIANT_COLUMNS = ("phash_dihedral", "dhash_dihedral")
# carried columns (``index.carry_columns``: img2dataset's --save_additional_columns, LAION's similarity, punsafe,
# pwatermark, aesthetic, ...) follow SAMPLE_SCHEMA in a shard's table, typed per shard; an index without them (or a
# shard whose samples had none) reads them as nulls, so they need no format change

NOT_INDEXED_COLUMNS = ["key", "shard", "url", "caption", "status", "error"]


_SAMPLE_SET = frozenset(SAMPLE_COLUMNS)


def _read_shard_columns(path: Path, columns: Optional[list[str]]) -> pa.Table:
    """A shard's table with ``columns``; a requested carried column the shard lacks is a null column."""
    if columns is None:
        return pq.read_table(path)
    have = set(pq.read_schema(path).names)
    t = pq.read_table(path, columns=[c for c in columns if c in have])
    for c in columns:
        if c not in have:
            if c in _SAMPLE_SET:
                raise KeyError(f"{path} has no column {c!r}")
            t = t.append_column(c, pa.nulls(t.num_rows))
    return t.select(list(columns))


class IndexFormatError(RuntimeError):
    """The index was written by an auditor whose on-disk format this one does not read."""


class EmbedderMismatch(RuntimeError):
    """The index's embedder cannot be rebuilt as it was (no stored config, other weights)."""


class IndexStore:
    """Read access to a finished (or partial) index in ``run_dir``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / INDEX_DIR
        self.shard_dir = self.dir / SHARDS_DIR
        if not (self.dir / INDEX_JSON).exists():
            raise FileNotFoundError(f"{self.run_dir} holds no index (no {INDEX_DIR}/{INDEX_JSON}): run `auditor index` first")
        fmt = self.info.get("format_version")
        if fmt != INDEX_FORMAT_VERSION:
            raise IndexFormatError(f"{self.dir} is in index format {fmt}; this auditor reads format "
                                   f"{INDEX_FORMAT_VERSION}: index the dataset again into a new run folder")

    # --- metadata -----------------------------------------------------------------------------------
    @cached_property
    def info(self) -> dict:
        return json.loads((self.dir / INDEX_JSON).read_text(encoding="utf-8"))

    @property
    def hash_mode(self) -> str:
        """``index.hash_mode`` of this index: "exact" (imagehash's bits; also every index written before the mode
        existed) or "fast" (reduced-scale JPEG decoding, ``auditor/index/decode_fast.py``)."""
        return (self.info.get("config") or {}).get("hash_mode", "exact")

    @property
    def has_embeddings(self) -> bool:
        """Whether the index holds embeddings (an embedder other than ``none`` ran, or some were attached): the
        one answer every later stage uses."""
        return (self.embedder.get("name") or "none") != "none" and int(self.embedder.get("dim") or 0) > 0

    @property
    def embedder(self) -> dict:
        return self.info.get("embedder") or {"name": "none", "dim": 0}

    def extra_columns(self) -> list[str]:
        """The carried columns of the index (beyond :data:`SAMPLE_COLUMNS`), in first-seen shard order.

        Example:
            >>> store.extra_columns()  # doctest: +SKIP
            ['source', 'similarity', 'punsafe']
        """
        out: dict[str, None] = {}
        for s in self.shard_ids():
            for name in pq.read_schema(self.shard_dir / f"{s}.parquet").names:
                if name not in _SAMPLE_SET:
                    out.setdefault(name, None)
        return list(out)

    def shard_ids(self) -> list[str]:
        """Completed shards, in the order every table and embedding matrix is concatenated."""
        return sorted(p.name[: -len(".done")] for p in self.shard_dir.glob("*.done"))

    # --- tables -------------------------------------------------------------------------------------
    def shard_table(self, shard: str, columns: Optional[list[str]] = None) -> pd.DataFrame:
        return pq.read_table(self.shard_dir / f"{shard}.parquet", columns=columns).to_pandas()

    def table(self, columns: Optional[list[str]] = None, shards: Optional[Iterable[str]] = None) -> pd.DataFrame:
        """All indexed samples, shards concatenated in ``shard_ids()`` order; ``row`` is the global row,
        aligned with :meth:`embeddings`."""
        import pandas as pd

        ids = list(shards) if shards is not None else self.shard_ids()
        parts = [_read_shard_columns(self.shard_dir / f"{s}.parquet", columns) for s in ids]
        if not parts:
            cols = columns or SAMPLE_COLUMNS
            base = [c for c in cols if c in _SAMPLE_SET]
            df = SAMPLE_SCHEMA.empty_table().select(base).to_pandas()
            for c in cols:
                if c not in _SAMPLE_SET:
                    df[c] = pd.Series(dtype=object)
            df = df[list(cols)]
        else:
            # carried columns differ across shards (absent, or all-null there): promote fills them with nulls
            t = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
            df = (t.select(list(columns)) if columns else t).to_pandas()
        df.insert(0, "row", np.arange(len(df), dtype=np.int64))
        return df

    def hash_variants(self, column: str, shards: Optional[Iterable[str]] = None) -> np.ndarray:
        """``uint64 [N, 7]``: the ``phash_dihedral`` or ``dhash_dihedral`` column of :meth:`table` as one matrix
        (column k = the hash of the image under ``auditor.index.dihedral.DIHEDRAL[k]``), read without pandas.

        Example:
            >>> store.hash_variants("phash_dihedral").shape  # doctest: +SKIP
            (1000, 7)
        """
        if column not in HASH_VARIANT_COLUMNS:
            raise ValueError(f"{column!r} is not a hash-variant column; use one of {HASH_VARIANT_COLUMNS}")
        ids = list(shards) if shards is not None else self.shard_ids()
        width = SAMPLE_SCHEMA.field(column).type.list_size
        parts = []
        for s in ids:
            col = pq.read_table(self.shard_dir / f"{s}.parquet", columns=[column]).column(column).combine_chunks()
            parts.append(col.flatten().to_numpy(zero_copy_only=False).astype(np.uint64).reshape(-1, width))
        return np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.uint64)

    def embeddings(self, shards: Optional[Iterable[str]] = None, mmap: bool = True) -> np.ndarray:
        """float16 [N, dim] L2-normalised embeddings, row-aligned with :meth:`table` (empty if no embedder)."""
        ids = list(shards) if shards is not None else self.shard_ids()
        dim = int(self.embedder.get("dim") or 0)
        mats = []
        for s in ids:
            p = self.shard_dir / f"{s}.emb.npy"
            if p.exists():
                mats.append(np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False))
        if not mats:  # no embedder: an empty matrix that is still row-aligned with table()
            n = sum(pq.ParquetFile(self.shard_dir / f"{s}.parquet").metadata.num_rows for s in ids) if dim == 0 else 0
            return np.zeros((n, dim), dtype=np.float16)
        return np.concatenate(mats, axis=0) if len(mats) > 1 else np.asarray(mats[0])

    def errors(self) -> pd.DataFrame:
        import pandas as pd

        p = self.dir / INDEX_ERRORS
        return pd.read_parquet(p) if p.exists() else pd.DataFrame(columns=["key", "shard", "stage", "error"])

    def not_indexed(self) -> pd.DataFrame:
        import pandas as pd

        p = self.dir / NOT_INDEXED
        return pd.read_parquet(p) if p.exists() else pd.DataFrame(columns=NOT_INDEXED_COLUMNS)

    # --- images -------------------------------------------------------------------------------------
    @cached_property
    def reader(self):
        """The dataset reader the index was built from (to fetch training images by key)."""
        from ..io import open_dataset

        ds = self.info["dataset"]
        return open_dataset(ds["root"], layout=ds["layout"], **(ds.get("options") or {}))

    def fetch_bytes(self, wanted: Iterable[tuple[str, str]], progress: bool = False,
                    desc: str = "training images") -> dict[tuple[str, str], Any]:
        """The stored bytes of the training images ``(shard, key)``, read through the index's dataset reader: the
        one image-loading path of every later stage (probe references and calibration, report thumbnails).

        Each shard is asked once (:meth:`DatasetReader.get_many`: layouts with direct access look each key up,
        sequential ones such as tars read the shard once, stopping when every wanted key was seen). Values are
        ``bytes`` or the exception that prevented it (a missing sample, an unreadable shard); nothing raises.

        Example:
            >>> got = IndexStore("runs/laion").fetch_bytes([("00000", "000000012")])  # doctest: +SKIP
        """
        wanted = sorted(set(wanted))
        out: dict[tuple[str, str], Any] = {}
        if not wanted:
            return out
        try:
            reader = self.reader
        except Exception as exc:  # noqa: BLE001 - the dataset moved or is unreadable: every image says why
            return {w: exc for w in wanted}
        by_shard: dict[str, list[str]] = {}
        for shard, key in wanted:
            by_shard.setdefault(shard, []).append(key)
        for shard in tqdm(sorted(by_shard), desc=desc, unit="shard", disable=not progress):
            keys = by_shard[shard]
            try:
                got = reader.get_many(shard, keys)
            except Exception as exc:  # noqa: BLE001 - an unreadable shard: its images say why
                got, err = {}, exc
            else:
                err = None
            for k in keys:
                s = got.get(k)
                if s is not None and s.data is not None:
                    out[(shard, k)] = s.data
                else:
                    out[(shard, k)] = err or KeyError(f"{k!r} not found in shard {shard!r}" if s is None
                                                      else f"{k}: no image bytes")
        return out

    def image_bytes(self, shard: str, key: str) -> bytes:
        """The stored bytes of one training image (the reader's own lookup); raises the reason when it cannot be
        had (``KeyError`` for a missing sample)."""
        sample = self.reader.get(shard, key)
        if sample.data is None:
            raise KeyError(f"sample {key!r} of shard {shard!r} has no image bytes")
        return sample.data

    def load_images(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """Several training images as RGB PIL images, keyed by (shard, key) (:meth:`fetch_bytes`, then decoded).
        Samples that are missing or fail to decode are absent from the result."""
        from .decode import decode_rgb

        out = {}
        for k, data in self.fetch_bytes(pairs).items():
            if isinstance(data, BaseException):
                continue
            try:
                out[k] = decode_rgb(data)
            except Exception:  # noqa: BLE001 - the caller reports what is missing
                continue
        return out

    def load_image(self, shard: str, key: str):
        """The training image as an RGB PIL image."""
        from .decode import decode_rgb

        return decode_rgb(self.image_bytes(shard, key))

    # --- the index's embedder -------------------------------------------------------------------------
    def build_embedder(self, device: Optional[str] = None, verify: bool = True):
        """The embedder the index was built with, rebuilt from ``index.json`` (None when the index has no
        embeddings); ``device`` overrides the stored one. With ``verify``, an embedder whose description differs
        from the index's (another checkpoint, by its SHA-256; another model or dimension) is refused with
        :class:`EmbedderMismatch`.

        Example:
            >>> emb = IndexStore("runs/laion").build_embedder(device="cpu")  # doctest: +SKIP
            >>> emb.embed_images([img]).shape  # doctest: +SKIP
            (1, 128)
        """
        if not self.has_embeddings:
            return None
        from .config import EmbedderConfig
        from .embedders import build_embedder

        stored = dict((self.info.get("config") or {}).get("embedder") or {})
        if not stored and verify:
            raise EmbedderMismatch("index.json has no embedder configuration to rebuild the embedder from")
        stored.setdefault("name", self.embedder.get("name"))
        if device:
            stored["device"] = device
        emb = build_embedder(EmbedderConfig.model_validate(
            {k: v for k, v in stored.items() if k in EmbedderConfig.model_fields}))
        if verify:
            desc, want = emb.describe(), self.embedder
            for k in ("name", "dim", "checkpoint_sha256", "model", "pretrained"):
                if want.get(k) is not None and desc.get(k) != want.get(k):
                    raise EmbedderMismatch(f"the rebuilt embedder differs from the index's in {k!r}: "
                                           f"{desc.get(k)!r} != {want.get(k)!r}")
        return emb
