"""Issue 18 items 3-4 on real photos at small N: the guard's exact pHash multi-index hash against a brute-force scan,
and the IVF join's recall against the exact flat search on the shipped copy descriptor's embeddings.

Throughput lives in ``benchmarks/bench_guard.py`` and ``benchmarks/bench_search_paths.py`` (BENCHMARKS.md
sections 3 and 7); nothing here is timed.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from auditor.dedup.search import embedding_pairs
from auditor.dedup.search.mih import MultiIndexHash, plan
from auditor.index.hashing import phash_dhash


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    b = io.BytesIO()
    im.convert("RGB").save(b, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(b.getvalue()))


@pytest.fixture(scope="module")
def photo_hashes(imagenet):
    """pHashes of 120 ImageNet photos (stored), and of re-encoded / slightly resized copies of 40 of
    them (queries a few bits away)."""
    photos = [Image.open(p) for p in imagenet[:120]]
    stored, _ = phash_dhash(photos)
    copies = [_jpeg(im, q) for im in photos[:20] for q in (90, 30)]
    copies += [im.resize((im.width * 9 // 10, im.height * 9 // 10)) for im in photos[20:40]]
    queries, _ = phash_dhash(copies)
    return stored.astype(np.uint64), queries.astype(np.uint64)


def _brute(codes: np.ndarray, q: np.ndarray, radius: int, k: int):
    out = []
    for h in q:
        dd = np.bitwise_count(np.bitwise_xor(codes, np.uint64(h))).astype(np.int64)
        near = np.flatnonzero(dd <= radius)
        want = near[np.lexsort((near, dd[near]))][:k]
        out.append((want.tolist(), dd[want].tolist()))
    return out


@pytest.mark.parametrize("widths", [None, [16, 16, 16, 16], [22, 21, 21], [8] * 8])
@pytest.mark.parametrize("radius", [4, 10])
def test_mih_equals_brute_force_on_real_phashes(photo_hashes, widths, radius):
    """Real photos' pHashes among 30k random codes, with exact duplicates (ties): every plan (the chosen one, the
    1M one, the 100M one, one answered query by query) returns exactly the brute-force answer at the radius."""
    stored, copies = photo_hashes
    rng = np.random.default_rng(0)
    filler = rng.integers(0, np.iinfo(np.uint64).max, size=30_000, dtype=np.uint64, endpoint=True)
    codes = np.concatenate([filler[:15_000], stored, stored[:10], filler[15_000:]])  # 10 exact duplicates
    q = np.concatenate([copies, stored[:12], rng.integers(0, np.iinfo(np.uint64).max, size=8, dtype=np.uint64)])
    index = MultiIndexHash(codes, radius, widths=widths)
    assert not index.exhaustive
    for k in (1, 5, 50):
        got = index.search(q, k)
        assert [(r.tolist(), d.tolist()) for r, d in got] == _brute(codes, q, radius, k)
        one = [index.search(q[i:i + 1], k)[0] for i in range(0, len(q), 7)]
        assert [(r.tolist(), d.tolist()) for r, d in one] == _brute(codes, q[::7], radius, k)
    # the copies are found: a re-encoded photo is within a few bits of its stored pHash
    hits = index.search(copies[:40], 1)
    assert sum(len(r) > 0 for r, _ in hits) >= 30


def test_mih_scan_fallback_and_edges(photo_hashes):
    stored, copies = photo_hashes
    assert plan(len(stored), 30) is None  # a large radius: a full scan is cheaper
    scan = MultiIndexHash(stored, 30)
    assert scan.exhaustive
    got = scan.search(copies, 3)
    assert [(r.tolist(), d.tolist()) for r, d in got] == _brute(stored, copies, 30, 3)
    empty = MultiIndexHash(np.zeros(0, np.uint64), 10)
    assert [len(r) for r, _ in empty.search(copies[:3], 5)] == [0, 0, 0]
    with pytest.raises(ValueError):
        MultiIndexHash(stored, 10, widths=[32, 32])


def test_guard_phash_neighbours_are_the_radius_answer(photo_hashes):
    """``Guard.phash_neighbours`` is the exact radius answer at ``near_phash_distance`` (no run folder needed)."""
    import threading

    from auditor.guard.config import GuardConfig
    from auditor.guard.lookup import Guard

    stored, copies = photo_hashes
    g = Guard.__new__(Guard)
    g.cfg = GuardConfig(near_phash_distance=8)
    g.phash, g._phash_index, g._build_lock = stored, None, threading.Lock()
    got = g.phash_neighbours(copies, 5)
    assert [(r.tolist(), d.tolist()) for r, d in got] == _brute(stored, copies, 8, 5)


def _copies(im: Image.Image) -> list[Image.Image]:
    w, h = im.size
    return [_jpeg(im, 25), im.crop((w // 10, h // 10, w - w // 10, h - h // 10)), ImageOps.mirror(im),
            im.resize((w // 2, h // 2))]


def test_ivf_join_recall_on_real_copy_descriptors(imagenet):
    """The shipped copy descriptor on 200 real photos + 4 copies each of 40 of them, at its calibrated threshold:
    the IVF join (the ``ivf`` method with its default lists and probes) finds >= 99.5 % of the exact flat search's
    pairs, and nothing the flat search does not."""
    from auditor.index.config import EmbedderConfig
    from auditor.index.embedders import build_embedder, calibrated_cosine

    emb = build_embedder(EmbedderConfig(name="copy", device="cpu"))
    photos = [Image.open(p).convert("RGB") for p in imagenet[200:400]]
    ims = photos + [c for im in photos[:40] for c in _copies(im)]
    x = emb.embed_images(ims).astype(np.float16)
    tau = calibrated_cosine("copy")
    fi, fj, _ = embedding_pairs(x, tau, method="flat")
    ii, ij, _ = embedding_pairs(x, tau, method="ivf")
    exact, got = set(zip(fi.tolist(), fj.tolist())), set(zip(ii.tolist(), ij.tolist()))
    assert len(exact) >= 100  # most copies pair with their source (and with each other)
    assert got <= exact
    assert len(got & exact) / len(exact) >= 0.995
