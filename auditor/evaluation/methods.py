"""The copy-detection methods the accuracy benchmark compares, scored the same way on the same folder.

A method either **clusters** the folder (auditor as a user runs it: :func:`auditor.index.runner.run_index` then
:func:`auditor.dedup.runner.run_dedup`, every pair inside a cluster is predicted) or **scores pairs** and is swept
over its threshold (the copy descriptor's cosine, imagededup's Hamming distances). Every method is reported
the same way:

- *pair precision*: the share of predicted pairs whose two images belong to one group (an original and its
  copies), over every pair of the folder, distractors included;
- *copy recall*: the share of (original, copy) pairs predicted, overall and per transform ("finds X % of the
  copies");
- *pair recall*: the share of all true pairs (copy-to-copy pairs too).

A swept method is reported at its best threshold: the one with the highest copy recall whose pair precision is
at least the target (0.99), or ``None`` when no threshold reaches it. A clustering method has one operating
point, its configuration; its precision is reported as measured.

Example::

    from auditor.evaluation.run import EvalSet
    from auditor.evaluation.methods import pipeline_labels, cluster_report
    es = EvalSet.from_benchmark("/tmp/bench")
    labels, info = pipeline_labels(es, "/tmp/bench-run")      # auditor's defaults
    cluster_report(es, labels)["copy_recall"]                  # e.g. 0.44
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..rundir import RunDir

TARGET_PRECISION = 0.99


# ---------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------

def _copy_keys(es) -> tuple[np.ndarray, np.ndarray]:
    """The (original, copy) pair keys and their transform names, in transform order."""
    names = sorted(es.by_transform)
    keys = np.concatenate([es.by_transform[t] for t in names]) if names else np.zeros(0, np.int64)
    tr = np.concatenate([np.full(len(es.by_transform[t]), t, dtype=object) for t in names]) if names else \
        np.zeros(0, dtype=object)
    return keys, tr


def _per_transform(found: np.ndarray, tr: np.ndarray, names: Sequence[str]) -> dict:
    return {t: round(float(found[tr == t].mean()), 4) if (tr == t).any() else None for t in names}


def sweep_report(es, keys: np.ndarray, scores: np.ndarray, higher_is_better: bool, thresholds: Sequence[float],
                 precision: float = TARGET_PRECISION) -> dict:
    """Pair precision, pair recall and copy recall (overall and per transform) of the rule "score passes the
    threshold" for every threshold, and the best threshold at ``precision``.

    ``keys``: int64 pair keys ``i * n + j`` (i < j) of the scored candidate pairs (unique); ``scores`` their
    scores. Pairs never scored are never predicted.
    """
    keys = np.asarray(keys, np.int64)
    scores = np.asarray(scores, np.float64)
    labels = np.isin(keys, es.true_keys)
    npos = len(es.true_keys)
    ck, tr = _copy_keys(es)
    names = sorted(es.by_transform)
    worst = -np.inf if higher_is_better else np.inf
    copy_score = np.full(len(ck), worst)
    if len(keys):
        order = np.argsort(keys)
        sk, ss = keys[order], scores[order]
        pos = np.minimum(np.searchsorted(sk, ck), len(sk) - 1)
        copy_score = np.where(sk[pos] == ck, ss[pos], worst)
    rows = []
    for t in thresholds:
        ok = (scores >= t) if higher_is_better else (scores <= t)
        found = (copy_score >= t) if higher_is_better else (copy_score <= t)
        tp, n_pred = int(labels[ok].sum()), int(ok.sum())
        rows.append({"threshold": t, "n_pred": n_pred, "tp": tp, "fp": n_pred - tp,
                     "precision": round(tp / n_pred, 5) if n_pred else 1.0,
                     "pair_recall": round(tp / npos, 5) if npos else 1.0,
                     "copy_recall": round(float(found.mean()), 5) if len(found) else 1.0,
                     "per_transform": _per_transform(found, tr, names)})
    return {"sweep": rows, "best": best_row(rows, precision), "target_precision": precision}


def best_row(rows: Sequence[dict], precision: float = TARGET_PRECISION) -> Optional[dict]:
    """The row with the highest copy recall among those with pair precision >= ``precision`` and at least one
    true pair (fewest false pairs on a tie); None when no row reaches the precision."""
    ok = [r for r in rows if r["precision"] >= precision and r["tp"] > 0]
    return max(ok, key=lambda r: (r["copy_recall"], -r["fp"])) if ok else None


def cluster_report(es, labels: np.ndarray) -> dict:
    """Scores of a clustering: ``labels[k]`` is the cluster of file ``k`` (-1: in no cluster). Pair counts are
    computed from cluster sizes, so a large false merge costs no memory."""
    labels = np.asarray(labels, np.int64)
    group = es.group_of
    inc = labels >= 0
    _, sizes = np.unique(labels[inc], return_counts=True)
    n_pred = int((sizes * (sizes - 1) // 2).sum())
    both = inc & (group >= 0)
    _, cg = np.unique(np.stack([labels[both], group[both]]), axis=1, return_counts=True) if both.any() else \
        (None, np.zeros(0, np.int64))
    tp = int((cg * (cg - 1) // 2).sum())
    npos = len(es.true_keys)
    ck, tr = _copy_keys(es)
    a, b = ck // es.n, ck % es.n
    found = (labels[a] >= 0) & (labels[a] == labels[b])
    n_clusters = int(len(sizes))
    return {"n_pred": n_pred, "tp": tp, "fp": n_pred - tp, "precision": round(tp / n_pred, 5) if n_pred else 1.0,
            "pair_recall": round(tp / npos, 5) if npos else 1.0,
            "copy_recall": round(float(found.mean()), 5) if len(found) else 1.0,
            "per_transform": _per_transform(found, tr, sorted(es.by_transform)),
            "n_clusters": n_clusters, "largest_cluster": int(sizes.max()) if len(sizes) else 0}


# ---------------------------------------------------------------------------------------------------------------
# auditor as a user runs it
# ---------------------------------------------------------------------------------------------------------------

def pipeline_labels(es, run_dir: str | Path, cfg=None) -> tuple[np.ndarray, dict]:
    """``auditor index <set> --out run_dir`` then ``auditor dedup run_dir`` through the Python API with ``cfg``
    (an :class:`~auditor.config.AuditorConfig`; None = the defaults), and the cluster of every file."""
    import pandas as pd

    from ..config import AuditorConfig
    from ..dedup.runner import run_dedup
    from ..index.runner import run_index

    cfg = cfg if cfg is not None else AuditorConfig()
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    store = run_index(es.root, run_dir, cfg.index)
    t1 = time.perf_counter()
    summary = run_dedup(run_dir, cfg.dedup, seed=cfg.seed)
    t2 = time.perf_counter()
    man = pd.read_parquet(RunDir(run_dir).manifest, columns=["key", "cluster_id", "cluster_size"])
    labels = np.full(es.n, -1, np.int64)
    for key, cid, size in zip(man["key"], man["cluster_id"], man["cluster_size"]):
        k = es.pos.get(key)
        if k is not None and size > 1:
            labels[k] = int(cid)
    info = {"run_dir": str(run_dir), "embedder": store.embedder.get("name"),
            "embedder_dim": store.embedder.get("dim"), "n_indexed": int(len(man)),
            "n_index_errors": int(len(store.errors())),
            "dedup_config": cfg.dedup.model_dump(mode="json"),
            "summary_counts": {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))},
            "time_s": {"index": round(t1 - t0, 2), "dedup": round(t2 - t1, 2)}}
    return labels, info


def index_embeddings(es, run_dir: str | Path) -> np.ndarray:
    """The embeddings of an indexed run, in the set's file order (float32, re-normalised; zero rows for files the
    index did not hold)."""
    from ..index.store import IndexStore

    store = IndexStore(run_dir)
    table = store.table(columns=["key"])
    emb = np.asarray(store.embeddings(mmap=False), dtype=np.float32)
    out = np.zeros((es.n, emb.shape[1]), np.float32)
    for r, key in zip(table["row"], table["key"]):
        k = es.pos.get(key)
        if k is not None:
            out[k] = emb[r]
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


def embedding_sweep(es, emb: np.ndarray, lo: float = 0.3, step: float = 0.01,
                    precision: float = TARGET_PRECISION) -> dict:
    """The cosine threshold sweep of an embedding (exact flat range search at ``lo``)."""
    from ..dedup.search import embedding_pairs

    good = np.flatnonzero(np.linalg.norm(emb, axis=1) > 0)
    t0 = time.perf_counter()
    i, j, s = embedding_pairs(np.ascontiguousarray(emb[good]), lo, method="flat")
    t_search = time.perf_counter() - t0
    keys = good[i].astype(np.int64) * es.n + good[j]
    thr = [round(float(t), 4) for t in np.arange(lo, 1.0 + 1e-9, step)]
    rep = sweep_report(es, keys, s, True, thr, precision)
    rep["time_s"] = {"search": round(t_search, 2)}
    return rep


# ---------------------------------------------------------------------------------------------------------------
# imagededup
# ---------------------------------------------------------------------------------------------------------------

def imagededup_sweep(es, method: str, max_distance: int = 20, precision: float = TARGET_PRECISION,
                     workers: int = 1, search: str = "faiss") -> dict:
    """imagededup's hashes (``encode_images``) of the set's folder, swept over the Hamming threshold
    0..max_distance (benchmarks only; imported lazily).

    ``search="imagededup"``: its own ``find_duplicates(max_distance_threshold=max_distance, scores=True)``
    (brute force, O(N^2) in Python-facing Cython: minutes at 10k images); ``"faiss"``: the same pairs from
    :func:`auditor.dedup.search.hamming_pairs` on its hashes (the distance of two hashes is the same function;
    the quick test checks that both give the same pairs).
    """
    import imagededup.methods as idm

    hasher = getattr(idm, method)(verbose=False)
    t0 = time.perf_counter()
    enc = hasher.encode_images(image_dir=str(es.root), recursive=True, num_enc_workers=workers)
    t1 = time.perf_counter()
    if search == "imagededup":
        dups = hasher.find_duplicates(encoding_map=enc, max_distance_threshold=max_distance, scores=True,
                                      num_dist_workers=workers)
        a = np.asarray([es.pos.get(f, -1) for f, lst in dups.items() for _ in lst], np.int64)
        b = np.asarray([es.pos.get(o, -1) for lst in dups.values() for o, _ in lst], np.int64)
        sc = np.asarray([float(x) for lst in dups.values() for _, x in lst], np.float64)
    elif search == "faiss":
        from ..dedup.search import hamming_pairs

        files = [f for f in enc if f in es.pos]
        h = np.asarray([int(enc[f], 16) for f in files], dtype=np.uint64)
        i, j, d = hamming_pairs(h, max_distance)
        idx = np.asarray([es.pos[f] for f in files], np.int64)
        a, b, sc = idx[i], idx[j], d.astype(np.float64)
    else:
        raise ValueError(f"search must be 'faiss' or 'imagededup', got {search!r}")
    t2 = time.perf_counter()
    ok = (a >= 0) & (b >= 0) & (a != b)
    keys, first = np.unique(np.minimum(a[ok], b[ok]) * es.n + np.maximum(a[ok], b[ok]), return_index=True)
    rep = sweep_report(es, keys, sc[ok][first], False, list(range(max_distance + 1)), precision)
    rep["time_s"] = {"encode": round(t1 - t0, 2), "search": round(t2 - t1, 2)}
    rep["n_encoded"] = len(enc)
    rep["search"] = search
    return rep
