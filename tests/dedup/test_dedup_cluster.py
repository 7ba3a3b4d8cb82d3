"""Unit and property tests of the clustering core (auditor.dedup.cluster)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from auditor.dedup.cluster import NO_REASON, REASONS, Signals, cluster, group_codes, star_edges


def _sig(n, phash=None, emb=None, area=None, keys=None, shards=None, sha=None, pix=None, t=10, tau=0.9):
    return Signals(
        key=np.array(keys or [f"k{i:03d}" for i in range(n)], dtype=object),
        shard=np.array(shards or ["00000"] * n, dtype=object),
        area=np.asarray(area if area is not None else [100] * n, dtype=np.int64),
        sha256=sha, pixel_blake3=pix,
        phash=None if phash is None else np.asarray(phash, dtype=np.uint64),
        dhash=None, emb=emb, phash_max_distance=t, cosine_threshold=tau)


def test_group_codes_and_star_edges_never_join_missing_values():
    codes = group_codes(["a", "", "b", "a", None, "b", "a"])
    assert codes.tolist() == [0, -1, 1, 0, -1, 1, 0]
    i, j = star_edges(codes)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 3), (0, 6), (2, 5)]


def test_chaining_guard_on_a_hash_chain():
    # 0 -> 1 -> ... each step flips 4 new bits: neighbours 4 apart, ends 20 apart
    vals, x = [], 0
    for k in range(6):
        vals.append(x)
        x |= 0xF << (4 * k)
    i = np.arange(5)
    sig = _sig(6, phash=vals, area=[100, 50, 50, 50, 50, 50], t=5)
    res = cluster(sig, i, i + 1)
    # rep 0 (largest) takes 1; 2 (lowest key of the rest) takes 3; 4 takes 5
    assert res.rep_row.tolist() == [0, 0, 2, 2, 4, 4]
    assert len(set(res.label.tolist())) == 3 and res.rounds == 3
    assert [REASONS[r] if r < NO_REASON else "" for r in res.reason] == ["", "phash"] * 3
    assert np.allclose(res.similarity, [1, 1 - 4 / 64] * 3)
    off = cluster(sig, i, i + 1, guard=False)
    assert len(set(off.label.tolist())) == 1 and (off.rep_row == 0).all()
    assert off.reason.tolist() == [NO_REASON, REASONS.index("phash")] + [NO_REASON] * 4


def test_chaining_guard_on_an_embedding_arc():
    # unit vectors 8 degrees apart on an arc: neighbours cos 0.990, ends 40 degrees apart (cos 0.77)
    ang = np.deg2rad(np.arange(6) * 8.0)
    emb = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float16)
    i = np.arange(5)
    res = cluster(_sig(6, emb=emb, tau=0.985), i, i + 1)
    for r in range(6):
        rep = res.rep_row[r]
        assert float(emb[r].astype(np.float64) @ emb[rep].astype(np.float64)) >= 0.985 - 1e-3
    assert len(set(res.label.tolist())) > 1


def test_representative_rule():
    sha = np.array([0, 0, 0, 0], dtype=np.int64)
    # largest area first
    res = cluster(_sig(4, sha=sha, area=[10, 40, 40, 20], keys=["d", "c", "b", "a"]), [0, 0, 0], [1, 2, 3])
    assert (res.rep_row == 2).all()  # area 40, and "b" < "c"
    # equal area and key: lowest shard
    res = cluster(_sig(2, sha=sha[:2], keys=["x", "x"], shards=["00002", "00001"]), [0], [1])
    assert (res.rep_row == 1).all()
    assert res.reason.tolist() == [REASONS.index("exact_bytes"), NO_REASON]


def test_strongest_reason_wins():
    sha = np.array([0, 0, 1], dtype=np.int64)
    pix = np.array([0, 0, 0], dtype=np.int64)
    res = cluster(_sig(3, sha=sha, pix=pix, phash=[5, 5, 5]), [0, 0], [1, 2])
    assert [REASONS[r] if r < NO_REASON else "" for r in res.reason] == ["", "exact_bytes", "exact_pixels"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**12 - 1), min_size=2, max_size=40), st.integers(0, 4), st.booleans())
def test_property_every_member_is_a_direct_duplicate_of_its_rep(vals, t, shuffle):
    h = np.asarray(vals, dtype=np.uint64)
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(d <= t, 1))
    if shuffle:
        p = np.random.default_rng(len(vals)).permutation(len(i))
        i, j = i[p], j[p]
    res = cluster(_sig(len(h), phash=h, t=t), i, j)
    n = len(h)
    # every member within t of its representative; representatives represent themselves
    assert (np.bitwise_count(h ^ h[res.rep_row]) <= t).all()
    assert (res.rep_row[res.rep_row] == res.rep_row).all()
    # clusters refine the connected components and are identified by their representative
    _, comp = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    assert (comp[res.rep_row] == comp).all()
    for lab in np.unique(res.label):
        assert len(set(res.rep_row[res.label == lab].tolist())) == 1
    # the result does not depend on the edge order
    again = cluster(_sig(len(h), phash=h, t=t), j[::-1], i[::-1])
    assert (again.rep_row == res.rep_row).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**14 - 1), min_size=2, max_size=40), st.integers(1, 4), st.integers(1, 4))
def test_property_admission_through_links_stays_within_the_end_to_end_bound(vals, t, k):
    """With chain_min_links=k: every member is directly within t of its representative, or within the end-to-end
    bound and linked to at least k other members of its cluster; clusters still refine the components."""
    h = np.asarray(vals, dtype=np.uint64)
    d = np.bitwise_count(h[:, None] ^ h[None, :]).astype(np.int64)
    i, j = np.nonzero(np.triu(d <= t, 1))
    sig = _sig(len(h), phash=h, t=t)
    sig.chain_min_links, sig.chain_max_distance = k, 2 * t
    res = cluster(sig, i, j)
    n = len(h)
    to_rep = d[np.arange(n), res.rep_row]
    assert (to_rep <= 2 * t).all()
    adj = np.zeros((n, n), dtype=bool)
    adj[i, j] = adj[j, i] = True
    same = res.label[:, None] == res.label[None, :]
    far = to_rep > t
    assert ((adj & same).sum(axis=1)[far] >= k).all()
    _, comp = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    assert (comp[res.rep_row] == comp).all()
    for lab in np.unique(res.label):
        assert len(set(res.rep_row[res.label == lab].tolist())) == 1
