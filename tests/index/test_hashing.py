"""Perceptual hashes bit-identical to imagehash (real photos + property tests), pixel/byte SHA-256, hamming."""

from __future__ import annotations

import hashlib
import io

import imagehash
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from auditor.index.decode import DecodeError, open_image
from auditor.index.hashing import (
    PHASH_DCT, _bits_to_u64, bytes_sha256, dhash_batch_gray, hamming, hash_thumbnails, hash_to_hex, hex_to_hash,
    phash_batch_gray, phash_dhash, pixel_hash,
)
from support.corpus import CORPUS_MAX_PIXELS, make_corrupt_corpus


def ref_hashes(images):
    p = np.array([int(str(imagehash.phash(im)), 16) for im in images], dtype=np.uint64)
    d = np.array([int(str(imagehash.dhash(im)), 16) for im in images], dtype=np.uint64)
    return p, d


def assert_parity(images, names):
    p, d = phash_dhash(images)
    rp, rd = ref_hashes(images)
    assert p.dtype == np.uint64 and d.dtype == np.uint64
    bad = [(n, hash_to_hex(a), hash_to_hex(b)) for n, a, b in zip(names, p, rp) if a != b]
    assert not bad, f"phash differs from imagehash on {len(bad)} images: {bad[:5]}"
    bad = [(n, hash_to_hex(a), hash_to_hex(b)) for n, a, b in zip(names, d, rd) if a != b]
    assert not bad, f"dhash differs from imagehash on {len(bad)} images: {bad[:5]}"


def test_parity_on_real_photos(imagenet, kodak, shared_data, tmp_path):
    paths = imagenet[::5] + kodak  # 200 ImageNet JPEGs + 24 Kodak PNGs
    dedup = shared_data / "neardup" / "imagededup"
    paths += sorted(p for p in dedup.rglob("*") if p.is_file() and p.suffix.lower() != ".json")
    images, names = [], []
    for p in paths:
        try:
            images.append(open_image(p.read_bytes()))
            names.append(str(p))
        except DecodeError:
            pass
    exp = make_corrupt_corpus(tmp_path)
    for name, e in exp.items():
        if e["ok"]:
            images.append(open_image((tmp_path / name).read_bytes(), CORPUS_MAX_PIXELS, 1 << 26))
            names.append(name)
    images += [Image.new("RGB", (64, 48), (255, 255, 255)), Image.new("L", (1, 1), 37), Image.new("RGB", (1, 1), (1, 2, 3))]
    names += ["blank", "1px-L", "1px-RGB"]
    modes = {im.mode for im in images}
    assert len(images) >= 260
    assert {"RGB", "L", "RGBA", "P", "LA", "CMYK", "I;16", "1"} <= modes, modes
    assert_parity(images, names)
    # and the same via imagehash on Image.open(path) for the files (not only on our decoded objects)
    some = paths[:: max(1, len(paths) // 40)]
    with_open = [Image.open(p) for p in some]
    ours = phash_dhash([open_image(p.read_bytes()) for p in some])
    ref = ref_hashes(with_open)
    assert np.array_equal(ours[0], ref[0]) and np.array_equal(ours[1], ref[1])


def test_flat_images_need_and_get_the_exact_fallback():
    """On flat images every AC coefficient is float round-off around a median of ~0: the matrix-product DCT
    alone gets different bits than scipy's FFT; the fallback reproduces imagehash exactly."""
    imgs = [Image.new("L", (50, 40), v) for v in (1, 128, 255)]
    g = np.stack([hash_thumbnails(im)[0] for im in imgs])
    coef = g.reshape(len(g), -1).astype(np.float64) @ PHASH_DCT
    naive = _bits_to_u64(coef > np.median(coef, axis=1, keepdims=True))
    rp, _ = ref_hashes(imgs)
    assert not np.array_equal(naive, rp)
    assert np.array_equal(phash_batch_gray(g), rp)
    assert [hash_to_hex(h) for h in rp] == ["8000000000000000"] * 3


MODES = ["L", "RGB", "RGBA", "LA", "P", "I;16", "1", "CMYK"]


@st.composite
def small_images(draw):
    w = draw(st.integers(1, 48))
    h = draw(st.integers(1, 48))
    mode = draw(st.sampled_from(MODES))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["noise", "flat", "levels"]))
    rng = np.random.default_rng(seed)
    if kind == "noise":
        arr = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    elif kind == "flat":
        arr = np.full((h, w, 4), rng.integers(0, 256), dtype=np.uint8)
    else:  # few distinct values: many ties in thumbnails and DCT coefficients
        arr = (rng.integers(0, 3, (h, w, 4)) * 127).astype(np.uint8)
    if mode == "I;16":
        im = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    elif mode in ("L", "1", "P"):
        im = Image.fromarray(arr[..., 0], "L").convert(mode)
    elif mode == "LA":
        im = Image.fromarray(arr[..., :2], "LA")
    elif mode in ("RGBA", "CMYK"):
        im = Image.fromarray(arr, "RGBA" if mode == "RGBA" else "CMYK")
    else:
        im = Image.fromarray(arr[..., :3], "RGB")
    return im


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(small_images(), min_size=1, max_size=6))
def test_property_parity_with_imagehash(images):
    assert_parity(images, [f"{im.mode}{im.size}" for im in images])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=20), st.integers(0, 2**64 - 1))
def test_property_hamming(values, other):
    a = np.array(values, dtype=np.uint64)
    b = np.full(len(a), other, dtype=np.uint64)
    d = hamming(a, b)
    assert d.dtype == np.uint8
    assert np.array_equal(d, hamming(b, a))
    assert not hamming(a, a).any()
    assert list(d) == [bin(v ^ other).count("1") for v in values]
    m = hamming(a[:, None], a[None, :])  # pairwise via broadcasting
    assert m.shape == (len(a), len(a)) and np.array_equal(m, m.T)
    # triangle inequality d(i, k) <= d(i, j) + d(j, k)
    mi = m.astype(int)
    assert (mi[:, None, :] <= mi[:, :, None] + mi[None, :, :]).all()
    for v in values:
        assert int(hex_to_hash(hash_to_hex(v))) == v
        assert len(hash_to_hex(v)) == 16


@settings(max_examples=40, deadline=None)
@given(st.lists(small_images(), min_size=2, max_size=5))
def test_property_hamming_matches_imagehash_subtraction(images):
    p, d = phash_dhash(images)
    refs = [imagehash.phash(im) for im in images]
    drefs = [imagehash.dhash(im) for im in images]
    for i in range(len(images)):
        for j in range(len(images)):
            assert int(hamming(p[i], p[j])) == refs[i] - refs[j]
            assert int(hamming(d[i], d[j])) == drefs[i] - drefs[j]
        assert hash_to_hex(p[i]) == str(refs[i]) and hash_to_hex(d[i]) == str(drefs[i])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_property_batch_independence(n, seed):
    """A thumbnail's hash does not depend on what else is in the batch (also: gray building blocks)."""
    rng = np.random.default_rng(seed)
    g32 = rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)
    g32[rng.random(n) < 0.3] = rng.integers(0, 256)  # some flat ones
    g98 = rng.integers(0, 256, (n, 8, 9), dtype=np.uint8)
    whole = phash_batch_gray(g32)
    assert np.array_equal(whole, np.concatenate([phash_batch_gray(g32[i:i + 1]) for i in range(n)]))
    dh = dhash_batch_gray(g98)
    assert np.array_equal(dh, np.concatenate([dhash_batch_gray(g98[i:i + 1]) for i in range(n)]))
    # building blocks on gray thumbnails == imagehash on the same gray images (resizing 32x32 to 32x32 is identity)
    i = int(rng.integers(n))
    assert int(whole[i]) == int(str(imagehash.phash(Image.fromarray(g32[i], "L"))), 16)
    assert int(dh[i]) == int(str(imagehash.dhash(Image.fromarray(g98[i], "L"))), 16)


def test_shapes_and_empty_batches():
    p, d = phash_dhash([])
    assert p.shape == d.shape == (0,) and p.dtype == np.uint64
    with pytest.raises(ValueError):
        phash_batch_gray(np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(ValueError):
        dhash_batch_gray(np.zeros((2, 9, 8), np.uint8))  # height 8, width 9 -- not transposed


def _encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_pixel_hash_is_container_independent(kodak):
    im = Image.open(kodak[0]).convert("RGB").crop((0, 0, 200, 120))
    blobs = [_encode(im, "PNG"), _encode(im, "WEBP", lossless=True), _encode(im, "BMP"), _encode(im, "TIFF"),
             _encode(im, "PNG", optimize=True)]
    assert len({bytes_sha256(b) for b in blobs}) == len(blobs)
    from auditor.index.decode import decode_rgb

    assert len({pixel_hash(decode_rgb(b)) for b in blobs}) == 1
    # any change of one pixel, or the same bytes in another shape, changes it
    changed = im.copy()
    changed.putpixel((3, 3), tuple((c + 1) % 256 for c in im.getpixel((3, 3))))
    assert pixel_hash(changed) != pixel_hash(im)
    raw = np.zeros((2, 3, 3), np.uint8)
    assert pixel_hash(Image.fromarray(raw)) != pixel_hash(Image.fromarray(raw.reshape(3, 2, 3)))
    # lossy re-encoding is a different picture at pixel level
    assert pixel_hash(decode_rgb(_encode(im, "JPEG", quality=95))) != pixel_hash(im)


def test_bytes_sha256():
    assert bytes_sha256(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert bytes_sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_thumbnails_equal_pillow_resize_for_every_shape(imagenet, kodak):
    """hash_thumbnails reimplements Pillow's fixed-point LANCZOS as float64 matrix products: byte-identical to
    ``Image.resize`` of the installed Pillow on real photos cut to every kind of shape -- tall crops (Pillow 13
    runs the vertical pass first for those), wide crops, upscales, one-pixel and exactly-32-wide images."""
    from auditor.index import hashing

    assert hashing.blas_pass_order() is not None, "the installed Pillow's pass order is unknown: slow path only"
    rng = np.random.default_rng(7)
    photos = [Image.open(p).convert("L") for p in imagenet[:40]] + [Image.open(p) for p in kodak[:4]]
    cases = []
    for im in photos:
        W, H = im.size
        for w, h in [(W, H), (32, min(H, 300)), (min(W, 60), H), (min(W, 300), 40), (9, 8), (5, 3), (1, 1),
                     (int(rng.integers(1, W + 1)), int(rng.integers(1, H + 1)))]:
            x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
            cases.append(im.crop((x0, y0, x0 + w, y0 + h)))
    orders = set()
    for im in cases:
        gray = im.convert("L")
        w, h = gray.size
        orders.add(hashing._vertical_first_pillow13(w, h, 32, 32))
        ours = hashing.hash_thumbnails(im)
        ref = (np.asarray(gray.resize((32, 32), Image.Resampling.LANCZOS)),
               np.asarray(gray.resize((9, 8), Image.Resampling.LANCZOS)))
        assert np.array_equal(ours[0], ref[0]) and np.array_equal(ours[1], ref[1]), (im.mode, im.size)
    assert orders == {True, False}  # both pass orders were exercised


def test_thumbnails_fall_back_to_pillow(kodak, monkeypatch):
    """Above the pixel limit, or under a Pillow whose pass order is unknown, Image.resize itself is used."""
    from auditor.index import hashing

    im = Image.open(kodak[0])
    ref = tuple(np.asarray(im.convert("L").resize(s, Image.Resampling.LANCZOS)) for s in ((32, 32), (9, 8)))
    calls = []
    real_resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: calls.append(a) or real_resize(self, *a, **k))
    monkeypatch.setattr(hashing, "_BLAS_MAX_PIXELS", 100)
    out = hashing.hash_thumbnails(im)
    assert len(calls) == 2 and all(np.array_equal(a, b) for a, b in zip(out, ref))
    monkeypatch.setattr(hashing, "_BLAS_MAX_PIXELS", 1 << 22)
    monkeypatch.setattr(hashing, "blas_pass_order", lambda: None)
    calls.clear()
    out = hashing.hash_thumbnails(im)
    assert len(calls) == 2 and all(np.array_equal(a, b) for a, b in zip(out, ref))


def test_weight_tables_equal_the_c_library_sin(monkeypatch):
    """The LANCZOS weight tables are computed with numpy's vectorised sin; every table equals the one computed
    with the C library's sin (what Pillow calls) -- for every side up to 700 px and each thumbnail size -- and a
    sin that is off by a few ulp (as a SIMD sin may be) still gives the same integers or falls back to libm."""
    from auditor.index import hashing

    def libm_table(n, o):
        return hashing._coeffs_to_matrix(n, *hashing._resample_coeffs(n, o, hashing._libm_sin))

    pairs = [(n, o) for n in range(1, 701) for o in (32, 9, 8)]
    ref = {p: libm_table(*p) for p in pairs}
    for p in pairs:
        assert np.array_equal(hashing._coeffs_to_matrix(p[0], *hashing._resample_coeffs(*p)), ref[p]), p
    rng = np.random.default_rng(1)

    def noisy_sin(x):  # a few ulp of error
        return np.sin(x) * (1.0 + rng.integers(-4, 5, size=np.shape(x)) * np.finfo(np.float64).eps)

    fell_back = []
    real = hashing._libm_sin

    def spy(x):
        fell_back.append(x.size)
        return real(x)

    monkeypatch.setattr(hashing, "_libm_sin", spy)
    for n, o in pairs:
        got = hashing._coeffs_to_matrix(n, *hashing._resample_coeffs.__wrapped__(n, o, noisy_sin))
        assert np.array_equal(got, ref[(n, o)]), (n, o)
    assert fell_back, "the tie margin never triggered: the fallback path is untested"


def test_dihedral_hashes_are_the_hashes_of_the_transformed_thumbnail():
    """phash_dihedral / dhash_dihedral from one DCT (sign changes, transposes) == the hashes of the transformed
    thumbnails, for every transform, including flat thumbnails that take the exact fallback."""
    from auditor.index.dihedral import (DIHEDRAL, dhash_dihedral_batch, dhash_thumbnail_8x9, dihedral_view,
                                        phash_dihedral_batch)

    rng = np.random.default_rng(3)
    g32 = rng.integers(0, 256, (30, 32, 32), dtype=np.uint8)
    g32[:3] = 77  # flat
    g32[3:6] = np.sort(g32[3:6], axis=1)  # strong vertical structure
    g98 = rng.integers(0, 256, (30, 8, 9), dtype=np.uint8)
    g89 = dhash_thumbnail_8x9(g32)
    assert np.array_equal(g89, np.stack([np.asarray(Image.fromarray(t, "L").resize((8, 9), Image.Resampling.LANCZOS))
                                         for t in g32]))
    pv, dv = phash_dihedral_batch(g32), dhash_dihedral_batch(g98, g89)
    assert pv.shape == dv.shape == (30, 7) and pv.dtype == np.uint64
    for k, name in enumerate(DIHEDRAL):
        pil = np.stack([np.asarray(Image.fromarray(t, "L").transpose(getattr(Image.Transpose, name.upper())))
                        for t in g32])
        assert np.array_equal(pil, dihedral_view(g32, name)), name
        assert np.array_equal(pv[:, k], phash_batch_gray(np.ascontiguousarray(pil))), name
        src = g89 if name in ("rotate_90", "rotate_270", "transpose", "transverse") else g98
        assert np.array_equal(dv[:, k], dhash_batch_gray(np.ascontiguousarray(dihedral_view(src, name)))), name


def test_dihedral_hashes_match_imagehash_of_transformed_photos(imagenet):
    """On real photos the stored transformed hashes are those imagehash gives the flipped/rotated photo: exactly
    for the flips and 180 degrees, within a few bits for the 90-degree rotations (Pillow's resampling of the
    rotated image is not exactly the rotated thumbnail)."""
    from auditor.index.dihedral import DIHEDRAL, hash_columns

    ims = [Image.open(p).convert("RGB") for p in imagenet[:60]]
    if len(ims) < 20:
        pytest.skip("needs imagenet photos")
    c = hash_columns([hash_thumbnails(im) for im in ims])
    p0, d0 = phash_dhash(ims)
    assert np.array_equal(c["phash"], p0) and np.array_equal(c["dhash"], d0)
    for k, name in enumerate(DIHEDRAL):
        tp, td = ref_hashes([im.transpose(getattr(Image.Transpose, name.upper())) for im in ims])
        dp, dd = hamming(c["phash_dihedral"][:, k], tp), hamming(c["dhash_dihedral"][:, k], td)
        if name in ("flip_left_right", "flip_top_bottom", "rotate_180"):
            assert dp.max() == 0 and dd.max() == 0, name
        else:
            assert dp.max() <= 4 and dd.max() <= 6 and dp.mean() < 1 and dd.mean() < 1.5, (name, dp, dd)
