"""A near-duplicate benchmark built by code from real photos, and a loader for imagededup's ground truth.

``build_benchmark_set`` picks ``n_originals`` photos (deterministically for a seed), writes a byte copy of each,
one transformed copy per transform in :data:`TRANSFORMS` (parameters drawn per copy from the seeded generator),
and keeps ``n_distractors`` further photos untouched as negatives. The transforms are the ways a training image
reappears on the web and in scraped datasets:

``jpeg`` re-encode at quality 30-95 | ``resize`` to 30-80 % of the side | ``crop`` 5-30 % of the area off
(off-centre) | ``hflip`` | ``rotate`` 2-10 degrees | ``text`` caption / watermark overlay | ``jitter`` brightness,
contrast, saturation +-15-40 % | ``border`` and ``center_crop``: img2dataset's own resizer (``resize_mode``
border / center_crop to 256 px, its cv2 area/lanczos resampling and JPEG q95) | ``combo`` crop + resize + JPEG.

Layout of the output folder::

    images/<id>.<ext>           originals (stored bytes, unchanged), copies (PNG unless the transform encodes)
    ground_truth.json           every image with role, source and transform parameters; the duplicate groups;
                                the imagededup-style mapping {file: [duplicates]}

Everything is deterministic for (sources, n_originals, n_distractors, seed).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from ..utils import write_bytes, write_json

GROUND_TRUTH = "ground_truth.json"
IMAGES_DIR = "images"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
FORMAT_VERSION = 1


def _png(im: Image.Image) -> tuple[bytes, str]:
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue(), "png"


def _jpeg(im: Image.Image, quality: int) -> tuple[bytes, str]:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=int(quality))
    return buf.getvalue(), "jpg"


def t_jpeg(im, rng):
    q = int(rng.integers(30, 96))
    return _jpeg(im, q), {"quality": q}


def t_resize(im, rng):
    f = float(rng.uniform(0.3, 0.8))
    w, h = max(8, round(im.width * f)), max(8, round(im.height * f))
    return _png(im.resize((w, h), Image.Resampling.BICUBIC)), {"scale": round(f, 4), "size": [w, h]}


def t_crop(im, rng):
    area = float(rng.uniform(0.05, 0.30))  # share of the area removed
    keep = np.sqrt(1.0 - area)
    w, h = max(8, round(im.width * keep)), max(8, round(im.height * keep))
    x0 = int(rng.integers(0, im.width - w + 1))
    y0 = int(rng.integers(0, im.height - h + 1))
    return _png(im.crop((x0, y0, x0 + w, y0 + h))), {"area_removed": round(area, 4), "box": [x0, y0, x0 + w, y0 + h]}


def t_hflip(im, rng):
    return _png(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), {}


def t_rotate(im, rng):
    a = float(rng.uniform(2, 10)) * (1 if rng.random() < 0.5 else -1)
    fill = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
    return _png(im.rotate(a, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=fill)), \
        {"degrees": round(a, 3), "fill": list(fill)}


_WORDS = ("stock photo", "© 2023 all rights reserved", "sample", "www.example.com", "preview",
          "best price", "FOR SALE", "shutterstock", "copyright", "my holiday")


def t_text(im, rng):
    im = im.convert("RGBA")
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = max(10, int(min(im.size) * float(rng.uniform(0.06, 0.14))))
    font = ImageFont.load_default(size=size)
    text = _WORDS[int(rng.integers(0, len(_WORDS)))]
    alpha = int(rng.integers(110, 230))
    colour = (255, 255, 255) if rng.random() < 0.6 else (0, 0, 0)
    tiled = bool(rng.random() < 0.4)  # a tiled watermark, else one caption line
    if tiled:
        step_y = size * 3
        step_x = int(draw.textlength(text, font=font)) + size * 2
        for r, y in enumerate(range(0, im.height, step_y)):
            for x in range(-(r % 2) * step_x // 2, im.width, step_x):
                draw.text((x, y), text, font=font, fill=colour + (alpha // 2,))
    else:
        x = int(rng.integers(0, max(1, im.width // 3)))
        y = int(rng.integers(im.height // 2, max(im.height // 2 + 1, im.height - size - 2)))
        draw.text((x, y), text, font=font, fill=colour + (alpha,), stroke_width=1,
                  stroke_fill=(0, 0, 0, alpha) if colour[0] else (255, 255, 255, alpha))
    out = Image.alpha_composite(im, layer).convert("RGB")
    return _png(out), {"text": text, "font_px": size, "alpha": alpha, "tiled": tiled}


def t_jitter(im, rng):
    im = im.convert("RGB")
    params = {}
    for name, enh in (("brightness", ImageEnhance.Brightness), ("contrast", ImageEnhance.Contrast),
                      ("saturation", ImageEnhance.Color)):
        f = float(rng.uniform(0.15, 0.40)) * (1 if rng.random() < 0.5 else -1) + 1.0
        im = enh(im).enhance(f)
        params[name] = round(f, 4)
    return _png(im), params


def _img2dataset(im, mode: str, size: int = 256):
    from img2dataset.resizer import Resizer

    buf = io.BytesIO()
    im.convert("RGB").save(buf, "PNG")
    buf.seek(0)
    resizer = Resizer(image_size=size, resize_mode=mode, resize_only_if_bigger=False, encode_format="jpg",
                      encode_quality=95)
    data, w, h, *_rest, err = resizer(buf)
    if err is not None:
        raise RuntimeError(f"img2dataset resizer failed: {err}")
    return (data, "jpg"), {"resize_mode": mode, "image_size": size, "size": [int(w), int(h)]}


def t_border(im, rng):
    return _img2dataset(im, "border")


def t_center_crop(im, rng):
    return _img2dataset(im, "center_crop")


def t_combo(im, rng):
    (data, _), pc = t_crop(im, rng)
    with Image.open(io.BytesIO(data)) as c:
        c = c.convert("RGB")
        f = float(rng.uniform(0.4, 0.9))
        c = c.resize((max(8, round(c.width * f)), max(8, round(c.height * f))), Image.Resampling.BILINEAR)
    q = int(rng.integers(40, 90))
    return _jpeg(c, q), {"crop": pc, "scale": round(f, 4), "quality": q}


TRANSFORMS: dict[str, Callable] = {
    "jpeg": t_jpeg,
    "resize": t_resize,
    "crop": t_crop,
    "hflip": t_hflip,
    "rotate": t_rotate,
    "text": t_text,
    "jitter": t_jitter,
    "border": t_border,
    "center_crop": t_center_crop,
    "combo": t_combo,
}


def default_sources(shared_data: str | Path) -> list[Path]:
    """The real photos of ``../shared/data``: imagenet-256 JPEGs and the Kodak PNGs, sorted."""
    root = Path(shared_data) / "photos"
    return sorted((root / "imagenet-256").glob("*.jpg")) + sorted((root / "kodak").glob("*.png"))


def build_benchmark_set(out_dir: str | Path, sources: Sequence[str | Path], n_originals: int = 200,
                        n_distractors: int = 200, transforms: Optional[Iterable[str]] = None, seed: int = 0,
                        progress: bool = False) -> dict:
    """Write the benchmark to ``out_dir`` (which must not be inside a source folder) and return its ground
    truth (also written to ``out_dir/ground_truth.json``)."""
    out = Path(out_dir)
    sources = sorted(Path(s) for s in sources)
    names = list(transforms) if transforms is not None else list(TRANSFORMS)
    unknown = [t for t in names if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transforms {unknown}; known: {sorted(TRANSFORMS)}")
    src_dirs = {s.parent.resolve() for s in sources}
    if out.resolve() in src_dirs or any(d in out.resolve().parents for d in src_dirs):
        raise ValueError("the benchmark folder must not be inside a source folder")
    if n_originals + n_distractors > len(sources):
        raise ValueError(f"{n_originals} originals + {n_distractors} distractors > {len(sources)} sources")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(sources))[: n_originals + n_distractors]
    originals = sorted(pick[:n_originals].tolist())
    distractors = sorted(pick[n_originals:].tolist())

    img_dir = out / IMAGES_DIR
    if img_dir.exists():
        shutil.rmtree(img_dir)
    img_dir.mkdir(parents=True)
    images: list[dict] = []
    groups: list[list[str]] = []
    errors: list[dict] = []

    from tqdm.auto import tqdm

    it = tqdm(originals, desc="benchmark set", unit="photo", disable=not progress)
    for k, si in enumerate(it):
        src = sources[si]
        gid = f"g{k:05d}"
        orig_name = f"{gid}_orig{src.suffix.lower()}"
        data = src.read_bytes()
        write_bytes(img_dir / orig_name, data)
        images.append({"file": orig_name, "group": gid, "role": "original", "source": src.name,
                       "transform": None, "params": {}})
        group = [orig_name]
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            for t in names:
                # one generator per (seed, original, transform): adding a transform changes no other copy
                trng = np.random.default_rng([seed, k, sorted(TRANSFORMS).index(t)])
                try:
                    (blob, ext), params = TRANSFORMS[t](im, trng)
                except Exception as exc:  # recorded, never fatal
                    errors.append({"key": f"{gid}_{t}", "shard": src.name, "stage": "benchmark_set",
                                   "error": f"{type(exc).__name__}: {exc}"})
                    continue
                name = f"{gid}_{t}.{ext}"
                write_bytes(img_dir / name, blob)
                images.append({"file": name, "group": gid, "role": "copy", "source": src.name, "transform": t,
                               "params": params})
                group.append(name)
        groups.append(group)
    for k, si in enumerate(distractors):
        src = sources[si]
        name = f"d{k:05d}{src.suffix.lower()}"
        shutil.copyfile(src, img_dir / name)
        images.append({"file": name, "group": None, "role": "distractor", "source": src.name, "transform": None,
                       "params": {}})
    mapping = {f: sorted(x for x in g if x != f) for g in groups for f in g}
    gt = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "n_originals": n_originals,
        "n_distractors": n_distractors,
        "transforms": names,
        "images": images,
        "groups": groups,
        "duplicates": mapping,
        "errors": errors,
    }
    write_json(out / GROUND_TRUTH, gt)
    return gt


def load_benchmark_set(path: str | Path) -> dict:
    """The ground truth of a set written by :func:`build_benchmark_set`, with ``root`` (the images folder)."""
    p = Path(path)
    gt_path = p / GROUND_TRUTH if p.is_dir() else p
    gt = json.loads(gt_path.read_text(encoding="utf-8"))
    gt["root"] = str(gt_path.parent / IMAGES_DIR)
    return gt


# ---------------------------------------------------------------------------------------------------------------
# imagededup's evaluation files
# ---------------------------------------------------------------------------------------------------------------

def load_imagededup_ground_truth(path: str | Path) -> dict[str, list[str]]:
    """imagededup's ground-truth format ``{file: [duplicate files]}`` (e.g. its ``evaluation_files/
    ground_truth.json``), made symmetric: every listed duplicate also lists the key, every file is a key."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise ValueError(f"{path}: expected a JSON object {{file: [duplicates]}}")
    out: dict[str, set] = {}
    for k, dups in raw.items():
        out.setdefault(str(k), set())
        for d in dups:
            d = str(d[0] if isinstance(d, (list, tuple)) else d)
            if d == k:
                continue
            out[str(k)].add(d)
            out.setdefault(d, set()).add(str(k))
    return {k: sorted(v) for k, v in sorted(out.items())}


def imagededup_folder_ground_truth(folder: str | Path) -> dict[str, list[str]]:
    """Ground truth of imagededup's test folders (``mixed_images``, ``base_images``, ...) from its naming
    convention: ``<stem>_<transform>.<ext>`` is a copy of ``<stem>.<ext>``; ``*_corrupt.*`` files are not
    images and are left out. Files are given relative to ``folder`` (searched recursively)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    groups: dict[str, list[str]] = {}
    for p in files:
        stem = p.stem
        base, _, suffix = stem.partition("_")
        if suffix == "corrupt":
            continue
        groups.setdefault(base, []).append(p.relative_to(folder).as_posix())
    return {f: sorted(x for x in g if x != f) for g in groups.values() for f in g}
