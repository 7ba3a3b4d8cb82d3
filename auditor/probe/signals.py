"""The copy signals of one generation against one training image, the evidence the fused verdict
(:mod:`auditor.probe.fusion`) decides on.

Both images are compared as the tiled-L2 detector does: the training image center-cropped to the generation's
aspect (``reference_crop="center"``), the generation resized to it, capped to ``compare_max_side`` and to the
generation's own size (:func:`auditor.probe.detectors.prepared_reference`).

- ``tiled_l2`` / ``tile_fraction``: Carlini et al.'s max over ``tile_grid x tile_grid`` tiles, and the share of
  those tiles within delta (the old verbatim / template rule, kept as evidence).
- ``trimmed_l2``: the same per-tile RMS error on a finer ``fine_grid x fine_grid`` grid, after dropping the worst
  ``outlier_share`` of the cells (also on the generation's flip / rotation the pHash finds closest): a badge, a
  watermark or a caption strip over one tile of 4 x 4 (1/16 of the image) no longer decides, while a different
  photo pasted over 20 % of the image still does. Measured on 20 imagenet-256 photos
  (``benchmarks/bench_probe_accuracy.py``): overlay + JPEG q30-60 copies 0.02-0.05 with an 8 x 8 grid and share
  0.125 (their 4 x 4 max-over-tiles: 0.16-0.39), unrelated photos 0.24-0.65.
- ``match_share``: the share of the fine cells within ``match_delta`` (0.075: the training image's own pixels,
  JPEG-compressed, are within 0.02-0.05; at 0.15 half the cells of two unrelated smooth photos matched by chance).
- ``phash_distance``: Hamming distance of the 64-bit pHashes (imagehash-identical), under the best of the identity,
  the flips and the 90-degree rotations (:func:`auditor.index.dihedral.hamming_dihedral`).
- ``layout_similarity``: Pearson correlation of the two images' ``layout_grid x layout_grid`` grey box means
  (low-frequency structure: the same room with another rug, the same mock-up with another print). 8 x 8 separated
  best on the constructed cases (``layout`` kind min 0.57, unrelated photos max 0.51; 16 x 16: 0.40 vs 0.45).
- ``copy_similarity``: the copy descriptor's cosine (set by the caller, who batches the embedder).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from ..index.dihedral import DIHEDRAL, hamming_dihedral, hash_columns
from ..index.hashing import hash_thumbnails
from .detectors import prepared_reference, resize_rgb, tile_bounds, tile_distances, to_float


@dataclass
class PairSignals:
    """Every signal of one (generation, training image) pair; distances lower = closer, similarities higher."""

    tiled_l2: float
    tile_fraction: float
    trimmed_l2: float
    match_share: float
    phash_distance: int
    layout_similarity: float
    copy_similarity: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def box_means(gray: np.ndarray, grid: int) -> np.ndarray:
    """``grid x grid`` means of a 2-D array over :func:`tile_bounds` cells (cells of unequal size allowed)."""
    hs, ws = tile_bounds(gray.shape[0], grid), tile_bounds(gray.shape[1], grid)
    c = np.cumsum(np.cumsum(np.pad(gray.astype(np.float64), ((1, 0), (1, 0))), 0), 1)
    s = c[hs[1:]][:, ws[1:]] - c[hs[:-1]][:, ws[1:]] - c[hs[1:]][:, ws[:-1]] + c[hs[:-1]][:, ws[:-1]]
    area = np.maximum(np.diff(hs)[:, None] * np.diff(ws)[None, :], 1)
    return s / area


def layout_vector(rgb: np.ndarray, grid: int = 8) -> np.ndarray:
    """Zero-mean, unit-norm ``grid * grid`` vector of the grey box means of an RGB float image; the dot product
    of two is their Pearson correlation (0 for a flat image)."""
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    v = box_means(gray, grid).ravel()
    v = v - v.mean()
    n = np.linalg.norm(v)
    return v / n if n > 1e-9 else np.zeros_like(v)


def trimmed(tiles: np.ndarray, outlier_share: float) -> float:
    """The largest cell distance once the worst ``floor(outlier_share * n)`` cells are dropped."""
    t = np.sort(tiles)
    k = int(np.floor(outlier_share * len(t) + 1e-9))
    return float(t[max(0, len(t) - 1 - k)])


def image_hashes(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(pHash ``uint64 [1]``, its 7 flips/rotations ``uint64 [1, 7]``) of an image."""
    c = hash_columns([hash_thumbnails(img)])
    return c["phash"], c["phash_dihedral"]


def phash_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> int:
    """Hamming distance of two :func:`image_hashes` under the best flip or rotation (identity included)."""
    plain = bin(int(a[0][0]) ^ int(b[0][0])).count("1")
    return int(min(plain, int(hamming_dihedral(a[0], a[1], b[0], b[1])[0])))


class SignalComputer:
    """Signals of generations against training images; prepared training images are cached by id."""

    def __init__(self, delta: float = 0.15, tile_grid: int = 4, fine_grid: int = 8, outlier_share: float = 0.125,
                 layout_grid: int = 8, max_side: int = 512, reference_crop: str = "center",
                 match_delta: float = 0.075):
        self.delta = float(delta)
        self.match_delta = float(match_delta)
        self.tile_grid, self.fine_grid = int(tile_grid), int(fine_grid)
        self.outlier_share = float(outlier_share)
        self.layout_grid = int(layout_grid)
        self.max_side = int(max_side)
        self.reference_crop = reference_crop
        self._cache: dict[tuple, tuple] = {}

    def prepare(self, ref: Image.Image, ref_id: Any, gen_size: tuple[int, int]) -> tuple:
        """(float pixels, compared size, hashes, layout vector) of a training image for generations of
        ``gen_size``."""
        key = (ref_id, gen_size)
        hit = self._cache.get(key) if ref_id is not None else None
        if hit is None:
            r, arr, size = prepared_reference(ref, gen_size, self.reference_crop, self.max_side)
            hit = (arr, size, image_hashes(r), layout_vector(arr, self.layout_grid))
            if ref_id is not None:
                if len(self._cache) > 256:
                    self._cache.clear()
                self._cache[key] = hit
        return hit

    def compare(self, gen: Image.Image, refs: Sequence[Image.Image],
                ref_ids: Optional[Sequence[Any]] = None) -> list[PairSignals]:
        """One :class:`PairSignals` per training image (``copy_similarity`` left NaN). When the pHash says a flip
        or a 90-degree rotation of the generation is closer than the generation itself, the outlier-tolerant
        tile rule is also measured on that transform (a mirrored copy is a copy)."""
        ref_ids = list(ref_ids) if ref_ids is not None else [None] * len(refs)
        gh = image_hashes(gen)
        out, scaled = [], {}
        for ref, rid in zip(refs, ref_ids):
            b, size, rh, rl = self.prepare(ref, rid, gen.size)
            if size not in scaled:
                a = to_float(resize_rgb(gen, size))
                scaled[size] = (a, layout_vector(a, self.layout_grid))
            a, gl = scaled[size]
            coarse = tile_distances(a, b, self.tile_grid)
            fine = tile_distances(a, b, self.fine_grid)
            trim = trimmed(fine, self.outlier_share)
            plain = bin(int(gh[0][0]) ^ int(rh[0][0])).count("1")
            per_t = [bin(int(v) ^ int(rh[0][0])).count("1") for v in gh[1][0]]
            k = int(np.argmin(per_t))
            if per_t[k] < plain and trim > self.delta:
                t = to_float(resize_rgb(gen.transpose(getattr(Image.Transpose, DIHEDRAL[k].upper())), size))
                trim = min(trim, trimmed(tile_distances(t, b, self.fine_grid), self.outlier_share))
            out.append(PairSignals(
                tiled_l2=float(coarse.max()), tile_fraction=float((coarse <= self.delta).mean()),
                trimmed_l2=trim, match_share=float((fine <= self.match_delta).mean()),
                phash_distance=phash_distance(gh, rh), layout_similarity=float(np.dot(gl, rl))))
        return out
