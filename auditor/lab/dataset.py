"""A small LAION-style dataset with planted duplicate groups, built by code from real photos.

Each *source* is one distinct real photo (a full photo, or a crop of a large one). The first sources become
duplicate groups, one per entry of ``copy_counts`` (e.g. one source copied 100 times, two copied 30 times, ...);
the rest are singletons. Every copy after the first goes through the transforms that make web duplicates
differ: a small crop, a resize, a slight colour jitter and a JPEG re-encode at a random quality (a few are
re-encoded as PNG). Most copies carry the source's main caption verbatim; some carry a variant (a re-worded
caption, or the main one with a site prefix/suffix), as on the web. The items are shuffled so copies are spread
over the shards, and written as image files plus ``planted.parquet`` (the ground truth: which file belongs to
which group, its copy count, its transform).

Photo sources: ``skimage`` (the photos bundled with scikit-image, a package dependency -- no download) or
``folder`` (any folder of photos, e.g. ../shared/data/photos/kodak), with captions from a ``caption<TAB>...``
file (e.g. CC3M's validation TSV) or generated from the file names.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from ..utils import write_bytes, write_parquet

log = logging.getLogger(__name__)

# scikit-image's bundled photos (all ship inside the wheel; the ones needing pooch are not used), with a
# main caption and re-worded variants, written the way alt-texts on the web read.
SKIMAGE_PHOTOS: dict[str, tuple[str, list[str]]] = {
    "astronaut": ("Portrait of astronaut Eileen Collins in her orange flight suit with the American flag",
                  ["NASA astronaut Eileen Collins official portrait", "Astronaut portrait in front of the US flag"]),
    "chelsea": ("A ginger tabby cat named Chelsea looking up, close-up photo",
                ["Orange tabby cat close up", "Cute ginger cat portrait photo"]),
    "coffee": ("A cup of coffee with latte art on a saucer, top view on a red table",
               ["Cappuccino cup on a red background", "Latte art coffee cup from above"]),
    "rocket": ("Falcon 9 rocket on the launch pad at dawn before liftoff",
               ["SpaceX rocket standing on the launch pad", "Rocket launch pad photo"]),
    "immunohistochemistry": ("Immunohistochemistry stained tissue section under the microscope, brown and blue",
                             ["IHC staining of human tissue, microscopy", "Microscope slide of stained cells"]),
    "camera": ("Black and white photo of a cameraman with a tripod camera on a lawn",
               ["Vintage photographer with a camera on a tripod", "Cameraman photo black and white"]),
    "motorcycle_left": ("Red motorcycle parked in a garage next to a workbench",
                        ["Motorbike in a workshop", "Red motorcycle indoors"]),
    "coins": ("Old Greek coins laid out on a dark background, numismatic collection",
              ["Ancient coin collection", "Set of old coins on black"]),
    "moon": ("Black and white close-up of the lunar surface with craters",
             ["Moon craters surface photo", "Lunar surface in grayscale"]),
    "clock": ("A wall clock photographed with motion blur, black and white",
              ["Blurry clock on a wall", "Analog wall clock photo"]),
    "hubble_deep_field": ("The Hubble Deep Field: thousands of distant galaxies on a black sky",
                          ["Hubble space telescope deep field image", "Distant galaxies deep field"]),
    "retina": ("Fundus photograph of a human retina showing the optic disc and blood vessels",
               ["Retina fundus image", "Eye fundus photo with blood vessels"]),
    "cell": ("Microscopy image of a cell culture, grayscale",
             ["Cells under a microscope", "Grayscale cell microscopy"]),
    "grass": ("Texture of green grass blades, grayscale close-up", ["Grass texture", "Lawn close up"]),
    "gravel": ("Gravel stones texture, grayscale", ["Pebbles texture background", "Gravel close up"]),
    "brick": ("Old brick wall texture, grayscale", ["Brick wall background", "Bricks texture photo"]),
    "page": ("Scanned page of an old book with printed text", ["Book page scan", "Printed text page"]),
    "text": ("Handwritten and printed text on a photo of a sign", ["Text in an image", "Sign with letters"]),
}
# the order full photos are used as duplicate groups (the rest, and crops, become singletons). "moon" is left
# out: a smooth, low-contrast photo sits within tiled L2 0.15 of a tiny model's generic generations whether or
# not it was memorised (a known weakness of pixel distances), which would blur the demo's finding.
SKIMAGE_GROUP_ORDER = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera",
                       "motorcycle_left", "coins", "clock"]
# large photos cut into crops, each crop a distinct singleton
SKIMAGE_CROP_FROM = ["hubble_deep_field", "retina", "cell", "grass", "gravel", "brick", "page", "text"]

_POSITIONS = ["top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right"]
_SCALES = ["Close-up detail", "Detail", "Section", "Crop", "Zoomed view", "Fragment"]
_STYLES = ["high resolution", "stock photo", "4k wallpaper", "photo", "image", "free download", "archive"]
_PREFIXES = ["Stock photo: ", "Photo: ", "Image of ", ""]
_SUFFIXES = [" - stock image", " | Wallpaper", " (photo)", " - free download"]


@dataclass
class Source:
    name: str           # e.g. "astronaut" or "hubble_deep_field/crop017"
    image: Image.Image  # RGB
    caption: str
    variants: list[str]


def _rgb(arr: np.ndarray) -> Image.Image:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _load_skimage(name: str) -> np.ndarray:
    import skimage.data as skd

    if name == "motorcycle_left":
        return skd.stereo_motorcycle()[0]
    return getattr(skd, name)()


def _fit(img: Image.Image, max_side: int) -> Image.Image:
    w, h = img.size
    s = max_side / max(w, h)
    if s < 1:
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    return img


def _crops(name: str, img: Image.Image, n: int, rng: random.Random, subject: str) -> list[Source]:
    """``n`` distinct square crops (side 30-55 % of the short side, positions spread over the photo)."""
    w, h = img.size
    out = []
    for i in range(n):
        side = int(min(w, h) * rng.uniform(0.30, 0.55))
        x = rng.randint(0, w - side)
        y = rng.randint(0, h - side)
        pos = _POSITIONS[min(2, 3 * y // max(1, h - side + 1)) * 3 + min(2, 3 * x // max(1, w - side + 1))]
        cap = f"{rng.choice(_SCALES)} of {subject[0].lower() + subject[1:]}, {pos} part, {rng.choice(_STYLES)} #{i + 1}"
        out.append(Source(f"{name}/crop{i:03d}", img.crop((x, y, x + side, y + side)), cap, []))
    return out


def skimage_sources(n_needed: int, n_groups: int, seed: int, max_side: int = 256) -> list[Source]:
    """Distinct sources from scikit-image's bundled photos: full photos first (for the groups), then crops."""
    import skimage.data as skd

    rng = random.Random(seed)
    full: list[Source] = []
    for name in SKIMAGE_GROUP_ORDER:
        cap, var = SKIMAGE_PHOTOS[name]
        full.append(Source(name, _fit(_rgb(_load_skimage(name)), max_side), cap, list(var)))
    if n_groups > len(full):
        raise ValueError(f"the skimage source has {len(full)} full photos for duplicate groups, {n_groups} asked")
    sources = full[:n_groups]
    singles: list[Source] = [s for s in full[n_groups:]]
    remaining = n_needed - len(sources) - len(singles)
    # faces from the LFW subset bundled with scikit-image (200 grayscale 25x25 crops), then crops of big photos
    if remaining > 0:
        faces = np.load(Path(skd.__file__).parent / "lfw_subset.npy", allow_pickle=False)
        order = rng.sample(range(len(faces)), len(faces))
        for j in order[: min(len(faces), remaining // 3)]:
            face = (np.clip(faces[j], 0, 1) * 255).astype(np.uint8)
            singles.append(Source(f"lfw/{j:03d}", _rgb(face).resize((64, 64), Image.BICUBIC),
                                  f"Black and white headshot of a person, face photo {rng.choice(_STYLES)} #{j}", []))
        remaining = n_needed - len(sources) - len(singles)
    per = -(-max(0, remaining) // len(SKIMAGE_CROP_FROM))
    for name in SKIMAGE_CROP_FROM:
        big = _rgb(_load_skimage(name))
        singles.extend(_crops(name, big, per, rng, SKIMAGE_PHOTOS[name][0]))
    singles = [Source(s.name, _fit(s.image, max_side), s.caption, s.variants) for s in singles]
    return sources + singles[: n_needed - len(sources)]


def folder_sources(folder: str | Path, n_needed: int, seed: int, captions_file: str | None = None,
                   max_side: int = 256) -> list[Source]:
    """Distinct sources from a folder of photos (sorted, then shuffled with ``seed``); captions from a TSV whose
    first column is a caption (e.g. CC3M validation), or from the file names."""
    exts = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in exts)
    rng = random.Random(seed)
    rng.shuffle(files)
    if len(files) < n_needed:
        raise ValueError(f"{folder} holds {len(files)} photos, the lab needs {n_needed}")
    caps: list[str] = []
    if captions_file:
        with open(captions_file, encoding="utf-8") as fh:
            caps = [line.split("\t")[0].strip() for line in fh if line.strip()]
        caps = list(dict.fromkeys(c for c in caps if c))  # distinct, in file order
    out = []
    for i, f in enumerate(files[:n_needed]):
        with Image.open(f) as im:
            img = _fit(im.convert("RGB"), max_side)
        cap = caps[i] if i < len(caps) else f"A photo of {f.stem.replace('_', ' ')}"
        out.append(Source(str(f.relative_to(folder)), img, cap, []))
    return out


def copy_transform(img: Image.Image, rng: random.Random) -> tuple[bytes, str, str]:
    """One web-style copy: crop <= 1 % per side, resize to 80-100 %, brightness/contrast/saturation within
    +-4 %, re-encoded as JPEG q70-95 (10 % as PNG). Returns (bytes, extension, description)."""
    w, h = img.size
    l, t = int(w * rng.uniform(0, 0.01)), int(h * rng.uniform(0, 0.01))
    r, b = w - int(w * rng.uniform(0, 0.01)), h - int(h * rng.uniform(0, 0.01))
    out = img.crop((l, t, r, b))
    s = rng.uniform(0.8, 1.0)
    out = out.resize((max(8, round(out.width * s)), max(8, round(out.height * s))), Image.BICUBIC)
    jb, jc, js = (rng.uniform(0.96, 1.04) for _ in range(3))
    out = ImageEnhance.Color(ImageEnhance.Contrast(ImageEnhance.Brightness(out).enhance(jb)).enhance(jc)).enhance(js)
    buf = io.BytesIO()
    if rng.random() < 0.1:
        out.save(buf, format="PNG")
        ext, enc = "png", "png"
    else:
        q = rng.randint(70, 95)
        out.save(buf, format="JPEG", quality=q)
        ext, enc = "jpg", f"jpeg q{q}"
    desc = f"crop({l},{t},{r},{b}) scale {s:.2f} jitter({jb:.3f},{jc:.3f},{js:.3f}) {enc}"
    return buf.getvalue(), ext, desc


def _caption_variant(src: Source, rng: random.Random) -> str:
    if src.variants and rng.random() < 0.5:
        return rng.choice(src.variants)
    return rng.choice(_PREFIXES) + src.caption + rng.choice(_SUFFIXES)


PLANTED_COLUMNS = ["file", "caption", "group", "source", "copy_count", "copy_index", "transform", "is_main_caption"]


def heavy_crop(img: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """One heavy crop of a photo (50-70 % of each side, at a random position), as sites re-crop a popular
    photo: (the crop, its box). Its copies are near duplicates of each other but not of the full photo."""
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.5, 0.7)), int(h * rng.uniform(0.5, 0.7))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch)), f"heavy crop({x},{y},{x + cw},{y + ch})"


def build_dataset(sources: list[Source], copy_counts: list[int], out_dir: str | Path, seed: int,
                  variant_caption_rate: float = 0.2, split_groups: Sequence[int] = (),
                  heavy_crop_rate: float = 0.3) -> pd.DataFrame:
    """Write the planted dataset into ``out_dir`` (``images/`` + ``planted.parquet``); return the table.

    ``copy_counts[i]`` is the number of copies of ``sources[i]``; every further source is a singleton. The first
    copy of each source is the photo itself (JPEG q95), the rest are :func:`copy_transform` copies. In the groups
    listed in ``split_groups``, each copy after the first is, with probability ``heavy_crop_rate``, a
    :func:`copy_transform` copy of one :func:`heavy_crop` of the source (the same crop for the whole group, its
    ``transform`` starting with ``heavy crop``) carrying the group's captions: dedup puts those copies in a
    sub-cluster of their own, apart from the group's main cluster.

    Example:
        >>> df = build_dataset(sources, [200, 50], "out/source", seed=0, split_groups=[0])  # doctest: +SKIP
        >>> df[df["transform"].str.startswith("heavy crop")]["group"].unique()  # doctest: +SKIP
        array([0])
    """
    out = Path(out_dir)
    rng = random.Random(seed)
    split = set(split_groups)
    rows = []
    for gi, src in enumerate(sources):
        n = copy_counts[gi] if gi < len(copy_counts) else 1
        # the crop box from its own generator; with no split group no draw is added (the demo's dataset unchanged)
        crop = heavy_crop(src.image, random.Random(f"{seed}:heavy:{gi}")) if gi in split else None
        for ci in range(n):
            if ci == 0:
                buf = io.BytesIO()
                src.image.save(buf, format="JPEG", quality=95)
                data, ext, desc = buf.getvalue(), "jpg", "original, jpeg q95"
            elif crop is not None and rng.random() < heavy_crop_rate:
                data, ext, desc = copy_transform(crop[0], rng)
                desc = f"{crop[1]}, {desc}"
            else:
                data, ext, desc = copy_transform(src.image, rng)
            main = ci == 0 or rng.random() >= variant_caption_rate
            cap = src.caption if main else _caption_variant(src, rng)
            rows.append(dict(data=data, ext=ext, caption=cap, group=gi, source=src.name, copy_count=n,
                             copy_index=ci, transform=desc, is_main_caption=main))
    rng.shuffle(rows)  # copies spread over the shards, as in a crawl
    for i, r in enumerate(rows):
        r["file"] = f"img{i:06d}.{r.pop('ext')}"
        write_bytes(out / "images" / r["file"], r.pop("data"))
    df = pd.DataFrame(rows, columns=PLANTED_COLUMNS)
    write_parquet(out / "planted.parquet", df)
    log.info("planted dataset: %d images, %d sources, groups %s", len(df), len(sources), copy_counts)
    return df
