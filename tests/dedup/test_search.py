"""auditor.dedup.search: exact agreement with numpy brute force (embeddings and Hamming), determinism, edge cases;
the strategy registry is the config's list of methods; the one blocked range-search helper."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.dedup import search as S


def _clustered(n, d, k, spread, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    x = centres[rng.integers(0, k, n)] + spread * rng.standard_normal((n, d))
    # planted near-duplicates: some rows are small perturbations of earlier rows
    src = rng.integers(0, n // 2, n // 10)
    dst = rng.integers(n // 2, n, n // 10)
    x[dst] = x[src] + 0.05 * rng.standard_normal((len(dst), d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(dtype)


def _brute_pairs(x, thr):
    x32 = x.astype(np.float32)
    sim = x32 @ x32.T
    i, j = np.nonzero(np.triu(sim >= thr, 1))
    return set(zip(i.tolist(), j.tolist())), sim


def _brute_cross(q, b, thr):
    sim = q.astype(np.float32) @ b.astype(np.float32).T
    i, j = np.nonzero(sim >= thr)
    return set(zip(i.tolist(), j.tolist())), sim


def _assert_same(got, want, sim, thr, tol=1e-5):
    """Sets agree except for pairs whose similarity lies within float round-off of the threshold."""
    diff = got ^ want
    for i, j in diff:
        assert abs(sim[i, j] - thr) < tol, f"pair {(i, j)} sim {sim[i, j]} disagrees with threshold {thr}"


def _check_output(i, j, s, self_join=True):
    assert i.dtype == np.int64 and j.dtype == np.int64 and s.dtype == np.float32
    assert len(i) == len(j) == len(s)
    if len(i):
        key = i * (j.max() + 1) + j
        assert np.all(np.diff(key) > 0), "pairs must be sorted by (i, j) and unique"
        if self_join:
            assert np.all(i < j)


@pytest.mark.parametrize("method", ["flat", "ivf", "hnsw"])
@pytest.mark.parametrize("thr", [0.6, 0.9])
def test_embedding_pairs_match_brute_force(method, thr):
    x = _clustered(3000, 48, 30, 0.5, seed=1)
    want, sim = _brute_pairs(x, thr)
    assert len(want) > 100  # the case is not trivial
    i, j, s = S.embedding_pairs(x, thr, method=method, seed=0)
    _check_output(i, j, s)
    got = set(zip(i.tolist(), j.tolist()))
    if method == "flat":
        _assert_same(got, want, sim, thr)
    else:
        # approximate methods never return a false pair (re-verified) and find nearly all
        assert got <= want | {p for p in got if abs(sim[p] - thr) < 1e-5}
        assert len(got & want) / len(want) >= 0.97
    np.testing.assert_allclose(s, sim[i, j], atol=1e-5)
    assert np.all(s >= thr)


def test_ivf_with_all_lists_probed_is_exact():
    x = _clustered(2000, 32, 20, 0.7, seed=2)
    want, sim = _brute_pairs(x, 0.7)
    i, j, s = S.embedding_pairs(x, 0.7, method="ivf", nlist=16, nprobe=16, probe_margin=None)  # fixed rule
    _assert_same(set(zip(i.tolist(), j.tolist())), want, sim, 0.7)


def test_ivf_recall_on_planted_near_duplicates():
    # the case the IVF join is built for: near-duplicates (cos >= 0.95) inside a clustered collection
    x = _clustered(20_000, 64, 200, 0.6, seed=3)
    i, j, s = S.embedding_pairs(x, 0.95, method="flat")
    ii, jj, ss = S.embedding_pairs(x, 0.95, method="ivf")
    flat = set(zip(i.tolist(), j.tolist()))
    ivf = set(zip(ii.tolist(), jj.tolist()))
    assert len(flat) > 1000
    assert ivf <= flat
    assert len(ivf) / len(flat) >= 0.99


@pytest.mark.parametrize("method", ["flat", "ivf"])
def test_cross_pairs_match_brute_force(method):
    base = _clustered(2500, 40, 25, 0.5, seed=4)
    rng = np.random.default_rng(5)
    q = base[rng.integers(0, len(base), 600)] + 0.03 * rng.standard_normal((600, 40)).astype(np.float32)
    q = np.concatenate([q, _clustered(400, 40, 25, 0.5, seed=6)])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    thr = 0.8
    want, sim = _brute_cross(q, base, thr)
    qi, bj, s = S.embedding_cross_pairs(q, base, thr, method=method)
    _check_output(qi, bj, s, self_join=False)
    got = set(zip(qi.tolist(), bj.tolist()))
    if method == "flat":
        _assert_same(got, want, sim, thr)
    else:
        assert len(got - want) == 0 or all(abs(sim[p] - thr) < 1e-5 for p in got - want)
        assert len(got & want) / len(want) >= 0.97
    np.testing.assert_allclose(s, sim[qi, bj], atol=1e-5)


def test_float16_input_and_exact_verification():
    x32 = _clustered(1500, 32, 15, 0.5, seed=7)
    x16 = x32.astype(np.float16)
    i, j, s = S.embedding_pairs(x16, 0.85, method="flat")
    # the similarity is the float32 dot of the float16 rows, and exactly the brute force set of those rows
    want, sim = _brute_pairs(x16, 0.85)
    _assert_same(set(zip(i.tolist(), j.tolist())), want, sim, 0.85)
    ref = np.einsum("ij,ij->i", x16[i].astype(np.float32), x16[j].astype(np.float32))
    np.testing.assert_array_equal(s, ref.astype(np.float32))
    ii, jj, _ = S.embedding_pairs(x16, 0.85, method="ivf")
    assert set(zip(ii.tolist(), jj.tolist())) <= set(zip(i.tolist(), j.tolist()))


def test_exact_duplicates_and_threshold_one():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[150:160] = x[0:10]
    for method in ("flat", "ivf"):
        i, j, s = S.embedding_pairs(x, 0.9999, method=method)
        assert set(zip(i.tolist(), j.tolist())) == {(k, 150 + k) for k in range(10)}


def test_determinism():
    x = _clustered(6000, 32, 60, 0.6, seed=9)
    a = S.embedding_pairs(x, 0.9, method="ivf", seed=3)
    b = S.embedding_pairs(x, 0.9, method="ivf", seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_row(n):
    x = np.ones((n, 8), dtype=np.float32) / np.sqrt(8)
    for method in S.method_names():
        i, j, s = S.embedding_pairs(x, 0.5, method=method)
        assert len(i) == len(j) == len(s) == 0 and i.dtype == np.int64 and s.dtype == np.float32
    qi, bj, s = S.embedding_cross_pairs(x, np.ones((3, 8), np.float32) / np.sqrt(8), 0.5)
    assert len(qi) == n * 3
    i, j, dd = S.hamming_pairs(np.arange(n, dtype=np.uint64), 4)
    assert len(i) == 0 and dd.dtype == np.int32


def test_bad_inputs():
    with pytest.raises(ValueError):
        S.embedding_pairs(np.zeros(5, np.float32), 0.5)
    with pytest.raises(ValueError):
        S.embedding_pairs(np.eye(4, dtype=np.float32), 0.5, method="lsh")
    with pytest.raises(ValueError):
        S.embedding_cross_pairs(np.eye(4, dtype=np.float32), np.eye(3, dtype=np.float32), 0.5)


def test_config_search_choices_are_the_registry():
    from typing import get_args

    from auditor.dedup.config import DedupConfig

    assert list(get_args(DedupConfig.model_fields["search"].annotation)) == S.method_names()
    assert S.method_names() == ["auto", "flat", "hnsw", "ivf", "partitioned"]
    for name in S.SEARCH_METHODS.names():  # every strategy can pair, cross-pair and build a lookup index
        st = S.pick_strategy(10, name)
        assert all(callable(getattr(st, f)) for f in ("self_candidates", "cross_candidates", "build_index"))
    assert S.resolve_method(S.AUTO_FLAT_MAX - 1, "auto") == "flat" and S.resolve_method(S.AUTO_FLAT_MAX, "auto") == "ivf"


@pytest.mark.parametrize("block", [7, 64, 5000])
def test_blocked_range_search_is_every_pair_once(block):
    import faiss

    from auditor.dedup.search.common import blocked_range_search

    x = _clustered(700, 16, 10, 0.5, seed=21)
    want, sim = _brute_pairs(x, 0.8)
    i, j = blocked_range_search(lambda: faiss.IndexFlatIP(16), x, x, 0.8, block=block, self_join=True)
    assert len(set(zip(i.tolist(), j.tolist()))) == len(i)  # each pair once
    _assert_same(set(zip(i.tolist(), j.tolist())), {p for p in want}, sim, 0.8)
    q = x[:50]
    qi, bj = blocked_range_search(lambda: faiss.IndexFlatIP(16), x, q, 0.8, block=block)
    wantx, simx = _brute_cross(q, x, 0.8)
    _assert_same(set(zip(qi.tolist(), bj.tolist())), wantx, simx, 0.8)


def test_partitioned_method_exact_with_the_full_margin_and_near_duplicates_with_the_default():
    x = _clustered(3000, 48, 30, 0.5, seed=1)
    want, sim = _brute_pairs(x, 0.9)
    exact = {"partition_rows": 300, "partition_margin": 1.0, "partition_max_probes": 1000}
    i, j, s = S.embedding_pairs(x, 0.9, method="partitioned", **exact)
    _check_output(i, j, s)
    _assert_same(set(zip(i.tolist(), j.tolist())), want, sim, 0.9)
    np.testing.assert_array_equal(s, S.embedding_pairs(x, 0.9, method="flat")[2])
    ii, jj, _ = S.embedding_pairs(x, 0.9, method="partitioned", partition_rows=300)  # default margin rule
    got = set(zip(ii.tolist(), jj.tolist()))
    assert got <= set(zip(i.tolist(), j.tolist())) and len(got) / len(want) >= 0.97
    q, b = x[:800], x[800:]
    wantx, simx = _brute_cross(q, b, 0.9)
    qi, bj, _ = S.embedding_cross_pairs(q, b, 0.9, method="partitioned", **exact)
    _check_output(qi, bj, _, self_join=False)
    _assert_same(set(zip(qi.tolist(), bj.tolist())), wantx, simx, 0.9)
    assert len(wantx) > 50


# ---------------------------------------------------------------- Hamming

def _popcount(x):
    return np.array([bin(int(v)).count("1") for v in x.ravel()]).reshape(x.shape)


def _brute_hamming(q, b, maxd, self_join):
    dist = _popcount(q[:, None] ^ b[None, :])
    m = dist <= maxd
    if self_join:
        m = np.triu(m, 1)
    i, j = np.nonzero(m)
    return set(zip(i.tolist(), j.tolist())), dist


def _random_hashes(n, seed):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    # planted near copies: flip 0..12 bits
    k = n // 4
    src = rng.integers(0, n, k)
    for t, s in enumerate(src):
        bits = rng.choice(64, size=rng.integers(0, 13), replace=False)
        v = h[s]
        for b in bits:
            v ^= np.uint64(1) << np.uint64(b)
        h[n - 1 - t] = v
    return h


@pytest.mark.parametrize("method", ["flat", "multihash"])
@pytest.mark.parametrize("maxd", [0, 4, 10, 16])
def test_hamming_pairs_match_brute_force(method, maxd):
    h = _random_hashes(600, seed=maxd)
    want, dist = _brute_hamming(h, h, maxd, True)
    i, j, d = S.hamming_pairs(h, maxd, method=method)
    assert set(zip(i.tolist(), j.tolist())) == want
    np.testing.assert_array_equal(d, dist[i, j])
    assert d.dtype == np.int32 and np.all(i < j)
    if len(i):
        assert np.all(np.diff(i * 1000 + j) > 0)


@pytest.mark.parametrize("method", ["flat", "multihash"])
def test_hamming_cross_pairs(method):
    b = _random_hashes(500, seed=11)
    rng = np.random.default_rng(12)
    q = np.concatenate([b[rng.integers(0, 500, 50)] ^ np.uint64(0b1011), _random_hashes(80, seed=13)])
    want, dist = _brute_hamming(q, b, 6, False)
    qi, bj, d = S.hamming_cross_pairs(q, b, 6, method=method)
    assert set(zip(qi.tolist(), bj.tolist())) == want
    np.testing.assert_array_equal(d, dist[qi, bj])


def test_hamming_on_real_photo_hashes(imagenet, kodak):
    """pHashes of real photos and of re-encoded / resized copies: search == brute force."""
    import io

    from PIL import Image

    from auditor.index.hashing import phash_dhash

    paths = imagenet[:150] + kodak[:6]
    if len(paths) < 20:
        pytest.skip("not enough real photos")
    ims = []
    for p in paths:
        with Image.open(p) as im:
            ims.append(im.convert("RGB"))
    copies = []
    for im in ims[:60]:
        buf = io.BytesIO()
        im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(buf, "JPEG", quality=40)
        buf.seek(0)
        copies.append(Image.open(buf).convert("RGB"))
    ph, dh = phash_dhash(ims + copies)
    ph = np.asarray(ph, dtype=np.uint64)
    for maxd in (6, 12):
        want, dist = _brute_hamming(ph, ph, maxd, True)
        for method in ("flat", "multihash"):
            i, j, d = S.hamming_pairs(ph, maxd, method=method)
            assert set(zip(i.tolist(), j.tolist())) == want
        # most copies are found with their original at distance <= 12
    found = {(i_, j_) for i_, j_ in zip(*S.hamming_pairs(ph, 12)[:2])}
    n = len(ims)
    assert sum((k, n + k) in found for k in range(60)) >= 50


def _brute_dihedral(qh, qv, bh, bv, maxd, maxt):
    d = np.bitwise_count(qh[:, None] ^ bh[None, :]).astype(np.int64)
    t = np.full_like(d, 64)
    for k in range(qv.shape[1]):
        t = np.minimum(t, np.bitwise_count(qv[:, k][:, None] ^ bh[None, :]))
        t = np.minimum(t, np.bitwise_count(bv[:, k][None, :] ^ qh[:, None]))
    return np.minimum(np.where(d <= maxd, d, 65), np.where(t <= maxt, t, 65))


@pytest.mark.parametrize("method", ["flat", "multihash"])
def test_hamming_pairs_dihedral_match_brute_force_and_split_like_the_incremental_dedup(method):
    rng = np.random.default_rng(5)
    h = _random_hashes(400, seed=5)
    v = np.stack([_random_hashes(400, seed=10 + k) for k in range(7)], axis=1)
    # plant transformed copies: row b's hash near row a's transform k (and unrelated otherwise)
    for a, b in zip(range(0, 60), range(300, 360)):
        h[b] = v[a, a % 7] ^ np.uint64(1 << int(rng.integers(64)))
    linked = _brute_dihedral(h, v, h, v, 8, 4)
    i, j, d = S.hamming_pairs_dihedral(h, v, 8, 4, method=method)
    want = {(a, b) for a, b in zip(*np.nonzero(np.triu(linked <= 64, 1)))}
    assert set(zip(i.tolist(), j.tolist())) == want and len(want) >= 60
    np.testing.assert_array_equal(d, linked[i, j])
    # self pairs of the union == self pairs of the parts + their cross pairs (what the incremental dedup relies on)
    n_old = 250
    i1, j1, d1 = S.hamming_pairs_dihedral(h[:n_old], v[:n_old], 8, 4, method=method)
    i2, j2, d2 = S.hamming_pairs_dihedral(h[n_old:], v[n_old:], 8, 4, method=method)
    qi, bj, d3 = S.hamming_cross_pairs_dihedral(h[n_old:], v[n_old:], h[:n_old], v[:n_old], 8, 4, method=method)
    parts = {(int(a), int(b), int(x)) for a, b, x in zip(i1, j1, d1)}
    parts |= {(int(a) + n_old, int(b) + n_old, int(x)) for a, b, x in zip(i2, j2, d2)}
    parts |= {(int(b), int(a) + n_old, int(x)) for a, b, x in zip(qi, bj, d3)}
    assert parts == {(int(a), int(b), int(x)) for a, b, x in zip(i, j, d)}
    # transformed matching off: the plain search
    i0, j0, _ = S.hamming_pairs_dihedral(h, v, 8, -1, method=method)
    assert set(zip(i0.tolist(), j0.tolist())) == set(zip(*S.hamming_pairs(h, 8)[:2]))


def test_hamming_pairs_dihedral_find_mirrored_and_rotated_photos(imagenet):
    """Real photos and their mirrored / rotated JPEG re-saves: 30+ bits apart as stored, within 6 bits through the
    index's transformed hashes."""
    import io

    from PIL import Image

    from auditor.index.dihedral import hash_columns
    from auditor.index.hashing import hash_thumbnails

    if len(imagenet) < 40:
        pytest.skip("needs 40 imagenet photos")
    ims = [Image.open(p).convert("RGB") for p in imagenet[:40]]
    copies = []
    for k, im in enumerate(ims[:20]):
        t = (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270)[k % 3]
        buf = io.BytesIO()
        im.transpose(t).save(buf, "JPEG", quality=80)
        copies.append(Image.open(io.BytesIO(buf.getvalue())))
    c = hash_columns([hash_thumbnails(im) for im in ims + copies])
    n = len(ims)
    plain = set(zip(*S.hamming_pairs(c["phash"], 10)[:2]))
    assert sum((k, n + k) in plain for k in range(20)) == 0
    i, j, d = S.hamming_pairs_dihedral(c["phash"], c["phash_dihedral"], 10, 6)
    found = set(zip(i.tolist(), j.tolist()))
    assert all((k, n + k) in found for k in range(20))
    assert {(a, b) for a, b in found if b < n} == {(a, b) for a, b in plain if b < n}  # no new pair of originals


# ---------------------------------------------------------------- persistent index

@pytest.mark.parametrize("method", ["flat", "ivf", "hnsw"])
def test_build_save_load_query(tmp_path, method):
    x = _clustered(3000, 32, 30, 0.5, seed=14)
    index = S.build_search_index(x, method, seed=0)
    assert index.ntotal == len(x)
    path = tmp_path / "sub" / f"{method}.faiss"
    S.save_search_index(index, path)
    assert path.is_file() and not list(path.parent.glob(".*tmp"))
    loaded = S.load_search_index(path)
    D, I = S.query_index(loaded, x[:50], 5)
    assert D.shape == (50, 5) and I.dtype == np.int64 and D.dtype == np.float32
    # each row finds itself first
    assert np.mean(I[:, 0] == np.arange(50)) >= 0.98
    exact = np.sort(x[:50] @ x.T, axis=1)[:, ::-1][:, :5]
    if method == "flat":
        np.testing.assert_allclose(D, exact, atol=1e-5)
    D2, I2 = S.query_index(loaded, x[:3], len(x) + 5)
    assert np.all(I2[:, -1] == -1) and np.all(np.isneginf(D2[:, -1]))


def test_load_missing_index(tmp_path):
    with pytest.raises(FileNotFoundError):
        S.load_search_index(tmp_path / "none.faiss")
