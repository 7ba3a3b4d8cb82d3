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
which is cheap next to search: the result equals a run from scratch on the union. The edges come from
:mod:`auditor.dedup.edges` (the pair rules, through :mod:`auditor.dedup.search`), the state from
:mod:`auditor.dedup.state`.

Crash safety: the state is a generation committed by atomically replacing ``state/state.json`` as the run's very
last write (:mod:`auditor.dedup.state`): a run killed at any point leaves the previous, consistent state, and its
rerun does exactly what the killed run would have done. A run starts by deleting the temporary files a killed
run left in ``RUN_DIR/dedup``.

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
* ``keep_urls.parquet``  the kept samples with a url, as img2dataset's ``--url_list`` (``--input_format parquet
  --url_col url --caption_col caption --save_additional_columns [the carried columns]``): url, caption, sha256
  (for ``--verify_hash '["sha256","sha256"]'``), then the carried columns; index order;
* ``removal_ids.parquet``  NeMo Curator's removal-list shape: id (the key), shard, cluster_id, reason of every
  dropped sample;

Key formats: ``key`` is the sample's key within its shard as the reader yields it (img2dataset's ``key``, e.g.
``000000012``; for a plain folder the file's path relative to the root, ``/``-separated) and ``shard`` the shard id
(img2dataset's ``00000``; a folder's chunk of sorted keys ``00000``, ``00001``, ...). A key is unique only within
its shard, so the parquet tables carry the two columns and the text lists join them as ``shard/key`` (split at the
first ``/``: shard ids never contain one). Example: ``00003/000031337`` is key ``000031337`` of shard ``00003``.

Which copy is kept: ``dedup.keep`` (:mod:`auditor.dedup.keep`); by default the representative of each cluster,
chosen as the largest pixel area, then the most stored bytes
(at equal area the least-compressed copy: an original beats its JPEG q60 re-save), then the lowest
``(key, shard)``.
* ``summary.json``      counts, duplicate rate, cluster-size histogram, thresholds used;
* ``search_ids.parquet`` + ``embeddings.faiss`` + ``phash.npy`` (+ ``dhash.npy``): the search index over
  one row per pixel group (row i of each = ``search_ids`` row i: pixel_group, shard, key), for the guard
  stage's queries.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..index.store import SAMPLE_COLUMNS, IndexStore
from ..rundir import DEDUP_DIR, DEDUP_SUMMARY, GROUP_PHASH, KEEP_URLS, SEARCH_IDS, fingerprint_changes
from ..utils import remove_temporary_files, write_json, write_npy, write_parquet, write_text
from .cluster import Signals, cluster, group_codes, star_edges
from .config import DedupConfig, resolve_cosine
from .keep import columns_needed
from .edges import HashRules, embedding_edges, hash_edges, phash_confirmed, search_options  # noqa: F401 - public
from .schema import MANIFEST_SCHEMA, SCHEMAS, to_table
from .state import STATE_DIR, commit_state, file_digest, load_state, save_faiss, search_fingerprint
from .rules import pixel_groups  # noqa: F401 - shared with the guard (moved to rules.py)

log = logging.getLogger(__name__)

SIGNAL_CODE = {"phash": 2, "dhash": 3, "embedding": 4}

MANIFEST_COLUMNS = MANIFEST_SCHEMA.names
_TABLE_COLUMNS = ["key", "shard", "caption", "sha256", "pixel_blake3", "phash", "dhash", "width", "height",
                  "nbytes", "caption_hash"]


def dedup_config(cfg, seed: int = 0) -> tuple[DedupConfig, int]:
    """``(DedupConfig, seed)`` of a DedupConfig (with ``seed``), None (the defaults), or, for older callers, a
    whole config with ``dedup`` and ``seed`` sections (read by attribute: the config flows down, this module never
    imports the root config)."""
    if cfg is None:
        return DedupConfig(), seed
    if isinstance(cfg, DedupConfig):
        return cfg, seed
    return cfg.dedup, int(getattr(cfg, "seed", seed))


def has_embeddings(store: IndexStore, dcfg: DedupConfig) -> bool:
    """Whether the embedding signal is on and the index holds embeddings (:attr:`IndexStore.has_embeddings`)."""
    return bool(dcfg.embedding) and store.has_embeddings


# ------------------------------------------------------------------------------------------------------
# the stage
# ------------------------------------------------------------------------------------------------------
def run_dedup(run_dir: str | os.PathLike, cfg: DedupConfig | None = None, full: bool = False,
              seed: int = 0) -> dict:
    """Deduplicate the index in ``run_dir``; returns the summary. ``cfg``: the typed ``dedup`` config section
    (None: the defaults; a whole config is still accepted for older callers); ``seed``: the run's seed (the
    config's top-level ``seed``; ivf/partitioned training). ``full=True`` ignores the stored search state and
    searches everything again.

    Example:
        >>> from auditor.dedup.config import DedupConfig
        >>> summary = run_dedup("runs/laion-1m", DedupConfig(phash_max_distance=6))  # doctest: +SKIP
    """
    dcfg, seed = dedup_config(cfg, seed)
    run_dir = Path(run_dir)
    store = IndexStore(run_dir)
    dcfg = resolve_cosine(dcfg, store.embedder.get("name"))
    out = run_dir / DEDUP_DIR
    state_dir = out / STATE_DIR
    n_tmp = remove_temporary_files(out)  # what a killed run left (dedup/ and dedup/state/)
    if n_tmp:
        log.info("removed %d temporary files left by an interrupted dedup run in %s", n_tmp, out)
    shard_ids = store.shard_ids()
    carried = store.extra_columns()  # for the keep policy and keep_urls.parquet
    wanted = _TABLE_COLUMNS + ["url", "stored_ext"] + carried + columns_needed(dcfg.keep, dcfg.protect)
    for c in columns_needed(dcfg.keep, dcfg.protect):
        if c not in carried and c not in SAMPLE_COLUMNS:
            raise UserError(f"dedup.keep / dedup.protect: the index has no column {c!r} (carried: "
                            f"{', '.join(carried) or 'none'}; see index.carry_columns)")
    table = store.table(columns=list(dict.fromkeys(wanted)))
    n = len(table)
    log.info("dedup %s: %d samples in %d shards", run_dir, n, len(shard_ids))

    # --- pixel groups, old vs new ---------------------------------------------------------------------
    has_emb = has_embeddings(store, dcfg)
    emb_all = store.embeddings() if has_emb else None
    if has_emb and emb_all.shape[0] != n:
        log.warning("embeddings not used: the index holds %d embedding rows for %d samples (a shard without its "
                    ".emb.npy?)", emb_all.shape[0], n)
        has_emb, emb_all = False, None
    pg = pixel_groups(table)
    fingerprint = search_fingerprint(store, dcfg, seed, has_emb)
    shard_digests = {s: file_digest(store.shard_dir / f"{s}.parquet") for s in shard_ids}
    old_groups: list[str] = []
    old_edges = pd.DataFrame({"a": pd.Series(dtype=str), "b": pd.Series(dtype=str), "signal": pd.Series(dtype="int8")})
    state = load_state(state_dir)
    mode = "full"
    changes = fingerprint_changes(state.get("fingerprint"), fingerprint, "dedup") if state else []
    if state and not full and not changes and all(
            shard_digests.get(s) == d for s, d in state.get("shards", {}).items()):
        ids = pd.read_parquet(state_dir / state["groups"])
        old_groups = ids["pixel_group"].tolist()
        old_edges = pd.read_parquet(state_dir / state["edges"])
        mode = "incremental"
    elif state and not full:
        log.info("dedup state does not match the index or the config (%s): searching everything again",
                 "; ".join(changes) or "the index changed")

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
    rules = HashRules.from_config(dcfg)
    dih, confirm, use_dhash = rules.dihedral, rules.confirm, rules.dhash >= 0
    phash_v = store.hash_variants("phash_dihedral") if rules.phash_variants else None
    dhash_v = store.hash_variants("dhash_dihedral") if rules.dhash_variants else None
    gv = (lambda v: None if v is None else v[group_first])  # noqa: E731 - per pixel group
    new_edges = []
    if dcfg.phash:
        a, b = hash_edges(phash[group_first], gv(phash_v), n_old, rules.phash, dih,
                          dcfg.progress, dcfg.search_threads)
        if confirm >= 0 and len(a):
            keep = phash_confirmed(dhash[group_first], gv(dhash_v), a, b, confirm)
            log.info("dedup: %d of %d pHash pairs dropped: their dHashes differ by more than %d bits",
                     int((~keep).sum()), len(a), confirm)
            a, b = a[keep], b[keep]
        new_edges.append((a, b, SIGNAL_CODE["phash"]))
    if use_dhash:
        a, b = hash_edges(dhash[group_first], gv(dhash_v), n_old, rules.dhash, dih,
                          dcfg.progress, dcfg.search_threads)
        new_edges.append((a, b, SIGNAL_CODE["dhash"]))
    group_emb = None
    if has_emb:
        group_emb = np.ascontiguousarray(np.asarray(emb_all[group_first], dtype=np.float32))
        a, b = embedding_edges(group_emb, n_old, dcfg, seed)
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

    outputs = build_outputs(store, table, res, dcfg, fingerprint, carried)

    # --- write --------------------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in outputs.frames.items():
        write_parquet(out / name, to_table(frame, SCHEMAS[name]))
    write_parquet(out / KEEP_URLS, outputs.keep_urls)
    write_text(out / "keep_keys.txt", outputs.keep_text)
    write_text(out / "drop_keys.txt", outputs.drop_text)
    write_json(out / DEDUP_SUMMARY, outputs.summary)
    # the search index for later queries (guard stage), one row per pixel group, in search order
    ids = pd.DataFrame({"pixel_group": garr.astype(str) if len(garr) else np.zeros(0, dtype=str),
                        "shard": table["shard"].to_numpy(object)[group_first].astype(str),
                        "key": table["key"].to_numpy(object)[group_first].astype(str)})
    write_parquet(out / SEARCH_IDS, ids)
    write_npy(out / GROUP_PHASH, phash[group_first])
    if dcfg.dhash_max_distance >= 0:
        write_npy(out / "dhash.npy", dhash[group_first])
    faiss_base = None
    if has_emb:
        faiss_base = save_faiss(out, group_emb, n_old, mode, dcfg, seed, (state or {}).get("faiss_base_rows"))
    # state last, as a new generation committed by state.json: a crash before the commit leaves the previous
    # state (and its files) untouched, which is still valid
    commit_state(state_dir, state, pd.DataFrame({"pixel_group": garr.astype(str)}), edges, {
        "fingerprint": fingerprint, "shards": shard_digests, "faiss_base_rows": faiss_base,
        "last_run": {"mode": mode, "groups": len(groups), "new_groups": len(new_groups),
                     "guard_rounds": res.rounds, "split_rows": res.n_splits}})
    return outputs.summary


