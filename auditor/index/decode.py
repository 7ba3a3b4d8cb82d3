"""Safe image decoding for untrusted training data.

Semantics (chosen so the index agrees with the tools the field already uses):

* **Format** comes from magic bytes (:func:`sniff_format`), never from the stored extension; a PNG stored as
  ``.jpg`` decodes as a PNG. Only a whitelist of raster formats is handed to Pillow (``Image.open(...,
  formats=...)``), so plugins that shell out or parse exotic containers (EPS -> Ghostscript, PSD, FITS, ...)
  are never reached with untrusted bytes.
* **Limits** are checked before any pixel is decoded: the stored size against ``max_bytes``, then the size
  declared in the header (``im.size`` right after ``Image.open``, which parses only the header) against
  ``max_pixels``. Pillow's own ``DecompressionBombError`` (raised by ``Image.open`` above twice its global
  ``Image.MAX_IMAGE_PIXELS``) is mapped to the same error. Nothing here mutates Pillow's globals
  (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``), so this is safe in threads and
  in worker processes of a host program that configured Pillow its own way.
* **Truncated** files raise ``DecodeError("truncated")``. If the host program has set
  ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` globally, Pillow would silently pad truncated files with grey; we
  refuse to run in that state rather than index half-grey images (see :func:`open_image`).
* **Animations / multi-picture files** (GIF, APNG, WebP, MPO, multi-page TIFF): the first frame, exactly what
  ``Image.open(path)`` shows, which is what ``imagehash`` hashes and what img2dataset's resizer keeps.
* **EXIF orientation is NOT applied.** ``imagehash.phash(Image.open(path))`` does not transpose, and
  img2dataset decodes with ``cv2.imdecode(..., IMREAD_UNCHANGED)``, which ignores the EXIF orientation tag, so
  the stored pixels are what a model trained on an img2dataset dump saw.
* :func:`open_image` returns the image in its **original mode** (``P``, ``LA``, ``I;16``, ``CMYK``, ...), so
  hashes of it equal ``imagehash`` on ``Image.open(path)``. :func:`to_rgb` then makes the 8-bit RGB image
  used for pixel hashes and embeddings; transparency is composited on **white**, the same matting
  img2dataset applies (``alpha/255*rgb + 255 - alpha``), not dropped as ``Image.convert("RGB")`` does.
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

try:  # libjpeg-turbo without Pillow's per-image Python overhead (see decode_for_index)
    import simplejpeg
except ImportError:  # pragma: no cover - a declared dependency; the Pillow path covers everything without it
    simplejpeg = None

# Pillow format names handed to Image.open, keyed by what sniff_format detects.
_PIL_FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": ("JPEG",),  # Pillow's JPEG factory also opens MPO (multi-picture) files
    "PNG": ("PNG",),
    "WEBP": ("WEBP",),
    "GIF": ("GIF",),
    "BMP": ("BMP",),
    "TIFF": ("TIFF",),
    "PPM": ("PPM",),
    "ICO": ("ICO",),
    "AVIF": ("AVIF",),
    "JPEG2000": ("JPEG2000",),
    "QOI": ("QOI",),
}

# default limits (the same numbers as auditor.index.config.DecodeConfig)
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class DecodeError(Exception):
    """An image that cannot (or must not) be decoded. ``reason`` is a short machine-readable code:

    ``empty``, ``too_many_bytes``, ``unknown_format``, ``unsupported_format``, ``too_many_pixels``,
    ``truncated``, ``corrupt``, ``unsafe_config``.
    """

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def sniff_format(data: bytes) -> str | None:
    """The container format from the magic bytes ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF",
    "HEIF", "JPEG2000", "JXL", "ICO", "PPM", "QOI", "PSD"), or None when no known image signature matches."""
    b = bytes(data[:32])
    if b.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if b.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if b.startswith(b"RIFF") and b[8:12] == b"WEBP":
        return "WEBP"
    if b.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if b.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if b[4:8] == b"ftyp":
        brand = b[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "HEIF"
        return None
    if b.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or b.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    if b.startswith(b"\xff\x0a") or b.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "JXL"
    if b.startswith(b"BM") and len(b) >= 18 and int.from_bytes(b[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "BMP"
    if b.startswith(b"qoif"):
        return "QOI"
    if b.startswith(b"8BPS"):
        return "PSD"
    if b.startswith(b"\x00\x00\x01\x00") and len(b) >= 6 and b[4:6] != b"\x00\x00":
        return "ICO"
    if len(b) >= 3 and b[0:1] == b"P" and b[1:2] in b"123456" and b[2:3] in b" \t\r\n#":
        return "PPM"
    return None


_ADDRESS = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


def _classify(exc: BaseException) -> DecodeError:
    # no memory addresses in messages: errors.parquet must be identical across runs
    msg = _ADDRESS.sub(r"<\1>", str(exc)) or type(exc).__name__
    low = msg.lower()
    if "truncat" in low or isinstance(exc, EOFError) or "premature end" in low:
        return DecodeError("truncated", msg)
    return DecodeError("corrupt", f"{type(exc).__name__}: {msg}")


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """Decode ``data`` into a fully loaded PIL image in its original mode (first frame of animations,
    EXIF orientation not applied). Raises :class:`DecodeError` for anything that is not a safely decodable
    image within the limits."""
    if data is None or len(data) == 0:
        raise DecodeError("empty", "0 bytes")
    if len(data) > max_bytes:
        raise DecodeError("too_many_bytes", f"{len(data)} bytes > max_bytes={max_bytes}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise DecodeError("unsafe_config", "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process; "
                                           "truncated files would decode as grey padding")
    fmt = sniff_format(data)
    if fmt is None:
        raise DecodeError("unknown_format", f"no image signature in the first bytes {bytes(data[:8])!r}")
    pil_formats = _PIL_FORMATS.get(fmt)
    if pil_formats is None:
        raise DecodeError("unsupported_format", f"{fmt} (no safe decoder configured)")
    try:
        im = Image.open(io.BytesIO(data), formats=list(pil_formats))  # parses the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning under -W error
        raise DecodeError("too_many_pixels", str(e)) from None
    except Exception as e:  # UnidentifiedImageError, SyntaxError, struct.error, ValueError, ...
        raise _classify(e) from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise DecodeError("corrupt", f"declared size {w}x{h}")
    if w * h > max_pixels:
        raise DecodeError("too_many_pixels", f"{w}x{h} = {w * h} pixels > max_pixels={max_pixels}")
    try:
        # Image.open leaves animations on frame 0; never touch n_frames (it walks every frame of a GIF)
        im.load()
    except Image.DecompressionBombError as e:
        raise DecodeError("too_many_pixels", str(e)) from None
    except MemoryError as e:
        raise DecodeError("too_many_pixels", f"out of memory decoding {w}x{h}") from e
    except Exception as e:
        raise _classify(e) from None
    if im.size != (w, h):  # e.g. a JPEG draft or a frame of another size: never silently differ
        w, h = im.size
        if w * h > max_pixels:
            raise DecodeError("too_many_pixels", f"{w}x{h} = {w * h} pixels > max_pixels={max_pixels}")
    return im


def _sixteen_to_eight(arr: np.ndarray) -> np.ndarray:
    # 0..65535 -> 0..255 with rounding (x / 257 maps 65535 -> 255, 257*k -> k exactly)
    return np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB version of ``im``.

    * alpha (``RGBA``, ``LA``, ``PA``, palette or ``L``/``RGB`` with a ``transparency`` key) is composited on
      white exactly as img2dataset does: ``rint(alpha/255 * rgb + 255 - alpha)``;
    * 16-bit gray (``I;16*``, and ``I`` which is how Pillow opens 16-bit gray PNG/TIFF) is scaled by 1/257,
      not clipped; float (``F``) is clipped to 0..255;
    * ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``P``, ``L``, ``1`` use Pillow's conversion (no ICC colour
      management, like img2dataset's OpenCV decoding).
    """
    mode = im.mode
    if mode == "RGB":
        return im
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in im.info)
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        arr = np.asarray(im)
        if mode == "F":
            g = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
        else:
            g = _sixteen_to_eight(arr)
        return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), mode="RGB")
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[:, :, 3:4]
        out = alpha / 255 * rgba[:, :, :3] + 255 - alpha
        out = np.rint(out.clip(min=0, max=255)).astype(np.uint8)
        return Image.fromarray(out, mode="RGB")
    return im.convert("RGB")


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """``to_rgb(open_image(data, ...))``."""
    return to_rgb(open_image(data, max_pixels=max_pixels, max_bytes=max_bytes))


# ---- the index's decode: the same pixels, faster for the common JPEG -----------------------------------------

@dataclass(frozen=True)
class DecodedImage:
    """What the index hashes and embeds: ``rgb`` are :func:`to_rgb`'s pixels as ``uint8 [h, w, 3]`` (C order);
    ``gray`` is ``Image.open(data).convert("L")`` -- the image imagehash resizes for pHash/dHash."""

    rgb: np.ndarray
    gray: Image.Image

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    def rgb_image(self) -> Image.Image:
        return Image.fromarray(self.rgb)


@functools.cache
def fast_jpeg_kinds() -> frozenset:
    """The JPEG kinds (``(colorspace, subsampling)`` as ``simplejpeg.decode_jpeg_header`` names them) for which
    this process's simplejpeg decodes exactly the pixels this process's Pillow decodes, found once per process
    on probe JPEGs that Pillow encodes (baseline and progressive, odd sizes that leave partial MCUs). Both wrap
    libjpeg-turbo with the same default (accurate integer DCT, fancy upsampling); this check is what makes the
    fast path safe even if their bundled libjpeg-turbo versions ever decode differently. Empty without
    simplejpeg."""
    if simplejpeg is None:
        return frozenset()
    rng = np.random.default_rng(0)
    base = np.sort(rng.integers(0, 256, (47, 61, 3), dtype=np.uint8), axis=1)
    base[::3] = 255 - base[::3]
    kinds, failed = set(), set()
    variants = [("RGB", sub, prog) for sub in (0, 1, 2) for prog in (False, True)] + [("L", -1, False), ("L", -1, True)]
    for mode, sub, prog in variants:
        im = Image.fromarray(base if mode == "RGB" else base[:, :, 0], mode=mode)
        buf = io.BytesIO()
        kw = {"subsampling": sub} if sub >= 0 else {}
        im.save(buf, "JPEG", quality=87, progressive=prog, **kw)
        data = buf.getvalue()
        try:
            _, _, cs, ss = simplejpeg.decode_jpeg_header(data)
        except Exception:  # noqa: BLE001 - a header simplejpeg cannot read never takes the fast path
            continue
        try:
            fast = simplejpeg.decode_jpeg(data, "GRAY" if cs == "Gray" else "RGB", fastdct=False,
                                          fastupsample=False, strict=True)
        except Exception:  # noqa: BLE001 - any failure on a probe disables the fast path for its kind
            failed.add((cs, ss))
            continue
        ref = np.asarray(Image.open(io.BytesIO(data)))
        (kinds if np.array_equal(fast.reshape(ref.shape), ref) else failed).add((cs, ss))
    return frozenset(kinds - failed)


def _decode_jpeg_fast(data: bytes, max_pixels: int, max_bytes: int):
    """``uint8 [h, w, 3]`` (colour) or ``[h, w, 1]`` (gray) pixels of a plain JPEG through simplejpeg, or None
    when this JPEG must go through Pillow: not a verified kind (CMYK/YCCK, Adobe RGB, 4:4:0, 12-bit, ...), over
    a pixel limit (so the limit errors are Pillow's), or any libjpeg warning or error (strict mode; Pillow then
    decides between decoding it, "truncated" and "corrupt")."""
    if simplejpeg is None or len(data) > max_bytes or bytes(data[:3]) != b"\xff\xd8\xff" \
            or ImageFile.LOAD_TRUNCATED_IMAGES:
        return None
    try:
        h, w, cs, ss = simplejpeg.decode_jpeg_header(data)
    except Exception:  # noqa: BLE001
        return None
    if (cs, ss) not in fast_jpeg_kinds() or w <= 0 or h <= 0 or w * h > max_pixels \
            or (Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS):
        return None
    try:
        return simplejpeg.decode_jpeg(data, "GRAY" if cs == "Gray" else "RGB", fastdct=False,
                                      fastupsample=False, strict=True)
    except Exception:  # noqa: BLE001
        return None


def decode_for_index(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> DecodedImage:
    """The pixels the index hashes: exactly ``to_rgb(open_image(data))`` and ``open_image(data).convert("L")``,
    with the same :class:`DecodeError` for bad input. Plain JPEGs (YCbCr or gray, the subsamplings
    :func:`fast_jpeg_kinds` verified) skip Pillow's per-image Python work and are decoded by libjpeg-turbo
    through simplejpeg: about 0.2 ms instead of 0.35 ms for a 256-px photo. Everything else is Pillow's."""
    arr = _decode_jpeg_fast(data, max_pixels, max_bytes) if data else None
    if arr is not None:
        if arr.shape[2] == 1:
            gray = Image.fromarray(arr[:, :, 0])
            return DecodedImage(rgb=np.repeat(arr, 3, axis=2), gray=gray)
        return DecodedImage(rgb=arr, gray=Image.fromarray(arr).convert("L"))
    im = open_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    rgb = np.asarray(to_rgb(im))
    return DecodedImage(rgb=rgb, gray=im.convert("L"))
