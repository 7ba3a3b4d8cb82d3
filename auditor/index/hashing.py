"""Content hashes of the index: byte and pixel SHA-256, and batched perceptual hashes bit-identical to
``imagehash``.

``phash``/``dhash`` values are stored as ``uint64`` with ``value == int(str(imagehash.phash(im)), 16)``: the
first bit of imagehash's 8x8 boolean matrix (row-major) is the most significant bit, so ``hash_to_hex`` gives
the same 16-character string as ``str(imagehash.phash(im))`` and hashes computed here can be compared with
hashes computed anywhere else with imagehash.

phash is computed batched: imagehash takes a 2-D type-II DCT (``scipy.fftpack.dct`` along axis 0 then 1,
unnormalised) of the 32x32 LANCZOS thumbnail and keeps the top-left 8x8 block; that block is a linear map of
the 1024 pixels, so a batch is one ``[n, 1024] @ [1024, 64]`` float64 matrix product. The bits are
``coef > median(coef)``; only coefficients that lie within float round-off of the median can differ between
the matrix product and scipy's FFT (flat images: all AC coefficients are round-off noise around 0), so those
images -- detected per image with a tolerance far above the round-off of either method -- are recomputed with
imagehash's exact scipy call. The result is bit-identical, including on blank images.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
from PIL import Image

HASH_SIZE = 8
PHASH_SIZE = 32  # hash_size * highfreq_factor (imagehash defaults 8 * 4)
_LANCZOS = Image.Resampling.LANCZOS  # imagehash's ANTIALIAS


def _dct_matrix(n: int, k: int) -> np.ndarray:
    """Rows 0..k-1 of the unnormalised DCT-II matrix used by scipy.fftpack.dct(type=2, norm=None):
    ``y[k] = 2 * sum_n x[n] cos(pi * k * (2n + 1) / (2N))``."""
    kk = np.arange(k, dtype=np.float64)[:, None]
    nn = np.arange(n, dtype=np.float64)[None, :]
    return 2.0 * np.cos(np.pi * kk * (2.0 * nn + 1.0) / (2.0 * n))


_C8 = _dct_matrix(PHASH_SIZE, HASH_SIZE)                 # [8, 32]
_KRON = np.ascontiguousarray(np.kron(_C8, _C8).T)       # [1024, 64]: flat pixels -> flat 8x8 low-frequency DCT
# relative tolerance for "this coefficient may sit on the other side of the median in scipy's FFT"; float64
# round-off of both methods is ~1e-15 of the largest coefficient, so 1e-9 is a wide safety margin that real
# photos practically never hit (those that do are simply recomputed with scipy)
_TIE_RTOL = 1e-9

_BIT_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def _bits_to_u64(bits: np.ndarray) -> np.ndarray:
    """[n, 64] bool (imagehash's row-major order) -> [n] uint64, first bit most significant."""
    packed = np.packbits(np.asarray(bits, dtype=bool).reshape(len(bits), 64), axis=1, bitorder="big")
    return packed.view(">u8").reshape(-1).astype(np.uint64)


def _phash_exact(gray32: np.ndarray) -> np.ndarray:
    """imagehash's own computation for one [32, 32] uint8 thumbnail -> [64] bool."""
    import scipy.fftpack

    dct = scipy.fftpack.dct(scipy.fftpack.dct(gray32, axis=0), axis=1)
    low = dct[:HASH_SIZE, :HASH_SIZE]
    return (low > np.median(low)).reshape(-1)


def phash_batch_gray(gray32: np.ndarray) -> np.ndarray:
    """phash of a batch of 32x32 grayscale thumbnails (``uint8 [n, 32, 32]``, i.e.
    ``np.asarray(im.convert("L").resize((32, 32), LANCZOS))``) -> ``uint64 [n]``."""
    g = np.asarray(gray32)
    if g.ndim != 3 or g.shape[1:] != (PHASH_SIZE, PHASH_SIZE):
        raise ValueError(f"expected [n, {PHASH_SIZE}, {PHASH_SIZE}] thumbnails, got shape {g.shape}")
    n = g.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    coef = g.reshape(n, -1).astype(np.float64) @ _KRON  # [n, 64]
    med = np.median(coef, axis=1, keepdims=True)
    bits = coef > med
    scale = np.abs(coef).max(axis=1, keepdims=True) + 1.0
    near = (np.abs(coef - med) <= _TIE_RTOL * scale).any(axis=1)
    for i in np.flatnonzero(near):
        bits[i] = _phash_exact(g[i])
    return _bits_to_u64(bits)


def dhash_batch_gray(gray9x8: np.ndarray) -> np.ndarray:
    """dhash of a batch of grayscale thumbnails of width 9 and height 8 (``uint8 [n, 8, 9]``, i.e.
    ``np.asarray(im.convert("L").resize((9, 8), LANCZOS))``) -> ``uint64 [n]``. Exact integer comparisons."""
    g = np.asarray(gray9x8)
    if g.ndim != 3 or g.shape[1:] != (HASH_SIZE, HASH_SIZE + 1):
        raise ValueError(f"expected [n, {HASH_SIZE}, {HASH_SIZE + 1}] thumbnails (height 8, width 9), got {g.shape}")
    if g.shape[0] == 0:
        return np.zeros(0, dtype=np.uint64)
    bits = g[:, :, 1:] > g[:, :, :-1]
    return _bits_to_u64(bits.reshape(len(g), -1))


def hash_thumbnails(im: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The two grayscale thumbnails imagehash computes for ``im`` (any mode; ``convert("L")`` then LANCZOS):
    ``uint8 [32, 32]`` for phash and ``uint8 [8, 9]`` for dhash. Cheap to ship between processes."""
    gray = im.convert("L")
    return (np.asarray(gray.resize((PHASH_SIZE, PHASH_SIZE), _LANCZOS), dtype=np.uint8),
            np.asarray(gray.resize((HASH_SIZE + 1, HASH_SIZE), _LANCZOS), dtype=np.uint8))


def phash_dhash(images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """``(phash, dhash)`` as two ``uint64 [n]`` arrays, bit-identical to
    ``int(str(imagehash.phash(im)), 16)`` and ``int(str(imagehash.dhash(im)), 16)``; pass images in their
    original mode (as ``Image.open`` / :func:`auditor.index.decode.open_image` return them)."""
    if len(images) == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    thumbs = [hash_thumbnails(im) for im in images]
    g32 = np.stack([t[0] for t in thumbs])
    g98 = np.stack([t[1] for t in thumbs])
    return phash_batch_gray(g32), dhash_batch_gray(g98)


def hash_to_hex(value) -> str:
    """``uint64`` -> the 16-hex-digit string ``str(imagehash.ImageHash)`` prints."""
    return f"{int(value) & 0xFFFFFFFFFFFFFFFF:016x}"


def hex_to_hash(text: str) -> np.uint64:
    """Inverse of :func:`hash_to_hex` (also accepts ``str(imagehash.phash(im))``)."""
    return np.uint64(int(text, 16))


def hamming(a, b) -> np.ndarray:
    """Bitwise Hamming distance of uint64 hashes, vectorised with numpy broadcasting
    (``hamming(h[:, None], h[None, :])`` is the pairwise matrix). Returns ``uint8`` (0..64)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.bitwise_count(x).astype(np.uint8)


def pixel_sha256(rgb: Image.Image) -> str:
    """SHA-256 of the decoded 8-bit RGB pixels and the shape: the same picture stored as PNG, lossless WebP or
    BMP hashes equal, while any pixel change or a different shape does not. Non-RGB input is converted with
    :func:`auditor.index.decode.to_rgb` first."""
    if rgb.mode != "RGB":
        from .decode import to_rgb

        rgb = to_rgb(rgb)
    w, h = rgb.size
    d = hashlib.sha256(f"RGB8 {w}x{h}\n".encode("ascii"))
    d.update(rgb.tobytes())
    return d.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
