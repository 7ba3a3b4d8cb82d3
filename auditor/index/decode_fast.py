"""``index.hash_mode: fast``: plain JPEGs decoded at a reduced DCT scale, for LAION-scale hashing.

libjpeg-turbo can run its inverse DCT at M/8 of the stored size (M = 1..8), skipping most of the decode's work
(IDCT, upsampling, colour conversion of pixels nobody hashes). pHash and dHash are then imagehash's functions
(the same exact LANCZOS thumbnails and DCT, ``hashing.gray_thumbnails``) of those fewer pixels, so their bits
move slightly from the exact mode's (``index.hash_mode: exact``, the default, bit-identical to imagehash):
BENCHMARKS.md section 1 measures the deviation, its effect on dedup recall and the throughput.

The scale is the smallest M/8 that keeps **both** sides >= ``min_side`` (``fast_min_side``: 64 px, twice the
32-px pHash thumbnail, or the embedder's input size if larger), so LANCZOS still averages at least 2 decoded
pixels per thumbnail pixel and an image no larger than that is decoded at full size (its pixels then equal the
exact mode's). Only the JPEG kinds that ``decode.fast_jpeg_kinds`` verified go this way, under the same
limits and strict mode; everything else (other formats, CMYK, damaged files, ...) is decoded exactly as in
exact mode, with the same errors. ``pixel_blake3`` is the BLAKE3 of the reduced pixels in this mode: two JPEGs
with the same coefficients (metadata-only differences) still match; a JPEG and a PNG of its full pixels no
longer do. ``width``/``height`` are always the stored image's.

Example::

    from auditor.index.decode_fast import decode_reduced
    dec = decode_reduced(open("photo.jpg", "rb").read(), min_side=64)
    dec.rgb.shape      # (96, 128, 3) for a 256 x 192 photo: the 3/8 scale
    dec.width          # 256: the stored width
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DecodedImage, decode_for_index, fast_jpeg_header
from .decode_bounds import DEFAULT_CPU_BUDGET_S, DEFAULT_MAX_JPEG_SCANS, check_jpeg_scans

try:
    import simplejpeg
except ImportError:  # pragma: no cover - a declared dependency; exact decoding covers everything without it
    simplejpeg = None


@dataclass(frozen=True)
class ReducedImage(DecodedImage):
    """A :class:`DecodedImage` whose ``rgb``/``gray`` pixels are a DCT-scaled decode; ``width``/``height`` are
    the stored image's size (what the index records), not the array's."""

    stored_size: tuple[int, int] = (0, 0)  # (width, height) declared in the JPEG header

    @property
    def width(self) -> int:
        return int(self.stored_size[0])

    @property
    def height(self) -> int:
        return int(self.stored_size[1])


def fast_min_side(preprocess=None) -> int:
    """The smallest side a reduced decode may have: twice the 32-px pHash thumbnail (dHash's 9x8 needs less),
    and at least the input size of the embedder preprocessing the same pixels (``ResizeNormalize.size``; the
    copy descriptor: 64; open_clip: its transform's ``size``).

    >>> fast_min_side()
    64
    """
    from .hashing import PHASH_SIZE

    size = getattr(preprocess, "size", None)
    if size is None:
        size = (getattr(preprocess, "cfg", None) or {}).get("size", 0)
    size = max(size) if isinstance(size, (tuple, list)) else int(size or 0)
    return max(2 * PHASH_SIZE, size)


def _reduced_jpeg(data: bytes, min_side: int, max_pixels: int, max_bytes: int):
    """(pixels ``uint8 [h', w', 3|1]``, (stored w, stored h)) through simplejpeg at the reduced scale, or None
    when this JPEG must take the exact path (the same gate as ``decode._decode_jpeg_fast``)."""
    head = fast_jpeg_header(data, max_pixels, max_bytes)
    if head is None:
        return None
    h, w, cs = head
    try:
        arr = simplejpeg.decode_jpeg(data, "GRAY" if cs == "Gray" else "RGB", fastdct=False, fastupsample=False,
                                     min_height=min_side, min_width=min_side, strict=True)
    except Exception:  # noqa: BLE001 - strict mode: any libjpeg warning goes to the exact path, which decides
        return None
    return arr, (w, h)


def decode_reduced(data: bytes, min_side: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                   max_bytes: int = DEFAULT_MAX_BYTES, max_jpeg_scans=DEFAULT_MAX_JPEG_SCANS,
                   cpu_budget_s=DEFAULT_CPU_BUDGET_S) -> DecodedImage:
    """The pixels ``hash_mode: fast`` hashes: a plain JPEG decoded at the smallest M/8 scale whose sides are
    both >= ``min_side`` (a :class:`ReducedImage`); anything else exactly as :func:`decode.decode_for_index`
    (same pixels, same :class:`decode.DecodeError`)."""
    got = None
    if data and bytes(data[:3]) == b"\xff\xd8\xff":
        check_jpeg_scans(data, max_jpeg_scans)  # the same scan cap as the exact path, before any decode
        got = _reduced_jpeg(data, min_side, max_pixels, max_bytes)
    if got is None:
        return decode_for_index(data, max_pixels=max_pixels, max_bytes=max_bytes, max_jpeg_scans=max_jpeg_scans,
                                cpu_budget_s=cpu_budget_s)
    arr, size = got
    if arr.shape[2] == 1:
        return ReducedImage(rgb=np.repeat(arr, 3, axis=2), gray=Image.fromarray(arr[:, :, 0]), stored_size=size)
    return ReducedImage(rgb=arr, gray=Image.fromarray(arr).convert("L"), stored_size=size)
