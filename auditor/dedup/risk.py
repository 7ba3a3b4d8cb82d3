"""Which clusters to probe first.

Carlini et al. (2023) extracted training images from Stable Diffusion almost only among images duplicated
many times in LAION, and Somepalli et al. (2023) showed that duplicated *captions* drive replication too. So
the ranking is lexicographic: duplicate count first (cluster size), then caption duplication (how many
samples in the dataset carry the prompt caption), then fewer distinct captions (one image-caption pair
repeated verbatim is the strongest memorisation setting), then cluster id.

``risk.parquet`` (the probe stage reads it), one row per non-singleton, non-placeholder cluster and per
singleton whose caption appears on other samples, sorted by ``rank`` (1 = probe first):

rank, cluster_id, cluster_size, caption (the prompt: the cluster's most common caption, ties -> the one most
duplicated in the dataset -> the representative's -> the first in index order; '' when no member has one),
caption_hash, caption_count (samples in the dataset with that normalised caption; 0 for ''), n_captions
(distinct captions in the cluster), representative_key, representative_shard,
score (= (cluster_size - 1) + (caption_count - 1) / (samples + 1): its integer part is the duplicate count,
the fraction orders ties by caption duplication), is_placeholder (always False here: placeholders are left
out).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .schema import RISK_SCHEMA

RISK_COLUMNS = RISK_SCHEMA.names


def rank_risk(table: pd.DataFrame, cid: np.ndarray, is_rep: np.ndarray, clusters: pd.DataFrame,
              cap_codes: np.ndarray, cap_count: np.ndarray) -> pd.DataFrame:
    n = len(table)
    size = clusters["size"].to_numpy()
    ph = clusters["is_placeholder"].to_numpy(bool)
    has_cap = cap_codes >= 0
    row_cap_count = np.append(cap_count, 0)[np.where(has_cap, cap_codes, len(cap_count))]
    # candidate clusters: duplicates (not placeholders), and singletons with a duplicated caption
    single_dup_cap = np.zeros(len(size), dtype=bool)
    singles = size[cid] == 1
    single_dup_cap[cid[singles & (row_cap_count > 1)]] = True
    cand = ((size > 1) & ~ph) | single_dup_cap
    in_cand = cand[cid] & has_cap

    # the prompt caption of each candidate cluster
    df = pd.DataFrame({"cid": cid[in_cand], "cap": cap_codes[in_cand], "row": np.flatnonzero(in_cand),
                       "is_rep": is_rep[in_cand], "dcount": row_cap_count[in_cand]})
    g = (df.groupby(["cid", "cap"], sort=False)
         .agg(n=("row", "size"), dcount=("dcount", "first"), has_rep=("is_rep", "any"), first_row=("row", "min"))
         .reset_index())
    g = g.sort_values(["cid", "n", "dcount", "has_rep", "first_row"], ascending=[True, False, False, False, True],
                      kind="mergesort")
    best = g.drop_duplicates("cid", keep="first")
    rep_rows = clusters["rep_row"].to_numpy()
    text_row = np.where(best["has_rep"].to_numpy(), rep_rows[best["cid"].to_numpy()], best["first_row"].to_numpy())
    captions = table["caption"].to_numpy(object)
    hashes = table["caption_hash"].to_numpy(object)

    ids = np.flatnonzero(cand)
    caption = np.full(len(size), "", dtype=object)
    caption_hash = np.full(len(size), "", dtype=object)
    caption_count = np.zeros(len(size), dtype=np.int64)
    bc = best["cid"].to_numpy()
    caption[bc] = captions[text_row]
    caption_hash[bc] = hashes[text_row]
    caption_count[bc] = best["dcount"].to_numpy()

    risk = pd.DataFrame({
        "cluster_id": clusters["cluster_id"].to_numpy()[ids],
        "cluster_size": size[ids].astype(np.int64),
        "caption": pd.Series(caption[ids], dtype=object).fillna("").astype(str).to_numpy(),
        "caption_hash": caption_hash[ids].astype(str),
        "caption_count": caption_count[ids],
        "n_captions": clusters["n_captions"].to_numpy()[ids].astype(np.int64),
        "representative_key": clusters["representative_key"].to_numpy()[ids].astype(str),
        "representative_shard": clusters["representative_shard"].to_numpy()[ids].astype(str),
    })
    risk["score"] = (risk["cluster_size"] - 1) + np.maximum(risk["caption_count"] - 1, 0) / float(n + 1)
    risk["is_placeholder"] = False
    risk = risk.sort_values(["cluster_size", "caption_count", "n_captions", "cluster_id"],
                            ascending=[False, False, True, True], kind="mergesort").reset_index(drop=True)
    risk.insert(0, "rank", np.arange(1, len(risk) + 1, dtype=np.int64))
    return risk[RISK_COLUMNS]
