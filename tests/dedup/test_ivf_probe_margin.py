"""The IVF join's margin rule (``dedup.probe_margin``, auditor/dedup/search/ivf.py): exact at margin 0.5 without a
cap in a self-join and in a cross join (where the queries' margin is doubled), never a false pair, and on planted
near-duplicates at least the fixed rule's recall for fewer probed lists."""

from __future__ import annotations

import numpy as np
from auditor.dedup import search as S
from auditor.dedup.search import ivf
from auditor.dedup.search.common import SearchOptions


def _clustered(n, d, k, spread, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((k, d))[rng.integers(0, k, n)] + spread * rng.standard_normal((n, d))
    src, dst = rng.integers(0, n // 2, n // 10), rng.integers(n // 2, n, n // 10)
    x[dst] = x[src] + 0.3 * spread * rng.standard_normal((len(dst), d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _pairs(i, j):
    return set(zip(i.tolist(), j.tolist()))


def _near(sim, pairs, thr):
    return {p for p in pairs if abs(sim[p] - thr) < 1e-5}


def test_margin_half_without_cap_is_exact_in_a_self_join():
    x = _clustered(4000, 32, 40, 0.8, seed=5)
    thr = 0.75
    sim = x @ x.T
    want = _pairs(*np.nonzero(np.triu(sim >= thr, 1)))
    assert len(want) > 2000
    got = _pairs(*S.embedding_pairs(x, thr, method="ivf", nlist=64, nprobe=64, probe_margin=0.5)[:2])
    assert got ^ want <= _near(sim, got ^ want, thr)
    # a smaller margin (without the floor of nearest lists) loses pairs: the bound is what makes 0.5 exact
    fewer = _pairs(*S.embedding_pairs(x, thr, method="ivf", nlist=64, nprobe=64, probe_margin=0.05,
                                      probe_min=1)[:2])
    assert fewer < got


def test_margin_half_without_cap_is_exact_in_a_cross_join():
    x = _clustered(4000, 32, 40, 0.8, seed=6)
    q, b, thr = x[:1500], x[1500:], 0.75
    sim = q @ b.T
    want = _pairs(*np.nonzero(sim >= thr))
    got = _pairs(*S.embedding_cross_pairs(q, b, thr, method="ivf", nlist=48, nprobe=48, probe_margin=0.5)[:2])
    assert len(want) > 1000 and got ^ want <= _near(sim, got ^ want, thr)


def test_default_margin_rule_on_planted_near_duplicates():
    # 20k clustered rows, near-duplicates at cos >= 0.9: the default rule (the margin rule) returns only true
    # pairs, at least the fixed 8 lists' recall, and probes fewer lists per row than them
    x = _clustered(20_000, 64, 200, 0.6, seed=3)
    thr = 0.9
    exact = _pairs(*S.embedding_pairs(x, thr, method="flat")[:2])
    fixed = _pairs(*S.embedding_pairs(x, thr, method="ivf", nprobe=8, probe_margin=None)[:2])
    got = _pairs(*S.embedding_pairs(x, thr, method="ivf")[:2])
    assert len(exact) > 1000
    assert got <= exact and fixed <= exact
    assert len(got) >= len(fixed)
    margin = SearchOptions().probe_margin
    assert margin is not None
    cent = ivf.train_centroids(x, ivf.default_nlist(len(x)), 0)
    rows, lists, home = ivf.probe_lists(x, cent, ivf.DEFAULT_MAX_PROBES, thr, margin, progress=False)
    assert np.array_equal(lists[np.r_[0, np.flatnonzero(np.diff(rows)) + 1]], home)  # home list first
    assert len(rows) / len(x) < 8


def test_probe_mask_without_the_distance_matrix(monkeypatch):
    """Past CDIST_FULL_MAX lists the centroid distances are computed per probed pair: the same rule."""
    x = _clustered(3000, 32, 30, 0.8, seed=7)
    cent = ivf.train_centroids(x, 40, 0)
    full = ivf.probe_lists(x, cent, 12, 0.8, 0.2, progress=False)
    monkeypatch.setattr(ivf, "CDIST_FULL_MAX", 10)
    assert ivf.centroid_distances(cent) is None
    lazy = ivf.probe_lists(x, cent, 12, 0.8, 0.2, progress=False)
    assert len(full[0]) > len(x)  # some rows probe more than their home
    assert abs(len(full[0]) - len(lazy[0])) <= 3 and np.array_equal(full[2], lazy[2])
