"""Helpers for the dedup tests (no tests here): datasets with planted duplicates made from real photos,
written with the project's WebDatasetWriter and indexed with the real index runner.

The index runner has no embedder that works offline in tests, so ``add_embeddings`` writes the per-shard
``<shard>.emb.npy`` files of store.py's documented layout from a real (if simple) image descriptor: the
16x16 grayscale thumbnail, made mirror-symmetric (so a horizontal flip has the same descriptor -- the
flip-invariance a CLIP/SSCD embedding has and pHash lacks), mean-subtracted and L2-normalised. On 200
ImageNet photos the largest cosine between different photos is 0.87; re-encodes and small crops stay > 0.98.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps

from auditor.config import load_config
from auditor.index.store import IndexStore
from auditor.utils import write_json, write_npy

EMBEDDER = {"name": "test-thumb16-mirror", "dim": 256}


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def cc3m_captions(shared_data: Path, n: int) -> list[str]:
    out = []
    with open(shared_data / "captions" / "cc3m_validation.tsv", encoding="utf-8") as fh:
        for line in fh:
            cap = line.split("\t", 1)[0].strip()
            if cap and cap not in out:
                out.append(cap)
            if len(out) >= n:
                break
    return out


def write_dataset(root: Path, samples: Iterable[dict], shard_size: int, start_shard: int = 0) -> None:
    """samples: dicts with key, data, caption, ext (img2dataset webdataset layout via WebDatasetWriter)."""
    from auditor.io.writers import WebDatasetWriter

    with WebDatasetWriter(root, shard_size=shard_size, start_shard=start_shard) as w:
        for s in samples:
            w.write(s["key"], s["data"], caption=s.get("caption"), url=f"https://example.org/{s['key']}",
                    ext=s.get("ext", "jpg"))


def config(*overrides: str, workers: int = 0):
    return load_config(overrides=[f"index.workers={workers}", "index.progress=false", "dedup.progress=false",
                                  *overrides])


def index(dataset: Path, run_dir: Path, workers: int = 0, embeddings: bool = True, embedder: str = "none"):
    """Index ``dataset`` with ``embedder`` (default here: hashes only, and ``embeddings=True`` adds the tests'
    own deterministic descriptor; ``embedder="copy"`` is the package's default)."""
    from auditor.index.runner import run_index

    store = run_index(dataset, run_dir, config(f"index.embedder.name={embedder}", workers=workers))
    if embeddings:
        add_embeddings(run_dir)
    return IndexStore(run_dir)


def descriptor(im: Image.Image) -> np.ndarray:
    g = np.asarray(im.convert("L").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float64)
    g = g + g[:, ::-1]
    g = g - g.mean()
    n = np.linalg.norm(g)
    return (g / n if n > 0 else g).ravel()


def add_embeddings(run_dir: Path) -> None:
    """Write ``shards/<id>.emb.npy`` (float16, row-aligned) for every shard and record the embedder."""
    from auditor.index.decode import decode_rgb

    store = IndexStore(run_dir)
    refs = {r.id: r for r in store.reader.shards()}
    for sid in store.shard_ids():
        keys = store.shard_table(sid, columns=["key"])["key"].tolist()
        by_key = {s.key: s.data for s in store.reader.read_shard(refs[sid]) if s.data is not None}
        emb = np.stack([descriptor(decode_rgb(by_key[k])) for k in keys]) if keys else np.zeros((0, 256))
        write_npy(store.shard_dir / f"{sid}.emb.npy", emb.astype(np.float16))
    info = json.loads((store.dir / "index.json").read_text(encoding="utf-8"))
    info["embedder"] = dict(EMBEDDER)
    write_json(store.dir / "index.json", info)


def planted(imagenet: list[Path], captions: list[str]) -> tuple[list[dict], dict[str, set[str]]]:
    """38 samples from 30 ImageNet photos with planted duplicate groups -> (samples, groups).

    groups (each must come out as exactly one cluster):
      exact_bytes  the same JPEG file three times (one caption repeated: a verbatim image-caption duplicate)
      exact_pixels a JPEG, the same decoded pixels as PNG and as BMP
      reencode     a photo and its JPEG re-encode at quality 50
      resize       a photo and its 60 % downscale (the original, larger, is the representative)
      crop         a photo and a 3 % border crop
      flip         a photo and its mirror image (only the flip-invariant embedding can join these)
    Three further photos share one caption up to case and punctuation (caption duplication, no image dup).
    """
    s: list[dict] = []
    groups: dict[str, set[str]] = {}

    def add(key, data, caption, ext="jpg", group=None):
        s.append({"key": key, "data": data, "caption": caption, "ext": ext})
        if group:
            groups.setdefault(group, set()).add(key)

    caps = iter(captions)
    raw = imagenet[0].read_bytes()
    for k in ("exb_a", "exb_b", "exb_c"):
        add(k, raw, "the famous photo everyone trains on", group="exact_bytes")
    im = rgb(imagenet[1])
    add("pix_jpg", imagenet[1].read_bytes(), next(caps), group="exact_pixels")
    add("pix_png", encode(im, "PNG"), next(caps), "png", group="exact_pixels")
    add("pix_bmp", encode(im, "BMP"), next(caps), "bmp", group="exact_pixels")
    im = rgb(imagenet[2])
    add("reenc_orig", imagenet[2].read_bytes(), next(caps), group="reencode")
    add("reenc_q50", encode(im, "JPEG", quality=50), next(caps), group="reencode")
    im = rgb(imagenet[3])
    add("resize_orig", imagenet[3].read_bytes(), next(caps), group="resize")
    add("resize_small", encode(im.resize((im.width * 6 // 10, im.height * 6 // 10), Image.Resampling.LANCZOS),
                               "JPEG", quality=90), next(caps), group="resize")
    im = rgb(imagenet[4])
    dx, dy = int(im.width * 0.03), int(im.height * 0.03)
    add("crop_orig", imagenet[4].read_bytes(), next(caps), group="crop")
    add("crop_small", encode(im.crop((dx, dy, im.width - dx, im.height - dy)), "JPEG", quality=90), next(caps),
        group="crop")
    im = rgb(imagenet[5])
    add("flip_orig", imagenet[5].read_bytes(), next(caps), group="flip")
    add("flip_mirror", encode(ImageOps.mirror(im), "JPEG", quality=90), next(caps), group="flip")
    add("capdup_1", imagenet[6].read_bytes(), "A dog running on the beach.")
    add("capdup_2", imagenet[7].read_bytes(), "a dog running on the beach")
    add("capdup_3", imagenet[8].read_bytes(), "A DOG  running, on the beach!")
    for i in range(9, 30):
        add(f"single_{i:02d}", imagenet[i].read_bytes(), next(caps))
    return s, groups


def output_bytes(run_dir: Path) -> dict[str, bytes]:
    d = Path(run_dir) / "dedup"
    names = ["manifest.parquet", "clusters.parquet", "captions.parquet", "risk.parquet", "keep_keys.txt",
             "drop_keys.txt", "summary.json"]
    return {n: (d / n).read_bytes() for n in names}
