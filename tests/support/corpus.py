"""A corpus of good, odd and broken image files, written by code (no binary fixtures in the repository).

``make_corrupt_corpus(dir)`` writes every file and returns ``{file name: expectation}``; an expectation is a
dict with ``ok`` (decodes with :func:`auditor.index.decode.open_image` under ``CORPUS_MAX_PIXELS``),
``format`` (what :func:`sniff_format` must report, or None), and for good files ``mode`` and ``size`` of the
opened image, for bad ones the :class:`DecodeError` ``reason``. Some entries carry ``rgb_check``: a pixel
``(x, y)`` and the RGB value :func:`to_rgb` must give there.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# the pixel limit the corpus expectations assume (the compressible bomb is above it, everything else below)
CORPUS_MAX_PIXELS = 10_000_000


def _photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    """A smooth colourful image with some texture (compresses like a photo, hashes non-trivially)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(xx / 9.0 + seed)
    g = 128 + 100 * np.cos(yy / 7.0)
    b = 128 + 60 * np.sin((xx + yy) / 13.0)
    arr = np.stack([r, g, b], axis=2) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png_huge_ihdr(width: int, height: int) -> bytes:
    """A 100-byte PNG declaring ``width x height`` RGB pixels (a header-level decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def make_corrupt_corpus(directory: str | Path) -> dict[str, dict]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    exp: dict[str, dict] = {}

    def add(name: str, data: bytes, **expectation):
        files[name] = data
        exp[name] = expectation

    photo = _photo()
    jpeg = _save(photo, "JPEG", quality=90)
    add("good.jpg", jpeg, ok=True, format="JPEG", mode="RGB", size=(96, 64))
    add("truncated.jpg", jpeg[: len(jpeg) // 2], ok=False, format="JPEG", reason="truncated")
    add("empty.jpg", b"", ok=False, format=None, reason="empty")
    add("header_only.jpg", jpeg[:3] + b"\x00" * 20, ok=False, format="JPEG", reason="corrupt")
    png = _save(photo, "PNG")
    add("png_stored_as.jpg", png, ok=True, format="PNG", mode="RGB", size=(96, 64))
    add("truncated.png", png[: len(png) * 2 // 3], ok=False, format="PNG", reason="truncated")
    add("webp_stored_as.jpg", _save(photo, "WEBP", quality=80), ok=True, format="WEBP", mode="RGB", size=(96, 64))
    add("lossless.webp", _save(photo, "WEBP", lossless=True), ok=True, format="WEBP", mode="RGB", size=(96, 64))
    add("cmyk.jpg", _save(photo.convert("CMYK"), "JPEG", quality=95), ok=True, format="JPEG", mode="CMYK", size=(96, 64))

    # 16-bit grayscale PNG: 65535 -> 255, 257*100 -> 100 after to_rgb (scaled, not clipped)
    g16 = np.full((20, 30), 257 * 100, dtype=np.uint16)
    g16[0, 0] = 65535
    add("gray16.png", _save(Image.fromarray(g16), "PNG"), ok=True, format="PNG", mode="I;16", size=(30, 20),
        rgb_check=[((0, 0), (255, 255, 255)), ((5, 5), (100, 100, 100))])

    pal = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    add("palette.png", _save(pal, "PNG"), ok=True, format="PNG", mode="P", size=(96, 64))
    # palette with a fully transparent entry: composited on white
    ptr = Image.new("P", (10, 10), 0)
    ptr.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    ptr.putpixel((5, 5), 1)
    add("palette_transparent.png", _save(ptr, "PNG", transparency=0), ok=True, format="PNG", mode="P", size=(10, 10),
        rgb_check=[((0, 0), (255, 255, 255)), ((5, 5), (0, 0, 255))])

    rgba = np.zeros((16, 24, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0] = (0, 0, 0, 0)          # fully transparent black -> white
    rgba[1, 1] = (0, 0, 0, 128)        # half transparent black -> rint(255 - 128) = 127
    add("rgba.png", _save(Image.fromarray(rgba, "RGBA"), "PNG"), ok=True, format="PNG", mode="RGBA", size=(24, 16),
        rgb_check=[((0, 0), (255, 255, 255)), ((1, 1), (127, 127, 127)), ((5, 5), (200, 0, 0))])
    la = np.zeros((8, 8, 2), dtype=np.uint8)
    la[..., 0] = 50
    la[..., 1] = 255
    la[2, 3] = (50, 0)
    add("la.png", _save(Image.fromarray(la, "LA"), "PNG"), ok=True, format="PNG", mode="LA", size=(8, 8),
        rgb_check=[((3, 2), (255, 255, 255)), ((0, 0), (50, 50, 50))])
    add("gray.jpg", _save(photo.convert("L"), "JPEG"), ok=True, format="JPEG", mode="L", size=(96, 64))
    add("bilevel.png", _save(photo.convert("1"), "PNG"), ok=True, format="PNG", mode="1", size=(96, 64))
    add("photo.bmp", _save(photo, "BMP"), ok=True, format="BMP", mode="RGB", size=(96, 64))
    add("photo.tiff", _save(photo, "TIFF", compression="tiff_lzw"), ok=True, format="TIFF", mode="RGB", size=(96, 64))

    # animated GIF: the first frame (red) is what decodes
    frames = [Image.new("RGB", (12, 9), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    add("animated.gif", buf.getvalue(), ok=True, format="GIF", mode="P", size=(12, 9), n_frames=3,
        rgb_check=[((4, 4), (255, 0, 0))])

    # EXIF orientation 6 (rotate 90 CW on display): NOT applied, the stored 96x64 pixels are what decodes
    exif = Image.Exif()
    exif[0x0112] = 6
    add("exif_rotated.jpg", _save(photo, "JPEG", exif=exif.tobytes()), ok=True, format="JPEG", mode="RGB", size=(96, 64))

    # decompression bombs
    add("bomb_header.png", _png_huge_ihdr(100_000, 100_000), ok=False, format="PNG", reason="too_many_pixels")
    add("bomb_under_pil_limit.png", _png_huge_ihdr(5_000, 5_000), ok=False, format="PNG", reason="too_many_pixels")
    black = Image.new("L", (4_000, 3_000), 0)  # 12 Mpx > CORPUS_MAX_PIXELS, ~12 kB compressed
    add("bomb_compressible.png", _save(black, "PNG", optimize=False), ok=False, format="PNG", reason="too_many_pixels")

    # not images at all (or not ones we decode)
    add("text.jpg", b"this is not an image, it is a caption that ended up in the wrong column\n",
        ok=False, format=None, reason="unknown_format")
    add("html_error_page.jpg", b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", ok=False, format=None,
        reason="unknown_format")
    add("postscript.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", ok=False, format=None,
        reason="unknown_format")
    add("heic_stored_as.jpg", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, ok=False,
        format="HEIF", reason="unsupported_format")
    add("garbage_after_magic.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2, ok=False, format="PNG", reason="corrupt")

    for name, data in files.items():
        (d / name).write_bytes(data)
    return exp
