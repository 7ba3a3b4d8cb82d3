"""Copy detectors: is a generated image a copy of a training image, or are many generations one image?

Every detector returns :class:`Detection` records: a score, a verdict and evidence.

``tiled_l2`` (Carlini et al. 2023, "Extracting Training Data from Diffusion Models", Sec. 4): pixels in [0, 1];
both images are split into ``grid x grid`` non-overlapping tiles (4 x 4 tiles of 128 px on a 512 px image in the
paper); each pair of corresponding tiles gets the normalised L2 distance ``sqrt(mean((a - b) ** 2))`` (the L2
norm divided by the square root of the tile's size, so a distance is a per-pixel RMS error); the image distance is
the **maximum** over tiles, so a uniform background cannot hide a differing subject. A generation is
``(l2, delta)``-extracted at ``delta = 0.15``. The generation is resized to the training image's resolution
(capped to ``compare_max_side`` and to the generation's own size); with ``reference_crop="center"`` the training
image is first center-cropped to the generation's aspect ratio, which is how Stable Diffusion's training data was
cropped.

Verdicts (Webster 2023, "A Reproducible Extraction of Training Images from Diffusion Models"):
``verbatim`` when the whole image is within delta, ``template`` when a large share of the tiles (at least
``template_tile_fraction``) is within delta but not all, or the copy descriptor says copy; ``none`` otherwise.

``copy_descriptor`` (Somepalli et al. 2023): cosine similarity between descriptors of the generation and of
the training images, computed with the embedder the index was built with (SSCD when configured; a CLIP
embedder measures semantic rather than copy similarity, so its threshold must be set accordingly).

``consistency`` (Carlini et al. 2023, Sec. 4.2, no reference needed): a graph over the N generations of one
prompt with an edge where the tiled L2 distance is within a threshold; the prompt is memorized when the largest
clique reaches ``k`` (10 of 500 in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from ..registry import Registry

VERDICTS = ("verbatim", "template", "none")


@dataclass
class Detection:
    detector: str
    score: float                      # detector-specific: a distance (lower = closer) or a similarity
    verdict: str                      # verbatim | template | none
    evidence: dict[str, Any] = field(default_factory=dict)


DETECTORS: Registry[type] = Registry("detector")


# --- pixel helpers --------------------------------------------------------------------------------------
def to_float(img: Image.Image) -> np.ndarray:
    """RGB float32 [H, W, 3] in [0, 1]."""
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def center_crop_to_aspect(img: Image.Image, aspect: float) -> Image.Image:
    """The largest centred box of ``img`` with width/height == ``aspect``."""
    w, h = img.size
    if w / h > aspect:
        nw = max(1, int(round(h * aspect)))
        left = (w - nw) // 2
        return img.crop((left, 0, left + nw, h))
    nh = max(1, int(round(w / aspect)))
    top = (h - nh) // 2
    return img.crop((0, top, w, top + nh))


def capped_size(w: int, h: int, max_side: int) -> tuple[int, int]:
    s = min(1.0, max_side / max(w, h))
    return max(1, int(round(w * s))), max(1, int(round(h * s)))


def resize_rgb(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``img`` as RGB at ``size`` (bicubic; unchanged when already that size)."""
    img = img.convert("RGB")
    return img if img.size == size else img.resize(size, Image.BICUBIC, reducing_gap=3.0)


_resize = resize_rgb


def prepared_reference(ref: Image.Image, gen_size: tuple[int, int], reference_crop: str,
                       max_side: int) -> tuple[Image.Image, np.ndarray, tuple[int, int]]:
    """(the RGB training image, centre-cropped to the generation's aspect when ``reference_crop`` is "center";
    its float pixels at the compared size; that size), as every pixel signal compares it with a generation.

    The compared size is the training image's, capped to ``max_side`` and to the generation's longer side: a
    generation is never upsampled past the resolution the model made it at (Carlini et al. compare at the
    model's 512 px). Measured on the lab's 32-px model (``benchmarks/bench_probe_recall.py``, BENCHMARKS.md
    section 10): compared at the 256-px training photos, a 50x group's best generation sat at tiled L2 0.155 (0.126
    at 32 px) and was missed, a 200x group's at 0.182 (0.092): the upsampled copy lacks detail it never had."""
    r = ref.convert("RGB")
    if reference_crop == "center":
        r = center_crop_to_aspect(r, gen_size[0] / gen_size[1])
    size = capped_size(*r.size, min(int(max_side), max(gen_size)))
    return r, to_float(resize_rgb(r, size)), size


def tile_bounds(n: int, grid: int) -> np.ndarray:
    return np.linspace(0, n, grid + 1).round().astype(int)


def tile_distances(a: np.ndarray, b: np.ndarray, grid: int = 4) -> np.ndarray:
    """Per-tile normalised L2 distance (RMS over the tile's pixels and channels), row-major, ``grid*grid``."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    sq = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    hs, ws = tile_bounds(a.shape[0], grid), tile_bounds(a.shape[1], grid)
    out = np.empty(grid * grid, dtype=np.float64)
    for i in range(grid):
        for j in range(grid):
            t = sq[hs[i]:hs[i + 1], ws[j]:ws[j + 1]]
            out[i * grid + j] = np.sqrt(t.mean()) if t.size else 0.0
    return out


def tiled_l2(a: np.ndarray, b: np.ndarray, grid: int = 4) -> float:
    """Carlini et al.'s tiled L2: max over corresponding tiles of the per-tile normalised L2 distance."""
    return float(tile_distances(a, b, grid).max())


def classify_tiles(tiles: np.ndarray, delta: float, template_fraction: float) -> str:
    within = tiles <= delta
    if within.all():
        return "verbatim"
    if within.mean() >= template_fraction:
        return "template"
    return "none"


def pairwise_tiled_l2(images: Sequence[Image.Image], grid: int = 4, max_side: int = 512) -> np.ndarray:
    """Symmetric [N, N] tiled-L2 distances between generations (resized to the first one's size, capped)."""
    n = len(images)
    if n == 0:
        return np.zeros((0, 0))
    size = capped_size(*images[0].size, max_side)
    x = np.stack([to_float(_resize(im, size)) for im in images])  # [N, H, W, 3]
    hs, ws = tile_bounds(size[1], grid), tile_bounds(size[0], grid)
    best = np.zeros((n, n))
    for i in range(grid):
        for j in range(grid):
            t = x[:, hs[i]:hs[i + 1], ws[j]:ws[j + 1]].reshape(n, -1).astype(np.float64)
            if t.shape[1] == 0:
                continue
            sq = (t * t).sum(1)
            d2 = sq[:, None] + sq[None, :] - 2.0 * (t @ t.T)
            d = np.sqrt(np.clip(d2, 0, None) / t.shape[1])
            np.maximum(best, d, out=best)
    np.fill_diagonal(best, 0.0)
    return best


def largest_clique(dist: np.ndarray, threshold: float, max_cliques: int = 200_000) -> list[int]:
    """Largest set of generations that are pairwise within ``threshold`` (exact via networkx's maximal-clique
    enumeration; greedy fallback after ``max_cliques`` maximal cliques). Ties: the lexicographically first."""
    import networkx as nx

    n = dist.shape[0]
    if n == 0:
        return []
    g = nx.Graph()
    g.add_nodes_from(range(n))
    iu = np.triu_indices(n, 1)
    close = dist[iu] <= threshold
    g.add_edges_from(zip(iu[0][close].tolist(), iu[1][close].tolist()))
    best: list[int] = [0]
    for count, c in enumerate(nx.find_cliques(g)):
        c = sorted(c)
        if len(c) > len(best) or (len(c) == len(best) and c < best):
            best = c
        if count >= max_cliques:  # pathological graph: fall back to a greedy clique from each node
            for v in range(n):
                cl = [v]
                for u in sorted(g.neighbors(v), key=lambda u: -g.degree(u)):
                    if all(g.has_edge(u, w) for w in cl):
                        cl.append(u)
                if len(cl) > len(best):
                    best = sorted(cl)
            break
    return best


# --- reference-based detectors ---------------------------------------------------------------------------
@DETECTORS.register("tiled_l2")
class TiledL2Detector:
    """Generation vs each training image of the caption's cluster; keeps the closest."""

    name = "tiled_l2"

    def __init__(self, delta: float = 0.15, grid: int = 4, template_fraction: float = 0.5,
                 max_side: int = 512, reference_crop: str = "center"):
        self.delta = float(delta)
        self.grid = int(grid)
        self.template_fraction = float(template_fraction)
        self.max_side = int(max_side)
        self.reference_crop = reference_crop
        self._cache: dict[tuple, tuple[np.ndarray, tuple[int, int]]] = {}

    def _reference(self, ref: Image.Image, ref_id: Any, gen_size: tuple[int, int]):
        key = (ref_id, gen_size)
        hit = self._cache.get(key) if ref_id is not None else None
        if hit is None:
            _, arr, size = prepared_reference(ref, gen_size, self.reference_crop, self.max_side)
            hit = (arr, size)
            if ref_id is not None:
                if len(self._cache) > 256:
                    self._cache.clear()
                self._cache[key] = hit
        return hit

    def compare(self, gen: Image.Image, refs: Sequence[Image.Image], ref_ids: Optional[Sequence[Any]] = None
                ) -> Detection:
        """Score = the smallest tiled L2 over the references (inf when there are none). ``ref_ids`` (unique,
        stable ids such as (key, shard)) let prepared references be cached across calls."""
        ref_ids = list(ref_ids) if ref_ids is not None else [None] * len(refs)
        best = Detection(self.name, float("inf"), "none", {"ref_index": -1, "tile_fraction": 0.0})
        best_frac = 0.0
        for i, (ref, rid) in enumerate(zip(refs, ref_ids)):
            b, size = self._reference(ref, rid, gen.size)
            a = to_float(_resize(gen, size))
            tiles = tile_distances(a, b, self.grid)
            d = float(tiles.max())
            frac = float((tiles <= self.delta).mean())
            best_frac = max(best_frac, frac)
            if d < best.score:
                best = Detection(self.name, d, "none", {"ref_index": i, "tile_fraction": frac,
                                                         "tiles": tiles.round(4).tolist()})
        best.evidence["max_tile_fraction"] = best_frac
        if best.score <= self.delta:
            best.verdict = "verbatim"
        elif best_frac >= self.template_fraction:
            best.verdict = "template"
        return best


@DETECTORS.register("copy_descriptor")
class CopyDescriptorDetector:
    """Cosine similarity of copy descriptors (e.g. SSCD) between generations and training images."""

    name = "copy_descriptor"

    def __init__(self, embed_fn, threshold: float = 0.5, describe: Optional[dict] = None):
        self.embed_fn = embed_fn  # list[PIL] -> float [n, dim], L2-normalised
        self.threshold = float(threshold)
        self.describe = describe or {}

    @classmethod
    def from_index(cls, store, threshold: float = 0.5, device: str = "auto") -> Optional["CopyDescriptorDetector"]:
        """Build the index's own embedder (None when the index has none)."""
        embedder = store.build_embedder(device, verify=False)
        if embedder is None:
            return None

        def embed_fn(images: Sequence[Image.Image]) -> np.ndarray:
            if not images:
                return np.zeros((0, int(embedder.dim)), dtype=np.float32)
            out = np.asarray(embedder.embed_images([im.convert("RGB") for im in images]), dtype=np.float32)
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

        return cls(embed_fn, threshold, describe=dict(store.embedder))

    def similarities(self, gen_emb: np.ndarray, ref_emb: np.ndarray) -> np.ndarray:
        """[n_gen, n_ref] cosine similarities."""
        if gen_emb.size == 0 or ref_emb.size == 0:
            return np.zeros((len(gen_emb), len(ref_emb)), dtype=np.float32)
        r = ref_emb.astype(np.float32)
        r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
        return gen_emb.astype(np.float32) @ r.T

    def compare_embedded(self, gen_emb: np.ndarray, ref_emb: np.ndarray) -> list[Detection]:
        sims = self.similarities(gen_emb, ref_emb)
        out = []
        for row in sims:
            if row.size == 0:
                out.append(Detection(self.name, float("nan"), "none", {"ref_index": -1}))
                continue
            j = int(np.argmax(row))
            s = float(row[j])
            out.append(Detection(self.name, s, "template" if s >= self.threshold else "none", {"ref_index": j}))
        return out

    def compare(self, gens: Sequence[Image.Image], refs: Sequence[Image.Image]) -> list[Detection]:
        return self.compare_embedded(self.embed_fn(list(gens)), self.embed_fn(list(refs)))


@DETECTORS.register("consistency")
class ConsistencyDetector:
    """No reference: memorized when >= k generations of one prompt are pairwise within ``threshold``."""

    name = "consistency"

    def __init__(self, threshold: float = 0.15, k: int = 10, grid: int = 4, max_side: int = 512):
        self.threshold = float(threshold)
        self.k = int(k)
        self.grid = int(grid)
        self.max_side = int(max_side)

    def distances(self, gens: Sequence[Image.Image]) -> np.ndarray:
        return pairwise_tiled_l2(gens, self.grid, self.max_side)

    def detect(self, gens: Sequence[Image.Image], dist: Optional[np.ndarray] = None) -> Detection:
        dist = self.distances(gens) if dist is None else dist
        clique = largest_clique(dist, self.threshold)
        size = len(clique) if len(gens) else 0
        verdict = "template" if size >= self.k else "none"  # a copy with no training image to show
        return Detection(self.name, float(size), verdict, {"clique": clique, "n": len(gens),
                                                            "threshold": self.threshold})


def calibrate_threshold(null_scores: Sequence[float], fpr: float, higher_is_positive: bool = True) -> float:
    """Threshold with at most ``fpr`` of the null (non-memorized) scores on the positive side.
    ``higher_is_positive``: flag scores > threshold (white-box magnitudes); else flag scores < threshold
    (distances)."""
    x = np.sort(np.asarray([s for s in null_scores if np.isfinite(s)], dtype=np.float64))
    if x.size == 0:
        raise ValueError("no calibration scores")
    if higher_is_positive:
        return float(np.quantile(x, 1.0 - fpr, method="higher"))
    return float(np.quantile(x, fpr, method="lower"))
