"""Constructed probe cases from real photos: generation stand-ins whose true verdict is known, for the fused
verdict's tests and ``benchmarks/bench_probe_accuracy.py``.

Kinds (each a ``(generation, training image)`` pair of RGB images, seeded):

- ``overlay``: the training photo with a badge, a semi-transparent watermark or a caption strip on one tile of
  4 x 4, then JPEG at quality 30-60 (how copies of Stable Diffusion outputs are posted) -> ``verbatim``;
- ``paste``: the training photo with a different photo pasted over 20-40 % of its area (an off-centre square),
  JPEG q75 -> ``template``; the pasted photo is the first candidate that differs from the covered region
  (region RMS > 0.2: pasting a look-alike would leave a verbatim copy);
- ``layout``: the same layout with other content: the training photo's low frequencies (Gaussian blur, radius
  ``side / 24``) with another photo's details (its high-pass), JPEG q75 -> ``template``; the first other photo
  whose details make the pixels differ (outlier-tolerant tile distance > 0.2);
- ``unrelated``: another photo -> ``none``.

Example::

    from auditor.evaluation.probe_cases import load_photos, make_case
    photos = load_photos("../shared/data/photos/imagenet-256", 40)
    gen, train = make_case("overlay", photos, 0)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("overlay", "paste", "layout", "unrelated")
EXPECTED = {"overlay": "verbatim", "paste": "template", "layout": "template", "unrelated": "none"}


def load_photos(folder: str | Path, n: int, side: int = 256) -> list[Image.Image]:
    """The first ``n`` photos of ``folder`` (sorted names), RGB, resized to ``side`` x ``side``."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    return [Image.open(p).convert("RGB").resize((side, side), Image.BICUBIC) for p in files]


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(quality))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def overlay(im: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """A badge, a watermark or a caption strip inside one tile of a 4 x 4 grid (chosen by ``rng``)."""
    im = im.copy()
    w, h = im.size
    tw, th = w // 4, h // 4
    i, j = (int(x) for x in rng.integers(0, 4, 2))
    x0, y0 = j * tw, i * th
    if kind == "badge":
        ImageDraw.Draw(im).ellipse([x0 + tw // 8, y0 + th // 8, x0 + tw - tw // 8, y0 + th - th // 8],
                                   fill=(220, 30, 30), outline=(255, 255, 255), width=3)
        return im
    if kind == "watermark":
        layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        d.rectangle([x0 + 4, y0 + th // 3, x0 + tw - 4, y0 + 2 * th // 3], fill=(255, 255, 255, 150))
        d.text((x0 + 8, y0 + th // 3 + 4), "(c) stock", fill=(40, 40, 40, 200))
        return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")
    d = ImageDraw.Draw(im)  # caption strip along the tile's bottom
    d.rectangle([x0, y0 + th - th // 3, x0 + tw, y0 + th], fill=(0, 0, 0))
    d.text((x0 + 4, y0 + th - th // 3 + 4), "shop.example", fill=(255, 255, 255))
    return im


def paste(im: Image.Image, others: Sequence[Image.Image], rng: np.random.Generator) -> Image.Image:
    """``im`` with a different photo pasted over 20-40 % of its area (an off-centre square)."""
    w, h = im.size
    frac = float(rng.uniform(0.2, 0.4))
    s = int(round(np.sqrt(frac * w * h)))
    x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
    region = np.asarray(im.crop((x, y, x + s, y + s)), dtype=np.float32) / 255
    for other in others:
        patch = other.resize((s, s), Image.BICUBIC)
        if np.sqrt(((np.asarray(patch, dtype=np.float32) / 255 - region) ** 2).mean()) > 0.2:
            break
    out = im.copy()
    out.paste(patch, (x, y))
    return out


def same_layout(im: Image.Image, other: Image.Image) -> Image.Image:
    """``im``'s low frequencies with ``other``'s details: the same composition, other content."""
    r = max(2, im.size[0] // 24)
    low = np.asarray(im.filter(ImageFilter.GaussianBlur(r)), dtype=np.float32)
    o = other.resize(im.size, Image.BICUBIC)
    high = np.asarray(o, dtype=np.float32) - np.asarray(o.filter(ImageFilter.GaussianBlur(r)), dtype=np.float32)
    return Image.fromarray(np.clip(low + high, 0, 255).astype(np.uint8))


def _differs(gen: Image.Image, train: Image.Image) -> bool:
    """Other content: not within delta 0.15 on 7/8 of the cells of an 8 x 8 grid (that would be a verbatim
    copy of a smooth photo, whatever was meant)."""
    from ..probe.detectors import tile_distances, to_float
    from ..probe.signals import trimmed

    return trimmed(tile_distances(to_float(gen), to_float(train), 8), 0.125) > 0.2


def make_case(kind: str, photos: Sequence[Image.Image], i: int, seed: int = 0) -> tuple[Image.Image, Image.Image]:
    """(generation stand-in, training image) of case ``i`` of ``kind``; the training image is ``photos[i]``, the
    other photos come from the second half of ``photos`` (needs ``len(photos) > 2 * i``)."""
    rng = np.random.default_rng([seed, KINDS.index(kind), i])
    n = len(photos)
    train = photos[i]
    others = [photos[(n // 2 + i + k) % n] for k in range(n // 2)]
    others = [o for o in others if o is not train]
    if kind == "overlay":
        gen = jpeg(overlay(train, ("badge", "watermark", "strip")[i % 3], rng), int(rng.integers(30, 61)))
    elif kind == "paste":
        gen = jpeg(paste(train, others, rng), 75)
    elif kind == "layout":
        gen = next(g for g in (jpeg(same_layout(train, o), 75) for o in others) if _differs(g, train))
    elif kind == "unrelated":
        gen = others[0]
    else:
        raise ValueError(f"unknown case kind {kind!r}; choose from {KINDS}")
    return gen, train


def null_pairs(photos: Sequence[Image.Image], n: int = 100) -> list[tuple[Image.Image, Image.Image]]:
    """Unrelated photo pairs among ``photos[100:200]`` (disjoint from the cases' photos 0-99), never a photo with
    itself (37 i + 13 = i mod 100 has no solution): the null set the thresholds are calibrated on."""
    return [(photos[100 + i], photos[100 + (37 * i + 13) % 100]) for i in range(min(n, 100))]


def pair_signals(pairs, embed, cache: dict) -> list:
    """The fused verdict's signals (:class:`~auditor.probe.signals.SignalComputer`) of each ``(generation,
    training image)`` pair, with the copy descriptor's cosine filled in. ``embed(images)`` returns unit rows;
    ``cache`` maps ``id(image)`` to its row, so each loaded photo is embedded once across calls.

    Example::

        sigs = pair_signals([make_case("overlay", photos, 0)], embed, {})
        sigs[0].copy_similarity
    """
    from ..probe.signals import SignalComputer

    todo = list({id(im): im for pair in pairs for im in pair if id(im) not in cache}.values())
    for im, e in zip(todo, embed(todo) if todo else []):
        cache[id(im)] = np.asarray(e, dtype=np.float32)
    sc = SignalComputer()
    out = []
    for gen, train in pairs:
        s = sc.compare(gen, [train])[0]
        s.copy_similarity = float(cache[id(gen)] @ cache[id(train)])
        out.append(s)
    return out
