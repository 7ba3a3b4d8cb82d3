"""Near-duplicate detection metrics: pair precision / recall / F1, cluster purity, recall at a fixed precision.

Duplicates are compared as unordered pairs of item ids (any hashable: file names, row numbers). Ground truth and
predictions can be given as pairs, as clusters (every two members of a cluster are a duplicate pair), or as an
imagededup-style mapping ``{item: [duplicates, ...]}``.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

Pair = tuple


def canonical_pair(a: Hashable, b: Hashable) -> Pair:
    """The unordered pair as a sorted tuple (self-pairs are rejected)."""
    if a == b:
        raise ValueError(f"a pair needs two different items, got {a!r} twice")
    return (a, b) if a <= b else (b, a)  # type: ignore[operator]


def pairs_from_pairs(pairs: Iterable[Sequence[Hashable]]) -> set[Pair]:
    return {canonical_pair(p[0], p[1]) for p in pairs if p[0] != p[1]}


def pairs_from_clusters(clusters: Iterable[Iterable[Hashable]]) -> set[Pair]:
    """Every two members of each cluster."""
    out: set[Pair] = set()
    for c in clusters:
        members = sorted(set(c))
        out.update(combinations(members, 2))
    return out


def pairs_from_mapping(mapping: Mapping[Hashable, Iterable]) -> set[Pair]:
    """imagededup's ``{file: [dup, ...]}`` or ``{file: [(dup, score), ...]}`` as unordered pairs (the mapping
    may list a pair once or in both directions)."""
    out: set[Pair] = set()
    for k, dups in mapping.items():
        for d in dups:
            other = d[0] if isinstance(d, (tuple, list)) else d
            if other != k:
                out.add(canonical_pair(k, other))
    return out


def clusters_from_labels(labels: Sequence[Hashable], items: Sequence[Hashable] | None = None) -> list[list]:
    """Group ``items`` (default: positions) by label."""
    items = list(range(len(labels))) if items is None else list(items)
    groups: dict = {}
    for it, lab in zip(items, labels):
        groups.setdefault(lab, []).append(it)
    return list(groups.values())


def pair_metrics(predicted: Iterable[Pair], truth: Iterable[Pair]) -> dict:
    """Pair precision, recall and F1 (both arguments as pairs; use the ``pairs_from_*`` helpers to convert).
    Precision is 1.0 when nothing is predicted, recall 1.0 when there is nothing to find."""
    pred = pairs_from_pairs(predicted)
    true = pairs_from_pairs(truth)
    tp = len(pred & true)
    fp = len(pred - true)
    fn = len(true - pred)
    precision = tp / (tp + fp) if (tp + fp) else 1.0
    recall = tp / (tp + fn) if (tp + fn) else 1.0
    f1 = 2 * precision * recall / (precision + recall) if (precision + recall) else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def cluster_purity(predicted_clusters: Iterable[Iterable[Hashable]],
                   true_clusters: Iterable[Iterable[Hashable]]) -> float:
    """Purity of predicted clusters: the share of items that belong to the majority true cluster of their
    predicted cluster. Items absent from ``true_clusters`` are singletons of their own. 1.0 for no items."""
    owner: dict = {}
    for k, c in enumerate(true_clusters):
        for it in c:
            owner[it] = k
    total = 0
    majority = 0
    for c in predicted_clusters:
        members = list(set(c))
        if not members:
            continue
        counts = Counter(owner.get(it, ("single", it)) for it in members)
        majority += counts.most_common(1)[0][1]
        total += len(members)
    return majority / total if total else 1.0


def threshold_sweep(scores: np.ndarray, labels: np.ndarray, n_positives: int | None = None,
                    higher_is_better: bool = True, thresholds: Sequence[float] | None = None) -> list[dict]:
    """Precision and recall of the rule "score passes the threshold" for every distinct score (or the given
    thresholds). ``scores`` / ``labels`` describe the candidate pairs that were scored; ``n_positives`` is the
    number of true pairs in all (true pairs that were never scored count as missed; default: ``labels.sum()``).
    A pair passes when ``score >= t`` (``higher_is_better``) or ``score <= t`` (distances)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError("scores and labels must have the same length")
    npos = int(y.sum()) if n_positives is None else int(n_positives)
    if npos < int(y.sum()):
        raise ValueError("n_positives is smaller than the positives among the scored pairs")
    key = -s if higher_is_better else s  # ascending key: a pair passes when key <= threshold key
    order = np.argsort(key, kind="stable")
    ks, ys = key[order], y[order]
    tp_c = np.cumsum(ys)
    fp_c = np.cumsum(~ys)
    if thresholds is None:
        uniq = np.unique(ks)
    else:
        uniq = np.asarray(sorted({-float(t) if higher_is_better else float(t) for t in thresholds}))
    out = []
    for k in uniq:
        n = int(np.searchsorted(ks, k, side="right"))
        tp = int(tp_c[n - 1]) if n else 0
        fp = int(fp_c[n - 1]) if n else 0
        out.append({
            "threshold": float(-k if higher_is_better else k),
            "tp": tp, "fp": fp, "fn": npos - tp,
            "precision": tp / (tp + fp) if (tp + fp) else 1.0,
            "recall": tp / npos if npos else 1.0,
        })
    return out


def recall_at_precision(scores: np.ndarray, labels: np.ndarray, precision: float, n_positives: int | None = None,
                        higher_is_better: bool = True) -> dict:
    """The highest recall over thresholds whose precision is at least ``precision``, and that threshold
    (``None`` and recall 0.0 when no threshold reaches the precision)."""
    best = {"recall": 0.0, "precision": None, "threshold": None, "tp": 0, "fp": 0}
    for row in threshold_sweep(scores, labels, n_positives, higher_is_better):
        if row["precision"] >= precision and row["tp"] > 0 and row["recall"] > best["recall"]:
            best = {k: row[k] for k in ("recall", "precision", "threshold", "tp", "fp")}
    return best
