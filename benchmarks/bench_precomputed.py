"""Indexing from precomputed embeddings at LAION scale: ``auditor index --embeddings`` on 1M rows.

What is timed is the precomputed path itself -- :func:`auditor.index.precomputed.attach_embeddings`: read the
clip-retrieval / LAION layout (``img_emb/img_emb_N.npy`` float16 + ``metadata/metadata_N.parquet`` with key and
url), check dimensions and norms, join the rows to the index by key (or url), write each shard's float16
``.emb.npy`` and the errors of the rows without one. The index it attaches to is built synthetically in the store
format (1M rows in 100 shards, img2dataset keys and urls): hashing 1M images is the hash-only benchmark's job
(section 1), not this one. The embedding files list the rows in another order than the index (a random
permutation) and miss 0.1 % of them, so the join is a real one and the errors path runs.

Peer, measured in the same run on the same files: the bare minimum any tool pays for the same result -- numpy
loads of the .npy files, pyarrow reads of the key columns, one pandas ``Index.get_indexer`` join, and
``np.save`` of each shard's rows (no checks, no error records, no atomic writes). Reported as a ratio.

    python benchmarks/bench_precomputed.py [--rows 1000000] [--dim 512] [--shards 100] [--files 10]

Writes benchmarks/results/precomputed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from common import cpu_model  # noqa: E402


def build_index(run: Path, rows: int, shards: int) -> list[np.ndarray]:
    """A synthetic index in the store format: key, shard, url, hashes; returns the keys per shard."""
    from auditor.index.store import INDEX_FORMAT_VERSION, SAMPLE_SCHEMA
    from auditor.utils import errors_frame

    sd = run / "index" / "shards"
    sd.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = rows // shards
    keys_all, info_shards = [], []
    for s in range(shards):
        sid = f"{s:05d}"
        keys = np.array([f"{sid}{j:04d}" for j in range(per)], dtype=object)
        n = len(keys)
        h = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64).astype(np.uint64)
        cols = {
            "key": keys, "shard": np.full(n, sid, dtype=object),
            "caption": np.full(n, "a photo", dtype=object),
            "url": np.array([f"https://img.example.org/{k}.jpg" for k in keys], dtype=object),
            "sha256": np.full(n, "0" * 64, dtype=object), "pixel_blake3": np.full(n, "0" * 64, dtype=object),
            "phash": h[:, 0], "dhash": h[:, 1],
            "phash_dihedral": [[0] * 7] * n, "dhash_dihedral": [[0] * 7] * n,
            "width": np.full(n, 256, np.int32), "height": np.full(n, 256, np.int32),
            "format": np.full(n, "JPEG", dtype=object), "stored_ext": np.full(n, "jpg", dtype=object),
            "nbytes": np.full(n, 20_000, np.int64), "caption_hash": np.full(n, "c" * 32, dtype=object),
        }
        pq.write_table(pa.table({f.name: pa.array(cols[f.name], f.type) for f in SAMPLE_SCHEMA}), sd / f"{sid}.parquet")
        pq.write_table(pa.Table.from_pandas(errors_frame([]), preserve_index=False), sd / f"{sid}.errors.parquet")
        (sd / f"{sid}.done").write_text(json.dumps({"indexed": n, "errors": 0, "not_indexed": 0}))
        keys_all.append(keys)
        info_shards.append({"id": sid, "indexed": n, "errors": 0, "not_indexed": 0})
    info = {"format_version": INDEX_FORMAT_VERSION, "dataset": {"root": "/nonexistent", "layout": "webdataset"},
            "config": {}, "embedder": {"name": "none", "dim": 0}, "complete": True, "shards": info_shards,
            "counts": {"indexed": rows, "errors": 0, "not_indexed": 0, "shards": shards}}
    (run / "index" / "index.json").write_text(json.dumps(info))
    return keys_all


def build_embeddings(root: Path, keys: np.ndarray, dim: int, files: int) -> None:
    """clip-retrieval/LAION layout, rows permuted, 0.1 % of the rows missing; float16 unit vectors."""
    rng = np.random.default_rng(1)
    order = rng.permutation(len(keys))
    order = order[: len(order) - len(order) // 1000]
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    for i, part in enumerate(np.array_split(order, files)):
        v = rng.standard_normal((len(part), dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        np.save(root / "img_emb" / f"img_emb_{i}.npy", v.astype(np.float16))
        k = keys[part]
        pq.write_table(pa.table({"key": pa.array(k, pa.string()),
                                 "url": pa.array([f"https://img.example.org/{x}.jpg" for x in k], pa.string()),
                                 "caption": pa.array(["a photo"] * len(k), pa.string())}),
                       root / "metadata" / f"metadata_{i}.parquet")


def peer(run: Path, emb_root: Path, out: Path) -> float:
    """The bare join: load, one get_indexer, save per shard (no checks, no errors, no atomic writes)."""
    import pandas as pd

    t = time.perf_counter()
    npys = sorted((emb_root / "img_emb").glob("*.npy"), key=lambda p: (len(p.name), p.name))
    mat = np.concatenate([np.load(p) for p in npys])
    ids = np.concatenate([pq.read_table(emb_root / "metadata" / f"metadata_{p.stem.rsplit('_', 1)[1]}.parquet",
                                        columns=["key"]).column("key").to_numpy(zero_copy_only=False) for p in npys])
    idx = pd.Index(ids)
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted((run / "index" / "shards").glob("*.parquet")):
        if f.name.endswith(".errors.parquet"):
            continue
        keys = pq.read_table(f, columns=["key"]).column("key").to_numpy(zero_copy_only=False)
        pos = idx.get_indexer(keys)
        np.save(out / f"{f.stem}.npy", mat[pos[pos >= 0]])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    from auditor.index.precomputed import attach_embeddings
    from auditor.index.store import IndexStore

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-precomputed-"))
    try:
        t0 = time.perf_counter()
        keys = build_index(work / "run", args.rows, args.shards)
        build_embeddings(work / "emb", np.concatenate(keys), args.dim, args.files)
        setup = time.perf_counter() - t0
        shutil.copytree(work / "run", work / "run_clean")
        t_peer = peer(work / "run_clean", work / "emb", work / "peer_out")
        t = time.perf_counter()
        store = attach_embeddings(work / "run", str(work / "emb"))
        t_auditor = time.perf_counter() - t
        n_emb = store.embeddings().shape[0]
        n_err = len(store.errors())
        res = {"date": date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python "
                                                            f"{platform.python_version()}",
               "rows": args.rows, "dim": args.dim, "index_shards": args.shards, "embedding_files": args.files,
               "setup_s": round(setup, 1), "auditor_attach_s": round(t_auditor, 2),
               "peer_bare_join_s": round(t_peer, 2),
               "ratio": round(t_auditor / t_peer, 2), "embedded_rows": int(n_emb), "missing_rows_in_errors": n_err,
               "target_s": 120, "meets_target": t_auditor <= 120}
        out = REPO / "benchmarks" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "precomputed.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "precomputed.md").write_text(
            "| rows | dim | auditor attach (s) | bare join peer (s) | ratio | embedded | missing -> errors |\n"
            "|---:|---:|---:|---:|---:|---:|---:|\n"
            f"| {args.rows:,} | {args.dim} | {t_auditor:.1f} | {t_peer:.1f} | {t_auditor / t_peer:.2f} | "
            f"{n_emb:,} | {n_err:,} |\n")
        print(json.dumps(res, indent=2))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
