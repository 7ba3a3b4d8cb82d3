"""From a clustering to the stage's tables: manifest, clusters, caption duplication, placeholders, risk."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..index.store import IndexStore
from ..rundir import CAPTIONS, CLUSTERS, MANIFEST, REMOVAL_IDS, RISK
from .cluster import REASONS, Clustering
from .config import DedupConfig
from .risk import rank_risk

log = logging.getLogger(__name__)

# pHashes of a perfectly flat image: imagehash gives 0x0 for black and 0x8000000000000000 for any other
# uniform colour (only the DC coefficient is above the median); dHash of a flat image is 0
FLAT_PHASHES = (np.uint64(0), np.uint64(1 << 63))

_SIZE_BINS = [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 32), (33, 64), (65, 128), (129, 256), (257, 512),
              (513, 1024)]


@dataclass
class Outputs:
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    keep_urls: object = None  # pyarrow Table (its schema follows the carried columns)
    keep_text: str = ""
    drop_text: str = ""
    summary: dict = field(default_factory=dict)


def uniform_fraction(rgb) -> float:
    """Share of a 64x64 grayscale thumbnail's pixels within 8 grey levels of its median: 1.0 for a blank
    image, 0.97 for a grey "image not available" card with an icon and a line of text; over the 1000
    ImageNet photos of the test data the median is 0.16 and the maximum 0.90 (hence the 0.95 default)."""
    from PIL import Image

    g = np.asarray(rgb.convert("L").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.int16)
    return float(np.mean(np.abs(g - np.median(g)) <= 8))


def _placeholders(store: IndexStore, clusters: pd.DataFrame, table: pd.DataFrame, dcfg: DedupConfig
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """(is_placeholder, why, pixel checks that failed) per cluster row. A placeholder is a cluster of at
    least ``placeholder_min_cluster`` members whose representative is tiny (``tiny``), has the pHash and dHash
    of a flat image (``flat``: every flat image of any colour has the same hashes, so blank images of all
    colours and sizes end up in one perceptual cluster), or -- for clusters of mostly exact copies -- is
    near-uniform once decoded (``uniform``: an "image not available" card)."""
    is_ph = np.zeros(len(clusters), dtype=bool)
    why = np.full(len(clusters), "", dtype=object)
    failed = 0
    size = clusters["size"].to_numpy()
    cand = np.flatnonzero(size >= dcfg.placeholder_min_cluster)
    mostly_exact = clusters["exact_members"].to_numpy() * 2 >= size - 1
    for k in tqdm(cand, desc="placeholders", unit="cluster", disable=not dcfg.progress or len(cand) < 10):
        r = int(clusters["rep_row"].iat[k])
        area = int(table["width"].iat[r]) * int(table["height"].iat[r])
        if area <= dcfg.placeholder_max_area:
            is_ph[k], why[k] = True, "tiny"
            continue
        ph, dh = np.uint64(table["phash"].iat[r]), np.uint64(table["dhash"].iat[r])
        if ph in FLAT_PHASHES and dh == 0:
            is_ph[k], why[k] = True, "flat"
            continue
        # a near-uniform picture with some content (a grey card with a line of text) is a placeholder only
        # when served as exact copies; a perceptual cluster of near-uniform images may be real content
        if dcfg.placeholder_check_pixels and mostly_exact[k]:
            try:
                img = store.load_image(str(table["shard"].iat[r]), str(table["key"].iat[r]))
                if uniform_fraction(img) >= dcfg.placeholder_uniform_fraction:
                    is_ph[k], why[k] = True, "uniform"
            except Exception as exc:  # noqa: BLE001 - dataset moved or unreadable: judge by the index only
                failed += 1
                log.warning("placeholder check could not read %s/%s: %s", table["shard"].iat[r],
                            table["key"].iat[r], exc)
    return is_ph, why, failed


def _histogram(sizes: np.ndarray) -> list[dict]:
    """Clusters per size bin (powers of two), in bin order: [{"size": "3-4", "clusters": 12}, ...]."""
    out = []
    for lo, hi in _SIZE_BINS:
        c = int(((sizes >= lo) & (sizes <= hi)).sum())
        out.append({"size": str(lo) if lo == hi else f"{lo}-{hi}", "clusters": c})
    out.append({"size": f">{_SIZE_BINS[-1][1]}", "clusters": int((sizes > _SIZE_BINS[-1][1]).sum())})
    return out


def sample_paths(store: IndexStore, table: pd.DataFrame) -> np.ndarray:
    """The image file of each row (object [N], None where the layout has no file per sample): ``ROOT/KEY`` for a
    folder, ``ROOT/SHARD/KEY.EXT`` for img2dataset's files layout (a local path or the dataset's fsspec URL)."""
    ds = store.info.get("dataset") or {}
    root, layout = str(ds.get("root") or "").rstrip("/"), ds.get("layout")
    n = len(table)
    if layout == "folder":
        return (root + "/" + table["key"].astype(str)).to_numpy(object)
    if layout == "files":
        ext = table["stored_ext"].fillna("jpg").astype(str) if "stored_ext" in table else pd.Series(["jpg"] * n)
        return (root + "/" + table["shard"].astype(str) + "/" + table["key"].astype(str) + "."
                + ext.to_numpy()).to_numpy(object)
    return np.full(n, None, dtype=object)


def keep_urls_table(table: pd.DataFrame, keep: np.ndarray, carried: list[str]):
    """keep_urls.parquet: img2dataset's --url_list of the kept samples that have a url (index order)."""
    import pyarrow as pa

    from .schema import KEEP_URLS_BASE

    url = table["url"] if "url" in table else pd.Series([None] * len(table))
    sel = keep & url.notna().to_numpy() & (url.fillna("").astype(str) != "").to_numpy()
    t = pa.Table.from_pandas(table.loc[sel, ["url", "caption", "sha256"]].reset_index(drop=True),
                             schema=KEEP_URLS_BASE, preserve_index=False)
    for c in carried:
        if c in KEEP_URLS_BASE.names:
            continue
        col = table.loc[sel, c].reset_index(drop=True)
        try:
            arr = pa.array(col.tolist()) if col.notna().any() else pa.nulls(len(col), pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = pa.array([None if v is None else str(v) for v in col.tolist()], pa.string())
        t = t.append_column(c, arr)
    return t


def build_outputs(store: IndexStore, table: pd.DataFrame, res: Clustering, dcfg: DedupConfig,
                  fingerprint: dict, carried: list[str] | None = None) -> Outputs:
    n = len(table)
    out = Outputs()
    row = np.arange(n, dtype=np.int64)
    # cluster ids in order of the representative's index row
    rep_of_label = np.zeros(int(res.label.max()) + 1 if n else 0, dtype=np.int64)
    rep_of_label[res.label] = res.rep_row
    order = np.argsort(rep_of_label, kind="stable")
    cid_of_label = np.empty_like(order)
    cid_of_label[order] = np.arange(order.size)
    cid = cid_of_label[res.label] if n else np.zeros(0, np.int64)
    n_clusters = order.size
    size = np.bincount(cid, minlength=n_clusters)
    rep_row = np.zeros(n_clusters, dtype=np.int64)
    rep_row[cid] = res.rep_row
    is_rep = res.rep_row == row

    # --- captions (Somepalli et al. 2023: the same caption on many images drives replication) ----------
    cap_hash = table["caption_hash"].fillna("").astype(str).to_numpy(object)
    has_cap = cap_hash != ""
    cap_codes, cap_uniques = pd.factorize(pd.Series(cap_hash).where(has_cap, None), use_na_sentinel=True)
    cap_count = np.bincount(cap_codes[has_cap], minlength=len(cap_uniques))
    # samples carrying each row's caption (0 for rows without one; np.append keeps this valid with no captions)
    row_cap_count = np.append(cap_count, 0)[np.where(has_cap, cap_codes, len(cap_count))]
    caption_dup_count = np.maximum(row_cap_count - 1, 0).astype(np.int64)
    pairs = pd.DataFrame({"cap": cap_codes[has_cap], "cid": cid[has_cap]}).drop_duplicates()
    cap_n_clusters = np.bincount(pairs["cap"].to_numpy(), minlength=len(cap_uniques))
    n_captions = np.bincount(pairs["cid"].to_numpy(), minlength=n_clusters)

    # --- clusters ----------------------------------------------------------------------------------------
    exact = np.isin(res.reason, [REASONS.index("exact_bytes"), REASONS.index("exact_pixels")])
    exact_members = np.bincount(cid[exact], minlength=n_clusters)
    reason_names = np.array(list(REASONS) + [""], dtype=object)
    reason_str = reason_names[res.reason]
    dup = ~is_rep & (size[cid] > 1)
    reasons_per_cluster = (pd.DataFrame({"cid": cid[dup], "r": reason_str[dup]}).drop_duplicates()
                           .sort_values(["cid", "r"]).groupby("cid")["r"].agg(",".join))
    reasons_col = np.full(n_clusters, "", dtype=object)
    reasons_col[reasons_per_cluster.index.to_numpy()] = reasons_per_cluster.to_numpy()
    keys = table["key"].to_numpy(object)
    shards = table["shard"].to_numpy(object)
    clusters = pd.DataFrame({
        "cluster_id": np.arange(n_clusters, dtype=np.int64),
        "size": size.astype(np.int64),
        "representative_key": keys[rep_row].astype(str) if n else np.zeros(0, str),
        "representative_shard": shards[rep_row].astype(str) if n else np.zeros(0, str),
        "rep_row": rep_row,
        "n_captions": n_captions.astype(np.int64),
        "exact_members": exact_members.astype(np.int64),
        "reasons": reasons_col.astype(str),
    })
    is_ph, ph_why, ph_failed = _placeholders(store, clusters, table, dcfg)
    clusters["is_placeholder"] = is_ph
    clusters["placeholder_why"] = ph_why.astype(str)

    # --- manifest ----------------------------------------------------------------------------------------
    from .keep import keep_mask, protected_rows

    protect = protected_rows(table, dcfg.protect)
    area = table["width"].to_numpy(np.int64) * table["height"].to_numpy(np.int64)
    policy_keep = keep_mask(table, cid, is_rep, area, table["nbytes"].to_numpy(np.int64), dcfg.keep,
                            dcfg.keep_per_cluster, None)
    keep = policy_keep.copy()
    if dcfg.drop_placeholders:
        keep &= ~is_ph[cid]
    keep |= protect
    manifest = pd.DataFrame({
        "key": keys.astype(str), "shard": shards.astype(str),
        "cluster_id": cid.astype(np.int64), "cluster_size": size[cid].astype(np.int64),
        "is_representative": is_rep, "keep": keep, "reason": reason_str.astype(str),
        "similarity_to_representative": res.similarity.astype(np.float64),
        "caption_dup_count": caption_dup_count,
        "url": table["url"].to_numpy(object) if "url" in table else np.full(n, None, object),
        "sha256": table["sha256"].to_numpy(object),
        "path": sample_paths(store, table),
        "caption_hash": cap_hash.astype(str),
    })
    out.frames[MANIFEST] = manifest
    drop = ~keep
    out.frames[REMOVAL_IDS] = pd.DataFrame({
        "id": keys[drop].astype(str), "shard": shards[drop].astype(str), "cluster_id": cid[drop].astype(np.int64),
        "reason": np.where(is_ph[cid][drop] & is_rep[drop], "placeholder", reason_str[drop]).astype(str)})
    out.keep_urls = keep_urls_table(table, keep, carried or [])

    # --- captions table ---------------------------------------------------------------------------------
    first_row_of_cap = np.full(len(cap_uniques), -1, dtype=np.int64)
    rows_with_cap = row[has_cap]
    first_row_of_cap[cap_codes[has_cap][::-1]] = rows_with_cap[::-1]  # first occurrence wins
    dup_caps = np.flatnonzero(cap_count > 1)
    captions = pd.DataFrame({
        "caption_hash": np.asarray(cap_uniques, dtype=object)[dup_caps].astype(str),
        "caption": table["caption"].to_numpy(object)[first_row_of_cap[dup_caps]],
        "count": cap_count[dup_caps].astype(np.int64),
        "n_clusters": cap_n_clusters[dup_caps].astype(np.int64),
    }).sort_values(["count", "n_clusters", "caption_hash"], ascending=[False, False, True], kind="mergesort")
    captions["caption"] = captions["caption"].astype(str)
    out.frames[CAPTIONS] = captions.reset_index(drop=True)

    # --- risk -------------------------------------------------------------------------------------------
    risk = rank_risk(table, cid, is_rep, clusters, cap_codes, cap_count)
    out.frames[RISK] = risk
    out.frames[CLUSTERS] = clusters[["cluster_id", "size", "representative_key", "representative_shard",
                                               "n_captions", "is_placeholder", "placeholder_why",
                                               "exact_members", "reasons"]]

    # --- keys -------------------------------------------------------------------------------------------
    sk = pd.Series(shards.astype(str)) + "/" + pd.Series(keys.astype(str))
    out.keep_text = "".join(s + "\n" for s in sorted(sk[keep]))
    out.drop_text = "".join(s + "\n" for s in sorted(sk[~keep]))

    # --- summary ----------------------------------------------------------------------------------------
    n_drop = int((~keep).sum())
    multi = size > 1
    reason_counts = {r: int((reason_str[dup] == r).sum()) for r in REASONS}
    top = risk.head(dcfg.risk_top_n)
    out.summary = {
        "samples": n,
        "kept": int(keep.sum()),
        "dropped": n_drop,
        "duplicate_rate": (n_drop / n) if n else 0.0,
        "clusters": int(n_clusters),
        "duplicate_clusters": int(multi.sum()),
        "samples_in_duplicate_clusters": int(size[multi].sum()),
        "largest_cluster": int(size.max()) if n_clusters else 0,
        "cluster_size_histogram": _histogram(size),
        "reasons": reason_counts,
        "placeholder_clusters": int(is_ph.sum()),
        "placeholder_samples": int(size[is_ph].sum()),
        "placeholder_pixel_checks_failed": ph_failed,
        "keep_policy": {"keep": dcfg.keep, "keep_per_cluster": dcfg.keep_per_cluster,
                        "protected": int(protect.sum()), "kept_by_protect": int((protect & ~policy_keep).sum())},
        "keep_urls": int(out.keep_urls.num_rows),
        "captions": {
            "distinct": int(len(cap_uniques)),
            "samples_without_caption": int((~has_cap).sum()),
            "duplicated_captions": int((cap_count > 1).sum()),
            "samples_with_duplicated_caption": int(cap_count[cap_count > 1].sum()),
            "captions_on_several_clusters": int((cap_n_clusters > 1).sum()),
        },
        "risk_rows": int(len(risk)),
        "top_risk": top[["rank", "cluster_id", "cluster_size", "caption_count", "caption"]].to_dict("records"),
        "thresholds": {**dcfg.model_dump(mode="json", exclude={"progress"}), "search_fingerprint": fingerprint},
    }
    return out
