"""Cross-dataset duplicates: which samples of this run duplicate samples of another run (train vs eval
decontamination, as DataComp does against its evaluation sets).

``run_against(run_dir, other_run)`` writes ``RUN_DIR/dedup/against_<name>.parquet``: one row per sample of
this run that matches at least one sample of the other run, with this run's manifest columns plus
``matched_key``, ``matched_shard``, ``matched_run`` (the other run's folder name), ``match_reason``
(exact_bytes | exact_pixels | phash | dhash | embedding) and ``similarity`` (1.0 for exact, 1 - d/64 for
hashes, the cosine for embeddings) of the best match (strongest signal, then highest similarity, then the
other run's first row in index order). ``against_<name>.json`` holds the counts and thresholds.

Hash pairs follow the main dedup's rules (:class:`~auditor.dedup.edges.HashRules`, the same
:mod:`auditor.dedup.search.hamming` code): a pair also links through a flip or 90-degree rotation
(``hash_dihedral_max_distance``, the indexes' ``phash_dihedral`` / ``dhash_dihedral``), and a pHash link needs the
two dHashes (after the best flip/rotation) within ``dhash_confirm_max_distance``; ``d`` is the smallest linking
distance.

Embeddings are compared only when both indexes were built with the same embedder (name, model, dimension).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigMismatch
from ..index.store import IndexStore
from ..utils import write_json, write_parquet
from .cluster import REASONS
from .config import DedupConfig, resolve_cosine
from .edges import HashRules, search_options
from ..rundir import DEDUP_DIR, MANIFEST
from .runner import MANIFEST_COLUMNS, dedup_config, has_embeddings, pixel_groups
from .search import dhash_confirmed, embedding_cross_pairs, hash_cross_pairs
from .schema import AGAINST_SCHEMA, to_table

log = logging.getLogger(__name__)

_COLS = ["key", "shard", "sha256", "pixel_blake3", "phash", "dhash"]


def _group_hashes(store: IndexStore, table: pd.DataFrame, first: np.ndarray, rules: HashRules) -> dict:
    """pHash / dHash per pixel group and, where the rules need them, their flip/rotation variants (else None)."""
    return {"phash": table["phash"].to_numpy(np.uint64)[first], "dhash": table["dhash"].to_numpy(np.uint64)[first],
            "phash_v": store.hash_variants("phash_dihedral")[first] if rules.phash_variants else None,
            "dhash_v": store.hash_variants("dhash_dihedral")[first] if rules.dhash_variants else None}


def against_name(other_run: str | os.PathLike) -> str:
    name = Path(other_run).resolve().name or "other"
    return re.sub(r"[^0-9A-Za-z_.-]", "_", name)


def _groups(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(group code per row, first row of each group) with groups numbered in index order."""
    codes, _ = pd.factorize(pixel_groups(table))
    first = pd.Series(np.arange(len(table))).groupby(codes, sort=True).first().to_numpy(np.int64)
    return codes.astype(np.int64), first


def _same_embedder(a: dict, b: dict) -> bool:
    keys = ("name", "model", "pretrained", "dim", "checkpoint")
    return all(a.get(k) == b.get(k) for k in keys)


def run_against(run_dir: str | os.PathLike, other_run: str | os.PathLike, cfg: DedupConfig | None = None,
                seed: int = 0) -> pd.DataFrame:
    dcfg, seed = dedup_config(cfg, seed)
    run_dir, other_run = Path(run_dir), Path(other_run)
    if run_dir.resolve() == other_run.resolve():
        raise ValueError("--against needs another run folder, not the run being deduplicated")
    manifest_path = run_dir / DEDUP_DIR / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} is missing: run `auditor dedup {run_dir}` first")
    a_store, b_store = IndexStore(run_dir), IndexStore(other_run)
    if a_store.hash_mode != b_store.hash_mode:  # fast-mode bits are a few off the exact ones: never compared
        raise ConfigMismatch(f"--against: {run_dir} was indexed with index.hash_mode={a_store.hash_mode} and "
                             f"{other_run} with {b_store.hash_mode}; index both in the same mode")
    dcfg = resolve_cosine(dcfg, a_store.embedder.get("name"))
    a = a_store.table(columns=_COLS)
    b = b_store.table(columns=_COLS)
    a_code, a_first = _groups(a)
    b_code, b_first = _groups(b)
    found: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]] = []  # (a group, b group, reason, sim)

    def exact(col: str, reason: str) -> None:
        va = a[col].fillna("").astype(str).to_numpy(object)[a_first]
        vb = b[col].fillna("").astype(str).to_numpy(object)[b_first]
        ok_b = vb != ""
        # the other run's first group (index order) for each value
        lookup = pd.Series(np.flatnonzero(ok_b), index=vb[ok_b]).groupby(level=0).min()
        hit = pd.Series(va).map(lookup)
        m = hit.notna().to_numpy() & (va != "")
        ga = np.flatnonzero(m)
        found.append((ga, hit.to_numpy()[m].astype(np.int64), REASONS.index(reason), np.ones(ga.size)))

    if dcfg.exact_bytes:
        exact("sha256", "exact_bytes")
    if dcfg.exact_pixels:
        exact("pixel_blake3", "exact_pixels")
    rules = HashRules.from_config(dcfg)
    ha, hb = _group_hashes(a_store, a, a_first, rules), _group_hashes(b_store, b, b_first, rules)
    for col, t in (("phash", rules.phash), ("dhash", rules.dhash)):
        if t < 0:
            continue
        qi, bj, d = hash_cross_pairs(ha[col], ha[f"{col}_v"], hb[col], hb[f"{col}_v"], t, rules.dihedral)
        if col == "phash" and rules.confirm >= 0 and len(qi):
            keep = dhash_confirmed(ha["dhash"], ha["dhash_v"], hb["dhash"], hb["dhash_v"], qi, bj, rules.confirm)
            qi, bj, d = qi[keep], bj[keep], d[keep]
        found.append((np.asarray(qi, np.int64), np.asarray(bj, np.int64), REASONS.index(col),
                      1.0 - np.asarray(d, np.float64) / 64.0))
    used_emb = False
    if has_embeddings(a_store, dcfg) and has_embeddings(b_store, dcfg):
        if _same_embedder(a_store.embedder, b_store.embedder):
            ea = np.asarray(a_store.embeddings()[a_first], dtype=np.float32)
            eb = np.asarray(b_store.embeddings()[b_first], dtype=np.float32)
            qi, bj, s = embedding_cross_pairs(ea, eb, dcfg.cosine_threshold, method=dcfg.search, seed=seed,
                                              **search_options(dcfg))
            found.append((np.asarray(qi, np.int64), np.asarray(bj, np.int64), REASONS.index("embedding"),
                          np.round(np.asarray(s, np.float64), 6)))
            used_emb = True
        else:
            log.warning("not comparing embeddings: %s and %s were indexed with different embedders",
                        run_dir, other_run)

    pairs = pd.concat([pd.DataFrame({"ga": ga, "gb": gb, "reason": r, "sim": s}) for ga, gb, r, s in found],
                      ignore_index=True) if found else pd.DataFrame(columns=["ga", "gb", "reason", "sim"])
    pairs = pairs.astype({"ga": np.int64, "gb": np.int64, "reason": np.int64, "sim": np.float64})
    best = (pairs.sort_values(["ga", "reason", "sim", "gb"], ascending=[True, True, False, True], kind="mergesort")
            .drop_duplicates("ga", keep="first").set_index("ga"))
    n_matched_groups = pairs.groupby("ga")["gb"].nunique() if len(pairs) else pd.Series(dtype=np.int64)

    manifest = pd.read_parquet(manifest_path)
    if len(manifest) != len(a) or not (manifest["key"].to_numpy() == a["key"].to_numpy()).all():
        raise RuntimeError(f"{manifest_path} does not match the index: run `auditor dedup {run_dir}` again")
    rows = np.flatnonzero(np.isin(a_code, best.index.to_numpy()))
    g = a_code[rows]
    hit = best.loc[g]
    brow = b_first[hit["gb"].to_numpy(np.int64)]
    out = manifest.iloc[rows][MANIFEST_COLUMNS].reset_index(drop=True)
    name = against_name(other_run)
    out["matched_key"] = b["key"].to_numpy(object)[brow].astype(str)
    out["matched_shard"] = b["shard"].to_numpy(object)[brow].astype(str)
    out["matched_run"] = name
    out["match_reason"] = np.array(REASONS, dtype=object)[hit["reason"].to_numpy(np.int64)].astype(str)
    out["similarity"] = hit["sim"].to_numpy(np.float64)
    out["n_matched_groups"] = n_matched_groups.loc[g].to_numpy(np.int64) if len(g) else np.zeros(0, np.int64)
    dest = run_dir / DEDUP_DIR / f"against_{name}.parquet"
    write_parquet(dest, to_table(out, AGAINST_SCHEMA))
    write_json(run_dir / DEDUP_DIR / f"against_{name}.json", {
        "other_run": name,
        "samples": int(len(a)),
        "other_samples": int(len(b)),
        "matched_samples": int(len(out)),
        "matched_rate": float(len(out) / len(a)) if len(a) else 0.0,
        "reasons": {r: int((out["match_reason"] == r).sum()) for r in REASONS},
        "embeddings_compared": used_emb,
        "thresholds": dcfg.model_dump(mode="json", exclude={"progress"}),
    })
    log.info("%d of %d samples of %s duplicate samples of %s -> %s", len(out), len(a), run_dir, other_run, dest)
    return out
