"""The report's images: training thumbnails read through the index's reader, the probe's generations and
evidence files, all decoded by the index's safe decoder and inlined as ``data:`` URIs.

Every image is shown in a box of ``thumbnail_px`` (its longest side), whatever its native size, so that a
32-px generation sits beside its training image at the same display size and the two can be compared by eye.
Larger images are shrunk with LANCZOS (JPEG); smaller ones are enlarged with **nearest-neighbour** (PNG, and
``image-rendering: pixelated`` in the page), never smoothed: a blurred enlargement would hide exactly the
pixel-level agreement a copy shows. The native size is kept with each image and printed under it.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from tqdm.auto import tqdm

from ..rundir import RunDir

MAX_EVIDENCE_BYTES = 64 * 1024 * 1024
MAX_EVIDENCE_PIXELS = 89_478_485
EVIDENCE_GAP_PX = 8      # the probe writes evidence pairs as generation | 8 px | training image (probe/runner.py)
MAX_DISPLAY_WIDTH = 1120  # the page's content width: wider evidence strips are shown smaller


def data_uri(png_or_jpeg: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(png_or_jpeg).decode('ascii')}"


def decode(data: bytes, max_pixels: int):
    """RGB PIL image through the index's own safe decoder (format whitelist, pixel limit checked from the
    header before decoding, the same orientation and alpha handling as what was hashed)."""
    from ..index.decode import decode_rgb

    return decode_rgb(data, max_pixels=max_pixels, max_bytes=MAX_EVIDENCE_BYTES)


def display_size(w: int, h: int, box: float) -> tuple[int, int]:
    """``(w, h)`` scaled so that the longest side is ``box`` (up or down), at least 1 px each.

    Example:
        ```python
        display_size(32, 32, 160)    # (160, 160)
        display_size(768, 512, 160)  # (160, 107)
        ```
    """
    s = float(box) / max(w, h, 1)
    return max(1, round(w * s)), max(1, round(h * s))


def shown_image(img, size: tuple[int, int], quality: int) -> dict:
    """``img`` at ``size`` as a data URI: LANCZOS + JPEG when it shrinks, nearest-neighbour + PNG when it grows
    (every source pixel stays a sharp block). Deterministic for the same pixels.

    Example:
        ```python
        from PIL import Image
        shown = shown_image(Image.new("RGB", (32, 32)), (160, 160), 80)
        shown["upscaled"], shown["uri"][:22]   # (True, 'data:image/png;base64,')
        ```
    """
    from PIL import Image

    im = img.convert("RGB")
    native = im.size
    up = size[0] > native[0] or size[1] > native[1]
    buf = io.BytesIO()
    if up:
        im = im.resize(size, Image.Resampling.NEAREST)
        im.save(buf, format="PNG", optimize=False)
        mime = "image/png"
    else:
        if size != native:
            im = im.resize(size, Image.Resampling.LANCZOS)
        im.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
        mime = "image/jpeg"
    return {"uri": data_uri(buf.getvalue(), mime), "native": native, "display": size, "upscaled": up,
            "factor": size[0] / max(1, native[0])}


def thumbnail_uri(img, px: int, quality: int) -> str:
    """A thumbnail whose longest side is ``px`` (shrunk with LANCZOS, or enlarged with nearest-neighbour)."""
    return shown_image(img, display_size(*img.size, px), quality)["uri"]


def fetch_training_images(store, wanted: Iterable[tuple[str, str]], progress: bool = True
                          ) -> dict[tuple[str, str], Any]:
    """Bytes of the training images ``(shard, key)`` (or the exception that prevented each):
    :meth:`auditor.index.store.IndexStore.fetch_bytes`, the index's one image-loading path."""
    return store.fetch_bytes(wanted, progress=progress, desc="report: training images")


def safe_probe_file(run_dir: Path, rel: str) -> Path:
    """Resolve a path stored in the probe tables (relative to RUN_DIR, as the probe writes them; a path relative
    to RUN_DIR/probe is accepted too). It must stay inside RUN_DIR/probe: a hostile run folder must not make
    the report inline arbitrary local files."""
    base = RunDir(run_dir).probe.resolve()
    rel = str(rel)
    if not rel:
        raise FileNotFoundError("no image (the generation failed)")
    candidates = [(Path(run_dir) / rel).resolve(), (base / rel).resolve()]
    inside = [p for p in candidates if p.is_relative_to(base)]
    if not inside:
        raise ValueError(f"path {rel!r} leaves the probe folder")
    p = next((c for c in inside if c.is_file()), None)
    if p is None:
        raise FileNotFoundError(f"{rel} does not exist")
    if p.stat().st_size > MAX_EVIDENCE_BYTES:
        raise ValueError(f"{rel} is larger than {MAX_EVIDENCE_BYTES} bytes")
    return p


def _evidence_size(w: int, h: int, px: int, pair: bool) -> tuple[int, int]:
    """An evidence pair (``<variant>_seed<s>_vs_<key>.png``: generation | 8 px | training image, both halves the
    same size, as probe/runner.py writes it) is scaled so that each half fills the ``px`` box like the
    thumbnails beside it; other evidence (a strip of consistent generations) so that its height does. Never
    wider than the page."""
    half = (w - EVIDENCE_GAP_PX) / 2 if pair else 0
    s = px / max(h, half, 1)
    s = min(s, MAX_DISPLAY_WIDTH / max(w, 1))
    return max(1, round(w * s)), max(1, round(h * s))


class ImageSlots:
    """Collects the images the report needs (as dicts the template reads), then loads them in one pass.

    A slot holds ``uri`` (or ``error``), ``native`` and ``display`` sizes and ``upscaled``.
    """

    def __init__(self, run_dir: Path, store, px: int, quality: int, progress: bool = True):
        self.run_dir, self.store = Path(run_dir), store
        self.px, self.quality, self.progress = int(px), int(quality), progress
        self.train: dict[tuple[str, str], dict] = {}
        self.files: dict[str, dict] = {}

    @staticmethod
    def _slot(**kw) -> dict:
        return {"uri": None, "error": None, "native": None, "display": None, "upscaled": False, **kw}

    def training(self, shard: Any, key: Any) -> dict:
        k = (str(shard), str(key))
        return self.train.setdefault(k, self._slot(key=k[1], shard=k[0]))

    def generation(self, rel: Any, evidence: bool = False) -> dict:
        rel = "" if rel is None or (isinstance(rel, float) and pd.isna(rel)) else str(rel)
        name = rel.replace("\\", "/").rsplit("/", 1)[-1]
        return self.files.setdefault(f"{int(evidence)}:{rel}", self._slot(path=rel, name=name, evidence=evidence))

    def _fill(self, slot: dict, img, size: tuple[int, int]) -> None:
        slot.update(shown_image(img, size, self.quality))

    def load(self) -> None:
        if self.train:
            if self.store is None:
                for slot in self.train.values():
                    slot["error"] = "no index in this run"
            else:
                max_pixels = int(((self.store.info.get("config") or {}).get("decode") or {}).get("max_pixels")
                                 or MAX_EVIDENCE_PIXELS)
                got = fetch_training_images(self.store, self.train.keys(), self.progress)
                for k, slot in tqdm(sorted(self.train.items()), desc="report: thumbnails", unit="image",
                                    disable=not self.progress):
                    v = got.get(k)
                    if isinstance(v, (bytes, bytearray)):
                        try:
                            img = decode(bytes(v), max_pixels)
                            self._fill(slot, img, display_size(*img.size, self.px))
                        except Exception as exc:
                            slot["error"] = f"undecodable: {type(exc).__name__}: {exc}"
                    else:
                        slot["error"] = f"unavailable: {v}"
        for _, slot in tqdm(sorted(self.files.items()), desc="report: generations", unit="image",
                            disable=not self.progress):
            try:
                p = safe_probe_file(self.run_dir, slot["path"])
                img = decode(p.read_bytes(), MAX_EVIDENCE_PIXELS)
                size = (_evidence_size(*img.size, self.px, "_vs_" in slot["name"]) if slot["evidence"]
                        else display_size(*img.size, self.px))
                self._fill(slot, img, size)
            except Exception as exc:
                slot["error"] = f"{type(exc).__name__}: {exc}"
