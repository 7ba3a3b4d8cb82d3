"""A near-duplicate benchmark built by code from real photos, and a loader for imagededup's ground truth.

``build_benchmark_set`` picks ``n_originals`` photos (deterministically for a seed), writes a byte copy of each,
one transformed copy per transform in :data:`~auditor.evaluation.transforms.TRANSFORMS` (parameters drawn per copy
from a generator seeded by (seed, original, transform)), and keeps ``n_distractors`` further photos untouched as
negatives. A second, small-image part does the same for 32-px thumbnails (``small_sources``, e.g. CIFAR-10 test
photos) with :data:`~auditor.evaluation.transforms.SMALL_TRANSFORMS` (1-2 px crops, JPEG). Both parts share one
folder, so every image is a negative for every other group.

Layout of the output folder::

    images/<id>.<ext>           originals (stored bytes, unchanged), copies (PNG unless the transform encodes)
    ground_truth.json           every image with role, source and transform parameters; the duplicate groups;
                                the imagededup-style mapping {file: [duplicates]}

Everything is deterministic for (sources, counts, transforms, seed).

Example::

    from auditor.evaluation.benchmark_set import build_benchmark_set, default_sources, small_sources
    gt = build_benchmark_set("/tmp/bench", default_sources("../shared/data"), n_originals=300,
                             n_distractors=700, small_sources=small_sources("../shared/data"),
                             n_small_originals=200, n_small_distractors=3000)
    gt["duplicates"]["g00000_orig.jpg"]   # ['g00000_badge.png', 'g00000_border.jpg', ...]
"""

from __future__ import annotations

import io
import json
import shutil
import zlib
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from ..utils import write_bytes, write_json
from .transforms import SMALL_TRANSFORMS, TRANSFORMS

GROUND_TRUTH = "ground_truth.json"
IMAGES_DIR = "images"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
FORMAT_VERSION = 2
# the photos the shipped copy descriptor is trained on: never a benchmark image
TRAINING_PHOTOS = "tiny-imagenet-200"


def training_wnids(shared_data: str | Path) -> set[str]:
    """The ImageNet classes (wnids) of the descriptor's training photos (``tiny-imagenet-200/manifest.csv``);
    empty when the manifest is absent."""
    import csv

    path = Path(shared_data) / "photos" / TRAINING_PHOTOS / "manifest.csv"
    if not path.exists():
        return set()
    with open(path, newline="", encoding="utf-8") as f:
        return {row["wnid"] for row in csv.DictReader(f)}


def default_sources(shared_data: str | Path) -> list[Path]:
    """The real photos of ``../shared/data`` the benchmark draws originals and distractors from: imagenet-256
    JPEGs, the Kodak PNGs and imagededup's UKBench base images, sorted. Never the descriptor's training photos:
    Tiny-ImageNet is a subset of ImageNet train, and 49 of the 200 imagenet-256 photos of its classes match one of
    its training images (16-px thumbnail correlation >= 0.9, ``training/copy_descriptor/overlap_check.py``), so
    every imagenet-256 photo of a Tiny-ImageNet class (its wnid, the file name's prefix) is left out."""
    root = Path(shared_data)
    held = training_wnids(root)
    imagenet = [p for p in sorted((root / "photos" / "imagenet-256").glob("*.jpg")) if p.name.split("_")[0] not in held]
    return (imagenet + sorted((root / "photos" / "kodak").glob("*.png"))
            + sorted((root / "neardup" / "imagededup" / "base_images").glob("*.jpg")))


def small_sources(shared_data: str | Path) -> list[Path]:
    """The 32-px photos of ``../shared/data/photos/cifar10-test/<class>/``, sorted."""
    return sorted((Path(shared_data) / "photos" / "cifar10-test").glob("*/*.jpg"))


def _source_name(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def _tid(name: str) -> int:
    return zlib.crc32(name.encode())  # a stable id: adding a transform changes no other copy


def _pick(sources: list[Path], n_orig: int, n_dis: int, rng) -> tuple[list[int], list[int]]:
    if n_orig + n_dis > len(sources):
        raise ValueError(f"{n_orig} originals + {n_dis} distractors > {len(sources)} sources")
    pick = rng.permutation(len(sources))[: n_orig + n_dis]
    return sorted(pick[:n_orig].tolist()), sorted(pick[n_orig:].tolist())


def _write_part(img_dir: Path, sources: list[Path], originals: list[int], distractors: list[int],
                names: list[str], table: dict, prefix: str, seed: int, part: int, progress: bool,
                images: list, groups: list, errors: list) -> None:
    from tqdm.auto import tqdm

    it = tqdm(originals, desc=f"benchmark set ({prefix})", unit="photo", disable=not progress)
    for k, si in enumerate(it):
        src = sources[si]
        gid = f"{prefix}{k:05d}"
        orig_name = f"{gid}_orig{src.suffix.lower()}"
        data = src.read_bytes()
        write_bytes(img_dir / orig_name, data)
        images.append({"file": orig_name, "group": gid, "role": "original", "source": _source_name(src),
                       "transform": None, "params": {}})
        group = [orig_name]
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            for t in names:
                trng = np.random.default_rng([seed, part, k, _tid(t)])
                try:
                    (blob, ext), params = table[t](im, trng)
                except Exception as exc:  # recorded, never fatal
                    errors.append({"key": f"{gid}_{t}", "shard": _source_name(src), "stage": "benchmark_set",
                                   "error": f"{type(exc).__name__}: {exc}"})
                    continue
                name = f"{gid}_{t}.{ext}"
                write_bytes(img_dir / name, blob)
                images.append({"file": name, "group": gid, "role": "copy", "source": _source_name(src),
                               "transform": t, "params": params})
                group.append(name)
        groups.append(group)
    for k, si in enumerate(distractors):
        src = sources[si]
        name = f"{prefix}d{k:05d}{src.suffix.lower()}"
        shutil.copyfile(src, img_dir / name)
        images.append({"file": name, "group": None, "role": "distractor", "source": _source_name(src),
                       "transform": None, "params": {}})


def _names(given: Optional[Iterable[str]], table: dict) -> list[str]:
    names = list(given) if given is not None else list(table)
    unknown = [t for t in names if t not in table]
    if unknown:
        raise ValueError(f"unknown transforms {unknown}; known: {sorted(table)}")
    return names


def build_benchmark_set(out_dir: str | Path, sources: Sequence[str | Path], n_originals: int = 200,
                        n_distractors: int = 200, transforms: Optional[Iterable[str]] = None, seed: int = 0,
                        progress: bool = False, small_sources: Sequence[str | Path] = (),
                        n_small_originals: int = 0, n_small_distractors: int = 0,
                        small_transforms: Optional[Iterable[str]] = None) -> dict:
    """Write the benchmark to ``out_dir`` (which must not be inside a source folder) and return its ground
    truth (also written to ``out_dir/ground_truth.json``). Photo groups are ``g00000...`` (distractors
    ``gd00000...``), 32-px groups ``s00000...`` (distractors ``sd00000...``)."""
    out = Path(out_dir)
    sources = sorted(Path(s) for s in sources)
    small = sorted(Path(s) for s in small_sources)
    names = _names(transforms, TRANSFORMS)
    small_names = _names(small_transforms, SMALL_TRANSFORMS)
    every = sources + small
    if any(TRAINING_PHOTOS in p.parts for p in every):
        raise ValueError(f"the benchmark must not use the descriptor's training photos ({TRAINING_PHOTOS})")
    src_dirs = {s.parent.resolve() for s in every}
    if out.resolve() in src_dirs or any(d in out.resolve().parents for d in src_dirs):
        raise ValueError("the benchmark folder must not be inside a source folder")
    rng = np.random.default_rng(seed)
    originals, distractors = _pick(sources, n_originals, n_distractors, rng)
    s_orig, s_dis = _pick(small, n_small_originals, n_small_distractors, rng)

    img_dir = out / IMAGES_DIR
    if img_dir.exists():
        shutil.rmtree(img_dir)
    img_dir.mkdir(parents=True)
    images: list[dict] = []
    groups: list[list[str]] = []
    errors: list[dict] = []
    _write_part(img_dir, sources, originals, distractors, names, TRANSFORMS, "g", seed, 0, progress,
                images, groups, errors)
    if s_orig or s_dis:
        _write_part(img_dir, small, s_orig, s_dis, small_names, SMALL_TRANSFORMS, "s", seed, 1, progress,
                    images, groups, errors)
    mapping = {f: sorted(x for x in g if x != f) for g in groups for f in g}
    gt = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "n_originals": n_originals,
        "n_distractors": n_distractors,
        "n_small_originals": n_small_originals,
        "n_small_distractors": n_small_distractors,
        "transforms": names + (small_names if s_orig else []),
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
