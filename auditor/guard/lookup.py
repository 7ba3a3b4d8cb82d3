"""The guard's lookup: nearest training images (pHash fast path, then the index's embedder + faiss) and a verdict."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from ..index.decode_bounds import DEFAULT_CPU_BUDGET_S, DEFAULT_MAX_JPEG_SCANS
from ..rundir import RunDir
from .config import GuardConfig

log = logging.getLogger(__name__)

COPY, NEAR, OK, ERROR = "copy", "near", "ok", "error"
RANK = {COPY: 0, NEAR: 1, OK: 2}
ImageInput = Union[bytes, bytearray, str, Path, "Image.Image"]  # noqa: F821


@dataclass
class Match:
    key: str
    shard: str
    verdict: str
    phash_distance: Optional[int] = None
    cosine: Optional[float] = None


@dataclass
class GuardResult:
    verdict: str                                  # copy | near | ok | error
    matches: list[Match] = field(default_factory=list)  # nearest first (copies, then near, then the rest)
    phash_distance: Optional[int] = None          # the smallest pHash distance to a training image, when it is
    #                                               within near_phash_distance (None: no training image that close)
    cosine: Optional[float] = None                # the largest embedding cosine similarity
    reason: str = ""                              # which signal decided: phash | embedding | ''
    error: Optional[str] = None
    source: Optional[str] = None                  # the file name, when checked from a path

    def to_dict(self) -> dict:
        return asdict(self)


class GuardSetupError(RuntimeError):
    """The run folder cannot back a guard (no index, embedder mismatch, ...)."""


class Guard:
    """Nearest training images for generated images. Thread-safe: one instance serves concurrent requests."""

    def __init__(self, run_dir: str | Path, cfg: Optional[GuardConfig] = None, device: Optional[str] = None,
                 progress: bool = False):
        from ..index.store import IndexStore

        self.cfg = cfg or GuardConfig()
        self.run_dir = Path(run_dir)
        try:
            self.store = IndexStore(self.run_dir)
        except FileNotFoundError as exc:
            raise GuardSetupError(str(exc)) from None
        self.device = device
        self.progress = progress
        info = self.store.info
        decode = (info.get("config") or {}).get("decode") or {}
        self.max_pixels = int(self.cfg.max_pixels or decode.get("max_pixels") or 89_478_485)
        self.max_bytes = int(decode.get("max_bytes") or 64 * 1024 * 1024)
        # the index's scan cap and per-image CPU budget (an index older than them: the decoder's defaults)
        self.max_jpeg_scans = int(decode.get("max_jpeg_scans") or DEFAULT_MAX_JPEG_SCANS)
        self.cpu_budget_s = float(decode.get("cpu_budget_s") or DEFAULT_CPU_BUDGET_S)
        self._lock = threading.Lock()
        self._embedder = None
        self._faiss = None
        self._phash_index = None
        self._build_lock = threading.Lock()
        self._load_base()

    # --- the searchable base -------------------------------------------------------------------------
    def _load_base(self) -> None:
        """``self.keys``/``self.shards``/``self.phash`` (aligned) and where embeddings come from."""
        import pandas as pd

        run = RunDir(self.run_dir)
        d = run.dedup
        ids_p, ph_p, fa_p = run.search_ids, run.group_phash, run.search_index
        table = self.store.table(columns=["key", "shard", "phash", "pixel_blake3", "sha256"])
        self.n_indexed = len(table)
        self.has_embeddings = self.store.has_embeddings
        self.source = "index"
        if ids_p.exists() and ph_p.exists() and (fa_p.exists() or not self.has_embeddings):
            try:
                ids = pd.read_parquet(ids_p)
                ph = np.load(ph_p, allow_pickle=False)
                from ..dedup.rules import pixel_groups

                # dedup searched one row per pixel group of the index: the same groups, or it is stale
                fresh = (len(ids) == len(ph)
                         and set(ids["pixel_group"].astype(str)) == set(pixel_groups(table).astype(str)))
                if fresh:
                    self.keys = ids["key"].astype(str).to_numpy()
                    self.shards = ids["shard"].astype(str).to_numpy()
                    self.phash = np.ascontiguousarray(ph, dtype=np.uint64)
                    self._faiss_path = fa_p if self.has_embeddings else None
                    self.source = "dedup"
                    return
                log.warning("guard: %s does not match the index (dedup is older than the index); "
                            "searching the index directly", d)
            except Exception as exc:  # noqa: BLE001 - fall back to the index itself
                log.warning("guard: cannot use %s (%s); searching the index directly", d, exc)
        self.keys = table["key"].astype(str).to_numpy()
        self.shards = table["shard"].astype(str).to_numpy()
        self.phash = np.ascontiguousarray(table["phash"].to_numpy(np.uint64))
        self._faiss_path = None

    @property
    def faiss_index(self):
        if self._faiss is None and self.has_embeddings:
            from ..dedup.search import build_search_index, load_search_index

            if self._faiss_path is not None:
                log.info("guard: loading %s", self._faiss_path)
                self._faiss = load_search_index(self._faiss_path)
                if self._faiss.ntotal != len(self.keys):
                    raise GuardSetupError(f"{self._faiss_path} has {self._faiss.ntotal} rows, "
                                          f"search_ids.parquet {len(self.keys)}")
            else:  # one faiss call: minutes for millions of rows, so say so first
                log.info("guard: building a search index over %d embeddings (no current dedup/embeddings.faiss)",
                         len(self.keys))
                self._faiss = build_search_index(self.store.embeddings(), method="auto")
        return self._faiss

    @property
    def embedder(self):
        """The index's embedder, rebuilt from index.json; refused if its weights differ from the index's."""
        if self._embedder is None and self.has_embeddings:
            from ..index.store import EmbedderMismatch

            try:
                emb = self.store.build_embedder(self.device, verify=True)
            except EmbedderMismatch as exc:
                raise GuardSetupError(str(exc)) from None
            self._embedder = emb
        return self._embedder

    def warm_up(self) -> "Guard":
        """Load the embedder and the search indexes now (a server does this before accepting requests)."""
        _ = self.embedder, self.faiss_index, self.phash_index
        return self

    # --- checking -----------------------------------------------------------------------------------
    def _decode(self, item: ImageInput):
        """(image in its original mode for hashing, RGB image for embedding)."""
        from PIL import Image

        from ..index.decode import CpuBudget, open_image, rgb_array, to_rgb

        if isinstance(item, Image.Image):
            return item, to_rgb(item)
        if isinstance(item, (str, Path)):
            p = Path(item)
            if p.stat().st_size > self.max_bytes:
                raise ValueError(f"{p} is larger than {self.max_bytes} bytes")
            item = p.read_bytes()
        budget = CpuBudget(self.cpu_budget_s)  # per image, on this request thread's CPU time
        im = open_image(bytes(item), max_pixels=self.max_pixels, max_bytes=self.max_bytes,
                        max_jpeg_scans=self.max_jpeg_scans, budget=budget)
        rgb = im if im.mode == "RGB" else Image.fromarray(rgb_array(im, budget), mode="RGB")
        budget.check()
        return im, rgb

    def _verdict(self, dist: Optional[int], cos: Optional[float]) -> tuple[str, str]:
        c = self.cfg
        if dist is not None and dist <= c.copy_phash_distance:
            return COPY, "phash"
        if cos is not None and cos >= c.copy_cosine:
            return COPY, "embedding"
        if dist is not None and dist <= c.near_phash_distance:
            return NEAR, "phash"
        if cos is not None and cos >= c.near_cosine:
            return NEAR, "embedding"
        return OK, ""

    @property
    def phash_index(self):
        """The exact pHash radius index over the stored pHashes (multi-index hashing,
        :class:`~auditor.dedup.search.mih.MultiIndexHash`, at ``near_phash_distance``), built once on first use."""
        if self._phash_index is None:
            from ..dedup.search.mih import MultiIndexHash

            with self._build_lock:
                if self._phash_index is None:
                    self._phash_index = MultiIndexHash(self.phash, radius=self.cfg.near_phash_distance)
        return self._phash_index

    def phash_neighbours(self, q: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query pHash (uint64): ``(rows, distances)`` of the ``k`` nearest stored pHashes within
        ``near_phash_distance``, nearest first, ties by row; exactly a brute-force XOR + popcount scan's answer
        at that radius. Farther pHashes decide no verdict, and leaving them out is what makes the lookup
        sub-linear: at 1M stored pHashes a query reads a few thousand of them, not all (BENCHMARKS.md section 7).

        Example:
            >>> g = Guard.__new__(Guard); g.cfg = GuardConfig(copy_phash_distance=0, near_phash_distance=1)
            >>> g.phash, g._phash_index, g._build_lock = np.array([0, 1, 7], np.uint64), None, threading.Lock()
            >>> [(r.tolist(), d.tolist()) for r, d in g.phash_neighbours(np.array([0], np.uint64), k=5)]
            [([0, 1], [0, 1])]
        """
        if len(self.phash) == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.int64)) for _ in range(len(q))]
        return self.phash_index.search(np.asarray(q, dtype=np.uint64), k)

    def check(self, images: Iterable[ImageInput]) -> list[GuardResult]:
        """One :class:`GuardResult` per image, in order. Images: encoded bytes, file paths or PIL images.
        A bad image gives an ``error`` result; it never raises for one."""
        from ..index.hashing import phash_dhash

        items = list(images)
        results: list[Optional[GuardResult]] = [None] * len(items)
        originals, rgbs, idx = [], [], []
        for i, item in enumerate(items):
            src = str(item) if isinstance(item, (str, Path)) else None
            try:
                o, rgb = self._decode(item)
            except Exception as exc:  # noqa: BLE001 - recorded in the result
                results[i] = GuardResult(ERROR, error=f"{type(exc).__name__}: {exc}", source=src)
                continue
            originals.append(o)
            rgbs.append(rgb)
            idx.append((i, src))
        if not idx:
            return results  # type: ignore[return-value]
        k = self.cfg.top_k
        ph, _ = phash_dhash(originals)
        flat = [float(np.asarray(o.convert("L"), dtype=np.float32).std()) < self.cfg.min_pixel_std for o in originals]
        ph_nn = self.phash_neighbours(ph, k)
        sims = ids = None
        if self.has_embeddings and len(self.keys):
            with self._lock:  # torch / onnxruntime / faiss calls from one thread at a time
                from ..dedup.search import query_index

                vec = self.embedder.embed_images(rgbs)
                sims, ids = query_index(self.faiss_index, vec, min(k, len(self.keys)))
        for j, (i, src) in enumerate(idx):
            cand: dict[int, list] = {}
            if not flat[j]:
                for row, d in zip(*ph_nn[j]):
                    cand.setdefault(int(row), [None, None])[0] = int(d)
            if sims is not None:
                for row, s in zip(ids[j], sims[j]):
                    if row >= 0:
                        cand.setdefault(int(row), [None, None])[1] = float(s)
            matches = []
            for row, (d, s) in cand.items():
                v, _ = self._verdict(d, s)
                matches.append(Match(self.keys[row], self.shards[row], v, d, s))
            matches.sort(key=lambda m: (RANK[m.verdict], -(m.cosine if m.cosine is not None else -2.0),
                                        m.phash_distance if m.phash_distance is not None else 65, m.shard, m.key))
            best_d = min((m.phash_distance for m in matches if m.phash_distance is not None), default=None)
            best_s = max((m.cosine for m in matches if m.cosine is not None), default=None)
            verdict, reason = self._verdict(best_d, best_s)
            results[i] = GuardResult(verdict, matches[:k], best_d, best_s, reason, source=src)
        return results  # type: ignore[return-value]
