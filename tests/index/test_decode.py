"""Safe decoding: the code-made corrupt corpus, real photos, limits, and Image.open semantics."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from auditor.index.decode import DecodeError, decode_rgb, open_image, sniff_format, to_rgb
from support.corpus import CORPUS_MAX_PIXELS, make_corrupt_corpus

BIG = 1 << 26


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    exp = make_corrupt_corpus(d)
    return d, exp


def test_corpus_expectations(corpus):
    d, exp = corpus
    assert len(exp) >= 25
    assert {e["ok"] for e in exp.values()} == {True, False}
    for name, e in exp.items():
        data = (d / name).read_bytes()
        assert sniff_format(data) == e["format"], name
        if e["ok"]:
            im = open_image(data, max_pixels=CORPUS_MAX_PIXELS, max_bytes=BIG)
            assert (im.mode, im.size) == (e["mode"], e["size"]), name
            rgb = to_rgb(im)
            assert rgb.mode == "RGB" and rgb.size == im.size, name
            for xy, value in e.get("rgb_check", []):
                assert rgb.getpixel(tuple(xy)) == tuple(value), (name, xy)
            assert np.array_equal(np.asarray(decode_rgb(data, CORPUS_MAX_PIXELS, BIG)), np.asarray(rgb)), name
        else:
            with pytest.raises(DecodeError) as ei:
                open_image(data, max_pixels=CORPUS_MAX_PIXELS, max_bytes=BIG)
            assert ei.value.reason == e["reason"], (name, str(ei.value))
            assert str(ei.value).startswith(e["reason"])
            assert " at 0x" not in str(ei.value) and "object at" not in str(ei.value)  # deterministic messages


def test_good_corpus_files_match_image_open(corpus):
    """open_image returns what Image.open(path) shows: same mode, size, pixels (first frame, no EXIF transpose)."""
    d, exp = corpus
    for name, e in exp.items():
        if not e["ok"]:
            continue
        ours = open_image((d / name).read_bytes(), CORPUS_MAX_PIXELS, BIG)
        with Image.open(d / name) as ref:
            ref.load()
            assert ref.mode == ours.mode and ref.size == ours.size, name
            assert np.array_equal(np.asarray(ref), np.asarray(ours)), name


def test_animated_gif_is_first_frame(corpus):
    d, exp = corpus
    data = (d / "animated.gif").read_bytes()
    im = open_image(data, CORPUS_MAX_PIXELS, BIG)
    assert getattr(im, "n_frames", 1) == exp["animated.gif"]["n_frames"]
    assert set(to_rgb(im).getdata()) == {(255, 0, 0)}


def test_exif_orientation_not_applied(corpus):
    d, _ = corpus
    im = open_image((d / "exif_rotated.jpg").read_bytes(), CORPUS_MAX_PIXELS, BIG)
    assert im.getexif().get(0x0112) == 6
    assert im.size == (96, 64)  # transposing would give 64x96


def test_cmyk_converts_close_to_source(corpus):
    d, _ = corpus
    from support.corpus import _photo

    rgb = np.asarray(decode_rgb((d / "cmyk.jpg").read_bytes()), dtype=np.int16)
    assert np.abs(rgb - np.asarray(_photo(), dtype=np.int16)).mean() < 12


def test_byte_and_pixel_limits():
    im = Image.new("RGB", (40, 25), (1, 2, 3))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = buf.getvalue()
    assert open_image(data, max_pixels=1000, max_bytes=len(data)).size == (40, 25)  # limits are inclusive
    with pytest.raises(DecodeError) as ei:
        open_image(data, max_pixels=999, max_bytes=BIG)
    assert ei.value.reason == "too_many_pixels"
    with pytest.raises(DecodeError) as ei:
        open_image(data, max_pixels=10**6, max_bytes=len(data) - 1)
    assert ei.value.reason == "too_many_bytes"


def test_pil_globals_untouched_and_unsafe_config_refused(corpus, monkeypatch):
    d, _ = corpus
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for name in ("bomb_header.png", "truncated.jpg", "good.jpg"):
        try:
            open_image((d / name).read_bytes(), CORPUS_MAX_PIXELS, BIG)
        except DecodeError:
            pass
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before
    # a host program that enabled LOAD_TRUNCATED_IMAGES would get grey-padded images: refuse, loudly
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DecodeError) as ei:
        open_image((d / "truncated.jpg").read_bytes(), CORPUS_MAX_PIXELS, BIG)
    assert ei.value.reason == "unsafe_config"


def test_sixteen_bit_scaling_not_clipping():
    arr = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    rgb = decode_rgb(buf.getvalue())
    assert [p[0] for p in rgb.getdata()] == [0, 1, 128, 255]


def test_real_photos_decode(kodak, imagenet):
    assert len(kodak) == 24
    for p in kodak + imagenet[:50]:
        data = p.read_bytes()
        rgb = decode_rgb(data)
        assert rgb.mode == "RGB"
        with Image.open(p) as ref:
            assert rgb.size == ref.size
        assert sniff_format(data) == ("PNG" if p.suffix == ".png" else "JPEG")


def test_imagededup_formats(shared_data):
    folder = shared_data / "neardup" / "imagededup" / "formats_images"
    files = sorted(folder.iterdir())
    assert files, folder
    seen = {}
    for p in files:
        data = p.read_bytes()
        try:
            im = open_image(data)
            seen[p.suffix.lower()] = ("ok", sniff_format(data), im.mode)
            assert to_rgb(im).mode == "RGB"
        except DecodeError as e:
            seen[p.suffix.lower()] = ("err", e.reason)
    # imagededup's .bmp/.png/.svg samples are JPEG bytes under another extension: content decides
    for ext, fmt in ((".ppm", "PPM"), (".pgm", "PPM"), (".pbm", "PPM"), (".tiff", "TIFF"), (".gif", "GIF"),
                     (".webp", "WEBP"), (".jpeg", "JPEG"), (".bmp", "JPEG"), (".png", "JPEG"), (".svg", "JPEG")):
        assert seen[ext][:2] == ("ok", fmt), (ext, seen[ext])
    # a real SVG (vector) is never rasterised
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    with pytest.raises(DecodeError) as ei:
        open_image(svg)
    assert ei.value.reason == "unknown_format"


def _variants(photo: Image.Image) -> dict[str, bytes]:
    """One real photo as JPEGs of every kind the fast path may or may not take."""
    out = {}
    for sub in ("4:4:4", "4:2:2", "4:2:0"):
        for prog in (False, True):
            buf = io.BytesIO()
            photo.save(buf, "JPEG", quality=88, subsampling=sub, progressive=prog)
            out[f"{sub}{'-prog' if prog else ''}"] = buf.getvalue()
    for name, im in (("gray", photo.convert("L")), ("cmyk", photo.convert("CMYK")), ("odd-size", photo.crop((0, 0, 97, 61)))):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


def _assert_index_decode_is_pillows(data: bytes, name: str, max_pixels=CORPUS_MAX_PIXELS, max_bytes=BIG):
    from auditor.index.decode import decode_for_index

    try:
        im = open_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    except DecodeError as e:
        with pytest.raises(DecodeError) as ei:
            decode_for_index(data, max_pixels=max_pixels, max_bytes=max_bytes)
        assert str(ei.value) == str(e), name
        return None
    dec = decode_for_index(data, max_pixels=max_pixels, max_bytes=max_bytes)
    assert dec.rgb.dtype == np.uint8 and dec.rgb.flags.c_contiguous, name
    assert np.array_equal(dec.rgb, np.asarray(to_rgb(im))), name
    assert dec.gray.mode == "L" and np.array_equal(np.asarray(dec.gray), np.asarray(im.convert("L"))), name
    return dec


def test_index_decode_equals_pillow_everywhere(corpus, imagenet, kodak, shared_data):
    """decode_for_index (libjpeg-turbo through simplejpeg for plain JPEGs) gives exactly Pillow's pixels, gray
    image and errors: on the corrupt corpus, 1,000 ImageNet photos, CIFAR-10 photos, imagededup's files and every
    JPEG kind (subsamplings, progressive, gray, CMYK, odd sizes)."""
    from auditor.index.decode import fast_jpeg_kinds

    kinds = fast_jpeg_kinds()
    assert {("YCbCr", "420"), ("YCbCr", "422"), ("YCbCr", "444"), ("Gray", "Gray")} <= kinds, kinds
    d, exp = corpus
    for name in exp:
        _assert_index_decode_is_pillows((d / name).read_bytes(), name)
    for p in imagenet:
        _assert_index_decode_is_pillows(p.read_bytes(), p.name)
    cifar = sorted((shared_data / "photos" / "cifar10-test").rglob("*.jpg"))[::20]
    assert len(cifar) >= 400
    for p in cifar:
        _assert_index_decode_is_pillows(p.read_bytes(), p.name)
    for p in sorted((shared_data / "neardup" / "imagededup").rglob("*")):
        if p.is_file() and p.suffix.lower() != ".json":
            _assert_index_decode_is_pillows(p.read_bytes(), str(p))
    with Image.open(kodak[0]) as photo:
        for name, data in _variants(photo.convert("RGB")).items():
            _assert_index_decode_is_pillows(data, name)
            # a JPEG cut short or with garbage in its entropy-coded data: the fast path declines, Pillow decides
            _assert_index_decode_is_pillows(data[: len(data) * 2 // 3], name + "-truncated")
            broken = bytearray(data)
            broken[len(data) // 2: len(data) // 2 + 16] = b"\xff\x00" * 8
            _assert_index_decode_is_pillows(bytes(broken), name + "-garbage")
    # limits: the fast path never decodes what the limits refuse (same errors as Pillow's path)
    data = _variants(Image.new("RGB", (300, 200), (10, 200, 30)))["4:2:0"]
    _assert_index_decode_is_pillows(data, "max_pixels", max_pixels=300 * 200 - 1)
    _assert_index_decode_is_pillows(data, "max_bytes", max_bytes=len(data) - 1)


def test_index_decode_without_simplejpeg(kodak, monkeypatch):
    """Without simplejpeg every image takes Pillow's path, with the same result."""
    from auditor.index import decode

    monkeypatch.setattr(decode, "simplejpeg", None)
    monkeypatch.setattr(decode, "fast_jpeg_kinds", lambda: frozenset())
    with Image.open(kodak[1]) as photo:
        for name, data in _variants(photo.convert("RGB")).items():
            _assert_index_decode_is_pillows(data, name)
