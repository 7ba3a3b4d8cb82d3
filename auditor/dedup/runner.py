"""The dedup stage: ``RUN_DIR/index`` -> duplicate clusters, a keep/drop manifest and a memorization-risk
ranking in ``RUN_DIR/dedup``.

Signals (each can be switched off in :class:`~auditor.dedup.config.DedupConfig`):

* ``exact_bytes``  -- identical stored bytes (``sha256``);
* ``exact_pixels`` -- identical decoded RGB pixels (``pixel_blake3``: the same picture as PNG and BMP);
* ``phash`` / ``dhash`` -- 64-bit perceptual hashes within a Hamming distance;
* ``embedding``    -- cosine similarity of the index's L2-normalised embeddings (skipped without an embedder).

Searches run once per *pixel group* (rows with identical decoded pixels have identical hashes and
embeddings), so a placeholder served ten thousand times costs one search row, not fifty million pairs.
Search edges are kept in ``dedup/state`` keyed by pixel hash; when the index gains shards, only the new pixel
groups are searched (against the old ones and among themselves) and clustering is redone over everything,
which is cheap next to search: the result equals a run from scratch on the union.

Crash safety: the state is a generation, ``state/groups-NNNNNN.parquet`` + ``state/edges-NNNNNN.parquet``,
committed by atomically replacing ``state/state.json`` (which names them) as the run's very last write; older
generations are deleted only after that commit. A run killed at any point therefore leaves the previous,
consistent state, and its rerun does exactly what the killed run would have done (same generation number, same
bytes). A run starts by deleting the temporary files a killed run left in ``RUN_DIR/dedup``.

Outputs (``RUN_DIR/dedup``, written atomically, identical bytes for the same index and config):

* ``manifest.parquet``  one row per indexed sample (index order): key, shard, cluster_id, cluster_size,
  is_representative, keep, reason (exact_bytes | exact_pixels | phash | dhash | embedding | '' for
  representatives and singletons), similarity_to_representative, caption_dup_count (how many *other*
  samples carry the same normalised caption);
* ``clusters.parquet``  one row per cluster (singletons too): cluster_id, size, representative_key,
  representative_shard, n_captions, is_placeholder, placeholder_why, exact_members, reasons;
* ``captions.parquet``  every normalised caption carried by more than one sample: caption_hash, caption,
  count, n_clusters (distinct image clusters carrying it: Somepalli et al. 2023's caption duplication);
* ``risk.parquet``      the clusters to probe first (see :mod:`auditor.dedup.risk`);
* ``keep_keys.txt`` / ``drop_keys.txt``  sorted ``shard/key`` lines;

Key formats: ``key`` is the sample's key within its shard as the reader yields it (img2dataset's ``key``, e.g.
``000000012``; for a plain folder the file's path relative to the root, ``/``-separated) and ``shard`` the shard id
(img2dataset's ``00000``; a folder's chunk of sorted keys ``00000``, ``00001``, ...). A key is unique only within
its shard, so the parquet tables carry the two columns and the text lists join them as ``shard/key`` (split at the
first ``/``: shard ids never contain one). Example: ``00003/000031337`` is key ``000031337`` of shard ``00003``.

Which copy is kept: the representative of each cluster, chosen as the largest pixel area, then the most stored bytes
(at equal area the least-compressed copy: an original beats its JPEG q60 re-save), then the lowest
``(key, shard)``.
* ``summary.json``      counts, duplicate rate, cluster-size histogram, thresholds used;
* ``search_ids.parquet`` + ``embeddings.faiss`` + ``phash.npy`` (+ ``dhash.npy``): the search index over
  one row per pixel group (row i of each = ``search_ids`` row i: pixel_group, shard, key), for the guard
  stage's queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..index.store import IndexStore
from ..utils import remove_temporary_files, write_json, write_npy, write_parquet, write_text
from .cluster import Signals, cluster, group_codes, star_edges
from .config import DedupConfig
from .schema import MANIFEST_SCHEMA, SCHEMAS, to_table

log = logging.getLogger(__name__)

DEDUP_DIR = "dedup"
STATE_DIR = "state"
STATE_VERSION = 2  # 2: generation files named by state.json (1: three files replaced one by one)
SIGNAL_CODE = {"phash": 2, "dhash": 3, "embedding": 4}

MANIFEST_COLUMNS = MANIFEST_SCHEMA.names
_TABLE_COLUMNS = ["key", "shard", "caption", "sha256", "pixel_blake3", "phash", "dhash", "width", "height",
                  "nbytes", "caption_hash"]


def _dedup_cfg(cfg) -> tuple[DedupConfig, int]:
    from ..config import AuditorConfig

    if cfg is None:
        cfg = AuditorConfig()
    if isinstance(cfg, AuditorConfig):
        return cfg.dedup, cfg.seed
    return cfg, 0


def pixel_groups(table: pd.DataFrame) -> pd.Series:
    """The search unit of every row: its pixel hash (or byte hash, or shard/key when both are missing)."""
    pix = table["pixel_blake3"].fillna("").astype(str)
    byt = table["sha256"].fillna("").astype(str)
    own = "r:" + table["shard"].astype(str) + "/" + table["key"].astype(str)
    return pix.where(pix != "", ("b:" + byt).where(byt != "", own))


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _has_embeddings(store: IndexStore, dcfg: DedupConfig) -> bool:
    return bool(dcfg.embedding) and int(store.embedder.get("dim") or 0) > 0 and store.embedder.get("name") != "none"


def search_fingerprint(store: IndexStore, dcfg: DedupConfig, seed: int, emb: bool) -> dict:
    """Everything the stored search edges depend on; a change forces a search from scratch."""
    return {
        "state_version": STATE_VERSION,
        "phash": dcfg.phash_max_distance if dcfg.phash else None,
        "dhash": dcfg.dhash_max_distance if dcfg.dhash_max_distance >= 0 else None,
        "dihedral": dcfg.hash_dihedral_max_distance,
        "dhash_confirm": dcfg.dhash_confirm_max_distance if dcfg.phash else None,
        "embedding": {"threshold": dcfg.cosine_threshold, "search": dcfg.search, "seed": seed,
                      "nlist": dcfg.nlist, "nprobe": dcfg.nprobe, "embedder": store.embedder} if emb else None,
    }


# ------------------------------------------------------------------------------------------------------
# search
# ------------------------------------------------------------------------------------------------------
def search_options(dcfg: DedupConfig) -> dict:
    """The faiss knobs of the config, as keyword arguments of auditor.dedup.search's functions."""
    return {"nlist": dcfg.nlist, "nprobe": dcfg.nprobe, "threads": dcfg.search_threads}


def _hamming_edges(values: np.ndarray, variants: Optional[np.ndarray], n_old: int, max_distance: int,
                   transformed_max_distance: int, progress: bool = False, threads: Optional[int] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of pixel groups within ``max_distance`` (or ``transformed_max_distance`` after a flip or
    rotation, when ``variants`` are given); with ``n_old`` > 0 only pairs involving a new group (index >= n_old)
    are searched."""
    from .search import hamming_cross_pairs, hamming_cross_pairs_dihedral, hamming_pairs, hamming_pairs_dihedral

    new = values[n_old:]
    if variants is None:
        i, j, _ = hamming_pairs(new, max_distance, progress=progress, threads=threads)
    else:
        i, j, _ = hamming_pairs_dihedral(new, variants[n_old:], max_distance, transformed_max_distance,
                                         progress=progress, threads=threads)
    a, b = [np.asarray(i, np.int64) + n_old], [np.asarray(j, np.int64) + n_old]
    if n_old and len(new):
        if variants is None:
            qi, bj, _ = hamming_cross_pairs(new, values[:n_old], max_distance, progress=progress, threads=threads)
        else:
            qi, bj, _ = hamming_cross_pairs_dihedral(new, variants[n_old:], values[:n_old], variants[:n_old],
                                                     max_distance, transformed_max_distance, progress=progress,
                                                     threads=threads)
        a.append(np.asarray(qi, np.int64) + n_old)
        b.append(np.asarray(bj, np.int64))
    return np.concatenate(a), np.concatenate(b)


def _dhash_confirmed(dhash: np.ndarray, variants: Optional[np.ndarray], a: np.ndarray, b: np.ndarray,
                     max_distance: int) -> np.ndarray:
    """Which pHash pairs (a, b) the dHash does not contradict (within ``max_distance`` as stored or after the
    best flip/rotation); see ``dhash_confirm_max_distance`` in :class:`~auditor.dedup.config.DedupConfig`."""
    from ..index.dihedral import hamming_dihedral

    d = np.bitwise_count(np.bitwise_xor(dhash[a], dhash[b])).astype(np.int64)
    if variants is not None:
        d = np.minimum(d, hamming_dihedral(dhash[a], variants[a], dhash[b], variants[b]))
    return d <= max_distance


def _embedding_edges(emb: np.ndarray, n_old: int, dcfg: DedupConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from .search import embedding_cross_pairs, embedding_pairs

    new = emb[n_old:]
    kw = search_options(dcfg)
    i, j, _ = embedding_pairs(new, dcfg.cosine_threshold, method=dcfg.search, seed=seed, progress=dcfg.progress, **kw)
    a, b = [np.asarray(i, np.int64) + n_old], [np.asarray(j, np.int64) + n_old]
    if n_old and len(new):
        qi, bj, _ = embedding_cross_pairs(new, emb[:n_old], dcfg.cosine_threshold, method=dcfg.search, seed=seed,
                                          progress=dcfg.progress, **kw)
        a.append(np.asarray(qi, np.int64) + n_old)
        b.append(np.asarray(bj, np.int64))
    return np.concatenate(a), np.concatenate(b)


# ------------------------------------------------------------------------------------------------------
# the stage
# ------------------------------------------------------------------------------------------------------
def run_dedup(run_dir: str | os.PathLike, cfg=None, full: bool = False) -> dict:
    """Deduplicate the index in ``run_dir``; returns the summary. ``cfg``: AuditorConfig or DedupConfig.
    ``full=True`` ignores the stored search state and searches everything again."""
    dcfg, seed = _dedup_cfg(cfg)
    run_dir = Path(run_dir)
    store = IndexStore(run_dir)
    out = run_dir / DEDUP_DIR
    state_dir = out / STATE_DIR
    n_tmp = remove_temporary_files(out)  # what a killed run left (dedup/ and dedup/state/)
    if n_tmp:
        log.info("removed %d temporary files left by an interrupted dedup run in %s", n_tmp, out)
    shard_ids = store.shard_ids()
    table = store.table(columns=_TABLE_COLUMNS)
    n = len(table)
    log.info("dedup %s: %d samples in %d shards", run_dir, n, len(shard_ids))

    # --- pixel groups, old vs new ---------------------------------------------------------------------
    has_emb = _has_embeddings(store, dcfg)
    emb_all = store.embeddings() if has_emb else None
    if has_emb and emb_all.shape[0] != n:
        log.warning("embeddings not used: the index holds %d embedding rows for %d samples (a shard without its "
                    ".emb.npy?)", emb_all.shape[0], n)
        has_emb, emb_all = False, None
    pg = pixel_groups(table)
    fingerprint = search_fingerprint(store, dcfg, seed, has_emb)
    shard_digests = {s: _file_digest(store.shard_dir / f"{s}.parquet") for s in shard_ids}
    old_groups: list[str] = []
    old_edges = pd.DataFrame({"a": pd.Series(dtype=str), "b": pd.Series(dtype=str), "signal": pd.Series(dtype="int8")})
    state = _load_state(state_dir)
    mode = "full"
    if state and not full and state.get("fingerprint") == fingerprint and all(
            shard_digests.get(s) == d for s, d in state.get("shards", {}).items()):
        ids = pd.read_parquet(state_dir / state["groups"])
        old_groups = ids["pixel_group"].tolist()
        old_edges = pd.read_parquet(state_dir / state["edges"])
        mode = "incremental"
    elif state and not full:
        log.info("dedup state does not match the index or the config: searching everything again")

    # groups in search order: old groups (stored order), then new groups in index order
    first_row = pd.Series(np.arange(n), index=pg.to_numpy()).groupby(level=0, sort=False).first()
    old_set = set(old_groups)
    present = set(first_row.index)
    if not old_set <= present:  # an old group vanished (a shard rewritten): start over
        old_groups, old_set, mode = [], set(), "full"
        old_edges = old_edges.iloc[0:0]
    new_groups = [g for g in first_row.index if g not in old_set]
    groups = old_groups + new_groups
    n_old = len(old_groups)
    group_first = first_row.loc[groups].to_numpy(np.int64) if groups else np.zeros(0, np.int64)
    log.info("dedup search (%s): %d pixel groups, %d new", mode, len(groups), len(new_groups))

    # --- search edges between pixel groups ------------------------------------------------------------
    phash = table["phash"].to_numpy(np.uint64)
    dhash = table["dhash"].to_numpy(np.uint64)
    dih = dcfg.hash_dihedral_max_distance
    confirm = dcfg.dhash_confirm_max_distance if dcfg.phash else -1
    use_dhash = dcfg.dhash_max_distance >= 0
    phash_v = store.hash_variants("phash_dihedral") if dcfg.phash and dih >= 0 else None
    dhash_v = store.hash_variants("dhash_dihedral") if (use_dhash or confirm >= 0) and dih >= 0 else None
    gv = (lambda v: None if v is None else v[group_first])  # noqa: E731 - per pixel group
    new_edges = []
    if dcfg.phash:
        a, b = _hamming_edges(phash[group_first], gv(phash_v), n_old, dcfg.phash_max_distance, dih,
                              dcfg.progress, dcfg.search_threads)
        if confirm >= 0 and len(a):
            keep = _dhash_confirmed(dhash[group_first], gv(dhash_v), a, b, confirm)
            log.info("dedup: %d of %d pHash pairs dropped: their dHashes differ by more than %d bits",
                     int((~keep).sum()), len(a), confirm)
            a, b = a[keep], b[keep]
        new_edges.append((a, b, SIGNAL_CODE["phash"]))
    if use_dhash:
        a, b = _hamming_edges(dhash[group_first], gv(dhash_v), n_old, dcfg.dhash_max_distance, dih,
                              dcfg.progress, dcfg.search_threads)
        new_edges.append((a, b, SIGNAL_CODE["dhash"]))
    group_emb = None
    if has_emb:
        group_emb = np.ascontiguousarray(np.asarray(emb_all[group_first], dtype=np.float32))
        a, b = _embedding_edges(group_emb, n_old, dcfg, seed)
        new_edges.append((a, b, SIGNAL_CODE["embedding"]))
    garr = np.asarray(groups, dtype=object)
    frames = [old_edges] + [pd.DataFrame({"a": garr[a], "b": garr[b], "signal": np.full(len(a), s, np.int8)})
                            for a, b, s in new_edges]
    edges = pd.concat(frames, ignore_index=True) if frames else old_edges
    edges = edges.astype({"a": str, "b": str, "signal": "int8"})

    # --- row-level edges --------------------------------------------------------------------------------
    gindex = {g: k for k, g in enumerate(groups)}
    ea = edges["a"].map(gindex).to_numpy(np.int64)
    eb = edges["b"].map(gindex).to_numpy(np.int64)
    ei, ej = [group_first[ea]], [group_first[eb]]
    sha_codes = group_codes(table["sha256"])
    pix_codes = group_codes(table["pixel_blake3"])
    if dcfg.exact_bytes:
        i, j = star_edges(sha_codes)
        ei.append(i), ej.append(j)
    # identical pixels imply identical hashes and embeddings: join pixel groups whenever any signal that
    # identical pixels satisfy is on
    if dcfg.exact_pixels or dcfg.phash or dcfg.dhash_max_distance >= 0 or has_emb:
        i, j = star_edges(group_codes(pg))
        ei.append(i), ej.append(j)
    edge_i, edge_j = np.concatenate(ei), np.concatenate(ej)

    sig = Signals(
        key=table["key"].to_numpy(object), shard=table["shard"].to_numpy(object),
        area=(table["width"].to_numpy(np.int64) * table["height"].to_numpy(np.int64)),
        sha256=sha_codes if dcfg.exact_bytes else None,
        pixel_blake3=pix_codes if dcfg.exact_pixels else None,
        phash=phash if dcfg.phash else None,
        dhash=dhash if dcfg.dhash_max_distance >= 0 else None,
        emb=emb_all,
        phash_max_distance=dcfg.phash_max_distance, dhash_max_distance=max(dcfg.dhash_max_distance, 0),
        cosine_threshold=dcfg.cosine_threshold,
        nbytes=table["nbytes"].to_numpy(np.int64),
        phash_dihedral=phash_v, dhash_dihedral=dhash_v if use_dhash else None, dihedral_max_distance=dih,
        confirm_dhash=dhash if confirm >= 0 else None, confirm_dhash_dihedral=dhash_v,
        dhash_confirm_max_distance=confirm,
        chain_min_links=dcfg.chain_min_links, chain_max_distance=dcfg.chain_max_distance,
        chain_confirm_cosine=dcfg.cosine_threshold - dcfg.chain_cosine_margin,
    )
    res = cluster(sig, edge_i, edge_j, guard=dcfg.chaining_guard)
    log.info("dedup: %d clusters after %d guard rounds (%d rows split off by the chaining guard)",
             int(res.label.max()) + 1 if n else 0, res.rounds, res.n_splits)

    from .report import build_outputs

    outputs = build_outputs(store, table, res, dcfg, fingerprint)

    # --- write --------------------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in outputs.frames.items():
        write_parquet(out / name, to_table(frame, SCHEMAS[name]))
    write_text(out / "keep_keys.txt", outputs.keep_text)
    write_text(out / "drop_keys.txt", outputs.drop_text)
    write_json(out / "summary.json", outputs.summary)
    # the search index for later queries (guard stage), one row per pixel group, in search order
    ids = pd.DataFrame({"pixel_group": garr.astype(str) if len(garr) else np.zeros(0, dtype=str),
                        "shard": table["shard"].to_numpy(object)[group_first].astype(str),
                        "key": table["key"].to_numpy(object)[group_first].astype(str)})
    write_parquet(out / "search_ids.parquet", ids)
    write_npy(out / "phash.npy", phash[group_first])
    if dcfg.dhash_max_distance >= 0:
        write_npy(out / "dhash.npy", dhash[group_first])
    faiss_base = None
    if has_emb:
        faiss_base = _save_faiss(out, group_emb, n_old, mode, dcfg, seed, (state or {}).get("faiss_base_rows"))
    # state last, as a new generation committed by state.json: a crash before the commit leaves the previous
    # state (and its files) untouched, which is still valid
    _commit_state(state_dir, state, pd.DataFrame({"pixel_group": garr.astype(str)}), edges, {
        "fingerprint": fingerprint, "shards": shard_digests, "faiss_base_rows": faiss_base,
        "last_run": {"mode": mode, "groups": len(groups), "new_groups": len(new_groups),
                     "guard_rounds": res.rounds, "split_rows": res.n_splits}})
    return outputs.summary


def _save_faiss(out: Path, group_emb: np.ndarray, n_old: int, mode: str, dcfg: DedupConfig, seed: int,
                base_rows: Optional[int] = None) -> int:
    """``dedup/embeddings.faiss``: the old index with the new groups added (incremental), else built anew.

    Returns the number of leading rows the index was built (and, for ivf, trained) on; the rest were added.
    When the old index is not the one the state describes (a run killed after writing it, before committing
    its state, had already added its groups), it is rebuilt the same way -- built on the first ``base_rows``
    rows, the rest added -- so the file is what the uninterrupted incremental run writes."""
    from . import search

    path = out / "embeddings.faiss"
    index = None
    base = len(group_emb)
    if mode == "incremental" and n_old:
        base = n_old
        if isinstance(base_rows, int) and 0 < base_rows <= n_old:
            base = base_rows
        if path.exists():
            try:
                index = search.load_search_index(path)
                if index.ntotal != n_old:
                    index = None
                elif len(group_emb) > n_old:
                    index.add(np.ascontiguousarray(group_emb[n_old:], dtype=np.float32))
            except Exception as exc:  # noqa: BLE001 - a stale or unreadable index is rebuilt
                log.warning("rebuilding %s: %s", path, exc)
                index = None
    if index is None:
        index = search.build_search_index(group_emb[:base], method=dcfg.search, seed=seed, **search_options(dcfg))
        if len(group_emb) > base:
            index.add(np.ascontiguousarray(group_emb[base:], dtype=np.float32))
    search.save_search_index(index, path)
    return base


def _load_state(state_dir: Path) -> Optional[dict]:
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


def _commit_state(state_dir: Path, old: Optional[dict], groups: pd.DataFrame, edges: pd.DataFrame,
                  info: dict) -> None:
    """Write the search state as a new generation and commit it by replacing ``state.json`` (last), then
    delete every other file in ``state_dir`` (older generations, a killed run's uncommitted files).

    The generation number follows the committed one, so a run killed before its commit and its rerun write
    the same names (the rerun simply replaces the killed run's orphans)."""
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
    keep = {"state.json", *names.values()}
    for p in state_dir.iterdir():
        if p.is_file() and p.name not in keep:
            p.unlink(missing_ok=True)
