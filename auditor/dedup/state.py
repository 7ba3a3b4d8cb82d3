"""The incremental dedup state: what the stored search edges depend on (:func:`search_fingerprint`), the state
generation committed by ``state/state.json`` (:func:`load_state`, :func:`commit_state`), and the saved embedding
index grown with the new pixel groups (:func:`save_faiss`).

Crash safety: the state is a generation, ``state/groups-NNNNNN.parquet`` + ``state/edges-NNNNNN.parquet``,
committed by atomically replacing ``state/state.json`` (which names them) as the run's very last write; older
generations are deleted only after that commit. A run killed at any point therefore leaves the previous,
consistent state, and its rerun does exactly what the killed run would have done (same generation number, same
bytes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..index.store import IndexStore
from ..rundir import DEDUP_STATE_DIR, SEARCH_INDEX
from ..utils import file_sha256, write_json, write_parquet
from .config import DedupConfig
from .edges import search_options
from .search import build_search_index, load_search_index, save_search_index

log = logging.getLogger(__name__)

STATE_DIR = DEDUP_STATE_DIR
STATE_VERSION = 2  # 2: generation files named by state.json (1: three files replaced one by one)

__all__ = ["STATE_DIR", "STATE_VERSION", "file_digest", "search_fingerprint", "load_state", "commit_state",
           "save_faiss"]


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (:func:`auditor.utils.file_sha256`)."""
    return file_sha256(path)


def search_fingerprint(store: IndexStore, dcfg: DedupConfig, seed: int, emb: bool) -> dict:
    """Everything the stored search edges depend on; a change forces a search from scratch."""
    embedding = None
    if emb:
        embedding = {"threshold": dcfg.cosine_threshold, "search": dcfg.search, "seed": seed,
                     "nlist": dcfg.nlist, "nprobe": dcfg.nprobe, "embedder": store.embedder}
        if dcfg.probe_margin is not None:  # absent for the fixed rule: states from before the margin rule stay valid
            embedding.update(probe_margin=dcfg.probe_margin, probe_min=dcfg.probe_min)
        if dcfg.search == "partitioned":
            embedding["partitions"] = {k: v for k, v in search_options(dcfg).items() if k.startswith("partition_")}
    return {
        "state_version": STATE_VERSION,
        "phash": dcfg.phash_max_distance if dcfg.phash else None,
        "dhash": dcfg.dhash_max_distance if dcfg.dhash_max_distance >= 0 else None,
        "dihedral": dcfg.hash_dihedral_max_distance,
        "dhash_confirm": dcfg.dhash_confirm_max_distance if dcfg.phash else None,
        "embedding": embedding,
    }


def save_faiss(out: Path, group_emb: np.ndarray, n_old: int, mode: str, dcfg: DedupConfig, seed: int,
                base_rows: Optional[int] = None) -> int:
    """``dedup/embeddings.faiss``: the old index with the new groups added (incremental), else built anew.

    Returns the number of leading rows the index was built (and, for ivf, trained) on; the rest were added.
    When the old index is not the one the state describes (a run killed after writing it, before committing
    its state, had already added its groups), it is rebuilt the same way -- built on the first ``base_rows``
    rows, the rest added -- so the file is what the uninterrupted incremental run writes."""
    path = out / SEARCH_INDEX
    index = None
    base = len(group_emb)
    if mode == "incremental" and n_old:
        base = n_old
        if isinstance(base_rows, int) and 0 < base_rows <= n_old:
            base = base_rows
        if path.exists():
            try:
                index = load_search_index(path)
                if index.ntotal != n_old:
                    index = None
                elif len(group_emb) > n_old:
                    index.add(np.ascontiguousarray(group_emb[n_old:], dtype=np.float32))
            except Exception as exc:  # noqa: BLE001 - a stale or unreadable index is rebuilt
                log.warning("rebuilding %s: %s", path, exc)
                index = None
    if index is None:
        index = build_search_index(group_emb[:base], method=dcfg.search, seed=seed, **search_options(dcfg))
        if len(group_emb) > base:
            index.add(np.ascontiguousarray(group_emb[base:], dtype=np.float32))
    save_search_index(index, path)
    return base


def load_state(state_dir: Path) -> Optional[dict]:
    """The committed state (``state.json`` and the generation files it names), or None."""
    p = state_dir / "state.json"
    if not p.is_file():
        return None
    try:
        state = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    if not isinstance(state, dict):
        return None
    names = [state.get("groups"), state.get("edges")]
    if not all(isinstance(x, str) and x and Path(x).name == x and (state_dir / x).is_file() for x in names):
        return None  # no generation (an older state layout, or files removed): search from scratch
    return state


def _unchanged(state_dir: Path, old: dict, groups: pd.DataFrame, edges: pd.DataFrame, info: dict) -> bool:
    """Whether committing would only restate ``old``: same info (but ``last_run``), groups and edges."""
    same_info = all(old.get(k) == json.loads(json.dumps(v, default=str))
                    for k, v in info.items() if k != "last_run")
    if not same_info or not all(k in old for k in info):
        return False
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return (pq.read_table(state_dir / old["groups"]).equals(pa.Table.from_pandas(groups, preserve_index=False))
                and pq.read_table(state_dir / old["edges"]).equals(pa.Table.from_pandas(edges, preserve_index=False)))
    except Exception:  # noqa: BLE001 - an unreadable generation is rewritten
        return False


def _remove_others(state_dir: Path, keep: set[str]) -> None:
    for p in state_dir.iterdir():
        if p.is_file() and p.name not in keep:
            p.unlink(missing_ok=True)


def commit_state(state_dir: Path, old: Optional[dict], groups: pd.DataFrame, edges: pd.DataFrame,
                  info: dict) -> None:
    """Write the search state as a new generation and commit it by replacing ``state.json`` (last), then
    delete every other file in ``state_dir`` (older generations, a killed run's uncommitted files).

    The generation number follows the committed one, so a run killed before its commit and its rerun write
    the same names (the rerun simply replaces the killed run's orphans). A run that found nothing new (the same
    groups, edges, fingerprint and shards as the committed state) keeps that state as it is, ``last_run``
    included: a rerun on an unchanged index leaves ``state/`` byte-identical."""
    if old is not None and _unchanged(state_dir, old, groups, edges, info):
        _remove_others(state_dir, {"state.json", old["groups"], old["edges"]})  # a killed run's orphans
        return
    gen = 1
    if old is not None:
        try:
            gen = int(old.get("generation", 0)) + 1
        except (TypeError, ValueError):
            gen = 1
    names = {"groups": f"groups-{gen:06d}.parquet", "edges": f"edges-{gen:06d}.parquet"}
    write_parquet(state_dir / names["groups"], groups)
    write_parquet(state_dir / names["edges"], edges)
    write_json(state_dir / "state.json", {"generation": gen, **names, **info})
    _remove_others(state_dir, {"state.json", *names.values()})
