"""Evaluate the near-duplicate signals on a benchmark set, and compare with imagededup.

Signals: pHash and dHash (auditor's batched hashes, bit-identical to imagehash, searched with
:func:`auditor.dedup.search.hamming_pairs`), an embedding signal when embeddings row-aligned with the set's images
are given (searched with :func:`auditor.dedup.search.embedding_pairs`), and the combined rule "any signal"
(a pair is a duplicate when pHash <= tp or dHash <= td [or cosine >= tau]).

For each signal and each Hamming threshold: pair precision and recall over the whole set, and recall per
transform (the original/copy pairs of that transform). Recall at fixed precision (0.99, 0.95 by default) picks
the threshold with the highest recall whose precision is at least the target and reports per-transform recall
there. True pairs are all pairs within a duplicate group (the original and all its copies).

imagededup (benchmarks only, imported lazily here and nowhere in the package's runtime code): its PHash, DHash,
AHash and WHash ``encode_images`` + ``find_duplicates(scores=True)`` on the same folder, the same metrics and the
wall time, against auditor's decode + hash + search time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import metrics as M
from .benchmark_set import load_benchmark_set

PRECISIONS = (0.99, 0.95)
MAX_EVAL_DISTANCE = 24
IMAGEDEDUP_METHODS = ("PHash", "DHash", "AHash", "WHash")


# ---------------------------------------------------------------------------------------------------------------
# the set as arrays
# ---------------------------------------------------------------------------------------------------------------

class EvalSet:
    """Files of a benchmark set in ground-truth order, true pairs as int64 keys ``i * n + j`` (i < j)."""

    def __init__(self, files: Sequence[str], root: str | Path, groups: Sequence[Sequence[str]],
                 transform_of: Optional[dict] = None, original_of: Optional[dict] = None):
        self.files = list(files)
        self.root = Path(root)
        self.n = len(self.files)
        self.pos = {f: k for k, f in enumerate(self.files)}
        pairs = M.pairs_from_clusters([[self.pos[f] for f in g if f in self.pos] for g in groups])
        self.true_keys = np.array(sorted(a * self.n + b for a, b in pairs), dtype=np.int64)
        self.group_of = np.full(self.n, -1, dtype=np.int64)  # the group of each file (-1: a negative)
        for k, g in enumerate(groups):
            for f in g:
                if f in self.pos:
                    self.group_of[self.pos[f]] = k
        # per transform: keys of (original, copy) pairs
        self.by_transform: dict[str, np.ndarray] = {}
        if transform_of and original_of:
            tmp: dict[str, list[int]] = {}
            for f, t in transform_of.items():
                if t is None or f not in self.pos or original_of.get(f) not in self.pos:
                    continue
                a, b = sorted((self.pos[f], self.pos[original_of[f]]))
                tmp.setdefault(t, []).append(a * self.n + b)
            self.by_transform = {t: np.array(sorted(v), dtype=np.int64) for t, v in sorted(tmp.items())}

    @classmethod
    def from_benchmark(cls, path: str | Path) -> "EvalSet":
        gt = load_benchmark_set(path)
        files = [im["file"] for im in gt["images"]]
        original_of = {}
        for g in gt["groups"]:
            for f in g[1:]:
                original_of[f] = g[0]
        transform_of = {im["file"]: im["transform"] for im in gt["images"] if im["role"] == "copy"}
        return cls(files, gt["root"], gt["groups"], transform_of, original_of)

    @classmethod
    def from_mapping(cls, root: str | Path, mapping: dict[str, list[str]]) -> "EvalSet":
        """A folder with an imagededup-style ground-truth mapping (files absent from the mapping are
        negatives if they are images in ``root``)."""
        from .benchmark_set import IMAGE_EXTS

        root = Path(root)
        files = sorted(set(mapping) | {p.relative_to(root).as_posix() for p in root.rglob("*")
                                       if p.is_file() and p.suffix.lower() in IMAGE_EXTS})
        groups = _components(files, M.pairs_from_mapping(mapping))
        return cls(files, root, groups)


def _components(files, pairs) -> list[list[str]]:
    parent = {f: f for f in files}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comp: dict = {}
    for f in parent:
        comp.setdefault(find(f), []).append(f)
    return [sorted(c) for c in comp.values() if len(c) > 1]


# ---------------------------------------------------------------------------------------------------------------
# hashing with auditor
# ---------------------------------------------------------------------------------------------------------------

def hash_files(root: str | Path, files: Sequence[str], progress: bool = False, batch: int = 256):
    """auditor's (phash, dhash) of every file (uint64 [n]) and the bad files as error records (their hashes
    are 0 and they take part in no pair)."""
    from tqdm.auto import tqdm

    from ..index.decode import open_image
    from ..index.hashing import phash_dhash

    root = Path(root)
    ph = np.zeros(len(files), dtype=np.uint64)
    dh = np.zeros(len(files), dtype=np.uint64)
    ok = np.zeros(len(files), dtype=bool)
    errors = []
    for lo in tqdm(range(0, len(files), batch), desc="hash", unit="batch", disable=not progress):
        ims, idx = [], []
        for k in range(lo, min(len(files), lo + batch)):
            try:
                im = open_image((root / files[k]).read_bytes())
                im.load()
                ims.append(im)
                idx.append(k)
            except Exception as exc:  # recorded, never fatal
                errors.append({"key": files[k], "shard": str(root), "stage": "evaluation.hash",
                               "error": f"{type(exc).__name__}: {exc}"})
        if ims:
            p, d = phash_dhash(ims)
            ph[idx], dh[idx], ok[idx] = p, d, True
    return ph, dh, ok, errors


# ---------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------

def _keys(i, j, n) -> np.ndarray:
    return np.asarray(i, dtype=np.int64) * n + np.asarray(j, dtype=np.int64)


def signal_report(es: EvalSet, keys: np.ndarray, scores: np.ndarray, higher_is_better: bool,
                  thresholds: Sequence[float], precisions: Sequence[float] = PRECISIONS) -> dict:
    """Sweep + per-transform recall + recall at fixed precision for one scored signal."""
    labels = np.isin(keys, es.true_keys)
    npos = len(es.true_keys)
    sweep = M.threshold_sweep(scores, labels, n_positives=npos, higher_is_better=higher_is_better,
                              thresholds=thresholds)

    def per_transform(thr) -> dict:
        passed = keys[(scores >= thr) if higher_is_better else (scores <= thr)]
        return {t: round(float(np.isin(v, passed).mean()), 4) if len(v) else None
                for t, v in es.by_transform.items()}

    for row in sweep:
        row["per_transform_recall"] = per_transform(row["threshold"])
    at = {}
    for p in precisions:
        best = M.recall_at_precision(scores, labels, p, n_positives=npos, higher_is_better=higher_is_better)
        best["per_transform_recall"] = per_transform(best["threshold"]) if best["threshold"] is not None else {}
        at[str(p)] = best
    return {"sweep": sweep, "recall_at_precision": at, "n_true_pairs": npos}


def combined_report(es: EvalSet, signals: dict[str, tuple[np.ndarray, np.ndarray, bool, Sequence[float]]],
                    precisions: Sequence[float] = PRECISIONS) -> dict:
    """The rule "any signal": a pair is predicted when any signal passes its threshold. For each target
    precision the grid of per-signal thresholds (each signal may also be off) is searched for the highest
    recall."""
    import itertools

    names = list(signals)
    options = []
    for name in names:
        keys, scores, hib, thrs = signals[name]
        opts = [(None, np.zeros(0, np.int64))]
        for t in thrs:
            sel = keys[(scores >= t) if hib else (scores <= t)]
            opts.append((t, np.unique(sel)))
        options.append(opts)
    truth = es.true_keys
    out = {}
    best = {str(p): {"recall": 0.0} for p in precisions}
    for combo in itertools.product(*options):
        if all(t is None for t, _ in combo):
            continue
        pred = np.unique(np.concatenate([k for _, k in combo]))
        tp = int(np.isin(pred, truth).sum())
        prec = tp / len(pred) if len(pred) else 1.0
        rec = tp / len(truth) if len(truth) else 1.0
        for p in precisions:
            if prec >= p and rec > best[str(p)]["recall"]:
                best[str(p)] = {"recall": rec, "precision": prec, "tp": tp, "fp": int(len(pred) - tp),
                                "thresholds": {n: t for n, (t, _) in zip(names, combo)},
                                "per_transform_recall": {t: round(float(np.isin(v, pred).mean()), 4)
                                                         for t, v in es.by_transform.items()}}
    out["recall_at_precision"] = best
    return out


def evaluate_auditor(es: EvalSet, embeddings: Optional[np.ndarray] = None, max_distance: int = MAX_EVAL_DISTANCE,
                     precisions: Sequence[float] = PRECISIONS, progress: bool = False) -> dict:
    from ..dedup.search import embedding_pairs, hamming_pairs

    t0 = time.perf_counter()
    ph, dh, ok, errors = hash_files(es.root, es.files, progress=progress)
    t_hash = time.perf_counter() - t0
    good = np.flatnonzero(ok)
    res: dict = {"errors": errors, "n_images": es.n, "n_hashed": int(ok.sum())}
    sig: dict = {}
    t_search = 0.0
    for name, h in (("phash", ph), ("dhash", dh)):
        t1 = time.perf_counter()
        i, j, d = hamming_pairs(h[good], max_distance)
        t_search += time.perf_counter() - t1
        keys = _keys(good[i], good[j], es.n)
        thr = list(range(0, max_distance + 1))
        res[name] = signal_report(es, keys, d.astype(np.float64), False, thr, precisions)
        sig[name] = (keys, d.astype(np.float64), False, thr)
    res["time_s"] = {"decode_hash": round(t_hash, 3), "search": round(t_search, 3),
                     "total": round(t_hash + t_search, 3)}
    if embeddings is not None:
        emb = np.asarray(embeddings)
        if len(emb) != es.n:
            raise ValueError(f"embeddings have {len(emb)} rows, the set has {es.n} images")
        i, j, s = embedding_pairs(emb, 0.5, method="flat")
        keys = _keys(i, j, es.n)
        thr = [round(float(t), 3) for t in np.arange(0.5, 1.0001, 0.01)]
        res["embedding"] = signal_report(es, keys, s.astype(np.float64), True, thr, precisions)
        sig["embedding"] = (keys, s.astype(np.float64), True, thr)
    res["any_signal"] = combined_report(es, sig, precisions)
    return res


def evaluate_imagededup(es: EvalSet, methods: Sequence[str] = IMAGEDEDUP_METHODS,
                        max_distance: int = MAX_EVAL_DISTANCE, precisions: Sequence[float] = PRECISIONS,
                        workers: int = 1) -> dict:
    """imagededup's hashing methods on the same folder (``workers`` processes for encoding and search)."""
    import imagededup.methods as idm  # benchmarks only

    out = {}
    for name in methods:
        hasher = getattr(idm, name)(verbose=False)
        t0 = time.perf_counter()
        enc = hasher.encode_images(image_dir=str(es.root), recursive=True, num_enc_workers=workers)
        t1 = time.perf_counter()
        dups = hasher.find_duplicates(encoding_map=enc, max_distance_threshold=max_distance, scores=True,
                                      num_dist_workers=workers)
        t2 = time.perf_counter()
        fi = [es.pos.get(f, -1) for f, lst in dups.items() for _ in lst]
        oi = [es.pos.get(o, -1) for lst in dups.values() for o, _ in lst]
        sc = [float(x) for lst in dups.values() for _, x in lst]
        a, b = np.asarray(fi, np.int64), np.asarray(oi, np.int64)
        ok = (a >= 0) & (b >= 0) & (a != b)
        lo, hi = np.minimum(a[ok], b[ok]), np.maximum(a[ok], b[ok])
        keys, first = np.unique(lo * es.n + hi, return_index=True)
        scores = np.asarray(sc, np.float64)[ok][first]
        rep = signal_report(es, keys, scores, False, list(range(0, max_distance + 1)), precisions)
        rep["time_s"] = {"encode": round(t1 - t0, 3), "search": round(t2 - t1, 3), "total": round(t2 - t0, 3)}
        rep["n_encoded"] = len(enc)
        out[name] = rep
    return out


def evaluate(set_dir: str | Path, embeddings: Optional[np.ndarray] = None, imagededup: bool = True,
             imagededup_methods: Sequence[str] = IMAGEDEDUP_METHODS, max_distance: int = MAX_EVAL_DISTANCE,
             precisions: Sequence[float] = PRECISIONS, progress: bool = False) -> dict:
    """Evaluate auditor's signals (and imagededup's, when installed and asked for) on a benchmark set."""
    es = EvalSet.from_benchmark(set_dir)
    res = {"set": str(set_dir), "n_images": es.n, "n_true_pairs": int(len(es.true_keys)),
           "transforms": sorted(es.by_transform), "precisions": list(precisions), "max_distance": max_distance,
           "auditor": evaluate_auditor(es, embeddings, max_distance, precisions, progress)}
    if imagededup:
        res["imagededup"] = evaluate_imagededup(es, imagededup_methods, max_distance, precisions)
    return res


def recommend_threshold(report: dict, precision: float = 0.99) -> Optional[int]:
    """The Hamming threshold a signal's report reaches ``precision`` with the highest recall."""
    best = report["recall_at_precision"].get(str(precision)) or {}
    t = best.get("threshold")
    return None if t is None else int(t)
